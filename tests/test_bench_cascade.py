"""benchmarks/cascade.py's orchestration with the evaluation stubbed (the real one takes an hour):
both re-estimators for every signal set, calibration in the JSON and the section, and
`--pairs none` / `--fitted keep` keeping the fitted guard / runs of the previous results file
with its commit and date."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def cascade(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        mod = importlib.import_module("cascade")
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "cascade.json")
    monkeypatch.setattr(mod, "_cached", lambda name, make: None)
    return mod


def _metrics(gap: float) -> dict[str, Any]:
    return {"aiq": 0.8 + gap / 10, "gap_closed": gap, "cost_ratio_at_best_quality": None}


def fake_evaluate(calls: list[dict[str, Any]]) -> Any:
    def evaluate(table: Any, **kw: Any) -> dict[str, Any]:
        calls.append(kw)
        fitted = kw["estimator"] == "fitted"
        gap = 0.2 if fitted else 0.19
        rel = {"ece": 0.05 if fitted else 0.03, "auroc": 0.7, "n": 10, "bins": []}
        cal = {"first_answer": rel} | (
            {"verifier": {**rel, "ece": 0.04}} if "learned" in kw["signals"] else {}
        )
        return {
            **_metrics(gap),
            "signals": list(kw["signals"]),
            "max_steps": kw["max_steps"],
            "max_quality": 0.88,
            "eval_s": 1.0,
            "one_shot": _metrics(0.197),
            "by_first": {f: _metrics(gap) for f in kw["firsts"]},
            "hull_points": [{"first": "router", "tau": 0.5, "cost": 1.0, "quality": 0.88, "calls": 1.2}],
            "estimator": kw["estimator"],
            "max_score": [None] * 5 if fitted else [0.55, 0.6, 0.55, 0.55, 0.6],
            "calibration": cal,
        }

    return evaluate


def test_runs_both_estimators_and_keeps_the_previous_fitted_guard(
    cascade: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmroute.cascade.offline as offline
    import llmroute.eval.runner as runner

    calls: list[dict[str, Any]] = []
    models = ["a", "b", "c"]
    monkeypatch.setattr(runner, "load_dataset", lambda path: SimpleNamespace(n_prompts=7, models=models))
    monkeypatch.setattr(offline, "evaluate_cascade", fake_evaluate(calls))
    old_guard = [{"models": ["x", "y"], "diff": -0.001, "aiq": 0.8, "one_shot_aiq": 0.801}]
    cascade.RESULTS.write_text(
        json.dumps(
            {
                "meta": {"pairs_total": 55, "commit": "abc1234", "date": "2026-12-07T13:22:49Z"},
                "guard": old_guard,
            }
        )
    )
    sections: dict[str, str] = {}
    import _md  # benchmarks/ is on the path once cascade is imported

    monkeypatch.setattr(_md, "update_section", lambda name, md, title=None: sections.update({name: md}))
    doc = cascade.run("none", False, None, difficulty_pairs="2")
    # every signal set under both estimators; the gateway's pairs only (the fitted guard is kept)
    runs = [(c["estimator"], tuple(c["signals"])) for c in calls if c.get("models") is None]
    assert len(runs) == 8 and {e for e, _ in runs} == {"fitted", "difficulty"}
    pairs = [c for c in calls if c.get("models") is not None]
    assert [c["estimator"] for c in pairs] == ["difficulty", "difficulty"]
    assert [c["models"] for c in pairs] == [["a", "b"], ["a", "c"]]
    assert doc["guard"] == old_guard and doc["meta"]["pairs_total"] == 55
    assert doc["meta"]["guard_from"] == {"commit": "abc1234", "date": "2026-12-07T13:22:49Z", "kept": True}
    assert len(doc["guard_difficulty"]) == 2 and doc["meta"]["pairs_total_difficulty"] == 2
    assert doc["difficulty"]["all"]["calibration"]["first_answer"]["ece"] == 0.03
    assert doc["difficulty"]["all"]["max_score"] == [0.55, 0.6, 0.55, 0.55, 0.6]
    cascade.write_md(doc)
    md = sections["cascade"]
    assert "| gateway (difficulty) | all | checks, learned, agreement | 0.190 |" in md
    assert "| fitted | none | none (priors only) | 0.200 |" in md
    assert "| 0.030 / 0.700 | 0.040 / 0.700 | 0.55 0.6 0.55 0.55 0.6 |" in md  # difficulty, all signals
    assert "| 0.050 / 0.700 | - | - |" in md  # fitted, no learned verifier
    assert "kept from the run at commit abc1234, 2026-12-07T13:22:49Z" in md
    assert "Guard, gateway re-estimator, all signals, the same two-model subsets (2 of 2 pairs)" in md
    # a full rerun recomputes the fitted guard instead of keeping it
    calls.clear()
    doc = cascade.run("1", True, None, difficulty_pairs="none")
    assert [c["estimator"] for c in calls if c.get("models")] == ["fitted"]
    assert len(doc["guard"]) == 1 and "guard_from" not in doc["meta"] and not doc["guard_difficulty"]


def test_fitted_keep_reuses_the_previous_fitted_runs(
    cascade: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmroute.cascade.offline as offline
    import llmroute.eval.runner as runner

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(runner, "load_dataset", lambda path: SimpleNamespace(n_prompts=7, models=["a", "b"]))
    monkeypatch.setattr(offline, "evaluate_cascade", fake_evaluate(calls))
    with pytest.raises(SystemExit, match="no fitted runs to keep"):
        cascade.run("none", True, None, difficulty_pairs="none", fitted="keep")
    old = cascade.run("none", True, None, difficulty_pairs="none")  # fitted and gateway, "all" only
    old["meta"] |= {"commit": "def5678", "date": "2026-12-07T12:00:00Z"}
    cascade.RESULTS.write_text(json.dumps(old))
    calls.clear()
    doc = cascade.run("none", True, None, difficulty_pairs="none", fitted="keep")
    assert [c["estimator"] for c in calls] == ["difficulty"]
    assert doc["runs"] == old["runs"]
    assert doc["meta"]["runs_from"] == {"commit": "def5678", "date": "2026-12-07T12:00:00Z", "kept": True}
    sections: dict[str, str] = {}
    import _md

    monkeypatch.setattr(_md, "update_section", lambda name, md, title=None: sections.update({name: md}))
    cascade.write_md(doc)
    assert (
        "The fitted rows are kept from the run at commit def5678, 2026-12-07T12:00:00Z" in sections["cascade"]
    )
