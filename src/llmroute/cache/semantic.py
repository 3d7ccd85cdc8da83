"""Exact + semantic response cache, safe against near-miss contrasts, with stream replay.

Lookup order: (1) exact — same scope, same conversation context and request parameters, same
normalised last user message; (2) semantic — same scope and context, the SAME critical-token
signature (numbers, negations, polarity words, dates, named entities: see
`llmroute.cache.critical`) and cosine similarity of the last user message >= `threshold`.
Scope is whatever the caller passes (e.g. "<alias>|<key id>"), so tenants never share answers.
Responses are stored whole (chat.completion JSON) and replayed as SSE chunks for streams.

What the backend stores per entry: the exact key and the semantic bucket (SHA-256 hashes of the
scope, the conversation context, the request parameters and the normalised last user message or
its critical-token signature: no prompt text), the times, the response JSON (needed to answer a
hit; it may quote the prompt) and, when `persist_vectors` (the gateway sets it from
`trace.store_prompts`), the embedding of the last user message. A static-encoder embedding is
close to a bag of words, so with `persist_vectors=False` embeddings stay in this process's memory
only (`max_vectors`, oldest dropped first): exact hits survive a restart and reach every worker
sharing the backend, semantic hits only entries this process stored.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmroute.cache.backends import CacheBackend, Entry, RedisBackend, SQLiteBackend
from llmroute.cache.critical import signature, warm
from llmroute.signals.request import content_text, normalise_messages

_WS = re.compile(r"\s+")
# Request parameters that change the answer (part of the context hash).
ANSWER_PARAMS: tuple[str, ...] = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "tools", "tool_choice",
    "response_format", "seed", "stop", "n", "logprobs", "functions",
)  # fmt: skip


def normalise_text(text: str) -> str:
    """Lower-case, collapse whitespace, drop trailing punctuation (exact-match key)."""
    return _WS.sub(" ", text.strip().lower()).rstrip(" ?.!")


@dataclass
class CacheHit:
    """A cached response found for a request."""

    kind: str  # "exact" | "semantic"
    similarity: float
    key: str
    age_s: float
    response: dict[str, Any]

    def info(self) -> dict[str, Any]:
        """JSON-able record for traces."""
        return {"hit": True, "kind": self.kind, "similarity": round(self.similarity, 4),
                "age_s": round(self.age_s, 3), "key": self.key[:16]}  # fmt: skip

    def header(self) -> str:
        """Compact header value, e.g. `hit;kind=semantic;sim=0.934;age=12.0`."""
        return f"hit;kind={self.kind};sim={self.similarity:.3f};age={self.age_s:.1f}"


@dataclass
class CacheStats:
    """Counters (also exported by the gateway's metrics)."""

    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    stores: int = 0
    skipped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, int]:
        """Plain dict of the counters."""
        return {
            k: getattr(self, k)
            for k in ("lookups", "exact_hits", "semantic_hits", "misses", "stores", "skipped")
        }


