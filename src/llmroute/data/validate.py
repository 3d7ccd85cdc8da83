"""Validation of long-format routing tables: the one place every loader goes through.

`validate(df, source)` checks a long-format DataFrame (one row per (prompt, model)) and returns a
normalised copy, or raises `TableError` with a message that names the file, the 1-based data row
and the column, e.g.::

    data.csv: row 3, column 'quality': value 1.5 is outside [0, 1]

Rules:

- required columns: `prompt`, `model`, `quality` (and `prompt_id`, which is derived when the
  column is absent, see `derive_prompt_id`);
- `prompt_id` is coerced to `str`; `prompt` must be non-empty text, the same for every row of one
  prompt_id; `model` must be non-empty;
- `quality` must be numeric (booleans become 0/1) and inside [0, 1]; missing cells stay NaN and are
  never filled with zeros;
- `cost_usd`, `latency_s` must be numeric and >= 0; `input_tokens`, `output_tokens` must be
  non-negative integers (nullable `Int64`);
- a (prompt_id, model) pair may appear only once;
- with a price table, every priced model must exist in the table (close matches are listed).

Loaders that convert another layout (RouterBench wide, RouteLLM CSVs) keep the origin of every
long row in two hidden columns so the messages still point into the user's file: `_file` (file
name) and `_row` (1-based data row there). `source_columns` maps a long column to the name of the
column in the source file, as a template over the row's model (e.g. ``{"quality": "{model}"}``).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from llmroute.data.table import ModelPrice, TableError

__all__ = [
    "HIDDEN_COLUMNS",
    "MISSING_STRINGS",
    "derive_prompt_id",
    "user_columns",
    "validate",
    "validate_prices_against_models",
]

#: Cell texts that count as missing in numeric columns (case-insensitive, stripped).
MISSING_STRINGS: frozenset[str] = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>"})

_MAX_LISTED = 5
_NONNEG_FLOAT = ("cost_usd", "latency_s")
_NONNEG_INT = ("input_tokens", "output_tokens")
_TEXT_OPTIONAL = ("task", "split", "response")
#: Helper columns the loaders add (origin file and 1-based row); never shown to users.
HIDDEN_COLUMNS: tuple[str, ...] = ("_file", "_row")
_HIDDEN = HIDDEN_COLUMNS


def user_columns(columns: Iterable[object]) -> list[str]:
    """Column names as the user wrote them: the loaders' helper columns (`HIDDEN_COLUMNS`) left out.

    Every message that lists a table's columns goes through this.
    """
    return [str(c) for c in columns if str(c) not in HIDDEN_COLUMNS]


def derive_prompt_id(prompt: str) -> str:
    """Stable prompt id for a table without one: ``"p-"`` + first 16 hex digits of SHA-256(prompt).

    The hash is over the exact UTF-8 prompt text, so the same text always gets the same id across
    runs, machines and file formats; two rows with the same text share the id.
    """
    return "p-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _where(df: pd.DataFrame, positions: Iterable[int], source: str) -> tuple[str, list[str]]:
    """File name of the first given row, and a label per row ('12', or 'other.csv:12')."""
    pos = list(positions)
    files = df["_file"].iloc[pos].astype(str).tolist() if "_file" in df.columns else [source] * len(pos)
    rows = df["_row"].iloc[pos].tolist() if "_row" in df.columns else [p + 1 for p in pos]
    head = files[0] if files else source
    return head, [str(r) if f == head else f"{f}:{r}" for f, r in zip(files, rows, strict=True)]


def _fail(
    df: pd.DataFrame,
    mask: np.ndarray,
    column: str,
    what: str,
    source: str,
    source_columns: Mapping[str, str] | None,
    values: pd.Series | None = None,
) -> None:
    """Raise a TableError for the rows where `mask` is True (names up to five of them)."""
    bad = np.flatnonzero(mask)
    if bad.size == 0:
        return
    shown = bad[:_MAX_LISTED]
    file, rows = _where(df, shown, source)
    col = f"column {column!r}"
    if source_columns and column in source_columns and "model" in df.columns:
        models = df["model"].iloc[shown].astype(str)
        src = sorted({source_columns[column].format(model=m) for m in models})
        col += " (source column " + ", ".join(repr(s) for s in src) + ")"
    where = f"row {rows[0]}" if len(rows) == 1 else "rows " + ", ".join(rows)
    if values is not None:
        vals = [repr(_plain(v)) for v in values.iloc[shown]]
        what += f" (value {vals[0]})" if len(vals) == 1 else f" (values {', '.join(vals)})"
    more = f" (and {bad.size - shown.size} more)" if bad.size > shown.size else ""
    raise TableError(f"{file}: {where}{more}, {col}: {what}")


def _plain(v: object) -> object:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _is_missing(series: pd.Series) -> np.ndarray:
    """True where a cell is missing: NaN/None, or a text in MISSING_STRINGS."""
    miss = series.isna().to_numpy()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        txt = series.astype(str).str.strip().str.lower()
        miss = miss | txt.isin(MISSING_STRINGS).to_numpy()
    return miss


def _to_float(
    df: pd.DataFrame, column: str, source: str, source_columns: Mapping[str, str] | None
) -> pd.Series:
    """Numeric float64 view of a column; booleans become 0/1; non-numeric text is an error."""
    s = df[column]
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("float64")
    if pd.api.types.is_numeric_dtype(s.dtype):
        return pd.Series(s.to_numpy(dtype="float64", na_value=np.nan), index=s.index)
    missing = _is_missing(s)
    obj = s.astype(object)
    # booleans and their text forms (RouteLLM writes True/False)
    mapped = obj.map(
        lambda v: (
            float(v)
            if isinstance(v, bool | np.bool_)
            else {"true": 1.0, "false": 0.0}.get(v.strip().lower(), v)
            if isinstance(v, str)
            else v
        )
    )
    num = pd.to_numeric(mapped.where(~missing, np.nan), errors="coerce").astype("float64")
    bad = num.isna().to_numpy() & ~missing
    _fail(df, bad, column, "not a number", source, source_columns, s)
    return num


def validate(
    df: pd.DataFrame,
    source: str = "<memory>",
    *,
    prices: Mapping[str, ModelPrice] | None = None,
    prices_source: str = "price table",
    source_columns: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Check a long-format routing table and return a normalised copy.

    Args:
        df: one row per (prompt, model); see the module docstring for the columns.
        source: file name used in error messages.
        prices: optional price table; every model it names must be in `df`.
        prices_source: file name of the price table, for messages.
        source_columns: long column -> source column template (``"{model}|total_cost"``) so that
            messages about converted layouts name the user's column.

    Returns:
        A new DataFrame: `prompt_id`, `prompt`, `model` as str; `quality`, `cost_usd`,
        `latency_s` as float64 (NaN where missing); token counts as nullable Int64; the hidden
        origin columns `_file` / `_row` removed; index reset. Other columns are kept as they are.

    Raises:
        TableError: naming the file, the 1-based data row and the column of the first problems.
    """
    if not isinstance(df, pd.DataFrame):
        raise TableError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    df = df.reset_index(drop=True)
    cols = [str(c) for c in df.columns]
    if len(set(cols)) != len(cols):
        dup = sorted({c for c in cols if cols.count(c) > 1 and c not in HIDDEN_COLUMNS})
        raise TableError(f"{source}: duplicate column name(s) {', '.join(repr(c) for c in dup)}")
    df.columns = cols
    need = ["prompt", "model", "quality"]
    missing_cols = [c for c in need if c not in df.columns]
    if missing_cols:
        shown = user_columns(cols)
        raise TableError(
            f"{source}: missing required column(s) {', '.join(repr(c) for c in missing_cols)}; "
            f"found {', '.join(repr(c) for c in shown) or 'no columns'}. A long-format routing table "
            "needs prompt_id (optional), prompt, model, quality"
        )
    if df.empty:
        raise TableError(f"{source}: the table has no rows")
    out = df.copy()

    # prompt text: present, non-empty
    prompt_missing = out["prompt"].isna().to_numpy()
    prompt_txt = _as_text(out["prompt"], prompt_missing)
    _fail(
        out,
        prompt_missing | (prompt_txt.str.strip() == "").to_numpy(),
        "prompt",
        "empty prompt text",
        source,
        source_columns,
    )
    out["prompt"] = prompt_txt

    # prompt_id: coerce to str, or derive from the prompt text
    if "prompt_id" not in out.columns:
        out["prompt_id"] = out["prompt"].map(derive_prompt_id)
    else:
        pid = out["prompt_id"]
        pid_missing = pid.isna().to_numpy()
        pid_txt = _as_text(pid, pid_missing)
        _fail(
            out,
            pid_missing | (pid_txt.str.strip() == "").to_numpy(),
            "prompt_id",
            "empty prompt_id",
            source,
            source_columns,
        )
        out["prompt_id"] = pid_txt

    # model: present, non-empty
    model_missing = out["model"].isna().to_numpy()
    model_txt = _as_text(out["model"], model_missing).str.strip()
    _fail(
        out, model_missing | (model_txt == "").to_numpy(), "model", "empty model name", source, source_columns
    )
    out["model"] = model_txt

    # quality in [0, 1], NaN allowed
    q = _to_float(out, "quality", source, source_columns)
    _fail(
        out,
        ~np.isfinite(q.to_numpy()) & q.notna().to_numpy(),
        "quality",
        "not finite",
        source,
        source_columns,
        q,
    )
    bad = ((q < 0) | (q > 1)).to_numpy()
    _fail(out, bad, "quality", "quality outside [0, 1]", source, source_columns, out["quality"])
    out["quality"] = q

    for col in _NONNEG_FLOAT:
        if col in out.columns:
            v = _to_float(out, col, source, source_columns)
            _fail(out, (v < 0).to_numpy(), col, "negative", source, source_columns, out[col])
            _fail(out, np.isinf(v.to_numpy()), col, "not finite", source, source_columns, out[col])
            out[col] = v
    for col in _NONNEG_INT:
        if col in out.columns:
            v = _to_float(out, col, source, source_columns)
            arr = v.to_numpy()
            _fail(out, arr < 0, col, "negative", source, source_columns, out[col])
            finite = np.isfinite(arr)
            _fail(out, ~finite & ~np.isnan(arr), col, "not finite", source, source_columns, out[col])
            frac = np.zeros(arr.shape, dtype=bool)
            frac[finite] = arr[finite] != np.round(arr[finite])
            _fail(out, frac, col, "not a whole number of tokens", source, source_columns, out[col])
            ints = np.where(finite, arr, 0).astype("int64")
            out[col] = pd.arrays.IntegerArray(ints, ~finite)
    for col in _TEXT_OPTIONAL:
        if col in out.columns and not pd.api.types.is_string_dtype(out[col].dtype):
            s = out[col]
            out[col] = s.astype(object).where(s.notna(), None).map(lambda v: v if v is None else str(v))

    # one row per (prompt_id, model)
    dup = out.duplicated(["prompt_id", "model"], keep=False).to_numpy()
    if dup.any():
        first = np.flatnonzero(dup)
        key = (out["prompt_id"].iloc[first[0]], out["model"].iloc[first[0]])
        same = np.flatnonzero(
            dup & (out["prompt_id"] == key[0]).to_numpy() & (out["model"] == key[1]).to_numpy()
        )
        file, rows = _where(out, same, source)
        n_pairs = out[dup].drop_duplicates(["prompt_id", "model"]).shape[0]
        more = f" ({n_pairs - 1} more duplicated pair(s))" if n_pairs > 1 else ""
        raise TableError(
            f"{file}: rows {', '.join(rows)}, columns 'prompt_id', 'model': duplicate (prompt_id, model) "
            f"pair ({key[0]!r}, {key[1]!r}){more}; each prompt may have one row per model"
        )

    # one prompt text per prompt_id
    n_text = out.groupby("prompt_id", sort=False)["prompt"].nunique()
    if (n_text > 1).any():
        pid = n_text.index[(n_text > 1).to_numpy()][0]
        pos = np.flatnonzero((out["prompt_id"] == pid).to_numpy())
        texts = out["prompt"].iloc[pos]
        other = pos[np.flatnonzero((texts != texts.iloc[0]).to_numpy())[0]]
        file, rows = _where(out, [pos[0], other], source)
        raise TableError(
            f"{file}: rows {', '.join(rows)}, column 'prompt': prompt_id {pid!r} has different prompt "
            "texts; a prompt_id must name one prompt"
        )

    if prices:
        validate_prices_against_models(prices, out["model"].unique().tolist(), prices_source, source)

    out = out.drop(columns=[c for c in _HIDDEN if c in out.columns])
    lead = ["prompt_id", "prompt", "task", "model", "quality", "cost_usd", "input_tokens", "output_tokens"]
    order = [c for c in lead if c in out.columns] + [c for c in out.columns if c not in lead]
    return out[order].reset_index(drop=True)


