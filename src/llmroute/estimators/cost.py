"""Expected cost per (prompt, model).

For each model, in order of preference:

1. **price**: the model has a price (USD per 1M input/output tokens):
   cost = input_tokens x input price + E[output tokens] x output price, where the expected
   output length is learned per model from the table as a light regression
   log1p(out) = a + b * log1p(in) (with a smearing factor so the mean is unbiased);
2. **observed**: no price but observed costs: cost = alpha + beta * input_tokens, a non-negative
   least-squares fit of the model's observed cost on the input length (the per-model mean
   cost scaled by input length);
3. **zero**: nothing known.

Input tokens at route time come from the text: chars x tokens-per-char (+ whitespace-separated
words x tokens-per-word), a non-negative fit on the table's own token counts (default 1 token
per 4 characters). No tokenizer needed, all numpy.

With prompt `Features` (embedding + hand-made columns) passed to `fit` and `predict`, token
counts are predicted from the text instead: ridge regressions (penalty by GCV) of log1p(input
tokens) and, per model, log1p(output tokens) on [log chars, log words, features]. This learns
what the text alone does not show (a benchmark's hidden few-shot prefix, a model that writes
long answers to maths questions) and is what cross-validated evaluation uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

import numpy as np
from scipy.optimize import nnls

from llmroute.data.table import ModelPrice, RoutingTable
from llmroute.estimators.base import Features
from llmroute.estimators.linear import single_threaded_blas

__all__ = ["CostEstimator"]

_MODES = ("price", "observed", "zero")
_DEFAULT_TOK_PER_CHAR = 0.25
# Log-token predictions are capped here (a million tokens, beyond any context window) so an
# out-of-range prompt (e.g. one 5,000-character "word") gives a large finite cost, never inf.
_MAX_LOG_TOKENS = float(np.log1p(1e6))


def _text_stats(texts: Sequence[str]) -> np.ndarray:
    """(n, 2) [chars, words] per text."""
    return np.array(
        [(len(t), t.count(" ") + t.count("\n") + 1 if t else 0) for t in texts], dtype=np.float64
    ).reshape(len(texts), 2)


_ALPHAS = np.logspace(-2, 4, 13)


def _design(stats: np.ndarray, X: Features | None) -> np.ndarray:
    """[log1p chars, log1p words, emb, extra] as float64."""
    cols = [np.log1p(stats)]
    if X is not None:
        cols += [np.asarray(X.emb, dtype=np.float64), np.asarray(X.extra, dtype=np.float64)]
    return np.hstack(cols)


def _ridge_gcv(A: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge per column of Y (all finite) on standardised A with GCV-chosen penalty.

    Returns (W (p, k), b (k,), smear (k,)) for predictions exp(A W + b) * smear.
    """
    mu = A.mean(axis=0)
    Ac = A - mu
    ym = Y.mean(axis=0)
    Yc = Y - ym
    U, s, Vt = np.linalg.svd(Ac, full_matrices=False)
    UtY = U.T @ Yc
    s2 = s * s
    n = len(A)
    resid0 = (Yc * Yc).sum(axis=0) - (UtY * UtY).sum(axis=0)
    W = np.empty((A.shape[1], Y.shape[1]))
    for k in range(Y.shape[1]):
        best = (np.inf, _ALPHAS[0])
        for alpha in _ALPHAS:
            shrink = s2 / (s2 + alpha)
            rss = resid0[k] + (((1.0 - shrink) * UtY[:, k]) ** 2).sum()
            gcv = rss / max(n - shrink.sum(), 1.0) ** 2
            if gcv < best[0]:
                best = (gcv, alpha)
        W[:, k] = Vt.T @ ((s / (s2 + best[1])) * UtY[:, k])
    b = ym - mu @ W
    resid = Y - (A @ W + b)
    smear = np.mean(np.exp(np.clip(resid, -20, 20)), axis=0)
    return W, b, smear


