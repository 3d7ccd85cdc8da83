"""What kind of prompt is this? A regime head that sits on top of any quality estimator.

Quality estimators learn from routing tables, and the public tables are exam questions (multiple
choice, grade-school maths, short coding tasks, MT-Bench). Asked about "hello" or "what is the
capital of Japan?", such an estimator can only answer with each model's exam average, so the
strongest model always looks 0.1-0.2 better and wins; asked for a proof, it extrapolates each
model's column on its own (columns learned from different tables can even swap order).

`RegimeHead` gives each prompt a probability for each of these regimes (they sum to one):

- ``easy``: an everyday prompt that any competent model answers well (greetings, simple facts,
  rewriting a sentence, formatting, short creative);
- ``hard``: an everyday prompt that needs a strong model (proofs, multi-step maths, non-trivial
  code, systems design, long analysis), unlike anything the estimator was trained on;
- ``known:k``: a prompt like the training prompts whose outcomes were observed for the models in
  support set k (a table that joins sources observes different models on different prompts).

and mixes one quality estimate per regime with these weights::

    q'[m] = P(easy) * 1  +  P(hard) * ability[m]  +  sum_k P(known:k) * qk[m]
    qk[m] = q[m]                                              if m was observed in set k
          = mean_{j in k} q[j] + ability[m] - mean_{j in k} ability[j]    otherwise

`ability[m]` is model m's mean quality on the training prompts that every model answered and
that did not all get the same outcome (one common yardstick over the prompts where models
differ, so the models keep the order the data measured). On easy prompts every model is
expected to succeed and the cheapest wins at any trade-off; on hard prompts the measured order
of strength decides against the price; on familiar prompts the estimator speaks for the models
it has seen there, and the others are placed relative to those (quality predicted relative to
the observed models, not by extrapolating a column far from its data).

The head is a multinomial logistic regression on the router's own features (static embedding +
hand-made columns), fitted with sample weights (soft labels become weighted rows), its L2
strength chosen by grouped cross-validation. Prediction is one (d x regimes) product per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from llmroute.estimators.base import Features

__all__ = ["RegimeHead", "common_ability", "support_sets"]

EASY, HARD = 0, 1  # the first two regimes; known:k is regime 2 + k


def common_ability(Q: np.ndarray, min_rows: int = 50) -> np.ndarray:
    """(m,) per-model mean quality over the prompts that every model answered and on which the
    models did not all score the same (the prompts that tell models apart).

    Falls back to all complete rows, then to each model's own mean, when fewer than `min_rows`
    rows qualify (then the means come from different prompts and are less comparable)."""
    Q = np.asarray(Q, dtype=np.float64)
    ok = np.isfinite(Q)
    full = ok.all(axis=1)
    Qf = Q[full]
    differ = Qf.max(axis=1) > Qf.min(axis=1) if len(Qf) else np.zeros(0, dtype=bool)
    if differ.sum() >= min_rows:
        return Qf[differ].mean(axis=0)
    if len(Qf) >= min_rows:
        return Qf.mean(axis=0)
    return np.where(ok, Q, 0.0).sum(axis=0) / np.maximum(ok.sum(axis=0), 1)


def support_sets(Q: np.ndarray, min_share: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """The sets of models observed together in a quality matrix, and each row's set.

    Returns ((K, m) bool masks, (n,) set index per row). A pattern of observed cells shared by
    at least `min_share` of the rows is a set; rows with a rarer pattern (a few missing cells)
    join the set that covers most of their observed models.
    """
    ok = np.isfinite(np.asarray(Q, dtype=np.float64))
    patterns, inverse, counts = np.unique(ok, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    keep = np.flatnonzero(counts >= max(1, min_share * len(ok)))
    if len(keep) == 0:
        keep = np.array([int(np.argmax(counts))])
    sets = patterns[keep]
    # rows of a rare pattern: the kept set with the largest overlap (then the smallest extra)
    overlap = patterns.astype(int) @ sets.T.astype(int) - 1e-3 * (~patterns).astype(int) @ sets.T.astype(int)
    map_pattern = np.argmax(overlap, axis=1)
    map_pattern[keep] = np.arange(len(keep))
    return sets.astype(bool), map_pattern[inverse]


def _design(X: Features) -> np.ndarray:
    if X.extra.shape[1]:
        return np.hstack([X.emb, X.extra]).astype(np.float64)
    return X.emb.astype(np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class RegimeHead:
    """Regime probabilities per prompt, and the quality mixture; see the module docstring.

    Parameters
    ----------
    C: inverse L2 strength on standardised features (None = chosen by grouped CV from `grid`).
    grid: candidate values of C.
    cv_folds, seed: the cross-validation used to choose C.
    """

    def __init__(
        self,
        C: float | None = None,
        grid: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1),
        cv_folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.C = C
        self.grid = tuple(grid)
        self.cv_folds = cv_folds
        self.seed = seed

    @property
    def regimes(self) -> list[str]:
        """Regime names, in the column order of `predict`."""
        return ["easy", "hard", *(f"known:{k}" for k in range(len(self.supports_)))]

    # ---- fitting -----------------------------------------------------------------------
    def fit(
        self,
        X: Features,
        P: np.ndarray,
        ability: np.ndarray,
        supports: np.ndarray,
        sample_weight: np.ndarray | None = None,
        groups: Sequence[str | None] | None = None,
    ) -> Self:
        """Fit on features `X` and (n, 2 + K) soft labels `P` over (easy, hard, known:0..K-1).

        ability: (m,) the models' quality where models differ (`common_ability`); supports:
        (K, m) bool, the models observed in each known set (`support_sets`); sample_weight:
        per-row weight (default 1); groups: C is chosen by holding out each group in turn (e.g.
        the writer of each everyday prompt, so C suits prompts in other words; rows with group
        None always train), else by `cv_folds` random folds.
        """
        supports = np.atleast_2d(np.asarray(supports, dtype=bool))
        ability = np.asarray(ability, dtype=np.float64)
        if ability.ndim != 1 or not np.all((ability >= 0) & (ability <= 1)):
            raise ValueError("ability must be a 1-D array of qualities in [0, 1]")
        if supports.shape[1] != len(ability) or not supports.any(axis=1).all():
            raise ValueError(f"supports must be (K, {len(ability)}) with at least one model per set")
        k = 2 + len(supports)
        P = np.asarray(P, dtype=np.float64)
        if P.shape != (len(X), k):
            raise ValueError(f"need ({len(X)}, {k}) regime labels, got shape {P.shape}")
        if len(P) == 0:
            raise ValueError("cannot fit a regime head on zero prompts")
        if not (np.all(P >= 0) and np.allclose(P.sum(axis=1), 1.0)):
            raise ValueError("regime labels must be probabilities summing to 1 per row")
        w = np.ones(len(P)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        Z = _design(X)
        self.n_emb_ = X.emb.shape[1]
        mu = Z.mean(axis=0)
        sd = Z.std(axis=0)
        sd[: self.n_emb_] = max(float(np.sqrt(np.mean(sd[: self.n_emb_] ** 2))), 1e-8)
        sd[sd < 1e-8] = 1.0
        Z = (Z - mu) / sd
        self.cv_scores_: dict[str, float] = {}
        C = self._choose_C(Z, P, w, groups) if self.C is None else self.C
        self.C_ = float(C)
        coef, intercept, _ = self._fit(Z, P, w, self.C_)
        # fold the scaler into the weights: logits = raw features @ W + b, one product
        self.W_ = coef / sd[:, None]
        self.b_ = intercept - (mu / sd) @ coef
        self.ability_ = ability
        self.supports_ = supports
        return self

    @staticmethod
    def _fit(
        Z: np.ndarray, P: np.ndarray, w: np.ndarray, C: float, clf: Any = None
    ) -> tuple[np.ndarray, np.ndarray, Any]:
        """(d, k) weights, (k,) intercepts and the fitted classifier (pass it back to warm-start
        the next C); soft labels become one weighted row per regime."""
        from sklearn.linear_model import LogisticRegression

        k = P.shape[1]
        rows, cls = np.nonzero(P > 0)
        weights = w[rows] * P[rows, cls]
        coef = np.zeros((Z.shape[1], k))
        intercept = np.full(k, -30.0)  # a regime absent from the labels is never predicted
        present = np.unique(cls)
        if len(present) == 1:  # one regime only: always that one
            intercept[present] = 0.0
            return coef, intercept, None
        if clf is None:
            clf = LogisticRegression(C=C, max_iter=3000, warm_start=True)
        clf.C = C
        clf.fit(Z[rows], cls, sample_weight=weights / weights.mean())
        if len(clf.classes_) == 2:  # binary model: one weight vector for the second class
            coef[:, clf.classes_] = np.column_stack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
            intercept[clf.classes_] = [-clf.intercept_[0] / 2, clf.intercept_[0] / 2]
        else:
            coef[:, clf.classes_] = clf.coef_.T
            intercept[clf.classes_] = clf.intercept_
        return coef, intercept, clf

    def _choose_C(
        self, Z: np.ndarray, P: np.ndarray, w: np.ndarray, groups: Sequence[str | None] | None
    ) -> float:
        """C with the least weighted log loss on held-out rows: with `groups`, each group in turn
        (rows whose group is None always train); else `cv_folds` random folds."""
        from sklearn.model_selection import KFold

        names = sorted({g for g in groups if g is not None}) if groups is not None else []
        if len(names) >= 2:
            g_arr = np.array([g if g is not None else "" for g in groups], dtype=object)
            splits = [(np.flatnonzero(g_arr != g), np.flatnonzero(g_arr == g)) for g in names]
        else:
            splits = list(KFold(self.cv_folds, shuffle=True, random_state=self.seed).split(Z))
        grid = sorted(self.grid)  # strongest regularisation first: each fit warm-starts the next
        loss = np.zeros(len(grid))
        total = 0.0
        for tr, va in splits:
            clf = None
            for g, C in enumerate(grid):
                coef, b, clf = self._fit(Z[tr], P[tr], w[tr], C, clf)
                prob = np.clip(_softmax(Z[va] @ coef + b), 1e-9, 1.0)
                loss[g] += float((-(P[va] * np.log(prob)).sum(axis=1) * w[va]).sum())
            total += float(w[va].sum())
        self.cv_scores_ = {str(C): float(v / total) for C, v in zip(grid, loss, strict=True)}
        return float(grid[int(np.argmin(loss))])

    # ---- predicting --------------------------------------------------------------------
    def predict(self, X: Features) -> np.ndarray:
        """(n, 2 + K) regime probabilities per prompt, columns as in `regimes`."""
        d = X.emb.shape[1] + X.extra.shape[1]
        if d != self.W_.shape[0]:
            raise ValueError(
                f"regime head expects {self.W_.shape[0]} feature columns, got {d} "
                "(was it fitted with another encoder?)"
            )
        w_emb, w_extra = self._weights(X.emb.dtype, X.extra.dtype)
        z = X.emb @ w_emb
        if X.extra.shape[1]:
            z = z + X.extra @ w_extra
        # z is cast to float64 before the bias is added (as np.asarray(z, float64) + b), in one call
        return _softmax(np.add(z, self.b_, dtype=np.float64))

    def _weights(self, emb_dtype: np.dtype, extra_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """W_'s embedding and hand-feature rows cast to the features' dtypes (float32), cast once
        per fitted state rather than on every request (the same values as casting each time)."""
        cached = getattr(self, "_w_cache", None)
        # keyed on the very W_ array (held, so a new array cannot take its id), the split and the dtypes
        key = (self.n_emb_, emb_dtype, extra_dtype)
        if cached is not None and cached[0] is self.W_ and cached[1] == key:
            return cached[2]
        pair = (self.W_[: self.n_emb_].astype(emb_dtype), self.W_[self.n_emb_ :].astype(extra_dtype))
        self._w_cache = (self.W_, key, pair)
        return pair

    def mix(self, q: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """The quality mixture for (n, m) estimator quality `q` and `probs` from `predict`."""
        out = probs[:, EASY : EASY + 1] + probs[:, HARD : HARD + 1] * self.ability_[None, :]
        for k, seen, offset in self._mix_terms():
            pk = probs[:, 2 + k : 3 + k]
            if offset is None:  # the set saw every model
                out += pk * q
                continue
            # the mean of the seen columns as np.mean computes it (add.reduce, then divide by the
            # count) without its Python wrapper; clipping to [0, 1] with maximum/minimum (the clip
            # ufunc would only differ on -0.0, which adds the same to `out`): the request path
            # calls this for every batch, where each wrapper costs more than the arithmetic
            ref = np.add.reduce(q[:, seen], axis=1, keepdims=True)
            ref /= float(np.count_nonzero(seen))
            rel = np.minimum(np.maximum(ref + offset, 0.0), 1.0)
            out += pk * np.where(seen[None, :], q, rel)
        return out

    def _mix_terms(self) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
        """Per model set k: (k, its support mask, the (1, m) ability offsets of the unseen models'
        stand-in, or None when it saw every model); computed once per fitted state (the request
        path calls `mix` for every batch)."""
        cached = getattr(self, "_mix_cache", None)
        # the very arrays the terms were computed from (held, so a new array cannot take their id);
        # fitting, loading or adding a model assigns new arrays
        if cached is not None and cached[0] is self.supports_ and cached[1] is self.ability_:
            return cached[2]
        terms: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        for k, seen in enumerate(self.supports_):
            if seen.all():
                terms.append((k, seen, None))
            else:
                terms.append((k, seen, (self.ability_ - self.ability_[seen].mean())[None, :]))
        self._mix_cache = (self.supports_, self.ability_, terms)
        return terms

    # ---- state -------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able params) for `from_state` (no pickle)."""
        arrays = {"W": self.W_, "b": self.b_, "ability": self.ability_, "supports": self.supports_}
        params = {
            "C": self.C,
            "grid": list(self.grid),
            "cv_folds": self.cv_folds,
            "seed": self.seed,
            "C_": self.C_,
            "n_emb_": self.n_emb_,
        }
        return arrays, params

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], params: dict) -> Self:
        """Rebuild a fitted head from `get_state()` output."""
        p = dict(params)
        C_, n_emb_ = p.pop("C_"), p.pop("n_emb_")
        head = cls(**p)
        head.W_ = np.asarray(arrays["W"], dtype=np.float64)
        head.b_ = np.asarray(arrays["b"], dtype=np.float64)
        head.ability_ = np.asarray(arrays["ability"], dtype=np.float64)
        head.supports_ = np.asarray(arrays["supports"]).astype(bool)
        head.C_, head.n_emb_ = float(C_), int(n_emb_)
        head.cv_scores_ = {}
        return head
