"""Static checks of rule conditions: operator/threshold validity and satisfiability.

Conditions are put in negation normal form and expanded to a disjunction of conjunctions of
atoms (path, op, value). A conjunction is unsatisfiable when the constraints on one signal
path contradict each other or the signal's declared value range/labels. Unknown or complex
cases count as satisfiable, so "can never fire" errors are never false alarms, and
"same priority, both can fire" errors err on the side of asking for distinct priorities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llmroute.signals.config import All, Condition, Not, Predicate
from llmroute.signals.extractors import FieldSpec

Atom = tuple[str, str, Any]
_NEG = {
    "eq": "ne", "ne": "eq", "in": "not_in", "not_in": "in", "gt": "lte", "gte": "lt", "lt": "gte",
    "lte": "gt", "contains": "not_contains", "not_contains": "contains",
}  # fmt: skip
_VALID_OPS = {
    "number": {"eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "is"},
    "bool": {"eq", "ne", "is"},
    "str": {"eq", "ne", "in", "not_in", "is"},
    "list": {"contains", "not_contains", "is", "gt", "gte", "lt", "lte"},
}
MAX_CONJUNCTS = 512


class TooComplex(Exception):
    """DNF expansion exceeded MAX_CONJUNCTS (treated as satisfiable)."""


def dnf(cond: Condition | None, negate: bool = False) -> list[list[Atom]]:
    """Disjunction (list) of conjunctions (lists of atoms). None = always true."""
    if cond is None:
        return [] if negate else [[]]
    if isinstance(cond, Not):
        return dnf(cond.not_, not negate)
    if isinstance(cond, Predicate):
        atoms = [(cond.signal, o, v) for o, v in cond.items()]
        if not negate:
            return [atoms]
        return [[_negate(a)] for a in atoms]
    subs = cond.all if isinstance(cond, All) else cond.any  # type: ignore[union-attr]
    conj = isinstance(cond, All) != negate  # De Morgan
    if not conj:
        out = [c for s in subs for c in dnf(s, negate)]
        if len(out) > MAX_CONJUNCTS:
            raise TooComplex
        return out
    acc: list[list[Atom]] = [[]]
    for s in subs:
        part = dnf(s, negate)
        acc = [a + b for a in acc for b in part]
        if len(acc) > MAX_CONJUNCTS:
            raise TooComplex
    return acc


def _negate(a: Atom) -> Atom:
    path, op, v = a
    if op == "is":
        return (path, "is", not v)
    return (path, _NEG[op], v)


def check_atom(path: str, op: str, value: Any, spec: FieldSpec) -> str | None:
    """An error message if `op value` makes no sense for a field of this spec, else None."""
    if op not in _VALID_OPS[spec.kind]:
        return (
            f"operator {op!r} does not apply to {path!r} (a {spec.kind}; use {sorted(_VALID_OPS[spec.kind])})"
        )
    vals = value if op in ("in", "not_in") else [value]
    if op == "is":
        return None if isinstance(value, bool) else f"'is' on {path!r} takes true or false"
    numeric = spec.kind == "number" or (spec.kind == "list" and op in ("gt", "gte", "lt", "lte"))
    for v in vals:
        if numeric:
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
                return f"threshold {v!r} for {path!r} must be a number"
            lo, hi = (spec.lo, spec.hi) if spec.kind == "number" else (0, len(spec.choices or ()) or math.inf)
            if not (lo <= v <= hi):
                return f"threshold {v} for {path!r} is outside its range [{lo}, {hi}]"
        elif spec.kind == "bool":
            if not isinstance(v, bool):
                return f"{path!r} is true/false; got {v!r}"
        else:
            if not isinstance(v, str):
                return f"{path!r} compares to labels (strings); got {v!r}"
            if spec.choices is not None and v not in spec.choices:
                return f"{v!r} is not a possible value of {path!r}; possible: {sorted(spec.choices)}"
    return None


def conj_reason(atoms: list[Atom], spec_of: Callable[[str], FieldSpec]) -> str | None:
    """Why a conjunction can never hold (a short reason), or None if it may hold."""
    by: dict[str, list[tuple[str, Any]]] = {}
    for p, o, v in atoms:
        by.setdefault(p, []).append((o, v))
    for path, cons in by.items():
        r = _path_reason(path, cons, spec_of(path))
        if r:
            return r
    return None


def _path_reason(path: str, cons: list[tuple[str, Any]], spec: FieldSpec) -> str | None:
    if spec.kind == "list":
        must, mustnt = set(), set()
        empty = nonempty = False
        lo, lo_strict, hi, hi_strict = (
            0.0,
            False,
            float(len(spec.choices)) if spec.choices else math.inf,
            False,
        )
        for o, v in cons:
            if o == "contains":
                must.add(v)
            elif o == "not_contains":
                mustnt.add(v)
            elif o == "is":
                empty, nonempty = (empty or not v), (nonempty or v)
            else:
                lo, lo_strict, hi, hi_strict = _narrow(o, v, lo, lo_strict, hi, hi_strict)
        if must & mustnt:
            return f"{path} both contains and does not contain {sorted(must & mustnt)[0]!r}"
        if empty and (nonempty or must):
            return f"{path} cannot be both empty and non-empty"
        if nonempty and spec.choices is not None and not (set(spec.choices) - mustnt):
            return f"{path} cannot be non-empty when every label is excluded"
        if empty:
            lo_count = 0
            hi = min(hi, 0)
        lo_count = max(len(must), 1 if nonempty else 0)
        if lo < lo_count or (lo == lo_count and not lo_strict):
            lo, lo_strict = float(lo_count), False
        if _empty_interval(lo, lo_strict, hi, hi_strict, integer=True):
            return f"{path} needs an impossible number of labels"
        return None
    # scalars: number / bool / str
    if spec.kind == "bool":
        allowed: set[Any] | None = {True, False}
    elif spec.kind == "str" and spec.choices is not None:
        allowed = set(spec.choices)
    else:
        allowed = None
    excluded: set[Any] = set()
    lo, lo_strict, hi, hi_strict = spec.lo, False, spec.hi, False
    falsy = "" if spec.kind == "str" else False if spec.kind == "bool" else 0
    for o, v in cons:
        if o == "is":
            o, v = ("ne", falsy) if v else ("eq", falsy)
        if o == "eq":
            allowed = {v} if allowed is None else allowed & {v}
        elif o == "in":
            allowed = set(v) if allowed is None else allowed & set(v)
        elif o == "ne":
            excluded.add(v)
        elif o == "not_in":
            excluded |= set(v)
        else:
            lo, lo_strict, hi, hi_strict = _narrow(o, v, lo, lo_strict, hi, hi_strict)
    if spec.kind == "number":
        if allowed is not None:
            ok = [
                a for a in allowed
                if a not in excluded and not _empty_interval(
                    max(lo, a), lo_strict and a == lo, min(hi, a), hi_strict and a == hi, integer=False
                ) and lo <= a <= hi
            ]  # fmt: skip
            return None if ok else f"no value of {path} satisfies {_fmt(cons)}"
        if _empty_interval(lo, lo_strict, hi, hi_strict, integer=False):
            return f"no value of {path} satisfies {_fmt(cons)}"
        if lo == hi and lo in excluded:
            return f"no value of {path} satisfies {_fmt(cons)}"
        return None
    if allowed is not None and not (allowed - excluded):
        return f"no value of {path} satisfies {_fmt(cons)}"
    return None


def _narrow(o: str, v: float, lo: float, ls: bool, hi: float, hs: bool) -> tuple[float, bool, float, bool]:
    if o in ("gt", "gte"):
        s = o == "gt"
        if v > lo or (v == lo and s):
            lo, ls = v, s
    elif o in ("lt", "lte"):
        s = o == "lt"
        if v < hi or (v == hi and s):
            hi, hs = v, s
    return lo, ls, hi, hs


def _empty_interval(lo: float, ls: bool, hi: float, hs: bool, integer: bool) -> bool:
    if integer:
        lo_i = math.floor(lo) + 1 if ls else math.ceil(lo)
        hi_i = math.ceil(hi) - 1 if hs else math.floor(hi) if hi != math.inf else math.inf
        return lo_i > hi_i
    return lo > hi or (lo == hi and (ls or hs))


def _fmt(cons: list[tuple[str, Any]]) -> str:
    return ", ".join(f"{o} {v!r}" for o, v in cons)
