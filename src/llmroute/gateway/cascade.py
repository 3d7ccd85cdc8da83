"""Cascades in the gateway: a cheap model first, escalate while a verifier rejects its answer.

An alias with a `cascade:` block (`llmroute.gateway.config.CascadeConfig`) answers each request
in steps. Step 1 calls the first model: the first of `cascade.models`, or the router's pick when
`models` is unset. Its answer is scored by the verifier checks (`llmroute.cascade.verifiers`);
a score >= `threshold` is served. Otherwise the next model is called, chosen by `cascade.next`:

- `reestimate` (the default without `models`): the models not tried are re-estimated with the
  evidence so far (`llmroute.cascade.reestimate.DifficultyReestimator`: the router's prior of
  each model, the verifier score of each answer, agreement of the answers' extracted answers)
  and the one with the largest expected gain - tradeoff x expected cost is called, while that is
  > 0 (`choose_next`, the rule `llmroute.cascade.offline` evaluates; tradeoff and costs are the
  request's routing decision's; no trade-off, e.g. a min_quality rule: quality alone). No model
  worth its cost stops the cascade (`no_gain`). A model without a router estimate (outside the
  alias's candidates) makes that step fall back to `ranked`;
- `ranked` (the default with `models`): the next of `models`, or the router's next-ranked
  candidate not tried yet.

The cascade stops at the first passing answer, after `max_steps` answers, when no model is left
or worth its cost, or when the next step could break `max_cost_usd` (the cost so far plus the
step's worst case: its input tokens plus `max_tokens` of output at its prices). When no answer
passes, the best-scoring one is served (ties: the later).

Escalation without an answer (not counted as a step): a model whose context window cannot hold
the request is skipped, and an upstream context-length error moves on to a model with a larger
window; a model with no answer (streams: no first token; then no chunk, the backend's read
timeout) within `stall_s` is left for the next one; a failed call (after the executor's retries) falls back to the next model.

Streams: each step's answer is held back and verified while it is at most
`stream_buffer_chars` characters long; the answer served is then sent as a stream. A longer
answer is streamed as it comes (headers first) and the cascade ends with it; the last possible
step always streams at once.

`learned_verifier: path.json` adds a learned answer-quality estimator
(`llmroute.cascade.learned.LearnedVerifier`) to the checks.

Every step is in the trace (`extra.cascade`: model, score, why, cost, error) and in the
`x-llmroute-cascade` response header: one `model;score=S;cost_usd=C;why=W` item per step,
comma-separated, then `stop=REASON`. Each re-estimation is in the trace (`extra.cascade.next`:
the answers' P(right), each candidate's gain, cost and net, the model chosen or none, and why)
and, compactly, on the step it followed: `;next=M|none;est=M1:gG:cC|M2:...` (candidates by
net, best first; gain G, expected cost C). The client's budget holds the worst case of the steps
allowed (`worst_cost`) and is charged for every call made.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from llmroute.cascade.reestimate import DifficultyReestimator, Evidence, choose_next, extract_answer
from llmroute.cascade.verifiers import Verdict, verify
from llmroute.gateway.asgi import JSON, SSE, header, send_response, trace_headers
from llmroute.gateway.backends import BackendError
from llmroute.gateway.config import CascadeConfig
from llmroute.gateway.reliability import Attempt
from llmroute.gateway.streaming import settle_anyway
from llmroute.gateway.tokens import response_text, stream_text

if TYPE_CHECKING:
    from llmroute.gateway.app import ApiFamily, Gateway
    from llmroute.gateway.routing import RequestContext, RouteDecision

__all__ = ["CASCADE_HEADER", "Cascade", "Step", "is_context_overflow"]

CASCADE_HEADER = b"x-llmroute-cascade"
_STREAMED = object()  # a step's answer was streamed out: the cascade ends with it

_OVERFLOW = re.compile(
    r"(?i)context[ _-]?(?:length|window)|maximum context|prompt is too long|too many (?:input )?tokens"
)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def is_context_overflow(e: BackendError) -> bool:
    """Whether an upstream error says the request does not fit the model's context window."""
    return e.code == "context_length_exceeded" or bool(_OVERFLOW.search(e.message or ""))


