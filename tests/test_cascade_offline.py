"""Offline cascade evaluation (llmroute.cascade.offline) on synthetic tables whose right answers
are known by construction: a cheap model that hedges exactly when it is wrong, a strong model that
is always right."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmroute.cascade.offline import (
    PolicyTrace,
    Reestimator,
    evaluate_cascade,
    extract_answer,
    oof_priors,
    run_policy,
    table_evidence,
)
from llmroute.cascade.reestimate import DifficultyReestimator, Evidence
from llmroute.data.table import RoutingTable, TableError
from llmroute.eval.metrics import aiq, router_curve

C_CHEAP, C_STRONG = 1e-5, 1e-3


class MeanRouter:
    """Prior = each model's mean training quality and cost (the same for every prompt)."""

    def __init__(self, table: RoutingTable) -> None:
        self.models = list(table.models)
        self.q = np.nanmean(table.quality_matrix(), axis=0)
        self.c = np.nanmean(table.cost_matrix(), axis=0)

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(prompts)
        return np.tile(self.q, (n, 1)), np.tile(self.c, (n, 1))


def mean_factory(table: RoutingTable, encoder: object, seed: int) -> MeanRouter:
    return MeanRouter(table)


def synthetic(
    n: int = 300, wrong_share: float = 0.3, hedge: bool = True, seed: int = 0
) -> tuple[RoutingTable, np.ndarray]:
    """Two-option questions; 'cheap' is wrong on a random `wrong_share` (and then hedges when
    `hedge`), 'strong' is always right. Returns the table and the cheap-wrong mask."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < wrong_share
    rows = []
    for i in range(n):
        right, other = ("A", "B") if i % 2 == 0 else ("B", "A")
        prompt = f"Question {i}: which one?\nA) left {i}\nB) right {i}\nAnswer with the letter."
        cheap = (f"{other}. I'm not sure, I might be wrong." if hedge else other) if wrong[i] else right
        for model, resp, q, c in (
            ("cheap", cheap, 0.0 if wrong[i] else 1.0, C_CHEAP),
            ("strong", right, 1.0, C_STRONG),
        ):
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "prompt": prompt,
                    "task": "mc",
                    "model": model,
                    "quality": q,
                    "cost_usd": c,
                    "response": resp,
                }
            )
    return RoutingTable.from_frame(pd.DataFrame(rows)), wrong


def test_extract_answer() -> None:
    mc = "Q?\nA) x\nB) y\nC) z\nPrint only a single choice."
    assert extract_answer(mc, "B") == "B"
    assert extract_answer(mc, "The answer is C.\n") == "C"
    assert extract_answer(mc, "I do") is None  # 'I' is not an option here
    assert extract_answer(mc, "") is None
    assert extract_answer("What is 2+3? Give the final number.", "So 2+3 = 5") == repr(5.0)
    assert extract_answer("What is 1000+234? Final number.", "It is 1,234") == repr(1234.0)
    assert extract_answer("Write a function that adds.", "def add(a, b): return a + b") is None


def test_policy_trace_stops_at_first_step_reaching_tau() -> None:
    tr = PolicyTrace(
        served=np.array([[0, 0], [1, 1], [1, 0]]),
        pbest=np.array([[0.5, 0.9], [0.8, np.inf], [np.inf, np.inf]]),
        spent=np.array([[1.0, 1.0], [3.0, 1.0], [3.0, 1.0]]),
        calls=np.array([[1, 1], [2, 1], [2, 1]]),
    )
    served, spent, calls = tr.at(0.8)  # prompt 0 passes at step 1 (0.8 >= 0.8), prompt 1 at step 0
    assert served.tolist() == [1, 0] and spent.tolist() == [3.0, 1.0] and calls.tolist() == [2, 1]
    served, _, calls = tr.at(0.85)
    assert served.tolist() == [1, 0] and calls.tolist() == [2, 1]  # step 2 (end) for prompt 0
    served, _, calls = tr.at(0.0)
    assert calls.tolist() == [1, 1]  # tau 0: the one-shot pick


def _fitted(
    table: RoutingTable, train: np.ndarray, **kw: object
) -> tuple[Reestimator, np.ndarray, np.ndarray]:
    ev = table_evidence(table)
    Q = table.quality_matrix()
    q = np.tile(np.nanmean(Q[train], axis=0), (len(Q), 1))
    c = np.tile(np.nanmean(table.cost_matrix()[train], axis=0), (len(Q), 1))
    re_est = Reestimator(**kw).fit(q[train], ev.take(train), Q[train])  # type: ignore[arg-type]
    return re_est, q, c


def test_cascade_escalates_exactly_when_the_cheap_answer_is_wrong_and_pays_every_call() -> None:
    table, wrong = synthetic(400)
    ev = table_evidence(table)
    train, test = np.arange(300), np.arange(300, 400)
    re_est, q, c = _fitted(table, train)
    C = table.cost_matrix()
    tr = run_policy(re_est, q[test], c[test], C[test], ev.take(test), 1.0, first="cheapest", max_steps=3)
    served, spent, calls = tr.at(1.01)  # no threshold: escalate while the expected gain pays
    assert (calls == 2).tolist() == wrong[test].tolist()
    assert (table.quality_matrix()[test, served] == 1.0).all()
    expected = np.where(wrong[test], C_CHEAP + C_STRONG, C_CHEAP)
    np.testing.assert_allclose(spent, expected)
    # a trade-off that prices the strong model above any gain never escalates
    tr = run_policy(re_est, q[test], c[test], C[test], ev.take(test), 1e6, first="cheapest")
    assert (tr.at(1.01)[2] == 1).all()


def test_cascade_respects_cost_ceiling_and_step_limit() -> None:
    table, _ = synthetic(400)
    ev = table_evidence(table)
    train, test = np.arange(300), np.arange(300, 400)
    re_est, q, c = _fitted(table, train)
    C = table.cost_matrix()
    kw = {"first": "cheapest"}
    tr = run_policy(
        re_est, q[test], c[test], C[test], ev.take(test), 1.0, max_cost_usd=C_CHEAP + C_STRONG / 2, **kw
    )
    assert (tr.at(1.01)[2] == 1).all()  # the strong model's estimated cost breaks the ceiling
    tr = run_policy(
        re_est, q[test], c[test], C[test], ev.take(test), 1.0, max_cost_usd=C_CHEAP + C_STRONG * 1.01, **kw
    )
    assert (tr.at(1.01)[2] == 2).any()
    tr = run_policy(re_est, q[test], c[test], C[test], ev.take(test), 1.0, max_steps=1, **kw)
    assert (tr.at(1.01)[2] == 1).all()


def test_evaluate_cascade_counts_all_calls_and_beats_one_shot_with_evidence() -> None:
    table, wrong = synthetic(300)
    pri = oof_priors(table, mean_factory, folds=5, seed=0, encoder=object())
    res = evaluate_cascade(table, priors=pri, lambdas=np.array([0.0, 1.0, 10.0, np.inf]))
    pts = [
        (p["cost"], p["quality"], p["calls"])
        for p in res["points"]
        if p["first"] == "cheapest" and p["tau"] > 1
    ]
    # the cheap-first cascade at a modest trade-off: every prompt right, paying both calls where escalated
    best = [p for p in pts if p[1] == 1.0]
    assert best
    cost = min(p[0] for p in best)
    assert cost == pytest.approx(C_CHEAP + wrong.mean() * C_STRONG, rel=1e-9)
    assert min(p[2] for p in best) == pytest.approx(1 + wrong.mean())
    assert res["gap_closed"] > 0.9 > res["one_shot"]["gap_closed"]
    assert res["cost_ratio_at_best_quality"] == pytest.approx(cost / C_STRONG, rel=1e-9)


def test_tau_zero_is_the_one_shot_router_and_the_guard_holds_without_evidence() -> None:
    table, _ = synthetic(300, hedge=False)  # the cheap answer says nothing about being wrong
    pri = oof_priors(table, mean_factory, folds=5, seed=0, encoder=object())
    lams = np.array([0.0, 100.0, 1000.0, np.inf])
    res = evaluate_cascade(table, priors=pri, lambdas=lams)
    one = [(p["cost"], p["quality"]) for p in res["points"] if p["first"] == "router" and p["tau"] == 0.0]
    ref = router_curve(table.quality_matrix(), table.cost_matrix(), pri["q"], pri["c"], lams)
    np.testing.assert_allclose(np.array(one), ref)
    assert res["aiq"] >= res["one_shot"]["aiq"] - 0.005
    b = res["baselines"]
    assert res["one_shot"]["aiq"] == pytest.approx(aiq(ref, b["c_min"], b["c_max"]))
    one_step = evaluate_cascade(table, priors=pri, lambdas=lams, max_steps=1, firsts=("router",))
    assert all(p["calls"] == 1 for p in one_step["points"])
    assert one_step["aiq"] == pytest.approx(res["one_shot"]["aiq"])


def test_a_table_without_responses_is_refused_with_a_hint() -> None:
    df = pd.DataFrame(
        {
            "prompt_id": ["a", "a"],
            "prompt": ["x", "x"],
            "model": ["m1", "m2"],
            "quality": [1.0, 0.0],
            "cost_usd": [1.0, 2.0],
        }
    )
    with pytest.raises(TableError, match="llmroute profile"):
        table_evidence(RoutingTable.from_frame(df))


def test_unknown_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="choose from"):
        Reestimator(signals=["magic"])


def test_cli_eval_cascade_writes_curves_beside_one_shot_routers(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from llmroute.cli import app

    table, _ = synthetic(200)
    data = tmp_path / "t.parquet"
    table.df.to_parquet(data)
    out = tmp_path / "run"
    args = ["eval", "--data", str(data), "--routers", "knn", "--folds", "2", "--latency-prompts", "0"]
    res = CliRunner().invoke(
        app, [*args, "--no-progress", "--out", str(out), "--cascade", "--max-steps", "2"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    cas = doc["cascades"]["cascade"]
    assert cas["max_steps"] == 2 and cas["prior_router"] == "knn" and cas["folds"] == 2
    assert cas["signals"] == ["checks", "learned", "agreement"]
    assert cas["gap_closed"] > doc["routers"]["knn"]["gap_closed"]
    html = (out / "report.html").read_text()
    assert "<h3>Cascades</h3>" in html and "every call made" in html
    assert "gap closed" in res.output and "every call paid" in res.output
    # calibrated: the held-out reliability of the learned verifier and of the re-estimator's
    # P(right), numbers in results.json and diagrams in report.html
    cal = cas["calibration"]
    assert set(cal) == {"verifier", "first_answer"}
    for rel in cal.values():
        assert rel["n"] == 400 and 0 <= rel["ece"] <= 1 and rel["auroc"] > 0.5
        assert sum(b["n"] for b in rel["bins"]) == rel["n"]
        for b in rel["bins"]:
            lo, hi = b["bin"] / 10, (b["bin"] + 1) / 10
            assert lo <= b["mean_p"] <= hi and 0 <= b["right_share"] <= 1
        gaps = sum(b["n"] * abs(b["mean_p"] - b["right_share"]) for b in rel["bins"]) / rel["n"]
        assert rel["ece"] == pytest.approx(gaps)
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg"') == 2 and "Calibration of cascade" in html
    assert html.count("<circle") == sum(len(r["bins"]) for r in cal.values())
    assert "calibration of verifier: ECE" in res.output
    bad = CliRunner().invoke(app, [*args, "--cascade", "--verifier", "magic"])
    assert bad.exit_code != 0 and "choose from" in bad.output


def test_cheapest_k_calls_k_models_first_and_serves_the_most_likely_right_answer() -> None:
    table, _ = synthetic(400)
    ev = table_evidence(table)
    train, test = np.arange(300), np.arange(300, 400)
    re_est, q, c = _fitted(table, train)
    C = table.cost_matrix()
    tr = run_policy(re_est, q[test], c[test], C[test], ev.take(test), 1.0, first="cheapest:2", max_steps=2)
    served, spent, calls = tr.at(0.0)  # no escalation possible: both answers in hand from the start
    assert (calls == 2).all()
    np.testing.assert_allclose(spent, C_CHEAP + C_STRONG)
    assert (table.quality_matrix()[test, served] == 1.0).all()
    with pytest.raises(ValueError, match="max_steps"):
        run_policy(re_est, q[test], c[test], C[test], ev.take(test), 1.0, first="cheapest:3", max_steps=2)


def test_reliability_svg_places_each_bin_against_the_diagonal() -> None:
    import re
    import xml.etree.ElementTree as ET

    from llmroute.eval.report import reliability_svg

    rel = {
        "ece": 0.1,
        "bins": [
            {"bin": 2, "mean_p": 0.25, "right_share": 0.25, "n": 10},  # calibrated: on the diagonal
            {"bin": 8, "mean_p": 0.85, "right_share": 0.5, "n": 30},  # over-confident: below it
        ],
    }
    svg = str(reliability_svg(rel, "verifier <x>", size=260))
    root = ET.fromstring(svg)  # well-formed, the title escaped
    assert root.find("{http://www.w3.org/2000/svg}title").text == "verifier <x>"  # type: ignore[union-attr]
    line = root.find("{http://www.w3.org/2000/svg}line")
    assert line is not None
    x1, y1, x2, y2 = (float(line.get(k)) for k in ("x1", "y1", "x2", "y2"))  # type: ignore[arg-type]
    (cx1, cy1), (cx2, cy2) = [
        (float(a), float(b)) for a, b in re.findall(r'cx="([\d.]+)" cy="([\d.]+)"', svg)
    ]
    on_diag = y1 + (cx1 - x1) / (x2 - x1) * (y2 - y1)
    assert cy1 == pytest.approx(on_diag, abs=0.2)
    assert cy2 > y1 + (cx2 - x1) / (x2 - x1) * (y2 - y1) + 20  # lower share right: drawn below
    assert cx2 > cx1 and "ECE 0.100" in svg


def test_the_gateways_difficulty_estimator_evaluated_offline() -> None:
    """estimator='difficulty' (the gateway's re-estimation, no fitting) under the same rule."""
    table, wrong = synthetic(300)  # a wrong cheap answer hedges: the checks score it 0.5
    pri = oof_priors(table, mean_factory, folds=5, seed=0, encoder=object())
    lams = np.array([0.0, 1.0, 10.0, np.inf])
    # the gateway's default counts a pass as no evidence (max_score 0.5): a hedge (0.5) and a pass
    # look alike to the checks alone, nothing to escalate on
    res = evaluate_cascade(
        table, priors=pri, lambdas=lams, estimator=DifficultyReestimator(), signals=["checks"]
    )
    assert res["estimator"] == "difficulty" and res["max_score"] == [0.5] * 5
    assert res["gap_closed"] == pytest.approx(res["one_shot"]["gap_closed"])
    # "difficulty" chooses max_score per fold on the training prompts: a pass is right by
    # construction here, so it is trusted, and the checks close the gap
    res = evaluate_cascade(table, priors=pri, lambdas=lams, estimator="difficulty", signals=["checks"])
    assert res["estimator"] == "difficulty" and res["max_score"] == [0.99] * 5
    assert res["gap_closed"] > 0.9 > res["one_shot"]["gap_closed"]
    # cheap first, escalating exactly on the hedged (wrong) answers, every call paid
    best = [p for p in res["points"] if p["first"] == "cheapest" and p["quality"] == 1.0]
    assert min(p["cost"] for p in best) == pytest.approx(C_CHEAP + wrong.mean() * C_STRONG, rel=1e-9)
    assert "verifier" not in res["calibration"] and res["calibration"]["first_answer"]["n"] == 600
    # without evidence in the answers it never falls below the one-shot router
    table, _ = synthetic(300, hedge=False)
    pri = oof_priors(table, mean_factory, folds=5, seed=0, encoder=object())
    res = evaluate_cascade(table, priors=pri, lambdas=lams, estimator="difficulty")
    assert res["aiq"] >= res["one_shot"]["aiq"] - 0.005
    with pytest.raises(ValueError, match="'fitted', 'difficulty' or a DifficultyReestimator"):
        evaluate_cascade(table, priors=pri, estimator="magic")


def test_difficulty_max_score_is_fitted_on_each_training_fold_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """estimator='difficulty' hands `fit_max_score` the training prompts of each fold (their inner
    out-of-fold priors, quality and scores), never a test prompt, and uses what it returns."""
    import llmroute.cascade.offline as offline

    table, _ = synthetic(200)
    pri = oof_priors(table, mean_factory, folds=5, seed=0, encoder=object())
    Q = table.quality_matrix()
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def spy(q: np.ndarray, ev: Evidence, Qt: np.ndarray) -> float:
        seen.append((q, ev.checks, Qt))
        return 0.6 + 0.05 * len(seen)

    monkeypatch.setattr(offline, "fit_max_score", spy)
    res = evaluate_cascade(
        table, priors=pri, lambdas=np.array([0.0, np.inf]), estimator="difficulty", signals=["checks"]
    )
    assert res["max_score"] == pytest.approx([0.65, 0.7, 0.75, 0.8, 0.85])
    ev = table_evidence(table)
    for fold, (q, checks, Qt) in enumerate(seen):
        train = np.setdiff1d(np.arange(200), pri["fold_idx"][fold])
        np.testing.assert_array_equal(q, pri["inner"][fold][0])
        np.testing.assert_array_equal(Qt, Q[train])
        np.testing.assert_array_equal(checks, ev.checks[train])
