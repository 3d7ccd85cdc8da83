"""The rules engine: signals -> decisions -> a `Verdict` the gateway (or `llmroute rules explain`) acts on.

Rules run in priority order (highest first; ties in file order). `redact` and `set` actions
accumulate and evaluation continues; the first `route` or `block` that fires ends it. Only the
signals that some rule uses are built, and each is computed at most once per request, only when
a condition needs it (lazy, short-circuit). Everything computed is reported in the verdict.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmroute.signals import analysis
from llmroute.signals.config import All, AnyOf, Condition, Not, Predicate, Rule, RulesConfig, iter_predicates
from llmroute.signals.extractors import (
    BUILTIN_SIGNALS,
    BuildContext,
    FieldSpec,
    PIISignal,
    Signal,
    SignalConfigError,
    build_signal,
)
from llmroute.signals.request import SignalRequest, content_text


class RulesError(ValueError):
    """The rules/signals configuration is invalid; `.problems` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid rules config:\n  - " + "\n  - ".join(problems))


@dataclass
class Verdict:
    """The outcome of evaluating the rules on one request.

    action: "block" | "route" (a rule chose the target) | "default" (let the router decide,
    with `overrides`). rule: the rule that ended evaluation (None for default). applied: every
    rule that fired, in order. target: {"model"|"alias"|"router": name} for route. overrides:
    policy overrides (tradeoff, max_cost, min_quality, allowed). messages: the messages to
    forward (redacted copies when a redact rule fired). redactions: {pii type: count}.
    signals: every computed signal value. details: per-signal explanations (no personal data).
    set_by: which rule set each override (the highest-priority rule that set it wins).
    reasons: per fired rule, the conditions that held, with the signal values that made them hold.
    """

    action: str
    rule: str | None
    applied: list[str]
    target: dict[str, str]
    overrides: dict[str, Any]
    messages: list[dict[str, Any]]
    redactions: dict[str, int]
    signals: dict[str, Any]
    details: dict[str, Any]
    timings_us: dict[str, float]
    message: str | None = None
    status: int = 200
    reasons: dict[str, str] = field(default_factory=dict)
    set_by: dict[str, str] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        """True when a block rule fired."""
        return self.action == "block"

    @property
    def redacted(self) -> bool:
        """True when personal data was redacted from the messages."""
        return bool(self.redactions)

    def explanation(self) -> str:
        """One human-readable sentence of why."""
        parts = []
        for name in self.applied:
            parts.append(f"rule {name!r} fired ({self.reasons.get(name, 'always')})")
        if not parts:
            parts.append("no rule fired")
        if self.action == "block":
            parts.append(f"request blocked: {self.message}")
        elif self.action == "route":
            k, v = next(iter(self.target.items()))
            parts.append(f"routed to {k} {v!r}")
        else:
            parts.append("the router decides")
        if self.redactions:
            parts.append("redacted " + ", ".join(f"{n} {t}" for t, n in sorted(self.redactions.items())))
        if self.overrides:
            parts.append("overrides " + ", ".join(f"{k}={v}" for k, v in self.overrides.items()))
        return "; ".join(parts)

    def trace(self) -> dict[str, Any]:
        """JSON-able record for the decision trace."""
        return {
            "action": self.action,
            "rule": self.rule,
            "applied": list(self.applied),
            "reasons": dict(self.reasons),
            "target": dict(self.target),
            "overrides": dict(self.overrides),
            "set_by": dict(self.set_by),
            "redactions": dict(self.redactions),
            "signals": dict(self.signals),
            "details": dict(self.details),
            "timings_us": {k: round(v, 1) for k, v in self.timings_us.items()},
            "status": self.status,
            "message": self.message,
            "explanation": self.explanation(),
        }

    def header(self) -> str:
        """Compact single-line form for an HTTP header (ASCII, no personal data)."""
        parts = [f"action={self.action}"]
        if self.rule:
            parts.append(f"rule={self.rule}")
        if self.applied and self.applied != [self.rule]:
            parts.append("applied=" + ",".join(self.applied))
        for k, v in self.target.items():
            parts.append(f"{k}={v}")
        if self.redactions:
            parts.append("redacted=" + ",".join(f"{t}:{n}" for t, n in sorted(self.redactions.items())))
        for k, v in self.overrides.items():
            parts.append(f"{k}={v}")
        out = ";".join(parts)
        return out.encode("ascii", "replace").decode()


def _get_path(value: Any, sub: str | None) -> Any:
    if sub is None:
        return value
    if isinstance(value, Mapping):
        return value.get(sub)
    return None


