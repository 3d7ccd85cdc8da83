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


def test_markdown_tables_and_acceptance_over_seeds(quality: ModuleType) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_eval_runner import CentroidRouter, HashEncoder, synthetic_table
    finally:
        sys.path.remove(str(Path(__file__).parent))
    from llmroute.eval.runner import evaluate

    runs = [
        quality.compact_run(
            evaluate(
                synthetic_table(n=60, models=("weak", "strong")),
                routers=[("default", CentroidRouter), ("knn", CentroidRouter), ("linear", CentroidRouter)],
                folds=3,
                seed=seed,
                encoder=HashEncoder(),
                progress=False,
                dataset="syn",
                latency_prompts=3,
            )
        )
        for seed in (0, 1)
    ]
    assert "curve" not in runs[0]["routers"]["default"] and "tasks" not in runs[0]
    summary = quality.summarize(runs)
    assert [s["dataset"] for s in summary] == ["syn"] and summary[0]["seeds"] == [0, 1]
    md = quality.markdown(
        summary,
        {
            "seeds": [0, 1],
            "encoder": "hash",
            "machine": "test",
            "load_avg_start": [1.0],
            "load_avg_end": [2.0],
        },
    )
    assert "### syn" in md and "| default |" in md and "APGR" in md and "### Acceptance summary" in md
    assert "2 seeds (0, 1)" in md
    _head, rows = quality.acceptance(summary)
    assert rows[0][0] == "syn" and rows[0][4] == "no"  # equal routers: default does not beat the others
    assert rows[0][5] == "0 of 2"


def _run(quality: ModuleType, seed: int, gaps: dict[str, float | None]) -> dict:
    """A hand-made compact run: only what `summarize` reads."""
    metrics = dict.fromkeys(quality.METRICS, 0.5)
    return {
        "dataset": "s",
        "seed": seed,
        "n_prompts": 10,
        "models": ["a", "b", "c"],
        "cost_source": "cost_usd",
        "folds": 5,
        "elapsed_s": 1.0 + seed,
        "embed_s": 0.1,
        "baselines": {
            "single_hull_aiq": 0.5,
            "oracle_aiq": 0.9,
            "best_single": {"model": "a", "quality": 0.8, "cost": 1.0},
            "random": dict(metrics),
        },
        "routers": {name: {**metrics, "gap_closed": g} for name, g in gaps.items()},
    }


def test_spread_is_mean_min_max_over_finite_values(quality: ModuleType) -> None:
    s = quality.spread([0.2, None, 0.5, float("nan"), 0.8])
    assert s["mean"] == pytest.approx(0.5) and s["min"] == 0.2 and s["max"] == 0.8 and s["n"] == 3
    assert len(s["values"]) == 5
    assert quality.cell(s) == "0.500 (0.200-0.800) [3 of 5 seeds]"
    assert quality.cell(quality.spread([0.25])) == "0.250"  # one seed: no range
    assert quality.cell(quality.spread([None])) == "-"


def test_acceptance_compares_means_and_counts_seed_wins(quality: ModuleType) -> None:
    # default: mean 0.40, wins seeds 0 and 2, loses seed 1 (to linear); knn mean 0.30, linear mean 0.35
    gaps = [
        {"default": 0.45, "knn": 0.30, "linear": 0.30},
        {"default": 0.30, "knn": 0.30, "linear": 0.45},
        {"default": 0.45, "knn": 0.30, "linear": 0.30},
    ]
    summary = quality.summarize([_run(quality, i, g) for i, g in enumerate(gaps)])
    gc = summary[0]["routers"]["default"]["gap_closed"]
    assert gc["mean"] == pytest.approx(0.40) and (gc["min"], gc["max"]) == (0.30, 0.45)
    _head, rows = quality.acceptance(summary)
    assert rows[0][1] == "0.400 (0.300-0.450)" and rows[0][3] == "0.350 (0.300-0.450)"
    assert rows[0][4] == "yes" and rows[0][5] == "2 of 3"
    assert rows[0][7] == "2.0 (1.0-3.0)"  # eval wall time over seeds
    # the mean decides, not the best seed: linear's mean above the default's is a "no"
    gaps[1]["linear"] = 0.80  # linear mean 0.4667 > default 0.40
    _head, rows = quality.acceptance(quality.summarize([_run(quality, i, g) for i, g in enumerate(gaps)]))
    assert rows[0][4] == "no" and rows[0][5] == "2 of 3"
    # a tie on the mean is not a win
    tie = [{"default": 0.4, "knn": 0.4, "linear": 0.1}]
    _head, rows = quality.acceptance(quality.summarize([_run(quality, 0, tie[0])]))
    assert rows[0][4] == "no" and rows[0][5] == "0 of 1"
