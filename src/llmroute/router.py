"""The routing pipeline: prompt -> features -> (expected quality, expected cost) -> decision.

`Router.fit(table)` embeds the table's prompts, fits a quality estimator and a cost estimator;
`router.route(prompt_or_messages, ...)` returns a `Decision`; `router.save(path)` writes ONE
safetensors file (arrays: estimator, cost model and fitted-encoder state; metadata: JSON with
the format version, models, encoder spec, estimator class and params, policy defaults and a
training summary). No pickle anywhere; `Router.load(path)` rebuilds an identical router.

Example::

    from llmroute import Router
    r = Router.load(default_router_path())
    d = r.route([{"role": "user", "content": "Prove that sqrt(2) is irrational."}], tradeoff=100)
    d.model, d.expected_quality, d.expected_cost, d.reason

This module holds the router's API: `Router` (estimating, policy, deciding, `route`),
`Decision` and `messages_text`. `Router` takes the rest from mixins, one module per concern
(every name is still importable from here):

- `llmroute.router_fit`: `Router.fit`, `fit_regime_head` and the policy defaults fitted;
- `llmroute.router_io`: `save` / `load`, `FORMAT`, `RouterFileError`, `default_router_path`;
- `llmroute.router_batch`: `route_batch` and the threads and processes behind estimates
  (BLAS on one thread, pipelined chunks, forked workers).
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmroute.data.table import ModelPrice, RoutingTable
from llmroute.estimators.base import Features, QualityEstimator
from llmroute.estimators.cost import CostEstimator
from llmroute.estimators.regime import RegimeHead
from llmroute.policy import (
    calibrate_threshold,
    candidate_mask,
    choose,
    choose_row,
    score_quantiles,
    threshold_for_share,
    unmet_constraints,
)
from llmroute.router_batch import _init_worker as _init_worker
from llmroute.router_batch import _OneBlasThread as _OneBlasThread
from llmroute.router_batch import _RouterBatch
from llmroute.router_batch import _worker_estimate as _worker_estimate
from llmroute.router_fit import _estimator_cls as _estimator_cls
from llmroute.router_fit import _make_estimator as _make_estimator
from llmroute.router_fit import _resolve_encoder as _resolve_encoder
from llmroute.router_fit import _RouterFit
from llmroute.router_io import FORMAT as FORMAT
from llmroute.router_io import FORMAT_VERSION as FORMAT_VERSION
from llmroute.router_io import RouterFileError as RouterFileError
from llmroute.router_io import _class_path as _class_path
from llmroute.router_io import _import_class as _import_class
from llmroute.router_io import _jsonable as _jsonable
from llmroute.router_io import _RouterIO
from llmroute.router_io import _storable as _storable
from llmroute.router_io import _unjson_float as _unjson_float
from llmroute.router_io import default_router_path as default_router_path

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Decision",
    "Router",
    "RouterFileError",
    "default_router_path",
    "messages_text",
]

_CACHE_MAX = 4096


PromptLike = str | Sequence[Mapping[str, Any]]


def messages_text(prompt_or_messages: PromptLike) -> str:
    """The text a router reads: a string as is, or every turn of an OpenAI-style conversation.

    Messages are dicts with `role` and `content`; content may be a string or a list of parts
    (`{"type": "text", "text": ...}`; non-text parts are skipped). All turns are joined with a
    blank line, so a single user message gives exactly its content.
    """
    if isinstance(prompt_or_messages, str):
        return prompt_or_messages
    if isinstance(prompt_or_messages, Mapping):
        raise TypeError("expected a prompt string or a list of messages, got a single dict")
    parts: list[str] = []
    for i, msg in enumerate(prompt_or_messages):
        if not isinstance(msg, Mapping):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {type(msg).__name__}")
        content = msg.get("content")
        if content is None:
            continue
        if isinstance(content, str):
            if content:
                parts.append(content)
        elif isinstance(content, Sequence):
            for part in content:
                if isinstance(part, Mapping) and part.get("type", "text") == "text" and part.get("text"):
                    parts.append(str(part["text"]))
                elif isinstance(part, str) and part:
                    parts.append(part)
        else:
            raise TypeError(f"message {i}: content must be a string or a list of parts")
    return "\n\n".join(parts)


@dataclass
class Decision:
    """One routing decision.

    model: the chosen model; expected_quality / expected_cost: per model (USD);
    reason: compact, human-readable; ranked: admissible models, chosen first, then by the
    policy's preference (fallback order); policy: the effective policy settings.
    constraints_met: False when no admissible model meets `max_cost` / `min_quality` and the
    closest one was chosen (the cheapest / the best); unmet_constraints names which
    ("max_cost", "min_quality"), and the reason says it.
    """

    model: str
    expected_quality: dict[str, float]
    expected_cost: dict[str, float]
    reason: str
    ranked: list[str]
    policy: dict[str, Any] = field(default_factory=dict)
    constraints_met: bool = True
    unmet_constraints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (infinite trade-off written as the string 'inf')."""
        d = asdict(self)
        d["policy"] = {
            k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in self.policy.items()
        }
        return d