class SemanticCache:
    """Response cache.

    encoder: `Encoder` for semantic matching (None: exact matching only). backend: a
    `CacheBackend` (default in-memory SQLite). ttl_s: entry lifetime. threshold: minimum cosine
    similarity of the last user messages for a semantic hit. max_candidates: entries scored per
    lookup (newest first). min_chars: shorter prompts are matched exactly only. persist_vectors:
    store embeddings in the backend (False: in this process's memory only, at most `max_vectors`;
    see the module docstring).
    """

    def __init__(
        self,
        encoder: Any = None,
        backend: CacheBackend | None = None,
        *,
        ttl_s: float = 3600.0,
        threshold: float = 0.85,
        max_candidates: int = 64,
        min_chars: int = 8,
        persist_vectors: bool = True,
        max_vectors: int = 100_000,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("cache threshold must be in (0, 1]")
        if ttl_s <= 0:
            raise ValueError("cache ttl_s must be > 0")
        self.encoder = encoder
        self.backend: CacheBackend = backend if backend is not None else SQLiteBackend()
        self.ttl_s = float(ttl_s)
        self.threshold = float(threshold)
        self.max_candidates = int(max_candidates)
        self.min_chars = int(min_chars)
        self.persist_vectors = bool(persist_vectors)
        self.max_vectors = int(max_vectors)
        self._vectors: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expires, emb)
        self._vlock = threading.Lock()
        self.stats = CacheStats()
        warm()  # the critical-token vocabulary, loaded here rather than by the first lookup

    @classmethod
    def from_config(
        cls,
        cfg: Mapping[str, Any],
        encoder: Any = None,
        redis_client: Any = None,
        *,
        store_prompts: bool = True,
    ) -> SemanticCache:
        """Build from a `cache:` config section.

        Keys: backend ("sqlite" | "redis"), path (SQLite file; default in-memory), url (Redis),
        prefix, ttl_s, threshold, max_candidates, semantic (bool; false = exact only).
        store_prompts: the gateway's `trace.store_prompts`; False keeps embeddings out of the
        backend (`persist_vectors`).
        """
        known = {"enabled", "backend", "path", "url", "prefix", "ttl_s", "threshold", "max_candidates",
                 "semantic", "min_chars", "scope"}  # fmt: skip
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"cache: unknown key(s) {unknown}; allowed: {sorted(known)}")
        kind = cfg.get("backend", "sqlite")
        if kind == "sqlite":
            backend: CacheBackend = SQLiteBackend(cfg.get("path", ":memory:"))
        elif kind == "redis":
            backend = RedisBackend(
                redis_client, url=cfg.get("url"), prefix=cfg.get("prefix", "llmroute:cache:")
            )
        else:
            raise ValueError(f"cache.backend must be 'sqlite' or 'redis', not {kind!r}")
        return cls(
            encoder if cfg.get("semantic", True) else None,
            backend,
            ttl_s=float(cfg.get("ttl_s", 3600)),
            threshold=float(cfg.get("threshold", 0.85)),
            max_candidates=int(cfg.get("max_candidates", 64)),
            min_chars=int(cfg.get("min_chars", 8)),
            persist_vectors=store_prompts,
        )

    # ---- keys ------------------------------------------------------------------------------
    @staticmethod
    def _split(messages: Sequence[Mapping[str, Any]]) -> tuple[list[Any], str]:
        msgs = normalise_messages(messages)
        last_i = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=len(msgs) - 1)
        ctx = [
            [m.get("role"), content_text(m.get("content")), m.get("tool_calls"), m.get("name")]
            for i, m in enumerate(msgs)
            if i != last_i
        ]
        return ctx, content_text(msgs[last_i].get("content")) if msgs else ""

    def keys(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        scope: str = "",
        params: Mapping[str, Any] | None = None,
    ) -> tuple[str, str, str]:
        """(exact key, semantic bucket, last user text) of a request."""
        ctx, last = self._split(
            messages if not isinstance(messages, str) else [{"role": "user", "content": messages}]
        )
        p = {k: params[k] for k in ANSWER_PARAMS if params and params.get(k) is not None}
        base = json.dumps([scope, ctx, p], sort_keys=True, default=str)
        h = hashlib.sha256(base.encode()).hexdigest()
        exact = hashlib.sha256(f"{h}\x00{normalise_text(last)}".encode()).hexdigest()
        bucket = hashlib.sha256(f"{h}\x00{signature(last)}".encode()).hexdigest()
        return exact, bucket, last

    # ---- API -------------------------------------------------------------------------------
    def lookup(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        scope: str = "",
        params: Mapping[str, Any] | None = None,
        emb: np.ndarray | None = None,
    ) -> CacheHit | None:
        """The cached response for this request, or None. `emb`: the last user message's
        embedding if the caller already has it (saves one encode)."""
        exact, bucket, last = self.keys(messages, scope, params)
        with self.stats._lock:
            self.stats.lookups += 1
        now = time.time()
        e = self.backend.get(exact)
        if e is not None:
            return self._hit("exact", 1.0, e, now)
        if self.encoder is not None and len(last) >= self.min_chars:
            cands = self._with_vectors(self.backend.candidates(bucket, self.max_candidates), now)
            if cands:
                q = emb if emb is not None else self.encoder.encode([last])[0]
                M = np.stack([np.frombuffer(c.emb, np.float32) for c in cands])
                if M.shape[1] == q.shape[0]:
                    sims = M @ q
                    i = int(sims.argmax())
                    if sims[i] >= self.threshold:
                        return self._hit("semantic", float(sims[i]), cands[i], now)
        with self.stats._lock:
            self.stats.misses += 1
        return None

    def _with_vectors(self, cands: list[Entry], now: float) -> list[Entry]:
        """`cands` that have an embedding: stored, or (not persisted) held in memory."""
        out = []
        for c in cands:
            if not c.emb:
                with self._vlock:
                    held = self._vectors.get(c.key)
                if held is None or held[0] <= now:
                    continue
                c.emb = held[1]
            out.append(c)
        return out

    def _hold_vector(self, key: str, expires: float, vec: bytes) -> None:
        with self._vlock:
            self._vectors[key] = (expires, vec)
            self._vectors.move_to_end(key)
            while len(self._vectors) > self.max_vectors:
                self._vectors.popitem(last=False)

    def _hit(self, kind: str, sim: float, e: Entry, now: float) -> CacheHit:
        with self.stats._lock:
            if kind == "exact":
                self.stats.exact_hits += 1
            else:
                self.stats.semantic_hits += 1
        return CacheHit(kind, sim, e.key, max(0.0, now - e.created), json.loads(e.response))

    def store(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        response: Mapping[str, Any],
        *,
        scope: str = "",
        params: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
        emb: np.ndarray | None = None,
    ) -> str | None:
        """Cache a complete response (chat.completion dict); returns its key (None if skipped:
        errors, empty answers and tool calls are not cached)."""
        if not _cacheable(response):
            with self.stats._lock:
                self.stats.skipped += 1
            return None
        exact, bucket, last = self.keys(messages, scope, params)
        vec = b""
        if self.encoder is not None and len(last) >= self.min_chars:
            v = emb if emb is not None else self.encoder.encode([last])[0]
            vec = np.asarray(v, np.float32).tobytes()
        now = time.time()
        expires = now + (ttl_s or self.ttl_s)
        if vec and not self.persist_vectors:
            self._hold_vector(exact, expires, vec)
            vec = b""
        self.backend.put(Entry(exact, bucket, now, expires, vec, json.dumps(response)))
        with self.stats._lock:
            self.stats.stores += 1
        return exact


