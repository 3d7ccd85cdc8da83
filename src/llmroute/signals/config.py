"""The YAML schema of `signals:` and `rules:` (pydantic), embeddable in the gateway config.

```yaml
signals:
  code: {type: keywords, keywords: [python, function, stack trace]}
  topic: {type: domain, examples: {code: [...], math: [...], chat: [...]}}
rules:
  - name: block-jailbreak
    priority: 100
    when: {signal: jailbreak, gte: 0.9}
    action: {type: block, message: "Request blocked by policy."}
  - name: code-to-coder
    priority: 10
    when: {any: [{signal: topic, eq: code}, {signal: code}]}
    action: {type: route, model: codellama-34b, tradeoff: 0.0}
```
Conditions: `{all: [...]}`, `{any: [...]}`, `{not: {...}}` or a predicate `{signal: NAME[.field],
OP: VALUE}` with OP one of eq, ne, in, not_in, gt, gte, lt, lte, contains, not_contains, or
`is: true|false` (truthiness); a bare `{signal: NAME}` means `is: true`.
Actions: route (model / alias / router + tradeoff, max_cost, min_quality, allowed), block
(message, status), redact (pii types, template), set (tradeoff / budget overrides).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OPS: tuple[str, ...] = (
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "gte",
    "lt",
    "lte",
    "contains",
    "not_contains",
    "is",
)


class Predicate(BaseModel):
    """A test on one signal value (or `signal.field` of a dict-valued signal)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    signal: str
    eq: Any = None
    ne: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    not_in: list[Any] | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    contains: str | None = None
    not_contains: str | None = None
    is_: bool | None = Field(default=None, alias="is")

    @model_validator(mode="after")
    def _one_op(self) -> Predicate:
        ops = self.ops()
        if len(ops) > 1 and not all(o in ("gt", "gte", "lt", "lte") for o in ops):
            raise ValueError(
                f"predicate on {self.signal!r} has several operators {ops}; use all: [...] to combine"
            )
        return self

    def ops(self) -> list[str]:
        """Operators set on this predicate (empty = truthiness)."""
        return [
            o for o in OPS if getattr(self, "in_" if o == "in" else "is_" if o == "is" else o) is not None
        ]

    def items(self) -> list[tuple[str, Any]]:
        """(op, value) pairs; a bare predicate is ("is", True)."""
        ops = self.ops()
        if not ops:
            return [("is", True)]
        return [(o, getattr(self, "in_" if o == "in" else "is_" if o == "is" else o)) for o in ops]

    def describe(self) -> str:
        """Compact human-readable form, e.g. `jailbreak>=0.9`."""
        sym = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        parts = []
        for o, v in self.items():
            if o == "is":
                parts.append(self.signal if v else f"not {self.signal}")
            elif o in sym:
                parts.append(f"{self.signal}{sym[o]}{v}")
            else:
                parts.append(f"{self.signal} {o.replace('_', ' ')} {v}")
        return " and ".join(parts)


class All(BaseModel):
    """Every sub-condition holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    all: list[Condition]


class AnyOf(BaseModel):
    """At least one sub-condition holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    any: list[Condition]


class Not(BaseModel):
    """The sub-condition does not hold."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    not_: Condition = Field(alias="not")


Condition = Union[All, AnyOf, Not, Predicate]  # noqa: UP007 (pydantic forward refs)
All.model_rebuild()
AnyOf.model_rebuild()
Not.model_rebuild()


class Action(BaseModel):
    """What a rule does when it fires."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["route", "block", "redact", "set"]
    model: str | None = None
    alias: str | None = None
    router: str | None = None
    tradeoff: float | None = None
    max_cost: float | None = None
    min_quality: float | None = None
    allowed: list[str] | None = None
    message: str | None = None
    status: int = 403
    pii_types: list[str] | None = None
    template: str = "[{type}]"

    @model_validator(mode="after")
    def _check(self) -> Action:
        targets = [t for t in (self.model, self.alias, self.router) if t is not None]
        if self.type == "route" and len(targets) > 1:
            raise ValueError("a route action names at most one of model / alias / router")
        if self.type != "route" and targets:
            raise ValueError(f"a {self.type} action cannot name a model/alias/router (use type: route)")
        if self.type == "block" and not (400 <= self.status <= 599):
            raise ValueError("block status must be an HTTP error code (400-599)")
        if self.type == "set" and all(
            v is None for v in (self.tradeoff, self.max_cost, self.min_quality, self.allowed)
        ):
            raise ValueError("a set action must set tradeoff, max_cost, min_quality or allowed")
        if self.tradeoff is not None and self.tradeoff < 0:
            raise ValueError("tradeoff must be >= 0")
        if "{type}" not in self.template:
            raise ValueError("redact template must contain '{type}'")
        return self

    def overrides(self) -> dict[str, Any]:
        """Policy overrides this action sets."""
        keys = ("tradeoff", "max_cost", "min_quality", "allowed")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def target(self) -> dict[str, str]:
        """{"model"|"alias"|"router": name} for route actions (empty otherwise)."""
        for k in ("model", "alias", "router"):
            if getattr(self, k) is not None:
                return {k: getattr(self, k)}
        return {}

    def key(self) -> str:
        """A canonical string: two actions are 'different' iff their keys differ."""
        return self.model_dump_json(exclude_defaults=True)


class Rule(BaseModel):
    """One decision: when `when` holds (always, if omitted), do `action`. Higher priority first."""

    model_config = ConfigDict(extra="forbid")

    name: str
    priority: int = 0
    when: Condition | None = None
    action: Action
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("rule name must not be empty")
        return v


class RulesConfig(BaseModel):
    """The `signals:` and `rules:` sections (other keys of a gateway config are ignored)."""

    model_config = ConfigDict(extra="ignore")

    signals: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> RulesConfig:
        seen: set[str] = set()
        for r in self.rules:
            if r.name in seen:
                raise ValueError(f"two rules are named {r.name!r}; rule names must be unique")
            seen.add(r.name)
        for name, spec in self.signals.items():
            if not isinstance(spec, dict) or "type" not in spec:
                raise ValueError(f"signal {name!r} needs a 'type'")
        return self


def iter_predicates(cond: Condition | None) -> list[Predicate]:
    """Every predicate inside a condition."""
    if cond is None:
        return []
    if isinstance(cond, Predicate):
        return [cond]
    if isinstance(cond, All):
        return [p for c in cond.all for p in iter_predicates(c)]
    if isinstance(cond, AnyOf):
        return [p for c in cond.any for p in iter_predicates(c)]
    return iter_predicates(cond.not_)
