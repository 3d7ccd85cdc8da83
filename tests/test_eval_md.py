"""benchmarks/_md.py: the shared BENCHMARKS.md section updater."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest

_MD = Path(__file__).resolve().parents[1] / "benchmarks" / "_md.py"


@pytest.fixture(scope="module")
def md() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_md", _MD)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_update_section_appends_then_replaces_in_place(md: ModuleType, tmp_path: Path) -> None:
    p = tmp_path / "B.md"
    p.write_text("# Benchmarks\n\nintro\n")
    md.update_section("quality", "first", title="Routing quality", path=p)
    md.update_section("latency", "lat", title="Decision latency", path=p)
    md.update_section("quality", "second\n\nmore", path=p)
    text = p.read_text()
    assert text.count("## Routing quality") == 1 and text.count("<!-- quality:start -->") == 1
    assert "first" not in text and "second\n\nmore" in text
    assert text.index("Routing quality") < text.index("Decision latency")  # order kept
    assert text.startswith("# Benchmarks\n\nintro\n")


def test_replacement_text_is_literal(md: ModuleType, tmp_path: Path) -> None:
    p = tmp_path / "B.md"
    md.update_section("x", r"a \1 \g<0> b", path=p)
    md.update_section("x", r"c \1 d", path=p)
    assert r"c \1 d" in p.read_text()
    with pytest.raises(ValueError):
        md.update_section("bad name", "x", path=p)


def test_md_table_and_fmt(md: ModuleType) -> None:
    t = md.md_table(["a", "b"], [["x|y", 0.12345], [None, math.nan]])
    assert t.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 0.123 |", "| - | - |"]
    assert md.fmt(1e-6) == "1e-06" and md.fmt(3) == "3" and md.fmt(2.5, 1) == "2.5"
