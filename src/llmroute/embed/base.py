"""The encoder contract shared by every embedding backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors.

    Implementations: the static MiniLM default (`llmroute.embed.static`), TF-IDF+SVD and the
    ONNX int8 MiniLM. `spec()` returns a JSON-able dict from which `load_encoder` rebuilds an
    equivalent encoder; fitted encoders (TF-IDF) also return their arrays from `state()`.
    """

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised (zero rows for empty text)."""
        ...

    def spec(self) -> dict:
        """JSON-able description used to rebuild the encoder when a router is loaded."""
        ...
