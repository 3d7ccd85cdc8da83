"""Library side of issue 10 items 3 and 4: honest `Decision`s under max_cost / min_quality, score
quantiles that map any strong share to a threshold, `load_prompts` and `llmroute calibrate`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llmroute.data import make_synthetic_table
from llmroute.data.prompts import load_prompts
from llmroute.data.table import TableError
from llmroute.policy import (
    calibrate_threshold,
    choose,
    choose_row,
    score_quantiles,
    threshold_for_share,
    unmet_constraints,
)
from llmroute.router import Router, default_router_path
from test_router import ENC


@pytest.fixture(scope="module")
def data():
    return make_synthetic_table(240, seed=1), make_synthetic_table(80, seed=2)


@pytest.fixture(scope="module")
def router(data):
    return Router.fit(data[0], estimator="linear", encoder=ENC, seed=0)


# ---- constraints ---------------------------------------------------------------------------------


def _both(q: list[float], c: list[float], **kw) -> tuple[int, int]:
    """The pick of `choose` (on the (1, m) arrays) and of `choose_row`, for one hand-made row."""
    mask = kw.pop("mask", None)
    arr = int(choose(np.array([q]), np.array([c]), mask=None if mask is None else np.array([mask]), **kw)[0])
    return arr, choose_row(q, c, mask=mask, **kw)


@pytest.mark.parametrize(
    ("q", "c", "kw", "want"),
    [
        # equal quality at tradeoff 0: the cheaper model, wherever it stands in the row
        ([0.8, 0.8], [2.0, 1.0], {}, 1),
        ([0.8, 0.8], [1.0, 2.0], {}, 0),
        ([0.8, 0.8, 0.8], [3.0, 1.0, 2.0], {}, 1),
        # equal score q - tradeoff * c (0.75 - 0.25 * 2 == 0.5 - 0.25 * 1): the cheaper model
        ([0.75, 0.5], [2.0, 1.0], {"tradeoff": 0.25}, 1),
        # the same ties on the general path (a mask, a max_cost)
        ([0.8, 0.8, 0.1], [2.0, 1.0, 0.5], {"mask": [True, True, False]}, 1),
        ([0.8, 0.8, 0.9], [2.0, 1.0, 3.0], {"max_cost": 2.0}, 1),
    ],
)
def test_ties_go_to_the_cheaper_model(q: list[float], c: list[float], kw: dict, want: int) -> None:
    assert _both(q, c, **kw) == (want, want)


def test_max_cost_is_inclusive() -> None:
    # a model whose expected cost equals max_cost is admissible ...
    assert _both([0.5, 0.9], [1.0, 2.0], max_cost=2.0) == (1, 1)
    assert _both([0.5, 0.9], [1.0, 2.0], max_cost=2.0, tradeoff=0.1) == (1, 1)
    # ... and one just above it is not
    assert _both([0.5, 0.9], [1.0, 2.0], max_cost=1.999) == (0, 0)
    # nothing within the limit: the cheapest model, not the best
    assert _both([0.5, 0.9], [1.0, 2.0], max_cost=0.5) == (0, 0)


def test_calibrate_threshold_hand_computed() -> None:
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    # share 0.3 of 10 scores: exactly 3 at or above the threshold, i.e. the 3rd highest score
    thr = calibrate_threshold(scores, 0.3)
    assert thr == 0.7
    assert int((scores >= thr).sum()) == 3
    for share, n_strong in [(0.0, 0), (0.1, 1), (0.5, 5), (0.9, 9), (1.0, 10)]:
        assert int((scores >= calibrate_threshold(scores, share)).sum()) == n_strong, share
    # a share between two counts gets the nearest count (0.31 * 10 -> 3, 0.38 * 10 -> 4)
    for share, n_strong in [(0.31, 3), (0.38, 4)]:
        assert int((scores >= calibrate_threshold(scores, share)).sum()) == n_strong, share


def test_unmet_constraints() -> None:
    assert unmet_constraints(0.5, 0.01) == []
    assert unmet_constraints(0.5, 0.01, max_cost=0.01, min_quality=0.5) == []
    assert unmet_constraints(0.5, 0.011, max_cost=0.01) == ["max_cost"]
    assert unmet_constraints(0.49, 0.01, min_quality=0.5) == ["min_quality"]
    assert unmet_constraints(0.4, 0.02, max_cost=0.01, min_quality=0.5) == ["max_cost", "min_quality"]
    assert unmet_constraints(math.nan, math.nan, max_cost=1.0, min_quality=0.0) == ["max_cost", "min_quality"]


def test_decision_says_when_max_cost_is_unmet(router, data) -> None:
    _, test = data
    prompts = test.prompts[:12]
    _, c = router.estimate(prompts)
    cheapest = c.min(axis=1)
    limit = float(np.median(cheapest))  # met for some prompts, not for others
    single = [router.route(p, max_cost=limit) for p in prompts]
    batch = router.route_batch(prompts, max_cost=limit)
    for i, (d1, d2) in enumerate(zip(single, batch, strict=True)):
        met = bool(cheapest[i] <= limit)
        for d in (d1, d2):
            assert d.constraints_met is met
            assert d.unmet_constraints == ([] if met else ["max_cost"])
            assert ("max_cost unmet" in d.reason) is (not met)
            if not met:  # the closest: the cheapest model
                assert d.expected_cost[d.model] == pytest.approx(cheapest[i])
            else:
                assert d.expected_cost[d.model] <= limit
        assert d1.to_dict()["constraints_met"] is met
    assert {d.constraints_met for d in batch} == {True, False}


def test_decision_says_when_min_quality_is_unmet(router, data) -> None:
    _, test = data
    prompts = test.prompts[:12]
    q, _ = router.estimate(prompts)
    best = q.max(axis=1)
    bar = float(np.median(best))
    for d1, d2, b in zip(
        [router.route(p, min_quality=bar) for p in prompts],
        router.route_batch(prompts, min_quality=bar),
        best,
        strict=True,
    ):
        met = bool(b >= bar)
        for d in (d1, d2):
            assert d.constraints_met is met and d.unmet_constraints == ([] if met else ["min_quality"])
            assert ("min_quality unmet" in d.reason) is (not met)
            if not met:
                assert d.expected_quality[d.model] == pytest.approx(b)
    d = router.route(prompts[0])  # no limits: nothing to meet
    assert d.constraints_met is True and d.unmet_constraints == [] and "unmet" not in d.reason


# ---- strong share -> threshold ---------------------------------------------------------------------
def test_threshold_for_share_matches_calibration() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=5000)
    qs = score_quantiles(scores)
    assert len(qs) == 101 and qs[0] == scores.min() and qs[-1] == scores.max()
    for share in (0.0, 0.1, 0.3, 0.5, 0.9, 1.0):
        thr = threshold_for_share(qs, share)
        assert np.mean(scores >= thr) == pytest.approx(share, abs=0.01)
        assert thr == pytest.approx(calibrate_threshold(scores, share), abs=0.02)
    assert threshold_for_share(qs, 0.2) > threshold_for_share(qs, 0.4)  # more strong, lower bar
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError):
            threshold_for_share(qs, bad)
    with pytest.raises(ValueError):
        threshold_for_share([0.1], 0.5)
    with pytest.raises(ValueError):
        score_quantiles(np.array([math.nan]))


def test_fit_and_calibrate_store_score_quantiles(router, data, tmp_path) -> None:
    _, test = data
    pol = router.policy
    assert pol["score_pair"] == [pol["strong"], pol["weak"]] and len(pol["score_quantiles"]) == 101
    r = Router.fit(data[0], estimator="linear", encoder=ENC, seed=0)
    r.threshold_for_share(0.3)  # the fitted pair has quantiles from the training prompts
    assert (pol["strong"], pol["weak"]) != ("math-7b", "code-13b")
    r.set_policy(strong="math-7b", weak="code-13b")
    with pytest.raises(ValueError, match="calibrate"):  # the fitted quantiles are for another pair
        r.threshold_for_share(0.3)
    thr = r.calibrate(test.prompts, strong_share=0.3)
    assert r.policy["score_pair"] == ["math-7b", "code-13b"]
    assert r.threshold_for_share(0.3) == thr  # the calibrated share: the calibrated threshold
    scores = r.strong_weak_score(test.prompts)
    for share in (0.1, 0.5, 0.8):
        assert np.mean(scores >= r.threshold_for_share(share)) == pytest.approx(share, abs=0.05)
    r.save(tmp_path / "r.safetensors")
    back = Router.load(tmp_path / "r.safetensors", encoder=ENC)
    assert back.policy["score_quantiles"] == pytest.approx(r.policy["score_quantiles"])
    assert back.threshold_for_share(0.5) == pytest.approx(r.threshold_for_share(0.5))
    assert back.route(test.prompts[0]).policy["rule"] == "threshold"


# ---- prompts files and the CLI ---------------------------------------------------------------------
def test_load_prompts_formats(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("hello\n\n  what is 2+2?  \nprove it\n")
    assert load_prompts(txt) == ["hello", "what is 2+2?", "prove it"]
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps({"prompt": p, "tier": "easy"}) for p in ["a", "b", "a"]) + "\n")
    assert load_prompts(jl) == ["a", "b", "a"]  # traffic may repeat itself
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": ["x, y", "NA"]}).to_csv(csv, index=False)
    assert load_prompts(csv) == ["x, y", "NA"]
    long = tmp_path / "long.csv"
    pd.DataFrame(
        {"prompt_id": ["1", "1", "2", "2"], "prompt": ["p1", "p1", "p2", "p2"], "model": ["a", "b", "a", "b"]}
    ).to_csv(long, index=False)
    assert load_prompts(long) == ["p1", "p2"]  # a routing table: each prompt once
    nocol = tmp_path / "q.jsonl"
    nocol.write_text('{"text": "hi"}\n')
    with pytest.raises(TableError, match="no 'prompt' column"):
        load_prompts(nocol)
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    with pytest.raises(TableError, match="no prompts"):
        load_prompts(empty)
    latin = tmp_path / "l.txt"
    latin.write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(TableError, match="line 2: not UTF-8"):
        load_prompts(latin)


def test_cli_calibrate(tmp_path: Path) -> None:
    from llmroute.cli import app

    prompts = [
        f"Question {i}: " + " ".join(["explain"] * (i % 7) + ["the", "proof", "of", str(i)])
        for i in range(40)
    ]
    prompts += ["hello", "thanks!", "What is the capital of Peru?", "Prove Fermat's little theorem."] * 5
    f = tmp_path / "traffic.txt"
    f.write_text("\n".join(prompts))
    out = tmp_path / "cal.safetensors"
    runner = CliRunner()
    res = runner.invoke(
        app, ["calibrate", "--prompts", str(f), "--strong-share", "0.3", "--out", str(out)]
    )  # default: the shipped router
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    r = Router.load(out)
    assert rep["threshold"] == r.policy["threshold"] and r.policy["strong_share"] == 0.3
    assert rep["n_prompts"] == len(prompts) and rep["strong"] == r.policy["strong"]
    picks = [d.model for d in r.route_batch(prompts)]
    assert set(picks) <= {r.policy["strong"], r.policy["weak"]}
    assert np.mean([m == r.policy["strong"] for m in picks]) == pytest.approx(0.3, abs=0.1)
    # another pair
    res = runner.invoke(
        app,
        ["calibrate", "--router", str(default_router_path()), "--prompts", str(f), "--strong-share", "0.5",
         "--strong", "claude-v2", "--weak", "claude-instant-v1", "--out", str(tmp_path / "c2.safetensors")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["strong"] == "claude-v2"
    # errors: one line, exit 2
    for args, msg in (
        (["--prompts", str(tmp_path / "none.txt"), "--strong-share", "0.3"], "file not found"),
        (["--prompts", str(f), "--strong-share", "0.3", "--strong", "gpt-9"], "unknown model 'gpt-9'"),
        (
            ["--prompts", str(f), "--strong-share", "0.3", "--router", str(tmp_path / "x.st")],
            "does not exist",
        ),
    ):
        res = runner.invoke(app, ["calibrate", *args, "--out", str(tmp_path / "o.safetensors")])
        assert res.exit_code == 2 and msg in res.output, res.output
    res = runner.invoke(app, ["calibrate", "--prompts", str(f), "--strong-share", "1.5", "--out", str(out)])
    assert res.exit_code == 2