def _test(op: str, want: Any, got: Any) -> bool:
    if got is None:
        return op in ("ne", "not_in", "not_contains") or (op == "is" and want is False)
    if op == "is":
        return bool(got) == want
    if isinstance(got, list) and op in ("gt", "gte", "lt", "lte"):
        got = len(got)
    if op == "eq":
        return bool(got == want)
    if op == "ne":
        return bool(got != want)
    if op == "in":
        return got in want
    if op == "not_in":
        return got not in want
    if op == "contains":
        return want in got
    if op == "not_contains":
        return want not in got
    if op == "gt":
        return got > want
    if op == "gte":
        return got >= want
    if op == "lt":
        return got < want
    return got <= want  # lte


class RuleEngine:
    """Builds the used signals once, validates the rules, and evaluates them per request.

    config: a `RulesConfig`, or a mapping with `signals:` / `rules:` (e.g. the whole gateway
    config). encoder: an `Encoder` or an encoder spec ("hash", "static-minilm", ...); None means
    the router's encoder, else "static-minilm". It is only loaded when a used signal embeds. router: the active router (difficulty, ood).
    base_dir: where relative file paths in signal parameters are resolved.
    """

    def __init__(
        self,
        config: RulesConfig | Mapping[str, Any],
        *,
        encoder: Any = None,
        router: Any = None,
        base_dir: str | Path | None = None,
    ) -> None:
        try:
            self.config = (
                config if isinstance(config, RulesConfig) else RulesConfig.model_validate(dict(config))
            )
        except ValueError as e:
            raise RulesError([str(e)]) from e
        self.router = router
        self.rules: list[Rule] = sorted(self.config.rules, key=lambda r: -r.priority)  # stable: file order
        problems: list[str] = []
        used = self._used_signal_names(problems)
        defs = {**BUILTIN_SIGNALS, **self.config.signals}
        needs_enc = any(self._needs_encoder(defs[n]) for n in used if n in defs)
        if needs_enc and encoder is None:
            encoder = getattr(router, "encoder", None) or "static-minilm"
        if needs_enc and isinstance(encoder, str | dict):
            from llmroute.signals.hashenc import resolve_encoder

            encoder = resolve_encoder(encoder)
        self.encoder = encoder if needs_enc else None
        ctx = BuildContext(self.encoder, router, Path(base_dir) if base_dir else None)
        self.signals: dict[str, Signal] = {}
        for name in sorted(used):
            if name not in defs:
                continue
            try:
                self.signals[name] = build_signal(name, defs[name], ctx)
            except SignalConfigError as e:
                problems.append(str(e))
        for name, spec in self.config.signals.items():  # unused definitions still need a known type
            if name not in used and spec.get("type") not in {s for s in _known_types()}:
                problems.append(f"signal {name!r}: unknown type {spec.get('type')!r}")
        problems += self._check_rules()
        if problems:
            raise RulesError(problems)

    # ---- construction helpers ----------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> RuleEngine:
        """Load the `signals:`/`rules:` sections of a YAML file (paths relative to the file)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RulesError([f"cannot read {path}: {e}"]) from e
        kwargs.setdefault("base_dir", path.parent)
        return cls(data, **kwargs)

    @staticmethod
    def _needs_encoder(spec: Mapping[str, Any]) -> bool:
        t = spec.get("type")
        return t in ("similarity", "domain", "ood") or (t == "jailbreak" and spec.get("classifier", True))

    def _used_signal_names(self, problems: list[str]) -> set[str]:
        used: set[str] = set()
        defs = {**BUILTIN_SIGNALS, **self.config.signals}
        for r in self.rules:
            for p in iter_predicates(r.when):
                name = p.signal.split(".", 1)[0]
                if name not in defs:
                    problems.append(
                        f"rule {r.name!r}: unknown signal {name!r}; defined: {sorted(self.config.signals)}, "
                        f"built-in: {sorted(BUILTIN_SIGNALS)}"
                    )
                else:
                    used.add(name)
            if r.action.type == "redact" and "pii" in defs:
                used.add("pii")
        return used

    def spec_of(self, path: str) -> FieldSpec:
        """The declared value spec of `signal[.field]` (KeyError if unknown)."""
        name, _, sub = path.partition(".")
        return self.signals[name].fields()[sub]

    def _check_rules(self) -> list[str]:
        problems: list[str] = []
        broken: set[str] = set()
        for r in self.rules:
            n_before = len(problems)
            for p in iter_predicates(r.when):
                name, _, sub = p.signal.partition(".")
                if name not in self.signals:  # unknown or failed to build: reported already
                    broken.add(r.name)
                    continue
                fields = self.signals[name].fields()
                if sub not in fields:
                    if sub == "":
                        problems.append(
                            f"rule {r.name!r}: signal {name!r} has fields {sorted(fields)}; "
                            f"use e.g. {name}.{sorted(fields)[0]}"
                        )
                    else:
                        problems.append(f"rule {r.name!r}: signal {name!r} has no field {sub!r}")
                    continue
                for op, v in p.items():
                    err = analysis.check_atom(p.signal, op, v, fields[sub])
                    if err:
                        problems.append(f"rule {r.name!r}: bad threshold/operator: {err}")
            if r.action.type == "redact":
                types = r.action.pii_types or []
                pii = self.signals.get("pii")
                bad = [t for t in types if not isinstance(pii, PIISignal) or t not in pii.detector.types]
                if bad:
                    problems.append(
                        f"rule {r.name!r}: redact names PII types the pii signal does not detect: {bad}"
                    )
            if len(problems) > n_before:
                broken.add(r.name)
        dnfs: dict[str, list[list[analysis.Atom]] | None] = {}
        for r in self.rules:
            if r.name in broken:
                continue
            try:
                dnfs[r.name] = analysis.dnf(r.when)
            except analysis.TooComplex:
                dnfs[r.name] = None
        # never fires: contradictory, or shadowed by an unconditional higher-priority terminal rule
        for r in self.rules:
            if r.name in broken:
                continue
            d = dnfs[r.name]
            if d is not None:
                reasons = [analysis.conj_reason(c, self.spec_of) for c in d]
                if all(reasons):
                    problems.append(f"rule {r.name!r} can never fire: {reasons[0]}")
                    continue
            for h in self.rules:
                if h.priority <= r.priority:
                    break
                if h.when is None and h.action.type in ("route", "block"):
                    problems.append(
                        f"rule {r.name!r} can never fire: rule {h.name!r} (priority {h.priority}) always "
                        f"fires first and ends evaluation"
                    )
                    break
        # same priority, can both fire, different actions
        for i, a in enumerate(self.rules):
            for b in self.rules[i + 1 :]:
                if b.priority != a.priority:
                    break
                if a.name in broken or b.name in broken or a.action.key() == b.action.key():
                    continue
                da, db = dnfs[a.name], dnfs[b.name]
                both = (
                    da is None
                    or db is None
                    or any(analysis.conj_reason(x + y, self.spec_of) is None for x in da for y in db)
                )
                if both:
                    problems.append(
                        f"rules {a.name!r} and {b.name!r} have the same priority {a.priority}, can both fire "
                        f"and have different actions; give them different priorities"
                    )
        return problems

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(
        self,
        prompt_or_messages: str | Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Any] | None = None,
        alias: str | None = None,
        key: str | None = None,
        router: Any = None,
    ) -> Verdict:
        """Run the rules on one request (a prompt or chat messages) and return the verdict."""
        req = SignalRequest.build(
            prompt_or_messages,
            tools=tools,
            alias=alias,
            key=key,
            encoder=self.encoder,
            router=router if router is not None else self.router,
        )
        values: dict[str, Any] = {}
        timings: dict[str, float] = {}

        def value(path: str) -> Any:
            name, _, sub = path.partition(".")
            if name not in values:
                t0 = time.perf_counter()
                values[name] = self.signals[name].compute(req)
                timings[name] = (time.perf_counter() - t0) * 1e6
            return _get_path(values[name], sub or None)

        def holds(c: Condition) -> bool:
            if isinstance(c, Predicate):
                got = value(c.signal)
                return all(_test(op, v, got) for op, v in c.items())
            if isinstance(c, All):
                return all(holds(s) for s in c.all)
            if isinstance(c, AnyOf):
                return any(holds(s) for s in c.any)
            assert isinstance(c, Not)
            return not holds(c.not_)

        applied: list[str] = []
        reasons: dict[str, str] = {}
        overrides: dict[str, Any] = {}
        set_by: dict[str, str] = {}
        redactions: dict[str, int] = {}
        messages = req.messages
        action, rule, target, message, status = "default", None, {}, None, 200
        for r in self.rules:
            if r.when is not None and not holds(r.when):
                continue
            applied.append(r.name)
            reasons[r.name] = self._why(r.when, values)
            a = r.action
            for k, v in a.overrides().items():
                if k not in overrides:  # the highest-priority rule's value wins
                    overrides[k] = v
                    set_by[k] = r.name
            if a.type == "redact":
                messages, counts = self._redact(messages, a.pii_types, a.template)
                for t, n in counts.items():
                    redactions[t] = redactions.get(t, 0) + n
            elif a.type == "block":
                action, rule, message, status = (
                    "block",
                    r.name,
                    a.message or "Request blocked by policy.",
                    a.status,
                )
                break
            elif a.type == "route":
                action, rule, target = "route", r.name, a.target()
                if not target:  # route with only overrides: the router still chooses
                    action = "default"
                break
        details = {}
        for name, v in values.items():
            d = self.signals[name].detail(req, v)
            if d is not None:
                details[name] = d
        return Verdict(
            action=action, rule=rule, applied=applied, target=target, overrides=overrides,
            messages=messages, redactions=redactions, signals=values, details=details,
            timings_us=timings, message=message, status=status, reasons=reasons, set_by=set_by,
        )  # fmt: skip

    @staticmethod
    def _why(cond: Condition | None, values: dict[str, Any]) -> str:
        """The conditions that made `cond` hold (only those), with their signal values."""
        if cond is None:
            return "always"
        return "; ".join(_held(cond, values)[:6])

    def _redact(
        self, messages: list[dict[str, Any]], types: list[str] | None, template: str
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        sig = self.signals.get("pii")
        detector = sig.detector if isinstance(sig, PIISignal) else None
        if detector is None:
            from llmroute.guards.pii import PIIDetector

            detector = PIIDetector()
        if types:
            from llmroute.guards.pii import PIIDetector

            detector = PIIDetector(types)
        counts: dict[str, int] = {}
        out = []
        for m in messages:
            c = m.get("content")
            if isinstance(c, str):
                new, found = detector.redact(c, template)
                m2 = {**m, "content": new} if found else m
            elif isinstance(c, list):
                parts, found = [], []
                for p in c:
                    if isinstance(p, dict) and isinstance(p.get("text"), str):
                        t, f = detector.redact(p["text"], template)
                        parts.append({**p, "text": t} if f else p)
                        found += f
                    else:
                        parts.append(p)
                m2 = {**m, "content": parts} if found else m
            else:
                m2, found = m, []
            for f in found:
                counts[f.type] = counts.get(f.type, 0) + 1
            out.append(m2)
        return (copy.deepcopy(out) if counts else out), counts

    def warm(self) -> None:
        """Load lazily-loaded models (language identifier) now rather than on the first request."""
        for s in self.signals.values():
            w = getattr(s, "warm", None)
            if w is not None:
                w()

    def explain(self, prompt_or_messages: str | Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
        """A multi-line human explanation: signals computed, rules that fired, the outcome."""
        v = self.evaluate(prompt_or_messages, **kwargs)
        lines = ["signals:"]
        for name, val in v.signals.items():
            extra = f"  {v.details[name]}" if name in v.details else ""
            lines.append(f"  {name} = {val!r}  ({v.timings_us.get(name, 0):.0f} us){extra}")
        lines.append("rules fired:" if v.applied else "rules fired: none")
        for name in v.applied:
            lines.append(f"  {name}: {v.reasons.get(name, '')}")
        lines.append(f"winner: {v.rule or '(none: router decides)'}")
        lines.append(f"outcome: {v.explanation()}")
        lines.append(f"header: {v.header()}")
        if v.redacted:
            lines.append("forwarded text: " + content_text(v.messages[-1].get("content"))[:300])
        return "\n".join(lines)


def _truth(c: Condition, values: dict[str, Any]) -> bool | None:
    """Whether `c` holds on the computed signal `values` (None: it needs a signal not computed)."""
    if isinstance(c, Predicate):
        name, _, sub = c.signal.partition(".")
        if name not in values:
            return None
        got = _get_path(values[name], sub or None)
        return all(_test(op, v, got) for op, v in c.items())
    if isinstance(c, Not):
        inner = _truth(c.not_, values)
        return None if inner is None else not inner
    parts = [_truth(x, values) for x in (c.all if isinstance(c, All) else c.any)]
    if isinstance(c, All):
        return False if False in parts else (None if None in parts else True)
    return True if True in parts else (None if None in parts else False)


def _shown(p: Predicate, values: dict[str, Any], negate: bool) -> str:
    name, _, sub = p.signal.partition(".")
    v = _get_path(values[name], sub or None)
    text = f"not ({p.describe()})" if negate else p.describe()
    return f"{text} [{p.signal}={round(v, 3) if isinstance(v, float) else v!r}]"


def _held(c: Condition, values: dict[str, Any]) -> list[str]:
    """Why `c` holds: its predicates that held (every true branch of an `any`, all of an `all`;
    under `not`, the predicates that failed), never one that did not hold or was not computed."""
    if _truth(c, values) is not True:
        return []
    if isinstance(c, Predicate):
        return [_shown(c, values, negate=False)]
    if isinstance(c, Not):
        return _failed(c.not_, values)
    subs = c.all if isinstance(c, All) else c.any
    return [line for x in subs for line in _held(x, values)]


def _failed(c: Condition, values: dict[str, Any]) -> list[str]:
    """Why `c` does not hold (the mirror of `_held`): its predicates that failed, shown negated."""
    if _truth(c, values) is not False:
        return []
    if isinstance(c, Predicate):
        return [_shown(c, values, negate=True)]
    if isinstance(c, Not):
        return _held(c.not_, values)
    subs = c.all if isinstance(c, All) else c.any
    return [line for x in subs for line in _failed(x, values)]


def _known_types() -> set[str]:
    from llmroute.signals.extractors import SIGNAL_TYPES

    return set(SIGNAL_TYPES)
