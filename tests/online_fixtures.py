"""Shared setup of the online learner's decision tests (`test_online_batch_choice.py`,
`test_online_pick_rows.py`): a learner whose posterior has moved off its prior."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmroute.online import OnlineLearner


def moved_learner(models: list[str], **kw: Any) -> OnlineLearner:
    """A learner with a posterior moved off its prior by 60 outcomes (the same for the same args)."""
    L = OnlineLearner(models, 16, seed=3, **kw)
    data = np.random.default_rng(5)
    for _ in range(60):
        x = L.context(data.standard_normal(16))
        L.observe(x, int(data.integers(len(models))), float(data.normal(0.0, 0.3)), 0.001)
    return L
