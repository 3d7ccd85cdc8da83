"""Replay backend: answers from a routing table's recorded `response` column.

The request's conversation text (see `llmroute.gateway.routing.conversation_text`; for a single
user message, exactly its content) is looked up in the table among the rows of `replay_model`
(default: the model's `router_model`, else its name). A whole routed deployment can so be
evaluated offline with real model outputs. Token counts come from the table when present.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmroute.gateway.backends.base import BackendError
from llmroute.gateway.config import ModelConfig

__all__ = ["ReplayBackend", "ReplayIndex", "load_replay_index"]

ReplayIndex = dict[str, dict[str, tuple[str, int, int]]]  # model -> prompt -> (response, in_tok, out_tok)


def load_replay_index(path: Path) -> ReplayIndex:
    """model -> prompt text -> (response, input_tokens, output_tokens) from a long-format table."""
    import pyarrow.parquet as pq

    p = path / "data.parquet" if path.is_dir() else path
    if not p.exists():
        raise FileNotFoundError(f"replay table {p} not found")
    if p.suffix == ".parquet":
        cols = [
            c
            for c in ("prompt", "model", "response", "input_tokens", "output_tokens")
            if c in pq.read_schema(p).names
        ]
        df = pq.read_table(p, columns=cols).to_pandas()
    else:
        from llmroute.data import load_table

        df = load_table(str(p)).df
    if "response" not in df.columns:
        raise ValueError(f"replay table {p} has no 'response' column")
    index: ReplayIndex = {}
    tin = df["input_tokens"].fillna(0).astype(int).tolist() if "input_tokens" in df else [0] * len(df)
    tout = df["output_tokens"].fillna(0).astype(int).tolist() if "output_tokens" in df else [0] * len(df)
    for prompt, model, resp, i, o in zip(df["prompt"], df["model"], df["response"], tin, tout, strict=True):
        if resp is None:
            continue
        index.setdefault(str(model), {})[str(prompt)] = (str(resp), i, o)
    return index


class ReplayBackend:
    """Serves recorded responses of one model of a routing table."""

    def __init__(self, cfg: ModelConfig, index: ReplayIndex) -> None:
        self.cfg = cfg
        key = cfg.replay_model or cfg.router_model or cfg.name
        if key not in index:
            raise ValueError(
                f"models.{cfg.name}.replay_model: {key!r} not in replay table; has {sorted(index)}"
            )
        self.rows = index[key]

    async def start(self, session: Any) -> None:
        return None

    async def close(self) -> None:
        return None

    def _lookup(self, body: dict[str, Any]) -> tuple[str, int, int]:
        from llmroute.gateway.routing import conversation_text

        text = conversation_text(body.get("messages") or [])
        hit = self.rows.get(text) or self.rows.get(text.strip())
        if hit is None:
            raise BackendError(
                f"model {self.cfg.name!r}: prompt not found in the replay table (replay answers only recorded prompts)",
                status=404,
                retryable=False,
                fallback=False,
                code="replay_miss",
                etype="invalid_request_error",
            )
        return hit

    async def chat(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        resp, i, o = self._lookup(body)
        return {
            "id": "chatcmpl-replay",
            "object": "chat.completion",
            "created": 0,
            "model": self.cfg.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": resp},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o},
        }

    async def chat_stream(
        self, body: dict[str, Any], timeout_s: float
    ) -> AsyncIterator[list[dict[str, Any]]]:
        resp, i, o = self._lookup(body)
        base = {
            "id": "chatcmpl-replay",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.cfg.name,
        }
        out = [
            dict(
                base,
                choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
            )
        ]
        out += [
            dict(base, choices=[{"index": 0, "delta": {"content": resp[k : k + 32]}, "finish_reason": None}])
            for k in range(0, len(resp), 32)
        ]
        out.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        out.append(
            dict(
                base,
                choices=[],
                usage={"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o},
                _usage_only=not (body.get("stream_options") or {}).get("include_usage"),
            )
        )
        yield out
