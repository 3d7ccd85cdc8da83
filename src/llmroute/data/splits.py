"""Train/test splits of routing tables by prompt_id (never splitting one prompt's rows)."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

from llmroute.data.table import RoutingTable, TableError

__all__ = ["split_table"]


def split_table(
    table: RoutingTable,
    test_size: float | int = 0.2,
    seed: int = 0,
    *,
    use_split_column: bool = True,
    train_values: Collection[str] = ("train",),
) -> tuple[RoutingTable, RoutingTable]:
    """Split a table into (train, test) by prompt_id.

    When the table has a `split` column and `use_split_column` is true, it is honoured: prompts
    whose split is in `train_values` go to train, every other labelled prompt ("test", "ood_test",
    "val"...) to test; prompts with no label are split at random like below. Otherwise a random
    share `test_size` (a float in (0, 1), or an int count) of the prompt_ids, drawn with `seed`,
    goes to test. Both parts keep the original prompt order and the price table.

    Raises:
        TableError: when a part would be empty or `test_size` is out of range.
    """
    ids = table.prompt_ids
    n = len(ids)
    is_test = np.zeros(n, dtype=bool)
    undecided = np.ones(n, dtype=bool)
    if use_split_column and "split" in table.df.columns:
        labels = table.df.drop_duplicates("prompt_id").set_index("prompt_id")["split"].reindex(ids)
        known = labels.notna().to_numpy() & (labels.astype(str).str.strip() != "").to_numpy()
        is_test[known] = ~labels[known].astype(str).isin(set(train_values)).to_numpy()
        undecided = ~known
    m = int(undecided.sum())
    if m:
        if isinstance(test_size, bool) or not isinstance(test_size, int | float | np.integer | np.floating):
            raise TableError(f"{table.source}: test_size must be a number, got {test_size!r}")
        if isinstance(test_size, int | np.integer):
            k = int(test_size)
            if not 0 <= k <= m:
                raise TableError(f"{table.source}: test_size={k} prompts but only {m} to split")
        else:
            if not 0.0 < float(test_size) < 1.0:
                raise TableError(f"{table.source}: test_size must be in (0, 1) or a count, got {test_size}")
            k = round(float(test_size) * m)
            if m >= 2:
                k = min(max(k, 1), m - 1)
        pos = np.flatnonzero(undecided)
        chosen = np.random.default_rng(seed).permutation(pos)[:k]
        is_test[chosen] = True
    train_ids = [p for p, t in zip(ids, is_test, strict=True) if not t]
    test_ids = [p for p, t in zip(ids, is_test, strict=True) if t]
    if not train_ids or not test_ids:
        which = "train" if not train_ids else "test"
        raise TableError(f"{table.source}: the {which} part of the split is empty ({n} prompts)")
    return table.subset(train_ids), table.subset(test_ids)


def split_labels(table: RoutingTable) -> pd.Series:
    """The `split` label per prompt_id (NaN where unlabelled); empty Series without the column."""
    if "split" not in table.df.columns:
        return pd.Series(dtype=object)
    return table.df.drop_duplicates("prompt_id").set_index("prompt_id")["split"].reindex(table.prompt_ids)
