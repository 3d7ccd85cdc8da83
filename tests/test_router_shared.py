"""Router on real routing data (../shared/data; skips when absent): a held-out split beats
the single-model hull and the strong/weak score ranks RouteLLM prompts better than chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
pytestmark = pytest.mark.shared


def _table(name: str):
    if not (DATA / name / "data.parquet").exists():
        pytest.skip(f"{DATA / name} not present (shared routing data is optional)")
    from llmroute.data import load_table

    return load_table(DATA / name)


def _split(table, seed: int = 0, test_share: float = 0.25):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(table.n_prompts)
    k = int(table.n_prompts * test_share)
    ids = table.prompt_ids
    return table.subset([ids[i] for i in np.sort(perm[k:])]), table.subset(
        [ids[i] for i in np.sort(perm[:k])]
    )


def test_routerbench_held_out_beats_single_model_hull():
    from llmroute.eval.metrics import aiq, router_curve, single_model_points, upper_hull
    from llmroute.policy import tradeoff_grid
    from llmroute.router import Router

    train, test = _split(_table("routerbench_subset"))
    r = Router.fit(train, estimator="mf", encoder="static-minilm", seed=0)
    q, c = r.estimate(test.prompts)
    Q, C = test.quality_matrix(), test.cost_matrix()
    singles = single_model_points(Q, C)
    c_min, c_max = singles[:, 0].min(), singles[:, 0].max()
    curve = router_curve(Q, C, q, c, tradeoff_grid(float(np.median(c))))
    router_aiq = aiq(curve, c_min, c_max)
    hull_aiq = aiq(upper_hull(singles), c_min, c_max)
    assert router_aiq > hull_aiq + 0.005, (router_aiq, hull_aiq)
    # expected cost tracks the real cost per prompt
    ok = np.isfinite(C)
    assert np.corrcoef(c[ok], C[ok])[0, 1] > 0.8


def test_routellm_strong_weak_score_beats_chance():
    from llmroute.eval.metrics import apgr
    from llmroute.router import Router

    table = _table("routellm").filter_tasks("gsm8k")
    train, test = _split(table)
    r = Router.fit(train, estimator="linear", encoder="static-minilm", seed=0)
    assert r.policy["strong"] == "gpt-4-1106-preview"
    score = r.strong_weak_score(test.prompts)
    Q = test.quality_matrix()
    s, w = r.models.index("gpt-4-1106-preview"), r.models.index("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert apgr(score, Q[:, s], Q[:, w]) > 0.55
