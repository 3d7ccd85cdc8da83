"""benchmarks/latency.py end to end on tiny sizes: a default-estimator router trained on a
routerbench_subset folder (here a synthetic table) is timed beside the shipped one."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def latency() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("latency")
    finally:
        sys.path.remove(str(BENCH))


def test_trained_routerbench_router_is_timed_and_reported(
    latency: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmroute.data import make_synthetic_table

    (tmp_path / "data" / "routerbench_subset").mkdir(parents=True)
    make_synthetic_table(n_prompts=200, seed=2).df.to_parquet(
        tmp_path / "data" / "routerbench_subset" / "data.parquet"
    )
    sections: dict[str, str] = {}
    monkeypatch.setattr(latency, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(latency, "update_section", lambda name, md, title=None: sections.update({name: md}))
    args = ["--data-dir", str(tmp_path / "data"), "--single", "5", "--batch", "40", "--repeats", "2"]
    assert latency.main([*args, "--no-md"]) == 0
    out = capsys.readouterr().out
    res = json.loads(out)
    assert not (tmp_path / "results").exists() and not sections  # --no-md writes nothing
    assert list(res["trained"]) == ["routerbench_subset"]  # routellm is absent here: skipped
    rb = res["trained"]["routerbench_subset"]
    assert "routerbench_subset" in rb["router"] and rb["single"]["n"] == 5
    assert rb["batch"]["repeats"] == 2 and len(rb["batch"]["runs_prompts_per_s"]) == 2
    b = rb["batch"]
    assert b["prompts_per_s_min"] <= b["prompts_per_s"] <= b["prompts_per_s_max"]
    assert set(res["targets_routerbench_subset"]) == {"p50_ms<=0.5", "batch_prompts_per_s>=10000"}

    assert latency.main(args) == 0
    saved = json.loads((tmp_path / "results" / "latency.json").read_text())
    assert list(saved["trained"]) == ["routerbench_subset"]
    md = sections["latency"]
    assert "| measure | shipped router | default estimator (routerbench_subset) | target |" in md
    assert "batch throughput (prompts/s, 40 prompts, 1 process)" in md
