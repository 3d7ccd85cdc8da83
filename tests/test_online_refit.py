"""The online learner's refit on its logged bandit outcomes (`llmroute.online.refit`) and the
learner's `rebase`: the IPS check that keeps a better offline router, the schedule, the cold
start, and the replay with a refitter."""

from __future__ import annotations

import numpy as np
import pytest

from llmroute.online.learner import OnlineLearner
from llmroute.online.refit import Refitter
from llmroute.online.simulate import run_stream

D = 16
#: true quality per cluster (rows) and model (columns): model 0 is right on A, model 1 on B
TRUTH = np.array([[0.85, 0.25], [0.2, 0.9]])


def _prompts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n unit embeddings around two orthogonal centres, and their cluster (0 = A, 1 = B)."""
    rng = np.random.default_rng(seed)
    cl = rng.integers(0, 2, n)
    E = 0.35 * rng.standard_normal((n, D))
    E[np.arange(n), cl] += 1.0
    return E / np.linalg.norm(E, axis=1, keepdims=True), cl


def _outcomes(cl: np.ndarray, seed: int) -> np.ndarray:
    """(n, 2) 0/1 outcomes drawn with the TRUTH probabilities."""
    rng = np.random.default_rng(seed + 1)
    return (rng.random((len(cl), 2)) < TRUTH[cl]).astype(float)


def _logged(base: np.ndarray | None, n: int = 800, p1: float = 0.3, seed: int = 0, **kw: object) -> Refitter:
    """A refitter with n outcomes logged by a policy that picks model 1 with probability p1."""
    E, cl = _prompts(n, seed)
    Q = _outcomes(cl, seed)
    rng = np.random.default_rng(seed + 2)
    r = Refitter(2, tradeoff=1.0, seed=seed, **kw)  # type: ignore[arg-type]
    for i in range(n):
        j = int(rng.random() < p1)
        r.log(
            E[i],
            j,
            Q[i, j],
            cost=0.0,
            propensity=p1 if j else 1.0 - p1,
            base=None if base is None else base[cl[i]],
            cost_estimates=[0.0, 0.0],
        )
    return r


def test_refit_replaces_a_router_its_outcomes_show_worse() -> None:
    # the router prefers model 0 everywhere; the outcomes show model 1 is far better on B
    wrong = np.array([[0.8, 0.3], [0.8, 0.3]])
    r = _logged(wrong)
    fit = r.fit()
    assert fit.gain is not None and fit.gain_se is not None
    # the true gain is half the prompts (B) x (0.9 - 0.2): the IPS estimate is near it
    assert fit.gain > 0.2
    assert fit.gain > r.confidence * fit.gain_se
    assert fit.better
    r.accept(fit)
    assert r.current is fit and not r.due()
    E, cl = _prompts(200, 7)
    q = r.current.predict(E)
    picks = np.argmax(q, axis=1)
    assert (picks == cl).mean() > 0.9  # model 0 on A, model 1 on B


def test_refit_keeps_a_router_that_is_right() -> None:
    right = TRUTH.copy()
    r = _logged(right)
    fit = r.fit()
    assert fit.gain is not None and fit.gain_se is not None
    assert not fit.better  # its decisions are the router's (or no better by 2 standard errors)
    assert r.refit() is None and r.current is None
    assert not r.due()  # rescheduled all the same


def test_check_margin_is_in_standard_errors() -> None:
    wrong = np.array([[0.8, 0.3], [0.8, 0.3]])
    fit = _logged(wrong, confidence=2.0).fit()
    assert fit.gain is not None and fit.gain_se is not None
    # the same fit under a margin above its own gain in standard errors is refused
    strict = type(fit)(fit.estimator, fit.rows, fit.gain, fit.gain_se, fit.gain / fit.gain_se + 0.1)
    assert fit.better and not strict.better
    # and a loss is never taken
    worse = type(fit)(fit.estimator, fit.rows, -fit.gain, fit.gain_se, 0.0)
    assert not worse.better


def test_cold_start_first_fit_is_taken_and_learns_the_split() -> None:
    r = _logged(None, p1=0.5)
    fit = r.fit()
    assert fit.gain is None and fit.better  # nothing to compare with
    assert fit.rows == 800  # nothing held out
    r.accept(fit)
    E, cl = _prompts(200, 9)
    assert (np.argmax(r.current.predict(E), axis=1) == cl).mean() > 0.9  # type: ignore[union-attr]


def test_schedule_and_bounds() -> None:
    r = Refitter(2, first=10, growth=1.5, max_rows=12)
    E, _ = _prompts(30, 3)
    for i in range(9):
        r.log(E[i], i % 2, 1.0)
    assert not r.due()
    r.log(E[9], 1, 0.0)
    assert r.due()
    r.refit()  # cold start: taken
    assert r.current is not None and not r.due()
    for i in range(10, 14):
        r.log(E[i], i % 2, 1.0)
    assert not r.due()  # next at 15 = 10 x 1.5
    r.log(E[14], 0, 1.0)
    assert r.due()
    assert len(r) == 12  # the oldest rows dropped
    with pytest.raises(ValueError, match="out of range"):
        r.log(E[0], 2, 1.0)
    with pytest.raises(ValueError, match="propensity"):
        r.log(E[0], 0, 1.0, propensity=0.0)
    r.add_model()
    assert r.n_models == 3 and r.current is None and r.due()
    r.log(E[0], 2, 1.0)
    with pytest.raises(ValueError, match="growth"):
        Refitter(2, growth=1.0)


def test_rebase_restarts_the_residuals_on_the_new_base() -> None:
    L = OnlineLearner(["a", "b"], D, seed=0, profiled=False)
    E, _ = _prompts(50, 4)
    for i in range(50):
        ch = L.choose(E[i])
        L.update(ch, ch.index, 1.0 if ch.index == 0 else 0.0, 0.001)
    assert np.abs(L.b_).sum() > 0
    cost = L.cost_res_.copy()
    L.rebase()
    assert L.profiled_.all()
    np.testing.assert_allclose(L.b_, 0.0)
    for j in range(2):
        mean, cov = L.posterior(L.models[j])
        np.testing.assert_allclose(mean, 0.0)
        np.testing.assert_allclose(cov, np.eye(L.dim + 2) * L.prior_var)
    np.testing.assert_allclose(L.cost_res_, cost)
    # the base is trusted now: the greedy choice is the base's argmax
    ch = L.choose(E[0], [0.2, 0.9], [0.0, 0.0], tradeoff=0.0)
    assert ch.greedy == "b"
    # rebase(profiled=False) keeps the wide prior of models without a profile
    L2 = OnlineLearner(["a", "b"], D, seed=0, profiled=False)
    L2.rebase(profiled=False)
    assert not L2.profiled_.any()
    np.testing.assert_allclose(L2.posterior("a")[1], np.eye(L2.dim + 2) * L2.new_model_prior_var)


def test_replay_with_a_refitter_learns_the_split_from_a_cold_start() -> None:
    n = 1200
    E, cl = _prompts(n, 11)
    Q = _outcomes(cl, 11)
    C = np.zeros_like(Q)
    rf = Refitter(2, first=100, seed=0)
    L = OnlineLearner(["a", "b"], D, seed=0, profiled=False)
    out = run_stream(L, E, Q, C, None, None, tradeoff=0.0, refitter=rf)
    assert rf.current is not None and L.profiled_.all()  # the refit is the learner's base
    assert len(rf) == n and float(out["refit_s"]) > 0
    tail = slice(n - n // 4, n)
    assert (out["picks"][tail] == cl[tail]).mean() > 0.85  # the right model per cluster at the end


def test_refit_with_the_routers_table_knows_what_the_router_knew() -> None:
    # the router was trained on a table with both clusters' full outcomes; the stream so far only
    # brought cluster A, where it picked model 0 (its estimates imputing the other cell)
    E_tab, cl_tab = _prompts(400, 21)
    Q_tab = _outcomes(cl_tab, 21)
    E, cl = _prompts(1200, 22)
    a = np.flatnonzero(cl == 0)[:300]
    Q = _outcomes(cl, 22)
    E_test, cl_test = _prompts(400, 23)
    b_test = cl_test == 1

    def refitter(table: bool) -> Refitter:
        r = Refitter(2, tradeoff=1.0, seed=0, validate=0.0)
        if table:
            r.set_table(E_tab, Q_tab)
        for i in a:
            r.log(E[i], 0, Q[i, 0], propensity=0.9, base=TRUTH[0], cost_estimates=[0.0, 0.0])
        return r

    with_table = refitter(True).fit()
    picks = np.argmax(with_table.predict(E_test), axis=1)
    assert (picks == cl_test).mean() > 0.9  # model 1 on B, known from the table only
    assert with_table.rows == len(a)  # the logged rows it was fitted on
    # without the table the refit never saw B: it extends A's rows there (model 0)
    alone = np.argmax(refitter(False).fit().predict(E_test), axis=1)
    assert (alone[b_test] == 1).mean() < 0.5


def test_table_rows_are_never_held_out_and_gain_a_column_with_a_new_model() -> None:
    E_tab, cl_tab = _prompts(50, 31)
    r = _logged(np.array([[0.8, 0.3], [0.8, 0.3]]), n=200)
    r.set_table(E_tab, _outcomes(cl_tab, 31))
    fit = r.fit()
    assert fit.gain is not None and fit.rows == 200 - int(0.2 * 200)  # held out: logged rows only
    r.add_model()
    assert r._table is not None and r._table[1].shape == (50, 3)
    assert np.isnan(r._table[1][:, 2]).all()  # the router's table never saw the new model
    with pytest.raises(ValueError, match="model columns"):
        r.set_table(E_tab, np.zeros((50, 2)))
    with pytest.raises(ValueError, match="embeddings"):
        r.set_table(E_tab, np.zeros((49, 3)))


def test_replay_exploration_decays_as_outcomes_accumulate() -> None:
    n = 2000
    E, cl = _prompts(n, 41)
    Q = _outcomes(cl, 41)
    C = np.zeros_like(Q)
    qb = np.tile([0.55, 0.5], (n, 1))  # a close call everywhere: Thompson keeps exploring
    cb = np.zeros_like(qb)

    def explored(decay: float) -> np.ndarray:
        L = OnlineLearner(["a", "b"], D, seed=0, profiled=True, explore_loss=0.0, confidence=100.0)
        out = run_stream(L, E, Q, C, qb, cb, tradeoff=0.0, explore_decay=decay)
        assert L.max_explore == 0.2 and L.explore_loss == 0.0  # the learner's own settings again
        return out["explored"]

    plain, decayed = explored(0.0), explored(50.0)
    assert decayed[:50].mean() > 0.05  # full exploration while there is little evidence
    late = slice(n // 2, n)  # factor sqrt(50 / 1000) ~ 0.22 at most there
    assert decayed[late].mean() < 0.5 * plain[late].mean()
    with pytest.raises(ValueError, match="explore_decay"):
        run_stream(
            OnlineLearner(["a", "b"], D), E[:2], Q[:2], C[:2], None, None, tradeoff=0.0, explore_decay=-1
        )
