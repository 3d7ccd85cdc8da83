"""Answer verifiers for cascades: score a model's answer in [0, 1] before deciding to escalate.

Each verifier looks at the OpenAI chat request `body` and the OpenAI `response` and returns a
`Check` (a score in [0, 1], or `None` when it does not apply, and why). `verify` runs a list of
them and combines the applicable scores by their minimum: one failed check fails the answer.

Built-in checks (names usable in a cascade's `verifier:` list):

- `empty`: 0 when the answer has neither text nor tool calls, or stopped on
  `finish_reason=length` (truncated); 1 otherwise.
- `refusal`: 0 on refusal cues ("I cannot help with that", "I'm unable to"), 0.5 on hedging
  cues ("I'm not sure", "I might be wrong"), 1 otherwise.
- `json`: when the request asks for JSON (`response_format` `json_object` or `json_schema`):
  0 unless the answer parses as JSON and, for `json_schema`, matches the schema (a subset of JSON
  Schema: type, properties, required, additionalProperties: false, items, enum, const, minItems,
  maxItems); n/a otherwise.
- `code`: when the answer holds fenced Python code blocks: 0 unless every one parses; n/a otherwise.
- `final_answer`: when the prompt asks for a final number or a letter ("final number", "answer
  with the letter", "final answer"): 0 unless the answer states one; n/a otherwise.
- `logprob`: when the response carries token log-probabilities with alternatives
  (`logprobs.content[*].top_logprobs`): the mean over tokens of p(top token) - p(runner-up), the
  model's margin of confidence; n/a otherwise.

A learned answer-quality estimator plugs in as any object with `name` and
`score(body, response) -> Check` (see `Verifier`), passed to `verify(..., extra=[...])`.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

__all__ = [
    "CHECKS",
    "DEFAULT_CHECKS",
    "Check",
    "Verdict",
    "Verifier",
    "answer_text",
    "check_code",
    "check_empty",
    "check_final_answer",
    "check_json",
    "check_logprob",
    "check_refusal",
    "schema_errors",
    "verify",
]


@dataclass(frozen=True)
class Check:
    """One verifier's view of an answer: `score` in [0, 1] (None: does not apply) and why."""

    name: str
    score: float | None
    why: str = ""


@dataclass(frozen=True)
class Verdict:
    """The combined score of the applicable checks (their minimum; 1.0 when none applies), the
    check that set it, and every check's result."""

    score: float
    why: str
    checks: tuple[Check, ...]

    def passed(self, threshold: float) -> bool:
        """Whether the answer is good enough to stop the cascade (`score >= threshold`)."""
        return self.score >= threshold

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for traces."""
        return {
            "score": self.score,
            "why": self.why,
            "checks": {c.name: c.score for c in self.checks if c.score is not None},
        }


class Verifier(Protocol):
    """A pluggable verifier (e.g. a learned answer-quality estimator)."""

    name: str

    def score(self, body: dict[str, Any], response: dict[str, Any]) -> Check:
        """The `Check` of `response` to the chat request `body`."""
        ...


def _choice(response: dict[str, Any]) -> dict[str, Any]:
    choices = response.get("choices") or []
    return choices[0] if choices and isinstance(choices[0], dict) else {}


def answer_text(response: dict[str, Any]) -> str:
    """The first choice's message text ('' when none)."""
    msg = _choice(response).get("message") or {}
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _prompt_text(body: dict[str, Any]) -> str:
    """The last user message's text."""
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
    return ""


# ---- the checks ------------------------------------------------------------------------------
def check_empty(body: dict[str, Any], response: dict[str, Any]) -> Check:
    """0 for an empty answer (no text, no tool call) or one cut at the output limit."""
    ch = _choice(response)
    if ch.get("finish_reason") == "length":
        return Check("empty", 0.0, "truncated (finish_reason=length)")
    msg = ch.get("message") or {}
    if msg.get("tool_calls") or msg.get("function_call"):
        return Check("empty", 1.0, "tool call")
    if not answer_text(response).strip():
        return Check("empty", 0.0, "empty answer")
    return Check("empty", 1.0)


_REFUSAL = re.compile(
    r"(?i)\b(?:I(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:no|')t|won't|am unable)|"
    r"I (?:can(?:no|')t|won't|am unable to|'m unable to) (?:help|assist|answer|do|provide|comply)|"
    r"sorry, I (?:can(?:no|')t|won't)|as an AI(?: language model)?,? I (?:can(?:no|')t|don't))"
)
_HEDGE = re.compile(
    r"(?i)\b(?:I(?:'m| am) not (?:sure|certain)|I (?:might|may|could) be wrong|I don't know|"
    r"not entirely sure|hard to say|I can't be certain|I'm unsure)\b"
)


def check_refusal(body: dict[str, Any], response: dict[str, Any]) -> Check:
    """0 on refusal cues, 0.5 on hedging cues, 1 otherwise."""
    text = answer_text(response)
    m = _REFUSAL.search(text)
    if m:
        return Check("refusal", 0.0, f"refusal: {m.group(0)[:40]!r}")
    m = _HEDGE.search(text)
    if m:
        return Check("refusal", 0.5, f"hedging: {m.group(0)[:40]!r}")
    return Check("refusal", 1.0)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value: Any, schema: Any, path: str = "$", depth: int = 0) -> list[str]:
    """Where `value` breaks `schema` (a JSON Schema subset: type, properties, required,
    additionalProperties: false, items, enum, const, minItems, maxItems); [] when it conforms.
    Unknown keywords are ignored (they neither pass nor fail an answer)."""
    if not isinstance(schema, dict) or depth > 32:
        return []
    errs: list[str] = []
    t = schema.get("type")
    if t is not None:
        kinds = t if isinstance(t, list) else [t]
        if not any(_TYPES.get(k, lambda v: True)(value) for k in kinds):
            return [f"{path}: expected {'/'.join(map(str, kinds))}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: not one of the enum values")
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: not the const value")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for k in schema.get("required") or []:
            if k not in value:
                errs.append(f"{path}.{k}: required")
        for k, v in value.items():
            if k in props:
                errs.extend(schema_errors(v, props[k], f"{path}.{k}", depth + 1))
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}.{k}: not allowed")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errs.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errs.append(f"{path}: more than {schema['maxItems']} items")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, v in enumerate(value):
                errs.extend(schema_errors(v, items, f"{path}[{i}]", depth + 1))
    return errs