@dataclass
class Step:
    """One model call of a cascade (an answer, or an error without one)."""

    model: str
    score: float | None = None
    why: str = ""
    cost_usd: float = 0.0
    error: str | None = None
    tokens: tuple[int, int] = (0, 0)
    plan: str = ""  # the re-estimation after this step, compact (`next=...;est=...`)

    def item(self) -> str:
        """This step in `x-llmroute-cascade`."""
        score = "none" if self.score is None else f"{self.score:.3g}"
        why = self.error or self.why or "pass"
        why = re.sub(r"[^A-Za-z0-9_.=:+-]+", "_", why)[:60]
        plan = f";{self.plan}" if self.plan else ""
        return f"{self.model};score={score};cost_usd={self.cost_usd:.6g};why={why}{plan}"

    def result(self, threshold: float) -> str:
        """This step's outcome for the metrics: passed (score >= `threshold`), below_threshold,
        unverified (streamed through without a verdict), or the failure's kind."""
        if self.error:  # a bounded label set: the kinds `_failed_step` writes, else "error"
            kind = self.error.split(":", 1)[0]
            return kind if kind in ("stalled", "context_window", "failed") else "error"
        if self.score is None:  # streamed straight through without a verdict
            return "unverified"
        return "passed" if self.score >= threshold else "below_threshold"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for the trace."""
        d: dict[str, Any] = {"model": self.model, "score": self.score, "cost_usd": self.cost_usd}
        if self.why:
            d["why"] = self.why
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class _Answer:
    model: str
    resp: dict[str, Any]
    verdict: Verdict
    chunks: list[dict[str, Any]] | None = None  # a buffered stream's chunks


@dataclass
class _Run:
    """The state of one request's cascade."""

    steps: list[Step] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    spent: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    answers: int = 0
    best: _Answer | None = None
    stop: str = ""
    answered: list[_Answer] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)  # the re-estimations

    def add_answer(self, ans: _Answer, step: Step) -> None:
        self.steps.append(step)
        self.answered.append(ans)
        self.spent += step.cost_usd
        self.tokens_in += step.tokens[0]
        self.tokens_out += step.tokens[1]
        self.answers += 1
        if self.best is None or ans.verdict.score >= self.best.verdict.score:
            self.best = ans

    def header(self) -> tuple[bytes, bytes]:
        items = [s.item() for s in self.steps] + [f"stop={self.stop or 'pass'}"]
        return header(CASCADE_HEADER, ", ".join(items))

    def trace(self) -> dict[str, Any]:
        out = {"steps": [s.as_dict() for s in self.steps], "stop": self.stop, "cost_usd": self.spent}
        if self.plans:
            out["next"] = self.plans
        return out


class _Steps:
    """The walk over a cascade's models that `Cascade.complete` and `Cascade.stream` share: the
    next model to call with its step deadline, and what a call without an answer means for the
    rest of the walk (a larger window next, fall back, or stop)."""

    __slots__ = ("above", "body", "casc", "ctx", "deadline", "decision", "last_err", "order", "run", "tried")

    def __init__(
        self,
        casc: Cascade,
        run: _Run,
        ctx: RequestContext,
        decision: RouteDecision,
        body: dict[str, Any],
        deadline: float,
    ) -> None:
        self.casc = casc
        self.run = run
        self.ctx = ctx
        self.decision = decision
        self.body = body
        self.deadline = deadline
        self.order = casc.order(ctx, decision)
        self.tried: set[str] = set()
        self.above = 0  # the largest window of a model that reported a context overflow
        self.last_err: BackendError | None = None  # the last call's error without an answer

    def next(self) -> tuple[str, float] | None:
        """The next model and its step deadline, or None when the cascade stops (`run.stop` set:
        max_steps, deadline, max_cost or no model left)."""
        run = self.run
        if run.answers >= self.casc.cfg.max_steps:
            run.stop = "max_steps"
            return None
        if time.monotonic() >= self.deadline:
            run.stop = "deadline"
            return None
        m = self.casc._next(self.order, self.tried, run, self.ctx, self.decision, self.body, self.above)
        if m is None:
            return None
        self.tried.add(m)
        return m, self.casc._deadline(self.deadline)

    def failed(self, model: str, e: BackendError, step_deadline: float, t0: float) -> bool:
        """Record `model`'s call that failed with `e` (started at monotonic `t0`); whether the
        cascade goes on to the next model."""
        self.last_err = e
        kind = self.casc._failed_step(self.run, model, e, step_deadline, self.deadline, t0)
        if kind == "context_window":
            self.above = max(self.above, self.casc.gw.engine.models[model].context_window or 0)
        elif not e.fallback and kind != "stalled":
            self.run.stop = "client_error"
            return False  # the request itself is at fault: another model fails it too
        return True


