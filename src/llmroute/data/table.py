"""The routing table: one row per (prompt, model) in the long format (see README: Library).

`RoutingTable` wraps a validated pandas DataFrame and exposes dense prompt x model matrices
(quality, cost, tokens) that estimators and evaluation work on. Missing cells stay NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("prompt_id", "prompt", "model", "quality")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "task",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "response",
    "latency_s",
    "split",
)


class TableError(ValueError):
    """A routing table (or price table) is malformed; the message names file, row and column."""


@dataclass(frozen=True)
class ModelPrice:
    """USD per one million input / output tokens for one model."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """Cost in USD of a call with the given token counts."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


@dataclass
class RoutingTable:
    """A validated long-format routing table.

    Rows are (prompt, model) outcomes. Prompts are ordered by first appearance; models are
    sorted by name. `quality_matrix()[i, j]` is the quality of model j on prompt i (NaN if the
    source has none).
    """

    df: pd.DataFrame
    source: str = "<memory>"
    prices: dict[str, ModelPrice] | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        source: str = "<memory>",
        prices: Mapping[str, ModelPrice] | None = None,
    ) -> RoutingTable:
        """Validate a long-format DataFrame (see `llmroute.data.validate`) and wrap it."""
        from llmroute.data.validate import validate

        clean = validate(df, source, prices=prices)
        return cls(clean, source=source, prices=dict(prices) if prices else None)

    # ---- axes ---------------------------------------------------------------------------
    @cached_property
    def prompt_ids(self) -> list[str]:
        """Prompt ids in first-appearance order."""
        return list(pd.unique(self.df["prompt_id"]))

    @cached_property
    def models(self) -> list[str]:
        """Model names, sorted."""
        return sorted(pd.unique(self.df["model"]).tolist())

    @cached_property
    def _prompt_rows(self) -> pd.DataFrame:
        first = self.df.drop_duplicates("prompt_id").set_index("prompt_id")
        return first.loc[self.prompt_ids]

    @cached_property
    def prompts(self) -> list[str]:
        """Prompt text per prompt id."""
        return self._prompt_rows["prompt"].astype(str).tolist()

    @cached_property
    def tasks(self) -> list[str]:
        """Task label per prompt ('' when the table has no task column)."""
        if "task" not in self.df.columns:
            return [""] * len(self.prompt_ids)
        return self._prompt_rows["task"].fillna("").astype(str).tolist()

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_models(self) -> int:
        return len(self.models)

    # ---- matrices -----------------------------------------------------------------------
    def matrix(self, column: str) -> np.ndarray:
        """Dense (n_prompts, n_models) float matrix of `column`; NaN where absent."""
        if column in self._cache:
            return self._cache[column]
        if column not in self.df.columns:
            out = np.full((self.n_prompts, self.n_models), np.nan)
        else:
            pivot = self.df.pivot(index="prompt_id", columns="model", values=column)
            pivot = pivot.reindex(index=self.prompt_ids, columns=self.models)
            out = pivot.to_numpy(dtype=float, na_value=np.nan)
        self._cache[column] = out
        return out

    def quality_matrix(self) -> np.ndarray:
        """(n_prompts, n_models) quality in [0, 1], NaN where missing."""
        return self.matrix("quality")

    def cost_matrix(self) -> np.ndarray:
        """(n_prompts, n_models) cost in USD.

        Uses `cost_usd` where present; else computes it from token counts and the price table;
        NaN where neither is available.
        """
        if "_cost" in self._cache:
            return self._cache["_cost"]
        cost = self.matrix("cost_usd").copy()
        if self.prices:
            tin, tout = self.matrix("input_tokens"), self.matrix("output_tokens")
            for j, m in enumerate(self.models):
                p = self.prices.get(m)
                if p is None:
                    continue
                calc = (tin[:, j] * p.input_per_mtok + tout[:, j] * p.output_per_mtok) / 1e6
                missing = np.isnan(cost[:, j])
                cost[missing, j] = calc[missing]
        self._cache["_cost"] = cost
        return cost

    def has_cost(self) -> bool:
        """True when at least one cost value is known."""
        return bool(np.isfinite(self.cost_matrix()).any())

    # ---- selection ----------------------------------------------------------------------
    def subset(self, prompt_ids: Sequence[str]) -> RoutingTable:
        """A new table with only the given prompts (in the given order)."""
        keep = set(prompt_ids)
        df = self.df[self.df["prompt_id"].isin(keep)]
        order = {p: i for i, p in enumerate(prompt_ids)}
        df = df.iloc[np.argsort(df["prompt_id"].map(order).to_numpy(), kind="stable")]
        return RoutingTable(df.reset_index(drop=True), source=self.source, prices=self.prices)

    def filter_tasks(self, prefix: str) -> RoutingTable:
        """Only prompts whose task starts with `prefix` (e.g. 'mmlu', 'gsm8k')."""
        if "task" not in self.df.columns:
            raise TableError(f"{self.source}: no 'task' column, cannot filter by task prefix {prefix!r}")
        df = self.df[self.df["task"].fillna("").astype(str).str.startswith(prefix)]
        if df.empty:
            raise TableError(f"{self.source}: no prompt has a task starting with {prefix!r}")
        return RoutingTable(df.reset_index(drop=True), source=self.source, prices=self.prices)

    def __len__(self) -> int:
        return len(self.df)
