"""The evaluation runner and report on small synthetic tables (no shared data needed)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmroute.data.table import RoutingTable
from llmroute.eval.runner import EvalEncoder, evaluate, with_cost_fallback
from llmroute.policy import choose

TOPICS = {
    "math": ["integral", "derivative", "equation", "solve", "algebra", "number", "prime"],
    "code": ["python", "function", "compile", "bug", "loop", "variable", "class"],
    "chat": ["hello", "weather", "movie", "friend", "dinner", "holiday", "music"],
}


class HashEncoder:
    """Bag of hashed words, L2-normalised: enough to separate the synthetic topics."""

    name = "hash-test"
    dim = 64

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norm, 1e-12)

    def spec(self) -> dict:
        return {"name": self.name}


def synthetic_table(
    n: int = 150, models: Sequence[str] = ("cheap", "mid", "dear"), seed: int = 0, with_cost: bool = True
) -> RoutingTable:
    """Best model per prompt known by construction: cheap is right on chat, mid on code, dear on all."""
    rng = np.random.default_rng(seed)
    price = {"cheap": 1e-4, "mid": 5e-4, "dear": 2e-3, "weak": 1e-4, "strong": 2e-3}
    good = {
        "cheap": {"chat"},
        "mid": {"chat", "code"},
        "dear": {"chat", "code", "math"},
        "weak": {"chat"},
        "strong": {"chat", "code", "math"},
    }
    rows = []
    names = list(TOPICS)
    for i in range(n):
        topic = names[i % 3]
        words = rng.choice(TOPICS[topic], size=6).tolist()
        prompt = f"{' '.join(words)} #{i}"
        for m in models:
            q = 1.0 if topic in good[m] else 0.0
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "prompt": prompt,
                    "task": f"syn/{topic}",
                    "model": m,
                    "quality": q,
                    "cost_usd": price[m] * (1 + 0.1 * rng.random()) if with_cost else None,
                }
            )
    return RoutingTable(pd.DataFrame(rows), source="synthetic")


class CentroidRouter:
    """Tiny router for tests: per-model quality = mean quality of the 5 nearest training prompts."""

    def __init__(self, table: RoutingTable, encoder: object, seed: int) -> None:
        self.models = table.models
        self.encoder = encoder
        self.E = encoder.encode(table.prompts)
        self.Q = np.nan_to_num(table.quality_matrix(), nan=0.5)
        C = table.cost_matrix()
        self.c = np.nanmean(C, axis=0)

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        sims = self.encoder.encode(list(prompts)) @ self.E.T
        nn = np.argsort(-sims, axis=1)[:, :5]
        q = self.Q[nn].mean(axis=1)
        return q, np.broadcast_to(self.c, q.shape).copy()

    def route(self, prompt: str) -> str:
        q, c = self.estimate([prompt])
        return self.models[int(choose(q, c)[0])]


TOP_KEYS = {"dataset", "n_prompts", "models", "folds", "baselines", "routers"}
BASE_KEYS = {"single_hull_aiq", "oracle_aiq", "best_single"}
ROUTER_KEYS = {
    "aiq",
    "gap_closed",
    "cost_ratio_at_best_quality",
    "max_quality",
    "apgr",
    "cpt50",
    "cpt80",
    "decision_ms_p50",
    "decision_ms_p99",
    "curve",
}


def _check_schema(res: dict) -> None:
    assert set(res) >= TOP_KEYS
    assert set(res["baselines"]) >= BASE_KEYS
    assert set(res["baselines"]["best_single"]) == {"model", "quality", "cost"}
    for r in res["routers"].values():
        assert set(r) >= ROUTER_KEYS
        assert all(len(p) == 2 for p in r["curve"]) and len(r["curve"]) >= 50
    # JSON-clean: no NaN anywhere
    json.dumps(res, allow_nan=False)


def test_evaluate_schema_and_metrics_three_models(tmp_path: Path) -> None:
    table = synthetic_table()
    enc = HashEncoder()
    res = evaluate(
        table,
        routers=[("centroid", CentroidRouter)],
        folds=3,
        seed=0,
        encoder=enc,
        progress=False,
        dataset="synthetic",
        latency_prompts=10,
    )
    _check_schema(res)
    assert res["dataset"] == "synthetic" and res["n_prompts"] == 150 and res["folds"] == 3
    assert res["models"] == ["cheap", "dear", "mid"]
    assert res["cost_source"] == "cost_usd"
    r = res["routers"]["centroid"]
    # the topic is learnable: the router closes most of the gap, beats random
    assert r["gap_closed"] > 0.6
    assert r["aiq"] > res["baselines"]["random"]["aiq"]
    # random mixing of single models lies on the single-model hull in expectation (gap ~ 0; the
    # hull of a few noisy points is biased slightly upward)
    assert -0.1 < res["baselines"]["random"]["gap_closed"] < 0.25
    assert res["baselines"]["random"]["max_quality"] == pytest.approx(1.0)
    assert r["max_quality"] == pytest.approx(1.0)
    assert r["cost_ratio_at_best_quality"] < 0.8
    # multi-model: no APGR / CPT
    assert r["apgr"] is None and r["cpt50"] is None and r["cpt80"] is None
    assert r["decision_ms_p50"] > 0 and r["decision_ms_p99"] >= r["decision_ms_p50"]
    base = res["baselines"]
    assert base["best_single"]["model"] == "dear" and base["best_single"]["quality"] == pytest.approx(1.0)
    assert base["oracle_aiq"] >= r["aiq"] >= base["single_hull_aiq"]
    assert {s["model"] for s in base["singles"]} == set(res["models"])
    # embeddings: every prompt once, plus the warm-up (20) and timed (10) routes bypassing the cache
    assert enc.calls == 150 + 20 + 10


def test_evaluate_two_models_apgr(tmp_path: Path) -> None:
    table = synthetic_table(n=120, models=("weak", "strong"))
    res = evaluate(
        table,
        routers=[("centroid", CentroidRouter)],
        folds=4,
        encoder=HashEncoder(),
        progress=False,
        latency_prompts=0,
    )
    _check_schema(res)
    r = res["routers"]["centroid"]
    # the strong model wins on 2/3 of the prompts: the perfect ranking scores 1/3 + 1/3 = 0.667
    assert r["apgr"] > 0.6
    assert 0 <= r["cpt50"] <= r["cpt80"] <= 1
    assert r["decision_ms_p50"] is None
    assert res["baselines"]["strong"] == "strong"
    assert 0.2 < res["baselines"]["random"]["apgr"] < 0.8


def test_cost_fallback_params_b_and_unit() -> None:
    t = synthetic_table(n=30, with_cost=False)
    t2, note = with_cost_fallback(t)
    assert note.startswith("unit") and np.all(t2.cost_matrix() == 1.0)
    df = t.df.copy()
    df["params_b"] = df["model"].map({"cheap": 7.2, "mid": 7.2, "dear": 8.0})
    t3, note3 = with_cost_fallback(RoutingTable(df, source="x"))
    assert note3.startswith("params_b")
    assert t3.cost_matrix()[0].tolist() == [7.2, 8.0, 7.2]
    res = evaluate(
        RoutingTable(df, source="x"),
        routers=[("centroid", CentroidRouter)],
        folds=3,
        encoder=HashEncoder(),
        progress=False,
        latency_prompts=0,
    )
    assert res["cost_source"].startswith("params_b")
    _check_schema(res)


def test_cached_encoder_shares_and_bypasses() -> None:
    inner = HashEncoder()
    enc = EvalEncoder(inner)
    enc.prime(["a b", "c d", "a b"])
    assert inner.calls == 2
    x = enc.encode(["c d", "a b"])
    assert inner.calls == 2 and x.shape == (2, 64)
    assert np.allclose(x, inner.encode(["c d", "a b"]))
    enc.bypass = True
    enc.encode(["a b"])
    assert inner.calls == 5
    assert enc.spec() == inner.spec()


def test_evaluate_rejects_bad_arguments() -> None:
    t = synthetic_table(n=30)
    with pytest.raises(ValueError, match="folds"):
        evaluate(t, routers=[("c", CentroidRouter)], folds=1, encoder=HashEncoder(), progress=False)
    with pytest.raises(ValueError, match="duplicate"):
        evaluate(
            t, routers=[("c", CentroidRouter), ("c", CentroidRouter)], encoder=HashEncoder(), progress=False
        )


def test_write_report_files(tmp_path: Path) -> None:
    from llmroute.eval.report import write_report

    res = evaluate(
        synthetic_table(n=60),
        routers=[("centroid", CentroidRouter)],
        folds=3,
        encoder=HashEncoder(),
        progress=False,
        dataset="syn<1>",
        latency_prompts=5,
    )
    paths = write_report(res, tmp_path / "out")
    assert (
        json.loads(paths["json"].read_text())["routers"]["centroid"]["aiq"]
        == res["routers"]["centroid"]["aiq"]
    )
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and "centroid" in html
    assert "syn&lt;1&gt;" in html  # escaped
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"http", html)  # self-contained
    # several datasets -> one table each
    res2 = dict(res, dataset="second")
    paths = write_report([res, res2], tmp_path / "multi")
    data = json.loads(paths["json"].read_text())
    assert [d["dataset"] for d in data["datasets"]] == ["syn<1>", "second"]
    assert paths["html"].read_text().count("<h2>") == 2


def test_evaluate_real_routers_when_available() -> None:
    res = evaluate(
        synthetic_table(n=90), routers=("knn", "linear"), folds=3, progress=False, latency_prompts=5
    )
    _check_schema(res)
    for name in ("knn", "linear"):
        assert res["routers"][name]["gap_closed"] is not None
