"""benchmarks/quality.py helpers (set discovery, markdown) on a small synthetic evaluation."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("quality")
    finally:
        sys.path.remove(str(BENCH))


def test_discover_sets_and_routellm_families(quality: ModuleType, tmp_path: Path) -> None:
    for name in ("routellm", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.parquet").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    labels = [s[0] for s in quality.discover(tmp_path)]
    assert labels == ["other", "routellm", "routellm/mmlu", "routellm/gsm8k", "routellm/mt_bench"]


def test_markdown_tables_and_acceptance(quality: ModuleType) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_eval_runner import CentroidRouter, HashEncoder, synthetic_table
    finally:
        sys.path.remove(str(Path(__file__).parent))
    from llmroute.eval.runner import evaluate

    res = evaluate(
        synthetic_table(n=60, models=("weak", "strong")),
        routers=[("default", CentroidRouter), ("knn", CentroidRouter), ("linear", CentroidRouter)],
        folds=3,
        encoder=HashEncoder(),
        progress=False,
        dataset="syn",
        latency_prompts=3,
    )
    md = quality.markdown(
        [res],
        {"seed": 0, "encoder": "hash", "machine": "test", "load_avg_start": [1.0], "load_avg_end": [2.0]},
    )
    assert "### syn" in md and "| default |" in md and "APGR" in md and "### Acceptance summary" in md
    _head, rows = quality.acceptance([res])
    assert rows[0][0] == "syn" and rows[0][4] == "no"  # equal routers: default does not beat the others
