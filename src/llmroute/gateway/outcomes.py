"""Outcomes of routed requests: the one entry point for explicit and implicit feedback.

    ok = await record_outcome(gateway, request_id, 0.0, "regenerate")        # implicit signal
    ok = await record_outcome(gateway, request_id, 1.0, "feedback", owner=key_id, fields={...})

`record_outcome` ties an outcome to the decision it grades (the request's trace record), stores
it there, and hands a scored outcome to the alias's online learner when learning is on
(`llmroute.gateway.learning`; the trace fields the learner needs are read in the same hop to the
store's writer thread; then learned by this worker at once, published to the other workers with
its next sync; on Redis learned with the next batch, ~20 ms later). With workers
sharing the store, `record_or_defer` keeps the outcome of a request id whose trace is not there
yet (another worker's commit window) in `PendingOutcomes` until it lands (`/v1/feedback`: 202). `POST /v1/feedback` calls it with source `"feedback"`; implicit
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

import asyncio
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmroute.gateway.app import Gateway

__all__ = [
    "EXPLICIT",
    "LABELS",
    "PENDING",
    "RECORDED",
    "UNKNOWN",
    "PendingOutcomes",
    "may_share_store",
    "record_or_defer",
    "record_outcome",
    "score_from_feedback",
]

log = logging.getLogger("llmroute.gateway.outcomes")

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
    if store is None:
        return False
    learning = getattr(gateway, "learning", None)
    if learning is not None and score is not None and learning.learns():
        # one hop to the store's writer thread: the outcome stored, and the trace fields the
        # learner needs read; then learned at once (Redis: with the next batch, ~20 ms)
        stored, row = await store.arun(
            lambda b: learning.attach_and_read(b, request_id, dict(outcome), owner)
        )
        if not stored:
            return False
        learning.learn(request_id, row, float(score), source)
    elif not await store.aattach_feedback(request_id, outcome, owner):
        return False
    for hook in gateway.feedback_hooks:
        await hook(request_id, outcome)
    return True


#: statuses of `record_or_defer`
RECORDED, PENDING, UNKNOWN = "recorded", "pending", "unknown"


def may_share_store(gateway: Gateway) -> bool:
    """Whether other processes may write traces to this gateway's store (then a request id it
    does not find yet may be another worker's trace inside that worker's commit window):
    `llmroute serve --workers N>1` (`LLMROUTE_SHARED_DIR`), a Postgres store, or replicas on a
    shared Redis state."""
    cfg = gateway.config
    url = cfg.store.url
    return bool(
        os.environ.get("LLMROUTE_SHARED_DIR")
        or url.startswith(("postgres://", "postgresql://"))
        or getattr(cfg, "state", None)
    )


async def record_or_defer(
    gateway: Gateway,
    request_id: str,
    score: float | None,
    source: str,
    *,
    owner: str | None = None,
    fields: dict[str, Any] | None = None,
) -> str:
    """`record_outcome`, keeping the outcome of a request id the store does not have yet when
    other processes write to the same store (`may_share_store`): "recorded", "pending" (queued in
    `gateway`'s `PendingOutcomes`, recorded and learned when the trace lands, within
    `PendingOutcomes.wait_s`) or "unknown" (nothing stored: not found, not `owner`'s, or the
    pending queue is full)."""
    if await record_outcome(gateway, request_id, score, source, owner=owner, fields=fields):
        return RECORDED
    if not may_share_store(gateway):
        return UNKNOWN
    pending: PendingOutcomes | None = getattr(gateway, "pending_outcomes", None)
    if pending is None:
        pending = PendingOutcomes(gateway)
        gateway.pending_outcomes = pending  # type: ignore[attr-defined]
    return PENDING if pending.add(request_id, score, source, owner, fields) else UNKNOWN


class PendingOutcomes:
    """Outcomes waiting for their request's trace (written by another worker and still in its
    commit window, `store.commit_interval_s`). Each is retried every `retry_s` until its trace
    lands (then recorded and learned like any outcome) or `wait_s` passed (dropped and counted
    as expired: the id was unknown). At most `max_items` wait, and at most `max_per_owner` of one
    API key, so one key's made-up ids cannot crowd out everyone else's feedback (a full queue
    refuses more). Items are kept per (request id, source, owner): feedback from a key that does
    not own the request cannot replace the owner's pending outcome (it expires on its own). The
    retry task runs only while something waits (no task to stop at shutdown)."""

    def __init__(
        self,
        gateway: Gateway,
        wait_s: float | None = None,
        max_items: int = 10_000,
        retry_s: float = 0.1,
        max_per_owner: int = 1_000,
    ) -> None:
        self.gateway = gateway
        commit = float(getattr(gateway.config.store, "commit_interval_s", 0.5))
        # the other worker's commit window, its flush and our retry, with room for a loaded host
        self.wait_s = 2.0 * commit + 2.0 if wait_s is None else float(wait_s)
        self.max_items = int(max_items)
        self.max_per_owner = int(max_per_owner)
        self._per_owner: dict[str | None, int] = {}
        self.retry_s = float(retry_s)
        self._items: dict[
            tuple[str, str, str | None], tuple[float, float | None, str | None, dict[str, Any] | None]
        ] = {}
        self._task: asyncio.Task[None] | None = None
        self.resolved = 0
        self.expired = 0
        self.refused = 0

    def add(
        self,
        request_id: str,
        score: float | None,
        source: str,
        owner: str | None,
        fields: dict[str, Any] | None,
    ) -> bool:
        """Queue an outcome (a later one of the same request, source and owner replaces it);
        False when `max_items` already wait, or `max_per_owner` of this owner."""
        key = (request_id, source, owner)
        if key not in self._items:
            if len(self._items) >= self.max_items or self._per_owner.get(owner, 0) >= self.max_per_owner:
                self.refused += 1
                return False
            self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        self._items[key] = (
            time.monotonic() + self.wait_s,
            score,
            owner,
            None if fields is None else dict(fields),
        )
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def _run(self) -> None:
        while self._items:
            await asyncio.sleep(self.retry_s)
            for key, item in list(self._items.items()):
                deadline, score, owner, fields = item
                try:
                    ok = await record_outcome(self.gateway, key[0], score, key[1], owner=owner, fields=fields)
                except Exception as e:  # the store closed (shutdown) or failed: give up on it
                    log.warning("pending outcome of %s dropped: %s", key[0][:64], e)
                    ok, deadline = False, 0.0
                if ok:
                    self.resolved += 1
                elif time.monotonic() < deadline:
                    continue
                else:
                    self.expired += 1
                if self._items.get(key) is item:  # not replaced by a newer one meanwhile
                    del self._items[key]
                    left = self._per_owner.get(key[2], 1) - 1
                    if left > 0:
                        self._per_owner[key[2]] = left
                    else:
                        self._per_owner.pop(key[2], None)

    def stats(self) -> dict[str, int]:
        """Waiting now, resolved (recorded when the trace landed), expired, refused (queue full)."""
        return {
            "waiting": len(self._items),
            "resolved": self.resolved,
            "expired": self.expired,
            "refused": self.refused,
        }
