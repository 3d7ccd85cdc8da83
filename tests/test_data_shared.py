"""The three ../shared/data sets load through load_table and match their meta.json (skip when absent)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llmroute.data import RoutingTable, load_prices, load_table

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
SETS = ["routellm", "routerbench_subset", "routerdc_7model"]

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module", params=SETS)
def loaded(request: pytest.FixtureRequest) -> tuple[str, RoutingTable, dict]:
    name = request.param
    folder = SHARED / name
    if not (folder / "data.parquet").is_file():
        pytest.skip(f"{folder}/data.parquet is absent (shared routing data not available on this machine)")
    meta = json.loads((folder / "meta.json").read_text())
    return name, load_table(folder), meta


def _sanity(meta: dict) -> dict:
    s = meta["sanity"]
    if "per_model" in s:
        return s
    return next(v for v in s.values() if isinstance(v, dict) and "per_model" in v)


def test_counts_match_meta(loaded: tuple[str, RoutingTable, dict]) -> None:
    _name, t, meta = loaded
    s = _sanity(meta)
    assert len(t) == s["n_rows"] == meta.get("rows", s["n_rows"])
    assert t.n_prompts == s["n_prompts"]
    assert t.n_models == s["n_models"]
    if "models" in meta:
        assert t.models == sorted(meta["models"])
    if "null_quality" in meta:
        assert int(t.df["quality"].isna().sum()) == meta["null_quality"]
    tasks = Counter(t.tasks)
    if "task_counts" in meta:
        assert dict(tasks) == meta["task_counts"]
    if "task_prompts" in meta:
        assert dict(tasks) == meta["task_prompts"]
    if "prompts_by_family" in meta:
        fam = Counter(task.split("/")[0] for task in t.tasks)
        assert dict(fam) == meta["prompts_by_family"]
    splits = meta.get("split_counts") or meta.get("split_prompts")
    if splits:
        per_prompt = t.df.drop_duplicates("prompt_id")["split"]
        assert dict(Counter(per_prompt)) == splits


def test_per_model_means_match_meta(loaded: tuple[str, RoutingTable, dict]) -> None:
    _name, t, meta = loaded
    s = _sanity(meta)
    q, c = t.quality_matrix(), t.cost_matrix()
    for entry in s["per_model"]:
        j = t.models.index(entry["model"])
        assert np.nanmean(q[:, j]) == pytest.approx(entry["mean_quality"], rel=1e-9)
        if s.get("cost_column") == "cost_usd":
            assert np.nanmean(c[:, j]) == pytest.approx(entry["mean_cost"], rel=1e-9)
    if s.get("cost_column") != "cost_usd":
        assert not t.has_cost()  # no cost in the source: stays missing, never zero


def test_prices_reproduce_costs(loaded: tuple[str, RoutingTable, dict]) -> None:
    name, t, _ = loaded
    price_file = SHARED / name / "prices.json"
    if not price_file.is_file():
        assert t.prices is None
        return
    prices = load_prices(price_file)
    assert t.prices == prices and set(prices) == set(t.models)
    tin, tout = t.matrix("input_tokens"), t.matrix("output_tokens")
    calc = np.stack([prices[m].cost(tin[:, j], tout[:, j]) for j, m in enumerate(t.models)], axis=1)
    given = t.matrix("cost_usd")
    ok = np.isfinite(given)
    assert ok.mean() > 0.99
    # routellm stores cost rounded to a few significant digits, RouterBench to full precision
    np.testing.assert_allclose(calc[ok], given[ok], rtol=2e-3, atol=1e-9)