def check_json(body: dict[str, Any], response: dict[str, Any]) -> Check:
    """When JSON was asked for: 1 if the answer is JSON (matching the json_schema, if any), else 0."""
    rf = body.get("response_format")
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind not in ("json_object", "json_schema"):
        return Check("json", None)
    text = answer_text(response).strip()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Check("json", 0.0, "answer is not valid JSON")
    if kind == "json_schema":
        spec = rf.get("json_schema") or {}
        errs = schema_errors(value, spec.get("schema") if isinstance(spec, dict) else None)
        if errs:
            return Check("json", 0.0, f"schema: {errs[0][:80]}")
    return Check("json", 1.0)


_FENCE = re.compile(r"```([\w+-]*)[ \t]*\n(.*?)```", re.S)


def check_code(body: dict[str, Any], response: dict[str, Any]) -> Check:
    """When the answer holds fenced Python blocks (```python, ```py or unlabelled): 1 if all parse."""
    blocks = [
        code for lang, code in _FENCE.findall(answer_text(response)) if lang.lower() in ("", "python", "py")
    ]
    if not blocks:
        return Check("code", None)
    for code in blocks:
        try:
            ast.parse(code)
        except (SyntaxError, ValueError) as e:
            return Check("code", 0.0, f"code does not parse: {type(e).__name__}")
    return Check("code", 1.0)


_ASKS_NUMBER = re.compile(r"(?i)\b(?:final (?:number|numeric answer)|reply with (?:the|a) number|\\boxed)")
_ASKS_LETTER = re.compile(r"(?i)\banswer with the (?:letter|option)\b")
_ASKS_FINAL = re.compile(r"(?i)\bfinal answer\b")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_LETTER = re.compile(r"(?:^|[\s(\[])([A-E])(?:[)\].:,\s]|$)")


def check_final_answer(body: dict[str, Any], response: dict[str, Any]) -> Check:
    """When the prompt asks for a final number / letter / answer: 1 if the answer states one."""
    prompt = _prompt_text(body)
    text = answer_text(response)
    if _ASKS_NUMBER.search(prompt):
        ok = bool(_NUMBER.search(text))
        return Check("final_answer", 1.0 if ok else 0.0, "" if ok else "no final number")
    if _ASKS_LETTER.search(prompt):
        ok = bool(_LETTER.search(text))
        return Check("final_answer", 1.0 if ok else 0.0, "" if ok else "no answer letter")
    if _ASKS_FINAL.search(prompt):
        ok = bool(re.search(r"(?i)\b(?:final answer|answer is|answer:)", text))
        return Check("final_answer", 1.0 if ok else 0.0, "" if ok else "no final answer")
    return Check("final_answer", None)


def check_logprob(body: dict[str, Any], response: dict[str, Any]) -> Check:
    """The mean token margin p(top) - p(runner-up) when the response has `top_logprobs`."""
    lp = _choice(response).get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    if not content:
        return Check("logprob", None)
    margins: list[float] = []
    for tok in content:
        if not isinstance(tok, dict):
            continue
        tops = sorted(
            (
                float(t["logprob"])
                for t in tok.get("top_logprobs") or []
                if isinstance(t, dict) and "logprob" in t
            ),
            reverse=True,
        )
        if not tops and "logprob" in tok:
            tops = [float(tok["logprob"])]
        if not tops:
            continue
        p1 = math.exp(tops[0])
        p2 = math.exp(tops[1]) if len(tops) > 1 else max(0.0, 1.0 - p1)
        margins.append(max(0.0, min(1.0, p1 - p2)))
    if not margins:
        return Check("logprob", None)
    m = sum(margins) / len(margins)
    return Check("logprob", m, f"mean token margin {m:.2f}")


CHECKS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Check]] = {
    "empty": check_empty,
    "refusal": check_refusal,
    "json": check_json,
    "code": check_code,
    "final_answer": check_final_answer,
    "logprob": check_logprob,
}
"""Built-in checks by name."""

DEFAULT_CHECKS: tuple[str, ...] = tuple(CHECKS)
"""Every built-in check (a cascade's default `verifier:`)."""


def verify(
    body: dict[str, Any],
    response: dict[str, Any],
    checks: Sequence[str] = DEFAULT_CHECKS,
    *,
    extra: Sequence[Verifier] = (),
) -> Verdict:
    """Run the named built-in `checks` and the `extra` verifiers on `response`; the verdict's
    score is the minimum of the applicable scores (1.0 when none applies)."""
    results = [CHECKS[name](body, response) for name in checks]
    results.extend(v.score(body, response) for v in extra)
    applicable = [c for c in results if c.score is not None]
    if not applicable:
        return Verdict(1.0, "no check applies", tuple(results))
    worst = min(applicable, key=lambda c: c.score)  # type: ignore[arg-type, return-value]
    score = float(worst.score)  # type: ignore[arg-type]
    why = f"{worst.name}: {worst.why}" if worst.why else ("pass" if score >= 1.0 else worst.name)
    return Verdict(score, why, tuple(results))
