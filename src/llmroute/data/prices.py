"""Price tables: model -> USD per one million input / output tokens.

Accepted files (`load_prices(path)`):

- JSON or YAML in the ../shared/data layout::

      {"prices_usd_per_1M_tokens": {"gpt-4": {"input_per_mtok": 10, "output_per_mtok": 30}}}

  (extra keys such as "source" are ignored), or the plain mapping
  ``{"gpt-4": {"input": 10, "output": 30}}`` (``input_per_mtok`` / ``output_per_mtok`` also work);
- CSV with a header ``model,input_per_mtok,output_per_mtok`` (``input`` / ``output`` also work).

Missing, non-numeric, negative or non-finite prices are errors (`TableError` naming the file, the
model, the field and, for CSV, the 1-based data row).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

import yaml

from llmroute.data.encoding import encoding_error
from llmroute.data.table import ModelPrice, TableError

__all__ = ["load_prices", "parse_prices", "prices_to_dict"]

_WRAPPER = "prices_usd_per_1M_tokens"
_IN_KEYS = ("input_per_mtok", "input")
_OUT_KEYS = ("output_per_mtok", "output")


def _number(value: object, where: str, field: str) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        raise TableError(f"{where}, field {field!r}: missing price")
    if isinstance(value, bool):
        raise TableError(f"{where}, field {field!r}: price must be a number, got {value!r}")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TableError(f"{where}, field {field!r}: price must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise TableError(f"{where}, field {field!r}: price must be finite, got {value!r}")
    if x < 0:
        raise TableError(f"{where}, field {field!r}: negative price {x!r}")
    return x


def _pick(entry: Mapping[str, object], keys: tuple[str, ...], where: str) -> float:
    for k in keys:
        if k in entry:
            return _number(entry[k], where, k)
    raise TableError(f"{where}: missing price field {keys[0]!r} (or {keys[1]!r}); found {sorted(entry)}")


def parse_prices(obj: object, source: str = "<prices>") -> dict[str, ModelPrice]:
    """Price table from an already-parsed JSON/YAML object (either accepted layout)."""
    if isinstance(obj, Mapping) and _WRAPPER in obj:
        obj = obj[_WRAPPER]
    if not isinstance(obj, Mapping) or not obj:
        raise TableError(
            f"{source}: expected a mapping model -> {{input_per_mtok, output_per_mtok}} "
            f"(optionally under {_WRAPPER!r}), got {type(obj).__name__}"
        )
    out: dict[str, ModelPrice] = {}
    for model, entry in obj.items():
        where = f"{source}: model {str(model)!r}"
        if not isinstance(entry, Mapping):
            raise TableError(f"{where}: expected {{input_per_mtok, output_per_mtok}}, got {entry!r}")
        out[str(model)] = ModelPrice(_pick(entry, _IN_KEYS, where), _pick(entry, _OUT_KEYS, where))
    return out


def _load_csv(path: Path) -> dict[str, ModelPrice]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        reader.fieldnames = fields
        need_in = next((k for k in _IN_KEYS if k in fields), None)
        need_out = next((k for k in _OUT_KEYS if k in fields), None)
        missing = [
            n
            for n, k in (
                ("model", "model" if "model" in fields else None),
                ("input_per_mtok", need_in),
                ("output_per_mtok", need_out),
            )
            if k is None
        ]
        if missing:
            raise TableError(
                f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; "
                "a CSV price table needs model,input_per_mtok,output_per_mtok"
            )
        out: dict[str, ModelPrice] = {}
        for i, row in enumerate(reader, start=1):
            model = (row.get("model") or "").strip()
            if not model:
                raise TableError(f"{path}: row {i}, column 'model': empty model name")
            if model in out:
                raise TableError(f"{path}: row {i}, column 'model': model {model!r} is priced twice")
            where = f"{path}: row {i}, model {model!r}"
            out[model] = ModelPrice(
                _number(row.get(need_in), where, need_in),  # type: ignore[arg-type]
                _number(row.get(need_out), where, need_out),  # type: ignore[arg-type]
            )
    if not out:
        raise TableError(f"{path}: the price table has no rows")
    return out


def load_prices(path: str | Path) -> dict[str, ModelPrice]:
    """Read a price table (JSON, YAML or CSV, by file suffix) into {model: ModelPrice}.

    Raises:
        TableError: unreadable file, unknown suffix, missing/negative/non-numeric prices.
    """
    p = Path(path)
    if not p.is_file():
        raise TableError(f"{p}: price table not found")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            return _load_csv(p)
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise encoding_error(p) from None
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise TableError(f"{p}: line {e.lineno}: invalid JSON ({e.msg})") from None
    elif suffix in (".yaml", ".yml"):
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise TableError(f"{p}: invalid YAML ({e})") from None
    else:
        raise TableError(f"{p}: unknown price table format {suffix!r}; use .json, .yaml/.yml or .csv")
    return parse_prices(obj, str(p))


def prices_to_dict(prices: Mapping[str, ModelPrice]) -> dict[str, dict[str, float]]:
    """JSON-ready form ``{_WRAPPER: {model: {input_per_mtok, output_per_mtok}}}`` (load_prices reads it)."""
    return {
        _WRAPPER: {
            m: {"input_per_mtok": p.input_per_mtok, "output_per_mtok": p.output_per_mtok}
            for m, p in prices.items()
        }
    }