def _loglin(x_in: np.ndarray, y_out: np.ndarray) -> tuple[float, float, float] | None:
    """(a, b, smear) of log1p(y) = a + b log1p(x); None when there are too few points."""
    ok = np.isfinite(x_in) & np.isfinite(y_out) & (x_in >= 0) & (y_out >= 0)
    if ok.sum() < 3:
        return None
    lx, ly = np.log1p(x_in[ok]), np.log1p(y_out[ok])
    if lx.std() < 1e-9:
        a, b = float(ly.mean()), 0.0
    else:
        b, a = np.polyfit(lx, ly, 1)
        b = float(np.clip(b, -1.0, 2.0))
        a = float(ly.mean() - b * lx.mean())
    resid = ly - (a + b * lx)
    smear = float(np.mean(np.exp(np.clip(resid, -20, 20))))
    return a, b, smear


class CostEstimator:
    """Per-(prompt, model) expected cost in USD; see the module docstring for the rules.

    `prices` given here override the table's. `fit(table)` learns token and cost models;
    `predict(texts)` or `predict_tokens(input_tokens)` give (n, m) expected costs in `models`
    order.
    """

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self.prices = dict(prices) if prices else None

    # ---- fitting ---------------------------------------------------------------------------
    @single_threaded_blas
    def fit(self, table: RoutingTable, X: Features | None = None) -> Self:
        """Learn token and cost models from `table`; with `X` (its prompts' features, in table
        order) also the feature-based token regressions used by `predict(texts, X)`."""
        self.models_ = list(table.models)
        m = len(self.models_)
        prices = dict(table.prices or {})
        prices.update(self.prices or {})
        tin = table.matrix("input_tokens")
        tout = table.matrix("output_tokens")
        cost = table.cost_matrix()
        # tokens per char/word from the prompts that have an input count
        fin = np.isfinite(tin)
        row_in = np.where(
            fin.any(axis=1), np.where(fin, tin, 0.0).sum(axis=1) / np.maximum(fin.sum(axis=1), 1), np.nan
        )
        stats = _text_stats(table.prompts)
        ok = np.isfinite(row_in)
        if ok.sum() >= 3:
            coef, _ = nnls(stats[ok], row_in[ok])
            if coef.sum() <= 0:
                coef = np.array([_DEFAULT_TOK_PER_CHAR, 0.0])
        else:
            coef = np.array([_DEFAULT_TOK_PER_CHAR, 0.0])
        self.tok_coef_ = coef.astype(np.float64)
        est_in = self._tokens_from_stats(stats)
        in_mat = np.where(np.isfinite(tin), tin, est_in[:, None])
        # expected output tokens: per model, with a pooled fallback
        pooled = _loglin(in_mat.ravel(), tout.ravel()) or (np.log1p(100.0), 0.0, 1.0)
        self.out_ab_ = np.empty((m, 3))
        for j in range(m):
            self.out_ab_[j] = _loglin(in_mat[:, j], tout[:, j]) or pooled
        self.out_pooled_ = np.asarray(pooled, dtype=np.float64)
        # observed-cost fits
        self.cost_ab_ = np.zeros((m, 2))
        for j in range(m):
            okc = np.isfinite(cost[:, j]) & np.isfinite(in_mat[:, j])
            if okc.sum() >= 1:
                A = np.column_stack([np.ones(okc.sum()), in_mat[okc, j]])
                coef_c, _ = nnls(A, cost[okc, j])
                if not np.isfinite(coef_c).all() or coef_c.sum() == 0:
                    coef_c = np.array([max(float(np.nanmean(cost[okc, j])), 0.0), 0.0])
                self.cost_ab_[j] = coef_c
        self.has_cost_ = np.array([np.isfinite(cost[:, j]).any() for j in range(m)])
        self.added_ratio_ = np.zeros(0)  # output-length ratios of models added from a profile
        self._set_prices(prices)
        self._fit_features(stats, X, row_in, in_mat, tout)
        return self

    def _fit_features(
        self, stats: np.ndarray, X: Features | None, row_in: np.ndarray, in_mat: np.ndarray, tout: np.ndarray
    ) -> None:
        """Ridge models of log tokens on features; `feat_W_` is empty when not fitted."""
        m = len(self.models_)
        self.feat_W_ = np.zeros((0, 1 + m))
        self.feat_b_ = np.zeros(1 + m)
        self.feat_smear_ = np.ones(1 + m)
        self.feat_ok_ = np.zeros(1 + m, dtype=np.int8)  # which targets have a feature model
        if X is None:
            return
        if len(X) != len(stats):
            raise ValueError(f"features have {len(X)} rows but the table has {len(stats)} prompts")
        A = _design(stats, X)
        W = np.zeros((A.shape[1], 1 + m))
        targets = np.column_stack([row_in, tout])
        valid = np.isfinite(targets) & (targets >= 0)
        groups: dict[bytes, list[int]] = {}
        for k in range(1 + m):
            if valid[:, k].sum() >= max(20, A.shape[1] // 4):
                groups.setdefault(np.packbits(valid[:, k]).tobytes(), []).append(k)
        for ks in groups.values():  # one SVD per distinct set of observed rows
            ok = valid[:, ks[0]]
            Wk, bk, sk = _ridge_gcv(A[ok], np.log1p(targets[ok][:, ks]))
            W[:, ks], self.feat_b_[ks], self.feat_smear_[ks] = Wk, bk, sk
            self.feat_ok_[ks] = 1
        self.feat_W_ = W

    def _set_prices(self, prices: Mapping[str, ModelPrice]) -> None:
        m = len(self.models_)
        self.price_ = np.full((m, 2), np.nan)
        for j, name in enumerate(self.models_):
            p = prices.get(name)
            if p is not None:
                self.price_[j] = (p.input_per_mtok, p.output_per_mtok)
        self.mode_ = np.where(np.isfinite(self.price_[:, 0]), 0, np.where(self.has_cost_, 1, 2)).astype(
            np.int64
        )
        # precomputed per-model coefficients: cost = const + k_in * tin + k_out * out
        is_price, is_obs = self.mode_ == 0, self.mode_ == 1
        self._k_in = np.where(
            is_price, np.nan_to_num(self.price_[:, 0]) / 1e6, np.where(is_obs, self.cost_ab_[:, 1], 0.0)
        )
        self._k_out = np.where(is_price, np.nan_to_num(self.price_[:, 1]) / 1e6, 0.0)
        self._const = np.where(is_obs, self.cost_ab_[:, 0], 0.0)

    def set_prices(self, prices: Mapping[str, ModelPrice]) -> None:
        """Use `prices` (model -> ModelPrice) for these models from now on (others unchanged)."""
        merged = {
            name: ModelPrice(float(self.price_[j, 0]), float(self.price_[j, 1]))
            for j, name in enumerate(self.models_)
            if np.isfinite(self.price_[j, 0])
        }
        unknown = sorted(set(prices) - set(self.models_))
        if unknown:
            raise ValueError(f"prices given for unknown model(s) {unknown}; known: {self.models_}")
        merged.update(prices)
        self._set_prices(merged)

    @property
    def n_known(self) -> int:
        """Models with their own token models (trained); the rest were added from a profile."""
        return len(self.models_) - len(self.added_ratio_)

    def add_model(
        self,
        name: str,
        input_tokens: np.ndarray,
        output_tokens: np.ndarray,
        cost: np.ndarray,
        price: ModelPrice | None = None,
        expected_output: np.ndarray | None = None,
    ) -> None:
        """Append a model known only by a few calls (its profile): per-call input and output
        tokens and cost (NaN where unknown), and its price if any.

        Its expected output length on a prompt is the trained models' mean expected length
        there times a ratio: sum of its observed output tokens / sum of that mean on the same
        calls (`expected_output`, (k,), the mean for the profile prompts; ratio 1 without
        counts). So it follows what the trained token models learned about the prompt, at
        its own verbosity, instead of extrapolating a fit on a few calls. Its observed cost
        (no price) is fitted as for a trained model. Other models' estimates are unchanged
        (bit for bit)."""
        if name in self.models_:
            raise ValueError(f"the cost model already has {name!r}")
        tin = np.asarray(input_tokens, dtype=np.float64)
        tout = np.asarray(output_tokens, dtype=np.float64)
        cost = np.asarray(cost, dtype=np.float64)
        ratio = 1.0
        if expected_output is not None:
            ref = np.asarray(expected_output, dtype=np.float64)
            ok = np.isfinite(tout) & (tout >= 0) & np.isfinite(ref)
            if ok.any() and ref[ok].sum() > 0:
                ratio = float(tout[ok].sum() / ref[ok].sum())
        self.out_ab_ = np.vstack([self.out_ab_, self.out_pooled_])  # not used: the ratio is
        self.added_ratio_ = np.append(self.added_ratio_, ratio)
        coef_c = np.zeros(2)
        okc = np.isfinite(cost) & np.isfinite(tin)
        if okc.any():
            A = np.column_stack([np.ones(okc.sum()), tin[okc]])
            coef_c, _ = nnls(A, cost[okc])
            if not np.isfinite(coef_c).all() or coef_c.sum() == 0:
                coef_c = np.array([max(float(np.mean(cost[okc])), 0.0), 0.0])
        self.cost_ab_ = np.vstack([self.cost_ab_, coef_c])
        self.has_cost_ = np.append(self.has_cost_, bool(okc.any()))
        prices = {
            m: ModelPrice(float(self.price_[j, 0]), float(self.price_[j, 1]))
            for j, m in enumerate(self.models_)
            if np.isfinite(self.price_[j, 0])
        }
        if price is not None:
            prices[name] = price
        self.models_ = [*self.models_, name]
        self._set_prices(prices)

    def remove_model(self, name: str) -> None:
        """Drop model `name` (its price, token and cost models)."""
        if name not in self.models_:
            raise ValueError(f"the cost model has no {name!r}; known: {self.models_}")
        j = self.models_.index(name)
        n_known = self.n_known
        if j < n_known and n_known == 1 and len(self.added_ratio_):
            raise ValueError(f"cannot remove {name!r}: models added from a profile are estimated from it")
        prices = {
            m: ModelPrice(float(self.price_[i, 0]), float(self.price_[i, 1]))
            for i, m in enumerate(self.models_)
            if np.isfinite(self.price_[i, 0]) and i != j
        }
        self.out_ab_ = np.delete(self.out_ab_, j, axis=0)
        self.cost_ab_ = np.delete(self.cost_ab_, j, axis=0)
        self.has_cost_ = np.delete(self.has_cost_, j)
        if j >= n_known:
            self.added_ratio_ = np.delete(self.added_ratio_, j - n_known)
        elif 1 + j < self.feat_W_.shape[1]:
            self.feat_W_ = np.delete(self.feat_W_, 1 + j, axis=1)
            self.feat_b_ = np.delete(self.feat_b_, 1 + j)
            self.feat_smear_ = np.delete(self.feat_smear_, 1 + j)
            self.feat_ok_ = np.delete(self.feat_ok_, 1 + j)
        self.models_ = [m for m in self.models_ if m != name]
        self._set_prices(prices)

    @property
    def modes(self) -> dict[str, str]:
        """How each model's cost is estimated: 'price', 'observed' or 'zero'."""
        return {name: _MODES[k] for name, k in zip(self.models_, self.mode_, strict=True)}

    # ---- prediction ------------------------------------------------------------------------
    def _tokens_from_stats(self, stats: np.ndarray) -> np.ndarray:
        return np.maximum(stats @ self.tok_coef_, np.where(stats[:, 0] > 0, 1.0, 0.0))

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) estimated input tokens of each text."""
        return self._tokens_from_stats(_text_stats(texts))

    def expected_output_tokens(self, input_tokens: np.ndarray) -> np.ndarray:
        """(n, m) expected output tokens per model."""
        lx = np.log1p(np.asarray(input_tokens, dtype=np.float64).reshape(-1, 1))
        a, b, smear = self.out_ab_[:, 0], self.out_ab_[:, 1], self.out_ab_[:, 2]
        out = np.maximum(np.exp(np.minimum(a + b * lx, _MAX_LOG_TOKENS)) * smear - 1.0, 0.0)
        if len(self.added_ratio_):
            out[:, self.n_known :] = self._added_output(out[:, : self.n_known])
        return out

    def _added_output(self, known: np.ndarray) -> np.ndarray:
        """(n, added) expected output tokens of the models added from a profile, from the
        trained models' (n, n_known) expected output tokens."""
        return known.mean(axis=1, keepdims=True) * self.added_ratio_[None, :]

    def predict_tokens(self, input_tokens: np.ndarray) -> np.ndarray:
        """(n, m) expected cost in USD given input token counts."""
        tin = np.asarray(input_tokens, dtype=np.float64).reshape(-1, 1)
        return self._cost(tin, self.expected_output_tokens(tin))

    def _cost(self, tin: np.ndarray, out: np.ndarray) -> np.ndarray:
        return self._const + tin * self._k_in + out * self._k_out

    def predict(self, texts: Sequence[str], X: Features | None = None) -> np.ndarray:
        """(n, m) expected cost in USD of sending each text to each model.

        With `X` (the texts' features) and a feature model fitted, token counts come from it.
        """
        tin, out = self.tokens(texts, X)
        return self._cost(tin.reshape(-1, 1), out)

    def tokens(self, texts: Sequence[str], X: Features | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((n,) expected input tokens, (n, m) expected output tokens per model) of each text,
        from the feature models when `X` is given and they are fitted (as `predict`)."""
        stats = _text_stats(texts)
        if X is None or not self.feat_ok_.any() or self.feat_W_.shape[0] == 0:
            tin = self._tokens_from_stats(stats)
            return tin, self.expected_output_tokens(tin)
        n_in = 2 + X.emb.shape[1] + X.extra.shape[1]
        if n_in != self.feat_W_.shape[0]:
            raise ValueError(
                f"cost model expects {self.feat_W_.shape[0] - 2} feature columns, got {n_in - 2}"
            )
        A = np.concatenate((np.log1p(stats), X.emb, X.extra), axis=1, dtype=np.float64)  # = _design
        T = A @ self.feat_W_
        T += self.feat_b_
        np.minimum(T, _MAX_LOG_TOKENS, out=T)
        np.exp(T, out=T)
        T *= self.feat_smear_
        T -= 1.0
        np.maximum(T, 0.0, out=T)
        ok = self.feat_ok_
        tin = T[:, 0] if ok[0] else self._tokens_from_stats(stats)
        nf = T.shape[1] - 1  # models after the first nf were added from a profile (no feature model)
        if ok[1:].all():
            out = T[:, 1:]
        else:
            out = np.where(ok[1:] > 0, T[:, 1:], self.expected_output_tokens(tin)[:, :nf])
        if nf < len(self.models_):
            out = np.hstack([out, self._added_output(out)])
        return tin, out

    # ---- state -----------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able params) for `from_state`."""
        arrays = {
            "tok_coef": self.tok_coef_,
            "out_ab": self.out_ab_,
            "out_pooled": self.out_pooled_,
            "cost_ab": self.cost_ab_,
            "has_cost": self.has_cost_.astype(np.int8),
            "price": self.price_,
            "feat_W": self.feat_W_,
            "feat_b": self.feat_b_,
            "feat_smear": self.feat_smear_,
            "feat_ok": self.feat_ok_,
            "added_ratio": self.added_ratio_,
        }
        return arrays, {"models": self.models_}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], params: Mapping) -> Self:
        """Rebuild a fitted cost estimator."""
        est = cls()
        est.models_ = list(params["models"])
        est.tok_coef_ = np.asarray(arrays["tok_coef"], dtype=np.float64)
        est.out_ab_ = np.asarray(arrays["out_ab"], dtype=np.float64)
        est.out_pooled_ = np.asarray(arrays["out_pooled"], dtype=np.float64)
        est.cost_ab_ = np.asarray(arrays["cost_ab"], dtype=np.float64)
        est.has_cost_ = np.asarray(arrays["has_cost"]).astype(bool)
        est.feat_W_ = np.asarray(arrays["feat_W"], dtype=np.float64)
        est.feat_b_ = np.asarray(arrays["feat_b"], dtype=np.float64)
        est.feat_smear_ = np.asarray(arrays["feat_smear"], dtype=np.float64)
        est.feat_ok_ = np.asarray(arrays["feat_ok"]).astype(np.int8)
        est.added_ratio_ = np.asarray(arrays.get("added_ratio", np.zeros(0)), dtype=np.float64)
        price = np.asarray(arrays["price"], dtype=np.float64)
        est._set_prices(
            {
                name: ModelPrice(float(price[j, 0]), float(price[j, 1]))
                for j, name in enumerate(est.models_)
                if np.isfinite(price[j, 0])
            }
        )
        return est
