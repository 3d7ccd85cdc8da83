"""The learner's per-request decision path of a routing micro-batch (issue 13, the served
throughput with learning on): two models take an unrolled copy of `pick`'s arithmetic
(`OnlineLearner._probs_two`), a micro-batch draws its uniforms together (`pick_rows`) and
`prepare_embeddings` reads only the columns it needs of its product. All of it must decide
exactly as before: the same choices, the same probabilities bit for bit, the same random
stream."""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Any

import numpy as np
import pytest

from llmroute.online import OnlineLearner
from llmroute.online.learner import _fused_cols
from online_fixtures import moved_learner


def _rows(L: OnlineLearner, B: int, seed: int) -> dict[str, Any]:
    """B requests: filled estimates (some tied, one model unprofiled on some rows), trade-offs
    and masks (None, one model, both)."""
    data = np.random.default_rng(seed)
    Q = data.uniform(0.4, 0.7, (B, 2))
    C = data.uniform(0.0, 0.01, (B, 2))
    Q[::7, 0] = np.nan
    Q[3::11, 1] = Q[3::11, 0]  # equal estimates: the first of equal maxima
    C[3::11, 1] = C[3::11, 0]
    fills = [L._fill_list(Q[i], C[i]) for i in range(B)]
    masks: list[list[bool] | None] = [
        None if i % 3 else [bool(i % 2), not i % 2] if i % 6 else [True, True] for i in range(B)
    ]
    lam = data.choice([0.0, 5.0, 20.0, 100.0], B).tolist()
    return {"q": [f[0] for f in fills], "c": [f[1] for f in fills], "lam": lam, "mask": masks}


@pytest.mark.parametrize("method", ["thompson", "linucb", "greedy"])
@pytest.mark.parametrize("confidence", [0.0, 1.0])
@pytest.mark.parametrize("explore_loss", [0.0, 0.002])
@pytest.mark.parametrize("max_explore", [0.0, 0.05, 1.0])
def test_two_models_unrolled_is_the_general_pick(
    method: str, confidence: float, explore_loss: float, max_explore: float
) -> None:
    """`_probs_two` = `_probs` bit for bit (greedy index, probabilities, q, c, deviation), at
    base-quality columns 0 and not 0, over masks, ties and an unprofiled model."""
    kw = {
        "method": method,
        "max_explore": max_explore,
        "confidence": confidence,
        "explore_loss": explore_loss,
    }
    L = moved_learner(["a", "b"], **kw)
    data = np.random.default_rng(7)
    E = data.standard_normal((120, 16)).astype(np.float32)
    _, TX, XAX, AXK = L.prepare_embeddings(E)
    r = _rows(L, 120, 8)
    fac = L._factors()
    cut = explored = 0
    for i in range(120):
        for xk in (0.0, 0.13):
            args = (fac, xk, r["q"][i], r["c"][i], r["lam"][i], r["mask"][i], TX[i], XAX[i], AXK[i])
            two, general = L._probs_two(*args), L._probs(*args)
            assert two == general, (i, xk)
            explored += two[4] > 0
            L.explore_loss = 0.0
            cut += L._probs(*args)[1] != two[1]  # the loss budget changed this row
            L.explore_loss = explore_loss
    if method == "thompson" and max_explore > 0:
        assert explored > 0  # the comparison covered random choices
        if explore_loss > 0:
            assert cut > 0  # ... and the loss budget cutting an exploring share