# ---- helpers ---------------------------------------------------------------------------------


def _extra_fn() -> Any:
    """The hand-made feature function, or None while that module is unavailable."""
    try:
        mod = importlib.import_module("llmroute.estimators.features")
    except ImportError:
        return None
    return getattr(mod, "prompt_features", None) or getattr(mod, "extra_features", None)


# ---- the router ----------------------------------------------------------------------------------
class Router(_RouterFit, _RouterBatch, _RouterIO):
    """A fitted router: encoder + quality estimator + cost estimator + policy defaults.

    Build with `Router.fit(table, ...)` or `Router.load(path)`. `models` is the column order of
    every (n, m) array it returns.
    """

    def __init__(
        self,
        *,
        models: Sequence[str],
        encoder: Any,
        estimator: QualityEstimator,
        cost: CostEstimator,
        estimator_name: str,
        use_extra: bool,
        policy: Mapping[str, Any] | None = None,
        info: Mapping[str, Any] | None = None,
        regime_head: RegimeHead | None = None,
    ) -> None:
        self.models: list[str] = list(models)
        self.encoder = encoder
        self.estimator = estimator
        self.cost = cost
        self.estimator_name = estimator_name
        self.use_extra = bool(use_extra)
        # optional head: is a prompt everyday-easy, everyday-hard or like the training prompts
        # (see estimators/regime.py); it reads the estimator's features, hand-made ones included
        if regime_head is not None and not self.use_extra:
            raise ValueError("a regime head needs an estimator that uses the hand-made features")
        self.regime_head = regime_head
        self.info: dict[str, Any] = dict(info or {})
        self.policy: dict[str, Any] = {
            "tradeoff": 0.0,
            "max_cost": None,
            "min_quality": None,
            "strong": None,
            "weak": None,
            "threshold": None,
        }
        self.policy.update(policy or {})
        self._index = {m: j for j, m in enumerate(self.models)}
        self._extra = _extra_fn() if self.use_extra else None
        if self.use_extra and self._extra is None:
            raise RuntimeError("this router needs llmroute.estimators.features, which is not importable")
        self._cache: dict[str, np.ndarray] = {}
        # set by the gateway's online learner (llmroute.gateway.learning), see _embed
        self.keep_batch_embeddings = False
        self.last_batch: tuple[list[str], np.ndarray] | None = None  # see batch_embeddings
        self._blas: Any = None  # threadpoolctl controller, created on first route()
        # True when the whole process already runs BLAS on one thread (the gateway sets it after
        # limiting BLAS at startup): small batches then skip the per-call limit context (~90 us)
        self.blas_single_thread = False

    # ---- estimating ------------------------------------------------------------------------
    def _texts(self, prompts: PromptLike | Sequence[PromptLike]) -> list[str]:
        if isinstance(prompts, str):
            raise TypeError("expected a list of prompts; use route() for a single prompt")
        texts = [messages_text(p) for p in prompts]
        if not texts:
            raise ValueError("empty prompt list: give at least one prompt")
        return texts

    def _embed(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 1:
            t = texts[0]
            row = self._cache.get(t)
            if row is None:
                row = np.asarray(self.encoder.encode([t]), dtype=np.float32)
                if len(self._cache) >= _CACHE_MAX:
                    # drop the oldest entry (dicts keep insertion order); another thread may
                    # have emptied or resized the dict meanwhile
                    with contextlib.suppress(StopIteration, RuntimeError):
                        self._cache.pop(next(iter(self._cache)), None)
                self._cache[t] = row
            if self.keep_batch_embeddings:
                self.last_batch = (texts, row)  # a micro-batch of one (see below)
            return row
        emb = np.asarray(self.encoder.encode(texts), dtype=np.float32)
        if self.keep_batch_embeddings:
            # a gateway micro-batch: kept whole (one assignment), so the online learner's
            # contexts (llmroute.gateway.learning, `batch_embeddings`) need no encoding again
            self.last_batch = (texts, emb)
        return emb

    def batch_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), embed_dim) float32 embeddings of `texts`: rows of the last batch `_embed`
        was asked for (kept while `keep_batch_embeddings` is on: the gateway's routing
        micro-batch the learner decides right after), else the single-text cache, else encoded."""
        last = self.last_batch
        if last is not None:
            lt, le = last
            if len(lt) == len(texts) and all(a is b or a == b for a, b in zip(lt, texts, strict=True)):
                return le
            pos = {t: i for i, t in enumerate(lt)}
            rows = [pos.get(t) for t in texts]
            if None not in rows:
                return le[rows]
        if len(texts) == 1:
            return self._embed([texts[0]])
        return np.concatenate([self._embed([t]) for t in texts])

    def featurize(self, texts: Sequence[str]) -> Features:
        """Estimator inputs (embedding + hand-made columns when the estimator uses them)."""
        texts = list(texts)
        return self._features(texts, self._embed(texts))

    def _features(self, texts: list[str], emb: np.ndarray) -> Features:
        """`featurize` given the texts' embeddings."""
        if self._extra is not None:
            extra = np.asarray(self._extra(texts), dtype=np.float32)
        else:
            extra = np.zeros((len(texts), 0), dtype=np.float32)
        return Features(emb, extra)

    def _estimate_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, Features]:
        if len(texts) <= 16 and not self.blas_single_thread:
            with self._one_thread():
                return self._estimate_raw(texts)
        if self._pipeline_threads(len(texts)) > 0:
            parts = list(self._estimate_chunks(texts))
            return (
                np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]),
                Features(
                    np.concatenate([p[3].emb for p in parts]), np.concatenate([p[3].extra for p in parts])
                ),
            )
        return self._estimate_raw(texts)

    def _quality(self, X: Features) -> np.ndarray:
        """(n, m) expected quality: the estimator's, clipped to [0, 1], then mixed with the
        regime head's easy / hard / familiar estimates when the router has one (`RegimeHead.mix`)."""
        q = self.estimator.predict(X)
        if not (getattr(self.estimator, "fresh_unit_output", False) and q.dtype == np.float64):
            q = np.array(q, dtype=np.float64)
            np.minimum(np.maximum(q, 0.0, out=q), 1.0, out=q)  # clip to [0, 1] (NaN stays NaN, as np.clip)
        if self.regime_head is not None:
            q = self.regime_head.mix(q, self.regime_head.predict(X))
        return q

    def _estimate_raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, Features]:
        X = self.featurize(texts)
        q = self._quality(X)
        c = self.cost.predict(texts, X)
        return q, c, X

    def regimes(self, prompts: Sequence[PromptLike]) -> np.ndarray | None:
        """(n, 2 + K) probabilities that each prompt is everyday-easy, everyday-hard or like the
        training prompts of each of the K model sets (columns named by `regime_head.regimes`), or
        None without a regime head."""
        if self.regime_head is None:
            return None
        return self.regime_head.predict(self.featurize(self._texts(prompts)))

    def estimate(self, prompts: Sequence[PromptLike]) -> tuple[np.ndarray, np.ndarray]:
        """(q, c): (n, m) expected quality in [0, 1] and expected cost in USD, `models` order."""
        q, c, _ = self._estimate_texts(self._texts(prompts))
        return q, c

    def estimate_quality(self, prompts: Sequence[PromptLike]) -> np.ndarray:
        """(n, m) expected quality in [0, 1], `models` order: `estimate(prompts)[0]` without the
        cost model (for callers that price the models themselves, e.g. the gateway when every
        candidate of an alias has configured prices)."""
        texts = self._texts(prompts)
        if len(texts) <= 16 and not self.blas_single_thread:
            with self._one_thread():
                return self._quality(self.featurize(texts))
        if self._pipeline_threads(len(texts)) > 0:
            return self._estimate_texts(texts)[0]
        return self._quality(self.featurize(texts))

    def strong_weak_score(self, prompts: Sequence[PromptLike]) -> np.ndarray:
        """(n,) expected quality of the strong model minus the weak one (policy 'strong'/'weak')."""
        s, w = self._pair()
        q, _ = self.estimate(prompts)
        return q[:, s] - q[:, w]

    def _pair(self) -> tuple[int, int]:
        strong, weak = self.policy.get("strong"), self.policy.get("weak")
        if strong is None or weak is None:
            raise ValueError("this router has no strong/weak pair; set_policy(strong=..., weak=...)")
        return self._index[strong], self._index[weak]

    def calibrate(self, prompts: Sequence[PromptLike], strong_share: float) -> float:
        """Set (and return) the strong/weak threshold so `strong_share` of `prompts` go strong.

        RouteLLM-style: calibrate on a sample of your own traffic. Afterwards `route()` calls
        without an explicit trade-off / max_cost / min_quality use the threshold rule (and so
        does a gateway alias on this router without its own trade-off). The score quantiles of
        `prompts` are kept in the policy, so any other share maps to a threshold later
        (`threshold_for_share`, the gateway's `model@share` suffix).
        """
        scores = self.strong_weak_score(prompts)
        thr = calibrate_threshold(scores, strong_share)
        self.policy["threshold"] = thr
        self.policy["strong_share"] = float(strong_share)
        with contextlib.suppress(ValueError):  # no finite score: keep no quantiles
            self.policy["score_quantiles"] = score_quantiles(scores)
            self.policy["score_pair"] = [self.policy["strong"], self.policy["weak"]]
        return thr

    def threshold_for_share(self, strong_share: float) -> float:
        """The strong/weak threshold that sends about `strong_share` of prompts strong.

        The calibrated threshold itself for the calibrated share; otherwise read off the score
        quantiles stored at `calibrate` (your prompts) or `fit` time (the training prompts).
        Raises ValueError when the router has no strong/weak pair or no quantiles for it.
        """
        pol = self.policy
        self._pair()  # raises without a strong/weak pair
        if pol.get("threshold") is not None and pol.get("strong_share") == strong_share:
            return float(pol["threshold"])
        qs = pol.get("score_quantiles")
        if not qs or list(pol.get("score_pair") or ()) != [pol["strong"], pol["weak"]]:
            raise ValueError(
                "this router stores no score distribution for its strong/weak pair; run "
                "`llmroute calibrate` (or router.calibrate(prompts, share)) once"
            )
        return threshold_for_share(qs, strong_share)

    def set_policy(self, **policy: Any) -> None:
        """Change policy defaults (tradeoff, max_cost, min_quality, strong, weak, threshold)."""
        unknown = sorted(set(policy) - {*self.policy, "strong_share"})
        if unknown:
            raise ValueError(f"unknown policy field(s) {unknown}; known: {sorted(self.policy)}")
        for key in ("strong", "weak"):
            if policy.get(key) is not None and policy[key] not in self._index:
                raise ValueError(f"unknown model {policy[key]!r} for {key}; known: {self.models}")
        self.policy.update(policy)

    def set_regime_head(self, head: RegimeHead | None) -> None:
        """Use a fitted regime head (fitted on this router's `featurize` output) from now on, or
        none. See `llmroute.estimators.regime`."""
        if head is not None and not self.use_extra:
            raise ValueError(
                f"a regime head needs an estimator that uses the hand-made features; "
                f"{self.estimator_name!r} does not"
            )
        if head is not None and len(head.ability_) != len(self.models):
            raise ValueError(f"regime head has {len(head.ability_)} abilities for {len(self.models)} models")
        self.regime_head = head

    def set_prices(self, prices: Mapping[str, ModelPrice]) -> None:
        """Use these prices (model -> ModelPrice) for cost estimates from now on."""
        self.cost.set_prices(prices)

    def add_model(
        self,
        name: str,
        profile: RoutingTable | str | Path,
        price: ModelPrice | None = None,
        *,
        profile_model: str | None = None,
        reference: RoutingTable | str | Path | None = None,
        method: str = "auto",
    ) -> dict[str, Any]:
        """Add a model from its profile (graded rows of a routing table), without retraining;
        known models' estimates are unchanged. See `llmroute.onboard.add_model`."""
        from llmroute.onboard import add_model

        return add_model(
            self, name, profile, price, profile_model=profile_model, reference=reference, method=method
        )

    def remove_model(self, name: str) -> None:
        """Stop routing to `name` (a trained or profiled model). See `llmroute.onboard.remove_model`."""
        from llmroute.onboard import remove_model

        remove_model(self, name)

    # ---- deciding --------------------------------------------------------------------------
    def _decide(
        self,
        q: np.ndarray,
        c: np.ndarray,
        X: Features | None,
        texts: list[str],
        tradeoff: float | None,
        max_cost: float | None,
        min_quality: float | None,
        allowed: Sequence[str] | None,
        context_windows: Mapping[str, int] | None,
    ) -> list[Decision]:
        n = q.shape[0]
        explicit = tradeoff is not None or max_cost is not None or min_quality is not None
        pol = self.policy
        lam = float(pol["tradeoff"] if tradeoff is None else tradeoff)
        if lam < 0 or math.isnan(lam):
            raise ValueError(f"tradeoff must be >= 0 (or inf), got {tradeoff}")
        max_cost = pol["max_cost"] if max_cost is None else max_cost
        min_quality = pol["min_quality"] if min_quality is None else min_quality
        if allowed is not None and isinstance(allowed, str):
            allowed = [allowed]
        if allowed is not None and len(allowed) == 0:
            raise ValueError("allowed is empty: give at least one model")
        if n == 1:
            ql, cl = q[0].tolist(), c[0].tolist()
            if all(map(math.isfinite, ql)) and all(map(math.isfinite, cl)):
                return [
                    self._decide_one(
                        ql, cl, texts, explicit, lam, max_cost, min_quality, allowed, context_windows
                    )
                ]
        tokens = self.cost.count_tokens(texts) if context_windows else None
        mask = candidate_mask(
            self.models,
            allowed=allowed,
            context_windows=dict(context_windows or {}),
            input_tokens=tokens,
            n=n,
        )
        threshold = pol.get("threshold")
        use_thr = threshold is not None and not explicit and pol.get("strong") and pol.get("weak")
        if use_thr:
            s, w = self._pair()
            use_thr = bool(mask[:, s].all() and mask[:, w].all())
        if use_thr:
            score = q[:, s] - q[:, w]
            pick = np.where(score >= threshold, s, w)
            eff = {
                "rule": "threshold",
                "threshold": float(threshold),
                "strong": pol["strong"],
                "weak": pol["weak"],
            }
        else:
            pick = choose(q, c, tradeoff=lam, max_cost=max_cost, min_quality=min_quality, mask=mask)
            eff = {"rule": "tradeoff", "tradeoff": lam, "max_cost": max_cost, "min_quality": min_quality}
            if min_quality is not None:
                eff["rule"] = "min_quality"
        models = self.models
        admissible = mask.copy()
        admissible[~admissible.any(axis=1)] = True
        if max_cost is not None and eff["rule"] != "threshold":
            within = admissible & (c <= max_cost)
            admissible = np.where(within.any(axis=1, keepdims=True), within, admissible)
        if eff["rule"] == "min_quality":
            key = np.where(q >= min_quality, -c + 10.0 * (c.max(axis=1, keepdims=True) + 1), q)
        elif math.isinf(lam):
            key = -c
        else:
            key = q - lam * c
        order = np.argsort(np.where(admissible, -key, np.inf), axis=1, kind="stable")
        all_adm = bool(admissible.all())
        rows = np.arange(n)
        ql, cl, picks = q.tolist(), c.tolist(), pick.tolist()
        qj, cj = q[rows, pick].tolist(), c[rows, pick].tolist()
        if all_adm:
            # ranked = the pick, then every other model by preference: the preference order itself
            # where the pick leads it (the usual case), names looked up in one vectorised step
            ranks: list[list[str]] = np.array(models, dtype=object)[order].tolist()
            lead = (order[:, 0] == pick).tolist()
            adm: list[Any] = lead  # not read when every model is admissible
        else:
            ranks, lead, adm = order.tolist(), [False] * n, admissible.tolist()
        head = self._reason_head(eff)
        check = eff["rule"] != "threshold" and (max_cost is not None or min_quality is not None)
        out: list[Decision] = []
        append = out.append
        # zips of equal-length rows: strict=False (the check costs ~20% of building the dicts)
        for j, qi, ci, qq, cc, ri, li, ai in zip(picks, ql, cl, qj, cj, ranks, lead, adm, strict=True):
            mj = models[j]
            if li:
                ranked = ri
            elif all_adm:
                ri.remove(mj)
                ri.insert(0, mj)
                ranked = ri
            else:
                ranked = [mj] + [models[k] for k in ri if ai[k] and k != j]
            reason = f"{head}: {mj} q={qq:.2f} c=${cc:.2g}"
            unmet = unmet_constraints(qq, cc, max_cost=max_cost, min_quality=min_quality) if check else []
            if unmet:
                reason += self._unmet_note(unmet, qq, cc, max_cost, min_quality)
            append(
                Decision(
                    mj,
                    dict(zip(models, qi, strict=False)),
                    dict(zip(models, ci, strict=False)),
                    reason,
                    ranked,
                    eff,
                    not unmet,
                    unmet,
                )
            )
        return out

    def _decide_one(
        self,
        q: list[float],
        c: list[float],
        texts: list[str],
        explicit: bool,
        lam: float,
        max_cost: float | None,
        min_quality: float | None,
        allowed: Sequence[str] | None,
        context_windows: Mapping[str, int] | None,
    ) -> Decision:
        """`_decide` for one prompt with finite estimates, in plain Python (same decision)."""
        models = self.models
        m = len(models)
        if allowed is None and not context_windows:
            ok = [True] * m
        else:
            tokens = self.cost.count_tokens(texts) if context_windows else None
            ok = candidate_mask(
                models, allowed=allowed, context_windows=dict(context_windows or {}), input_tokens=tokens, n=1
            )[0].tolist()
        pol = self.policy
        threshold = pol.get("threshold")
        use_thr = threshold is not None and not explicit and pol.get("strong") and pol.get("weak")
        if use_thr:
            s, w = self._pair()
            use_thr = ok[s] and ok[w]
        eff: dict[str, Any]
        if use_thr:
            j = s if q[s] - q[w] >= threshold else w
            eff = {
                "rule": "threshold",
                "threshold": float(threshold),
                "strong": pol["strong"],
                "weak": pol["weak"],
            }
        else:
            j = choose_row(q, c, tradeoff=lam, max_cost=max_cost, min_quality=min_quality, mask=ok)
            eff = {"rule": "tradeoff", "tradeoff": lam, "max_cost": max_cost, "min_quality": min_quality}
            if min_quality is not None:
                eff["rule"] = "min_quality"
        adm = ok if any(ok) else [True] * m
        if max_cost is not None and eff["rule"] != "threshold":
            within = [adm[k] and c[k] <= max_cost for k in range(m)]
            if any(within):
                adm = within
        if eff["rule"] == "min_quality":
            top = 10.0 * (max(c) + 1)
            key = [-c[k] + top if q[k] >= min_quality else q[k] for k in range(m)]
        elif math.isinf(lam):
            key = [-x for x in c]
        else:
            key = [q[k] - lam * c[k] for k in range(m)]
        inf = math.inf
        order = sorted(range(m), key=[-key[k] if adm[k] else inf for k in range(m)].__getitem__)
        reason = self._reason(eff, models[j], q[j], c[j])
        unmet: list[str] = []
        if eff["rule"] != "threshold" and (max_cost is not None or min_quality is not None):
            unmet = unmet_constraints(q[j], c[j], max_cost=max_cost, min_quality=min_quality)
            if unmet:
                reason += self._unmet_note(unmet, q[j], c[j], max_cost, min_quality)
        return Decision(
            model=models[j],
            expected_quality=dict(zip(models, q, strict=True)),
            expected_cost=dict(zip(models, c, strict=True)),
            reason=reason,
            ranked=[models[j]] + [models[k] for k in order if adm[k] and k != j],
            policy=eff,
            constraints_met=not unmet,
            unmet_constraints=unmet,
        )

    @staticmethod
    def _unmet_note(
        unmet: list[str], qj: float, cj: float, max_cost: float | None, min_quality: float | None
    ) -> str:
        """The reason's suffix when no admissible model meets a limit (the closest was chosen)."""
        parts = []
        if "max_cost" in unmet:
            parts.append(f"max_cost unmet: c=${cj:.2g} > ${max_cost:.2g}")
        if "min_quality" in unmet:
            parts.append(f"min_quality unmet: q={qj:.2f} < {min_quality:g}")
        return " | " + "; ".join(parts) + " (no model meets it; closest chosen)"

    @staticmethod
    def _reason_head(eff: dict) -> str:
        """The policy part of a decision's reason (the same for every prompt of a call)."""
        if eff["rule"] == "threshold":
            return f"threshold={eff['threshold']:.3g} on q({eff['strong']})-q({eff['weak']})"
        if eff["rule"] == "min_quality":
            return f"min_quality={eff['min_quality']:g} cheapest reaching it"
        lam = eff["tradeoff"]
        head = (
            "cheapest"
            if math.isinf(lam)
            else ("best q" if lam == 0 else f"tradeoff={lam:.3g} best q-tradeoff*c")
        )
        if eff["max_cost"] is not None:
            head += f" (max_cost=${eff['max_cost']:.2g})"
        return head

    @staticmethod
    def _reason(eff: dict, model: str, qj: float, cj: float) -> str:
        return f"{Router._reason_head(eff)}: {model} q={qj:.2f} c=${cj:.2g}"

    def route(
        self,
        prompt_or_messages: PromptLike,
        tradeoff: float | None = None,
        max_cost: float | None = None,
        min_quality: float | None = None,
        allowed: Sequence[str] | None = None,
        context_windows: Mapping[str, int] | None = None,
    ) -> Decision:
        """Decide for one prompt (a string or OpenAI-style messages); unset knobs use `policy`."""
        texts = [messages_text(prompt_or_messages)]
        q, c, X = self._estimate_texts(texts)
        return self._decide(q, c, X, texts, tradeoff, max_cost, min_quality, allowed, context_windows)[0]

    def __repr__(self) -> str:
        return f"Router(estimator={self.estimator_name!r}, models={self.models!r})"
