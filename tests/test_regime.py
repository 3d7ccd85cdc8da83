"""The regime head (llmroute.estimators.regime) and what it does to a router's decisions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from llmroute.data.everyday import TIERS, EverydayPrompt, load_everyday, training_corpus
from llmroute.data.table import TableError
from llmroute.estimators.base import Features
from llmroute.estimators.regime import RegimeHead, common_ability, support_sets
from llmroute.router import Router, default_router_path

ROOT = Path(__file__).resolve().parents[1]


# ---- the pieces ---------------------------------------------------------------------------------
def test_common_ability_uses_complete_rows_where_models_differ() -> None:
    Q = np.array(
        [[1, 1, 1]] * 60  # every model right: says nothing about who is stronger
        + [[1, 0, 0]] * 30
        + [[1, 1, 0]] * 30
        + [[0, 0, np.nan]] * 100,  # incomplete rows are left out
        dtype=float,
    )
    np.testing.assert_allclose(common_ability(Q), [1.0, 0.5, 0.0])
    # too few differing rows: all complete rows; too few complete rows: each model's own mean
    np.testing.assert_allclose(common_ability(Q, min_rows=61), [1.0, 0.75, 0.5])
    few = np.array([[1, np.nan], [0, 1], [np.nan, 1]], dtype=float)
    np.testing.assert_allclose(common_ability(few), [0.5, 1.0])


def test_support_sets_group_rows_by_observed_models() -> None:
    n = np.nan
    Q = np.array([[1, 0, 1]] * 50 + [[1, n, n]] * 40 + [[1, n, 0]] * 1, dtype=float)
    sets, row_set = support_sets(Q)
    assert sets.tolist() == [[True, False, False], [True, True, True]]
    assert row_set[:50].tolist() == [1] * 50 and row_set[50:90].tolist() == [0] * 40
    # the rare pattern (models 0 and 2) joins the set that covers both
    assert row_set[-1] == 1


def _clusters(n: int, d: int = 8, seed: int = 0) -> tuple[Features, np.ndarray]:
    """Three well-separated clusters labelled easy / hard / known:0."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:3] * 4
    lab = np.repeat(np.arange(3), n)
    emb = (centres[lab] + rng.normal(0, 0.5, (3 * n, d))).astype(np.float32)
    extra = rng.normal(0, 1, (3 * n, 2)).astype(np.float32)
    return Features(emb, extra), np.eye(3)[lab]


def test_head_learns_regimes_and_round_trips() -> None:
    X, P = _clusters(60)
    ability = np.array([0.9, 0.6])
    head = RegimeHead(C=1.0).fit(X, P, ability, np.array([[True, True]]))
    assert head.regimes == ["easy", "hard", "known:0"]
    prob = head.predict(X)
    assert prob.shape == (180, 3)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0)
    assert (prob.argmax(axis=1) == P.argmax(axis=1)).mean() > 0.95
    arrays, params = head.get_state()
    back = RegimeHead.from_state(arrays, json.loads(json.dumps(params)))
    np.testing.assert_allclose(back.predict(X), prob)


def test_head_chooses_C_by_holding_out_each_group() -> None:
    X, P = _clusters(40)
    groups = ["a", "b"] * 40 + [None] * 40  # known rows (None) always train
    head = RegimeHead(grid=(0.01, 1.0)).fit(
        X, P, np.array([0.9, 0.6]), np.array([[True, True]]), groups=groups
    )
    assert set(head.cv_scores_) == {"0.01", "1.0"} and head.C_ in (0.01, 1.0)


def test_mix_is_the_documented_mixture() -> None:
    head = RegimeHead()
    head.ability_ = np.array([0.9, 0.6, 0.5])
    head.supports_ = np.array([[True, True, True], [True, True, False]])
    q = np.array([[0.7, 0.4, 0.2]])
    one = lambda k: np.eye(4)[[k]]  # noqa: E731
    np.testing.assert_allclose(head.mix(q.copy(), one(0)), [[1, 1, 1]])  # easy: every model succeeds
    np.testing.assert_allclose(head.mix(q.copy(), one(1)), [[0.9, 0.6, 0.5]])  # hard: the abilities
    np.testing.assert_allclose(head.mix(q.copy(), one(2)), q)  # known with every model observed
    # known where only models 0 and 1 were observed: model 2 sits relative to them
    ref = (0.7 + 0.4) / 2 + 0.5 - (0.9 + 0.6) / 2
    np.testing.assert_allclose(head.mix(q.copy(), one(3)), [[0.7, 0.4, ref]])
    mixed = head.mix(q.copy(), np.array([[0.5, 0.25, 0.25, 0.0]]))
    np.testing.assert_allclose(mixed, 0.5 * 1 + 0.25 * head.ability_[None] + 0.25 * q)


def test_mix_follows_new_abilities_and_supports() -> None:
    """`mix` caches its per-set terms; a head given new arrays (a refit, an added or removed model)
    mixes with the new ones, and the same arrays give the same result."""
    head = RegimeHead()
    head.ability_ = np.array([0.9, 0.6, 0.5])
    head.supports_ = np.array([[True, True, False]])
    q = np.array([[0.7, 0.4, 0.2]])
    known = np.array([[0.0, 0.0, 1.0]])
    first = head.mix(q.copy(), known)
    np.testing.assert_allclose(first, [[0.7, 0.4, (0.7 + 0.4) / 2 + 0.5 - 0.75]])
    np.testing.assert_array_equal(head.mix(q.copy(), known), first)
    for _ in range(50):  # new arrays, whatever ids the allocator hands out
        head.ability_ = np.array([0.9, 0.6, 0.3])
        np.testing.assert_allclose(head.mix(q.copy(), known), [[0.7, 0.4, 0.55 + 0.3 - 0.75]])
        head.ability_ = np.array([0.9, 0.6, 0.5])
        np.testing.assert_allclose(head.mix(q.copy(), known), first)
    head.supports_ = np.array([[True, True, True]])  # the set now saw every model: q itself
    np.testing.assert_allclose(head.mix(q.copy(), known), q)
    head.ability_ = np.array([0.9, 0.6])  # a model removed
    head.supports_ = np.array([[True, False]])
    np.testing.assert_allclose(head.mix(q[:, :2].copy(), known), [[0.7, 0.7 + 0.6 - 0.9]])


