"""The online learner (`llmroute.online`): posterior, exploration bound, propensities, new
models, snapshots, and `llmroute simulate` on a synthetic table (no shared data needed)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmroute.cli import app
from llmroute.data.synthetic import make_synthetic_table
from llmroute.online import OnlineLearner
from llmroute.online.simulate import regret_exponent

EMB = 8


def _learner(models=("a", "b", "c"), **kw) -> OnlineLearner:
    kw.setdefault("dim", 2)
    return OnlineLearner(list(models), EMB, **kw)


def test_posterior_matches_hand_computed_case() -> None:
    L = _learner(("a",), prior_var=1.0, noise_var=1.0, dim=1)  # context: 1 column, base, bias
    # A = I + x1 x1' + x2 x2' = [[2,0,1],[0,2,1],[1,1,3]], b = x1 * 1 + x2 * 0 = [1,0,1]
    L.observe(np.array([1.0, 0.0, 1.0]), 0, 1.0)
    L.observe(np.array([0.0, 1.0, 1.0]), 0, 0.0)
    mean, cov = L.posterior("a")
    np.testing.assert_allclose(mean, [3 / 8, -1 / 8, 1 / 4], atol=1e-12)
    np.testing.assert_allclose(cov, np.linalg.inv([[2.0, 0, 1], [0, 2, 1], [1, 1, 3]]), atol=1e-12)


@pytest.mark.parametrize("order", ["C", "F"])
def test_rank_one_update_and_its_undo_in_either_memory_order(order: str) -> None:
    """`observe` updates the covariance in place (BLAS) when the state is C-ordered and writes
    a copy's result back otherwise (e.g. a restored state in another order): the same exact
    posterior either way; weight -1 undoes it."""
    L = _learner(("a", "b"), prior_var=1.0, noise_var=1.0, dim=1)
    L.A_inv_ = np.array(L.A_inv_, order=order)
    x = np.array([1.0, 0.0, 1.0])
    L.observe(x, 1, 1.0)
    L.observe(np.array([0.0, 1.0, 1.0]), 1, 0.0)
    np.testing.assert_allclose(
        L.posterior("b")[1], np.linalg.inv([[2.0, 0, 1], [0, 2, 1], [1, 1, 3]]), atol=1e-12
    )
    np.testing.assert_array_equal(L.posterior("a")[1], np.eye(3))  # the other model untouched
    L.observe(x, 1, 1.0, weight=-1.0)
    np.testing.assert_allclose(
        L.posterior("b")[1], np.linalg.inv([[1.0, 0, 0], [0, 2, 1], [0, 1, 2]]), atol=1e-12
    )


def test_exploration_decays_once_the_outcomes_exceed_n0() -> None:
    """`explore_decay` = n0: the settings apply as they are up to n0 outcomes learned (all
    models), then times sqrt(n0 / n); an undone outcome counts -1; 0 turns it off. A choice
    between two equal models (Thompson: a coin flip, so the bound binds) explores with exactly
    the scaled probability."""
    L = _learner(("a", "b"), max_explore=0.2, explore_loss=0.0, explore_decay=100.0, dim=1, confidence=10.0)
    x = np.array([0.0, 0.0, 1.0])  # bias only: both models' posteriors move alike

    def p_explore() -> float:
        ch = L.choose(np.zeros(EMB), np.array([0.5, 0.5]), np.array([0.0, 0.0]), tradeoff=0.0)
        return float(ch.propensities[1 - L.models.index(ch.greedy)])

    assert L._exploration() == (0.2, 0.0) and p_explore() == pytest.approx(0.2)
    for j in (0, 1) * 50:
        L.observe(x, j, 0.0)
    assert L._exploration() == (0.2, 0.0) and p_explore() == pytest.approx(0.2)  # n = n0
    for j in (0, 1) * 150:
        L.observe(x, j, 0.0)
    assert p_explore() == pytest.approx(0.2 * 0.5)  # n = 400: sqrt(100 / 400)
    L.explore_loss = 0.004
    assert L._exploration() == pytest.approx((0.1, 0.002))
    L.observe(x, 1, 0.0, weight=-1.0)
    assert L._exploration()[0] == pytest.approx(0.2 * math.sqrt(100 / 399))
    L.explore_decay = 0.0
    assert L._exploration() == (0.2, 0.004) and p_explore() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="explore_decay"):
        _learner(explore_decay=-1.0)
    L.explore_decay = 100.0
    back = OnlineLearner.restore(L.snapshot(Path(tempfile.mkdtemp()) / "s.safetensors"))
    assert back.explore_decay == 100.0 and back._exploration() == L._exploration()
    # a new arm restarts the schedule (for every model), kept in snapshots; removing an arm
    # never leaves the count negative
    L.add_model("c")
    assert L._exploration() == (0.2, 0.004) and L.explore_base_ == 399.0
    for j in (0, 1, 2) * 100:
        L.observe(np.array([0.0, 0.0, 1.0]), j, 0.0)
    assert L._exploration()[0] == pytest.approx(0.2 * math.sqrt(100 / 300))
    back = OnlineLearner.restore(L.snapshot(Path(tempfile.mkdtemp()) / "s.safetensors"))
    assert back.explore_base_ == 399.0 and back._exploration() == L._exploration()
    L.remove_model("a")
    assert 0.0 <= L.explore_base_ <= float(L.n_.sum())


def test_update_learns_quality_residual_against_the_base_estimate() -> None:
    L = _learner(("a",), prior_var=1.0, noise_var=1.0, max_explore=0.0)
    ch = L.choose(np.ones(EMB), np.array([0.4]), np.array([0.0]))
    x = L.context(np.ones(EMB))
    x[-2] = 0.4 - 0.5  # the model's own base quality, centred
    L.update(ch.decision_id, "a", quality=1.0, cost=0.0)
    # posterior after one outcome with residual 0.6: mean = (I + x x')^-1 x 0.6
    expected = np.linalg.inv(np.eye(len(x)) + np.outer(x, x)) @ x * 0.6
    np.testing.assert_allclose(L.posterior("a")[0], expected, atol=1e-12)
    with pytest.raises(KeyError, match="unknown decision id"):
        L.update(ch.decision_id, "a", 1.0)  # one outcome per decision


def test_observed_cost_corrects_the_cost_estimate() -> None:
    L = _learner(("a", "b"), max_explore=0.0)
    e = np.ones(EMB)
    for _ in range(9):
        ch = L.choose(e, np.array([0.5, 0.5]), np.array([1.0, 1.0]), candidates=np.array([True, False]))
        L.update(ch, "a", 0.5, cost=3.0)
    ch = L.choose(e, np.array([0.5, 0.5]), np.array([1.0, 1.0]))
    assert ch.c[0] == pytest.approx(1.0 + 2.0 * 9 / 10)  # one pseudo-outcome at 0 residual
    assert ch.c[1] == pytest.approx(1.0)
    # equal quality: the trade-off makes the cheaper (unobserved) model the greedy choice
    assert L.choose(e, np.array([0.5, 0.5]), np.array([1.0, 1.0]), tradeoff=0.1).greedy == "b"


@pytest.mark.parametrize("method", ["thompson", "linucb"])
def test_exploration_bound_is_respected(method: str) -> None:
    L = _learner(("a", "b", "c", "d"), method=method, max_explore=0.1, prior_var=4.0, seed=1)
    rng = np.random.default_rng(0)
    q = np.array([0.6, 0.55, 0.5, 0.45])
    explored = []
    for _ in range(3000):
        ch = L.choose(rng.standard_normal(EMB), q, np.zeros(4))
        assert 1.0 - ch.propensities[L.models.index(ch.greedy)] <= 0.1 + 1e-12
        explored.append(ch.explored)
        L.update(ch, ch.model, float(rng.random() < q[ch.index]), 0.0)
    share = float(np.mean(explored))
    assert share <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 3000)
    assert share > 0.01  # wide priors: there is exploration to bound


def test_greedy_never_explores() -> None:
    L = _learner(method="greedy", prior_var=4.0)
    for _ in range(200):
        ch = L.choose(np.random.default_rng(0).standard_normal(EMB), np.array([0.5, 0.6, 0.4]), np.zeros(3))
        assert ch.model == ch.greedy == "b" and ch.propensity == 1.0


@pytest.mark.parametrize("method", ["thompson", "linucb"])
def test_propensities_sum_to_one_and_match_pick_rates(method: str) -> None:
    L = _learner(method=method, max_explore=0.5, prior_var=0.05, seed=3)
    e = np.full(EMB, 0.3)
    q, c = np.array([0.5, 0.52, 0.45]), np.zeros(3)
    for _ in range(50):  # model b is well known, a and c are not: UCB (and TS) deviate from b
        L.observe(L.context(e), 1, 0.0)
    n = 6000
    counts = np.zeros(3)
    props = np.zeros(3)
    for _ in range(n):
        ch = L.choose(e, q, c)
        assert ch.propensities.sum() == pytest.approx(1.0)
        assert ch.propensity == ch.propensities[ch.index] > 0
        counts[ch.index] += 1
        props += ch.propensities
    emp, mean_p = counts / n, props / n
    assert (mean_p > 0.02).sum() >= 2  # the test is not trivial: at least two models are picked
    np.testing.assert_allclose(emp, mean_p, atol=4 * np.sqrt(0.25 / n))


def _play(L: OnlineLearner, true_q: dict[str, float], steps: int, base: dict[str, float], seed: int = 0):
    """Bernoulli outcomes with the given true quality; unprofiled models get a NaN base."""
    rng = np.random.default_rng(seed)
    picks = []
    for _ in range(steps):
        qb = np.array([base.get(m, np.nan) for m in L.models])
        ch = L.choose(rng.standard_normal(EMB), qb, np.zeros(len(L.models)))
        L.update(ch, ch.model, float(rng.random() < true_q[ch.model]), 0.0)
        picks.append(ch.model)
    return picks


def test_a_clearly_better_new_model_is_found() -> None:
    L = _learner(seed=0)
    base = {"a": 0.6, "b": 0.5, "c": 0.4}
    truth = {"a": 0.6, "b": 0.5, "c": 0.4, "new": 0.95}
    _play(L, truth, 300, base)
    L.add_model("new")  # no profile: NaN base -> optimistic fill
    picks = _play(L, truth, 300, base, seed=1)
    assert picks[:20].count("new") >= 1  # tried at once (the greedy choice under its prior)
    assert picks[-100:].count("new") >= 80


def test_a_bad_new_model_is_dropped() -> None:
    L = _learner(seed=0)
    base = {"a": 0.6, "b": 0.5, "c": 0.4}
    truth = {"a": 0.6, "b": 0.5, "c": 0.4, "new": 0.05}
    L.add_model("new")
    picks = _play(L, truth, 400, base)
    assert picks[:10].count("new") >= 1
    assert picks[-200:].count("new") <= 30  # at most the exploration share, not the greedy choice


def test_the_learner_corrects_a_wrong_offline_estimate() -> None:
    L = _learner(("a", "b"), seed=0)
    picks = _play(L, {"a": 0.3, "b": 0.8}, 400, {"a": 0.7, "b": 0.6})
    assert picks[:5].count("a") >= 4  # starts from the router's (wrong) order
    assert picks[-100:].count("b") >= 80


@pytest.mark.parametrize(("confidence", "switches"), [(1.0, False), (0.0, True)])
def test_one_noisy_outcome_does_not_undo_the_router(confidence: float, switches: bool) -> None:
    L = _learner(("a", "b"), method="greedy", confidence=confidence)
    e, qb, cb = np.ones(EMB), np.array([0.6, 0.58]), np.zeros(2)
    ch = L.choose(e, qb, cb)
    assert ch.model == "a"
    L.update(ch, "a", 0.0, 0.0)  # one failure of the router's choice
    assert (L.choose(e, qb, cb).model == "b") is switches


def test_snapshot_restore_round_trip(tmp_path: Path) -> None:
    L = _learner(seed=5, method="linucb", max_explore=0.15, tradeoff=0.3)
    _play(L, {"a": 0.7, "b": 0.2, "c": 0.5}, 50, {"a": 0.5, "b": 0.5, "c": 0.5})
    L.add_model("d")
    path = L.snapshot(tmp_path / "learner.safetensors")
    assert path.stat().st_size < 20_000
    R = OnlineLearner.restore(path)
    assert R.models == L.models and R.method == "linucb" and R.tradeoff == 0.3 and R.max_explore == 0.15
    for m in L.models:
        for a, b in zip(L.posterior(m), R.posterior(m), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(R.profiled_, [True, True, True, False])
    e = np.arange(EMB, dtype=float)
    qb = np.array([0.5, 0.5, 0.5, np.nan])
    c1, c2 = L.choose(e, qb, np.zeros(4)), R.choose(e, qb, np.zeros(4))
    np.testing.assert_allclose(c1.q, c2.q)
    np.testing.assert_allclose(c1.c, c2.c)
    assert c1.greedy == c2.greedy
    (tmp_path / "junk").write_bytes(b"not a snapshot")
    with pytest.raises(ValueError, match="not a learner snapshot"):
        OnlineLearner.restore(tmp_path / "junk")


def test_bad_settings_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        _learner(method="ucb2")
    with pytest.raises(ValueError, match="max_explore"):
        _learner(max_explore=1.5)
    with pytest.raises(ValueError, match="one value per model"):
        _learner().choose(np.ones(EMB), np.array([0.5]), np.array([0.0]))


def test_regret_exponent() -> None:
    t = np.arange(1, 4001, dtype=float)
    assert regret_exponent(np.sqrt(t)) == pytest.approx(0.5, abs=1e-6)
    assert regret_exponent(3 * t) == pytest.approx(1.0, abs=1e-6)
    assert regret_exponent(-t) is None


def test_simulate_cli_writes_json_and_png(tmp_path: Path) -> None:
    data = tmp_path / "syn.parquet"
    make_synthetic_table(240, seed=0, binary=True).df.to_parquet(data)
    out = tmp_path / "sim"
    args = ["simulate", "--data", str(data), "--out", str(out), "--seeds", "2", "--baseline", "knn"]
    res = CliRunner().invoke(app, [*args, "--warm-start", "0.25", "--learner", "linucb"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "simulate.json").read_text())
    assert doc["learner"] == "linucb" and doc["warm_start"] == 0.25 and len(doc["runs"]) == 2
    run = doc["runs"][0]
    assert run["n"] == 240 - 60 and len(run["pick_shares"]) == len(doc["models"])
    assert sum(run["pick_shares"]) == pytest.approx(1.0)
    assert run["last20"]["oracle"] >= max(run["last20"]["learner"], run["last20"]["cv"])
    assert run["regret_oracle"][-1] >= 0
    assert (out / "simulate.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, [*args, "--learner", "magic"])
    assert bad.exit_code != 0 and "choose one of" in bad.output


def _budget_case(explore_loss: float, profiled: bool = True):  # type: ignore[no-untyped-def]
    """a: the offline router's choice; b: rated above it by one outcome (not confidently, so a
    stays the greedy choice); c, d: rated below it, d far below."""
    L = _learner(("a", "b", "c", "d"), seed=0, max_explore=0.2, explore_loss=explore_loss, profiled=profiled)
    emb, q, c = np.linspace(-1.0, 1.0, EMB), np.array([0.6, 0.59, 0.45, 0.2]), np.zeros(4)
    x = L.context(emb)
    x[-2] = 0.59 - 0.5
    L.observe(x, 1, 0.5)
    return L.choose(emb, q, c)


def _expected_loss(ch) -> float:  # type: ignore[no-untyped-def]
    """Expected reward given up against the greedy choice under the learner's own means."""
    g = int(np.argmax(ch.propensities))
    return float(np.sum(ch.propensities * np.maximum(ch.q[g] - ch.q, 0.0)))


