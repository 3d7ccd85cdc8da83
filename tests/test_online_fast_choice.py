"""`OnlineLearner.choose` (the per-request path, precomputed posterior means and one matrix-vector
product) makes the same decisions, with the same propensities and random stream, as the direct
per-model computation it replaced (kept below, verbatim, as the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from llmroute.online import OnlineLearner


def _reference_choose(L: OnlineLearner, x0, q_base, c_base, lam, candidates):  # type: ignore[no-untyped-def]
    """The former `choose`: per-model contexts, einsum estimates, masked draws, Generator.choice."""
    qf, cf = L._fill(q_base, c_base)
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
        draws = mean + sd * L.rng.standard_normal((L.n_samples, m))
        draws[:, ~allowed] = -np.inf
        target = np.bincount(draws.argmax(axis=1), minlength=m) / L.n_samples
    elif L.method == "linucb" and L.max_explore > 0:
        target[int(np.argmax(np.where(allowed, mean + L.ucb_alpha * sd, -np.inf)))] = 1.0
    else:
        target[g] = 1.0
    dev = 1.0 - target[g]
    scale = min(1.0, L.max_explore / dev) if dev > 0 else 0.0
    probs = target * scale
    probs[g] = 1.0 - scale * dev
    k = int(L.rng.choice(m, p=probs / probs.sum())) if dev > 0 else g
    return k, g, probs, q, c


@pytest.mark.parametrize("method", ["thompson", "linucb", "greedy"])
@pytest.mark.parametrize("confidence", [0.0, 1.0])
@pytest.mark.parametrize(("m", "n_samples"), [(12, 256), (2, 256), (2, 100)])
def test_fast_choice_equals_the_reference(method: str, confidence: float, m: int, n_samples: int) -> None:
    models = [f"m{i}" for i in range(m)]
    kw = {"method": method, "dim": 32, "max_explore": 0.3, "confidence": confidence, "n_samples": n_samples}
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
        np.testing.assert_array_equal(ch.propensities, probs)
        np.testing.assert_allclose(ch.q, qr, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ch.c, cr, rtol=0, atol=1e-12)
        explored += ch.explored
        score = float(data.random())
        fast.update(ch, ch.index, score, 0.01)
        # the reference learns the same outcome at the same context row
        x = ref.context(emb)
        qf, cf = ref._fill(q, c)
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
