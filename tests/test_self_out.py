"""Leave-self-out estimates of the default estimator (`DefaultEstimator.predict(exclude_self=True)`)
and their use by onboarding: a prompt in the training memory gets the estimate an estimator
without that row would give (the kernel part exactly, the ridge and cluster experts by the exact
leave-one-out identity), a prompt not in the memory gets exactly the ordinary estimate, and
`add_model` fits a profile of training prompts on those estimates."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from llmroute.estimators.base import Features
from llmroute.estimators.default import DefaultEstimator, _Base
from llmroute.estimators.default_kernel import self_matches
from llmroute.estimators.default_math import _fill, _ridge_gcv
from llmroute.estimators.profiled import fit_profile
from llmroute.router import Router
from onboard_fixtures import KNOWN, draw_profile, keep_models, synthetic_tables

DUP = (4, 5)  # training row 5 is a copy of row 4's prompt (with other outcomes)


def _data(n: int, m: int = 3, dim: int = 24, seed: int = 0) -> tuple[Features, np.ndarray]:
    """n prompts around 6 centres, outcomes depending on the centre, some missing; row 5 = row 4."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim)) * 2.0
    lab = rng.integers(0, 6, n)
    emb = centres[lab] + rng.standard_normal((n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    extra = rng.standard_normal((n, 2))
    emb[DUP[1]], extra[DUP[1]] = emb[DUP[0]], extra[DUP[0]]
    p = 0.2 + 0.6 * ((lab[:, None] + np.arange(m)) % 3 == 0)
    Q = (rng.random((n, m)) < p).astype(np.float64)
    Q[rng.random((n, m)) < 0.1] = np.nan
    return Features(emb.astype(np.float32), extra.astype(np.float32)), Q


@pytest.fixture(scope="module")
def fitted() -> tuple[DefaultEstimator, Features, np.ndarray]:
    X, Q = _data(700)
    est = DefaultEstimator(expert_sizes=(300, 100), logistic=False, selection="stack", seed=0).fit(X, Q)
    return est, X, Q


def _without_rows(est: DefaultEstimator, rows: list[int]) -> DefaultEstimator:
    """A copy of `est` whose kernel memory lacks `rows` (everything else as fitted)."""
    ref = copy.deepcopy(est)
    b = ref.base_
    keep = np.setdiff1d(np.arange(len(b.E)), rows)
    b.E, b.Qf, b.ok = b.E[keep], b.Qf[keep], b.ok[keep]
    b._memory, b.lev = None, None
    return ref


def _inputs(est: DefaultEstimator, X: Features, exclude_self: bool) -> np.ndarray:
    labs, sims = est._labels(X)
    return est.base_.transform(X, est._z(X), labs, sims, est._kernel_emb(X), exclude_self)


def test_blocked_kernel_memory_without_the_row() -> None:
    """Sharp kernels over many rows: the memory is stored in blocks (reordered); the rows left
    out are found through its row map."""
    rng = np.random.default_rng(1)
    n, m, d = 900, 3, 32
    centres = rng.standard_normal((12, d))
    E = centres[rng.integers(0, 12, n)] + 0.15 * rng.standard_normal((n, d))
    E = (E / np.linalg.norm(E, axis=1, keepdims=True)).astype(np.float32)
    E[DUP[1]] = E[DUP[0]]
    ok = rng.random((n, m)) > 0.2
    base = _Base([], [], 2.0, betas=(400.0, 150.0, 60.0))
    base.E, base.ok, base.mu = E, ok.astype(np.float32), np.array([0.5, 0.6, 0.7])
    base.Qf = np.where(ok, rng.random((n, m)) < 0.6, 0.0).astype(np.float32)
    mem = base._memory_built()
    assert mem.bounds is not None and not np.array_equal(mem.rows, np.arange(n))
    rows = [DUP[0], 3, 450, 899]
    got = base._kernel(E[rows], self_matches(mem, E[rows]))
    for a, r in enumerate(rows):
        drop = list(DUP) if r in DUP else [r]
        ref = copy.deepcopy(base)
        keep = np.setdiff1d(np.arange(n), drop)
        ref.E, ref.Qf, ref.ok, ref._memory = E[keep], base.Qf[keep], base.ok[keep], None
        want = ref._kernel(E[[r]])
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g[a], w[0], rtol=1e-5, atol=1e-6)


def test_kernel_part_is_the_memory_without_the_row(fitted) -> None:
    est, X, _ = fitted
    kernel_only = copy.deepcopy(est)
    kernel_only.base_.lev = None  # the ridge and experts as fitted: only the kernel part differs
    rows = [0, DUP[0], DUP[1], 17, 333, 699]
    got = _inputs(kernel_only, X.take(np.array(rows)), exclude_self=True)  # one batch
    ordinary = _inputs(kernel_only, X.take(np.array(rows)), exclude_self=False)
    for r, g, o in zip(rows, got, ordinary, strict=True):
        drop = list(DUP) if r in DUP else [r]  # a duplicate of the prompt is left out too
        ref = _inputs(_without_rows(est, drop), X.take(np.array([r])), exclude_self=False)[0]
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
        assert np.abs(g - o).max() > 1e-3  # the row's own outcome mattered
    # the whole estimate too (the stacker applied to those inputs)
    ref = _without_rows(est, [17])
    ref.base_.lev = None
    np.testing.assert_allclose(
        kernel_only.predict(X.take(np.array([17])), exclude_self=True),
        ref.predict(X.take(np.array([17]))),
        atol=1e-6,
    )


def test_ridge_and_experts_are_exact_leave_one_out(fitted) -> None:
    est, X, Q = fitted
    b, m = est.base_, Q.shape[1]
    Z = est._z(X)
    labs, _ = est._labels(X)
    Qf = _fill(Q, b.mu)
    i = 17
    rest = np.setdiff1d(np.arange(len(Q)), [i])
    B = _inputs(est, X.take(np.array([i])), exclude_self=True)[0]
    # the global ridge refitted without row i, same penalty
    W, c, _ = _ridge_gcv(Z[rest], Qf[rest], alphas=np.array([b.alpha]))
    glob_loo = Z[i] @ W + c
    np.testing.assert_allclose(B[:m], glob_loo, atol=1e-8)
    # each expert level: row i's cluster ridge refitted without it on the same targets
    resid = Qf - (Z @ b.W + b.b)
    for e in range(len(est.experts_)):
        lab = labs[len(est.protos_) + e]
        rows = np.flatnonzero(lab == lab[i])
        assert len(rows) >= 20
        _, _, alpha = _ridge_gcv(Z[rows], resid[rows])
        keep = rows[rows != i]
        LW, Lb, _ = _ridge_gcv(Z[keep], resid[keep], alphas=np.array([alpha]))
        np.testing.assert_allclose(B[(1 + e) * m : (2 + e) * m], glob_loo + Z[i] @ LW + Lb, atol=1e-8)
    # and they moved away from the in-sample fit
    assert np.abs(B[:m] - (Z[i] @ b.W + b.b)).max() > 1e-4


def test_prompts_not_in_memory_are_unchanged(fitted) -> None:
    est, _, _ = fitted
    Xn, _ = _data(50, seed=9)
    q = est.predict(Xn)
    assert np.array_equal(est.predict(Xn, exclude_self=True), q)
    # in a batch with training prompts, the new prompts' rows are still unchanged
    _, X, _ = fitted
    both = Features(np.concatenate([Xn.emb, X.emb[:5]]), np.concatenate([Xn.extra, X.extra[:5]]))
    assert np.array_equal(est.predict(both, exclude_self=True)[:50], est.predict(both)[:50])


def test_leverages_are_saved_and_recomputable(fitted) -> None:
    est, X, Q = fitted
    arrays, params = est.get_state()
    again = DefaultEstimator.from_state(arrays, params)
    assert np.array_equal(again.base_.lev, est.base_.lev)
    old = DefaultEstimator.from_state({k: v for k, v in arrays.items() if k != "kernel.lev"}, params)
    assert old.base_.lev is None  # a state saved before: only the kernel part is left out
    assert not np.array_equal(
        old.predict(X.take(np.arange(3)), exclude_self=True), est.predict(X.take(np.arange(3)))
    )
    old.fit_leverage(X, Q)
    np.testing.assert_allclose(old.base_.lev, est.base_.lev, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="training table"):
        old.fit_leverage(X.take(np.arange(100)), Q[:100])


@pytest.fixture(scope="module")
def default_router():
    train, test = synthetic_tables()
    r = Router.fit(
        keep_models(train, KNOWN),
        estimator="default",
        encoder="static-minilm",
        seed=0,
        logistic=False,
        selection="stack",
    )
    return r, train, test


def test_add_model_fits_training_prompts_on_self_out_estimates(default_router) -> None:
    r0, train, test = default_router
    new = next(m for m in train.models if m not in KNOWN)
    prof = draw_profile(train, new, 60, seed=3)  # training prompts: in the router's memory
    r = copy.deepcopy(r0)
    before = r.estimate(test.prompts)[0]
    r.add_model(new, prof)
    X = r.featurize(prof.prompts)
    est = r.estimator
    self_out = est.base_estimates(X, exclude_self=True)
    in_sample = est.base_estimates(X)
    assert np.abs(self_out - in_sample).max() > 1e-3
    y = prof.quality_matrix()[:, 0]
    fit = est.profiles_[-1]
    expect = fit_profile(self_out, X.emb, y)
    np.testing.assert_allclose(fit.w, expect.w)
    assert fit.b == pytest.approx(expect.b)
    naive = fit_profile(in_sample, X.emb, y)
    assert not (np.allclose(fit.w, naive.w) and fit.b == pytest.approx(naive.b))
    after = r.estimate(test.prompts)[0]
    assert np.array_equal(after[:, :-1], before)  # the known models' estimates are unchanged


def test_add_model_from_new_prompts_is_unchanged(default_router) -> None:
    r0, train, test = default_router
    new = next(m for m in test.models if m not in KNOWN)
    seen = set(train.prompts)
    fresh = test.subset([i for i, p in zip(test.prompt_ids, test.prompts, strict=True) if p not in seen])
    assert len(fresh.prompt_ids) < len(
        test.prompt_ids
    )  # the synthetic test set repeats a few training prompts
    prof = draw_profile(fresh, new, 60, seed=4)  # prompts the router never saw
    r = copy.deepcopy(r0)
    r.add_model(new, prof)
    X = r.featurize(prof.prompts)
    est = r.estimator
    assert np.array_equal(est.base_estimates(X, exclude_self=True), est.base_estimates(X))
    expect = fit_profile(est.base_estimates(X), X.emb, prof.quality_matrix()[:, 0])
    assert np.array_equal(est.profiles_[-1].w, expect.w)


def test_a_repeated_training_prompt_counts_as_in_memory(default_router) -> None:
    r, train, test = default_router
    seen = set(train.prompts)
    dup = [p for p in test.prompts if p in seen][:3]
    X = r.featurize(dup)
    assert not np.array_equal(r.estimator.predict(X, exclude_self=True), r.estimator.predict(X))