def _cacheable(response: Mapping[str, Any]) -> bool:
    choices = response.get("choices")
    if not choices or "error" in response:
        return False
    for c in choices:
        msg = c.get("message") or {}
        if msg.get("tool_calls") or msg.get("function_call"):
            return False
        if not content_text(msg.get("content")):
            return False
    return True


def replay_sse(response: Mapping[str, Any], chunk_chars: int = 24) -> Iterator[bytes]:
    """Re-emit a stored chat.completion as OpenAI `chat.completion.chunk` SSE events + [DONE]."""
    base = {
        "id": response.get("id", "chatcmpl-cache"),
        "object": "chat.completion.chunk",
        "created": int(response.get("created", time.time())),
        "model": response.get("model", ""),
    }

    def ev(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n"

    for c in response.get("choices", []):
        idx = c.get("index", 0)
        text = content_text((c.get("message") or {}).get("content"))
        yield ev([{"index": idx, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for i in range(0, len(text), chunk_chars):
            yield ev([{"index": idx, "delta": {"content": text[i : i + chunk_chars]}, "finish_reason": None}])
        yield ev([{"index": idx, "delta": {}, "finish_reason": c.get("finish_reason", "stop")}])
    if response.get("usage"):
        yield ev([], usage=response["usage"])
    yield b"data: [DONE]\n\n"


def assemble_stream(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Build a complete chat.completion from streamed `chat.completion.chunk` dicts (to cache it)."""
    out: dict[str, Any] = {"object": "chat.completion", "choices": []}
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    tool = False
    for ch in chunks:
        for k in ("id", "created", "model"):
            if k in ch and k not in out:
                out[k] = ch[k]
        if ch.get("usage"):
            out["usage"] = ch["usage"]
        for c in ch.get("choices", []):
            i = c.get("index", 0)
            d = c.get("delta") or {}
            if d.get("tool_calls"):
                tool = True
            if d.get("content"):
                texts.setdefault(i, []).append(d["content"])
            texts.setdefault(i, [])
            if c.get("finish_reason"):
                finish[i] = c["finish_reason"]
    for i in sorted(texts):
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts[i])}
        if tool:
            msg["tool_calls"] = [{"partial": True}]  # marks the response as not cacheable
        out["choices"].append({"index": i, "message": msg, "finish_reason": finish.get(i, "stop")})
    return out
