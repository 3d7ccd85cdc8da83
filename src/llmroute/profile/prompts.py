"""Prompts to profile: read from a file or from the gateway's trace store, then a diverse subset.

`load_items(path)` reads a JSONL / CSV / JSON / Parquet file with a `prompt` column and, optional
per row: `prompt_id` (or `id`), `task`, `reference` (or `answer`), `grader` (a name of
`llmroute.profile.graders.GRADERS` or `judge`) and `tests` (for the code grader).

`items_from_traces(config)` reads the prompts the gateway stored (`trace.store_prompts: true`),
deduplicates them (same text after whitespace and case folding) and redacts personal data and
secrets first with the project's detector (`llmroute.guards.pii.PIIDetector`: emails, phones, cards,
IBANs, national ids, IPs, API keys), so no such text reaches another model or the output table.

`select_diverse(items, n, encoder)` picks `n` prompts that cover the set: k-means (k = n) over the
encoder's embeddings, and the prompt nearest each centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmroute.data.table import TableError

__all__ = ["PromptItem", "items_from_traces", "load_items", "select_diverse"]


@dataclass(frozen=True)
class PromptItem:
    """One prompt to profile, with what grades its answers."""

    prompt_id: str
    prompt: str
    task: str = ""
    reference: str | None = None
    grader: str | None = None
    tests: str | None = None


def _cell(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():  # CSV readers turn 42 into 42.0
        v = int(v)
    s = str(v)
    return s if s.strip() else None


def load_items(path: str | Path) -> list[PromptItem]:
    """The prompts of a JSONL / CSV / JSON / Parquet file (see the module docstring). Raises
    `TableError` naming the file and row when a prompt is missing or an id repeats."""
    from llmroute.data.loaders import read_frame
    from llmroute.data.validate import derive_prompt_id

    p = Path(path)
    df = read_frame(p)
    if "prompt" not in df.columns:
        cols = [c for c in df.columns if not str(c).startswith("_")]
        raise TableError(f"{p}: no 'prompt' column (columns: {cols}); one row per prompt, with 'prompt'")
    items: list[PromptItem] = []
    seen: dict[str, int] = {}
    for rec in df.to_dict("records"):
        row = int(rec.get("_row") or 0)
        prompt = _cell(rec.get("prompt"))
        if prompt is None:
            raise TableError(f"{p}: row {row}: empty 'prompt'")
        pid = _cell(rec.get("prompt_id")) or _cell(rec.get("id")) or derive_prompt_id(prompt)
        if pid in seen:
            raise TableError(f"{p}: row {row}: prompt_id {pid!r} repeats row {seen[pid]}; ids must be unique")
        seen[pid] = row
        items.append(
            PromptItem(
                prompt_id=pid,
                prompt=prompt,
                task=_cell(rec.get("task")) or "",
                reference=_cell(rec.get("reference")) or _cell(rec.get("answer")),
                grader=_cell(rec.get("grader")),
                tests=_cell(rec.get("tests")),
            )
        )
    if not items:
        raise TableError(f"{p}: no prompts")
    return items


def items_from_traces(config: Any, limit: int | None = None) -> list[PromptItem]:
    """Deduplicated, PII-redacted prompts from the trace store of a `GatewayConfig` (newest first).

    Raises `ValueError` when the config does not store prompts."""
    from llmroute.data.validate import derive_prompt_id
    from llmroute.gateway.store import open_store
    from llmroute.guards.pii import PIIDetector

    if not config.trace.store_prompts:
        raise ValueError(
            "the gateway config has trace.store_prompts: false, so the trace store holds no prompts; "
            "set it to true and let traffic flow, or give --prompts FILE"
        )
    store = open_store(config.store.url, base_dir=config.base_dir, store_prompts=True)
    try:
        records = store.query(limit=limit)
    finally:
        store.close_sync()
    pii = PIIDetector()
    seen: set[str] = set()
    items: list[PromptItem] = []
    for rec in records:
        text = rec.get("prompt")
        if not isinstance(text, str) or not text.strip():
            continue
        redacted, _ = pii.redact(text)
        key = " ".join(redacted.lower().split())
        if key in seen:
            continue
        seen.add(key)
        items.append(PromptItem(prompt_id=derive_prompt_id(redacted), prompt=redacted))
    if not items:
        raise ValueError(f"the trace store ({config.store.url.split('://', 1)[0]}) holds no prompts yet")
    return items


def select_diverse(items: list[PromptItem], n: int, encoder: Any = None, seed: int = 0) -> list[PromptItem]:
    """`n` items covering `items`: k-means with k = n over the normalised embeddings (`encoder`:
    an `llmroute.embed` encoder; default the static MiniLM the shipped router uses), then for each
    cluster the item nearest its centre. All items (in order) when there are at most `n`."""
    if n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    if len(items) <= n:
        return list(items)
    from sklearn.cluster import KMeans

    if encoder is None:
        from llmroute.embed import load_encoder

        encoder = load_encoder("static-minilm")
    x = np.asarray(encoder.encode([it.prompt for it in items]), dtype=np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    km = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(x)
    d = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)
    picked: list[int] = []
    for k in range(n):
        members = np.flatnonzero(km.labels_ == k)
        if members.size:
            picked.append(int(members[np.argmin(d[members])]))
    return [items[i] for i in sorted(set(picked))]
