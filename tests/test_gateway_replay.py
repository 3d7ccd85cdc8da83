"""Replay backend: a routed deployment answering with real recorded model outputs.

On generated data always; on ../shared/data/routerbench_subset when present (skips otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openai
import pandas as pd
import pytest

from conftest import run_gateway

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"


class ColumnRouter:
    """Estimates from a fixed per-model quality (enough to test the replay path)."""

    def __init__(self, quality: dict[str, float]) -> None:
        self.models = sorted(quality)
        self.q = np.array([quality[m] for m in self.models])

    def estimate(self, prompts: Any) -> tuple[np.ndarray, np.ndarray]:
        n = len(prompts)
        return np.tile(self.q, (n, 1)), np.full((n, len(self.models)), 1e-4)


def _config(table: Path, tmp: Path, models: dict[str, str]) -> dict[str, Any]:
    return {
        "models": [
            {"name": name, "provider": "replay", "replay_table": str(table), "router_model": col}
            for name, col in models.items()
        ],
        "aliases": {"llmroute/auto": {"router": "default"}},
        "store": {"url": f"sqlite:///{tmp}/t.sqlite"},
    }


def test_replay_on_generated_table(tmp_path: Path) -> None:
    rows = []
    for i in range(5):
        for m, q in (("big", 1.0), ("small", 0.0)):
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "prompt": f"question {i}?",
                    "model": m,
                    "quality": q,
                    "response": f"{m} says {i}",
                    "input_tokens": 7,
                    "output_tokens": 3,
                }
            )
    path = tmp_path / "t.parquet"
    pd.DataFrame(rows).to_parquet(path)
    cfg = _config(path, tmp_path, {"replay-big": "big", "replay-small": "small"})
    with run_gateway(cfg, routers={"default": ColumnRouter({"big": 0.9, "small": 0.2})}) as url:
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        raw = c.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": "question 3?"}]
        )
        r = raw.parse()
        assert raw.headers["x-llmroute-model"] == "replay-big"
        assert r.choices[0].message.content == "big says 3"
        assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 3
        s = c.chat.completions.create(
            model="replay-small", messages=[{"role": "user", "content": "question 1?"}], stream=True
        )
        assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == "small says 1"
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(
                model="replay-big", messages=[{"role": "user", "content": "never recorded"}]
            )
        assert "not found in the replay table" in str(e.value)


@pytest.mark.shared
def test_replay_routerbench_subset(tmp_path: Path) -> None:
    table = SHARED / "routerbench_subset"
    if not (table / "data.parquet").exists():
        pytest.skip(f"{table} is absent (shared routing data not available)")
    df = pd.read_parquet(table / "data.parquet", columns=["prompt", "model", "response"])
    models = {"gpt4": "gpt-4-1106-preview", "mistral": "mistralai/mistral-7b-chat"}
    cfg = _config(table, tmp_path, models)
    router = ColumnRouter({"gpt-4-1106-preview": 0.8, "mistralai/mistral-7b-chat": 0.5})
    with run_gateway(cfg, routers={"default": router}) as url:
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        sample = df[df["model"] == "gpt-4-1106-preview"].dropna().head(20)
        for prompt, response in zip(sample["prompt"], sample["response"], strict=True):
            raw = c.chat.completions.with_raw_response.create(
                model="llmroute/auto", messages=[{"role": "user", "content": prompt}]
            )
            assert raw.headers["x-llmroute-model"] == "gpt4"
            assert raw.parse().choices[0].message.content == response
        # a concrete replay model answers with its own recorded output
        row = df[df["model"] == "mistralai/mistral-7b-chat"].dropna().iloc[0]
        r = c.chat.completions.create(model="mistral", messages=[{"role": "user", "content": row["prompt"]}])
        assert r.choices[0].message.content == row["response"]
