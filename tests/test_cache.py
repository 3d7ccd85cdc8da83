"""Semantic cache: exact/semantic hits, contrast safety, TTL, scope, backends, stream replay."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from llmroute.cache import SemanticCache, SQLiteBackend, assemble_stream, critical_tokens, replay_sse
from llmroute.cache.backends import RedisBackend
from llmroute.cache.evaldata import contrast_pairs, paraphrase_pairs
from llmroute.signals.hashenc import HashingEncoder

ENC = HashingEncoder()


def resp(text: str = "Paris.") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}  # fmt: skip


def test_critical_tokens() -> None:
    assert critical_tokens("Turn on the lights") != critical_tokens("Turn off the lights")
    assert critical_tokens("Who won in 2019?") != critical_tokens("Who won in 2020?")
    assert critical_tokens("I can log in") != critical_tokens("I can't log in")
    assert critical_tokens("capital of France") != critical_tokens("capital of Spain")
    assert critical_tokens("reverse a list in python") != critical_tokens("reverse a list in java")
    assert critical_tokens("Give me two tips") == critical_tokens("give me 2 tips")
    assert critical_tokens("It costs 1,000 dollars") == critical_tokens("it costs 1000 dollars")
    assert critical_tokens("What is the capital of France?") == critical_tokens(
        "Tell me the capital city of France"
    )


def test_exact_and_semantic_hits_with_info() -> None:
    c = SemanticCache(ENC, threshold=0.6)
    assert c.lookup("What is the capital of France?") is None
    assert c.store("What is the capital of France?", resp()) is not None
    hit = c.lookup("what is the capital of france")
    assert (
        hit is not None
        and hit.kind == "exact"
        and hit.response["choices"][0]["message"]["content"] == "Paris."
    )
    sem = c.lookup("What's the capital city of France?")
    assert sem is not None and sem.kind == "semantic" and 0.6 <= sem.similarity < 1.0
    assert sem.info()["kind"] == "semantic" and sem.header().startswith("hit;kind=semantic")
    assert c.lookup("What is the capital of Spain?") is None
    assert c.stats.as_dict() == {"lookups": 4, "exact_hits": 1, "semantic_hits": 1, "misses": 2, "stores": 1,
                                 "skipped": 0}  # fmt: skip


class _FixedEncoder:
    """Encoder with hand-set unit vectors: `sims[text]` is the text's cosine to [1, 0]."""

    def __init__(self, sims: dict[str, float]) -> None:
        self.sims = sims

    def encode(self, texts: list[str]) -> np.ndarray:
        s = np.array([self.sims[t] for t in texts], dtype=np.float64)
        return np.stack([s, np.sqrt(1.0 - s**2)], axis=1)


STORED = "tell me something nice please"


@pytest.mark.parametrize(
    "make",
    [
        lambda enc: SemanticCache(enc),
        lambda enc: SemanticCache.from_config({}, enc),
    ],
    ids=["constructor", "from_config"],
)
def test_default_threshold_0_85_separates_just_below_from_just_above(make) -> None:
    below, at, above = "say something nice to me please", "something nice please", "please say something nice"
    enc = _FixedEncoder({STORED: 1.0, below: 0.84, at: 0.85, above: 0.86})
    c = make(enc)
    c.store(STORED, resp())
    assert c.lookup(below) is None
    for text, sim in [(at, 0.85), (above, 0.86)]:  # at the threshold counts as a hit (>=)
        hit = c.lookup(text)
        assert hit is not None and hit.kind == "semantic", text
        assert hit.similarity == pytest.approx(sim)


def test_configured_threshold_separates_just_below_from_just_above() -> None:
    below, above = "say something nice to me please", "please say something nice"
    enc = _FixedEncoder({STORED: 1.0, below: 0.929, above: 0.931})
    for c in (SemanticCache(enc, threshold=0.93), SemanticCache.from_config({"threshold": 0.93}, enc)):
        c.store(STORED, resp())
        assert c.lookup(below) is None
        hit = c.lookup(above)
        assert hit is not None and hit.kind == "semantic"