def test_head_rejects_bad_input() -> None:
    X, P = _clusters(5)
    sup = np.array([[True, True]])
    with pytest.raises(ValueError, match=r"regime labels"):
        RegimeHead(C=1).fit(X, P[:, :2], np.array([0.9, 0.6]), sup)
    with pytest.raises(ValueError, match="summing to 1"):
        RegimeHead(C=1).fit(X, P * 2, np.array([0.9, 0.6]), sup)
    with pytest.raises(ValueError, match="ability"):
        RegimeHead(C=1).fit(X, P, np.array([1.5, 0.6]), sup)
    head = RegimeHead(C=1).fit(X, P, np.array([0.9, 0.6]), sup)
    with pytest.raises(ValueError, match="feature columns"):
        head.predict(Features(X.emb[:, :4], X.extra))


# ---- the everyday corpus -------------------------------------------------------------------------
def test_training_corpus_is_labelled_and_distinct_from_the_dev_set() -> None:
    corpus = training_corpus()
    assert len(corpus) > 1000
    assert {x.tier for x in corpus} == set(TIERS)
    assert all(x.text.strip() for x in corpus)

    def norm(t: str) -> str:
        return re.sub(r"\W+", " ", t.lower()).strip()

    seen = {norm(x.text) for x in corpus}
    for name in ("dev.jsonl", "check.jsonl"):  # the sets that measure routing share no prompt with it
        path = ROOT / "datasets" / "everyday" / name
        if path.exists():
            assert not {norm(x.text) for x in load_everyday(path)} & seen, name


def test_load_everyday_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": "hi", "tier": "easy"}\n{"prompt": "x", "tier": "trivial"}\n')
    with pytest.raises(TableError, match=r"x.jsonl: line 2: tier must be one of"):
        load_everyday(p)
    p.write_text('{"prompt": "hi", "tier": "easy"}\nnot json\n')
    with pytest.raises(TableError, match="line 2: not JSON"):
        load_everyday(p)
    p.write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "tier": "hard"}\n'
    )
    (item,) = load_everyday(p)
    assert item.text == "a\n\nb" and item.tier == "hard"


# ---- a router with a head ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_router() -> tuple[Router, object]:
    from llmroute.data.synthetic import make_synthetic_table

    table = make_synthetic_table(n_prompts=300, seed=0)
    return Router.fit(table, estimator="linear", seed=0), table


def _items(texts: list[str], tier: str) -> list[EverydayPrompt]:
    return [EverydayPrompt(f"{tier}{i}", t, [], "x", tier, "test") for i, t in enumerate(texts)]


def test_fit_regime_head_makes_easy_prompts_cheap_and_survives_save_load(
    small_router, tmp_path: Path
) -> None:
    router, table = small_router
    corpus = [x for x in training_corpus() if x.tier != "medium"][::3]
    head = router.fit_regime_head(table, corpus, C=0.03, max_known=400)
    assert router.regime_head is head and router.info["regime_head"]["everyday_prompts"] == len(corpus)
    prompts = ["hi there, how's it going?", "Prove that every bounded monotone sequence converges."]
    probs = router.regimes(prompts)
    assert probs[0, 0] > 0.5 and probs[1, 1] > 0.5  # easy, hard
    q, _ = router.estimate(prompts)
    assert q[0].min() > 0.9  # every model is expected to manage the greeting
    # at a trade-off where the proof is worth the strongest model, the greeting goes to the cheapest
    cheapest = router.models[int(np.argmin(router.estimate(prompts)[1][0]))]
    strongest = router.models[int(np.argmax(head.ability_))]
    assert router.route(prompts[0], tradeoff=30).model == cheapest
    assert router.route(prompts[1], tradeoff=30).model == strongest != cheapest
    path = router.save(tmp_path / "r.safetensors")
    back = Router.load(path)
    np.testing.assert_allclose(back.estimate(prompts)[0], q)
    np.testing.assert_allclose(back.regimes(prompts), probs)


def test_regime_head_needs_hand_made_features(small_router) -> None:
    from llmroute.data.synthetic import make_synthetic_table

    router, _ = small_router
    knn = Router.fit(make_synthetic_table(n_prompts=60, seed=1), estimator="knn", seed=0)
    with pytest.raises(ValueError, match="hand-made features"):
        knn.set_regime_head(router.regime_head)
    assert knn.regimes(["x"]) is None


# ---- the shipped router ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped() -> Router:
    return Router.load(default_router_path())


def test_shipped_router_has_a_head_and_knows_everyday_tiers(shipped: Router) -> None:
    assert shipped.regime_head is not None
    easy = ["hello, how are you?", "What is the capital of Japan?", "Translate 'thank you' into Italian."]
    hard = [
        "Prove that there are infinitely many primes.",
        "Design a multi-region database that survives a network partition.",
    ]
    probs = shipped.regimes(easy + hard)
    assert (probs[:3, 0] > 0.5).all() and (probs[3:, 1] > 0.5).all()
    # the strongest model's expected edge on a greeting is tiny, on a proof it is not
    q, _ = shipped.estimate(easy + hard)
    edge = q.max(axis=1) - q.min(axis=1)
    assert edge[:3].max() < 0.05 < edge[3:].min()
