"""#11 item 12: the response cache honours `trace.store_prompts` (no prompt text or embedding in
its backend when it is false) and its contrast guard makes no false hits on negation by prefix,
am/pm, units, swapped order, antonym actions and swapped lower-case entities."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import fakeredis
import openai
import pytest

from conftest import FakeServer, StubRouter, loopback_config, run_gateway
from llmroute.cache import RedisBackend, SemanticCache, SQLiteBackend, critical, critical_tokens, signature
from llmroute.cache.evaldata import (
    contrast_pairs,
    heldout_contrast_pairs,
    heldout_paraphrase_pairs,
    paraphrase_pairs,
)
from llmroute.signals.hashenc import HashingEncoder, resolve_encoder

NEW_KINDS = ("prefix_negation", "ampm", "unit", "order", "antonym_action", "entity_swap")
MARKER = "zebra-quokka-marker"  # appears only in the prompt, never in an answer


def resp(text: str = "An answer.") -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}]}  # fmt: skip


@pytest.fixture(scope="module")
def minilm() -> Any:
    return resolve_encoder("static-minilm")


# ---- contrast guard ------------------------------------------------------------------------------


def test_the_contrast_set_has_every_new_family() -> None:
    kinds = Counter(k for _, _, k in contrast_pairs())
    assert all(kinds[k] >= 8 for k in NEW_KINDS), kinds


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_no_false_hit_on_the_new_families_even_at_a_low_threshold(kind: str, minilm: Any) -> None:
    pairs = [(a, b) for a, b, k in contrast_pairs() if k == kind]
    for enc in (minilm, HashingEncoder()):
        c = SemanticCache(enc, threshold=0.5)
        for i, (a, b) in enumerate(pairs):
            c.store(a, resp(), scope=f"{i}")
            assert c.lookup(b, scope=f"{i}") is None, (a, b)
            c.store(b, resp(), scope=f"r{i}")
            assert c.lookup(a, scope=f"r{i}") is None, (b, a)


# the guard's open-class word lists: a held-out pair's distinguishing words must be in none
_OPEN_LISTS: dict[str, Any] = {
    "polarity": critical._POLARITY,
    "lexicon": critical._LEXICON,
    "kinds": critical._KINDS,
    "units": critical._UNITS,
    "negatable stems": critical._NEG_STEMS,
    "conversion verbs": critical._CONVERT,
}
_CLOSED_CLASS_KINDS = {"negation", "number", "date", "ampm"}  # negators, numerals, dates: no other words


def _words(text: str) -> list[str]:
    return [w.strip("'").replace("'", "") for w in re.findall(r"[a-z0-9][a-z0-9'\-]*", text.lower())]


def _distinguishing(a: str, b: str) -> set[str]:
    """Words in one text and not the other; for a swap of the same words, the words that moved."""
    wa, wb = _words(a), _words(b)
    diff = set(wa) ^ set(wb)
    if not diff and len(wa) == len(wb):
        diff = {x for x, y in zip(wa, wb, strict=True) if x != y}
    return diff


def _listed(word: str) -> list[str]:
    parts = [word, *word.split("-")]
    for prefix in ("un", "non", "in", "im", "il", "ir", "dis"):
        if word.startswith(prefix):
            parts.append(word[len(prefix) :].lstrip("-"))
    return [name for name, lst in _OPEN_LISTS.items() for p in parts if p in lst]


def test_held_out_pairs_are_told_apart_by_words_in_none_of_the_lists() -> None:
    pairs = heldout_contrast_pairs()
    kinds = Counter(k for _, _, k in pairs)
    assert all(kinds[k] >= 8 for k in NEW_KINDS), kinds
    dev = {frozenset((a, b)) for a, b, _ in contrast_pairs()}
    for a, b, kind in pairs:
        assert frozenset((a, b)) not in dev, (a, b)
        diff = _distinguishing(a, b)
        assert diff, (a, b)
        if kind not in _CLOSED_CLASS_KINDS:
            listed = {w: _listed(w) for w in diff if _listed(w)}
            assert not listed, (a, b, listed)


@pytest.mark.parametrize(
    "a,b",
    [
        ("How do I cook bulgur?", "How do I cook farro?"),  # words outside the vocabulary are names
        ("Add 2 pinches of salt.", "Add 2 handfuls of salt."),  # the word after a number is its unit
        ("How can I hide the folder?", "How can I share the folder?"),  # the verb after "I" is the action
        ("Was the referee partial?", "Was the referee impartial?"),  # prefix + vocabulary adjective
        ("Suggest a sugar-free dessert.", "Suggest a sweet dessert."),  # "-free" negates
        ("Is it not unsafe?", "Is it unsafe?"),  # negations are counted
        ("Meet me at 9.15am.", "Meet me at 9.15pm."),  # a dot in a clock time
        ("Redesign the logo from circle to square.", "Redesign the logo from square to circle."),  # from/to
    ],
)
def test_general_rules_separate_words_no_list_has(a: str, b: str) -> None:
    assert signature(a) != signature(b)


def test_prefix_rule_needs_an_adjective_stem() -> None:
    # "dis" + "cover" / "count": vocabulary words, but no adjective ending: no negation
    assert not any(t.startswith("neg") for t in critical_tokens("There is a discount code to discover."))
    assert "neg" in critical_tokens("The judge was impartial.")


def test_held_out_contrasts_at_the_default_threshold(minilm: Any) -> None:
    """The guard on pairs it was not built on: at most the 4 false hits of 82 measured when the
    rules were written (both swapped lower-case nouns that the vocabulary knows, one late autumn /
    late spring, one "can a lizard outrun a spider" subject/object swap); paraphrase hits >= 50%."""
    c = SemanticCache(minilm)  # the gateway's default encoder and threshold
    false_hits = []
    for i, (a, b, _kind) in enumerate(heldout_contrast_pairs()):
        c.store(a, resp(), scope=f"h{i}")
        if c.lookup(b, scope=f"h{i}") is not None:
            false_hits.append((a, b))
    assert len(false_hits) <= 4, false_hits
    pairs = heldout_paraphrase_pairs()
    hits = 0
    for i, (a, b) in enumerate(pairs):
        c.store(a, resp(), scope=f"hp{i}")
        hits += c.lookup(b, scope=f"hp{i}") is not None
    assert hits / len(pairs) >= 0.5


# words that are in none of the guard's lists: the rules (prefix, suffix, clock, order) must
# carry them, not a word list
HELD_OUT = [
    ("Is this bridge reliable?", "Is this bridge unreliable?"),
    ("Book a smoking room for tonight.", "Book a non-smoking room for tonight."),
    ("Was the driver careful on the highway?", "Was the driver careless on the highway?"),
    ("Is the meeting at 3:15pm on the agenda?", "Is the meeting at 3:15 AM on the agenda?"),
    ("Is a wolf stronger than a bear?", "Is a bear stronger than a wolf?"),
    ("How do I convert a jpeg into a png?", "How do I convert a png into a jpeg?"),
    ("Why is rent higher than salary growth?", "Why is salary higher than rent growth?"),
    ("Is 40 mph fast for a bicycle?", "Is 40 kph fast for a bicycle?"),
]


@pytest.mark.parametrize("a,b", HELD_OUT)
def test_rules_not_word_lists_separate_held_out_contrasts(a: str, b: str) -> None:
    assert signature(a) != signature(b)


@pytest.mark.parametrize(
    "a,b",
    [
        ("Set an alarm for 7 AM.", "set an alarm for 7 a.m."),
        ("Is 30 degrees Celsius hot?", "Is 30°C hot?"),
        ("How far is 10 kilometres?", "How far is 10 km?"),
        ("I am hungry, what should I cook?", "I'm hungry, what should I cook?"),
        ("Is a cheetah faster than a lion?", "Is the cheetah faster than the lion?"),
        ("What is the capital of France?", "What's the capital city of France?"),
        ("I need to renew my passport, how do I do it?", "How do I renew my passport?"),  # "it" is no action
        ("How do I pause the download?", "How can I pause the download?"),
        ("Are 2 pints enough for four?", "Is 2 pints enough for four?"),
        ("Wake me at 6.30 a.m. please.", "Wake me at 6.30am please."),
    ],
)
def test_paraphrases_keep_one_signature(a: str, b: str) -> None:
    assert signature(a) == signature(b)


def test_paraphrase_hits_stay_at_least_half_at_the_default_threshold(minilm: Any) -> None:
    c = SemanticCache(minilm)  # the gateway's default encoder and threshold
    pairs = paraphrase_pairs()
    hits = 0
    for i, (a, b) in enumerate(pairs):
        c.store(a, resp(), scope=f"p{i}")
        hits += c.lookup(b, scope=f"p{i}") is not None
    assert hits / len(pairs) >= 0.5


# ---- privacy -------------------------------------------------------------------------------------

CONV = [
    {"role": "system", "content": f"You are the {MARKER} assistant."},
    {"role": "user", "content": f"Tell me about the {MARKER} migration routes please"},
]
PARAPHRASE = [CONV[0], {"role": "user", "content": f"Tell me about {MARKER} migration routes"}]


def _sqlite_dump(path: Path) -> bytes:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT * FROM cache_entries").fetchall()
    finally:
        db.close()
    return repr(rows).encode() + b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_sqlite_without_store_prompts_keeps_no_prompt_and_no_embedding(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    c = SemanticCache(HashingEncoder(), SQLiteBackend(path), threshold=0.6, persist_vectors=False)
    c.store(CONV, resp())
    hit = c.lookup(PARAPHRASE)
    assert hit is not None and hit.kind == "semantic"  # in this process, semantic hits still work
    c.backend.close()  # type: ignore[attr-defined]
    raw = _sqlite_dump(path)
    assert MARKER.encode() not in raw and b"migration" not in raw
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT length(emb) FROM cache_entries")] == [0]
    db.close()
    again = SemanticCache(HashingEncoder(), SQLiteBackend(path), threshold=0.6, persist_vectors=False)
    exact = again.lookup(CONV)  # after a restart: exact hits from the hashed key
    assert exact is not None and exact.kind == "exact"
    assert again.lookup(PARAPHRASE) is None  # no stored embedding, so no semantic hit


def test_sqlite_with_store_prompts_keeps_the_embedding(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    c = SemanticCache(HashingEncoder(), SQLiteBackend(path), threshold=0.6, persist_vectors=True)
    c.store(CONV, resp())
    again = SemanticCache(HashingEncoder(), SQLiteBackend(path), threshold=0.6)
    hit = again.lookup(PARAPHRASE)
    assert hit is not None and hit.kind == "semantic"


def test_redis_without_store_prompts_keeps_no_prompt_and_no_embedding() -> None:
    r = fakeredis.FakeRedis()
    c = SemanticCache(HashingEncoder(), RedisBackend(r), threshold=0.6, persist_vectors=False)
    c.store(CONV, resp())
    assert c.lookup(PARAPHRASE) is not None
    dump = b""
    for k in r.scan_iter("*"):
        dump += k
        dump += repr(r.hgetall(k) if r.type(k) == b"hash" else r.zrange(k, 0, -1)).encode()
    assert MARKER.encode() not in dump and b"migration" not in dump
    assert all(not r.hget(k, "emb") for k in r.scan_iter("llmroute:cache:e:*"))
    other_worker = SemanticCache(HashingEncoder(), RedisBackend(r), threshold=0.6, persist_vectors=False)
    assert other_worker.lookup(CONV) is not None  # exact hits are shared


def test_in_memory_vectors_are_bounded() -> None:
    c = SemanticCache(HashingEncoder(), threshold=0.6, persist_vectors=False, max_vectors=3)
    for i in range(5):
        c.store(f"question number {i} about the {MARKER}", resp())
    assert len(c._vectors) == 3


def test_gateway_cache_follows_trace_store_prompts(fake_server: FakeServer, tmp_path: Path) -> None:
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["cache"] = {"backend": "sqlite", "path": str(tmp_path / "gw-cache.sqlite")}
    cfg["trace"] = {"store_prompts": False}
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        reasons = []
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(
                model="llmroute/auto",
                messages=CONV,  # type: ignore[arg-type]
            )
            reasons.append(raw.headers["x-llmroute-reason"])
    assert "cache: miss" in reasons[0] and "cache: hit" in reasons[1]
    db = sqlite3.connect(tmp_path / "gw-cache.sqlite")
    rows = db.execute("SELECT key, bucket, length(emb) FROM cache_entries").fetchall()
    db.close()
    assert len(rows) == 1 and rows[0][2] == 0
    assert MARKER not in rows[0][0] + rows[0][1]