def test_unprofiled_model_and_disallowed_two_models() -> None:
    """A model added without a profile (no offline rating: the loss budget leaves its share) and a
    mask allowing one model: still `_probs` exactly."""
    L = moved_learner(["a", "b"], max_explore=0.3, explore_loss=0.001, confidence=1.0)
    L.profiled_[1] = False
    fac = L._factors()
    E = np.random.default_rng(2).standard_normal((40, 16))
    _, TX, XAX, AXK = L.prepare_embeddings(E)
    kept = 0
    for i in range(40):
        for q in ([0.55, 0.6], [0.6, 0.55]):
            for mask in (None, [True, False], [False, True]):
                args = (fac, 0.0, q, [0.001, 0.0001], 20.0, mask, TX[i], XAX[i], AXK[i])
                unprofiled = L._probs_two(*args)
                assert unprofiled == L._probs(*args)
                L.profiled_[1] = True
                kept += unprofiled[1] != L._probs_two(*args)[1]
                L.profiled_[1] = False
    assert kept > 0  # rows where the unprofiled model kept a share the budget would have cut


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("method", ["thompson", "linucb"])
@pytest.mark.parametrize("explore_decay", [0.0, 15.0])  # 15: 60 outcomes learned, exploration halved
def test_pick_rows_is_pick_one_at_a_time(m: int, method: str, explore_decay: float) -> None:
    """The same choices, greedy choices and chosen probabilities as `pick` per request, in
    order, with the same uniforms (drawn together), and the same stream afterwards."""
    models = [f"m{i}" for i in range(m)]
    kw = {"method": method, "max_explore": 0.4, "confidence": 1.0, "explore_loss": 0.002}
    kw["explore_decay"] = explore_decay
    one, rows = moved_learner(models, **kw), moved_learner(models, **kw)
    data = np.random.default_rng(9)
    B = 60
    E = data.standard_normal((B, 16)).astype(np.float32)
    Q, C = data.uniform(0.4, 0.7, (B, m)), data.uniform(0.0, 0.01, (B, m))
    fills = [rows._fill_list(Q[i], C[i]) for i in range(B)]
    masks = [None if i % 4 else [j != i % m for j in range(m)] for i in range(B)]
    lam = data.choice([0.0, 5.0, 20.0], B).tolist()
    _, TX, XAX, AXK = rows.prepare_embeddings(E)
    ch, g, p = rows.pick_rows([f[0] for f in fills], [f[1] for f in fills], lam, masks, TX, XAX, AXK)
    explored = 0
    for i in range(B):
        c1, g1, probs, _, _ = one.pick(0.0, fills[i][0], fills[i][1], lam[i], masks[i], TX[i], XAX[i], AXK[i])
        assert (ch[i], g[i], p[i]) == (c1, g1, probs[c1]), i
        explored += c1 != g1
    assert explored > 0
    assert one.rng.random() == rows.rng.random()
    with pytest.raises(ValueError, match="no candidate"):
        rows.pick_rows([fills[0][0]], [fills[0][1]], [0.0], [[False] * m], TX[:1], XAX[:1], AXK[:1])


def test_draw_of_two_is_the_cdf_search() -> None:
    """`_draw` of two models = `pick`'s general cdf search for any uniform, the probabilities'
    boundaries included."""
    L = OnlineLearner(["a", "b"], 4)
    data = np.random.default_rng(1)

    def search(probs: list[float], u: float) -> int:
        total = math.fsum(probs)
        cdf = list(itertools.accumulate(v / total for v in probs))
        return min(bisect.bisect_right([v / cdf[-1] for v in cdf], u), len(probs) - 1)

    n = 0
    for _ in range(2000):
        p0 = float(data.choice([0.0, 1.0, data.random(), 0.05, 0.95]))
        probs = [p0, 1.0 - p0] if data.random() < 0.8 else [p0 * 0.7, (1.0 - p0) * 0.7]
        edge = probs[0] / (probs[0] + probs[1])
        for u in (float(data.random()), 0.0, edge, math.nextafter(edge, 0.0), math.nextafter(edge, 1.0)):
            if 0.0 <= u < 1.0:
                assert L._draw(probs, u) == search(probs, u), (probs, u)
                n += 1
    assert n > 8000


def test_prepare_embeddings_reads_the_fused_columns() -> None:
    """The columns `prepare_embeddings` keeps of z Su are theta_u . z, A_k,u . z and A_b,u . z of
    each model, and its parts equal `prepare` of `context_batch` (2 and 3 models)."""
    assert _fused_cols(2, 4).tolist() == [0, 5, 6, 7, 12, 13]
    for m in (2, 3):
        L = moved_learner([f"m{i}" for i in range(m)], max_explore=0.2)
        E = np.random.default_rng(4).standard_normal((9, 16)).astype(np.float32)
        _, TX, XAX, AXK = L.prepare_embeddings(E)
        tx, xax, axk = L.prepare(L.context_batch(E))
        np.testing.assert_allclose(np.array(TX), tx, rtol=0, atol=1e-13)
        np.testing.assert_allclose(np.array(XAX), xax, rtol=0, atol=1e-13)
        np.testing.assert_allclose(np.array(AXK), axk, rtol=0, atol=1e-13)
