"""Loaders: read routing tables in the long format and in the layouts of RouterBench and RouteLLM.

`load_table(path)` detects the file format from the suffix and the layout from the columns:

- **long** (the README's routing tables): a `model` column, one row per (prompt, model):
  `prompt_id, prompt, task, model, quality, cost_usd, input_tokens, output_tokens` (+ `response`,
  `latency_s`, `split`, any extra column). Parquet, CSV, JSONL (one object per line) or JSON (a list of objects).
- **routerbench** (RouterBench's wide layout, also used by RouterDC's CSVs): one row per prompt,
  a quality column named after each model, `<model>|total_cost`, `<model>|model_response`, plus
  `sample_id`, `prompt`, `eval_name`. Prompts / responses stored as ``str(list)`` of parts are
  joined. Repeated sample_ids get ``#1``, ``#2``... on their second, third... occurrence. Pickle
  (`.pkl`) is read only when you pass such a file explicitly, because unpickling runs code from the
  file: only load pickles you trust. Directory scans skip pickles.
- **routellm** (RouteLLM's per-prompt correctness CSVs, e.g. `mmlu_<subject>.csv`,
  `gsm8k_responses.csv`): a `prompt` column, one True/False column per model, optionally
  `<model>_response`. The task comes from the file name (`mmlu_anatomy.csv` -> `mmlu/anatomy`,
  `gsm8k_responses.csv` -> `gsm8k`), the prompt_id is ``<task>/<0-based row>``. Every column other
  than prompt, prompt_id, task, split and the response columns is taken as a model.

A directory holding `data.parquet` loads like ``../shared/data/<set>`` (with `prices.json` beside
it when present). Any other directory loads every `.parquet/.csv/.jsonl/.ndjson/.json` file in it
(sorted by name; `prices.*` and `meta.json` are skipped) and concatenates them.

Tables without a prompt_id get a stable one from a hash of the prompt text
(`llmroute.data.validate.derive_prompt_id`). All paths end in `validate`, so every error names the
file, the 1-based data row (for JSONL: the line number) and the column.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from llmroute.data.encoding import encoding_error
from llmroute.data.prices import load_prices
from llmroute.data.table import ModelPrice, RoutingTable, TableError
from llmroute.data.validate import HIDDEN_COLUMNS, derive_prompt_id, user_columns, validate

__all__ = [
    "FILE_FORMATS",
    "LAYOUTS",
    "detect_layout",
    "load_table",
    "read_frame",
    "to_long",
]

LAYOUTS: tuple[str, ...] = ("long", "routerbench", "routellm")
FILE_FORMATS: tuple[str, ...] = ("parquet", "csv", "jsonl", "json", "pickle")

_SUFFIX_FORMAT = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".pkl": "pickle",
    ".pickle": "pickle",
}
_RB_SUFFIXES = ("|total_cost", "|model_response")
_TEXT_COLUMNS = ("prompt_id", "prompt", "model", "task", "split", "response", "sample_id", "eval_name")
_RL_META = ("prompt", "prompt_id", "task", "split", "index")


# ---- reading files --------------------------------------------------------------------------
def _file_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    f = _SUFFIX_FORMAT.get(path.suffix.lower())
    if f is None:
        raise TableError(
            f"{path}: cannot tell the file format from suffix {path.suffix!r}; use one of "
            f"{', '.join(sorted(_SUFFIX_FORMAT))} or pass fmt= (one of {', '.join(FILE_FORMATS)})"
        )
    return f


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        header = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise TableError(f"{path}: the file is empty") from None
    except UnicodeDecodeError:
        raise encoding_error(path) from None
    text = {
        c: str
        for c in header
        if c in _TEXT_COLUMNS or str(c).endswith("|model_response") or str(c).endswith("_response")
    }
    try:
        # keep_default_na=False: a prompt reading "NA" or "null" stays text; empty cells are missing.
        return pd.read_csv(path, dtype=text, keep_default_na=False, na_values=[""])
    except UnicodeDecodeError:
        raise encoding_error(path) from None
    except (pd.errors.ParserError, ValueError) as e:
        raise TableError(f"{path}: cannot parse CSV ({e})") from None


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The records of a JSON-lines file and the 1-based line number of each."""
    records: list[dict] = []
    lines: list[int] = []
    try:
        # utf-8-sig: a byte-order mark some editors write is not part of the first record
        with path.open(encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TableError(
                        f"{path}: row {lineno}: invalid JSON ({e.msg} at column {e.colno})"
                    ) from None
                if not isinstance(obj, dict):
                    raise TableError(
                        f"{path}: row {lineno}: expected a JSON object, got {type(obj).__name__}"
                    )
                records.append(obj)
                lines.append(lineno)
    except UnicodeDecodeError:
        raise encoding_error(path) from None
    df = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    return df, lines


def _read_json(path: Path) -> pd.DataFrame:
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise encoding_error(path) from None
    except json.JSONDecodeError as e:
        raise TableError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("rows"), list):
        obj = obj["rows"]
    if isinstance(obj, list):
        bad = next((i for i, r in enumerate(obj) if not isinstance(r, dict)), None)
        if bad is not None:
            raise TableError(f"{path}: row {bad + 1}: expected a JSON object, got {type(obj[bad]).__name__}")
        return pd.DataFrame.from_records(obj)
    if isinstance(obj, dict) and all(isinstance(v, list) for v in obj.values()):
        try:
            return pd.DataFrame(obj)
        except ValueError as e:
            raise TableError(f"{path}: columns of different lengths ({e})") from None
    raise TableError(f"{path}: expected a JSON list of row objects (or one object per line in .jsonl)")


