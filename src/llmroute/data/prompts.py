"""Read a sample of prompts (e.g. your own traffic, for `llmroute calibrate`).

`load_prompts(path)` accepts:

- a table file that `read_frame` reads (`.jsonl` / `.ndjson`, `.csv`, `.json`, `.parquet`) with a
  `prompt` column; a long routing table (one row per prompt and model, with a `model` column)
  gives each prompt once (the first row of each `prompt_id`, else of each prompt text);
- any other file: plain text, one prompt per line (blank lines skipped).
"""

from __future__ import annotations

from pathlib import Path

from llmroute.data.table import TableError

__all__ = ["load_prompts"]

_TABLE_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".json", ".parquet", ".pq")


def load_prompts(path: str | Path) -> list[str]:
    """The prompts in `path` (see the module docstring). Raises TableError naming the file, and the
    line or row, when it cannot be read or holds no prompt."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"{p}: file not found")
    if p.suffix.lower() in _TABLE_SUFFIXES:
        prompts = _from_table(p)
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            line = p.read_bytes()[: e.start].count(b"\n") + 1
            raise TableError(f"{p}: line {line}: not UTF-8 text; re-save the file as UTF-8") from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise TableError(f"{p}: no prompts found (one per line, or a 'prompt' column)")
    return prompts


def _from_table(p: Path) -> list[str]:
    from llmroute.data.loaders import read_frame

    try:
        df = read_frame(p)
    except UnicodeDecodeError:
        raise TableError(f"{p}: not UTF-8 text; re-save the file as UTF-8") from None
    if "prompt" not in df.columns:
        cols = [c for c in df.columns if not c.startswith("_")]
        raise TableError(f"{p}: no 'prompt' column (columns: {cols})")
    bad = df["prompt"].map(lambda x: not isinstance(x, str))
    if bad.any():
        row = int(df.loc[bad.idxmax(), "_row"])
        raise TableError(f"{p}: row {row}: 'prompt' must be text")
    if "model" in df.columns:  # a long routing table: each prompt once
        df = df.drop_duplicates("prompt_id" if "prompt_id" in df.columns else "prompt")
    return [s for s in df["prompt"].tolist() if s.strip()]