def test_zero_false_hits_on_contrast_pairs_even_at_low_threshold() -> None:
    c = SemanticCache(ENC, threshold=0.5)
    for i, (a, b, _kind) in enumerate(contrast_pairs()):
        c.store(a, resp(), scope=f"pair{i}")
        assert c.lookup(b, scope=f"pair{i}") is None, (a, b)


def test_paraphrase_hit_rate_with_hash_encoder() -> None:
    c = SemanticCache(ENC, threshold=0.6)
    pairs = paraphrase_pairs()
    hits = 0
    for i, (a, b) in enumerate(pairs):
        c.store(a, resp(), scope=f"p{i}")
        hits += c.lookup(b, scope=f"p{i}") is not None
    assert hits / len(pairs) >= 0.6


def test_scope_context_and_params_separate_entries() -> None:
    c = SemanticCache(ENC)
    c.store("hello there friend", resp(), scope="alias-a|key1")
    assert c.lookup("hello there friend", scope="alias-a|key2") is None
    assert c.lookup("hello there friend", scope="alias-a|key1") is not None
    conv1 = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "hello there friend"},
    ]
    assert c.lookup(conv1, scope="alias-a|key1") is None  # different context
    c.store(conv1, resp(), params={"temperature": 0})
    assert c.lookup(conv1, params={"temperature": 0}) is not None
    assert c.lookup(conv1, params={"temperature": 1}) is None


def test_ttl_expiry_and_uncacheable_responses() -> None:
    c = SemanticCache(ENC, ttl_s=0.05)
    c.store("short lived question here", resp())
    assert c.lookup("short lived question here") is not None
    time.sleep(0.08)
    assert c.lookup("short lived question here") is None
    assert (
        c.store("x y z question", {"choices": [{"message": {"content": "", "tool_calls": [{"id": 1}]}}]})
        is None
    )
    assert c.store("x y z question", {"error": {"message": "boom"}}) is None
    assert c.stats.skipped == 2
    with pytest.raises(ValueError):
        SemanticCache(ENC, threshold=1.5)


def test_sqlite_file_persists(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    c1 = SemanticCache(ENC, SQLiteBackend(path))
    c1.store("persist me please", resp("kept"))
    c2 = SemanticCache(ENC, SQLiteBackend(path))
    hit = c2.lookup("persist me please")
    assert hit is not None and hit.response["choices"][0]["message"]["content"] == "kept"
    assert len(c2.backend) == 1


def test_redis_backend_with_fakeredis() -> None:
    fakeredis = pytest.importorskip("fakeredis")
    client = fakeredis.FakeRedis()
    c = SemanticCache.from_config(
        {"backend": "redis", "ttl_s": 60, "threshold": 0.6}, ENC, redis_client=client
    )
    assert isinstance(c.backend, RedisBackend)
    c.store("What is the capital of France?", resp())
    assert c.lookup("What is the capital of France?").kind == "exact"
    assert c.lookup("What's the capital city of France?").kind == "semantic"
    assert c.lookup("What is the capital of Japan?") is None
    assert len(c.backend) == 1
    assert client.ttl("llmroute:cache:e:" + c.keys("What is the capital of France?")[0]) > 0
    c.backend.clear()
    assert c.lookup("What is the capital of France?") is None
    with pytest.raises(ValueError, match="backend must be"):
        SemanticCache.from_config({"backend": "memcached"})
    with pytest.raises(ValueError, match="unknown key"):
        SemanticCache.from_config({"ttl": 3})


def test_stream_replay_roundtrip() -> None:
    r = resp("A fairly long answer that will be split into several chunks for the replay.")
    events = list(replay_sse(r, chunk_chars=10))
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    again = assemble_stream(chunks)
    assert again["choices"][0]["message"]["content"] == r["choices"][0]["message"]["content"]
    assert again["choices"][0]["finish_reason"] == "stop" and again["usage"] == r["usage"]
    c = SemanticCache(ENC)
    assert c.store("streamed question text", again) is not None
