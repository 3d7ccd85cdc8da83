"""The online learner's pick arithmetic: from one context's posterior part to a choice and its
propensity (`OnlineLearner.pick`, `pick_rows`, `pick_many` and their helpers).

Choosing: the greedy choice is the offline router's choice unless the posterior says with
confidence (`confidence` sd of the difference) that another model's reward is higher; without
profiled models it maximises the posterior-mean reward. `thompson` picks each model with the
probability `p_ts` that its reward, drawn from its posterior (an exact univariate normal per
model given `x`), is the highest: `win_probabilities` computes it (closed form for two models,
a one-dimensional integral for more) instead of sampling; `linucb` takes the argmax of
mean + `ucb_alpha` * sd. Exploration is bounded: the probability of deviating from the greedy
choice is scaled down to at most `max_explore`, and the choice is drawn from the resulting
distribution with one uniform draw, so the returned propensity is the exact probability with
which it was made (and equals Thompson's pick probability up to the integral's error, < 4e-3).
Exploration is also conservative when there is an offline router to protect (Wu et al. 2016's
conservative bandits, per request): the models the posterior rates below the greedy choice are
explored less, by one common factor, so that the expected reward given up (their probabilities
times their posterior-mean reward gap) is at most `explore_loss` per request; models rated at
least as good and models without a profile keep their share. A cold start has nothing to protect:
the budget does not apply there.

The seam: `llmroute.online.learner` keeps the posterior (its state, the contexts and the
products with them, the updates); this module holds what is done with the posterior's numbers
per request (theta . x, x' A x, (A x)[k] and the factors `_factors` keeps): the greedy choice,
the exploration bound, conservative exploration and the draw. `PickMixin` is a base class of
`OnlineLearner` (not used alone): the methods are the learner's own, so the per-request path
calls them as before, with no extra indirection.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from llmroute.online.win_probs import _win_probs, _win_probs_many, _win_probs_two

__all__ = ["Factors", "PickMixin"]

#: what the choice needs of the posteriors (`OnlineLearner._factors`): the (m, D + 1, D) stack
#: of each model's posterior mean and covariance, theta[:, k], A[:, k, k], the cost correction
#: per model and whether any model is profiled
Factors = tuple[np.ndarray, list[float], list[float], list[float], bool]


class PickMixin:
    """`OnlineLearner`'s choice given the posterior's part of a context (see the module
    docstring); the attributes below are the learner's (`OnlineLearner.__init__`)."""

    models: list[str]
    method: str
    max_explore: float
    confidence: float
    ucb_alpha: float
    explore_loss: float
    explore_decay: float
    explore_base_: float
    n_: np.ndarray
    profiled_: np.ndarray
    rng: np.random.Generator
    _factors: Callable[[], Factors]

    def pick(
        self,
        xk: float,
        qf: list[float],
        cf: list[float],
        lam: float,
        allowed: list[bool] | None,
        tx: list[float],
        xax: list[float],
        axk: list[float],
    ) -> tuple[int, int, list[float], list[float], list[float]]:
        """The choice of `choose` given one context's posterior part (theta . x, x' A x and
        (A x)[k] per model) and its base-quality column `xk`: filled estimates `qf` / `cf`,
        the trade-off, the allowed mask (None: all). Returns (chosen index, greedy index, the
        probability of every model, posterior-mean quality and cost per model); draws one
        uniform from `rng` when the choice is random. Plain floats: m is small."""
        fac = self._factors()
        if allowed is not None and not any(allowed):
            raise ValueError("no candidate model is allowed")
        probs_of = self._probs_two if len(self.models) == 2 else self._probs
        g, probs, q, c, dev = probs_of(fac, xk, qf, cf, lam, allowed, tx, xax, axk, self._exploration())
        ch = self._draw(probs, self.rng.random()) if dev > 0 else g
        return ch, g, probs, q, c

    def pick_rows(
        self,
        qf: Sequence[list[float]],
        cf: Sequence[list[float]],
        lam: Sequence[float],
        allowed: Sequence[list[bool] | None],
        tx: Sequence[list[float]],
        xax: Sequence[list[float]],
        axk: Sequence[list[float]],
    ) -> tuple[list[int], list[int], list[float]]:
        """`pick` of several requests in order (contexts whose base-quality column is 0, as
        `prepare_embeddings` gives them; one list per request in each argument): (chosen,
        greedy, the chosen model's probability) per request. The same choices and probabilities
        as `pick` one request at a time: the uniforms are drawn together after the
        probabilities, one per request whose choice is random, in request order (the same
        stream as one draw each). The per-request path of a routing micro-batch."""
        fac, ex = self._factors(), self._exploration()
        probs_of = self._probs_two if len(self.models) == 2 else self._probs
        greedy: list[int] = []
        rows: list[list[float]] = []
        live: list[int] = []
        for r, ok in enumerate(allowed):
            if ok is not None and not any(ok):
                raise ValueError("no candidate model is allowed")
            g, probs, _, _, dev = probs_of(fac, 0.0, qf[r], cf[r], lam[r], ok, tx[r], xax[r], axk[r], ex)
            greedy.append(g)
            rows.append(probs)
            if dev > 0:
                live.append(r)
        chosen = list(greedy)
        if live:
            draw = self._draw
            for r, u in zip(live, self.rng.random(len(live)).tolist(), strict=True):
                chosen[r] = draw(rows[r], u)
        return chosen, greedy, [p[c] for p, c in zip(rows, chosen, strict=True)]

    def _draw(self, probs: list[float], u: float) -> int:
        """The model the uniform `u` picks from `probs` (Generator.choice(m, p=probs /
        probs.sum()) without its checks: the cdf, normalised)."""
        if len(probs) == 2:  # the same arithmetic without the lists (fsum of two = their sum;
            total = probs[0] + probs[1]  # the normalised cdf's last value is 1 > u)
            c0 = probs[0] / total
            return 0 if u < c0 / (c0 + probs[1] / total) else 1
        total = math.fsum(probs)
        cdf = list(itertools.accumulate(v / total for v in probs))
        top = cdf[-1]
        return min(bisect.bisect_right([v / top for v in cdf], u), len(probs) - 1)

    def _probs(
        self,
        fac: Factors,
        xk: float,
        qf: list[float],
        cf: list[float],
        lam: float,
        allowed: list[bool] | None,
        tx: list[float],
        xax: list[float],
        axk: list[float],
        ex: tuple[float, float] | None = None,
    ) -> tuple[int, list[float], list[float], list[float], float]:
        """`pick` up to the draw (`fac`: `_factors()`): (greedy index, the probability of every
        model, posterior-mean quality and cost per model, the probability of deviating from the
        greedy choice before the exploration bound: the choice is random when it is > 0)."""
        m = len(self.models)
        _, theta_k, a_kk, cost_res, profiled = fac
        max_explore, explore_loss = self._exploration() if ex is None else ex
        q, c, mean, sd, base = [0.0] * m, [0.0] * m, [0.0] * m, [0.0] * m, [0.0] * m
        for i in range(m):  # plain floats: m is small, numpy's per-call cost is not
            si = qf[i] - 0.5 - xk  # the model's own column value minus the shared one
            q[i] = qi = qf[i] + tx[i] + si * theta_k[i]
            c[i] = ci = cf[i] + cost_res[i]
            sd[i] = math.sqrt(max(xax[i] + si * (2.0 * axk[i] + si * a_kk[i]), 0.0))
            if allowed is None or allowed[i]:
                mean[i], base[i] = qi - lam * ci, qf[i] - lam * cf[i]
            else:
                mean[i] = base[i] = -math.inf
        g = self._greedy_list(mean, sd, base, profiled)
        if self.method == "thompson" and max_explore > 0:
            target = _win_probs(mean, sd)  # a disallowed model's mean is -inf: never wins
        else:
            target = [0.0] * m
            if self.method == "linucb" and max_explore > 0:
                ucb = [mi + self.ucb_alpha * si for mi, si in zip(mean, sd, strict=True)]
                target[ucb.index(max(ucb))] = 1.0
            else:
                target[g] = 1.0
        dev = 1.0 - target[g]
        scale = min(1.0, max_explore / dev) if dev > 0 else 0.0
        probs = [t * scale for t in target]
        probs[g] = 1.0 - scale * dev
        if dev > 0 and explore_loss > 0 and profiled:
            # conservative exploration (with an offline router to protect): models the posterior
            # rates below the greedy choice are explored less, so that their expected loss (the
            # posterior-mean reward gap) is at most explore_loss per request; those rated at
            # least as good, and models without a profile (no offline rating), keep their share
            mg, prof = mean[g], self.profiled_
            low = [i for i in range(m) if i != g and probs[i] > 0 and mean[i] < mg and prof[i]]
            loss = math.fsum(probs[i] * (mg - mean[i]) for i in low)
            if loss > explore_loss:
                cut = explore_loss / loss
                for i in low:
                    probs[i] *= cut
                probs[g] = 0.0
                probs[g] = 1.0 - math.fsum(probs)
        return g, probs, q, c, dev

    def _probs_two(
        self,
        fac: Factors,
        xk: float,
        qf: list[float],
        cf: list[float],
        lam: float,
        allowed: list[bool] | None,
        tx: list[float],
        xax: list[float],
        axk: list[float],
        ex: tuple[float, float] | None = None,
    ) -> tuple[int, list[float], list[float], list[float], float]:
        """`_probs` of two models (the usual gateway alias: a strong and a weak model): the same
        arithmetic in the same order, unrolled (no per-model lists or loops); equal to `_probs`
        bit for bit (tests/test_online_batch_choice.py)."""
        _, theta_k, a_kk, cost_res, profiled = fac
        qf0, qf1 = qf
        cf0, cf1 = cf
        s0, s1 = qf0 - 0.5 - xk, qf1 - 0.5 - xk
        q0, q1 = qf0 + tx[0] + s0 * theta_k[0], qf1 + tx[1] + s1 * theta_k[1]
        c0, c1 = cf0 + cost_res[0], cf1 + cost_res[1]
        sd0 = math.sqrt(max(xax[0] + s0 * (2.0 * axk[0] + s0 * a_kk[0]), 0.0))
        sd1 = math.sqrt(max(xax[1] + s1 * (2.0 * axk[1] + s1 * a_kk[1]), 0.0))
        if allowed is None or allowed[0]:
            m0, b0 = q0 - lam * c0, qf0 - lam * cf0
        else:
            m0 = b0 = -math.inf
        if allowed is None or allowed[1]:
            m1, b1 = q1 - lam * c1, qf1 - lam * cf1
        else:
            m1 = b1 = -math.inf
        conf = self.confidence
        if conf <= 0 or not profiled:  # `_greedy_list`: the first of equal maxima
            g = 1 if m1 > m0 else 0
        else:  # the router's choice b unless the other is `conf` sd of the difference ahead
            b = 1 if b1 > b0 else 0
            mb, sb, mo, so = (m1, sd1, m0, sd0) if b else (m0, sd0, m1, sd1)
            g = 1 - b if mo - mb > conf * math.sqrt(so * so + sb**2) else b
        method = self.method
        max_explore, explore_loss = self._exploration() if ex is None else ex
        if method == "thompson" and max_explore > 0:
            t0, t1 = _win_probs_two(m0, m1, max(sd0, 1e-12), max(sd1, 1e-12))
        elif method == "linucb" and max_explore > 0:
            alpha = self.ucb_alpha
            t1 = 1.0 if m1 + alpha * sd1 > m0 + alpha * sd0 else 0.0
            t0 = 1.0 - t1
        else:
            t0, t1 = (0.0, 1.0) if g else (1.0, 0.0)
        dev = 1.0 - (t1 if g else t0)
        scale = min(1.0, max_explore / dev) if dev > 0 else 0.0
        probs = [t0 * scale, t1 * scale]
        probs[g] = 1.0 - scale * dev
        if dev > 0 and explore_loss > 0 and profiled:  # conservative exploration (`_probs`)
            o = 1 - g
            mg, mo = (m1, m0) if g else (m0, m1)
            if probs[o] > 0 and mo < mg and self.profiled_[o]:
                loss = probs[o] * (mg - mo)
                if loss > explore_loss:
                    probs[o] *= explore_loss / loss
                    probs[g] = 1.0 - probs[o]
        return g, probs, [q0, q1], [c0, c1], dev

    def pick_many(
        self,
        qf: np.ndarray,
        cf: np.ndarray,
        lam: np.ndarray,
        allowed: np.ndarray | None,
        tx: np.ndarray,
        xax: np.ndarray,
        axk: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`pick` for a batch of B requests at once, vectorised over the batch: (B, m) filled
        estimates, (B,) trade-offs, (B, m) allowed mask (None: all), `prepare`'s (B, m) parts of
        contexts whose base-quality column is 0 (`context`). Returns (chosen, greedy) indices
        (B,) and (B, m) probabilities: the same choices as `pick` one request at a time, in
        order, with the same uniforms (one per request whose choice is random, drawn in batch
        order), and the same probabilities up to rounding."""
        qf, cf = np.asarray(qf, np.float64), np.asarray(cf, np.float64)
        B, m = qf.shape
        _, theta_k, a_kk, cost_res, profiled = self._factors()
        max_explore, explore_loss = self._exploration()
        tk, akk = np.asarray(theta_k), np.asarray(a_kk)
        si = qf - 0.5
        q = qf + np.asarray(tx) + si * tk
        c = cf + np.asarray(cost_res)
        sd = np.sqrt(np.maximum(np.asarray(xax) + si * (2.0 * np.asarray(axk) + si * akk), 0.0))
        lam_c = np.asarray(lam, np.float64)[:, None]
        mean, base = q - lam_c * c, qf - lam_c * cf
        if allowed is not None:
            ok = np.asarray(allowed, bool)
            if not ok.any(axis=1).all():
                raise ValueError("no candidate model is allowed")
            mean, base = np.where(ok, mean, -np.inf), np.where(ok, base, -np.inf)
        rows = np.arange(B)
        if self.confidence <= 0 or not profiled:
            g = np.argmax(mean, axis=1)
        else:  # `_greedy_list`: the router's choice unless another is `confidence` sd ahead
            b = np.argmax(base, axis=1)
            mb, sb = mean[rows, b][:, None], sd[rows, b][:, None]
            ahead = mean - mb > self.confidence * np.sqrt(sd * sd + sb * sb)
            g = np.where(ahead.any(axis=1), np.argmax(np.where(ahead, mean, -np.inf), axis=1), b)
        if self.method == "thompson" and max_explore > 0:
            target = _win_probs_many(mean, sd)
        else:
            target = np.zeros((B, m))
            if self.method == "linucb" and max_explore > 0:
                target[rows, np.argmax(mean + self.ucb_alpha * sd, axis=1)] = 1.0
            else:
                target[rows, g] = 1.0
        dev = 1.0 - target[rows, g]
        live = dev > 0
        scale = np.where(live, np.minimum(1.0, max_explore / np.where(live, dev, 1.0)), 0.0)
        probs = target * scale[:, None]
        probs[rows, g] = 1.0 - scale * dev
        if explore_loss > 0 and profiled and live.any():
            # conservative exploration (see `pick`): the models rated below the greedy choice
            mg = mean[rows, g][:, None]
            low = (probs > 0) & (mean < mg) & self.profiled_[None, :]
            low[rows, g] = False
            gap = np.where(low, mg - np.where(low, mean, 0.0), 0.0)
            loss = (probs * gap).sum(axis=1)
            cut_rows = live & (loss > explore_loss)
            if cut_rows.any():
                cut = np.where(cut_rows, explore_loss / np.where(cut_rows, loss, 1.0), 1.0)
                probs = np.where(low & cut_rows[:, None], probs * cut[:, None], probs)
                others = probs.copy()
                others[rows, g] = 0.0
                probs[rows, g] = np.where(cut_rows, 1.0 - others.sum(axis=1), probs[rows, g])
        ch = g.copy()
        if live.any():  # one uniform per random choice, in batch order (as `pick` draws them)
            r = np.flatnonzero(live)
            cdf = np.cumsum(probs[r] / probs[r].sum(axis=1, keepdims=True), axis=1)
            cdf /= cdf[:, -1:]
            u = self.rng.random(len(r))
            ch[r] = np.minimum((cdf <= u[:, None]).sum(axis=1), m - 1)
        return ch, g, probs

    def _exploration(self) -> tuple[float, float]:
        """(max_explore, explore_loss) as they apply to the next choice: the settings, times
        sqrt(explore_decay / n) once the learner has learned n > explore_decay outcomes (all
        models, since the last `add_model`: a new arm restarts the schedule; an undone one
        counts -1). Exploration that finds nothing better stops costing:
        with a warm start `benchmarks/online.py --explore-decay` measured a higher last-20% reward
        and smaller worst windows against the offline router (BENCHMARKS.md, README)."""
        n0 = self.explore_decay
        if n0 <= 0:
            return self.max_explore, self.explore_loss
        n = float(self.n_.sum()) - self.explore_base_
        if n <= n0:
            return self.max_explore, self.explore_loss
        f = math.sqrt(n0 / n)
        return self.max_explore * f, self.explore_loss * f

    def _greedy_list(self, mean: list[float], sd: list[float], base: list[float], profiled: bool) -> int:
        """The greedy choice: the offline router's choice (argmax of the base reward) unless a
        model's posterior-mean reward beats it by more than `confidence` standard deviations of
        the difference; then the best such model. Without profiled models (`profiled`: whether any
        model is; a cold start) there is no router to trust: the posterior-mean argmax. Lists of
        floats (the first of equal maxima, like np.argmax)."""
        if self.confidence <= 0 or not profiled:
            return mean.index(max(mean))
        b = base.index(max(base))
        mb, sb2, conf = mean[b], sd[b] ** 2, self.confidence
        best, bi = -math.inf, -1
        for i, (mi, si) in enumerate(zip(mean, sd, strict=True)):
            if mi - mb > conf * math.sqrt(si * si + sb2) and (bi < 0 or mi > best):
                best, bi = mi, i
        return b if bi < 0 else bi