def read_frame(path: str | Path, file_format: str | None = None) -> pd.DataFrame:
    """Read one file into a DataFrame as stored (no layout conversion, no validation).

    Adds the hidden origin columns `_file` (the path) and `_row` (1-based data row; line number for
    JSONL). `file_format` is one of FILE_FORMATS; by default it comes from the suffix.
    """
    p = Path(path)
    if not p.is_file():
        raise TableError(f"{p}: file not found")
    f = _file_format(p, file_format)
    rows: list[int] | None = None
    if f == "parquet":
        try:
            df = pd.read_parquet(p)
        except Exception as e:  # pyarrow raises several types for bad files
            raise TableError(f"{p}: cannot read Parquet ({type(e).__name__}: {e})") from None
    elif f == "csv":
        df = _read_csv(p)
    elif f == "jsonl":
        df, rows = _read_jsonl(p)
    elif f == "json":
        df = _read_json(p)
    elif f == "pickle":
        if p.suffix.lower() not in (".pkl", ".pickle"):
            raise TableError(f"{p}: refusing to unpickle a file without a .pkl/.pickle suffix")
        df = pd.read_pickle(p)
        if not isinstance(df, pd.DataFrame):
            raise TableError(f"{p}: the pickle holds a {type(df).__name__}, not a pandas DataFrame")
    else:
        raise TableError(f"{p}: unknown file format {f!r}; use one of {', '.join(FILE_FORMATS)}")
    df = df.reset_index(drop=True)
    df.columns = [str(c) for c in df.columns]
    clash = [c for c in HIDDEN_COLUMNS if c in df.columns]
    if clash:
        raise TableError(
            f"{p}: column {clash[0]!r} is a name llmroute reserves for its own row bookkeeping; "
            "rename that column in the file"
        )
    df["_row"] = rows if rows is not None else np.arange(1, len(df) + 1)
    df["_file"] = str(p)
    return df


# ---- layouts --------------------------------------------------------------------------------
def _routerbench_models(columns: list[str]) -> list[str]:
    models: list[str] = []
    for c in columns:
        for suf in _RB_SUFFIXES:
            if c.endswith(suf) and c[: -len(suf)] not in models:
                models.append(c[: -len(suf)])
    return models


def detect_layout(df: pd.DataFrame, source: str = "<memory>") -> str:
    """'long' (has a `model` column), 'routerbench' (`<model>|total_cost` / `|model_response`
    columns) or 'routellm' (a `prompt` column and per-model columns)."""
    cols = [str(c) for c in df.columns if not str(c).startswith("_")]
    if "model" in cols:
        return "long"
    if _routerbench_models(cols):
        return "routerbench"
    if "prompt" in cols and len([c for c in cols if c not in _RL_META]) >= 1:
        return "routellm"
    raise TableError(
        f"{source}: cannot tell the layout from the columns {cols}: expected a 'model' column (long "
        "format), '<model>|total_cost' columns (RouterBench) or a 'prompt' column plus one "
        "correctness column per model (RouteLLM)"
    )


def _join_parts(value: object) -> object:
    """RouterBench stores prompts/responses as a list of parts, or as str(list): join them."""
    if isinstance(value, list | tuple | np.ndarray):
        return "".join(str(v) for v in value)
    if isinstance(value, str) and len(value) >= 2 and value[0] == "[" and value[-1] == "]":
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            return "".join(parsed)
    return value


