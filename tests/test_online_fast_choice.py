"""`OnlineLearner.choose` (the per-request path, precomputed posterior means and one matrix-vector
product) makes the same decisions, with the same propensities and random stream, as the direct
per-model computation it replaced (kept below as the reference). Thompson's pick probabilities
are computed (`win_probabilities`), no longer estimated from 256 draws: the reference uses the
same function, which is checked on its own against a dense quadrature and against sampling, and
the logged propensity against the pick frequency."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmroute.online import OnlineLearner
from llmroute.online.learner import win_probabilities


def _reference_choose(L: OnlineLearner, x0, q_base, c_base, lam, candidates):  # type: ignore[no-untyped-def]
    """The former `choose`: per-model contexts, einsum estimates, masked means, Generator.choice."""
    qf, cf = (np.array(v) for v in L._fill_list(q_base, c_base))
    X = np.repeat(x0[None, :], len(qf), axis=0)
    X[:, -2] = qf - 0.5
    AX = np.einsum("mde,me->md", L.A_inv_, X)
    q = qf + np.einsum("md,md->m", L.b_, AX)
    sd = np.sqrt(np.maximum(np.einsum("md,md->m", AX, X), 0.0))
    c = cf + L.cost_res_ / (L.n_ + 1.0)
    allowed = np.ones(len(L.models), bool) if candidates is None else candidates
    mean = np.where(allowed, q - lam * c, -np.inf)
    base = np.where(allowed, qf - lam * cf, -np.inf)
    if L.confidence <= 0 or not L.profiled_.any():
        g = int(np.argmax(mean))
    else:
        b = int(np.argmax(base))
        sure = mean - mean[b] > L.confidence * np.sqrt(sd**2 + sd[b] ** 2)
        g = int(np.argmax(np.where(sure, mean, -np.inf))) if sure.any() else b
    m = len(L.models)
    target = np.zeros(m)
    if L.method == "thompson" and L.max_explore > 0:
        target = win_probabilities(mean, sd)  # was: pick shares of 256 draws (see below)
    elif L.method == "linucb" and L.max_explore > 0:
        target[int(np.argmax(np.where(allowed, mean + L.ucb_alpha * sd, -np.inf)))] = 1.0
    else:
        target[g] = 1.0
    dev = 1.0 - target[g]
    scale = min(1.0, L.max_explore / dev) if dev > 0 else 0.0
    probs = target * scale
    probs[g] = 1.0 - scale * dev
    low = (np.arange(m) != g) & (probs > 0) & (mean < mean[g]) & L.profiled_
    loss = float((probs[low] * (mean[g] - mean[low])).sum())
    if dev > 0 and L.explore_loss > 0 and L.profiled_.any() and loss > L.explore_loss:
        probs[low] *= L.explore_loss / loss  # conservative exploration: the budget binds
        probs[g] = 0.0
        probs[g] = 1.0 - probs.sum()
    k = int(L.rng.choice(m, p=probs / probs.sum())) if dev > 0 else g
    return k, g, probs, q, c


@pytest.mark.parametrize("method", ["thompson", "linucb", "greedy"])
@pytest.mark.parametrize("confidence", [0.0, 1.0])
@pytest.mark.parametrize("m", [12, 3, 2])
def test_fast_choice_equals_the_reference(method: str, confidence: float, m: int) -> None:
    models = [f"m{i}" for i in range(m)]
    kw = {"method": method, "dim": 32, "max_explore": 0.3, "confidence": confidence}
    fast = OnlineLearner(models, 16, seed=3, **kw)  # type: ignore[arg-type]
    ref = OnlineLearner(models, 16, seed=3, **kw)  # type: ignore[arg-type]
    data = np.random.default_rng(11)
    explored = 0
    for t in range(400):
        emb = data.standard_normal(16)
        q = data.uniform(0.2, 0.9, m)
        c = data.uniform(0.0, 0.05, m)
        if t % 7 == 0:
            q[data.integers(m)] = np.nan  # a model without a profile
        if t % 11 == 0:
            c[data.integers(m)] = np.nan
        mask = data.random(m) < 0.8 if t % 3 == 0 else None
        if mask is not None:
            mask[data.integers(m)] = True
        lam = float(data.choice([0.0, 5.0, 20.0]))
        ch = fast.choose(emb, q, c, tradeoff=lam, candidates=mask)
        k, g, probs, qr, cr = _reference_choose(ref, ref.context(emb), q, c, lam, mask)
        assert (ch.index, models.index(ch.greedy)) == (k, g)
        np.testing.assert_allclose(ch.propensities, probs, rtol=0, atol=1e-12)  # means differ in ulps
        np.testing.assert_allclose(ch.q, qr, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ch.c, cr, rtol=0, atol=1e-12)
        explored += ch.explored
        score = float(data.random())
        fast.update(ch, ch.index, score, 0.01)
        # the reference learns the same outcome at the same context row
        x = ref.context(emb)
        qf, cf = (np.array(v) for v in ref._fill_list(q, c))
        x[-2] = qf[k] - 0.5
        ref.observe(x, k, score - qf[k], 0.01 - cf[k])
    assert fast.rng.random() == ref.rng.random()  # same random stream consumed
    if method != "greedy":
        assert explored > 0  # the comparison covered exploring choices
    np.testing.assert_allclose(fast.A_inv_, ref.A_inv_, atol=1e-12)


def test_posterior_means_follow_updates_and_model_changes() -> None:
    L = OnlineLearner(["a", "b"], 4, dim=2, seed=0)
    L.choose(np.ones(4), np.array([0.5, 0.5]), np.array([0.0, 0.0]))  # computes the means
    L.observe(np.array([1.0, 0.0, 0.1, 1.0]), 1, 0.3)
    np.testing.assert_allclose(L._means()[1], L.posterior("b")[0], atol=1e-12)
    L.add_model("c")
    assert L._means().shape == (3, 4)
    L.observe(np.array([0.0, 1.0, 0.2, 1.0]), 2, -0.2)
    for j, m in enumerate(L.models):
        np.testing.assert_allclose(L._means()[j], L.posterior(m)[0], atol=1e-12)
    L.remove_model("a")
    np.testing.assert_allclose(L._means()[1], L.posterior("c")[0], atol=1e-12)
    R = OnlineLearner.from_bytes(L.to_bytes())
    np.testing.assert_allclose(R._means(), L._means(), atol=1e-12)


def _quadrature(mean: np.ndarray, sd: np.ndarray, n: int = 20_001) -> np.ndarray:
    """P(i's draw is the highest) by the definition, integral of pdf_i(t) prod_{j != i} cdf_j(t),
    on a dense trapezoid grid (independent of `win_probabilities`' grid and split rule)."""
    from scipy.special import log_ndtr

    live = np.isfinite(mean)
    mu, s = mean[live], sd[live]
    t = np.linspace(float((mu - 9 * s).min()), float((mu + 9 * s).max()), n)
    z = (t[None, :] - mu[:, None]) / s[:, None]
    logcdf = log_ndtr(z)
    logpdf = -0.5 * z**2 - np.log(s[:, None] * np.sqrt(2 * np.pi))
    others = logcdf.sum(axis=0)[None, :] - logcdf
    p = np.trapezoid(np.exp(logpdf + others), t, axis=1)
    out = np.zeros(len(mean))
    out[live] = p
    return out


def test_win_probabilities_match_the_definition() -> None:
    rng = np.random.default_rng(0)
    worst = 0.0
    for trial in range(60):
        m = int(rng.integers(2, 12))
        mean = rng.uniform(0.2, 0.9, m)
        sd = np.exp(rng.uniform(np.log(0.02), np.log(0.8), m))
        if trial % 5 == 0:  # a disallowed model (mean -inf) never wins
            mean[rng.integers(m)] = -np.inf
        p = win_probabilities(mean, sd)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert (p >= 0).all() and (p[~np.isfinite(mean)] == 0).all()
        ref = _quadrature(mean, sd)
        tol = 1e-6 if np.isfinite(mean).sum() == 2 else 4e-3  # two: the closed form
        assert np.abs(p - ref).max() < tol, (mean, sd, p, ref)
        worst = max(worst, float(np.abs(p - ref).max()))
    assert worst > 1e-5  # the grid's error is measured, not hidden by a degenerate sample
    # far behind (more than 2 x 6 sd): probability 0, and the rest still sums to 1
    p = win_probabilities(np.array([0.9, 0.1, 0.88]), np.array([0.01, 0.01, 0.02]))
    assert p[1] == 0.0 and p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(p[2], 0.5 * math.erfc(0.02 / math.sqrt(0.0005) / math.sqrt(2)), atol=1e-12)


def test_win_probabilities_are_thompson_pick_shares() -> None:
    """Thompson sampling picks the argmax of one draw per model: its pick shares over many
    draws estimate exactly what `win_probabilities` computes."""
    rng = np.random.default_rng(1)
    n = 200_000
    for mean, sd in [
        (np.array([0.55, 0.5]), np.array([0.05, 0.2])),
        (np.array([0.6, 0.55, 0.5, 0.3]), np.array([0.05, 0.1, 0.2, 0.4])),
        (np.array([0.7, 0.69, 0.71, 0.5, -np.inf, 0.65]), np.array([0.01, 0.3, 0.05, 0.15, 0.1, 0.02])),
    ]:
        draws = mean + sd * rng.standard_normal((n, len(mean)))
        share = np.bincount(draws.argmax(axis=1), minlength=len(mean)) / n
        np.testing.assert_allclose(win_probabilities(mean, sd), share, atol=4 * np.sqrt(0.25 / n) + 4e-3)


@pytest.mark.parametrize(
    ("max_explore", "m", "explore_loss"),
    [(1.0, 4, 0.0), (0.1, 4, 0.0), (1.0, 2, 0.0), (0.1, 2, 0.0), (1.0, 4, 0.01), (0.1, 2, 0.002)],
)
def test_logged_propensity_is_the_pick_frequency(max_explore: float, m: int, explore_loss: float) -> None:
    """One fixed posterior, many decisions: each model is picked as often as its logged
    propensity says (exploration bounded by max_explore, by the loss budget, or not); every
    decision logs the same propensities."""
    L = OnlineLearner(
        [f"m{i}" for i in range(m)],
        8,
        max_explore=max_explore,
        prior_var=0.05,
        seed=4,
        explore_loss=explore_loss,
    )
    emb = np.linspace(-1.0, 1.0, 8)
    q = np.array([0.55, 0.5, 0.52, 0.4][:m])
    c = np.zeros(m)
    n = 5_000
    counts = np.zeros(m)
    ch0 = L.choose(emb, q, c)
    first, first_q = ch0.propensities, ch0.q
    for _ in range(n):
        ch = L.choose(emb, q, c)
        np.testing.assert_array_equal(ch.propensities, first)
        assert ch.propensity == first[ch.index]
        counts[ch.index] += 1
    assert (first > 0.02).sum() >= 2  # not trivial: at least two models are picked
    if explore_loss > 0:  # the loss budget is what scaled them (the greedy choice is m0)
        assert float(first @ np.maximum(first_q[0] - first_q, 0.0)) == pytest.approx(explore_loss)
    elif max_explore < 1.0:
        assert 1.0 - first.max() == pytest.approx(max_explore)  # the bound is what scaled them
    np.testing.assert_allclose(counts / n, first, atol=4 * np.sqrt(0.25 / n))


@pytest.mark.parametrize("k", [1, 2, 3, 32, 70])
def test_observe_many_is_the_sequential_updates(k: int) -> None:
    """A batch of outcomes of one model (a rank-k update, the gateway's batches) gives the same
    posterior, cost correction and counts as learning them one by one, downdates included."""
    rng = np.random.default_rng(k)
    one = OnlineLearner(["a", "b"], 8, dim=4, seed=0)
    many = OnlineLearner(["a", "b"], 8, dim=4, seed=0)
    X = np.array([one.context(rng.standard_normal(8)) for _ in range(k)])
    X[:, -2] = rng.uniform(-0.4, 0.4, k)
    r = rng.uniform(-0.5, 0.5, k)
    costs = [float(v) if i % 3 else None for i, v in enumerate(rng.uniform(-0.01, 0.01, k))]
    w = np.ones(k)
    for i in range(k):
        one.observe(X[i], 1, float(r[i]), costs[i])
    many.observe_many(X, 1, r, costs, w)
    before = many._means().copy()  # the mean follows the batch update
    if k >= 2:  # then undo the first two (weight -1), as a replaced outcome does
        for i in range(2):
            one.observe(X[i], 1, float(r[i]), costs[i], weight=-1.0)
        many.observe_many(X[:2], 1, r[:2], costs[:2], -np.ones(2))
        assert not np.allclose(before, many._means())
    np.testing.assert_allclose(many.A_inv_, one.A_inv_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(many.b_, one.b_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(many.cost_res_, one.cost_res_, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(many.n_, one.n_)
    np.testing.assert_allclose(many._means(), one._means(), rtol=0, atol=1e-10)
