"""TF-IDF + SVD encoder: fit, state round trip, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmroute.embed import CachedEncoder, Encoder, encoder_from_state, load_encoder
from llmroute.embed.tfidf import TfidfEncoder


def _corpus() -> list[str]:
    rng = np.random.default_rng(0)
    topics = {
        "math": ["solve", "equation", "integral", "derivative", "algebra", "prove", "number"],
        "code": ["python", "function", "compile", "bug", "rust", "class", "loop"],
        "food": ["recipe", "bake", "flour", "sugar", "oven", "pasta", "sauce"],
    }
    texts = []
    for words in topics.values():
        for _ in range(40):
            texts.append(" ".join(rng.choice(words, size=6)))
    return texts


@pytest.fixture(scope="module")
def fitted() -> TfidfEncoder:
    return TfidfEncoder(dim=32).fit(_corpus())


def test_tfidf_shapes_norms_and_similarity(fitted: TfidfEncoder) -> None:
    assert isinstance(fitted, Encoder) and fitted.dim == 32
    x = fitted.encode(
        ["solve the integral equation", "prove the derivative equation", "bake pasta sauce", ""]
    )
    assert x.shape == (4, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x[:3], axis=1), 1.0, atol=1e-5)
    assert np.all(x[3] == 0.0)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.3
    assert fitted.encode([]).shape == (0, 32)


def test_tfidf_state_round_trip_identical(fitted: TfidfEncoder, tmp_path) -> None:
    spec, state = fitted.spec(), fitted.state()
    assert spec["fitted"] is True and json.loads(json.dumps(spec)) == spec
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    np.savez(tmp_path / "s.npz", **state)  # plain arrays: loadable without pickle
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    again = encoder_from_state(spec, arrays)
    probe = ["solve the integral", "a python bug in a loop", "sugar flour oven", "unknown words only", ""]
    np.testing.assert_array_equal(again.encode(probe), fitted.encode(probe))
    assert again.fingerprint == fitted.fingerprint


def test_tfidf_fixed_dim_on_tiny_corpus_and_determinism() -> None:
    a = load_encoder({"name": "tfidf", "dim": 64}).fit(["one two", "three"])  # type: ignore[attr-defined]
    assert a.encode(["one", "zzz"]).shape == (2, 64)
    c1 = TfidfEncoder(dim=16, seed=3).fit(_corpus()).encode(["solve python"])
    c2 = TfidfEncoder(dim=16, seed=3).fit(_corpus()).encode(["solve python"])
    np.testing.assert_array_equal(c1, c2)


def test_tfidf_errors() -> None:
    enc = TfidfEncoder(dim=8)
    with pytest.raises(RuntimeError, match="not fitted"):
        enc.encode(["x"])
    with pytest.raises(RuntimeError, match="not fitted"):
        enc.state()
    with pytest.raises(ValueError, match="at least one"):
        enc.fit([])
    with pytest.raises(ValueError, match="missing arrays"):
        encoder_from_state({"name": "tfidf", "dim": 8, "fitted": True}, {"components": np.zeros((1, 1))})
    with pytest.raises(ValueError, match="without its state"):
        encoder_from_state({"name": "tfidf", "dim": 8, "fitted": True}, None)


def test_cached_encoder_namespace_follows_refit() -> None:
    enc = CachedEncoder(TfidfEncoder(dim=8))
    enc.fit(["solve the equation", "bake the pasta", "python bug"])
    a = enc.encode(["solve pasta"])
    enc.fit(["completely different words here", "solve other things", "more pasta"])
    b = enc.encode(["solve pasta"])
    np.testing.assert_array_equal(b, enc.encoder.encode(["solve pasta"]))
    assert enc.cache.stats()["hits"] == 0 and a.shape == b.shape
