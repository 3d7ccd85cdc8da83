"""The default estimator's kernel memory (`llmroute.estimators.default`): the training side of
the kernel sums arranged once per fitted base (`_KernelMemory`: shared observed-weight sums,
training rows in blocks of similar prompts with a bound that leaves out blocks too far from a
query to matter), and how many threads a batch's kernel sums use (`_kernel_threads`).
"""

from __future__ import annotations

import os

import numpy as np

from llmroute.estimators.default_math import _kmeans

_KERNEL_SUB_MAX_COLS = 8  # outcome columns up to which the kernel sums run on cache-sized sub-blocks
_KERNEL_THREAD_ROWS = 2048  # rows per extra kernel thread (smaller batches stay on one)


def _kernel_threads(n: int) -> int:
    """Threads for the kernel sums of an n-row batch: one below 2 x `_KERNEL_THREAD_ROWS` rows,
    else up to the BLAS thread count in effect (1 inside the router's worker processes and in
    the gateway, which limit BLAS to one thread: then no extra threads either)."""
    if n < 2 * _KERNEL_THREAD_ROWS:
        return 1
    from threadpoolctl import threadpool_info

    blas = [int(i.get("num_threads") or 1) for i in threadpool_info() if i.get("user_api") == "blas"]
    cap = min(blas) if blas else 1
    return max(1, min(cap, os.cpu_count() or 1, n // _KERNEL_THREAD_ROWS))


# Kernel weights below exp(-_KERNEL_CUT) (~2e-22) are left out where a whole block of training
# rows is that far from a query: every denominator holds the pseudo-weight 1 and the density
# column the floor 1e-9, so this moves no output by more than (training rows) x 2e-22.
_KERNEL_CUT = 50.0
_KERNEL_BLOCK_ROWS = 64  # mean training rows per block of a blocked kernel memory
_KERNEL_MIN_BLOCKED = 512  # smaller kernel memories are not blocked (one pass over all rows is cheap)
_KERNEL_KMEANS_SAMPLE = 8192  # training rows the block centres are fitted on (at most)
_BOUND_SLACK = 1e-4  # taken off the similarity cut: covers float32 rounding of the similarities
_ITEM_COST = 8192  # a kernel work item's fixed cost (a few BLAS and exp calls), in weighted sums


def _chain_order(C: np.ndarray) -> np.ndarray:
    """An order of the unit rows of C in which each row is followed by the nearest one not yet
    placed (greedy chain from row 0): similar blocks end up adjacent."""
    k = len(C)
    sim = C @ C.T
    order = [0]
    free = np.ones(k, dtype=bool)
    free[0] = False
    for _ in range(k - 1):
        row = np.where(free, sim[order[-1]], -np.inf)
        nxt = int(np.argmax(row))
        order.append(nxt)
        free[nxt] = False
    return np.asarray(order, dtype=np.int64)


class _KernelMemory:
    """The training side of the kernel sums, arranged once per fitted base (on first use).

    `MT` (columns, N) float32 holds [outcomes | one row per distinct pattern of observed outcomes
    that is not "all observed" | 1]: models with the same missing rows share one observed-weight
    sum, and fully observed models use the total weight (the same numbers, fewer sums; routerbench
    has 11 models with two patterns: 14 rows instead of 23). `den[j]` is the row holding model j's
    observed weight.

    Blocks (when the widest kernel can leave rows out at all: N >= `_KERNEL_MIN_BLOCKED` and
    beta_min * (1 - cos) can exceed `_KERNEL_CUT`): the training rows are grouped by spherical
    k-means (about `_KERNEL_BLOCK_ROWS` rows per block), stored block by block, similar blocks
    next to each other (`_chain_order`). Each block has a centre c and the angle a_in of its
    widest member from it. For a unit query q the triangle inequality on the sphere bounds every
    member's similarity: angle(q, x) >= angle(q, c) - a_in. So where angle(q, c) >= a_in +
    arccos(1 - _KERNEL_CUT / beta_min), every weight of the block, for every width, is below
    exp(-_KERNEL_CUT): the block is needed only where q . c > `thresh` = cos(a_in + that angle)
    (a zero query row, whose similarities are all 0, obeys the same rule). A query's sums run over
    the training rows from its first to its last needed block (one slice, no copy; the blocks in
    between add weights of ~0). Templated prompts (routerbench_subset: betas ~1,100-3,300) skip
    most blocks; spread-out memories (routellm: betas ~20-80) are not blocked.
    """

    __slots__ = ("ET", "MT", "bounds", "centres", "complete", "den", "rows", "thresh")

    def __init__(self, E: np.ndarray, Qf: np.ndarray, ok: np.ndarray, betas: tuple[float, ...]) -> None:
        N, m = Qf.shape
        observed = np.asarray(ok).T > 0  # (m, N)
        full = observed.all(axis=1)
        rows = [np.asarray(Qf, dtype=np.float32).T]
        den = np.zeros(m, dtype=np.int64)
        if not full.all():
            patterns, inverse = np.unique(observed[~full], axis=0, return_inverse=True)
            rows.append(patterns.astype(np.float32))
            den[~full] = m + inverse.ravel()
        rows.append(np.ones((1, N), np.float32))
        MT = np.concatenate(rows, axis=0)
        den[full] = len(MT) - 1
        self.den = den
        self.complete = bool(full.all())
        self.bounds: np.ndarray | None = None
        self.rows = np.arange(N)  # the training row stored at each memory column
        E = np.asarray(E, dtype=np.float32)
        beta = min(betas) if betas else 0.0
        if N >= _KERNEL_MIN_BLOCKED and 2.0 * beta > _KERNEL_CUT + 2.0 * _BOUND_SLACK * beta:
            E64 = E.astype(np.float64)
            # centres from a sample (their quality only moves speed; every row is then assigned)
            fit_on = E64
            if N > _KERNEL_KMEANS_SAMPLE:
                fit_on = E64[
                    np.sort(np.random.default_rng(0).choice(N, _KERNEL_KMEANS_SAMPLE, replace=False))
                ]
            C = _kmeans(fit_on, int(np.clip(N // _KERNEL_BLOCK_ROWS, 2, 1024)), seed=0, iters=8)
            C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
            lab = np.argmax(E64 @ C.T, axis=1)
            counts = np.bincount(lab, minlength=len(C))
            keep = np.flatnonzero(counts > 0)
            keep = keep[_chain_order(C[keep])]
            rank = np.empty(len(C), dtype=np.int64)
            rank[keep] = np.arange(len(keep))
            C, counts, lab = C[keep], counts[keep], rank[lab]
            order = np.argsort(lab, kind="stable")
            E, MT, lab, self.rows = E[order], MT[:, order], lab[order], order
            self.bounds = np.concatenate(([0], np.cumsum(counts)))
            member_cos = np.einsum("ij,ij->i", E.astype(np.float64), C[lab])
            a_in = np.arccos(np.clip(np.minimum.reduceat(member_cos, self.bounds[:-1]), -1.0, 1.0))
            a_cut = np.arccos(1.0 - _KERNEL_CUT / beta - _BOUND_SLACK)
            self.thresh = np.cos(np.minimum(a_in + a_cut, np.pi)) - _BOUND_SLACK
            self.thresh[a_in + a_cut >= np.pi] = -np.inf  # needed by every query
            self.centres = np.ascontiguousarray(C.T, dtype=np.float32)  # (d, blocks)
        self.ET = np.ascontiguousarray(E.T)
        self.MT = np.ascontiguousarray(MT)

    def needed(self, K: np.ndarray) -> np.ndarray:
        """(n, blocks) bool: blocks in which some weight of query row i may reach exp(-_KERNEL_CUT).
        Rows of K are unit vectors or zero; any other row needs every block."""
        need = (K @ self.centres) > self.thresh
        sq = np.einsum("ij,ij->i", K, K)
        odd = (np.abs(sq - 1.0) > 1e-3) & (sq > 1e-6)
        if odd.any():
            need[odd] = True
        return need

    def plan(self, K: np.ndarray, step: int) -> list[tuple[slice | np.ndarray, slice]]:
        """Work items (query rows, training columns) covering every weight >= exp(-_KERNEL_CUT).

        Rows far from every block get no item (their sums are 0). The others are grouped by their
        first needed block; an item spans its rows' needed blocks (a slice of the stored rows).
        Neighbouring groups share an item (up to `step` rows) where that costs fewer sums than
        two items would, counting `_ITEM_COST` sums for each item's fixed cost."""
        n = len(K)
        if self.bounds is None:
            return [(slice(s0, min(s0 + step, n)), slice(None)) for s0 in range(0, n, step)]
        bounds = self.bounds
        if n == 1:  # one query: the same rule in fewer numpy calls
            k = K[0]
            sq = float(k @ k)
            odd = abs(sq - 1.0) > 1e-3 and sq > 1e-6
            blocks = np.arange(len(self.thresh)) if odd else np.flatnonzero(k @ self.centres > self.thresh)
            if not len(blocks):
                return []
            return [(slice(0, 1), slice(int(bounds[blocks[0]]), int(bounds[blocks[-1] + 1])))]
        need = self.needed(K)
        rows = np.flatnonzero(need.any(axis=1))
        if not len(rows):
            return []
        nr = need[rows]
        first = nr.argmax(axis=1)
        last = nr.shape[1] - 1 - nr[:, ::-1].argmax(axis=1)
        order = np.argsort(first, kind="stable")
        rows, first, last = rows[order], first[order], last[order]
        starts = np.flatnonzero(np.diff(first, prepend=-1))  # one group per first block
        ends = [*starts[1:].tolist(), len(rows)]
        his = np.maximum.reduceat(last, starts).tolist()
        items: list[tuple[slice | np.ndarray, slice]] = []
        cur: list[int] = []  # [row start, row end, first block, last block]
        for s0, e0, lo, hi in zip(starts.tolist(), ends, first[starts].tolist(), his, strict=True):
            for a in range(s0, e0, step):
                g = [a, min(a + step, e0), lo, hi]
                if cur and g[1] - cur[0] <= step:
                    width = int(bounds[max(cur[3], hi) + 1] - bounds[cur[2]])
                    apart = (cur[1] - cur[0]) * int(bounds[cur[3] + 1] - bounds[cur[2]])
                    apart += (g[1] - g[0]) * int(bounds[hi + 1] - bounds[lo]) + _ITEM_COST
                    if (g[1] - cur[0]) * width <= apart:
                        cur[1], cur[3] = g[1], max(cur[3], hi)
                        continue
                if cur:
                    items.append((rows[cur[0] : cur[1]], slice(int(bounds[cur[2]]), int(bounds[cur[3] + 1]))))
                cur = g
        items.append((rows[cur[0] : cur[1]], slice(int(bounds[cur[2]]), int(bounds[cur[3] + 1]))))
        return items


#: a memory row "is" the query when their kernel similarity is at least 1 - this (float32
#: rounding of a unit row with itself is ~1e-7; distinct prompts are far below)
SELF_TOL = 1e-6


def self_matches(
    mem: _KernelMemory, K: np.ndarray, tol: float = SELF_TOL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The memory rows that are the query itself (or a duplicate of it): (query rows, memory
    columns in `mem`'s stored order (`mem.rows` maps them to training rows), their float32
    similarities), where the kernel similarity is >= 1 - `tol`. One (chunk, N) float32 product
    per 256 query rows."""
    E = np.asarray(K, dtype=np.float32)
    qi: list[np.ndarray] = []
    mj: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    cut = np.float32(1.0 - tol)
    for a in range(0, len(E), 256):
        S = E[a : a + 256] @ mem.ET
        i, j = np.nonzero(cut <= S)
        qi.append(i + a)
        mj.append(j)
        ss.append(S[i, j])
    if not qi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(qi), np.concatenate(mj), np.concatenate(ss)