def test_conservative_exploration_spends_at_most_its_budget_on_models_rated_below() -> None:
    free, tight = _budget_case(0.0), _budget_case(0.002)
    assert free.greedy == tight.greedy == "a"
    assert free.q[1] > free.q[0]  # b is rated above the greedy choice
    assert _expected_loss(free) > 0.002  # without the budget exploring c and d costs more
    assert _expected_loss(tight) == pytest.approx(0.002)  # the budget binds exactly
    # b (rated above) keeps its Thompson share; c and d are cut by the same factor
    assert tight.propensities[1] == pytest.approx(free.propensities[1])
    cut = tight.propensities[2:] / free.propensities[2:]
    assert cut[0] == pytest.approx(cut[1]) and cut[0] < 0.5
    assert tight.propensities.sum() == pytest.approx(1.0)
    # a loose budget changes nothing
    np.testing.assert_allclose(_budget_case(1.0).propensities, free.propensities, atol=1e-15)


def test_conservative_exploration_needs_an_offline_router() -> None:
    """A cold start has no router's reward to protect: the budget does not apply."""
    a, b = _budget_case(0.0, profiled=False), _budget_case(0.002, profiled=False)
    np.testing.assert_allclose(a.propensities, b.propensities, atol=1e-15)
    assert 1.0 - a.propensities.max() == pytest.approx(0.2)


def test_explore_loss_is_validated_and_kept_in_snapshots(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="explore_loss"):
        _learner(explore_loss=-0.1)
    L = _learner(explore_loss=0.004)
    assert OnlineLearner.restore(L.snapshot(tmp_path / "s.safetensors")).explore_loss == 0.004
