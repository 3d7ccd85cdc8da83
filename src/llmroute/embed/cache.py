"""A bounded LRU cache of embeddings keyed by a hash of the text, and an encoder wrapper using it."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from llmroute.embed.base import Encoder


def text_key(text: str, namespace: bytes = b"") -> bytes:
    """16-byte blake2b digest of ``text`` (UTF-8, surrogates escaped), salted by ``namespace``."""
    h = hashlib.blake2b(digest_size=16, person=b"llmroute-embed")
    if namespace:
        h.update(namespace)
        h.update(b"\x00")
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


class EmbeddingCache:
    """Thread-safe bounded LRU map: text hash -> embedding vector (float32, read-only).

    Only the 16-byte blake2b digest of each text is kept, never the text itself.

    Args:
        maxsize: most vectors kept; the least recently used one is dropped first.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self._data: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> np.ndarray | None:
        """The cached vector for ``key`` (see :func:`text_key`), or None; counts a hit or a miss."""
        with self._lock:
            vec = self._data.get(key)
            if vec is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return vec

    def put(self, key: bytes, vector: np.ndarray) -> None:
        """Store a copy of ``vector`` (made read-only) under ``key``, evicting the LRU entry if full."""
        vec = np.array(vector, dtype=np.float32, copy=True)
        vec.setflags(write=False)
        with self._lock:
            self._data[key] = vec
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._data.clear()
            self.hits = 0
            self.misses = 0

    def stats(self) -> dict[str, int | float]:
        """``{"size", "maxsize", "hits", "misses", "hit_rate"}``."""
        total = self.hits + self.misses
        return {
            "size": len(self._data),
            "maxsize": self.maxsize,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
        }


class CachedEncoder:
    """Wraps an encoder so repeated texts are embedded once (satisfies the Encoder protocol).

    The cache keys are salted with the wrapped encoder's ``spec()`` (and ``fingerprint`` where the
    encoder has one, e.g. a fitted TF-IDF), so one cache can be shared between encoders safely.

    Args:
        encoder: the encoder to wrap.
        cache: the cache to use (a new ``EmbeddingCache()`` if omitted).
    """

    def __init__(self, encoder: Encoder, cache: EmbeddingCache | None = None) -> None:
        self.encoder = encoder
        self.cache = cache if cache is not None else EmbeddingCache()
        self.name: str = encoder.name
        self.dim: int = encoder.dim
        self._fingerprint: object = object()  # forces _refresh_namespace on first use
        self._namespace = b""
        self._refresh_namespace()

    def _refresh_namespace(self) -> None:
        fp = getattr(self.encoder, "fingerprint", None)
        if fp != self._fingerprint:  # first use, or the wrapped encoder was (re)fitted
            ident = {"spec": self.encoder.spec(), "fingerprint": fp}
            self._namespace = json.dumps(ident, sort_keys=True, default=str).encode()
            self._fingerprint = fp
            self.dim = self.encoder.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Like the wrapped encoder's ``encode``; only texts not in the cache are embedded."""
        if isinstance(texts, str):
            raise TypeError(
                "encode() takes a sequence of texts; wrap a single text in a list: encode([text])"
            )
        self._refresh_namespace()
        out = np.empty((len(texts), self.dim), np.float32)
        keys = [text_key(t, self._namespace) for t in texts]
        missing: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            vec = self.cache.get(key)
            if vec is None:
                missing.setdefault(key, []).append(i)
            else:
                out[i] = vec
        if missing:
            first = [rows[0] for rows in missing.values()]
            fresh = self.encoder.encode([texts[i] for i in first])
            for (key, rows), vec in zip(missing.items(), fresh, strict=True):
                out[rows] = vec
                self.cache.put(key, vec)
        return out

    def spec(self) -> dict:
        """The wrapped encoder's spec (the cache is a run-time detail, not part of the spec)."""
        return self.encoder.spec()

    def __getattr__(self, name: str):  # fit(), state(), fingerprint... of the wrapped encoder
        if name == "encoder":
            raise AttributeError(name)
        return getattr(self.encoder, name)

    def __repr__(self) -> str:
        return f"CachedEncoder({self.encoder!r}, size={len(self.cache)})"