def _as_text(s: pd.Series, missing: np.ndarray) -> pd.Series:
    """Column as str dtype, '' where missing; integral floats (CSV readers turn 7 into 7.0) lose '.0'."""
    if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
        return s.fillna("") if missing.any() else s
    if pd.api.types.is_integer_dtype(s.dtype) and not missing.any():
        return s.astype(str)
    return s.astype(object).where(~missing, "").map(_id_str).astype(str)


def _id_str(v: object) -> str:
    """prompt_id as text; integral floats (CSV readers turn 7 into 7.0) lose the '.0'."""
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


def validate_prices_against_models(
    prices: Mapping[str, ModelPrice], models: Iterable[str], prices_source: str, source: str
) -> None:
    """Raise TableError when the price table names a model that the routing table lacks."""
    have = sorted(set(models))
    unknown = [m for m in prices if m not in set(have)]
    if not unknown:
        return
    parts = []
    for m in unknown[:_MAX_LISTED]:
        close = difflib.get_close_matches(m, have, n=3, cutoff=0.5)
        hint = f" (close matches: {', '.join(repr(c) for c in close)})" if close else " (no close match)"
        parts.append(f"{m!r}{hint}")
    more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
    raise TableError(
        f"{prices_source}: price table names model(s) that {source} lacks: {'; '.join(parts)}{more}. "
        f"Models in the table: {', '.join(repr(m) for m in have)}"
    )
