"""Everyday prompts labelled with the tier a careful person would pick (the project's own words).

The public routing tables are exam questions; what people send a gateway is mostly greetings,
simple facts, rewrites, formatting and short creative requests (tier ``easy``: any competent
model will do) and some proofs, multi-step maths, non-trivial code, systems design and long
analysis (tier ``hard``: worth a strong model). A few ``medium`` prompts sit in between.

Files are JSON Lines, one object per prompt: ``{"id", "prompt" | "messages", "category",
"tier"}`` (``messages``: an OpenAI-style conversation ending with a user turn).

- `load_everyday(path)`: one such file.
- `training_corpus()`: the corpus shipped in the package (``assets/everyday/*.jsonl``, written
  for the project by two writers in different voices: people using a consumer assistant, and
  employees and programs using a company assistant). It teaches a router's regime head which
  prompts are easy or hard (`llmroute.estimators.regime`). The dev set that measures routing on
  everyday traffic (``datasets/everyday/dev.jsonl`` in the repository, by a third writer) is
  not shipped and never used for training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmroute.data.table import TableError

__all__ = ["TIERS", "EverydayPrompt", "load_everyday", "training_corpus"]

TIERS: tuple[str, ...] = ("easy", "medium", "hard")


@dataclass(frozen=True)
class EverydayPrompt:
    """One labelled prompt: `text` is what a router reads (all turns joined)."""

    id: str
    text: str
    messages: list[dict[str, Any]]
    category: str
    tier: str
    source: str


def load_everyday(path: str | Path) -> list[EverydayPrompt]:
    """The prompts of one everyday JSONL file; errors name the file and line."""
    from llmroute.router import messages_text

    p = Path(path)
    if not p.is_file():
        raise TableError(f"{p}: file not found")
    out: list[EverydayPrompt] = []
    with p.open(encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TableError(f"{p}: line {no}: not JSON ({e.msg})") from None
            if obj.get("tier") not in TIERS:
                raise TableError(
                    f"{p}: line {no}: tier must be one of {list(TIERS)}, got {obj.get('tier')!r}"
                )
            if "messages" in obj:
                messages = obj["messages"]
            elif isinstance(obj.get("prompt"), str):
                messages = [{"role": "user", "content": obj["prompt"]}]
            else:
                raise TableError(f"{p}: line {no}: give 'prompt' (text) or 'messages' (a conversation)")
            try:
                text = messages_text(messages)
            except TypeError as e:
                raise TableError(f"{p}: line {no}: {e}") from None
            out.append(
                EverydayPrompt(
                    id=str(obj.get("id", f"{p.stem}-{no}")),
                    text=text,
                    messages=messages,
                    category=str(obj.get("category", "")),
                    tier=obj["tier"],
                    source=p.stem,
                )
            )
    if not out:
        raise TableError(f"{p}: no prompts")
    return out


def training_corpus() -> list[EverydayPrompt]:
    """The everyday prompts shipped in the package (see the module docstring)."""
    folder = Path(__file__).resolve().parent.parent / "assets" / "everyday"
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no everyday corpus in {folder} (is the package installed completely?)")
    return [x for f in files for x in load_everyday(f)]
