"""The default quality estimator: a cross-validated stack of kernel smoothers and ridge experts.

How it works (all numpy; state = arrays + JSON, no pickle):

1. Inputs: the prompt embedding plus the standardised hand-made features
   (`llmroute.estimators.features`).
2. Base learners, each predicting every model's quality:
   - multi-scale kernel smoothing (Nadaraya-Watson) over all training prompts: weight
     exp(beta * (cos_sim - 1)) in a PCA-reduced (32-d) copy of the embedding space, plus a
     pseudo-weight on the model's mean so that prompts far from anything seen fall back to it
     (shrinkage where neighbours are far), and log(mean weight per training prompt) as a
     "how far" signal (a mean, not a total, so it has the same scale in the inner folds
     and in the final fit).
     The betas are fitted from the training embeddings so the kernels cover about 10, 40
     and 160 effective neighbours - a smooth kNN without any top-k search, so one decision
     is a few small matrix products;
   - a global ridge regression on [embedding, features], penalty picked by GCV;
   - cluster experts: spherical k-means (mean cluster size 3000 and 750 prompts); per
     cluster a ridge on the global ridge's residuals (GCV again, so clusters without local
     structure fall back to the global model);
   - the project's logistic regression on small tables (<= 1000 training prompts by
     default; `logistic=True` always); optional: EB-shrunk per-cluster means (`proto_sizes`).
3. A stacker: ridge regression (GCV) from all base predictions, for all models, to each
   model's quality, fitted on out-of-fold base predictions from an inner K-fold split of the
   training data only (optional per-cluster corrections: `stack_clusters`).
4. Selection: the final predictor is the stack, one base block alone or the per-model
   mean - whichever has the lowest inner-CV loss on
   the part of the error that changes decisions (each row's residuals minus their row mean:
   the squared error of the predicted between-model differences, see `_centred_sq`). The
   stack's own out-of-fold predictions come from refitting it inside the same inner split.
   Large tables keep the stack; small ones (e.g. 160 MT-Bench prompts) often take a single
   block. Predictions are clipped to [0, 1].

Penalties, kernel widths and blend weights are chosen inside `fit` from the training data;
the constructor sets structure and seed. The kernel memory (PCA-reduced embeddings and
outcomes of the training prompts) is part of the saved state, as for the kNN estimator.

This module holds the estimator (`DefaultEstimator`) and its base learners (`_Base`); the
numerical building blocks (ridge GCV, k-means, selection loss, kernel widths, projection) are in
`llmroute.estimators.default_math`, the kernel memory's layout and threading in
`llmroute.estimators.default_kernel` (every name is still importable from here).
"""

from __future__ import annotations

import itertools
from typing import ClassVar, Self

import numpy as np

from llmroute.estimators.base import Features, QualityEstimator, column_means
from llmroute.estimators.default_kernel import _KERNEL_CUT as _KERNEL_CUT
from llmroute.estimators.default_kernel import (
    _KERNEL_SUB_MAX_COLS,
    _kernel_threads,
    _KernelMemory,
    self_matches,
)
from llmroute.estimators.default_kernel import _KERNEL_THREAD_ROWS as _KERNEL_THREAD_ROWS
from llmroute.estimators.default_math import (
    _assign,
    _betas_for,
    _fill,
    _hat_diag,
    _kmeans,
    _n_clusters,
    _per_cluster_product,
    _projection,
    _ridge_gcv,
    _select_candidate,
)
from llmroute.estimators.default_math import _centred_sq as _centred_sq
from llmroute.estimators.linear import check_fit_input, single_threaded_blas

__all__ = ["DefaultEstimator"]


