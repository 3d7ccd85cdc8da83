"""Encoders that turn prompts into vectors, and an embedding cache.

Encoders (all satisfy :class:`llmroute.embed.base.Encoder`):

- ``"static-minilm"`` (default): :class:`~llmroute.embed.static.StaticEncoder`, 256-d, numpy-only.
- ``"tfidf"``: :class:`~llmroute.embed.tfidf.TfidfEncoder`, fitted on the training prompts; a
  fitted one is rebuilt from ``spec()`` + ``state()`` with :func:`encoder_from_state`.
- ``"onnx-minilm"``: :class:`~llmroute.embed.onnx.OnnxMiniLMEncoder`, 384-d contextual MiniLM
  (int8 ONNX; needs the ``onnx`` extra).

Backends are imported lazily, so importing this package costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from llmroute.embed.base import Encoder
from llmroute.embed.cache import CachedEncoder, EmbeddingCache

if TYPE_CHECKING:
    from llmroute.embed.onnx import OnnxMiniLMEncoder
    from llmroute.embed.static import StaticEncoder
    from llmroute.embed.tfidf import TfidfEncoder

__all__ = [
    "ENCODER_NAMES",
    "CachedEncoder",
    "EmbeddingCache",
    "Encoder",
    "OnnxMiniLMEncoder",
    "StaticEncoder",
    "TfidfEncoder",
    "encoder_from_state",
    "load_encoder",
]

ENCODER_NAMES: tuple[str, ...] = ("static-minilm", "tfidf", "onnx-minilm")
_ALIASES = {"static": "static-minilm", "default": "static-minilm", "onnx": "onnx-minilm"}


def _parse(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(
                f"encoder spec dict needs a 'name' key (one of {', '.join(ENCODER_NAMES)}): {spec!r}"
            )
        params = dict(spec)
        name = params.pop("name")
    else:
        raise TypeError(
            f"encoder spec must be a name or a dict from Encoder.spec(), got {type(spec).__name__}"
        )
    name = _ALIASES.get(name, name)
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODER_NAMES)}")
    return name, params


def load_encoder(spec: str | Mapping[str, Any] = "static-minilm") -> Encoder:
    """Build an encoder from a name or from a ``spec()`` dict.

    ``"tfidf"`` gives an unfitted :class:`TfidfEncoder` (call ``fit(texts)``); a spec of a fitted
    TF-IDF encoder needs its arrays: use :func:`encoder_from_state`.

    Raises:
        ValueError: unknown name, or a fitted spec without state.
        ImportError: ``onnx-minilm`` without the ``onnx`` extra installed.
    """
    name, params = _parse(spec)
    if name != "tfidf":
        params.pop("dim", None)  # fixed by the model; informative only in a spec
    if name == "static-minilm":
        from llmroute.embed.static import StaticEncoder

        return StaticEncoder(path=params.get("path"), max_tokens=params.get("max_tokens"))
    if name == "onnx-minilm":
        from llmroute.embed.onnx import OnnxMiniLMEncoder

        return OnnxMiniLMEncoder(**params)
    from llmroute.embed.tfidf import TfidfEncoder

    if params.pop("fitted", False):
        raise ValueError(
            "this TF-IDF encoder spec is of a fitted encoder; rebuild it with "
            "encoder_from_state(spec, arrays) using the arrays from its state()"
        )
    return TfidfEncoder(**params)


def encoder_from_state(spec: str | Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None) -> Encoder:
    """Rebuild an encoder from its ``spec()`` and, for fitted encoders, its ``state()`` arrays.

    Encoders without learned state (static, ONNX) ignore ``arrays`` (it may be None or empty).
    """
    name, params = _parse(spec)
    if name != "tfidf":
        return load_encoder(spec)
    from llmroute.embed.tfidf import TfidfEncoder

    if not arrays:
        if params.get("fitted"):
            raise ValueError("fitted TF-IDF encoder spec given without its state arrays")
        return load_encoder(spec)
    return TfidfEncoder.from_state(dict(spec), arrays)


def __getattr__(name: str) -> Any:  # lazy access to the backend classes
    if name == "StaticEncoder":
        from llmroute.embed.static import StaticEncoder

        return StaticEncoder
    if name == "TfidfEncoder":
        from llmroute.embed.tfidf import TfidfEncoder

        return TfidfEncoder
    if name == "OnnxMiniLMEncoder":
        from llmroute.embed.onnx import OnnxMiniLMEncoder

        return OnnxMiniLMEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
