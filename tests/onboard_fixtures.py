"""Shared setup of the onboarding tests (`test_onboard.py`, `test_onboard_factor.py`,
`test_onboard_margin.py`): the synthetic train/test tables, a table restricted to some models, a
random profile of one model, and the 3-model linear router the new model is added to. The pytest
fixtures `tables`, `base` and `router` are imported by the test modules that use them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmroute.data import make_synthetic_table
from llmroute.data.table import RoutingTable
from llmroute.router import Router

KNOWN = {"tiny-1b", "code-13b", "big-70b"}  # the models the base router is trained on


def keep_models(table: RoutingTable, keep: set[str]) -> RoutingTable:
    """`table`'s rows of the models in `keep`."""
    df = table.df[table.df["model"].isin(keep)].reset_index(drop=True)
    return RoutingTable(df, source=table.source, prices=table.prices)


def draw_profile(table: RoutingTable, model: str, k: int, seed: int = 0) -> RoutingTable:
    """`model`'s rows on `k` prompts of `table` drawn at random (its profile)."""
    ids = np.random.default_rng(seed).choice(table.prompt_ids, k, replace=False).tolist()
    return keep_models(table.subset(ids), {model})


def synthetic_tables() -> tuple[RoutingTable, RoutingTable]:
    """(train, test): 240 and 120 synthetic prompts."""
    return make_synthetic_table(240, seed=1), make_synthetic_table(120, seed=2)


def fit_known(train: RoutingTable) -> Router:
    """The linear router of the `KNOWN` models on `train`."""
    return Router.fit(keep_models(train, KNOWN), estimator="linear", encoder="static-minilm", seed=0)


def assert_specialist_add(
    router: Router, test: RoutingTable, new: str, add: Callable[[], Any], min_share: float
) -> Any:
    """Route `test`'s prompts at trade-off 0, run `add()` (which adds `new`, the arithmetic
    specialist), route again: no decision changes off the arithmetic prompts, and `new` takes more
    than `min_share` of them. Returns what `add()` returned."""
    before = [d.model for d in router.route_batch(test.prompts, tradeoff=0.0)]
    out = add()
    after = [d.model for d in router.route_batch(test.prompts, tradeoff=0.0)]
    topics = np.array(test.tasks)
    elsewhere = topics != "arithmetic"
    assert [a for a, e in zip(after, elsewhere, strict=True) if e] == [
        b for b, e in zip(before, elsewhere, strict=True) if e
    ]
    picked = np.array([a == new for a in after])
    assert picked[topics == "arithmetic"].mean() > min_share
    return out


@pytest.fixture(scope="module")
def tables() -> tuple[RoutingTable, RoutingTable]:
    """`synthetic_tables()`, once per test module."""
    return synthetic_tables()


@pytest.fixture(scope="module")
def base(tables: tuple[RoutingTable, RoutingTable]) -> Router:
    """The `KNOWN` models' router on the training table, once per test module."""
    return fit_known(tables[0])


@pytest.fixture
def router(base: Router, tmp_path: Path) -> Router:
    """A fresh copy of the 3-model router (tests change it in place)."""
    return Router.load(base.save(tmp_path / "base.safetensors"))