class _Base:
    """Base learners fitted on one training subset; `transform` gives stacker inputs.

    Cluster centres (`protos`, `experts`) are fitted once on the whole training set (k-means
    does not look at outcomes) and shared by the inner folds.
    """

    def __init__(
        self,
        protos: list[np.ndarray],
        experts: list[np.ndarray],
        prior: float,
        betas: tuple[float, ...] = (),
        logistic_lam: float | None = None,
        density_mean: bool = True,
    ) -> None:
        self.density_mean = density_mean
        self.protos = protos
        self.experts = experts
        self.prior = prior
        self.betas = betas
        self.logistic_lam = logistic_lam
        self.logit: QualityEstimator | None = None
        self._memory: _KernelMemory | None = None  # built on the first kernel call
        #: (memory rows, 1 + expert levels) hat-matrix diagonals of the global ridge and of each
        #: row's cluster expert (`fit_leverage`; None in states saved before it was kept)
        self.lev: np.ndarray | None = None

    def fit(self, X: Features, Z: np.ndarray, Q: np.ndarray, labs: list[np.ndarray], K: np.ndarray) -> Self:
        """`labs`: nearest-centre labels of the rows, one array per proto then expert level;
        `K`: the rows' kernel embeddings (reduced, re-normalised)."""
        m = Q.shape[1]
        ok = np.isfinite(Q)
        self.mu = column_means(Q)
        Q0 = np.where(ok, Q, 0.0)
        # cluster priors (empirical-Bayes shrunk cluster means)
        self.proto_means: list[np.ndarray] = []
        self.proto_logn: list[np.ndarray] = []
        for C, lab in zip(self.protos, labs, strict=False):
            nk = len(C)
            sums = np.zeros((nk, m))
            cnts = np.zeros((nk, m))
            np.add.at(sums, lab, Q0)
            np.add.at(cnts, lab, ok)
            self.proto_means.append((sums + self.prior * self.mu) / (cnts + self.prior))
            self.proto_logn.append(np.log1p(cnts.max(axis=1)))
        Qf = _fill(Q, self.mu)
        self.W, self.b, self.alpha = _ridge_gcv(Z, Qf)
        # cluster experts: per cluster, a ridge on the global ridge's residuals
        resid = Qf - (Z @ self.W + self.b)
        self.local_W: list[np.ndarray] = []
        self.local_b: list[np.ndarray] = []
        for C, lab in zip(self.experts, labs[len(self.protos) :], strict=True):
            LW = np.zeros((len(C), Z.shape[1], m))
            Lb = np.zeros((len(C), m))
            for j in range(len(C)):
                rows = lab == j
                if rows.sum() >= 20:
                    LW[j], Lb[j], _ = _ridge_gcv(Z[rows], resid[rows])
            self.local_W.append(LW)
            self.local_b.append(Lb)
        if self.betas:
            self.E = np.ascontiguousarray(K, dtype=np.float32)
            self.ok = ok.astype(np.float32)
            self.Qf = Q0.astype(np.float32)
            self._memory = None
        if self.logistic_lam is not None:
            from llmroute.estimators.linear import LinearEstimator

            self.logit = LinearEstimator(lam=self.logistic_lam).fit(X, Q)
        return self

    def fit_leverage(self, Z: np.ndarray, Q: np.ndarray, labs: list[np.ndarray]) -> None:
        """Keep each training row's leverage (hat-matrix diagonal) in the global ridge and in its
        cluster expert of every level (`lev`), for leave-self-out estimates (`transform`).

        Z, Q, labs: exactly the rows `fit` was given (memory order). The experts' penalties are
        re-picked by the same GCV on the same residuals (they are not kept), so the result
        is the fitted ridges' own leverages. Clusters below 20 rows have no expert: 0."""
        Qf = _fill(Q, self.mu)
        lev = np.zeros((len(Z), 1 + len(self.experts)), np.float32)
        lev[:, 0] = _hat_diag(Z, self.alpha)
        resid = Qf - (Z @ self.W + self.b)
        for e, lab in enumerate(labs[len(self.protos) :]):
            for j in range(len(self.experts[e])):
                rows = lab == j
                if rows.sum() >= 20:
                    _, _, alpha = _ridge_gcv(Z[rows], resid[rows])
                    lev[rows, 1 + e] = _hat_diag(Z[rows], alpha)
        self.lev = lev

    def _memory_built(self) -> _KernelMemory:
        mem = self._memory
        if mem is None:  # one assignment: threads that race here each build an equal memory
            mem = self._memory = _KernelMemory(self.E, self.Qf, self.ok, self.betas)
        return mem

    def _kernel(
        self, K: np.ndarray, drop: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Nadaraya-Watson smoothing over all training prompts, one column block per beta.

        drop: memory rows to leave out per query (`self_matches`: the query itself and its
        duplicates), as if the memory lacked them (`_drop_self`); other queries are unchanged.

        Weight of training prompt i: exp(beta * (cos_sim - 1)) (1 for an identical prompt), plus
        a pseudo-weight 1 on the model's mean, so far-away prompts fall back to it. Matrix
        products only, no top-k search: cheap for single decisions and batches alike.

        The "how far" columns are log(mean kernel weight per training row), not of the total:
        the stacker learns its weights from inner-fold bases fitted on (K-1)/K of the rows, and a
        total grows with the row count, so on the final base it would be shifted by log(K/(K-1))
        times a weight that differs per model - a bias in the between-model differences.

        Speed: the training side is arranged once (`_KernelMemory`: shared observed-weight sums,
        and blocks of nearby training prompts that a query skips when all their weights are below
        exp(-50)); the sums run on cache-sized row chunks (`_kernel_rows`); batches of >= 2 x
        `_KERNEL_THREAD_ROWS` rows run their chunks on threads (BLAS held to one thread meanwhile)
        when BLAS itself may use more than one. The sums equal the straightforward formula
        (kept in tests/test_default_kernel.py, in float64) to float32 rounding: the terms are added
        in another order, and skipped weights are below exp(-50).
        """
        E = np.asarray(K, dtype=np.float32)
        nb, m = len(self.betas), len(self.mu)
        mem = self._memory_built()
        n = len(E)
        R = np.zeros((nb, n, len(mem.MT)), np.float32)
        items = mem.plan(E, self._kernel_step())
        threads = min(_kernel_threads(n), len(items))
        if threads <= 1:
            self._kernel_rows(mem, E, R, items)
        else:  # large batches: items on parallel threads (numpy releases the GIL)
            from concurrent.futures import ThreadPoolExecutor

            from threadpoolctl import threadpool_limits

            cuts = [round(len(items) * t / threads) for t in range(threads + 1)]
            with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
                jobs = [
                    pool.submit(self._kernel_rows, mem, E, R, items[a:b]) for a, b in itertools.pairwise(cuts)
                ]
                for job in jobs:
                    job.result()
        R64 = R.astype(np.float64)
        rows_per_query: float | np.ndarray = float(len(self.E))
        if drop is not None and len(drop[0]):
            R64, rows_per_query = self._drop_self(mem, drop, R64)
        num = R64[:, :, :m]
        tot = R64[:, :, -1]
        den = tot[:, :, None] if mem.complete else R64[:, :, mem.den]
        preds = (num + self.mu) / (den + 1.0)
        # log(mean kernel weight per training row): the same scale for any n; states saved before
        # that feature use log(1 + total weight)
        dens = np.log(tot / rows_per_query + 1e-9) if self.density_mean else np.log1p(tot)
        return [preds[g] for g in range(nb)] + [dens[g][:, None] for g in range(nb)]

    def _drop_self(
        self, mem: _KernelMemory, drop: tuple[np.ndarray, np.ndarray, np.ndarray], R: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Kernel sums R ((betas, n, outcome rows) float64) without the memory rows `drop` (query
        rows, memory columns, similarities: `self_matches`), and each query's count of remaining
        memory rows (the density's divisor). Their terms exp(beta (s - 1)) x outcome row are
        computed as the sums compute them (float32) and subtracted, so the result is the sums of
        a memory without those rows to float32 rounding; sums are floored at 0 (every term is >=
        0)."""
        qi, mj, s = drop
        rows = np.full(R.shape[1], float(len(self.E)))
        terms = mem.MT[:, mj].T.astype(np.float64)  # (matches, outcome rows)
        for g, beta in enumerate(self.betas):
            w = np.exp((s - np.float32(1.0)) * np.float32(beta)).astype(np.float64)
            np.subtract.at(R[g], qi, w[:, None] * terms)
        np.maximum(R, 0.0, out=R)
        rows -= np.bincount(qi, minlength=R.shape[1])
        return R, np.maximum(rows, 1.0)

    def _ridge_self_out(
        self, drop: tuple[np.ndarray, np.ndarray, np.ndarray], glob: np.ndarray, local: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The global ridge's and the experts' leave-one-out predictions for the query rows in
        `drop` (each query's first matched training row: its outcome y, filled with the model mean
        where missing as in `fit`, and its leverages `lev`): glob - h/(1-h) (y - glob), and per
        expert level loc - h_e/(1-h_e) (y - glob - loc) (its target: the global fit's residual)."""
        mem = self._memory_built()
        qi, first = np.unique(drop[0], return_index=True)
        t = mem.rows[drop[1][first]]  # training rows
        y = np.where(self.ok[t] > 0, self.Qf[t], self.mu).astype(np.float64)
        lev = self.lev.astype(np.float64)[t]  # type: ignore[union-attr]
        glob = glob.copy()
        g0 = glob[qi]
        shrink = lev / np.maximum(1.0 - lev, 1e-6)
        glob[qi] = g0 - shrink[:, :1] * (y - g0)
        out = []
        for e, loc in enumerate(local):
            loc = loc.copy()
            loc[qi] = loc[qi] - shrink[:, 1 + e : 2 + e] * (y - g0 - loc[qi])
            out.append(loc)
        return glob, out

    def _kernel_step(self) -> int:
        """Rows per kernel chunk: a (chunk, N) float32 block of about 4 MB, 32 to 256 rows."""
        return min(max((1 << 20) // max(len(self.E), 1), 32), 256)

    @staticmethod
    def _kernel_sub(step: int, columns: int, outcomes: int) -> int:
        """Rows per sub-block of a chunk for the exp and the weighted sums.

        With few outcome rows (<= `_KERNEL_SUB_MAX_COLS`, e.g. 3 models with missing outcomes, 7
        without) the sums are memory-bound: a (rows, columns) float32 block of about 512 KB (at
        least 8 rows) stays in a core's L2 cache between the exp and the product. With more
        outcome rows the product is compute-bound and the whole chunk is one product (measured
        faster: 11 models, 2,540 rows: 84 vs 91-103 ms for 32-64-row sub-blocks).
        """
        if outcomes > _KERNEL_SUB_MAX_COLS:
            return step
        return min(max((1 << 17) // max(columns, 1), 8), step)

    def _kernel_rows(
        self,
        mem: _KernelMemory,
        E: np.ndarray,
        R: np.ndarray,
        items: list[tuple[slice | np.ndarray, slice | np.ndarray]],
    ) -> None:
        """Kernel sums of the work items (query rows, training columns) into R ((betas, n,
        outcome rows) float32; rows no item covers stay 0).

        The similarity product of an item is one BLAS product (at least 32 rows where the batch
        has them, about 4 MB); cos_sim - 1 is computed once for all widths. The exp and the
        weighted sums then walk the item in sub-blocks of about 512 KB when there are few outcome
        rows (`_kernel_sub`), so each exp'd block is still in cache when it is multiplied by the
        outcome matrix (a 4 MB block streamed three times per width through a 2 MB L2 cache made
        those passes memory-bound: routellm's 15.5k training prompts, 6,000 rows: 0.38 -> 0.30 s).
        One row is one matrix-vector product. Buffers are allocated once per call.
        """
        if not items:
            return
        step = self._kernel_step()
        n_out = len(mem.MT)
        N = mem.ET.shape[1]
        S_buf = np.empty(min(step, len(E)) * N, np.float32)
        X_buf = np.empty(S_buf.size, np.float32)
        for rows, cols in items:
            ET, MT = mem.ET[:, cols], mem.MT[:, cols]
            k, nc = (rows.stop - rows.start if isinstance(rows, slice) else len(rows)), ET.shape[1]
            S = S_buf[: k * nc].reshape(k, nc)
            np.matmul(E[rows], ET, out=S)
            S -= np.float32(1.0)  # cos_sim - 1, computed once for all widths
            sub = self._kernel_sub(step, nc, n_out)
            MTt = MT.T
            for a in range(0, k, sub):
                z = min(a + sub, k)
                X = X_buf[: (z - a) * nc].reshape(z - a, nc)
                out_rows = slice(rows.start + a, rows.start + z) if isinstance(rows, slice) else rows[a:z]
                for g, beta in enumerate(self.betas):
                    np.multiply(S[a:z], np.float32(beta), out=X)
                    np.exp(X, out=X)
                    if z - a == 1 and isinstance(out_rows, slice):
                        np.matmul(MT, X[0], out=R[g, out_rows.start])
                    elif isinstance(out_rows, slice):
                        np.matmul(X, MTt, out=R[g, out_rows])
                    else:
                        R[g, out_rows] = X @ MTt

    def transform(
        self,
        X: Features,
        Z: np.ndarray,
        labs: list[np.ndarray],
        sims: list[np.ndarray],
        K: np.ndarray,
        exclude_self: bool = False,
    ) -> np.ndarray:
        """Stacker inputs of the rows.

        exclude_self: rows that are in the kernel memory (a training prompt or a duplicate of
        one: `self_matches`) get leave-self-out inputs: the kernel blocks without those memory
        rows (`_kernel`), and the global ridge and cluster experts by the exact leave-one-out
        identity f - h / (1 - h) (y - f) with the row's kept leverage h (`fit_leverage`; each
        expert on the residuals it was fitted to; skipped for states without leverages). Rows
        not in the memory are unchanged.
        """
        drop = None
        if exclude_self and self.betas:
            drop = self_matches(self._memory_built(), K)
        cols: list[np.ndarray] = []
        for g in range(len(self.protos)):
            cols += [self.proto_means[g][labs[g]], self.proto_logn[g][labs[g], None], sims[g][:, None]]
        glob = Z @ self.W + self.b
        local = [
            _per_cluster_product(Z, self.local_W[e], labs[len(self.protos) + e])
            + self.local_b[e][labs[len(self.protos) + e]]
            for e in range(len(self.experts))
        ]
        if drop is not None and len(drop[0]) and self.lev is not None:
            glob, local = self._ridge_self_out(drop, glob, local)
        cols.append(glob)
        cols += [glob + loc for loc in local]
        if self.betas:
            cols += self._kernel(K) if drop is None else self._kernel(K, drop)
        if self.logit is not None:
            cols.append(self.logit.predict(X))
        return np.concatenate(cols, axis=1)


class DefaultEstimator(QualityEstimator):
    """Stacked kernel smoothers + ridge experts (see module docstring).

    proto_sizes:  mean cluster sizes of optional EB-shrunk cluster-mean learners (off).
    expert_sizes: mean cluster sizes of the k-means levels that get a residual ridge.
    prior:        pseudo-count shrinking a cluster's mean toward the model's global mean.
    neighbours:   effective neighbourhood sizes of the kernel smoothers (() = none).
    kernel_dim:   PCA dimension of the kernel space (0 = full embedding).
    standardize:  standardise embedding columns before the ridge (off: measured worse).
    per_output:   one GCV penalty per model in the stacker (off: measured no gain).
    logistic:     add the project's logistic regression as a base learner (slower fit); None =
                  only on small tables (at most `logistic_max_n` training prompts), where it is
                  cheap and the strongest simple learner.
    logistic_max_n: the size limit of `logistic=None`.
    stack_clusters: clusters with their own stacker correction (0 = off).
    inner_folds:  folds of the inner split that trains the stacker.
    selection:    how the final predictor is chosen from the out-of-fold candidates (the ridge
                  stack, each base block alone, the per-model mean), on the decision-relevant
                  `_centred_sq` loss: "best" (default: lowest inner-CV loss), "one_se" (the
                  first of the blocks, then the stack, within `select_se` standard errors of
                  the best; measured worse on small tables) or "stack" (always the stack).
    select_se:    standard errors of the one-SE rule.
    seed:         seed of k-means, the kernel-width sample and the inner split.
    """

    name: ClassVar[str] = "default"
    #: `predict(X, exclude_self=True)` gives leave-self-out estimates of training prompts
    supports_exclude_self: ClassVar[bool] = True

    def __init__(
        self,
        proto_sizes: tuple[int, ...] = (),
        expert_sizes: tuple[int, ...] = (3000, 750),
        prior: float = 2.0,
        neighbours: tuple[int, ...] = (10, 40, 160),
        kernel_dim: int = 32,
        standardize: bool = False,
        per_output: bool = False,
        logistic: bool | None = None,
        logistic_max_n: int = 1000,
        stack_clusters: int = 0,
        inner_folds: int = 4,
        selection: str = "best",
        select_se: float = 1.0,
        seed: int = 0,
    ) -> None:
        if selection not in ("one_se", "best", "stack"):
            raise ValueError(f"selection must be 'one_se', 'best' or 'stack', got {selection!r}")
        self.proto_sizes = tuple(int(s) for s in proto_sizes)
        self.expert_sizes = tuple(int(s) for s in expert_sizes)
        self.prior = float(prior)
        self.neighbours = tuple(int(k) for k in neighbours)
        self.kernel_dim = int(kernel_dim)
        self.standardize = bool(standardize)
        self.per_output = bool(per_output)
        self.logistic = None if logistic is None else bool(logistic)
        self.logistic_max_n = int(logistic_max_n)
        self.stack_clusters = int(stack_clusters)
        self.inner_folds = int(inner_folds)
        self.selection = selection
        self.select_se = float(select_se)

        self.seed = int(seed)

    # ---- helpers -----------------------------------------------------------------------
    def _z(self, X: Features) -> np.ndarray:
        ex = (np.asarray(X.extra, dtype=np.float64) - self.x_mean_) / self.x_std_
        em = (np.asarray(X.emb, dtype=np.float64) - self.e_mean_) / self.e_std_
        return np.concatenate([em, ex], axis=1)

    def _kernel_emb(self, X: Features) -> np.ndarray:
        K = np.asarray(X.emb, dtype=np.float32) @ self.proj_
        return K / np.maximum(np.linalg.norm(K, axis=1, keepdims=True), 1e-12)

    def _labels(self, X: Features) -> tuple[list[np.ndarray], list[np.ndarray]]:
        labs, sims = [], []
        for C in [*self.protos_, *self.experts_]:
            lab, sim = _assign(X.emb, C)
            labs.append(lab)
            sims.append(sim)
        return labs, sims

    # ---- fit / predict -----------------------------------------------------------------
    @single_threaded_blas
    def fit(self, X: Features, Q: np.ndarray) -> Self:
        """Fit clusters, base learners and the stacker on (X, Q); NaN cells of Q are ignored."""
        Q = check_fit_input(X, Q)
        n, m = Q.shape
        self.n_models_ = m
        extra = np.asarray(X.extra, dtype=np.float64)
        self.x_mean_ = extra.mean(axis=0)
        self.x_std_ = extra.std(axis=0) + 1e-6
        emb = np.asarray(X.emb, dtype=np.float64)
        d = emb.shape[1]
        if self.standardize:  # every column on the same scale, so one ridge penalty fits all
            self.e_mean_, self.e_std_ = emb.mean(axis=0), emb.std(axis=0) + 1e-6
        else:
            self.e_mean_, self.e_std_ = np.zeros(d), np.ones(d)
        Z = self._z(X)
        E64 = np.asarray(X.emb, dtype=np.float64)
        self.protos_ = [
            _kmeans(E64, _n_clusters(n, s), self.seed + g).astype(np.float32)
            for g, s in enumerate(self.proto_sizes)
        ]
        self.experts_ = [
            _kmeans(E64, _n_clusters(n, s), self.seed + 50 + g).astype(np.float32)
            for g, s in enumerate(self.expert_sizes)
        ]
        labs, sims = self._labels(X)
        self.proj_ = _projection(E64, self.kernel_dim)
        K = self._kernel_emb(X)
        self.betas_ = _betas_for(K, self.neighbours, self.seed)
        lam = None
        use_logit = n <= self.logistic_max_n if self.logistic is None else self.logistic
        if use_logit:
            from llmroute.estimators.linear import LinearEstimator

            lam = float(LinearEstimator(seed=self.seed).fit(X, Q).lam_)
        folds = max(2, min(self.inner_folds, n // 2))
        perm = np.random.default_rng(self.seed).permutation(n)
        parts = np.array_split(perm, folds)
        B = None
        MU = np.zeros((n, m))  # out-of-fold per-model means (the simplest candidate)
        for part in parts:
            tr = np.setdiff1d(perm, part)
            base = _Base(self.protos_, self.experts_, self.prior, self.betas_, lam)
            base.fit(X.take(tr), Z[tr], Q[tr], [lab[tr] for lab in labs], K[tr])
            Bp = base.transform(
                X.take(part), Z[part], [lab[part] for lab in labs], [s[part] for s in sims], K[part]
            )
            if B is None:
                B = np.zeros((n, Bp.shape[1]))
            B[part] = Bp
            MU[part] = base.mu
        assert B is not None
        Qf = _fill(Q, column_means(Q))
        self.stack_W_, self.stack_b_, self.stack_alpha_ = _ridge_gcv(B, Qf, per_output=self.per_output)
        self._choose_final(B, Q, Qf, MU, parts, perm, has_logit=lam is not None)
        # per-cluster stacker corrections: ridge on the global stacker's residuals
        self.stack_centres_ = np.zeros((0, X.emb.shape[1]), dtype=np.float32)
        self.stack_LW_ = np.zeros((0, B.shape[1], m))
        self.stack_Lb_ = np.zeros((0, m))
        if self.stack_clusters > 1:
            Cs = _kmeans(E64, self.stack_clusters, self.seed + 101).astype(np.float32)
            lab, _ = _assign(X.emb, Cs)
            resid = Qf - (B @ self.stack_W_ + self.stack_b_)
            LW = np.zeros((len(Cs), B.shape[1], m))
            Lb = np.zeros((len(Cs), m))
            for j in range(len(Cs)):
                rows = lab == j
                if rows.sum() >= 30:
                    LW[j], Lb[j], _ = _ridge_gcv(B[rows], resid[rows])
            self.stack_centres_, self.stack_LW_, self.stack_Lb_ = Cs, LW, Lb
        self.base_ = _Base(self.protos_, self.experts_, self.prior, self.betas_, lam).fit(X, Z, Q, labs, K)
        if self.betas_:  # leave-self-out estimates of training prompts (predict(exclude_self=True))
            self.base_.fit_leverage(Z, Q, labs)
        return self

    def fit_leverage(self, X: Features, Q: np.ndarray) -> None:
        """Recompute the training rows' leverages kept for leave-self-out estimates, for a state
        saved before they were kept. X, Q: exactly the training data `fit` was given (same rows,
        same order); raises ValueError when the row count differs from the kernel memory's."""
        if not self.betas_:
            return
        Q = check_fit_input(X, Q)
        if len(Q) != len(self.base_.E):
            raise ValueError(
                f"{len(Q)} rows given, the kernel memory holds {len(self.base_.E)}: pass the "
                "router's training table (the rows fit was given, in the same order)"
            )
        labs, _ = self._labels(X)
        self.base_.fit_leverage(self._z(X), Q, labs)

    def _choose_final(
        self,
        B: np.ndarray,
        Q: np.ndarray,
        Qf: np.ndarray,
        MU: np.ndarray,
        parts: list[np.ndarray],
        perm: np.ndarray,
        has_logit: bool,
    ) -> None:
        """Replace the ridge stack by a simpler candidate when the inner CV does not support it.

        Candidates, all with out-of-fold predictions on the training rows: the ridge stack (its
        own out-of-fold predictions come from refitting it on the other inner folds' rows of B,
        nested in the same split), each quality block alone (global ridge, each expert level,
        each kernel width, the logistic regression when present) and the per-model mean. On
        small tables a stack of many columns can overfit its weights; on large ones it usually
        wins and is kept. With the logistic block (small tables) the candidates are only the
        stack, the logistic regression and the mean: on a few hundred prompts the inner-CV losses
        are noisy, and every extra candidate raises the chance that one wins by luck (measured:
        5 small tables x 5 seeds, +0.017 gap closed on average; docs/default-estimator-notes.md).
        (An equal-weight average of the blocks was measured as a candidate and dropped: often
        chosen, worse decisions.)
        """
        n, m = Q.shape
        first = len(self.protos_) * (m + 2)
        nq = 1 + len(self.experts_) + len(self.betas_)
        names = ["ridge"] + [f"expert{e}" for e in range(len(self.experts_))]
        names += [f"kernel{k}" for k in range(len(self.betas_))]
        starts = [first + k * m for k in range(nq)]
        if has_logit:  # the logistic block (the last m columns) instead of the other blocks
            names, starts = ["logistic"], [B.shape[1] - m]
        self.stack_choice_ = "stack"
        self.selection_scores_: dict[str, float] = {}
        if self.selection == "stack":
            return
        S = np.zeros((n, m))
        for part in parts:
            tr = np.setdiff1d(perm, part)
            W, b, _ = _ridge_gcv(B[tr], Qf[tr], per_output=self.per_output)
            S[part] = B[part] @ W + b
        cands = {"stack": S, "mean": MU}
        cands |= {nm: B[:, s0 : s0 + m] for nm, s0 in zip(names, starts, strict=True)}
        z = self.select_se if self.selection == "one_se" else 0.0
        choice, self.selection_scores_ = _select_candidate(cands, Q, [*names, "stack"], z)
        self.stack_choice_ = choice
        if choice == "stack":
            return
        if choice == "mean":
            self.stack_W_, self.stack_b_ = np.zeros_like(self.stack_W_), column_means(Q)
        else:
            s0 = starts[names.index(choice)]
            W = np.zeros_like(self.stack_W_)
            W[s0 : s0 + m] = np.eye(m)
            self.stack_W_, self.stack_b_ = W, np.zeros(m)

    def predict(self, X: Features, exclude_self: bool = False) -> np.ndarray:
        """(n, m) expected quality in [0, 1].

        exclude_self: a leave-self-out estimate for prompts that are in the kernel memory (the
        training prompts): the kernel smoothers leave out the memory rows that are the prompt
        itself or a duplicate of it, as an estimator whose memory lacked them would (to float32
        rounding); prompts not in the memory get exactly the ordinary estimate. The stacker was
        fitted on out-of-fold base predictions, so these are the inputs it was trained on. The
        global ridge and cluster experts give their exact leave-one-out predictions there (from
        the training rows' leverages kept at fit, or `fit_leverage` for older states; without them
        only the kernel part is left out). docs/onboarding-notes.md "Leave-self-out" has numbers.
        """
        labs, sims = self._labels(X)
        B = self.base_.transform(X, self._z(X), labs, sims, self._kernel_emb(X), exclude_self)
        out = B @ self.stack_W_ + self.stack_b_
        if len(self.stack_centres_):
            lab, _ = _assign(X.emb, self.stack_centres_)
            out += _per_cluster_product(B, self.stack_LW_, lab) + self.stack_Lb_[lab]
        return np.clip(out, 0.0, 1.0)

    # ---- state -------------------------------------------------------------------------
    def _params(self) -> dict:
        return {
            "proto_sizes": list(self.proto_sizes),
            "expert_sizes": list(self.expert_sizes),
            "prior": self.prior,
            "neighbours": list(self.neighbours),
            "kernel_dim": self.kernel_dim,
            "standardize": self.standardize,
            "per_output": self.per_output,
            "logistic": self.logistic,
            "logistic_max_n": self.logistic_max_n,
            "stack_clusters": self.stack_clusters,
            "inner_folds": self.inner_folds,
            "selection": self.selection,
            "select_se": self.select_se,
            "seed": self.seed,
        }

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays (centres, cluster means, weights; training rows only if `ks`) and JSON params."""
        b = self.base_
        arrays: dict[str, np.ndarray] = {
            "x_mean": self.x_mean_,
            "x_std": self.x_std_,
            "e_mean": self.e_mean_,
            "e_std": self.e_std_,
            "mu": b.mu,
            "ridge_w": b.W,
            "ridge_b": b.b,
            "stack_w": self.stack_W_,
            "stack_b": self.stack_b_,
            "proj": self.proj_,
            "stack_centres": self.stack_centres_,
            "stack_local_w": self.stack_LW_,
            "stack_local_b": self.stack_Lb_,
        }
        for g, C in enumerate(self.protos_):
            arrays[f"proto.{g}.centres"] = C
            arrays[f"proto.{g}.means"] = b.proto_means[g]
            arrays[f"proto.{g}.logn"] = b.proto_logn[g]
        for e, C in enumerate(self.experts_):
            arrays[f"expert.{e}.centres"] = C
            arrays[f"expert.{e}.w"] = b.local_W[e]
            arrays[f"expert.{e}.b"] = b.local_b[e]
        if self.betas_:
            arrays |= {"kernel.emb": b.E, "kernel.q": b.Qf, "kernel.ok": b.ok}
            if b.lev is not None:
                arrays["kernel.lev"] = b.lev
        params = self._params() | {
            "ridge_alpha": b.alpha,
            "stack_alpha": self.stack_alpha_,
            "logistic_lam": b.logistic_lam,
            "betas": list(self.betas_),
            "n_protos": len(self.protos_),
            "n_experts": len(self.experts_),
            "stack_choice": self.stack_choice_,
            "density_mean": b.density_mean,
        }
        if b.logit is not None:
            la, lp = b.logit.get_state()
            arrays |= {f"logit.{k}": v for k, v in la.items()}
            params["logit"] = lp
        return arrays, params

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> Self:
        """Rebuild a fitted estimator from `get_state()` output."""
        est = cls(
            proto_sizes=tuple(params["proto_sizes"]),
            expert_sizes=tuple(params["expert_sizes"]),
            prior=params["prior"],
            neighbours=tuple(params["neighbours"]),
            kernel_dim=params["kernel_dim"],
            standardize=params["standardize"],
            per_output=params["per_output"],
            logistic=params["logistic"],
            logistic_max_n=params.get("logistic_max_n", 1000),
            stack_clusters=params["stack_clusters"],
            inner_folds=params["inner_folds"],
            selection=params.get("selection", "stack"),
            select_se=params.get("select_se", 1.0),
            seed=params["seed"],
        )
        f64 = lambda k: np.asarray(arrays[k], dtype=np.float64)  # noqa: E731
        f32 = lambda k: np.ascontiguousarray(arrays[k], dtype=np.float32)  # noqa: E731
        est.x_mean_, est.x_std_ = f64("x_mean"), f64("x_std")
        est.e_mean_, est.e_std_ = f64("e_mean"), f64("e_std")
        est.proj_ = f32("proj")
        est.protos_ = [f32(f"proto.{g}.centres") for g in range(params["n_protos"])]
        est.experts_ = [f32(f"expert.{e}.centres") for e in range(params["n_experts"])]
        est.betas_ = tuple(float(b) for b in params["betas"])
        base = _Base(
            est.protos_,
            est.experts_,
            est.prior,
            est.betas_,
            params.get("logistic_lam"),
            density_mean=bool(params.get("density_mean", False)),
        )
        base.mu, base.W, base.b = f64("mu"), f64("ridge_w"), f64("ridge_b")
        base.alpha = float(params["ridge_alpha"])
        base.proto_means = [f64(f"proto.{g}.means") for g in range(params["n_protos"])]
        base.proto_logn = [f64(f"proto.{g}.logn") for g in range(params["n_protos"])]
        base.local_W = [f64(f"expert.{e}.w") for e in range(params["n_experts"])]
        base.local_b = [f64(f"expert.{e}.b") for e in range(params["n_experts"])]
        if est.betas_:
            base.E, base.Qf, base.ok = f32("kernel.emb"), f32("kernel.q"), f32("kernel.ok")
            base.lev = f32("kernel.lev") if "kernel.lev" in arrays else None
        if "logit" in params:
            from llmroute.estimators.linear import LinearEstimator

            la = {k[len("logit.") :]: v for k, v in arrays.items() if k.startswith("logit.")}
            base.logit = LinearEstimator.from_state(la, params["logit"])
        est.base_ = base
        est.stack_W_, est.stack_b_ = f64("stack_w"), f64("stack_b")
        est.stack_alpha_ = float(params["stack_alpha"])
        est.stack_choice_ = str(params.get("stack_choice", "stack"))
        est.stack_centres_ = f32("stack_centres")
        est.stack_LW_, est.stack_Lb_ = f64("stack_local_w"), f64("stack_local_b")
        est.n_models_ = len(base.mu)
        return est
