"""Outcomes of routed requests: the one entry point for explicit and implicit feedback.

    ok = await record_outcome(gateway, request_id, 0.0, "regenerate")        # implicit signal
    ok = await record_outcome(gateway, request_id, 1.0, "feedback", owner=key_id, fields={...})

`record_outcome` ties an outcome to the decision it grades (the request's trace record), stores
it there, and hands a scored outcome to the alias's online learner when learning is on
(`llmroute.gateway.learning`). `POST /v1/feedback` calls it with source `"feedback"`; implicit
detectors (re-ask, regenerate, finish_reason=length, refusal, failed tool call) call it with
their own source name.

How an outcome is stored in the trace's `outcome` JSON object (merged with what is there):

- explicit (`source == "feedback"`): `quality` (the score, when given) and the other `fields`
  of the feedback body (e.g. `thumbs`, `label`, a comment);
- implicit (any other source): one key per source, `"<source>": score` (e.g. `"regenerate": 0.0`),
  so explicit and implicit scores of one request can be told apart.

What the learner learns (at most one active outcome per request id; see
`llmroute.gateway.learning.LearnerState`): the first implicit score of a request, replaced by an
explicit one when it arrives (the implicit update is undone); a later explicit score replaces
an earlier explicit one; a repeat of the same score, or an implicit score after any other, is a
no-op. So `/v1/feedback` is idempotent by request id.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmroute.gateway.app import Gateway

__all__ = ["EXPLICIT", "LABELS", "record_outcome", "score_from_feedback"]

#: the source name of explicit feedback (`POST /v1/feedback`)
EXPLICIT = "feedback"

_THUMBS: dict[Any, float] = {"up": 1.0, "down": 0.0, True: 1.0, False: 0.0}
#: the labels `/v1/feedback` understands (case-insensitive) and the score each stands for
LABELS: dict[str, float] = {
    "good": 1.0,
    "correct": 1.0,
    "helpful": 1.0,
    "partial": 0.5,
    "bad": 0.0,
    "wrong": 0.0,
    "incorrect": 0.0,
    "unhelpful": 0.0,
}


def score_from_feedback(body: dict[str, Any], labels: dict[str, float] | None = None) -> float | None:
    """The score in [0, 1] a `/v1/feedback` body gives: `quality` (or `score`) as is, `thumbs`
    ("up"/"down", true/false) as 1/0, or `label` mapped by `labels` (default `LABELS`; case-
    insensitive). None when the body carries none of these (it is then stored, not learned).
    A bad value raises ValueError saying what is allowed."""
    for k in ("quality", "score"):
        v = body.get(k)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"'{k}' must be a number in [0, 1], got {v!r}")
            return float(v)
    if "thumbs" in body and body["thumbs"] is not None:
        t = body["thumbs"]
        key = t.lower() if isinstance(t, str) else t
        if not isinstance(t, str | bool) or key not in _THUMBS:
            raise ValueError(f'\'thumbs\' must be "up" or "down" (or true/false), got {t!r}')
        return _THUMBS[key]
    label = body.get("label")
    if label is not None:
        table = {str(k).lower(): float(v) for k, v in (LABELS if labels is None else labels).items()}
        score = table.get(str(label).lower())
        if score is None:
            known = ", ".join(sorted(table))
            raise ValueError(f"unknown 'label' {str(label)[:64]!r}; known labels: {known}")
        return score
    return None


async def record_outcome(
    gateway: Gateway,
    request_id: str,
    score: float | None,
    source: str,
    *,
    owner: str | None = None,
    fields: dict[str, Any] | None = None,
) -> bool:
    """Tie an outcome to the decision it grades and learn from it.

    gateway: the running `Gateway`; request_id: the graded response's `x-llmroute-request-id`;
    score: in [0, 1] (None: store `fields` only, nothing is learned); source: `"feedback"` for
    explicit feedback, else the implicit signal's name (e.g. "regenerate", "length");
    owner: with API keys, the key id that must own the request (another key's request is
    treated as unknown); fields: more fields to store with an explicit outcome.

    Returns False when the request id is unknown (or not `owner`'s, or its trace was pruned);
    then nothing is stored or learned. Raises ValueError for a score outside [0, 1] or an
    empty source.
    """
    if not source:
        raise ValueError("record_outcome needs a source name ('feedback' or the implicit signal's name)")
    if score is not None and (not math.isfinite(score) or not 0.0 <= score <= 1.0):
        raise ValueError(f"an outcome score must be in [0, 1], got {score!r}")
    if source == EXPLICIT:
        outcome: dict[str, Any] = dict(fields or {})
        if score is not None:
            outcome["quality"] = float(score)
    else:
        outcome = {source: None if score is None else float(score)}
    store = gateway.store
    if store is None or not await store.aattach_feedback(request_id, outcome, owner):
        return False
    learning = getattr(gateway, "learning", None)
    if learning is not None and score is not None:
        await learning.outcome(request_id, float(score), source)
    for hook in gateway.feedback_hooks:
        await hook(request_id, outcome)
    return True
