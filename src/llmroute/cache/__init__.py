"""Exact + semantic response cache (SQLite by default, Redis when configured)."""

from llmroute.cache.backends import CacheBackend, Entry, RedisBackend, SQLiteBackend
from llmroute.cache.critical import critical_tokens, signature
from llmroute.cache.semantic import CacheHit, SemanticCache, assemble_stream, replay_sse

__all__ = [
    "CacheBackend",
    "CacheHit",
    "Entry",
    "RedisBackend",
    "SQLiteBackend",
    "SemanticCache",
    "assemble_stream",
    "critical_tokens",
    "replay_sse",
    "signature",
]
