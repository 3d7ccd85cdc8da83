"""Out-of-domain score: how far a prompt lies from the data a router was trained on.

In the spirit of Guarded Query Routing, with a density-corrected distance: each prompt is
represented by its embedding, a few cheap text-shape statistics (log length, digit / non-ASCII /
code-punctuation / upper-case / newline fractions) and a signed hashed profile of its distinct
character 3/4/5-grams (wording and format, which sentence embeddings smooth over; one dimension
per 16 training prompts, at most 128); the training prompts are summarised by k-means centroids
and a tied (within-cluster) covariance, and the distance score is the relative Mahalanobis distance
(Ren et al., 2021): the squared distance to the nearest centroid minus the squared distance to one
global Gaussian.

Embeddings alone miss task families that share a topic and language with the training data but
differ in wording or format (two Chinese exam sets, maths word problems vs maths exams). A second,
complementary score is vocabulary novelty: the share of the prompt's distinct character n-grams
(n = 3, 4, 5, lower-cased, hashed) that occur in no training prompt, taken both as is and relative
to the median novelty of the nearest centroid's training prompts (mean of the two). In-domain
calibration uses the leave-one-out novelty of the training prompts themselves (n-grams seen in no
*other* training prompt), which is exactly what an unseen prompt's novelty measures; its scale has
a floor (`novelty_floor`) so that templated in-domain sets stay usable. Each score is put on the
same scale (0 = in-domain median, 1 = in-domain 95th percentile) and they are added (an untuned,
equal-weight ensemble), then re-calibrated.

The artifact keeps centroids, covariance factors, a bit-packed presence bitmap per n-gram order
(no counts) and per-centroid median novelty: never the prompts.

Scores are calibrated on held-out training prompts: 0 = the median in-domain prompt,
1 = the in-domain 95th percentile; larger = further out (thresholds in rules: ~1.5-3).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

N_SHAPE = 7
_CODE_CHARS = frozenset("()[]{}=<>;:_")
NGRAM_ORDERS = (3, 4, 5)
NGRAM_BITS = 20
NGRAM_MAX_CHARS = 2000
_MUL = np.uint64(1000003)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)


@functools.cache
def _char_classes() -> np.ndarray:
    """Lookup table over the Basic Multilingual Plane: bit 1 digit, bit 2 upper case, bit 4 code punctuation."""
    lut = np.zeros(0x10000, np.uint8)
    for i in range(0xD800):  # surrogates and above stay 0 except the few classes below
        c = chr(i)
        lut[i] = c.isdigit() | (c.isupper() << 1) | ((c in _CODE_CHARS) << 2)
    for i in range(0xE000, 0x10000):
        c = chr(i)
        lut[i] = c.isdigit() | (c.isupper() << 1)
    return lut


def _codepoints(text: str, max_chars: int) -> np.ndarray:
    """Code points of the first `max_chars` characters as uint32."""
    return np.frombuffer(text[:max_chars].encode("utf-32-le", "surrogatepass"), np.uint32)


def shape_features(texts: Sequence[str]) -> np.ndarray:
    """(n, 7) float32 text-shape statistics (first 1,000 characters for the fractions)."""
    lut = _char_classes()
    out = np.zeros((len(texts), N_SHAPE), np.float32)
    for i, t in enumerate(texts):
        cp = _codepoints(t, 1000)
        n = max(len(cp), 1)
        cls = lut[np.minimum(cp, 0xFFFF)]
        out[i] = (
            np.log1p(len(t)), np.count_nonzero(cls & 1) / n, np.count_nonzero(cp >= 128) / n,
            np.count_nonzero(cp == 10) / n * 10, np.count_nonzero(cls & 4) / n, np.count_nonzero(cls & 2) / n,
            np.log1p(t.count(" ") + 1),
        )  # fmt: skip
    return out


def distinct_ngrams(text: str, max_chars: int = NGRAM_MAX_CHARS) -> np.ndarray:
    """Sorted distinct ids of the hashed character n-grams (orders NGRAM_ORDERS) of the lower-cased text.

    Each id is a NGRAM_BITS-bit bucket plus the order's index shifted above those bits.
    """
    c = _codepoints(text.lower(), max_chars).astype(np.uint64)
    lo, hi = NGRAM_ORDERS[0], NGRAM_ORDERS[-1]
    if len(c) < hi:
        c = np.concatenate([np.zeros(hi - len(c), np.uint64), c])
    parts = []
    with np.errstate(over="ignore"):
        h = np.zeros(len(c) - lo + 1, np.uint64)
        for j in range(lo):
            h = h * _MUL + c[j : len(c) - lo + 1 + j] + np.uint64(j + 1)
        for n in NGRAM_ORDERS:
            if n > lo:  # extend the (n-1)-gram hashes by one character
                h = h[:-1] * _MUL + c[n - 1 :] + np.uint64(n)
            parts.append(h)
        m = np.concatenate(parts)
        m ^= m >> np.uint64(29)
        m *= _MIX1
        m ^= m >> np.uint64(32)
    a = (m & np.uint64((1 << NGRAM_BITS) - 1)).astype(np.int64)
    start = 0
    for k, p in enumerate(parts):
        if k:
            a[start : start + len(p)] += k << NGRAM_BITS
        start += len(p)
    a.sort()
    keep = np.empty(len(a), bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def ngram_profile(ids: Sequence[np.ndarray], dims: int) -> np.ndarray:
    """(n, dims) float32 L2-normalised signed feature hashing of `distinct_ngrams` ids (all orders together)."""
    out = np.zeros((len(ids), dims), np.float32)
    for i, g in enumerate(ids):
        v = np.bincount(g % dims, np.where((g >> (NGRAM_BITS - 1)) & 1, 1.0, -1.0), minlength=dims)
        out[i] = v / max(float(np.sqrt(v @ v)), 1e-9)
    return out


def _per_order_mean(ids: np.ndarray, values: np.ndarray) -> float:
    """Mean over n-gram orders of the per-order mean of `values` (aligned with `distinct_ngrams` ids)."""
    order = ids >> NGRAM_BITS
    k = len(NGRAM_ORDERS)
    return (
        float(
            (np.bincount(order, values, minlength=k) / np.maximum(np.bincount(order, minlength=k), 1)).sum()
        )
        / k
    )


def _inv_sqrt(residuals: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    """Inverse square root of the ridge-regularised covariance of (n, d) centred residuals."""
    cov = np.cov(residuals.T)
    cov += np.eye(len(cov)) * ridge * max(float(np.trace(cov)) / len(cov), 1e-12)
    ev, V = np.linalg.eigh(cov)
    return (V * (1.0 / np.sqrt(np.maximum(ev, 1e-12)))) @ V.T


class OODDetector:
    """Relative-Mahalanobis + vocabulary-novelty out-of-domain model of a prompt distribution.

    n_clusters: k-means centroids (capped at n_train // 5). use_shape: add text-shape features
    (then `fit`/`score` need the texts too). use_ngrams: add the character n-gram novelty score
    (needs the texts; on by default whenever texts are used). calib_frac: share of the training
    prompts held out to calibrate the score scale. ridge: covariance regularisation (share of the
    mean variance added to the diagonal); raise it (e.g. 0.1) for small or templated in-domain sets.
    ngram_dims: length of a signed hashed profile of the prompt's distinct character n-grams appended
    to the Mahalanobis features (wording and format, which sentence embeddings smooth over); 0 = off;
    capped at one dimension per 16 training prompts (off below 8).
    novelty_floor: smallest scale (in share of n-grams) of the novelty scores, so that a templated
    in-domain set, whose prompts share almost all their n-grams, does not make one new word an outlier.
    """

    def __init__(self, n_clusters: int = 128, use_shape: bool = True, calib_frac: float = 0.1, seed: int = 0,
                 ridge: float = 1e-4, use_ngrams: bool = True, novelty_floor: float = 0.05,
                 ngram_dims: int = 128) -> None:  # fmt: skip
        self.n_clusters = n_clusters
        self.ridge = ridge
        self.use_shape = use_shape
        self.use_ngrams = use_ngrams
        self.novelty_floor = novelty_floor
        self.ngram_dims = ngram_dims
        self.ngram_dims_ = 0  # fitted: at most one profile dimension per 16 training prompts
        self.calib_frac = calib_frac
        self.seed = seed
        self.centroids_: np.ndarray | None = None  # whitened (k, d)
        self.W_: np.ndarray | None = None  # within-cluster whitening (d, d)
        self.G_: np.ndarray | None = None  # global whitening (d, d)
        self.mu_: np.ndarray | None = None  # global mean, G-whitened (d,)
        self.center_: np.ndarray | None = None  # per-feature mean and std (z-scoring)
        self.std_: np.ndarray | None = None
        self.loc_: float = 0.0
        self.scale_: float = 1.0
        self.seen_: np.ndarray | None = (
            None  # (len(NGRAM_ORDERS), 2**NGRAM_BITS) bool: n-gram bucket seen in training
        )
        self.nov_loc_: float = 0.0
        self.nov_scale_: float = 1.0
        self.cluster_nov_: np.ndarray | None = None  # (k,) median training novelty per centroid
        self.cnov_loc_: float = 0.0
        self.cnov_scale_: float = 1.0
        self.mix_loc_: float = 0.0
        self.mix_scale_: float = 1.0
        self.train_quantiles_: dict[str, float] = {}
        self._folded: tuple[Any, ...] | None = None  # derived matrices for _raw

    @property
    def _text_ngrams(self) -> bool:
        return self.use_shape and self.use_ngrams

    def _ngram_ids(self, texts: Sequence[str] | None) -> list[np.ndarray] | None:
        if texts is None or not self.use_shape or not (self.use_ngrams or self.ngram_dims_):
            return None
        return [distinct_ngrams(t) for t in texts]

    def _features(
        self, emb: np.ndarray, texts: Sequence[str] | None, ids: list[np.ndarray] | None = None
    ) -> np.ndarray:
        emb = np.atleast_2d(np.asarray(emb, np.float32))
        if not self.use_shape:
            return emb
        if texts is None or len(texts) != len(emb):
            raise ValueError("this OODDetector uses text-shape features: pass the texts with the embeddings")
        parts = [emb, shape_features(texts)]
        if self.ngram_dims_:
            parts.append(
                ngram_profile(
                    ids if ids is not None else [distinct_ngrams(t) for t in texts], self.ngram_dims_
                )
            )
        return np.hstack(parts)

    def novelty(self, texts: Sequence[str], ids: list[np.ndarray] | None = None) -> np.ndarray:
        """(n,) share of each prompt's distinct character n-grams never seen in training (mean over n)."""
        if self.seen_ is None:
            raise RuntimeError("OODDetector has no n-gram model; fit it with use_shape and use_ngrams")
        flat = self.seen_.reshape(-1)
        grams = ids if ids is not None else [distinct_ngrams(t) for t in texts]
        return np.array([1.0 - _per_order_mean(g, flat[g]) for g in grams])

    def _fit_ngrams(self, grams: list[np.ndarray]) -> np.ndarray:
        """Build the presence bitmaps; return the leave-one-out novelty of every training prompt."""
        df = np.zeros(len(NGRAM_ORDERS) << NGRAM_BITS, np.int32)
        for ids in grams:
            df[ids] += 1
        loo = np.array([_per_order_mean(ids, df[ids] <= 1) for ids in grams])
        self.seen_ = (df > 0).reshape(len(NGRAM_ORDERS), -1)
        return loo

    def fit(self, emb: np.ndarray, texts: Sequence[str] | None = None) -> Self:
        """Learn the in-domain distribution from (n, d) embeddings (and their texts)."""
        from sklearn.cluster import KMeans

        n = len(np.atleast_2d(emb))
        n_cal = int(n * self.calib_frac) if n * self.calib_frac >= 20 else 0
        # the covariance of the profile needs many more prompts than dimensions: use it only where they exist
        dims = min(self.ngram_dims, (n - n_cal) // 16) if self.use_shape else 0
        self.ngram_dims_ = dims if dims >= 8 else 0
        ids = self._ngram_ids(texts)
        X = self._features(emb, texts, ids).astype(np.float64)
        if n < 10:
            raise ValueError("OODDetector.fit needs at least 10 training prompts")
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(n)
        cal, tr = perm[:n_cal], perm[n_cal:]
        self.center_ = np.zeros(X.shape[1])
        self.std_ = np.ones(X.shape[1])
        Xtr = X[tr]
        k = int(max(1, min(self.n_clusters, len(Xtr) // 5)))
        km = KMeans(n_clusters=k, n_init=1, random_state=self.seed, max_iter=100).fit(Xtr)
        C = km.cluster_centers_
        self.W_ = _inv_sqrt(Xtr - C[km.labels_], self.ridge)
        self.centroids_ = C @ self.W_
        mu = Xtr.mean(0)
        self.G_ = _inv_sqrt(Xtr - mu, self.ridge)
        self.mu_ = mu @ self.G_
        self._folded = None
        self.loc_, self.scale_ = 0.0, 1.0
        ref = cal if n_cal else tr
        raw, _ = self._raw(X[ref])
        self.loc_, self.scale_ = _calibration(raw)
        s = (raw - self.loc_) / self.scale_
        self.seen_ = None
        self.nov_loc_, self.nov_scale_, self.mix_loc_, self.mix_scale_ = 0.0, 1.0, 0.0, 1.0
        if self._text_ngrams:
            assert texts is not None
            assert ids is not None
            loo = self._fit_ngrams(ids)  # all prompts: the leave-one-out novelty needs no held-out split
            self.nov_loc_, self.nov_scale_ = _calibration(loo, self.novelty_floor)
            # cluster-conditional novelty: relative to the median novelty of the nearest centroid's prompts
            _, near = self._raw(X)
            k = len(self.centroids_)
            med = np.full(k, np.median(loo[tr]))
            for c in np.unique(near[tr]):
                med[c] = np.median(loo[tr][near[tr] == c])
            self.cluster_nov_ = med
            self.cnov_loc_, self.cnov_scale_ = _calibration(loo[ref] - med[near[ref]], self.novelty_floor)
            s = s + self._novelty_z(loo[ref], near[ref])
            self.mix_loc_, self.mix_scale_ = _calibration(s)
            s = (s - self.mix_loc_) / self.mix_scale_
        self.train_quantiles_ = {f"q{q}": float(np.quantile(s, q / 100)) for q in (50, 90, 95, 99)}
        return self

    @classmethod
    def from_table(cls, table: Any, encoder: Any, **kwargs: Any) -> OODDetector:
        """Fit on the prompts of a `RoutingTable` (or any object with `.prompts`) with `encoder`."""
        prompts = list(table.prompts)
        return cls(**kwargs).fit(encoder.encode(prompts), prompts)

    def _novelty_z(self, nov: np.ndarray, near: np.ndarray) -> np.ndarray:
        """Equal-weight mean of the calibrated global and cluster-conditional n-gram novelty."""
        assert self.cluster_nov_ is not None
        z_global = (nov - self.nov_loc_) / self.nov_scale_
        z_cluster = (nov - self.cluster_nov_[near] - self.cnov_loc_) / self.cnov_scale_
        return 0.5 * (z_global + z_cluster)

    def _raw(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Relative Mahalanobis distance of already z-scored features, and the nearest centroid.

        |xW - c|^2 - |xG - m|^2 = x (WW' - GG') x' - 2 x (Wc' ) + |c|^2 + 2 x (Gm') - |m|^2, with the
        matrices folded once, so a prompt costs one (d, d) and one (d, k) product.
        """
        if self.centroids_ is None:
            raise RuntimeError("OODDetector is not fitted; call fit() or load()")
        if self._folded is None:
            W, G, C, m = self.W_, self.G_, self.centroids_, self.mu_
            assert W is not None and G is not None and m is not None
            M = W @ W.T - G @ G.T
            self._folded = (M, W @ C.T, (C * C).sum(1), 2.0 * (G @ m), float(m @ m))
        M, B, c2, gm, m2 = self._folded
        d2 = c2[None, :] - 2.0 * (X @ B)
        near = d2.argmin(1)
        quad = ((X @ M) * X).sum(1)
        return quad + d2[np.arange(len(d2)), near] + X @ gm - m2, near

    def score(self, emb: np.ndarray, texts: Sequence[str] | str | None = None) -> np.ndarray | float:
        """Out-of-domain score(s): 0 = median in-domain, 1 = in-domain 95th percentile."""
        single = np.ndim(emb) == 1
        if isinstance(texts, str):
            texts = [texts]
        if self.centroids_ is None:
            raise RuntimeError("OODDetector is not fitted; call fit() or load()")
        ids = self._ngram_ids(texts)
        X = (self._features(emb, texts, ids).astype(np.float64) - self.center_) / self.std_
        raw, near = self._raw(X)
        s = (raw - self.loc_) / self.scale_
        if self.seen_ is not None:
            assert texts is not None
            s = s + self._novelty_z(self.novelty(texts, ids), near)
            s = (s - self.mix_loc_) / self.mix_scale_
        return float(s[0]) if single else s

    # ---- persistence (no pickle) ----------------------------------------------------------
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able params)."""
        if self.centroids_ is None:
            raise RuntimeError("OODDetector is not fitted")
        params = {
            "n_clusters": self.n_clusters, "use_shape": self.use_shape, "calib_frac": self.calib_frac,
            "seed": self.seed, "ridge": self.ridge, "loc": self.loc_, "scale": self.scale_, "train_quantiles": self.train_quantiles_,
            "use_ngrams": self.use_ngrams, "novelty_floor": self.novelty_floor, "ngram_dims": self.ngram_dims, "ngram_dims_fitted": self.ngram_dims_, "ngram_orders": list(NGRAM_ORDERS), "ngram_bits": NGRAM_BITS,
            "nov_loc": self.nov_loc_, "nov_scale": self.nov_scale_, "mix_loc": self.mix_loc_, "mix_scale": self.mix_scale_,
            "cnov_loc": self.cnov_loc_, "cnov_scale": self.cnov_scale_,
        }  # fmt: skip
        arrays = {"centroids": self.centroids_, "W": self.W_, "G": self.G_, "mu": self.mu_, "center": self.center_,
                  "std": self.std_}  # fmt: skip
        if self.seen_ is not None:
            arrays["ngram_seen"] = np.packbits(self.seen_, axis=1)
            arrays["cluster_novelty"] = self.cluster_nov_
        return arrays, params

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> OODDetector:
        """Rebuild from `get_state()` output (states written before the n-gram score load without it)."""
        det = cls(params["n_clusters"], params["use_shape"], params["calib_frac"], params.get("seed", 0),
                  params.get("ridge", 1e-4), params.get("use_ngrams", False), params.get("novelty_floor", 0.05),
                  params.get("ngram_dims", 0))  # fmt: skip
        det.centroids_, det.W_, det.G_, det.mu_, det.center_, det.std_ = (
            np.asarray(arrays[k]) for k in ("centroids", "W", "G", "mu", "center", "std")
        )
        det.loc_, det.scale_ = float(params["loc"]), float(params["scale"])
        det.ngram_dims_ = int(params.get("ngram_dims_fitted", 0))
        if "ngram_seen" in arrays:
            if tuple(params["ngram_orders"]) != NGRAM_ORDERS or int(params["ngram_bits"]) != NGRAM_BITS:
                raise ValueError("OODDetector state uses a different n-gram layout than this version")
            det.seen_ = np.unpackbits(np.asarray(arrays["ngram_seen"]), axis=1, count=1 << NGRAM_BITS).astype(
                bool
            )
            det.nov_loc_, det.nov_scale_ = float(params["nov_loc"]), float(params["nov_scale"])
            det.mix_loc_, det.mix_scale_ = float(params["mix_loc"]), float(params["mix_scale"])
            det.cnov_loc_, det.cnov_scale_ = float(params["cnov_loc"]), float(params["cnov_scale"])
            det.cluster_nov_ = np.asarray(arrays["cluster_novelty"])
        det.train_quantiles_ = dict(params.get("train_quantiles", {}))
        return det

    def save(self, path: str | Path) -> None:
        """Write an .npz with the arrays and a JSON params entry."""
        arrays, params = self.get_state()
        with Path(path).open("wb") as f:
            np.savez(f, params=np.array(json.dumps(params)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> OODDetector:
        """Read a file written by `save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            params = json.loads(str(z["params"]))
            return cls.from_state({k: z[k] for k in z.files if k != "params"}, params)


def _calibration(ref: np.ndarray, min_scale: float = 1e-9) -> tuple[float, float]:
    """(location, scale) mapping the reference median to 0 and its 95th percentile to 1."""
    q50, q95 = float(np.quantile(ref, 0.5)), float(np.quantile(ref, 0.95))
    return q50, max(q95 - q50, min_scale)
