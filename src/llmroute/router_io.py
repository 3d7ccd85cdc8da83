"""Saving and loading routers: one safetensors file, no pickle (the persistence half of
`llmroute.router.Router`, whose `save` / `load` are `_RouterIO`'s).

Arrays: estimator, cost model, regime head and fitted-encoder state; metadata: JSON with the
format (`FORMAT`, `FORMAT_VERSION`), models, encoder spec, estimator class and params, policy
defaults and a training summary. `Router.load(path)` rebuilds an identical router; a file of
another format or version raises `RouterFileError`.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmroute.estimators.base import QualityEstimator
from llmroute.estimators.cost import CostEstimator
from llmroute.estimators.regime import RegimeHead

if TYPE_CHECKING:
    from llmroute.router import Router

FORMAT = "llmroute-router"
FORMAT_VERSION = 1


class RouterFileError(ValueError):
    """A saved router file is missing, malformed or of an unsupported format version."""


def default_router_path() -> Path:
    """Path of the shipped default router (`llmroute/assets/default-router.safetensors`)."""
    return Path(__file__).resolve().parent / "assets" / "default-router.safetensors"


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


def _storable(v: np.ndarray) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype == bool:
        a = a.astype(np.int8)
    if a.dtype.kind in "fiu":
        return np.ascontiguousarray(a)
    raise TypeError(f"cannot store array of dtype {a.dtype}")


class _RouterIO:
    """`Router.save` / `Router.load` (a mixin of `llmroute.router.Router`)."""

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
