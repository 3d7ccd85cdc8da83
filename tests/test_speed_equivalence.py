"""The fast paths give the same numbers as plain reference implementations.

Embeddings: the tokenizer's own ids, pooled in float64 (the static encoder's vectorised batch
path, its per-text path and its single-text path). Features: a verbatim copy of the
per-text feature code before it was vectorised. Router: route / route_batch / estimate agree.
"""

from __future__ import annotations

import itertools
import math
import random
import string

import numpy as np
import pytest

from llmroute.embed import load_encoder
from llmroute.embed.static import StaticEncoder
from llmroute.estimators import features as F


def _varied_texts(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [
        "Hello",
        "world",
        "tokenisation",
        "unaffable",
        "x" * 40,
        "GPT-4",
        "3.14",
        "don't",
        "C++",
        "1,200.5",
    ]
    texts = ["".join(rng.choice(string.printable) for _ in range(rng.randint(0, 200))) for _ in range(150)]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(100)]
    mixed = string.printable + "éü中文“”\u00a0\u3000\u200b\x85\u2028ﬁÅ€—…\x00\x1c"
    texts += ["".join(rng.choice(mixed) for _ in range(rng.randint(0, 300))) for _ in range(150)]
    texts += [
        "",
        " ",
        "\n\n",
        "Hello [CLS] world [MASK]",
        "naïve café “quotes”",
        "tab\tnew\nline\r",
        "a\x0bb\x0cc\x7fd\x00e",
        "é\x00a b",
        "中文 text 日本語のテキスト",
        "한국어 ١٢٣ \u3040\u30ff\u9fff\uac00\ud7af \u303f\u3100\ud7b0 ÀÉ İK 3² ½",  # range edges, digits
        "def f(x):\n    return x ** 2  # square\n\nprint(f(3))",
        "Solve for x: $\\frac{3}{4}x + 7 = 22$. What is x? (A) 1 (B) 2 (C) 20",
        "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
        "word " * 700,  # truncation, pure ASCII
        "mot café " * 400,  # truncation with non-ASCII chunks
        ("x = 1; " * 300) + "\x01",  # long with a control character
        "Question: what is 2+2?\nAnswer: 4\n" * 80,
    ]
    rng.shuffle(texts)
    return texts


