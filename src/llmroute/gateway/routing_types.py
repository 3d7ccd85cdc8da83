"""What a gateway request carries to its routing decision (`llmroute.gateway.routing`, whose
`RoutingEngine` makes the decision): the request (`RequestContext`, its `conversation_text`),
its own policy (the body's `llmroute` object: `parse_request_policy`; a model-name suffix:
`parse_model_suffix`, `SUFFIX_HELP`), the decision (`RouteDecision`, its response headers,
`constraint_header`), what a router must offer (`RouterLike`) and the one-row choice
(`choose_one`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llmroute.gateway.auth import GatewayError
from llmroute.gateway.schemas import RequestPolicy, validate
from llmroute.policy import choose_row

__all__ = [
    "SUFFIX_HELP",
    "RequestContext",
    "RouteDecision",
    "RouterLike",
    "choose_one",
    "constraint_header",
    "conversation_text",
    "parse_model_suffix",
    "parse_request_policy",
]


class RouterLike(Protocol):
    """What the gateway needs from a router."""

    models: list[str]

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Expected quality and cost, each (len(prompts), len(models))."""
        ...


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return str(content)


def conversation_text(messages: Sequence[dict[str, Any]]) -> str:
    """The text a router reads: every message's text (system, user, assistant, tool) joined by
    blank lines, so a single user message gives exactly its content."""
    if len(messages) == 1:
        return _text(messages[0].get("content"))
    return "\n\n".join(t for t in (_text(m.get("content")) for m in messages) if t)


SUFFIX_HELP = (
    "@<share> or @share=<share> (share of requests for the strong model, 0..1; e.g. "
    "llmroute/auto@0.3) or @tradeoff=<lambda >= 0> (e.g. llmroute/auto@tradeoff=50)"
)


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, param=param)


def parse_request_policy(obj: Any) -> dict[str, Any]:
    """Validate the body object `llmroute: {...}`, the per-request policy, against
    `schemas.RequestPolicy` (tradeoff, max_cost: numbers >= 0; min_quality, strong_share: numbers
    in [0, 1]; on_unmet: "closest" or "reject"; each may be null: no value). Any other field, or
    a bad value, is a 400 `GatewayError` naming `llmroute.<field>`."""
    if obj is None:
        return {}
    return validate(obj, RequestPolicy, prefix="llmroute")


def parse_model_suffix(suffix: str) -> dict[str, float]:
    """The policy a model-name suffix asks for: '0.3' / 'share=0.3' -> {"strong_share": 0.3},
    'tradeoff=50' -> {"tradeoff": 50.0} ('inf': cheapest). ValueError when it is none of these."""
    key, eq, value = suffix.partition("=")
    if not eq:
        key, value = "share", suffix
    key = key.strip().lower()
    field_name = {"share": "strong_share", "strong_share": "strong_share", "tradeoff": "tradeoff"}.get(key)
    if field_name is None:
        raise ValueError(f"unknown suffix key {key!r}")
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if math.isnan(x) or x < 0 or (field_name == "strong_share" and x > 1):
        raise ValueError(f"{value!r} is out of range")
    return {field_name: x}


@dataclass
class RequestContext:
    """One request on its way to a decision (hooks may read and edit it)."""

    request_id: str
    requested: str
    messages: list[dict[str, Any]]
    body: dict[str, Any]
    key_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    endpoint: str = "chat"
    policy: dict[str, Any] = field(default_factory=dict)
    allowed: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _text: str | None = None

    @property
    def text(self) -> str:
        """`conversation_text(messages)`, computed once."""
        if self._text is None:
            self._text = conversation_text(self.messages)
        return self._text


