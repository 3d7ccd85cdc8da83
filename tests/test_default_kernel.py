"""The default estimator's kernel smoother: the chunked (and, for big batches, threaded) kernel
sums give the numbers of the straightforward formula, computed in float64 (the exact value the
float32 kernel approximates), to float32 accumulation error.

(The reference used to be the earlier float32 formula itself with rtol 2e-6; both float32 forms
differ from the exact sums by up to ~3e-6 relative depending on the BLAS kernel and summation
order, so two float32 results could disagree by more than that tolerance on another CPU.)"""

from __future__ import annotations

import os

import numpy as np
import pytest

import llmroute.estimators.default as default_mod
from llmroute.estimators.base import Features
from llmroute.estimators.default import DefaultEstimator, _Base


def _reference_kernel(base: _Base, K: np.ndarray) -> list[np.ndarray]:
    """The kernel formula in float64 (the oracle): what `_Base._kernel` computes in float32."""
    E = np.asarray(K, dtype=np.float64)
    nb, m = len(base.betas), len(base.mu)
    M = np.concatenate([base.Qf, base.ok, np.ones((len(base.Qf), 1), np.float32)], axis=1).astype(np.float64)
    ET = np.asarray(base.E, dtype=np.float64).T
    num = np.empty((nb, len(E), m))
    den = np.empty((nb, len(E), m))
    tot = np.empty((nb, len(E)))
    for s0 in range(0, len(E), 256):
        S = E[s0 : s0 + 256] @ ET - 1.0
        for g, beta in enumerate(base.betas):
            R = np.exp(beta * S) @ M
            num[g, s0 : s0 + 256] = R[:, :m]
            den[g, s0 : s0 + 256] = R[:, m : 2 * m]
            tot[g, s0 : s0 + 256] = R[:, 2 * m]
    preds = (num + base.mu) / (den + 1.0)
    dens = [np.log(tot[g] / len(base.E) + 1e-9)[:, None] for g in range(nb)]
    return [preds[g] for g in range(nb)] + dens


def _unit(rng: np.random.Generator, n: int, d: int, centres: np.ndarray) -> np.ndarray:
    X = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def _base(n_train: int, m: int = 3, d: int = 32, seed: int = 0, complete: bool = False) -> _Base:
    """A kernel-only base with `n_train` remembered prompts (some outcomes missing unless
    `complete`)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, d))
    base = _Base([], [], 2.0, betas=(60.0, 25.5, 9.25))
    Q = (rng.random((n_train, m)) < 0.6).astype(np.float32)
    ok = rng.random((n_train, m)) > (0.0 if complete else 0.2)
    base.E = _unit(rng, n_train, d, centres)
    base.ok = ok.astype(np.float32)
    base.Qf = np.where(ok, Q, 0.0).astype(np.float32)
    base.mu = np.linspace(0.55, 0.7, m)
    base._MT = None
    base._centres = centres  # type: ignore[attr-defined]
    return base


@pytest.mark.parametrize("n_train", [300, 9000])  # 9000: 116-row chunks instead of 256
@pytest.mark.parametrize("n", [1, 7, 300, 4500])  # 4500: split over threads where BLAS has them
@pytest.mark.parametrize("m", [3, 6])  # cache-sized sub-blocks up to 8 outcome columns, else whole chunks
@pytest.mark.parametrize("complete", [False, True])  # no missing outcome: the observed sums are left out
def test_kernel_matches_the_reference_formula(n_train: int, n: int, m: int, complete: bool) -> None:
    base = _base(n_train, m=m, complete=complete)
    K = _unit(np.random.default_rng(n), n, 32, base._centres)  # type: ignore[attr-defined]
    got = base._kernel(K)
    want = _reference_kernel(base, K)
    assert len(got) == len(want) == 6
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert base._complete is complete
    step = base._kernel_step()
    sub = max(8, min((1 << 17) // n_train, step))
    columns = m + 1 if complete else 2 * m + 1
    assert base._kernel_sub(step) == (sub if columns <= default_mod._KERNEL_SUB_MAX_COLS else step)


def test_threaded_and_single_thread_kernels_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    base = _base(5000)
    K = _unit(np.random.default_rng(5), 1100, 32, base._centres)  # type: ignore[attr-defined]
    monkeypatch.setattr(default_mod, "_kernel_threads", lambda n: 1)
    one = base._kernel(K)
    for threads in (2, 3):
        monkeypatch.setattr(default_mod, "_kernel_threads", lambda n, t=threads: t)
        many = base._kernel(K)
        for a, b in zip(many, one, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def test_predictions_unchanged_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((4, 24))
    Xtr = Features(_unit(rng, 400, 24, centres), rng.standard_normal((400, 2)).astype(np.float32))
    Q = (rng.random((400, 3)) < 0.5).astype(float)
    est = DefaultEstimator(kernel_dim=16).fit(Xtr, Q)
    Xte = Features(_unit(rng, 600, 24, centres), rng.standard_normal((600, 2)).astype(np.float32))
    got = est.predict(Xte)
    monkeypatch.setattr(_Base, "_kernel", _reference_kernel)
    want = est.predict(Xte)
    assert np.abs(got - want).max() <= 1e-6


def test_kernel_threads_rule() -> None:
    assert default_mod._kernel_threads(1) == 1
    assert default_mod._kernel_threads(2 * default_mod._KERNEL_THREAD_ROWS - 1) == 1
    big = default_mod._kernel_threads(100_000)
    assert 1 <= big <= max(1, os.cpu_count() or 1)