def _suffix_repeats(ids: pd.Series) -> pd.Series:
    """Second, third... occurrence of an id gets '#1', '#2'... (the first keeps its id)."""
    k = ids.groupby(ids, sort=False).cumcount()
    return ids.where(k == 0, ids + "#" + k.astype(str))


def _melt(df: pd.DataFrame, models: list[str], per_prompt: list[str], cells: dict[str, str]) -> pd.DataFrame:
    """Wide (one row per prompt) -> long: per-prompt columns repeated, per-model cells gathered.

    `cells` maps a long column to a source-column template over the model ('{model}|total_cost').
    """
    n, m = len(df), len(models)
    out = {c: np.repeat(df[c].to_numpy(dtype=object), m) for c in per_prompt}
    out["model"] = np.tile(np.array(models, dtype=object), n)
    for long_col, template in cells.items():
        block = np.empty((n, m), dtype=object)
        for j, model in enumerate(models):
            src = template.format(model=model)
            block[:, j] = df[src].to_numpy(dtype=object) if src in df.columns else None
        out[long_col] = block.reshape(-1)
    return pd.DataFrame(out)


def _from_routerbench(df: pd.DataFrame, source: str) -> tuple[pd.DataFrame, dict[str, str]]:
    cols = list(df.columns)
    models = _routerbench_models(cols)
    no_quality = [m for m in models if m not in cols]
    if no_quality:
        raise TableError(
            f"{source}: RouterBench layout: model(s) {', '.join(repr(m) for m in no_quality)} have "
            f"'|total_cost'/'|model_response' columns but no quality column named after the model"
        )
    if "prompt" not in cols:
        raise TableError(f"{source}: RouterBench layout: missing required column 'prompt'")
    df = df.drop(columns=[c for c in cols if c.startswith("Unnamed:") or c == "index"])
    df = df.copy()
    df["prompt"] = df["prompt"].map(_join_parts)
    if "prompt_id" not in df.columns:
        if "sample_id" in df.columns:
            df["prompt_id"] = df["sample_id"].astype(object).map(lambda v: v if pd.isna(v) else str(v))
        else:
            df["prompt_id"] = df["prompt"].map(
                lambda v: derive_prompt_id(str(v)) if isinstance(v, str) else v
            )
        ok = df["prompt_id"].notna()
        df.loc[ok, "prompt_id"] = _suffix_repeats(df.loc[ok, "prompt_id"].astype(str))
    if "task" not in df.columns and "eval_name" in df.columns:
        df["task"] = df["eval_name"]
    model_cols = set(models) | {m + s for m in models for s in _RB_SUFFIXES}
    per_prompt = [c for c in df.columns if c not in model_cols]
    cells = {"quality": "{model}", "cost_usd": "{model}|total_cost"}
    if any(f"{m}|model_response" in df.columns for m in models):
        cells["response"] = "{model}|model_response"
    long = _melt(df, models, per_prompt, cells)
    if "response" in long.columns:
        long["response"] = long["response"].map(_join_parts)
    if "oracle_model_to_route_to" in long.columns:
        long = long.rename(columns={"oracle_model_to_route_to": "routerbench_oracle_model"})
    return long, cells


def _task_from_name(path: str) -> str:
    stem = Path(path).stem
    stem = stem.removesuffix("_responses")
    if stem.startswith("mmlu_"):
        return "mmlu/" + stem[len("mmlu_") :]
    return stem


def _from_routellm(df: pd.DataFrame, source: str) -> tuple[pd.DataFrame, dict[str, str]]:
    cols = [c for c in df.columns if not c.startswith("_")]
    if "prompt" not in cols:
        raise TableError(f"{source}: RouteLLM layout: missing required column 'prompt'")
    df = df.drop(columns=[c for c in cols if c.startswith("Unnamed:")]).copy()
    cols = [c for c in df.columns if not c.startswith("_")]
    responses = [c for c in cols if c.endswith("_response") and c[: -len("_response")] in cols]
    models = [c for c in cols if c not in _RL_META and c not in responses]
    if not models:
        raise TableError(f"{source}: RouteLLM layout: no model columns besides {cols}")
    if "task" not in df.columns:
        df["task"] = _task_from_name(str(df["_file"].iloc[0]) if "_file" in df.columns else source)
    if "prompt_id" not in df.columns:
        df["prompt_id"] = df["task"].astype(str) + "/" + (df["_row"].astype(int) - 1).astype(str)
    per_prompt = [c for c in df.columns if c not in models and c not in responses]
    cells = {"quality": "{model}"}
    if responses:
        cells["response"] = "{model}_response"
    return _melt(df, models, per_prompt, cells), cells