@dataclass
class RouteDecision:
    """The chosen model, the ranked fallbacks and why.

    policy: the effective policy (rule "tradeoff" | "min_quality" | "threshold", its numbers,
    where the trade-off came from, and `set_by`: policy fields a rule changed -> rule name).
    constraints_met / unmet_constraints: whether the chosen model meets max_cost / min_quality
    (False: no admissible candidate does; the closest was chosen). `headers()` gives the
    response headers that say so.
    """

    model: str
    ranked: list[str]
    reason: str
    alias: str | None = None
    router: str | None = None
    expected_quality: dict[str, float] = field(default_factory=dict)
    expected_cost: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    constraints_met: bool = True
    unmet_constraints: list[str] = field(default_factory=list)
    # set by the alias's online learner (llmroute.gateway.learning): propensity, explored, features
    learning: dict[str, Any] | None = None

    def candidates(self) -> list[dict[str, Any]]:
        """Ranked candidates with their estimates (for traces and `/v1/route`)."""
        return [
            {
                "model": m,
                "expected_quality": self.expected_quality.get(m),
                "expected_cost": self.expected_cost.get(m),
            }
            for m in self.ranked
        ]

    def headers(self) -> list[tuple[str, str]]:
        """Response headers beyond model/reason: `x-llmroute-sticky` on a sticky alias (held,
        broken and why, or new; `llmroute.gateway.sticky`), `x-llmroute-constraint` when max_cost or
        min_quality applied ("met", or which limit no candidate meets), and when a rule changed
        this request's policy `x-llmroute-rule` (the rules) with the effective values
        (`x-llmroute-tradeoff`, `x-llmroute-max-cost`, `x-llmroute-min-quality`)."""
        pol = self.policy
        if not pol:
            return []
        out: list[tuple[str, str]] = []
        sticky = self.extra.get("sticky")
        if sticky is not None:
            from llmroute.gateway.sticky import sticky_header

            out.append(("x-llmroute-sticky", sticky_header(sticky)))
        if pol.get("max_cost") is not None or pol.get("min_quality") is not None:
            out.append(("x-llmroute-constraint", constraint_header(self)))
        set_by = pol.get("set_by")
        if set_by:
            out.append(("x-llmroute-rule", ",".join(dict.fromkeys(set_by.values()))))
            for k in ("tradeoff", "max_cost", "min_quality"):
                if k in set_by and pol.get(k) is not None:
                    out.append((f"x-llmroute-{k.replace('_', '-')}", f"{pol[k]:g}"))
        return out

    def summary(self) -> dict[str, Any]:
        """The policy part of a decision record (`/v1/route`, traces): JSON-able."""
        pol = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in self.policy.items()}
        return {
            "policy": pol,
            "constraints_met": self.constraints_met,
            "unmet_constraints": list(self.unmet_constraints),
        }


def constraint_header(d: RouteDecision) -> str:
    """`x-llmroute-constraint`: "met", or e.g. "unmet max_cost: expected $0.0023 > $0.001;
    closest candidate served" (or "...; rejected" under on_unmet: reject)."""
    if d.constraints_met:
        return "met"
    pol = d.policy
    parts = []
    if "max_cost" in d.unmet_constraints:
        c = d.expected_cost.get(d.model, math.nan)
        parts.append(f"max_cost: expected ${c:.3g} > ${pol['max_cost']:.3g}")
    if "min_quality" in d.unmet_constraints:
        q = d.expected_quality.get(d.model, math.nan)
        parts.append(f"min_quality: expected {q:.3f} < {pol['min_quality']:g}")
    tail = "rejected" if pol.get("on_unmet") == "reject" else "closest candidate served"
    return f"unmet {'; '.join(parts)}; {tail}"


def choose_one(
    q: list[float],
    c: list[float],
    ok: list[bool],
    *,
    tradeoff: float = 0.0,
    max_cost: float | None = None,
    min_quality: float | None = None,
) -> int:
    """`llmroute.policy.choose` for one row (`ok` = the admissible models), in plain Python: a few
    us instead of ~40 us of numpy calls on the gateway's hot path; see `policy.choose_row`."""
    return choose_row(q, c, tradeoff=tradeoff, max_cost=max_cost, min_quality=min_quality, mask=ok)
