"""Quality estimators: prompt features -> expected quality per model.

`make_estimator(name, **params)` builds one by name; `ESTIMATORS` maps names to
"module:Class" import paths (imported lazily, so importing this package is cheap):

- knn:     cosine kNN, distance-weighted, k chosen by CV (`knn.KNNEstimator`)
- linear:  L2 logistic regression per model, strength chosen by CV (`linear.LinearEstimator`)
- mlp:     small multi-output MLP in numpy (`mlp.MLPEstimator`)
- mf:      matrix factorisation, prompt projection x model vectors (`mf.MFEstimator`)
- default: the best estimator the project has (`default.DefaultEstimator`); while that module
  is absent, a stand-in (`linear`) is used and `default_is_stand_in()` returns True.
"""

from __future__ import annotations

import importlib
from typing import Any

from llmroute.estimators.base import Features, QualityEstimator, column_means

__all__ = [
    "ESTIMATORS",
    "Features",
    "QualityEstimator",
    "column_means",
    "default_is_stand_in",
    "estimator_class",
    "make_estimator",
]

ESTIMATORS: dict[str, str] = {
    "knn": "llmroute.estimators.knn:KNNEstimator",
    "linear": "llmroute.estimators.linear:LinearEstimator",
    "mlp": "llmroute.estimators.mlp:MLPEstimator",
    "mf": "llmroute.estimators.mf:MFEstimator",
    "default": "llmroute.estimators.default:DefaultEstimator",
}

_STAND_IN = "linear"


def _import(path: str) -> type[QualityEstimator]:
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(module), cls)


def default_is_stand_in() -> bool:
    """True while `llmroute.estimators.default` is missing and "default" means the stand-in."""
    try:
        _import(ESTIMATORS["default"])
    except (ImportError, AttributeError):
        return True
    return False


def estimator_class(name: str) -> type[QualityEstimator]:
    """The estimator class registered under `name` (raises ValueError for unknown names)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    if name == "default":
        try:
            return _import(ESTIMATORS["default"])
        except ModuleNotFoundError as exc:
            if exc.name != "llmroute.estimators.default":
                raise
            return _import(ESTIMATORS[_STAND_IN])
    return _import(ESTIMATORS[name])


def make_estimator(name: str = "default", **params: Any) -> QualityEstimator:
    """A new, unfitted estimator `name` with hyper-parameters `params` (None = CV-chosen)."""
    return estimator_class(name)(**params)


def estimator_from_state(class_name: str, arrays: dict, params: dict) -> QualityEstimator:
    """Rebuild a fitted estimator saved by `get_state()`; `class_name` is its registry name."""
    cls = estimator_class(class_name)
    return cls.from_state(arrays, params)
