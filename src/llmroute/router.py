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
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
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

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Decision",
    "Router",
    "RouterFileError",
    "default_router_path",
    "messages_text",
]

FORMAT = "llmroute-router"
FORMAT_VERSION = 1
_CACHE_MAX = 4096
_PARALLEL_MIN_CHUNK = 500
# Large batches are estimated in chunks of this many prompts: the calling thread featurises the
# next chunk (tokenising and hand features: mostly Python) while pool threads estimate the ones
# before it (numpy, which releases the GIL). Below 2 chunks there is nothing to overlap.
_PIPELINE_CHUNK = 2048
_PIPELINE_MAX_THREADS = 4
_WORKER_STATE: list[Any] = []  # (router, texts), set only inside forked batch workers (see route_batch)


def _init_worker(router: Router, texts: list[str]) -> None:
    _WORKER_STATE[:] = [router, texts]  # inherited through fork, nothing pickled


def _worker_estimate(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    router, texts = _WORKER_STATE
    with router._one_thread():  # one BLAS thread per worker: the workers already use the cores
        q, c, _ = router._estimate_raw(texts[span[0] : span[1]])
    return q, c


PromptLike = str | Sequence[Mapping[str, Any]]


class _OneBlasThread:
    """BLAS on one thread inside the block, the previous setting restored after.

    Calls the BLAS libraries threadpoolctl found directly (a few microseconds, where
    `ThreadpoolController.limit` costs ~20-50 us per call: it re-reads every library's state).
    """

    __slots__ = ("libs", "prev")

    def __init__(self, libs: list[Any]) -> None:
        self.libs = libs
        self.prev: list[int] = []

    def __enter__(self) -> None:
        self.prev = [lc.get_num_threads() or 1 for lc in self.libs]
        for lc, n in zip(self.libs, self.prev, strict=True):
            if n > 1:
                lc.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        for lc, n in zip(self.libs, self.prev, strict=True):
            if n > 1:
                lc.set_num_threads(n)


class RouterFileError(ValueError):
    """A saved router file is missing, malformed or of an unsupported format version."""


def default_router_path() -> Path:
    """Path of the shipped default router (`llmroute/assets/default-router.safetensors`)."""
    return Path(__file__).resolve().parent / "assets" / "default-router.safetensors"


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
def _resolve_encoder(encoder: Any) -> Any:
    if isinstance(encoder, str | dict):
        from llmroute.embed import load_encoder  # type: ignore[attr-defined]

        return load_encoder(encoder)
    if not hasattr(encoder, "encode"):
        raise TypeError(f"encoder must be a spec (str/dict) or an Encoder, got {type(encoder).__name__}")
    return encoder


def _extra_fn() -> Any:
    """The hand-made feature function, or None while that module is unavailable."""
    try:
        mod = importlib.import_module("llmroute.estimators.features")
    except ImportError:
        return None
    return getattr(mod, "prompt_features", None) or getattr(mod, "extra_features", None)


def _class_path(est: QualityEstimator) -> str:
    cls = type(est)
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(path: str) -> type[QualityEstimator]:
    module, _, name = path.partition(":")
    if not module.startswith("llmroute.estimators."):
        raise RouterFileError(f"refusing to load estimator class {path!r}: not an llmroute estimator")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise RouterFileError(f"estimator class {path!r} is not available in this llmroute: {exc}") from exc
    return cls


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def _unjson_float(x: Any) -> float | None:
    if x is None:
        return None
    if x == "inf":
        return math.inf
    return float(x)


def _make_estimator(name: str, seed: int, params: dict[str, Any]) -> QualityEstimator:
    from llmroute.estimators import make_estimator

    params = dict(params)
    sig = inspect.signature(_estimator_cls(name).__init__).parameters
    for key in ("seed", "random_state"):
        if key in sig and key not in params:
            params[key] = seed
    return make_estimator(name, **params)


def _estimator_cls(name: str) -> type[QualityEstimator]:
    from llmroute.estimators import estimator_class

    return estimator_class(name)


# ---- the router ----------------------------------------------------------------------------------
class Router:
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
        self._blas: Any = None  # threadpoolctl controller, created on first route()
        # True when the whole process already runs BLAS on one thread (the gateway sets it after
        # limiting BLAS at startup): small batches then skip the per-call limit context (~90 us)
        self.blas_single_thread = False

    def _one_thread(self) -> Any:
        """Context that limits BLAS to one thread for small batches: their products are tiny,
        and multi-threaded OpenBLAS is ~10x slower on them when cores are shared (a gateway)."""
        if self.blas_single_thread:
            return contextlib.nullcontext()
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
        return _OneBlasThread(self._blas)

    # ---- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        table: RoutingTable,
        estimator: str | QualityEstimator = "default",
        encoder: Any = "static-minilm",
        seed: int = 0,
        *,
        policy: Mapping[str, Any] | None = None,
        cost_features: bool = True,
        **est_params: Any,
    ) -> Router:
        """Fit a router on `table`.

        estimator: a registry name (knn, linear, mlp, mf, default) or an unfitted estimator;
        encoder: an encoder spec for `llmroute.embed.load_encoder` or an `Encoder`;
        seed: passed to the estimator; policy: defaults overriding the fitted ones;
        cost_features: learn token counts from prompt features (see `CostEstimator`);
        est_params: hyper-parameters for the estimator (unset ones are chosen by CV).
        """
        if table.n_prompts == 0:
            raise ValueError("cannot fit a router on an empty table")
        enc = _resolve_encoder(encoder)
        prompts = table.prompts
        if getattr(enc, "fitted", True) is False and callable(getattr(enc, "fit", None)):
            enc.fit(prompts)  # e.g. TF-IDF: learns its vocabulary from the training prompts only
        if isinstance(estimator, str):
            name = estimator
            est = _make_estimator(name, seed, est_params)
        else:
            if est_params:
                raise TypeError("est_params only apply when the estimator is given by name")
            est, name = estimator, getattr(estimator, "name", type(estimator).__name__)
        use_extra = bool(getattr(est, "uses_extra", True))
        proto = cls(
            models=table.models,
            encoder=enc,
            estimator=est,
            cost=CostEstimator(),
            estimator_name=name,
            use_extra=use_extra,
        )
        X = proto.featurize(prompts)
        Q = table.quality_matrix()
        est.fit(X, Q)
        proto.cost = CostEstimator().fit(table, X if cost_features else None)
        fitted = proto._policy_from_table(table, seed, X)
        fitted.update(policy or {})
        proto.policy.update(fitted)
        proto.info = proto._summary(table, est)
        return proto

    def _policy_from_table(self, table: RoutingTable, seed: int, X: Features | None = None) -> dict[str, Any]:
        """`_fit_policy` on (a sample of) the training prompts, estimated as `route` would."""
        prompts = table.prompts
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(prompts), min(len(prompts), 3000), replace=False))
        texts = [prompts[i] for i in sample]
        Xs = self.featurize(texts) if X is None else X.take(sample)
        q = self._quality(Xs)
        c = self.cost.predict(texts, Xs)
        Q = table.quality_matrix()[:, [table.models.index(m) for m in self.models]]
        return self._fit_policy(Q, q, c)

    def fit_regime_head(
        self,
        table: RoutingTable,
        everyday: Sequence[Any] | None = None,
        *,
        seed: int = 0,
        max_known: int = 6000,
        C: float | None = None,
    ) -> RegimeHead:
        """Fit and attach a regime head (`llmroute.estimators.regime`) for this router.

        table: the router's training table (its prompts are the "known" regimes, one per set of
        models observed together); everyday: labelled everyday prompts (objects with `text` and
        `tier`, e.g. `llmroute.data.everyday.load_everyday`; default: the corpus shipped in the
        package); max_known: training prompts sampled per fit (stratified by model set);
        C: the head's L2 setting (None: chosen by cross-validation, which takes a while).
        """
        from llmroute.data.everyday import training_corpus
        from llmroute.estimators.regime import RegimeHead, common_ability, support_sets

        missing = sorted(set(self.models) - set(table.models))
        if missing:
            raise ValueError(f"the table has no outcomes for router model(s) {missing}")
        items = training_corpus() if everyday is None else list(everyday)
        Q = table.quality_matrix()[:, [table.models.index(m) for m in self.models]]
        supports, row_set = support_sets(Q)
        k = len(supports)
        rng = np.random.default_rng(seed)
        picks: list[np.ndarray] = []
        for s in range(k):
            rows = np.flatnonzero(row_set == s)
            n_take = min(len(rows), max(max_known // k, 1))
            picks.append(np.sort(rng.choice(rows, n_take, replace=False)))
        tier_p = {"easy": (1.0, 0.0), "medium": (0.5, 0.5), "hard": (0.0, 1.0)}
        P = np.zeros((len(items) + sum(map(len, picks)), 2 + k))
        P[: len(items), :2] = [tier_p[x.tier] for x in items]
        n_ev = sum(x.tier != "medium" for x in items)
        weights = [1.0] * len(items)
        # C is chosen by holding out one writer's prompts at a time (prompts in other words)
        groups: list[str | None] = [str(getattr(x, "source", "")) for x in items]
        texts = [x.text for x in items]
        prompts = table.prompts
        at = len(items)
        for s, rows in enumerate(picks):
            P[at : at + len(rows), 2 + s] = 1.0
            at += len(rows)
            # the known sets share half the weight of the everyday prompts, equally
            weights += [n_ev / 2 / k / max(len(rows), 1)] * len(rows)
            groups += [None] * len(rows)
            texts += [prompts[i] for i in rows]
        head = RegimeHead(C=C, seed=seed).fit(
            self.featurize(texts), P, common_ability(Q), supports, np.asarray(weights), groups
        )
        self.set_regime_head(head)
        # strong shares (`@0.3` in the gateway) now refer to everyday traffic like the corpus:
        # the score quantiles are taken there, on the estimates `route` now makes. The default
        # trade-off stays the estimator's (its "reach the best model's mean on the training
        # prompts" criterion turns degenerate once one model leads on every prompt)
        pair = self.policy.get("score_pair") or [self.policy.get("strong"), self.policy.get("weak")]
        if pair[0] in self._index and pair[1] in self._index:
            q_ev = self._quality(self.featurize([x.text for x in items]))
            with contextlib.suppress(ValueError):  # no finite score: keep the old quantiles
                scores = q_ev[:, self._index[pair[0]]] - q_ev[:, self._index[pair[1]]]
                self.policy["score_quantiles"] = score_quantiles(scores)
                self.policy["score_pair"] = list(pair)
        self.info["regime_head"] = {
            "everyday_prompts": len(items),
            "known_prompts": int(sum(map(len, picks))),
            "known_sets": [[m for m, seen in zip(self.models, sup, strict=True) if seen] for sup in supports],
            "C": head.C_,
            "cv_scores": head.cv_scores_,
        }
        return head

    def _fit_policy(self, Q: np.ndarray, q: np.ndarray, c: np.ndarray) -> dict[str, Any]:
        """Strong/weak pair and a default trade-off from training data.

        The default trade-off is the largest lambda at which the routed mean *expected* quality
        on training prompts still reaches the best single model's mean expected quality:
        "best-model quality, for less". The strong-minus-weak score quantiles on those prompts
        are kept too (`score_quantiles`, for the pair `score_pair`), so a strong share maps to a
        threshold before any calibration (`threshold_for_share`).
        """
        ok = np.isfinite(Q)
        mean_q = np.where(ok, Q, 0).sum(0) / np.maximum(ok.sum(0), 1)
        mean_c = c.mean(axis=0)
        strong = int(np.argmax(mean_q))
        order = np.argsort(mean_c, kind="stable")
        weak = int(order[0]) if order[0] != strong else (int(order[1]) if len(order) > 1 else strong)
        target = q.mean(axis=0).max()
        scale = float(np.median(c[c > 0])) if (c > 0).any() else 1.0
        tradeoff = 0.0
        rows = np.arange(len(q))
        for lam in np.logspace(-3, 4, 36) / scale:
            pick = choose(q, c, tradeoff=float(lam))
            if q[rows, pick].mean() >= target - 1e-9:
                tradeoff = float(lam)
            else:
                break
        out: dict[str, Any] = {"tradeoff": tradeoff, "strong": self.models[strong], "weak": self.models[weak]}
        with contextlib.suppress(ValueError):  # no finite score: no quantiles
            out["score_quantiles"] = score_quantiles(q[:, strong] - q[:, weak])
            out["score_pair"] = [self.models[strong], self.models[weak]]
        return out

    def _summary(self, table: RoutingTable, est: QualityEstimator) -> dict[str, Any]:
        Q = table.quality_matrix()
        ok = np.isfinite(Q)
        mean_q = np.where(ok, Q, 0).sum(0) / np.maximum(ok.sum(0), 1)
        tasks: dict[str, int] = {}
        for t in table.tasks:
            fam = t.split("/")[0] if t else ""
            tasks[fam] = tasks.get(fam, 0) + 1
        try:
            from llmroute import __version__
        except ImportError:  # pragma: no cover
            __version__ = "unknown"
        return {
            "llmroute_version": __version__,
            "source": str(table.source),
            "n_prompts": int(table.n_prompts),
            "task_families": tasks,
            "mean_quality": {m: float(v) for m, v in zip(self.models, mean_q, strict=True)},
            "cost_modes": self.cost.modes,
            "cv_scores": _jsonable(getattr(est, "cv_scores_", {})),
        }

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
            return row
        emb = np.asarray(self.encoder.encode(texts), dtype=np.float32)
        if self.keep_batch_embeddings and len(texts) <= 256:
            # a gateway micro-batch: keep each row, so a later single-text call (the online
            # learner's context, llmroute.gateway.learning) does not encode the text again;
            # off unless a learner asks, as filling the cache costs every other caller
            for i, t in enumerate(texts):
                if len(self._cache) >= _CACHE_MAX:
                    with contextlib.suppress(StopIteration, RuntimeError):
                        self._cache.pop(next(iter(self._cache)), None)
                self._cache[t] = emb[i : i + 1].copy()
        return emb

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

    def _pipeline_threads(self, n: int) -> int:
        """Estimation threads for a batch of `n` prompts: 0 (one pass, no pipeline) when the
        batch has fewer than two chunks, when the process keeps to one thread (the gateway) or
        when only one core is usable."""
        if n < 2 * _PIPELINE_CHUNK or self.blas_single_thread:
            return 0
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return 0 if cores < 2 else min(cores, _PIPELINE_MAX_THREADS)

    def _estimate_chunks(
        self, texts: list[str]
    ) -> Iterator[tuple[tuple[int, int], np.ndarray, np.ndarray, Features]]:
        """(index range, q, c, features) per chunk of a large batch, in order (pipelined).

        This thread embeds chunk k+1 while pool threads compute chunk k's hand-made features and
        run the estimators on it (the two halves cost about the same: routerbench_subset's
        default-estimator router, 10k benchmark prompts, ~260 ms embedding against ~340 ms
        features + estimates, and this thread also decides); BLAS is held to one thread meanwhile
        (the pool threads use the cores). Estimates equal the one-pass ones to float rounding
        (rows are independent; only BLAS blocking differs).
        """
        from concurrent.futures import ThreadPoolExecutor

        n = len(texts)
        threads = self._pipeline_threads(n)
        if threads == 0:
            q, c, X = self._estimate_texts(texts)
            yield (0, n), q, c, X
            return
        bounds = [*range(0, n, _PIPELINE_CHUNK), n]
        if bounds[-1] - bounds[-2] < _PIPELINE_CHUNK // 2:  # no small tail chunk
            del bounds[-2]
        spans = list(itertools.pairwise(bounds))

        def estimate(a: int, b: int, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, Features]:
            X = self._features(texts[a:b], emb)
            return self._quality(X), self.cost.predict(texts[a:b], X), X

        with self._one_thread(), ThreadPoolExecutor(threads, thread_name_prefix="llmroute-estimate") as pool:
            jobs = [pool.submit(estimate, a, b, self._embed(texts[a:b])) for a, b in spans]
            for span, job in zip(spans, jobs, strict=True):
                q, c, X = job.result()
                yield span, q, c, X

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
    ) -> dict[str, Any]:
        """Add a model from its profile (graded rows of a routing table), without retraining;
        known models' estimates are unchanged. See `llmroute.onboard.add_model`."""
        from llmroute.onboard import add_model

        return add_model(self, name, profile, price, profile_model=profile_model)

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

    def route_batch(
        self,
        prompts: Sequence[PromptLike],
        tradeoff: float | None = None,
        max_cost: float | None = None,
        min_quality: float | None = None,
        allowed: Sequence[str] | None = None,
        context_windows: Mapping[str, int] | None = None,
        workers: int = 1,
    ) -> list[Decision]:
        """Decisions for many prompts at once (vectorised estimation and policy).

        `workers` > 1 estimates chunks of a large batch in that many forked worker processes
        (POSIX only; the router is inherited, not reloaded). Use it from scripts and batch jobs,
        not from inside a multi-threaded server. Decisions are identical either way.
        """
        texts = self._texts(prompts)
        if workers > 1 and len(texts) >= 2 * _PARALLEL_MIN_CHUNK:
            out: list[Decision] = []
            # decide each chunk as it arrives, while the workers estimate the next ones
            for (a, b), q, c in self._estimate_parallel(texts, workers):
                out += self._decide(
                    q, c, None, texts[a:b], tradeoff, max_cost, min_quality, allowed, context_windows
                )
            return out
        if self._pipeline_threads(len(texts)) > 0:
            out = []
            for (a, b), q, c, X in self._estimate_chunks(texts):  # decide each chunk as it comes
                out += self._decide(
                    q, c, X, texts[a:b], tradeoff, max_cost, min_quality, allowed, context_windows
                )
            return out
        q, c, X = self._estimate_texts(texts)
        return self._decide(q, c, X, texts, tradeoff, max_cost, min_quality, allowed, context_windows)

    def _estimate_parallel(
        self, texts: list[str], workers: int
    ) -> Iterator[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
        """(index range, q, c) per chunk of `texts`, in order, estimated in forked workers."""
        import multiprocessing

        if "fork" not in multiprocessing.get_all_start_methods():
            q, c, _ = self._estimate_texts(texts)
            yield (0, len(texts)), q, c
            return
        n_chunks = min(workers * 4, max(1, len(texts) // _PARALLEL_MIN_CHUNK))
        bounds = np.linspace(0, len(texts), n_chunks + 1).astype(int).tolist()
        spans = list(itertools.pairwise(bounds))  # workers get index ranges, not texts
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(self, texts)) as pool:
            for span, (q, c) in zip(spans, pool.imap(_worker_estimate, spans), strict=True):
                yield span, q, c

    # ---- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the router to one safetensors file (no pickle). Returns the path."""
        from safetensors.numpy import save_file

        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        est_arrays, est_params = self.estimator.get_state()
        for k, v in est_arrays.items():
            arrays[f"est/{k}"] = v
        cost_arrays, cost_params = self.cost.get_state()
        for k, v in cost_arrays.items():
            arrays[f"cost/{k}"] = v
        if self.regime_head is not None:
            head_arrays, head_params = self.regime_head.get_state()
            for k, v in head_arrays.items():
                arrays[f"regime/{k}"] = v
        enc_state = getattr(self.encoder, "state", None)
        enc_arrays = enc_state() if callable(enc_state) else {}
        for k, v in (enc_arrays or {}).items():
            arrays[f"enc/{k}"] = v
        arrays = {k: _storable(v) for k, v in arrays.items()}
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "models": self.models,
            "encoder": self.encoder.spec(),
            "estimator": {
                "name": self.estimator_name,
                "class": _class_path(self.estimator),
                "params": est_params,
            },
            "cost": cost_params,
            "use_extra": self.use_extra,
            "regime_head": head_params if self.regime_head is not None else None,
            "policy": self.policy,
            "info": self.info,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(arrays, str(path), metadata={"llmroute": json.dumps(_jsonable(meta))})
        return path

    @classmethod
    def load(cls, path: str | Path, encoder: Any = None) -> Router:
        """Load a router saved by `save`. `encoder` overrides the saved encoder spec."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise RouterFileError(f"router file {path} not found")
        try:
            with safe_open(str(path), framework="numpy") as f:
                raw = (f.metadata() or {}).get("llmroute")
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        except Exception as exc:
            raise RouterFileError(f"{path}: not a safetensors router file ({exc})") from exc
        if raw is None:
            raise RouterFileError(f"{path}: safetensors file without llmroute metadata")
        meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise RouterFileError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
        if meta.get("version") != FORMAT_VERSION:
            raise RouterFileError(
                f"{path}: router format version {meta.get('version')} is not supported by this llmroute "
                f"(supports {FORMAT_VERSION}); retrain it with `llmroute train`"
            )

        def part(prefix: str) -> dict[str, np.ndarray]:
            n = len(prefix)
            return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix)}

        est_meta = meta["estimator"]
        est = _import_class(est_meta["class"]).from_state(part("est/"), est_meta["params"])
        cost = CostEstimator.from_state(part("cost/"), meta["cost"])
        regime_head = None
        if meta.get("regime_head") is not None:
            regime_head = RegimeHead.from_state(part("regime/"), meta["regime_head"])
        if encoder is None:
            from llmroute.embed import encoder_from_state

            encoder = encoder_from_state(meta["encoder"], part("enc/") or None)
        policy = dict(meta.get("policy") or {})
        for key in ("tradeoff", "max_cost", "min_quality", "threshold"):
            if key in policy:
                policy[key] = _unjson_float(policy[key])
        if policy.get("tradeoff") is None:
            policy["tradeoff"] = 0.0
        return cls(
            models=meta["models"],
            encoder=encoder,
            estimator=est,
            cost=cost,
            estimator_name=est_meta["name"],
            use_extra=meta["use_extra"],
            policy=policy,
            info=meta.get("info"),
            regime_head=regime_head,
        )

    def __repr__(self) -> str:
        return f"Router(estimator={self.estimator_name!r}, models={self.models!r})"


def _storable(v: np.ndarray) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype == bool:
        a = a.astype(np.int8)
    if a.dtype.kind in "fiu":
        return np.ascontiguousarray(a)
    raise TypeError(f"cannot store array of dtype {a.dtype}")