def to_long(
    df: pd.DataFrame, layout: str | None = None, source: str = "<memory>"
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Convert a raw frame to the long format (not yet validated).

    Returns the long frame and the long-column -> source-column templates used for messages.
    """
    layout = layout or detect_layout(df, source)
    if layout == "long":
        return df, {}
    if layout == "routerbench":
        return _from_routerbench(df, source)
    if layout == "routellm":
        return _from_routellm(df, source)
    raise TableError(f"{source}: unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")


# ---- the entry point ------------------------------------------------------------------------
def _parse_fmt(fmt: str | None) -> tuple[str | None, str | None]:
    """fmt may be a layout, a file format, or 'fileformat:layout'."""
    if fmt is None:
        return None, None
    file_format = layout = None
    for part in fmt.replace("+", ":").split(":"):
        part = part.strip().lower()
        if part in ("pkl",):
            part = "pickle"
        if part in LAYOUTS:
            layout = part
        elif part in FILE_FORMATS:
            file_format = part
        else:
            raise TableError(
                f"unknown fmt {fmt!r}: use a layout ({', '.join(LAYOUTS)}), a file format "
                f"({', '.join(FILE_FORMATS)}) or 'fileformat:layout'"
            )
    return file_format, layout


def _dir_files(d: Path) -> list[Path]:
    skip = {"meta.json"}
    files = [
        p
        for p in sorted(d.iterdir())
        if p.is_file()
        and _SUFFIX_FORMAT.get(p.suffix.lower()) not in (None, "pickle")
        and p.name not in skip
        and not p.stem.startswith("prices")
        and not p.name.startswith(".")
    ]
    if not files:
        raise TableError(
            f"{d}: no routing table in this directory (looked for data.parquet, then *.parquet, *.csv, "
            "*.jsonl, *.ndjson, *.json; pickles are only read when passed explicitly)"
        )
    return files


def _resolve_prices(
    prices: str | Path | Mapping[str, ModelPrice] | None, default: Path | None
) -> tuple[dict[str, ModelPrice] | None, str]:
    if prices is None:
        if default is not None and default.is_file():
            return load_prices(default), str(default)
        return None, "price table"
    if isinstance(prices, str | Path):
        return load_prices(prices), str(prices)
    bad = [m for m, p in prices.items() if not isinstance(p, ModelPrice)]
    if bad:
        raise TableError(f"prices: entries for {bad[:5]} are not ModelPrice objects (use load_prices)")
    return dict(prices), "prices"


def load_table(
    path: str | Path,
    prices: str | Path | Mapping[str, ModelPrice] | None = None,
    *,
    fmt: str | None = None,
) -> RoutingTable:
    """Load and validate a routing table.

    Args:
        path: a file (Parquet / CSV / JSONL / JSON / explicit .pkl), a directory with
            `data.parquet` (+ `prices.json`), or a directory of table files (e.g. RouteLLM's
            `mmlu_<subject>.csv`), see the module docstring.
        prices: a price-table path (see `load_prices`) or a {model: ModelPrice} mapping. Used by
            `RoutingTable.cost_matrix()` where `cost_usd` is missing. Every priced model must be
            in the table. Default: `prices.json` beside `data.parquet` when loading such a folder.
        fmt: override detection: a layout ('long', 'routerbench', 'routellm'), a file format
            ('parquet', 'csv', 'jsonl', 'json', 'pickle') or both as 'csv:routerbench'.

    Raises:
        TableError: with the file, the 1-based data row and the column of the problem.
    """
    p = Path(path)
    file_format, layout = _parse_fmt(fmt)
    default_prices: Path | None = None
    if p.is_dir():
        if (p / "data.parquet").is_file():
            files = [p / "data.parquet"]
            default_prices = p / "prices.json"
        else:
            files = _dir_files(p)
    elif p.exists():
        files = [p]
    else:
        raise TableError(f"{p}: no such file or directory")

    parts: list[pd.DataFrame] = []
    source_columns: dict[str, str] = {}
    for f in files:
        raw = read_frame(f, file_format)
        if not user_columns(raw.columns) or raw.empty:
            raise TableError(f"{f}: the table has no rows" if raw.empty else f"{f}: no columns")
        long, cols = to_long(raw, layout, str(f))
        source_columns.update(cols)
        parts.append(long)
    df = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True, sort=False)
    price_table, price_src = _resolve_prices(prices, default_prices)
    source = str(p)
    clean = validate(
        df, source, prices=price_table, prices_source=price_src, source_columns=source_columns or None
    )
    return RoutingTable(clean, source=source, prices=price_table)
