"""A dependency-free hashing encoder (word + character-trigram features), for tests and fallbacks.

Not a semantic model: it captures lexical overlap only. Signals accept any `Encoder`; this one
exists so that signals, rules and the cache work (and are testable) without the static MiniLM
asset. Select it with the encoder spec `"hash"`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+")


class HashingEncoder:
    """Hashes lower-cased words (weight 1) and character trigrams (weight 0.5) into `dim` buckets."""

    name = "hash"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised rows (zero rows for empty text)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            row = out[i]
            for w in _WORD.findall(t.lower()):
                h = zlib.crc32(w.encode())
                row[h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
                padded = f"#{w}#"
                for j in range(len(padded) - 2):
                    g = zlib.crc32(padded[j : j + 3].encode())
                    row[g % self.dim] += 0.5 if (g >> 16) & 1 else -0.5
            n = float(np.linalg.norm(row))
            if n > 0:
                row /= n
        return out

    def spec(self) -> dict:
        """JSON-able description."""
        return {"name": "hash", "dim": self.dim}


def resolve_encoder(spec: object = "static-minilm") -> object:
    """An `Encoder` from an instance, `"hash"`, or any spec `llmroute.embed.load_encoder` accepts."""
    if spec is None:
        return None
    if not isinstance(spec, str | dict):
        return spec
    if spec == "hash" or (isinstance(spec, dict) and spec.get("name") == "hash"):
        dim = spec.get("dim", 256) if isinstance(spec, dict) else 256
        return HashingEncoder(dim)
    from llmroute.embed import load_encoder  # provided by the embedding module

    return load_encoder(spec)
