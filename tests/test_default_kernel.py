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
from llmroute.estimators.default import DefaultEstimator, _Base, _KernelMemory


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
    mem = base._memory
    assert mem is not None and mem.complete is complete
    assert mem.bounds is None  # betas this small leave no block out: one pass over every row
    assert len(mem.MT) == (m + 1 if complete else 2 * m + 1)  # random missing cells: m patterns
    step = base._kernel_step()
    sub = max(8, min((1 << 17) // n_train, step))
    want_sub = sub if len(mem.MT) <= default_mod._KERNEL_SUB_MAX_COLS else step
    assert _Base._kernel_sub(step, n_train, len(mem.MT)) == want_sub


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


# ---- blocked kernel memory: templated prompts, sharp kernels -------------------------------------
def _tight(rng: np.random.Generator, n: int, centres: np.ndarray, noise: float) -> np.ndarray:
    X = centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, centres.shape[1]))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def _sharp_base(n_train: int, m: int, betas: tuple[float, ...], noise: float = 0.15, seed: int = 0) -> _Base:
    """A kernel-only base over tight clusters with sharp kernels (the routerbench case: most
    blocks of the memory are far from a query). Models 0 and 1 miss the same rows, model 2
    misses none, the others miss their own."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, 32))
    base = _Base([], [], 2.0, betas=betas)
    Q = (rng.random((n_train, m)) < 0.6).astype(np.float32)
    ok = rng.random((n_train, m)) > 0.2
    ok[:, 1] = ok[:, 0]
    ok[:, 2] = True
    base.E = _tight(rng, n_train, centres, noise)
    base.ok = ok.astype(np.float32)
    base.Qf = np.where(ok, Q, 0.0).astype(np.float32)
    base.mu = np.linspace(0.55, 0.7, m)
    base._centres = centres  # type: ignore[attr-defined]
    return base


def _queries(base: _Base, n: int, seed: int) -> np.ndarray:
    """Near the clusters, far from all of them (random directions), zero rows and training rows."""
    rng = np.random.default_rng(seed)
    K = _tight(rng, n, base._centres, 0.15)  # type: ignore[attr-defined]
    far = rng.random(n) < 0.3
    K[far] = _unit(rng, int(far.sum()), 32, rng.standard_normal((3, 32)))
    if n > 2:
        K[0] = 0.0
        K[1] = base.E[5]
    return K


@pytest.mark.parametrize("n", [1, 2, 7, 300, 4500])
@pytest.mark.parametrize("m", [3, 6])
def test_blocked_kernel_matches_the_reference_formula(n: int, m: int) -> None:
    base = _sharp_base(3000, m, betas=(600.0, 240.0, 150.0))
    K = _queries(base, n, seed=n)
    got = base._kernel(K)
    want = _reference_kernel(base, K)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    mem = base._memory
    assert mem is not None and mem.bounds is not None and not mem.complete
    # models 0 and 1 share one observed-weight sum, model 2 uses the total weight
    assert len(mem.MT) == m + (m - 2) + 1
    assert mem.den[0] == mem.den[1] != mem.den[2] == len(mem.MT) - 1
    if n >= 300:  # blocks were left out: fewer sums than rows x training rows
        items = mem.plan(K, base._kernel_step())
        done = sum(len(r) * (c.stop - c.start) for r, c in items)
        assert done < 0.6 * n * len(base.E)


@pytest.mark.parametrize("noise", [0.15, 0.6])  # tight and wide blocks
@pytest.mark.parametrize("betas", [(60.0,), (200.0, 30.0), (400.0, 90.0), (3000.0, 1100.0)])
@pytest.mark.parametrize("n_train", [2000, 9000])  # 9000: block centres fitted on a sample
def test_needed_blocks_hold_every_weight_above_the_cut(
    noise: float, betas: tuple[float, ...], n_train: int
) -> None:
    base = _sharp_base(n_train, 3, betas=betas, noise=noise)
    rng = np.random.default_rng(1)
    K = np.concatenate(
        [
            base.E[:300],  # the training rows themselves (weight 1 in their own block)
            _queries(base, 400, seed=2),
            _tight(rng, 300, base.E[rng.integers(0, n_train, 30)].astype(np.float64), 0.02),
        ]
    )
    base._kernel(K[:1])
    mem = base._memory
    assert mem is not None and mem.bounds is not None
    need = mem.needed(K)
    # exact float64 exponents of the widest kernel, per (query, training row) in storage order
    expo = min(betas) * (K.astype(np.float64) @ mem.ET.astype(np.float64) - 1.0)
    block_max = np.maximum.reduceat(expo, mem.bounds[:-1], axis=1)
    assert need[block_max >= -default_mod._KERNEL_CUT].all()
    if min(betas) >= 90:
        assert not need.all()  # and blocks are left out


def test_small_or_flat_memories_are_not_blocked() -> None:
    assert _KernelMemory(*_memory_inputs(400), betas=(3000.0,)).bounds is None  # few rows
    assert _KernelMemory(*_memory_inputs(3000), betas=(20.0,)).bounds is None  # wide kernel
    assert _KernelMemory(*_memory_inputs(3000), betas=(3000.0, 20.0)).bounds is None  # widest decides


def _memory_inputs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = _sharp_base(n, 3, betas=(1.0,))
    return base.E, base.Qf, base.ok


def test_sharp_kernel_predictions_unchanged_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few-shot-like prompts (one shared template, small differences): the fitted widths are
    sharp, the kernel memory is blocked, and predictions equal the reference formula's."""
    rng = np.random.default_rng(4)
    shared = rng.standard_normal(24)
    tasks = rng.standard_normal((3, 24))

    def emb(n: int) -> np.ndarray:
        X = shared * 6.0 + tasks[rng.integers(0, 3, n)] * 1.5 + 0.3 * rng.standard_normal((n, 24))
        return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)

    Xtr = Features(emb(900), rng.standard_normal((900, 2)).astype(np.float32))
    Q = (rng.random((900, 3)) < 0.5).astype(float)
    est = DefaultEstimator(kernel_dim=16).fit(Xtr, Q)
    Xte = Features(
        np.concatenate([emb(500), _unit(rng, 100, 24, rng.standard_normal((2, 24)))]),
        rng.standard_normal((600, 2)).astype(np.float32),
    )
    got = est.predict(Xte)
    mem = est.base_._memory
    assert mem is not None and mem.bounds is not None
    monkeypatch.setattr(_Base, "_kernel", _reference_kernel)
    want = est.predict(Xte)
    assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("n", [0, 1, 2, 500])