class Cascade:
    """The cascade of one alias, run inside a `Gateway`'s request pipeline."""

    def __init__(self, gw: Gateway, alias: str, cfg: CascadeConfig) -> None:
        self.gw = gw
        self.alias = alias
        self.cfg = cfg
        self.extra: list[Any] = []  # verifiers beyond the named checks
        self.next_mode = cfg.next_mode
        self.estimator = DifficultyReestimator()
        if cfg.learned_verifier:
            from llmroute.cascade.learned import LearnedVerifier

            self.extra.append(LearnedVerifier.load(gw.config.resolve_path(cfg.learned_verifier)))

    # ---- planning ------------------------------------------------------------------------------
    def order(self, ctx: RequestContext, decision: RouteDecision) -> list[str]:
        """The models in the order the cascade tries them."""
        models = list(self.cfg.models) if self.cfg.models else list(decision.ranked)
        if ctx.allowed is not None:
            allowed = set(ctx.allowed)
            models = [m for m in models if m in allowed]
        return models

    def step_max_cost(self, model: str, body: dict[str, Any]) -> float:
        """The most one call of `model` can cost for `body` (`Pricing.step_max_cost`)."""
        return self.gw.pricing.step_max_cost(model, body)

    def worst_cost(self, ctx: RequestContext, decision: RouteDecision, body: dict[str, Any]) -> float:
        """The budget hold: the `max_steps` dearest steps' worst cases, and never more than the
        ceiling allows (a later step must fit `max_cost_usd`; the first is always made)."""
        costs = sorted((self.step_max_cost(m, body) for m in self.order(ctx, decision)), reverse=True)
        total = sum(costs[: self.cfg.max_steps])
        if self.cfg.max_cost_usd is not None and costs:
            total = min(total, max(costs[0], self.cfg.max_cost_usd))
        return total

    def _fits(self, model: str, ctx: RequestContext, body: dict[str, Any], above: int) -> bool:
        """Whether `model`'s context window (when configured) holds the request, and is larger
        than `above` (the window of a model that reported an overflow)."""
        w = self.gw.engine.models[model].context_window
        if w is None:
            return True
        mt = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        return w > above and len(ctx.text) / 4.0 + float(mt) <= w

    def _next(
        self,
        order: list[str],
        tried: set[str],
        run: _Run,
        ctx: RequestContext,
        decision: RouteDecision,
        body: dict[str, Any],
        above: int,
    ) -> str | None:
        """The next model to call, or None (sets `run.stop`): the first model of `order` that
        fits (window, cost ceiling), or after an answer with `next: reestimate` the one
        `_reestimate` chooses among those that fit."""
        why = "no model left"
        eligible: list[str] = []
        for m in order:
            if m in tried:
                continue
            if not self._fits(m, ctx, body, above):
                tried.add(m)
                run.steps.append(Step(m, error="context_window: request does not fit"))
                continue
            ceiling = self.cfg.max_cost_usd
            if run.answers and ceiling is not None and run.spent + self.step_max_cost(m, body) > ceiling:
                why = "max_cost"
                continue
            if self.next_mode == "ranked" or not run.answered:
                return m
            eligible.append(m)
        if eligible:
            pick = self._reestimate(eligible, run, ctx, decision)
            if pick is not None:
                return pick
            why = "no_gain"
        run.stop = why
        return None

    def _reestimate(
        self, eligible: list[str], run: _Run, ctx: RequestContext, decision: RouteDecision
    ) -> str | None:
        """Re-estimate the `eligible` models with the answers so far and choose the next one by
        `choose_next` (None: none is worth its cost); the decision goes into `run.plans` and,
        compactly, onto the last step."""
        names = [a.model for a in run.answered] + eligible
        eq, ec = decision.expected_quality, decision.expected_cost
        missing = [m for m in names if not _finite(eq.get(m)) or not _finite(ec.get(m))]
        lam = decision.policy.get("tradeoff")
        lam = 0.0 if lam is None else float(lam)
        plan: dict[str, Any] = {"after": run.answers, "tradeoff": lam}
        if missing:
            plan |= {"next": eligible[0], "why": f"ranked: no router estimate for {missing}"}
            run.plans.append(plan)
            run.steps[-1].plan = f"next={eligible[0]};est=ranked"
            return eligible[0]
        k = len(run.answered)
        q = np.array([[eq[m] for m in names]], dtype=float)
        c = np.array([[ec[m] for m in names]], dtype=float)
        called = np.arange(len(names))[None, :] < k
        codes = np.full((1, len(names)), -1, dtype=np.int64)
        seen: dict[str, int] = {}
        for i, a in enumerate(run.answered):
            x = extract_answer(ctx.text, response_text(a.resp))
            if x is not None:
                codes[0, i] = seen.setdefault(x, len(seen))
        scores = np.full((1, len(names)), np.nan)
        scores[0, :k] = [a.verdict.score for a in run.answered]
        ev = Evidence(codes, scores, np.zeros((1, len(names), 0)), called)
        P, G = self.estimator.estimate(called, q, ev)
        j, go, net = choose_next(G, c, called, lam)
        cands = sorted(range(k, len(names)), key=lambda i: -net[0, i])
        pick = names[int(j[0])] if go[0] else None
        plan |= {
            "answers": [{"model": names[i], "p_right": round(float(P[0, i]), 4)} for i in range(k)],
            "candidates": [
                {
                    "model": names[i],
                    "prior": round(float(q[0, i]), 4),
                    "gain": round(float(G[0, i]), 4),
                    "cost": float(c[0, i]),
                    "net": round(float(net[0, i]), 4) if np.isfinite(net[0, i]) else None,
                }
                for i in cands
            ],
            "next": pick,
            "why": "largest gain - tradeoff x cost" if pick else "no model's gain is worth its cost",
        }
        run.plans.append(plan)
        est = "|".join(f"{names[i]}:g{G[0, i]:.3g}:c{c[0, i]:.3g}" for i in cands)
        run.steps[-1].plan = f"next={pick or 'none'};est={est}"
        return pick

    def _deadline(self, deadline: float) -> float:
        s = self.cfg.stall_s
        return deadline if s is None else min(deadline, time.monotonic() + s)

    def _usage(self, model: str, body: dict[str, Any], resp: dict[str, Any]) -> tuple[int, int, float]:
        if resp.get("usage"):
            return self.gw.pricing.cost(model, resp["usage"])
        return self.gw.pricing.estimated_cost(model, body, response_text(resp))

    def _failed_step(
        self, run: _Run, model: str, e: BackendError, step_deadline: float, deadline: float, t0: float
    ) -> str:
        """Record a call that gave no answer; returns its kind: stalled / context_window / failed."""
        atts = getattr(e, "attempts", None) or [
            Attempt(model, False, time.monotonic() - t0, e.message, e.status)
        ]
        run.attempts.extend(atts)
        if step_deadline < deadline and time.monotonic() >= step_deadline - 1e-3:
            kind = "stalled"
        elif is_context_overflow(e):
            kind = "context_window"
        else:
            kind = "failed"
        run.steps.append(Step(model, error=f"{kind}: {e.message[:120]}"))
        return kind

    async def _no_answer(
        self,
        send: Any,
        steps: _Steps,
        ctx: RequestContext,
        decision: RouteDecision,
        rid: str,
        t0: float,
        reservation: Any,
        api: ApiFamily,
        watch: Any,
        *,
        stream: bool = False,
    ) -> None:
        """No step gave an answer: answer the last upstream error (or a 502), with the steps traced."""
        run = steps.run
        err = steps.last_err or BackendError("no cascade model could take the request", status=502)
        err.attempts = run.attempts  # type: ignore[attr-defined]
        if run.steps:
            decision.extra["cascade"] = run.trace()
        await self.gw._upstream_failed(
            send, err, rid, ctx, decision, t0, reservation, api, watch, stream=stream
        )

    def _finish(self, run: _Run, **kw: Any) -> None:
        """The gateway's trace and metrics for a request the cascade answered (`Gateway._finish`
        with `kw`; attempts, usage and the trace's cascade come from `run` unless given), plus its
        steps and stop reason (`llmroute_cascade_steps_total`, `llmroute_cascade_requests_total`)."""
        steps = [(s.model, s.result(self.cfg.threshold)) for s in run.steps]
        self.gw.metrics.observe_cascade(self.alias, steps, run.stop or "pass")
        kw.setdefault("attempts", run.attempts)
        kw.setdefault("usage", (run.tokens_in, run.tokens_out, run.spent))
        self.gw._finish(extra={"cost_source": "cascade", "cascade": run.trace()}, **kw)

    # ---- the step loop -----------------------------------------------------------------------
    async def _walk(self, steps: _Steps, body: dict[str, Any], call: Any) -> bool:
        """The loop `complete` and `stream` share: call the next model (`await call(model,
        step_deadline)`: (model, response, buffered chunks or None); None when the call failed
        after it started, its step recorded; `_STREAMED` when its answer was streamed out, which
        ends the cascade), verify its answer, stop at the first that passes. A call that raises
        `BackendError` goes to `_Steps.failed`. Returns whether the answer was streamed out."""
        run = steps.run
        while (nxt := steps.next()) is not None:
            m, sd = nxt
            ts = time.monotonic()
            try:
                got = await call(m, sd)
            except BackendError as e:
                if steps.failed(m, e, sd, ts):
                    continue
                break
            if got is None:
                continue
            if got is _STREAMED:
                return True
            model, resp, chunks = got
            usage = self._usage(model, body, resp)
            verdict = verify(body, resp, self.cfg.verifier, extra=self.extra)
            step = Step(model, verdict.score, verdict.why, usage[2], tokens=(usage[0], usage[1]))
            run.add_answer(_Answer(model, resp, verdict, chunks), step)
            if verdict.passed(self.cfg.threshold):
                run.stop = "pass"
                break
        return False

    # ---- non-streamed ------------------------------------------------------------------------
    async def complete(
        self,
        send: Any,
        body: dict[str, Any],
        ctx: RequestContext,
        decision: RouteDecision,
        rid: str,
        t0: float,
        deadline: float,
        reservation: Any,
        api: ApiFamily,
        watch: Any,
    ) -> None:
        """Answer a non-streamed request through the cascade."""
        gw = self.gw
        run = _Run()

        async def call(m: str, sd: float) -> tuple[str, dict[str, Any], None]:
            model, resp, atts = await gw.executor.complete([m], body, sd)
            run.attempts.extend(atts)
            return model, resp, None

        try:
            steps = _Steps(self, run, ctx, decision, body, deadline)
            await self._walk(steps, body, call)
            if run.best is None:
                await self._no_answer(send, steps, ctx, decision, rid, t0, reservation, api, watch)
                return
            best = run.best
            if reservation is not None:
                await gw.budgets.commit_async(reservation, run.spent)  # type: ignore[union-attr]
            if gw.guard is not None and best.verdict.passed(self.cfg.threshold):
                gw.guard.store(ctx, best.resp)
            reason = f"{decision.reason} cascade={len(run.steps)} stop={run.stop}"
            out = api.response(best.resp, best.model)
            watch.done = True
            headers = [*trace_headers(rid, best.model, reason, decision), run.header()]
            await send_response(send, 200, orjson.dumps(out), [JSON, *headers])
            self._finish(
                run,
                rid=rid,
                ctx=ctx,
                decision=decision,
                model=best.model,
                status=200,
                t0=t0,
                response=best.resp.get("choices"),
            )
        except asyncio.CancelledError:
            if reservation is not None:  # what the steps cost; a no-op once settled above
                await settle_anyway(gw.budgets.commit_async(reservation, run.spent))  # type: ignore[union-attr]
            raise

    # ---- streamed ----------------------------------------------------------------------------
    async def stream(
        self,
        send: Any,
        body: dict[str, Any],
        ctx: RequestContext,
        decision: RouteDecision,
        rid: str,
        t0: float,
        deadline: float,
        reservation: Any,
        api: ApiFamily,
        watch: Any,
    ) -> None:
        """Answer a streamed request through the cascade (see the module docstring)."""
        gw = self.gw
        run = _Run()

        async def call(m: str, sd: float) -> Any:
            """Start `m`'s stream and hold it back up to the buffer: its answer when complete
            within it; else stream it out (`_STREAMED`). None: it failed midway (step recorded)."""
            start = await gw.executor.stream([m], body, sd)
            last_step = run.answers + 1 >= self.cfg.max_steps
            limit = -1 if last_step else self.cfg.stream_buffer_chars
            chunks = list(start.first)
            size = sum(len(stream_text(c)) for c in chunks)
            complete = False
            try:
                if size <= limit:
                    async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                        async for batch in start.rest:
                            chunks.extend(batch)
                            size += sum(len(stream_text(c)) for c in batch)
                            if size > limit:
                                break
                        else:
                            complete = True
            except (BackendError, TimeoutError) as e:
                start.release()
                gw.executor.stream_done(m, False)
                with contextlib.suppress(Exception):
                    await start.rest.aclose()  # type: ignore[attr-defined]
                be = (
                    e
                    if isinstance(e, BackendError)
                    else BackendError("request deadline exceeded", status=504)
                )
                steps.last_err = be
                run.attempts.extend(start.attempts)
                run.steps.append(Step(m, error=f"failed: {be.message[:120]}"))
                return None
            except BaseException:
                start.release()
                with contextlib.suppress(Exception):
                    await asyncio.shield(start.rest.aclose())  # type: ignore[attr-defined]
                raise
            run.attempts.extend(start.attempts)
            if not complete:  # too long to hold back, or the last step: stream it out
                await self._forward(
                    send,
                    body,
                    ctx,
                    decision,
                    rid,
                    t0,
                    deadline,
                    reservation,
                    api,
                    watch,
                    run,
                    start,
                    chunks,
                )
                return _STREAMED
            start.release()
            gw.executor.stream_done(m, True)
            from llmroute.cache import assemble_stream

            return m, assemble_stream(chunks), chunks

        try:
            steps = _Steps(self, run, ctx, decision, body, deadline)
            if await self._walk(steps, body, call):
                return
            if run.best is None:
                await self._no_answer(
                    send, steps, ctx, decision, rid, t0, reservation, api, watch, stream=True
                )
                return
            best = run.best
            if reservation is not None:
                await gw.budgets.commit_async(reservation, run.spent)  # type: ignore[union-attr]
            reason = f"{decision.reason} cascade={len(run.steps)} stop={run.stop}"
            headers = [
                SSE,
                (b"cache-control", b"no-cache"),
                *trace_headers(rid, best.model, reason, decision),
            ]
            headers.append(run.header())
            enc = api.stream(best.model, rid, ctx)
            data = b"".join(enc.feed(c) for c in best.chunks or []) + enc.finish()
            watch.done = True
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data, "more_body": False})
            self._finish(
                run,
                rid=rid,
                ctx=ctx,
                decision=decision,
                model=best.model,
                status=200,
                t0=t0,
                stream=True,
                ttft=time.perf_counter() - t0,
                response=best.resp.get("choices"),
            )
        except asyncio.CancelledError:
            if reservation is not None:  # what the steps cost; a no-op once settled above
                await settle_anyway(gw.budgets.commit_async(reservation, run.spent))  # type: ignore[union-attr]
            raise

    async def _forward(
        self,
        send: Any,
        body: dict[str, Any],
        ctx: RequestContext,
        decision: RouteDecision,
        rid: str,
        t0: float,
        deadline: float,
        reservation: Any,
        api: ApiFamily,
        watch: Any,
        run: _Run,
        start: Any,
        chunks: list[dict[str, Any]],
    ) -> None:
        """Stream step `start` out as it comes (held-back `chunks` first); the cascade ends here."""
        gw = self.gw
        model = start.model
        run.steps.append(Step(model, why="streamed unverified"))
        run.stop = "streamed"
        error: str | None = None
        usage_raw: dict[str, Any] | None = None
        delivered: list[str] = []
        enc = api.stream(model, rid, ctx)

        def encode(chunk: dict[str, Any]) -> bytes:
            nonlocal usage_raw
            if chunk.get("usage"):
                usage_raw = chunk["usage"]
            if chunk.get("choices"):
                delivered.append(stream_text(chunk))
            return enc.feed(chunk)

        reason = f"{decision.reason} cascade={len(run.steps)} stop=streamed"
        headers = [SSE, (b"cache-control", b"no-cache"), *trace_headers(rid, model, reason, decision)]
        headers.append(run.header())
        ttft = time.perf_counter() - t0
        cancelled = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            first = b"".join(encode(c) for c in chunks)
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            try:
                async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                    async for batch in start.rest:
                        data = b"".join([encode(c) for c in batch])
                        if data:
                            await send({"type": "http.response.body", "body": data, "more_body": True})
                gw.executor.stream_done(model, True)
            except (BackendError, TimeoutError) as e:
                error = e.message if isinstance(e, BackendError) else "request deadline exceeded mid-stream"
                gw.executor.stream_done(model, False)
                with contextlib.suppress(Exception):
                    await start.rest.aclose()
            except asyncio.CancelledError:
                cancelled = True
                error = "client disconnected"
                with contextlib.suppress(Exception):
                    await asyncio.shield(start.rest.aclose())
        finally:
            start.release()
        usage = (
            gw.pricing.cost(model, usage_raw)
            if usage_raw
            else gw.pricing.estimated_cost(model, body, "".join(delivered))
        )
        step = run.steps[-1]
        step.cost_usd = usage[2]
        step.error = error
        total = (run.tokens_in + usage[0], run.tokens_out + usage[1], run.spent + usage[2])
        run.spent = total[2]
        interrupted = 1 if cancelled else 0  # cancellations caught here
        if reservation is not None:
            try:
                await gw.budgets.commit_async(reservation, total[2])  # type: ignore[union-attr]
            except asyncio.CancelledError:  # the client went away meanwhile: the settle still lands
                interrupted += 1
                cancelled = True
                error = error or "client disconnected"
                step.error = error
        if not cancelled:
            tail = enc.finish() if error is None else enc.fail(error)
            watch.done = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        self._finish(
            run,
            rid=rid,
            ctx=ctx,
            decision=decision,
            model=model,
            status=499 if cancelled else 200,
            t0=t0,
            usage=total,
            stream=True,
            ttft=ttft,
            error=error,
        )
        if cancelled:
            task = asyncio.current_task()
            if task is not None:
                for _ in range(interrupted):
                    task.uncancel()