@pytest.fixture(autouse=True)
def _batch_path_for_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the batch paths from 8 texts on, whatever their length, so every test below runs them
    (in production short batches stay on the per-text path, which is faster there)."""
    from llmroute.embed import static as static_module

    monkeypatch.setattr(static_module, "_VECTOR_MIN_CHARS", 0)
    monkeypatch.setattr(F, "_VECTOR_MIN_CHARS", 0)


@pytest.fixture(scope="module")
def static() -> StaticEncoder:
    return load_encoder("static-minilm")  # type: ignore[return-value]


def _reference_embedding(enc: StaticEncoder, texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), enc.dim))
    for i, t in enumerate(texts):
        ids = enc._tok.encode(t[: enc._max_chars], add_special_tokens=False).ids
        if ids:
            v = enc._emb[ids].astype(np.float64).sum(axis=0)
            if np.linalg.norm(v) > 0:
                out[i] = v / np.linalg.norm(v)
    return out


def test_static_batch_bags_hold_exactly_the_tokenizer_ids(static: StaticEncoder) -> None:
    texts = _varied_texts()
    blocks = static._batch_bags(texts)
    for i, t in enumerate(texts):
        want = static._tok.encode(t[: static._max_chars], add_special_tokens=False).ids
        got = [x for flat, ptr in blocks for x in flat[ptr[i] : ptr[i + 1]].tolist()]
        assert sorted(got) == sorted(want), repr(t[:60])
        assert sorted(static._bag(t)) == sorted(want), repr(t[:60])
        assert static.token_ids([t])[0] == want  # ordered ids stay exact


def test_static_encode_paths_match_the_reference(static: StaticEncoder) -> None:
    texts = _varied_texts(1)
    ref = _reference_embedding(static, texts)
    batch = static.encode(texts)  # vectorised path
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch, ref, atol=2e-6)
    small = np.vstack([static.encode(texts[i : i + 3]) for i in range(0, len(texts), 3)])  # per-text path
    np.testing.assert_allclose(small, ref, atol=2e-6)
    single = np.vstack([static.encode([t]) for t in texts])
    np.testing.assert_allclose(single, ref, atol=2e-6)


def test_static_vectorised_path_on_a_fresh_encoder_and_repeated_batches() -> None:
    enc = StaticEncoder()  # empty word memo: out-of-vocabulary words are tokenised on the way
    texts = _varied_texts(2)
    first = enc.encode(texts)
    again = enc.encode(texts)  # memo now warm
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, _reference_embedding(enc, texts), atol=2e-6)
    only_ascii = [t for t in texts if t.isascii() and t.strip()]
    np.testing.assert_allclose(enc.encode(only_ascii), _reference_embedding(enc, only_ascii), atol=2e-6)
    assert np.all(enc.encode([""] * 10) == 0.0)


def test_choose_row_matches_choose_on_random_rows() -> None:
    from llmroute.policy import choose, choose_row

    rng = np.random.default_rng(0)
    for trial in range(3000):
        m = int(rng.integers(1, 7))
        q = rng.choice([0.0, 0.2, 0.5, 0.5, 0.9, 1.0], m) if trial % 3 == 0 else rng.random(m)  # ties
        c = rng.choice([0.0, 1e-4, 1e-4, 2e-3], m) if trial % 4 == 0 else rng.random(m) * 1e-3
        if trial % 7 == 0:
            q[rng.integers(m)] = rng.choice([np.nan, np.inf, -np.inf])
        if trial % 11 == 0:
            c[rng.integers(m)] = rng.choice([np.nan, np.inf])
        mask = rng.random(m) < 0.6 if trial % 2 else None
        kw: dict = {"tradeoff": float(rng.choice([0.0, 1.0, 50.0, 1e4, np.inf]))}
        if trial % 5 == 1:
            kw["max_cost"] = float(rng.choice([0.0, 1e-4, 5e-4]))
        if trial % 5 == 2:
            kw["min_quality"] = float(rng.choice([0.3, 0.7, 0.95]))
        want = int(choose(q[None], c[None], mask=None if mask is None else mask[None], **kw)[0])
        got = choose_row(q.tolist(), c.tolist(), mask=None if mask is None else mask.tolist(), **kw)
        assert got == want, (q, c, mask, kw)


def _router():
    from llmroute.data import make_synthetic_table
    from llmroute.router import Router

    return Router.fit(make_synthetic_table(n_prompts=300, seed=3), estimator="mlp", seed=0)


def _same_decision(a, b) -> None:
    assert (a.model, a.ranked, a.policy, a.reason) == (b.model, b.ranked, b.policy, b.reason)
    for f in ("expected_quality", "expected_cost"):
        x, y = getattr(a, f), getattr(b, f)
        assert list(x) == list(y)
        np.testing.assert_allclose(list(x.values()), list(y.values()), rtol=1e-5, atol=1e-12)


def test_route_single_fast_path_equals_the_batch_decisions() -> None:
    r = _router()
    texts = [t for t in _varied_texts(3) if t][:60]
    models = r.models
    policies = [
        {},
        {"tradeoff": 0.0},
        {"tradeoff": float("inf")},
        {"tradeoff": 500.0},
        {"max_cost": 1e-9},
        {"min_quality": 0.6},
        {"min_quality": 0.999},
        {"allowed": models[:2], "tradeoff": 10.0},
        {"context_windows": {models[0]: 20}},
    ]
    for pol in policies:
        batch = r.route_batch(texts, **pol)  # numpy policy path
        for t, b in zip(texts, batch, strict=True):
            _same_decision(r.route(t, **pol), b)  # route: the plain-Python path for one prompt
    r.set_policy(strong=models[0], weak=models[-1], threshold=0.0)
    batch = r.route_batch(texts)
    for t, b in zip(texts, batch, strict=True):
        _same_decision(r.route(t), b)
    # the threshold rule often picks a model that does not lead the preference order (best q at
    # trade-off 0): ranked moves it to the front
    q_best = [max(b.expected_quality, key=b.expected_quality.__getitem__) for b in batch]
    assert any(b.model != best for b, best in zip(batch, q_best, strict=True))
    assert all(b.ranked[0] == b.model and sorted(b.ranked) == sorted(models) for b in batch)


@pytest.mark.parametrize("estimator", ["default", "mlp"])
def test_pipelined_batches_equal_the_one_pass_estimates(
    monkeypatch: pytest.MonkeyPatch, estimator: str
) -> None:
    """Large batches are estimated chunk by chunk on threads while the next chunk is featurised:
    same estimates (to float rounding), same decisions, same order as one pass."""
    import llmroute.router_batch as router_mod
    from llmroute.data import make_synthetic_table
    from llmroute.router import Router

    r = Router.fit(make_synthetic_table(n_prompts=300, seed=3), estimator=estimator, seed=0)
    texts = [t for t in _varied_texts(4) if t] * 3  # ~1,400 prompts, repeats included
    one_q, one_c = r.estimate(texts)  # default chunk size: one pass
    assert r._pipeline_threads(len(texts)) == 0
    one = r.route_batch(texts, tradeoff=50.0)

    monkeypatch.setattr(router_mod, "_PIPELINE_CHUNK", 100)
    monkeypatch.setattr(
        Router, "_pipeline_threads", lambda self, n: 0 if n < 200 or self.blas_single_thread else 2
    )
    spans = [span for span, *_ in r._estimate_chunks(texts)]
    assert spans[0] == (0, 100) and spans[-1][1] == len(texts) and len(spans) == len(texts) // 100
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(spans))  # contiguous, in order
    q, c = r.estimate(texts)
    np.testing.assert_allclose(q, one_q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, one_c, rtol=1e-6, atol=1e-12)
    for a, b in zip(r.route_batch(texts, tradeoff=50.0), one, strict=True):
        _same_decision(a, b)
    r.blas_single_thread = True  # a gateway process keeps to one thread: no pipeline
    assert [span for span, *_ in r._estimate_chunks(texts)] == [(0, len(texts))]


# ---- features: the per-text code before the batch path (verbatim, for reference) -------------
def _ref_number(token: str) -> float:
    """Value of a digit run such as 1,200.5 (0 when it is not one number, e.g. a version 1.2.3)."""
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return 0.0


F._DIGITS = bytes(range(48, 58))
F._UPPER = bytes(range(65, 91))
F._LOWER = bytes(range(97, 123))
F._SPACE = b" \n\t\r"


def _ref_char_classes(tail: str) -> tuple[int, int, int, int, int, int, int]:
    """Counts in `tail`: chars, digits, upper, lower, whitespace, non-ASCII, CJK."""
    if tail.isascii():  # the common case: byte deletions in C, no array work
        b = tail.encode("ascii")
        n = len(b)
        return (
            n,
            n - len(b.translate(None, F._DIGITS)),
            n - len(b.translate(None, F._UPPER)),
            n - len(b.translate(None, F._LOWER)),
            n - len(b.translate(None, F._SPACE)),
            0,
            0,
        )
    cp = np.frombuffer(tail.encode("utf-32-le"), dtype=np.uint32)
    cjk = (
        ((cp >= 0x3040) & (cp <= 0x30FF))
        | ((cp >= 0x3400) & (cp <= 0x9FFF))
        | ((cp >= 0xAC00) & (cp <= 0xD7AF))
    )
    return (
        len(cp),
        int(np.count_nonzero((cp >= 48) & (cp <= 57))),
        int(np.count_nonzero((cp >= 65) & (cp <= 90))),
        int(np.count_nonzero((cp >= 97) & (cp <= 122))),
        int(np.count_nonzero((cp == 32) | (cp == 10) | (cp == 9) | (cp == 13))),
        int(np.count_nonzero(cp > 127)),
        int(np.count_nonzero(cjk)),
    )


def _ref_one(text: str) -> list[float]:
    n = len(text)
    if n == 0:
        return [0.0] * len(F.FEATURE_NAMES)
    nw = len(text.split())
    tail = text[-F._MAX_SCAN :]
    low = tail.lower()
    n_cp, digits, upper, lower, space, non_ascii, cjk = _ref_char_classes(tail)
    inv = 1.0 / n_cp
    punct = n_cp - digits - upper - lower - space - non_ascii
    nums = F._NUM.findall(tail)
    values = [_ref_number(x) for x in nums[:200]]
    return [
        math.log1p(n),
        math.log1p(nw),
        math.log1p(text.count("\n")),
        (n - text.count(" ")) / max(nw, 1),
        digits * inv,
        math.log1p(len(nums)),
        (sum(map(tail.count, F._MATH_CHARS)) + sum(map(low.count, F._MATH_SUBSTR))) * inv * 10.0,
        math.log1p(sum(map(tail.count, F._CODE_MARKERS))),
        math.log1p(len(F._MC.findall(tail))),
        math.log1p(sum(map(low.count, F._QWORDS))),
        float("how many" in low or "how much" in low),
        math.log1p(sum(map(low.count, F._WRITE_WORDS))),
        math.log1p(tail.count("?")),
        float("__" in tail or "[mask]" in low or "blank" in low),
        math.log1p(len(F._QA_BLOCK.findall(tail))),
        upper * inv,
        punct * inv,
        non_ascii * inv,
        cjk * inv,
        float(tail.rstrip().endswith("?")),
        math.log1p(len(F._SENT_END.findall(tail))),
        math.log1p(len(set(nums))),
        math.log1p(min(max(values, default=0.0), 1e12)),
        math.log1p(sum(map(low.count, F._RATIO_WORDS))),
        math.log1p(sum("." in x for x in nums)),
    ]


def _ref_features(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), len(F.FEATURE_NAMES)), dtype=np.float32)
    for i, t in enumerate(texts):
        out[i] = _ref_one(t)
    return out


def _feature_texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = [
        *"ABEFacegqQ().:, \n\t\x0b\x1c\x00?!1209",
        "question",
        "Question",
        "QUESTION",
        "answer",
        "Answer",
        "uestion",
        "what ",
        "How many",
        "how much",
        "```",
        "__",
        "[MASK]",
        "blank",
        "$",
        "%",
        "per ",
        "\\frac",
        "=",
        "->",
        "=>",
        "probability",
        "int ",
        "print(",
        "printf(",
        ";\n",
        "{\n",
        "\r\n",
        "A) ",
        "(b) ",
        "Q:",
        "a :",
        "1,000.5",
        "3.",
        ".5",
        "1..2",
    ]  # fmt: skip  (ASCII: the batch path; _varied_texts adds non-ASCII texts)
    texts = [
        "".join(rng.choice(pieces) for _ in range(rng.choice([0, 1, 3, 20, 80, 300, 900])))
        for _ in range(600)
    ]
    texts += ["x" * 1995 + "A) b\n" + "Q: y", "q" * 2500 + "\nA) " + "1.5" * 10, "1" * 3000]
    texts += [  # whitespace runs longer than the vectorised walks (32 steps)
        "\n" * 50 + "A) x" + " \n" * 40 + "(b) y",
        "Q" + " \n" * 40 + ": what?" + " " * 60,
        " \t" * 50,
        "ok?" + "\n" * 70,
    ]
    # non-ASCII characters: whitespace, digits, case-mapping and CJK ones (ASCII stand-ins or not)
    uni = [*"\xa0\u3000\u2028\x85\u2003\u200b١０३²½ſKıİÅﬁǅ：中の한éÜßẞ😀\u0301Σς—“…？。Ａａ"]
    texts += [
        "".join(rng.choice(pieces + rng.sample(uni, 3)) for _ in range(rng.choice([1, 5, 40, 300])))
        for _ in range(300)
    ]
    texts = texts + _varied_texts(seed)
    assert sum(t.isascii() and len(t) > 100 for t in texts) > 300
    assert sum(not t.isascii() and F._ascii_stand_in(t) is not None for t in texts) > 50
    return texts


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_features_equal_the_per_text_reference(seed: int) -> None:
    texts = _feature_texts(seed)
    want = _ref_features(texts)
    np.testing.assert_array_equal(F.prompt_features(texts), want)  # one batch
    for size in (1, 7, 8, 33):  # per-text path below 8 texts, the batch path from 8
        got = np.vstack([F.prompt_features(texts[i : i + size]) for i in range(0, len(texts), size)])
        np.testing.assert_array_equal(got, want)
    assert F.prompt_features([]).shape == (0, len(F.FEATURE_NAMES))


def test_batches_in_slices_give_the_same_rows(monkeypatch: pytest.MonkeyPatch, static: StaticEncoder) -> None:
    import llmroute.embed.static as static_mod

    texts = _varied_texts(4)[:120]
    emb, feats = static.encode(texts), F.prompt_features(texts)
    monkeypatch.setattr(static_mod, "_VECTOR_CHUNK", 16)
    monkeypatch.setattr(F, "_VECTOR_CHUNK", 16)
    np.testing.assert_allclose(static.encode(texts), emb, atol=1e-6)
    np.testing.assert_array_equal(F.prompt_features(texts), feats)


@pytest.mark.parametrize("max_tokens", [1, 37])
def test_static_paths_with_short_truncation(max_tokens: int) -> None:
    enc = StaticEncoder(max_tokens=max_tokens)  # most texts are cut: mixed ones one by one
    texts = _varied_texts(7)
    ref = _reference_embedding(enc, texts)
    np.testing.assert_allclose(enc.encode(texts), ref, atol=2e-6)
    np.testing.assert_allclose(np.vstack([enc.encode([t]) for t in texts]), ref, atol=2e-6)


@pytest.mark.parametrize("distinct", [1, 3, 8, 9, 30])  # str.replace up to 8 characters, translate above
def test_ascii_stand_in_replaces_like_one_translate(distinct: int) -> None:
    rng = random.Random(distinct)
    chars = [*"\xa0\u3000\u2003éÜ中の한—“”…😀ΣςЖжñø\u2028\x85ŁłçÇàèìòùâêî"][:distinct]
    text = "".join(rng.choice([*chars, "a", " ", "Q: ", "x."]) for _ in range(2000))
    assert len(set(text) - set(string.printable)) == distinct
    want = text.translate({ord(c): "\x1c" if c.isspace() else "\x01" for c in chars})
    assert F._ascii_stand_in(text) == want


# ---- estimator kernels: the code before the request-path streamlining (verbatim, for reference) --
def _ref_mlp_predict(est, X) -> np.ndarray:
    Z = np.concatenate((X.emb, X.extra), axis=1, dtype=np.float64)
    np.subtract(Z, est.mu_, out=Z)
    np.divide(Z, est.sd_, out=Z)
    p = est.params_
    A = Z.astype(np.float32) @ p["W1"]
    A += p["b1"]
    np.maximum(A, 0.0, out=A)
    S = A @ p["W2"]
    S += p["b2"]
    S *= np.float32(0.5)
    np.tanh(S, out=S)
    S += np.float32(1.0)
    S *= np.float32(0.5)
    return S.astype(np.float64)


def _ref_regime_predict(head, X) -> np.ndarray:
    from llmroute.estimators.regime import _softmax

    z = X.emb @ head.W_[: head.n_emb_].astype(X.emb.dtype)
    if X.extra.shape[1]:
        z = z + X.extra @ head.W_[head.n_emb_ :].astype(X.extra.dtype)
    return _softmax(np.asarray(z, dtype=np.float64) + head.b_)


def _ref_regime_mix(head, q: np.ndarray, probs: np.ndarray) -> np.ndarray:
    out = probs[:, 0:1] + probs[:, 1:2] * head.ability_[None, :]
    for k, seen, offset in head._mix_terms():
        pk = probs[:, 2 + k : 3 + k]
        if offset is None:
            out += pk * q
            continue
        ref = q[:, seen].mean(axis=1, keepdims=True)
        rel = np.clip(ref + offset, 0.0, 1.0)
        out += pk * np.where(seen[None, :], q, rel)
    return out


def test_shipped_router_kernels_equal_the_reference_bit_for_bit() -> None:
    """The MLP, the regime head and its mixture give the very same bits as before their request-path
    streamlining (cached weight casts, fused casts, np.mean / np.clip without their wrappers), on
    the shipped router, for batch sizes the gateway's micro-batcher produces."""
    from llmroute.router import Router, default_router_path

    r = Router.load(default_router_path())
    head, est = r.regime_head, r.estimator
    assert head is not None and any(offset is not None for _, _, offset in head._mix_terms())
    texts = [t for t in _varied_texts(5) if t] + [f"What is the capital of France? ({i})" for i in range(60)]
    rng = random.Random(5)
    rng.shuffle(texts)

    def bits(a: np.ndarray) -> bytes:
        assert a.dtype == np.float64
        return a.tobytes()

    k = 0
    for size in itertools.cycle([1, 2, 3, 5, 12, 31]):
        if k >= len(texts):
            break
        batch, k = texts[k : k + size], k + size
        X = r.featurize(batch)
        q = _ref_mlp_predict(est, X)
        assert bits(est.predict(X)) == bits(q)
        probs = _ref_regime_predict(head, X)
        assert bits(head.predict(X)) == bits(probs)
        np.minimum(np.maximum(q, 0.0, out=q), 1.0, out=q)
        want = _ref_regime_mix(head, q, probs)
        assert bits(head.mix(q.copy(), probs)) == bits(want)
        assert bits(r.estimate_quality(batch)) == bits(want)


def test_static_small_batches_equal_one_text_at_a_time_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, static: StaticEncoder
) -> None:
    """Below the vectorised path (the gateway's micro-batches) a batch pools each text with the same
    float32 operations as a batch of one (batched square roots and divisions): the same bits, so a
    request's estimate does not depend on which requests shared its batch."""
    import llmroute.embed.static as static_mod

    monkeypatch.setattr(static_mod, "_VECTOR_MIN_TEXTS", 10**9)  # the per-text path at any size
    texts = [*_varied_texts(6), "", " ", "[CLS]", "\x00"]
    one = np.vstack([static.encode([t]) for t in texts])
    assert not one[[texts.index("")]].any()
    for size in (2, 3, 7, 12, 40):
        got = np.vstack([static.encode(texts[i : i + size]) for i in range(0, len(texts), size)])
        assert got.tobytes() == one.tobytes()