def test_per_cluster_products_equal_the_gathered_einsum(n: int) -> None:
    """Cluster experts (and stacker corrections): one product per cluster present, the numbers of
    einsum over the gathered (n, p, m) weights."""
    rng = np.random.default_rng(n)
    Z = rng.standard_normal((n, 40))
    W = rng.standard_normal((7, 40, 5))
    lab = rng.choice([0, 2, 3, 6], size=n)  # clusters 1, 4, 5 absent
    got = default_mod._per_cluster_product(Z, W, lab)
    want = np.einsum("np,npm->nm", Z, W[lab])
    assert got.shape == (n, 5)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 40])
@pytest.mark.parametrize("scale", [0.9, 0.99])
def test_blocked_kernel_rows_that_are_not_unit_vectors_use_every_block(n: int, scale: float) -> None:
    """The block bound holds for unit (and zero) query rows; any other row is summed over all."""
    base = _sharp_base(3000, 3, betas=(600.0, 240.0, 150.0))
    K = _tight(np.random.default_rng(9), n, base._centres, 0.15) * np.float32(scale)  # type: ignore[attr-defined]
    for a, b in zip(base._kernel(K), _reference_kernel(base, K), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    mem = base._memory
    assert mem is not None and mem.bounds is not None and mem.needed(K).all()
    assert all(c == slice(0, len(base.E)) or c == slice(None) for _, c in mem.plan(K, 256))
