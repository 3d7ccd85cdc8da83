"""The synthetic table (ground truth by construction) and split_table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmroute.data import (
    EXPECTED_QUALITY,
    SYNTHETIC_MODELS,
    SYNTHETIC_PRICES,
    SYNTHETIC_TOPICS,
    TOPIC_BEST,
    RoutingTable,
    TableError,
    make_synthetic_table,
    split_table,
    true_best,
)


def test_synthetic_shape_and_determinism() -> None:
    t = make_synthetic_table(n_prompts=40, seed=3)
    assert t.n_prompts == 40 and t.models == sorted(SYNTHETIC_MODELS) and len(t) == 160
    assert t.prices == SYNTHETIC_PRICES
    assert sorted(set(t.tasks)) == sorted(SYNTHETIC_TOPICS)
    assert all(t.tasks.count(topic) == 10 for topic in SYNTHETIC_TOPICS)  # balanced
    again = make_synthetic_table(n_prompts=40, seed=3)
    pd.testing.assert_frame_equal(t.df, again.df)
    other = make_synthetic_table(n_prompts=40, seed=4)
    assert not t.df["quality"].equals(other.df["quality"])
    q = t.quality_matrix()
    assert np.all((q >= 0) & (q <= 1)) and np.isfinite(t.cost_matrix()).all()


def test_ground_truth_is_cheapest_among_best() -> None:
    assert TOPIC_BEST == {
        "arithmetic": "math-7b",
        "code": "code-13b",
        "geography": "tiny-1b",
        "poetry": "big-70b",
    }
    for topic, best in TOPIC_BEST.items():
        q = EXPECTED_QUALITY[topic]
        top = max(q.values())
        assert q[best] == top and sorted(q.values())[-2] <= top - 0.05
        cheaper = [
            m
            for m in SYNTHETIC_MODELS
            if SYNTHETIC_PRICES[m].input_per_mtok < SYNTHETIC_PRICES[best].input_per_mtok
        ]
        assert all(q[m] < top for m in cheaper)


def test_true_best_is_learnable_from_the_data() -> None:
    """Per-topic mean observed quality, maximised (at trade-off 0 and a small one), recovers the truth."""
    t = make_synthetic_table(n_prompts=400, seed=0)
    truth = true_best(t)
    q, c = t.quality_matrix(), t.cost_matrix()
    tasks = np.array(t.tasks)
    picks = []
    for i, task in enumerate(tasks):
        mean_q = q[tasks == task].mean(axis=0)
        picks.append(t.models[int(np.argmax(mean_q))])
        assert int(np.argmax(mean_q - 10.0 * c[i])) == int(np.argmax(mean_q))
    assert picks == truth
    # the truth per row column agrees with the function
    assert t.df.drop_duplicates("prompt_id")["true_best"].tolist() == truth


def test_binary_and_missing_options() -> None:
    t = make_synthetic_table(n_prompts=80, seed=1, binary=True, missing_rate=0.25)
    q = t.quality_matrix()
    finite = q[np.isfinite(q)]
    assert set(np.unique(finite)) <= {0.0, 1.0}
    assert 0.1 < np.isnan(q).mean() < 0.4
    assert np.isfinite(t.cost_matrix()).all()  # cost stays known
    with pytest.raises(ValueError):
        make_synthetic_table(n_prompts=0)


def test_true_best_needs_synthetic_table() -> None:
    t = RoutingTable.from_frame(pd.DataFrame({"prompt": ["a"], "model": ["m"], "quality": [1.0]}))
    with pytest.raises(ValueError, match="not a synthetic table"):
        true_best(t)


# ---- splits ------------------------------------------------------------------------------------
def test_random_split_by_prompt_id() -> None:
    t = make_synthetic_table(n_prompts=50, seed=0)
    train, test = split_table(t, test_size=0.2, seed=7)
    assert test.n_prompts == 10 and train.n_prompts == 40
    assert set(train.prompt_ids).isdisjoint(test.prompt_ids)
    assert set(train.prompt_ids) | set(test.prompt_ids) == set(t.prompt_ids)
    # every prompt keeps all its model rows, order is the original one
    assert len(train) + len(test) == len(t)
    assert train.prompt_ids == [p for p in t.prompt_ids if p in set(train.prompt_ids)]
    assert train.prices == t.prices
    again = split_table(t, test_size=0.2, seed=7)[1]
    assert again.prompt_ids == test.prompt_ids
    assert split_table(t, test_size=0.2, seed=8)[1].prompt_ids != test.prompt_ids
    assert split_table(t, test_size=5, seed=0)[1].n_prompts == 5


def test_split_column_is_honoured() -> None:
    t = make_synthetic_table(n_prompts=12, seed=0)
    labels = {
        pid: ("train" if k % 3 else ("test" if k % 2 else "ood_test")) for k, pid in enumerate(t.prompt_ids)
    }
    labels[t.prompt_ids[1]] = None  # unlabelled: decided at random
    df = t.df.assign(split=t.df["prompt_id"].map(labels))
    tt = RoutingTable.from_frame(df, prices=t.prices)
    train, test = split_table(tt, test_size=0.5, seed=0)
    for pid, lab in labels.items():
        if lab == "train":
            assert pid in train.prompt_ids
        elif lab is not None:
            assert pid in test.prompt_ids
    assert t.prompt_ids[1] in set(train.prompt_ids) | set(test.prompt_ids)
    # ignoring the column gives a plain random split
    _, test2 = split_table(tt, test_size=0.25, seed=0, use_split_column=False)
    assert test2.n_prompts == 3


def test_split_errors() -> None:
    t = make_synthetic_table(n_prompts=10, seed=0)
    with pytest.raises(TableError, match="test_size"):
        split_table(t, test_size=1.5)
    with pytest.raises(TableError, match="test_size"):
        split_table(t, test_size=11)
    only_train = RoutingTable.from_frame(t.df.assign(split="train"))
    with pytest.raises(TableError, match="the test part of the split is empty"):
        split_table(only_train)
