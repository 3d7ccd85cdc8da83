"""Re-estimation after each answer of a cascade (cascade routing), shared by the offline
evaluation (`llmroute.cascade.offline`) and the gateway's cascades (`llmroute.gateway.cascade`).

After every answer the evidence so far re-estimates the models (Dekoninck et al. 2025), and the
next model is chosen by the rule `choose_next`: the model not called yet with the largest expected
quality gain minus the trade-off times its estimated cost, while that is > 0. Two estimators give
the gains, with one interface (`called(S, q, ev)`: P(right) of each called answer; `gains(S, P, q,
ev)`: expected gain of calling each other model next; S the called set, q the router's prior,
`Evidence` the answers' evidence):

- `Reestimator`: fitted on a table with stored answers and known quality (per CV fold offline): a
  logistic model of P(right) of a called answer from its prior, verifier scores and agreement, and
  a ridge model of the gain;
- `DifficultyReestimator`: no training data (the gateway's default): a Rasch model of the prompt's
  difficulty. Model i is right with P = sigmoid(logit(q_i) - d), d the prompt's difficulty beyond
  what the router saw (prior N(0, sigma^2)); an answer's verifier score s counts as the likelihood
  ratio s / (1 - s) of right against wrong (s at most `max_score`); two extracted answers agree when both are right, never
  when exactly one is, and with probability `kappa` when both are wrong. A rejected answer raises
  the posterior difficulty, which lowers a mid model's P(right) more than a strong one's: the
  evidence can favour another model than the static ranking.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MAX_SCORE_GRID",
    "SIGNALS",
    "DifficultyReestimator",
    "Evidence",
    "Reestimator",
    "choose_next",
    "extract_answer",
    "first_answer_p",
    "fit_max_score",
]

SIGNALS: tuple[str, ...] = ("checks", "learned", "agreement")
"""Answer evidence the fitted `Reestimator` can use (`llmroute.cascade.offline` describes them)."""

_EPS = 0.01


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


# ---- answers and evidence ------------------------------------------------------------------------
_OPTION_LINE = re.compile(r"(?m)^\s*\(?([A-H])[).:]\s")
_ASKS_NUMBER = re.compile(
    r"(?i)\b(?:final (?:number|numeric answer)|reply with (?:the|a) number|\\boxed|####)"
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(prompt: str, response: str | None) -> str | None:
    """The answer a response commits to, comparable across models, or None.

    Multiple choice (the prompt's last question lists options like `A) ...`): the first option
    letter standing alone in the response. Numeric (the prompt asks for a final number): the
    response's last number, without thousands separators. Anything else (code, prose): None.
    """
    if not response:
        return None
    letters = set(_OPTION_LINE.findall(prompt[-2000:]))
    if len(letters) >= 2:
        for m in re.finditer(r"(?<![A-Za-z])([A-H])(?![A-Za-z])", response):
            if m.group(1) in letters:
                return m.group(1)
        return None
    if _ASKS_NUMBER.search(prompt):
        nums = _NUMBER.findall(response)
        if nums:
            v = nums[-1].replace(",", "")
            try:
                return repr(float(v))
            except ValueError:
                return None
    return None


@dataclass
class Evidence:
    """Per (prompt, model) answer evidence, computed once per table (no fitting involved).

    codes: extracted answer as an integer code per prompt (-1: none); checks: the built-in
    verifier score (NaN: no response); text: `answer_features` (n, m, F); has: a response exists.
    """

    codes: np.ndarray
    checks: np.ndarray
    text: np.ndarray
    has: np.ndarray

    def take(self, idx: np.ndarray) -> Evidence:
        """The evidence of prompts `idx`."""
        return Evidence(self.codes[idx], self.checks[idx], self.text[idx], self.has[idx])


# ---- re-estimation -----------------------------------------------------------------------------
def _agreement(S: np.ndarray, codes: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, ...]:
    """For every model i and the called set S: prior-weighted and plain counts of other called
    answers agreeing / disagreeing with i's extracted answer (both extracted)."""
    m = S.shape[1]
    ext = codes >= 0
    same = (codes[:, :, None] == codes[:, None, :]) & ext[:, :, None] & ext[:, None, :]
    both = ext[:, :, None] & ext[:, None, :]
    other = S[:, None, :] & ~np.eye(m, dtype=bool)[None]
    agree = other & same
    dis = other & both & ~same
    return (
        (agree * q[:, None, :]).sum(axis=2),
        (dis * q[:, None, :]).sum(axis=2),
        agree.sum(axis=2).astype(float),
        dis.sum(axis=2).astype(float),
    )


def fit_text_verifier(ev: Evidence, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """Fit the learned text verifier (a logistic regression on the standardised `ev.text`
    features) on the answers with a known quality `Q` (right: >= 0.5): (mean, scale, coef,
    intercept), or None when those answers are all right or all wrong."""
    from sklearn.linear_model import LogisticRegression

    known = np.isfinite(Q)
    ok = ev.has & known
    x = ev.text[ok]
    y = (np.where(known, Q, 0.0) >= 0.5).astype(int)[ok]
    if not 0 < y.sum() < len(y):
        return None
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(max_iter=1000).fit((x - mean) / scale, y)
    return mean, scale, lr.coef_[0], float(lr.intercept_[0])


def text_verifier_p(lv: tuple[np.ndarray, np.ndarray, np.ndarray, float], ev: Evidence) -> np.ndarray:
    """(n, m) P(right) of each answer by a `fit_text_verifier` fit (0.5 where there is none)."""
    mean, scale, coef, b = lv
    z = ((ev.text - mean) / scale) @ coef + b
    return np.where(ev.has, 1.0 / (1.0 + np.exp(-z)), 0.5)


class Reestimator:
    """Re-estimates models after answers (see the module docstring); fitted per CV fold.

    Hyper-parameters in `__init__` (`c`: inverse L2 strength of the P(right) model, `alpha`:
    ridge strength of the gain model); `fit` learns `called_` (P(right) of a called answer) and
    `gain_` (expected gain of calling a model next) and the per-fold learned verifier `lv_`.
    """

    def __init__(
        self,
        signals: Sequence[str] = SIGNALS,
        max_steps: int = 3,
        states_per_prompt: int = 2,
        seed: int = 0,
        c: float = 1.0,
        alpha: float = 1.0,
    ) -> None:
        bad = [s for s in signals if s not in SIGNALS]
        if bad:
            raise ValueError(f"unknown cascade signals {bad}; choose from {list(SIGNALS)}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.signals = tuple(signals)
        self.max_steps = max_steps
        self.states_per_prompt = states_per_prompt
        self.seed = seed
        self.c = c
        self.alpha = alpha

    # ---- features ------------------------------------------------------------------------------
    def _verifier(self, ev: Evidence) -> np.ndarray:
        """(n, m) learned P(right) of each answer (0.5 where off or no response)."""
        if "learned" not in self.signals or self.lv_ is None:
            return np.full(ev.has.shape, 0.5)
        return text_verifier_p(self.lv_, ev)

    def _called_x(self, S: np.ndarray, q: np.ndarray, ev: Evidence, v: np.ndarray) -> np.ndarray:
        """(n, m, F) features of each model as if called, in the called set S."""
        n, m = q.shape
        cols = [_logit(q), q, np.broadcast_to(S.sum(axis=1, keepdims=True), (n, m)).astype(float)]
        if "checks" in self.signals:
            cols.append(np.where(np.isfinite(ev.checks), ev.checks, 0.0))
        if "learned" in self.signals:
            cols.append(_logit(v))
        if "agreement" in self.signals:
            aq, dq, na, nd = _agreement(S, ev.codes, q)
            cols += [(ev.codes >= 0).astype(float), aq, dq, na, nd]
        return np.stack(cols, axis=2)

    def _post(self, S: np.ndarray, q: np.ndarray, ev: Evidence, v: np.ndarray) -> np.ndarray:
        """(n, m) P(right) of every called answer in S (NaN outside S)."""
        x = self._called_x(S, q, ev, v)
        out = np.full(q.shape, np.nan)
        if S.any():
            out[S] = self.called_.predict_proba(x[S])[:, 1]
        return out

    def _gain_x(self, S: np.ndarray, P: np.ndarray, q: np.ndarray, ev: Evidence, v: np.ndarray) -> np.ndarray:
        """(n, m, G) features of calling each model next, given the called set S and its P."""
        n, m = q.shape
        rows = np.arange(n)
        Pf = np.where(S, P, -np.inf)
        best = np.argmax(Pf, axis=1)
        pbest = P[rows, best]
        lq = _logit(q)
        lbest = lq[rows, best]
        ncalled = S.sum(axis=1).astype(float)
        per_row = [
            _logit(pbest),
            pbest,
            lbest,
            _logit(pbest) - lbest,
            ncalled,
            np.where(S, lq, -10).max(axis=1),
        ]
        if "checks" in self.signals:
            per_row.append(np.where(np.isfinite(ev.checks[rows, best]), ev.checks[rows, best], 0.0))
        if "learned" in self.signals:
            per_row.append(_logit(v[rows, best]))
        if "agreement" in self.signals:
            called_ext = S & (ev.codes >= 0)
            _, _, na, _ = _agreement(S, ev.codes, q)
            ext = called_ext.sum(axis=1).astype(float)
            plural = np.where(called_ext, na + 1, 0).max(axis=1).astype(float)  # largest agreeing group
            distinct = np.where(called_ext, 1.0 / (na + 1), 0.0).sum(axis=1)  # distinct answers
            per_row += [ext, plural, distinct, (ev.codes[rows, best] >= 0).astype(float)]
        pr = np.stack(per_row, axis=1)
        x = np.concatenate(
            [
                np.stack([lq, q, lq - lbest[:, None]], axis=2),
                np.broadcast_to(pr[:, None, :], (n, m, pr.shape[1])),
            ],
            axis=2,
        )
        return x

    # ---- fitting -------------------------------------------------------------------------------
    def _random_states(self, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
        """(n * states_per_prompt, m) random called sets of 1 .. max_steps models."""
        k = self.states_per_prompt
        S = np.zeros((n * k, m), dtype=bool)
        sizes = rng.integers(1, min(self.max_steps, m) + 1, size=n * k)
        for r in range(n * k):
            S[r, rng.choice(m, size=sizes[r], replace=False)] = True
        return S

    def fit(self, q: np.ndarray, ev: Evidence, Q: np.ndarray) -> Reestimator:
        """Fit on training prompts: `q` their out-of-fold prior (n, m), `Q` true quality."""
        with _one_thread():
            return self._fit(q, ev, Q)

    def _fit(self, q: np.ndarray, ev: Evidence, Q: np.ndarray) -> Reestimator:
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler

        n, m = q.shape
        rng = np.random.default_rng(self.seed)
        known = np.isfinite(Q)
        y_all = (np.where(known, Q, 0.0) >= 0.5).astype(int)
        self.lv_ = fit_text_verifier(ev, Q) if "learned" in self.signals else None
        v = self._verifier(ev)
        # P(right) of a called answer: every model of every prompt, with random other answers
        S = self._random_states(n, m, rng)
        rep = np.repeat(np.arange(n), self.states_per_prompt)
        qq, evr, vv = q[rep], ev.take(rep), v[rep]
        S_called = S.copy()
        xs, ys = [], []
        for j in range(m):
            Sj = S_called.copy()
            Sj[:, j] = True
            x = self._called_x(Sj, qq, evr, vv)[:, j]
            keep = known[rep, j]
            xs.append(x[keep])
            ys.append(y_all[rep, j][keep])
        x, y = np.concatenate(xs), np.concatenate(ys)
        if 0 < y.sum() < len(y):
            self.called_: Any = make_pipeline(
                PolynomialFeatures(2, include_bias=False),
                StandardScaler(),
                LogisticRegression(C=self.c, max_iter=2000),
            ).fit(x, y)
        else:
            self.called_ = _Constant(float(y.mean()) if len(y) else 0.5)
        # gain of calling j next: served quality after minus before (served = best P(right))
        Qz = np.where(known, Q, np.nan)[rep]
        P = self._post(S, qq, evr, vv)
        rows = np.arange(len(rep))
        before = Qz[rows, np.argmax(np.where(S, P, -np.inf), axis=1)]
        gx, gy = [], []
        xall = self._gain_x(S, P, qq, evr, vv)
        for j in range(m):
            todo = ~S[:, j] & (S.sum(axis=1) < m)
            if not todo.any():
                continue
            Sj = S[todo].copy()
            Sj[:, j] = True
            Pj = self._post(Sj, qq[todo], evr.take(np.nonzero(todo)[0]), vv[todo])
            after = Qz[todo][np.arange(todo.sum()), np.argmax(np.where(Sj, Pj, -np.inf), axis=1)]
            g = after - before[todo]
            keep = np.isfinite(g)
            gx.append(xall[todo, j][keep])
            gy.append(g[keep])
        self.gain_: Any = (
            make_pipeline(
                PolynomialFeatures(2, include_bias=False), StandardScaler(), Ridge(alpha=self.alpha)
            ).fit(np.concatenate(gx), np.concatenate(gy))
            if gx and sum(len(g) for g in gy) > 0
            else _Constant(0.0)
        )
        return self

    # ---- prediction ----------------------------------------------------------------------------
    def verifier(self, ev: Evidence) -> np.ndarray | None:
        """(n, m) the learned text verifier's P(right) of each answer (0.5 where there is none),
        or None when the `learned` signal is off or could not be fitted."""
        if "learned" not in self.signals or self.lv_ is None:
            return None
        return self._verifier(ev)

    def called(self, S: np.ndarray, q: np.ndarray, ev: Evidence) -> np.ndarray:
        """(n, m) P(right) of each called answer in S given all called answers (NaN elsewhere)."""
        with _one_thread():
            return self._post(S, q, ev, self._verifier(ev))

    def gains(self, S: np.ndarray, P: np.ndarray, q: np.ndarray, ev: Evidence) -> np.ndarray:
        """(n, m) expected quality gain of calling each model not in S next (NaN on S)."""
        x = self._gain_x(S, P, q, ev, self._verifier(ev))
        out = np.full(q.shape, np.nan)
        todo = ~S
        if todo.any():
            with _one_thread():
                out[todo] = self.gain_.predict(x[todo])
        return out


@functools.cache
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_thread() -> Any:
    """Limit OpenMP/BLAS to one thread: the fits and predictions here are many and small, and
    thread start-up and contention would dominate them (the controller is built once: it scans
    the loaded libraries)."""
    return _controller().limit(limits=1)


class _Constant:
    """A fitted-model stand-in for degenerate training data (one class, no rows)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile([1 - self.value, self.value], (len(x), 1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.value)


# ---- without training data ---------------------------------------------------------------------
class DifficultyReestimator:
    """Re-estimation from the router's prior and the answers' evidence alone (module docstring).

    sigma: standard deviation of the prompt's difficulty (logits) beyond the router's estimate;
    kappa: chance that two wrong answers agree; grid: points of the difficulty grid; max_score: a
    score counts at most as this, i.e. a passed check as the likelihood ratio max_score / (1 -
    max_score). The default, 0.5, counts a pass as no evidence (ratio 1) and a failure in full: the
    built-in checks detect failures (no text, a refusal, invalid JSON, code that does not parse, no
    final answer), and a wrong answer passes them about as easily as a right one, so
    P(pass | right) / P(pass | wrong) is taken as 1 rather than guessed from an evaluation set. In
    the gateway every answer it re-estimates after scored below the cascade's threshold, so the
    cap only acts with a threshold above 0.5. Where answers with known quality exist (offline),
    `fit_max_score` chooses it on training prompts instead. The verifier score of an answer is
    `ev.checks` (NaN: no verdict, no evidence) and its extracted answer `ev.codes` (-1: none);
    `ev.text` is not used.
    """

    def __init__(
        self, sigma: float = 1.5, kappa: float = 0.25, grid: int = 61, max_score: float = 0.5
    ) -> None:
        if sigma <= 0 or not 0 < kappa < 1 or grid < 3 or not 0.5 <= max_score < 1:
            raise ValueError(
                f"need sigma > 0, 0 < kappa < 1, grid >= 3, 0.5 <= max_score < 1; "
                f"got {sigma}, {kappa}, {grid}, {max_score}"
            )
        self.sigma = sigma
        self.kappa = kappa
        self.grid = grid
        self.max_score = max_score
        self.d = np.linspace(-4 * sigma, 4 * sigma, grid)
        self.prior = np.exp(-0.5 * (self.d / sigma) ** 2)

    def estimate(self, S: np.ndarray, q: np.ndarray, ev: Evidence) -> tuple[np.ndarray, np.ndarray]:
        """(P, G), each (n, m): P(right) of each called answer and the gain of calling each other
        model (NaN elsewhere). Rows are handled together by their number of called models k: the
        posterior over (which of the k answers are right, difficulty) is (2^k, grid) per row."""
        n, m = q.shape
        a = _logit(q)
        P = np.full((n, m), np.nan)
        G = np.full((n, m), np.nan)
        d = self.d
        ncalled = S.sum(axis=1)
        for k in np.unique(ncalled):
            rows = np.nonzero(ncalled == k)[0]
            r = len(rows)
            called = np.argsort(~S[rows], axis=1, kind="stable")[:, :k]  # (r, k) the called models
            z = ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1).astype(bool)  # (2^k, k)
            p = 1.0 / (1.0 + np.exp(-(np.take_along_axis(a[rows], called, 1)[:, :, None] - d)))  # (r, k, g)
            pz = np.where(z[None, :, :, None], p[:, None], 1.0 - p[:, None]).prod(axis=2)  # (r, 2^k, g)
            s = np.take_along_axis(ev.checks[rows], called, 1)
            s = np.clip(np.where(np.isfinite(s), s, 0.5), _EPS, self.max_score)  # no verdict: no evidence
            lik = np.where(z[None], s[:, None, :], 1.0 - s[:, None, :]).prod(axis=2)  # (r, 2^k)
            codes = np.take_along_axis(ev.codes[rows], called, 1)
            for x in range(k):
                for y in range(x + 1, k):
                    both, one = z[:, x] & z[:, y], z[:, x] ^ z[:, y]
                    same = (codes[:, x] == codes[:, y])[:, None]
                    f = np.where(
                        both[None],
                        np.where(same, 1.0, _EPS),
                        np.where(
                            one[None], np.where(same, _EPS, 1.0), np.where(same, self.kappa, 1 - self.kappa)
                        ),
                    )
                    valid = ((codes[:, x] >= 0) & (codes[:, y] >= 0))[:, None]
                    lik = lik * np.where(valid, f, 1.0)
            post = self.prior[None, None, :] * pz * lik[:, :, None]
            post /= post.sum(axis=(1, 2), keepdims=True)
            pc = np.einsum("rcg,ck->rk", post, z.astype(float))  # (r, k)
            P[rows[:, None], called] = pc
            # the served answer (the called one most likely right) is wrong in these configurations
            wrong = 1.0 - z[:, np.argmax(pc, axis=1)].T.astype(float) if k else np.ones((r, 1))
            pw = (post * wrong[:, :, None]).sum(axis=1)  # (r, g): P(served wrong, difficulty)
            rj = 1.0 / (1.0 + np.exp(-(a[rows][:, :, None] - d)))  # (r, m, g)
            G[rows] = np.where(S[rows], np.nan, np.einsum("rmg,rg->rm", rj, pw))
        return P, G

    def called(self, S: np.ndarray, q: np.ndarray, ev: Evidence) -> np.ndarray:
        """(n, m) P(right) of each called answer in S given all the evidence (NaN elsewhere)."""
        return self.estimate(S, q, ev)[0]

    def gains(self, S: np.ndarray, P: np.ndarray, q: np.ndarray, ev: Evidence) -> np.ndarray:
        """(n, m) expected quality gain of calling each model not in S next: P(it is right and the
        answer served now is wrong | evidence), the gain when its answer is verified (served when
        right); NaN on S. `P` is unused (recomputed; kept for `Reestimator`'s interface)."""
        return self.estimate(S, q, ev)[1]


MAX_SCORE_GRID: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
"""Values `fit_max_score` chooses from."""


def first_answer_p(est: DifficultyReestimator, q: np.ndarray, ev: Evidence) -> np.ndarray:
    """(n, m) P(right) of each model's answer when it is the only one called (prior + that
    answer's evidence: what a cascade's first step decides on)."""
    out = np.full(q.shape, np.nan)
    for j in range(q.shape[1]):
        S = np.zeros(q.shape, dtype=bool)
        S[:, j] = True
        out[:, j] = est.called(S, q, ev)[:, j]
    return out


def fit_max_score(
    q: np.ndarray,
    ev: Evidence,
    Q: np.ndarray,
    grid: Sequence[float] = MAX_SCORE_GRID,
    *,
    sigma: float = 1.5,
    kappa: float = 0.25,
) -> float:
    """The `DifficultyReestimator.max_score` in `grid` whose P(right) of a lone answer has the
    lowest log loss against the answers' known quality `Q` (right: >= 0.5) on these (training)
    prompts: `q` their out-of-fold prior, `ev` their evidence (scores in `ev.checks`); answers
    without a response or a known quality are left out; ties go to the smaller value (the weaker
    claim). Returns the default 0.5 when no answer qualifies."""
    ok = ev.has & np.isfinite(Q)
    if not ok.any():
        return 0.5
    y = np.where(np.isfinite(Q), Q, 0.0)[ok] >= 0.5
    best, best_loss = 0.5, math.inf
    for ms in sorted(grid):
        p = np.clip(
            first_answer_p(DifficultyReestimator(sigma, kappa, max_score=ms), q, ev)[ok], 1e-6, 1 - 1e-6
        )
        loss = float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))
        if loss < best_loss - 1e-12:
            best, best_loss = float(ms), loss
    return best


# ---- the rule ------------------------------------------------------------------------------------
def choose_next(
    gains: np.ndarray,
    cost: np.ndarray,
    called: np.ndarray,
    tradeoff: float,
    blocked: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cascade-routing rule, per row of (n, m) arrays: among models not `called` (nor
    `blocked`, e.g. by a cost ceiling), the one with the largest net = gain - tradeoff * cost,
    called only when that net is > 0. tradeoff 0 weighs quality alone, inf never escalates;
    a model without a finite gain or cost is never chosen.

    Returns (j: the best model per row, go: whether to call it, net: (n, m) with -inf where
    a model cannot be chosen)."""
    lam = float(tradeoff)
    c = np.where(np.isfinite(cost), cost, np.inf)
    if math.isinf(lam):
        net = np.full(gains.shape, -np.inf)
    else:
        with np.errstate(invalid="ignore"):
            net = gains - (lam * c if lam != 0 else 0.0 * c)
    net = np.where(called | ~np.isfinite(net), -np.inf, net)
    if blocked is not None:
        net = np.where(blocked, -np.inf, net)
    j = np.argmax(net, axis=1)
    go = net[np.arange(len(net)), j] > 0
    return j, go, net
