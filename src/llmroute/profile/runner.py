"""Profile models: call each one on a set of prompts, grade the answers, write a routing table.

`run_profile(config, items, settings, out)` (async; `profile(...)` runs it) does, in order:

1. **Graders.** Each prompt's grader is its own `grader` field, else the one `settings.task_graders`
   gives its task, else `code` when it has tests, `number` / `choice` / `normalized` when it has a
   reference that is a number / a letter A-J / other text, else `judge` (which needs
   `settings.judge`). With a judge, a seeded share (`settings.judge_check`) of the reference-graded
   answers is judged too, to report the judge's agreement with the references.
2. **Cost cap.** Every call reserves its most expensive outcome before it is sent: the input's
   upper bound from the gateway's token estimator (`llmroute.gateway.tokens`) plus `max_tokens` of
   output (sent with the request), at the config's prices (`max_request_cost`). A call whose
   reservation would take spent + reserved past `settings.max_usd` is not made, so the cap is never
   exceeded as long as the upstream honours `max_tokens`. Before anything is sent, the sum of the
   reservations of all pending calls (judge inputs counted with 4 bytes per answer token) is the
   up-front estimate: above the cap the run refuses to start (`BudgetError`, with the numbers),
   unless `settings.partial`, which spends up to the cap and leaves the rest for a resumed run. A
   failed call is counted at its reservation (the provider may have billed it) unless the upstream
   refused it outright (429, 4xx, bad credentials).
3. **Calls** go through the gateway's own backends (`llmroute.gateway.backends`, the models of the
   gateway config), at most `settings.concurrency` in flight per model (and never more than the
   model's `max_concurrency`), at most `settings.rpm` starts per minute per model when set, with
   `settings.retries` retries of retryable errors (timeouts, 429, 5xx; exponential backoff).
4. **Resume.** Every finished call (answer or judge verdict, with its tokens, cost and latency) is
   appended at once to the journal `<out>.journal.jsonl`; a rerun with the same output skips every
   call the journal holds (for an unchanged prompt text) and counts what it spent against the cap. Failed calls are retried by a
   rerun (their possible charge stays counted).
5. **Judge.** Single-answer 1-10 ratings, or pairwise against `settings.pairwise_reference` in both
   orders (`llmroute.profile.judge`). Judge calls count in the cap. A judge failure (no verdict in
   the reply, a timeout, an upstream error) leaves the row's quality empty with `grade_error` set:
   the row is kept, never guessed. In pairwise mode the reference model's own rows get 0.5 (a tie
   with itself). Code answers are graded (in worker threads, one process each) while the other
   calls are still in flight.
6. **Table.** One row per (prompt, model) answered or failed: `prompt_id, prompt, task, model,
   quality, cost_usd, input_tokens, output_tokens, response, latency_s` (tokens from the upstream's
   usage, cost at the config's prices, latency of the successful call) plus `grader`,
   `grade_error`, `grade_detail`, `judge_quality` (the judge's view where it was asked besides a
   reference) and `judge_cost_usd`. Written as Parquet, CSV or JSONL by the suffix of `out`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmroute.profile.graders import GRADERS, Grade, grade
from llmroute.profile.judge import (
    RUBRIC_VERSION,
    combine_orders,
    pairwise_prompt,
    parse_pairwise,
    parse_rating,
    rating_to_quality,
    single_prompt,
)
from llmroute.profile.prompts import PromptItem

__all__ = [
    "BudgetError",
    "CostCap",
    "ProfileResult",
    "ProfileSettings",
    "journal_path",
    "profile",
    "resolve_grader",
    "run_profile",
]

#: upstream refusals that are never billed (everything else that fails counts at its reservation)
_UNBILLED = frozenset(
    {"upstream_rate_limited", "upstream_bad_request", "upstream_auth_failed", "missing_credentials"}
)
_JUDGE_ANSWER_BYTES_PER_TOKEN = 4


class BudgetError(ValueError):
    """The estimated cost of a profile run exceeds its cap (the message has the numbers)."""


@dataclass
class ProfileSettings:
    """What to profile and how (see the module docstring)."""

    models: list[str]
    judge: str | None = None
    pairwise_reference: str | None = None
    max_usd: float | None = None
    partial: bool = False
    concurrency: int = 16
    rpm: float | None = None
    retries: int = 2
    backoff_s: float = 0.5
    max_tokens: int = 512
    judge_max_tokens: int = 256
    judge_check: float = 0.1
    code_timeout_s: float = 10.0
    code_workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    task_graders: dict[str, str] = field(default_factory=dict)
    progress: bool = False


@dataclass
class ProfileResult:
    """What a run did: the table path, its rows, and the summary (counts, spend, agreement)."""

    out: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


class CostCap:
    """Reservations against a USD cap: `reserve` before a call, `settle` after it."""

    def __init__(self, cap: float | None, spent: float = 0.0) -> None:
        self.cap = cap
        self.spent = spent
        self.reserved = 0.0
        self.refused = 0

    def reserve(self, usd: float) -> bool:
        """Hold `usd`; False (and nothing held) when spent + reserved + usd would pass the cap."""
        if self.cap is not None and self.spent + self.reserved + usd > self.cap:
            self.refused += 1
            return False
        self.reserved += usd
        return True

    def settle(self, reserved: float, actual: float) -> None:
        """Release a reservation and count what the call cost."""
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


def journal_path(out: Path) -> Path:
    """The resume journal beside the output table: `<out>.journal.jsonl`."""
    return out.with_name(out.name + ".journal.jsonl")


def resolve_grader(item: PromptItem, task_graders: dict[str, str] | None = None) -> str:
    """The grader of one prompt (see the module docstring, step 1)."""
    if item.grader:
        return item.grader
    if task_graders and item.task in task_graders:
        return task_graders[item.task]
    if item.tests:
        return "code"
    if item.reference is not None:
        from llmroute.profile.graders import extract_choice, final_number

        ref = item.reference.strip()
        if final_number(ref) is not None and len(ref) <= 40:
            return "number"
        if len(ref) <= 3 and extract_choice(ref) is not None:
            return "choice"
        return "normalized"
    return "judge"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _check_share(pid: str, share: float) -> bool:
    """Whether a reference-graded prompt is also judged (seeded by its id)."""
    h = int.from_bytes(hashlib.sha256(pid.encode()).digest()[:8], "big") / 2.0**64
    return h < share


@dataclass
class _Call:
    ok: bool
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    skipped: bool = False  # not made: the cap


class _Caller:
    """Calls one configured model through its gateway backend, within the cap."""

    def __init__(
        self, cfg: Any, backend: Any, cap: CostCap, settings: ProfileSettings, journal: _Journal
    ) -> None:
        from llmroute.gateway.tokens import TokenCounter

        self.journal = journal
        self.cfg = cfg
        self.backend = backend
        self.cap = cap
        self.settings = settings
        self.counter = TokenCounter.for_model(cfg.api, cfg.upstream)
        self.sem = asyncio.Semaphore(max(1, min(settings.concurrency, cfg.max_concurrency)))
        self._next_start = 0.0

    def max_cost(self, body: dict[str, Any]) -> float:
        """The most `body` can cost on this model (input bound + max_tokens of output)."""
        from llmroute.gateway.auth import max_request_cost
        from llmroute.gateway.tokens import estimate_input_tokens

        tin = estimate_input_tokens(body, self.counter)
        return max_request_cost(self.cfg.input_per_mtok, self.cfg.output_per_mtok, tin, body["max_tokens"])

    def body(self, prompt: str, max_tokens: int, temperature: float | None = None) -> dict[str, Any]:
        """The chat request: one user message, `max_tokens` (it bounds the cost), and a temperature
        only when given (the judge's 0; answers use the model's default, as it is served)."""
        b: dict[str, Any] = {
            "model": self.cfg.name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
        if temperature is not None:
            b["temperature"] = temperature
        return b

    async def _pace(self) -> None:
        """Wait for this model's request-rate slot (`settings.rpm`: evenly spaced starts)."""
        if not self.settings.rpm:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_start)
        self._next_start = start + 60.0 / self.settings.rpm
        if start > now:
            await asyncio.sleep(start - now)

    def _charge(self, hold: float) -> None:
        """Count a failed or abandoned call at its reservation (the provider may have billed it)."""
        self.cap.settle(hold, hold)
        self.journal.append({"kind": "charge", "model": self.cfg.name, "cost_usd": hold})

    async def call(self, prompt: str, max_tokens: int, temperature: float | None = None) -> _Call:
        """One completion, with retries of retryable errors. Failed attempts that may have been
        billed are journaled as charges; the result's cost is that of the successful call."""
        from llmroute.gateway.backends import BackendError

        body = self.body(prompt, max_tokens, temperature)
        hold = self.max_cost(body)
        async with self.sem:
            for attempt in range(self.settings.retries + 1):
                await self._pace()
                if not self.cap.reserve(hold):
                    return _Call(False, skipped=True, error="not called: the --max-usd cap is reached")
                t0 = time.perf_counter()
                try:
                    resp = await self.backend.chat(body, self.cfg.timeout_s)
                except BackendError as e:
                    if e.code in _UNBILLED:
                        self.cap.settle(hold, 0.0)
                    else:
                        self._charge(hold)
                    if e.retryable and attempt < self.settings.retries:
                        await asyncio.sleep(self.settings.backoff_s * 2**attempt)
                        continue
                    return _Call(False, error=e.message)
                except BaseException:
                    self._charge(hold)  # cancelled in flight
                    raise
                latency = time.perf_counter() - t0
                from llmroute.gateway.tokens import response_text

                usage = resp.get("usage") or {}
                ti = int(usage.get("prompt_tokens") or 0)
                to = int(usage.get("completion_tokens") or 0)
                cost = (ti * self.cfg.input_per_mtok + to * self.cfg.output_per_mtok) / 1e6
                self.cap.settle(hold, cost)
                return _Call(True, response_text(resp), ti, to, cost, latency)
        raise AssertionError("unreachable")  # pragma: no cover


class _Journal:
    """Append-only JSONL of finished calls (see the module docstring, step 4)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}
        self.judged: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.spent = 0.0
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a last line cut off by a crash: that call is redone
                data = data[: data.rfind(b"\n") + 1]
                with path.open("r+b") as f:
                    f.truncate(len(data))
            for i, line in enumerate(data.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ValueError(
                        f"{path}: line {i} is not JSON; delete the line or the journal"
                    ) from None
                self._add(rec)
        self._f = path.open("ab")

    def _add(self, rec: dict[str, Any]) -> None:
        self.spent += float(rec.get("cost_usd") or 0.0)
        if rec.get("kind") == "answer":
            self.answers[(rec["prompt_id"], rec["model"])] = rec
        elif rec.get("kind") == "judge":
            self.judged[(rec["prompt_id"], rec["model"], rec["variant"])] = rec

    def forget_changed(self, items: list[PromptItem]) -> None:
        """Drop answers (and their verdicts) recorded for a prompt id whose text has changed since."""
        sha = {it.prompt_id: _sha(it.prompt) for it in items}
        for key in [k for k, r in self.answers.items() if k[0] in sha and r.get("prompt_sha") != sha[k[0]]]:
            del self.answers[key]
            for jk in [j for j in self.judged if j[:2] == key]:
                del self.judged[jk]

    def append(self, rec: dict[str, Any]) -> None:
        """Record one call (durable once this returns: written and flushed)."""
        self._f.write(orjson.dumps(rec) + b"\n")
        self._f.flush()
        self._add(rec)

    def close(self) -> None:
        self._f.close()


def _judge_needed(item: PromptItem, grader: str, settings: ProfileSettings) -> bool:
    return settings.judge is not None and (
        grader == "judge" or _check_share(item.prompt_id, settings.judge_check)
    )


def _judge_prompts(
    item: PromptItem, model: str, answers: dict[tuple[str, str], dict[str, Any]], settings: ProfileSettings
) -> dict[str, str]:
    """variant -> judge prompt for one answer (empty when the pairwise reference answer is missing)."""
    ans = answers[(item.prompt_id, model)]["response"]
    ref_model = settings.pairwise_reference
    if ref_model is None:
        return {"single": single_prompt(item.prompt, ans, item.reference)}
    if model == ref_model:
        return {}
    ref = answers.get((item.prompt_id, ref_model))
    if ref is None:
        return {}
    return {
        "ab": pairwise_prompt(item.prompt, ans, ref["response"]),
        "ba": pairwise_prompt(item.prompt, ref["response"], ans),
    }


async def run_profile(
    config: Any,
    items: list[PromptItem],
    settings: ProfileSettings,
    out: str | Path,
    on_call: Callable[[int], None] | None = None,
) -> ProfileResult:
    """Profile `settings.models` on `items` (see the module docstring); `on_call(n)` is called after
    each journaled call with the number journaled by this run. Raises `BudgetError` when the
    estimate passes the cap (without --partial) and `ValueError` for unknown models or prompts
    that nothing can grade."""
    from llmroute.gateway.backends import make_backend
    from llmroute.gateway.backends.base import upstream_client

    out = Path(out)
    t_start = time.perf_counter()
    _check_settings(config, items, settings)
    graders = {it.prompt_id: resolve_grader(it, settings.task_graders) for it in items}
    journal = _Journal(journal_path(out))
    journal.forget_changed(items)
    # verdicts of another judge or rubric are not reused (their cost stays counted)
    journal.judged = {
        k: r
        for k, r in journal.judged.items()
        if (r.get("judge"), r.get("rubric")) == (settings.judge, RUBRIC_VERSION)
    }
    cap = CostCap(settings.max_usd, journal.spent)
    names = list(dict.fromkeys([*settings.models, *([settings.judge] if settings.judge else [])]))
    http = upstream_client(config.server, limit_per_origin=1024)  # server.ca_bundle and server.proxy apply
    callers: dict[str, _Caller] = {}
    failed: dict[tuple[str, str], str] = {}
    judge_failed: dict[tuple[str, str, str], str] = {}
    made = 0
    skipped = 0
    progress = _Progress(settings.progress)
    ref = _RefGrader(settings)
    try:
        for name in names:
            cfg = config.model(name)
            backend = make_backend(cfg, None, config)
            await backend.start(http)
            callers[name] = _Caller(cfg, backend, cap, settings, journal)
        pending = [
            (it, m) for it in items for m in settings.models if (it.prompt_id, m) not in journal.answers
        ]
        estimate, n_judge = _estimate(items, graders, pending, callers, journal, settings)
        if (
            settings.max_usd is not None
            and estimate > settings.max_usd - journal.spent
            and not settings.partial
        ):
            raise BudgetError(
                f"estimated cost up to ${estimate:.6f} ({len(pending)} model calls and about {n_judge} "
                f"judge calls, each at its max_tokens) exceeds the --max-usd cap ${settings.max_usd:g}"
                + (f" less ${journal.spent:.6f} already spent (journal)" if journal.spent else "")
                + "; raise --max-usd, lower --n or --max-tokens, or pass --partial to spend at most the cap "
                "and resume the rest later"
            )
        progress.start(len(pending) + n_judge)

        def note() -> None:
            nonlocal made
            made += 1
            progress.advance()
            if on_call is not None:
                on_call(made)

        async def answer(it: PromptItem, model: str) -> None:
            nonlocal skipped
            res = await callers[model].call(it.prompt, settings.max_tokens)
            if res.skipped:
                skipped += 1
                return
            if not res.ok:
                failed[(it.prompt_id, model)] = res.error or "call failed"
                progress.advance()
                return
            journal.append(
                {
                    "kind": "answer",
                    "prompt_id": it.prompt_id,
                    "prompt_sha": _sha(it.prompt),
                    "model": model,
                    "response": res.text,
                    "input_tokens": res.input_tokens,
                    "output_tokens": res.output_tokens,
                    "cost_usd": res.cost,
                    "latency_s": res.latency_s,
                }
            )
            ref.start(it, model, graders[it.prompt_id], res.text)
            note()

        await asyncio.gather(*(answer(it, m) for it, m in pending))
        t_answers = time.perf_counter()

        async def judge(it: PromptItem, model: str, variant: str, prompt: str) -> None:
            nonlocal skipped
            assert settings.judge is not None
            res = await callers[settings.judge].call(prompt, settings.judge_max_tokens, temperature=0.0)
            key = (it.prompt_id, model, variant)
            if res.skipped or not res.ok:
                skipped += res.skipped
                if not res.skipped:
                    judge_failed[key] = f"judge call failed: {res.error}"
                progress.advance()
                return
            journal.append(
                {
                    "kind": "judge",
                    "prompt_id": it.prompt_id,
                    "model": model,
                    "variant": variant,
                    "judge": settings.judge,
                    "rubric": RUBRIC_VERSION,
                    "reply": res.text,
                    "input_tokens": res.input_tokens,
                    "output_tokens": res.output_tokens,
                    "cost_usd": res.cost,
                }
            )
            note()

        if settings.judge:
            todo = []
            for it in items:
                if not _judge_needed(it, graders[it.prompt_id], settings):
                    continue
                for m in settings.models:
                    if (it.prompt_id, m) not in journal.answers:
                        continue
                    for variant, prompt in _judge_prompts(it, m, journal.answers, settings).items():
                        if (it.prompt_id, m, variant) not in journal.judged:
                            todo.append(judge(it, m, variant, prompt))
            await asyncio.gather(*todo)
        t_judge = time.perf_counter()
        rows = await _grade_rows(items, graders, journal, failed, judge_failed, settings, ref)
        timing = {
            "answers_s": t_answers - t_start,
            "judge_s": t_judge - t_answers,
            "grading_s": time.perf_counter() - t_judge,
        }
    finally:
        ref.cancel()
        progress.stop()
        journal.close()
        for c in callers.values():
            await c.backend.close()
        await http.close()
    _write_table(rows, out)
    summary = _summary(rows, journal, cap, settings, made, skipped, estimate, time.perf_counter() - t_start)
    summary["timing"] = timing
    return ProfileResult(out, rows, summary)


def profile(
    config: Any, items: list[PromptItem], settings: ProfileSettings, out: str | Path
) -> ProfileResult:
    """`run_profile` in a fresh event loop (blocking)."""
    return asyncio.run(run_profile(config, items, settings, out))


def _check_settings(config: Any, items: list[PromptItem], settings: ProfileSettings) -> None:
    known = [m.name for m in config.models]
    for what, name in [("--models", m) for m in settings.models] + [
        ("--judge", settings.judge),
        ("--pairwise-against", settings.pairwise_reference),
    ]:
        if name is not None and config.model(name) is None:
            raise ValueError(f"{what}: model {name!r} is not in the gateway config (models: {known})")
    if not settings.models:
        raise ValueError("no models to profile: give --models a,b or list models in the config")
    if settings.pairwise_reference and settings.pairwise_reference not in settings.models:
        raise ValueError(
            f"--pairwise-against {settings.pairwise_reference!r} must be one of the profiled --models "
            "(its answers are what the others are compared with)"
        )
    if settings.pairwise_reference and not settings.judge:
        raise ValueError("--pairwise-against needs --judge MODEL")
    if settings.max_usd is not None and not settings.max_usd > 0:
        raise ValueError(f"--max-usd must be > 0, got {settings.max_usd}")
    bad = sorted({g for g in settings.task_graders.values() if g not in GRADERS and g != "judge"})
    if bad:
        raise ValueError(f"unknown grader(s) {bad}; choose from {', '.join(GRADERS)}, judge")
    need_judge = sum(resolve_grader(it, settings.task_graders) == "judge" for it in items)
    if need_judge and not settings.judge:
        raise ValueError(
            f"{need_judge} prompt(s) have no reference answer, tests or grader: give --judge MODEL "
            "(a model of the config) to grade them, or add a 'reference' field"
        )


def _estimate(
    items: list[PromptItem],
    graders: dict[str, str],
    pending: list[tuple[PromptItem, str]],
    callers: dict[str, _Caller],
    journal: _Journal,
    settings: ProfileSettings,
) -> tuple[float, int]:
    """(USD upper bound of the pending calls, number of judge calls)."""
    total = sum(callers[m].max_cost(callers[m].body(it.prompt, settings.max_tokens)) for it, m in pending)
    n_judge = 0
    if settings.judge:
        jc = callers[settings.judge]
        filler = "x" * (settings.max_tokens * _JUDGE_ANSWER_BYTES_PER_TOKEN)
        for it in items:
            if not _judge_needed(it, graders[it.prompt_id], settings):
                continue
            for m in settings.models:
                if settings.pairwise_reference is None:
                    variants = {"single": single_prompt(it.prompt, filler, it.reference)}
                elif m == settings.pairwise_reference:
                    variants = {}
                else:
                    p = pairwise_prompt(it.prompt, filler, filler)
                    variants = {"ab": p, "ba": p}
                for v, p in variants.items():
                    if (it.prompt_id, m, v) not in journal.judged:
                        n_judge += 1
                        total += jc.max_cost(jc.body(p, settings.judge_max_tokens, 0.0))
    return total, n_judge


def _judge_outcome(
    it: PromptItem,
    model: str,
    journal: _Journal,
    judge_failed: dict[tuple[str, str, str], str],
    settings: ProfileSettings,
) -> tuple[float | None, str | None, bool | None, float]:
    """(quality, error, order-consistent (pairwise) or None, judge cost) of the judge's verdicts."""
    pid = it.prompt_id
    if settings.pairwise_reference is None:
        variants = ("single",)
    elif model == settings.pairwise_reference:
        return 0.5, None, None, 0.0
    else:
        variants = ("ab", "ba")
    recs = [journal.judged.get((pid, model, v)) for v in variants]
    cost = sum(float(r.get("cost_usd") or 0.0) for r in recs if r)
    for v, r in zip(variants, recs, strict=True):
        if r is None:
            why = judge_failed.get((pid, model, v))
            if (
                why is None
                and settings.pairwise_reference
                and (pid, settings.pairwise_reference) not in journal.answers
            ):
                why = f"judge: no answer from the pairwise reference {settings.pairwise_reference!r}"
            return None, why or "judge: not called (the --max-usd cap)", None, cost
    if settings.pairwise_reference is None:
        rating = parse_rating(recs[0]["reply"])  # type: ignore[index]
        if rating is None:
            return None, "judge: unparseable score", None, cost
        return rating_to_quality(rating), None, None, cost
    v1, v2 = parse_pairwise(recs[0]["reply"]), parse_pairwise(recs[1]["reply"])  # type: ignore[index]
    if v1 is None or v2 is None:
        return None, "judge: unparseable verdict", None, cost
    q, consistent = combine_orders(v1, v2)
    return q, None, consistent, cost


class _RefGrader:
    """Reference grading; code runs in worker threads (at most `settings.code_workers` at once), started
    as soon as an answer arrives so that it overlaps the calls still in flight."""

    def __init__(self, settings: ProfileSettings) -> None:
        self.settings = settings
        self.sem = asyncio.Semaphore(max(1, settings.code_workers))
        self.started: dict[tuple[str, str], asyncio.Task[Grade]] = {}

    async def _grade(self, it: PromptItem, name: str, text: str) -> Grade:
        t = self.settings.code_timeout_s
        if name == "code":
            async with self.sem:
                return await asyncio.to_thread(grade, name, text, it.reference, it.tests, t)
        return grade(name, text, it.reference, it.tests, t)

    def start(self, it: PromptItem, model: str, name: str, text: str) -> None:
        """Begin grading one answer now (code in a thread); `result` collects it."""
        if name == "code":
            self.started[(it.prompt_id, model)] = asyncio.ensure_future(self._grade(it, name, text))

    async def result(self, it: PromptItem, model: str, name: str, text: str) -> Grade:
        task = self.started.pop((it.prompt_id, model), None)
        return await task if task is not None else await self._grade(it, name, text)

    def cancel(self) -> None:
        for task in self.started.values():
            task.cancel()


async def _grade_rows(
    items: list[PromptItem],
    graders: dict[str, str],
    journal: _Journal,
    failed: dict[tuple[str, str], str],
    judge_failed: dict[tuple[str, str, str], str],
    settings: ProfileSettings,
    ref: _RefGrader,
) -> list[dict[str, Any]]:

    async def one(it: PromptItem, model: str) -> dict[str, Any] | None:
        key = (it.prompt_id, model)
        rec = journal.answers.get(key)
        name = graders[it.prompt_id]
        row: dict[str, Any] = {
            "prompt_id": it.prompt_id,
            "prompt": it.prompt,
            "task": it.task,
            "model": model,
            "quality": math.nan,
            "cost_usd": math.nan,
            "input_tokens": None,
            "output_tokens": None,
            "response": None,
            "latency_s": math.nan,
            "grader": name,
            "grade_error": None,
            "grade_detail": None,
            "judge_quality": math.nan,
            "judge_consistent": None,
            "judge_cost_usd": 0.0,
        }
        if rec is None:
            if key not in failed:
                return None  # not called (cap): left for a resumed run
            row["grade_error"] = f"call failed: {failed[key]}"[:300]
            return row
        row |= {
            "cost_usd": rec["cost_usd"],
            "input_tokens": rec["input_tokens"],
            "output_tokens": rec["output_tokens"],
            "response": rec["response"],
            "latency_s": rec["latency_s"],
        }
        if name != "judge":
            g = await ref.result(it, model, name, rec["response"])
            row["quality"] = math.nan if g.quality is None else g.quality
            row["grade_error"] = g.error
            row["grade_detail"] = g.detail or None
        if _judge_needed(it, name, settings):
            q, err, consistent, cost = _judge_outcome(it, model, journal, judge_failed, settings)
            row["judge_cost_usd"] = cost
            row["judge_consistent"] = consistent
            if q is not None:
                row["judge_quality"] = q
            if name == "judge":
                row["quality"] = math.nan if q is None else q
                row["grade_error"] = err
                row["grade_detail"] = f"judge {settings.judge} ({RUBRIC_VERSION})"
        return row

    done = await asyncio.gather(*(one(it, m) for it in items for m in settings.models))
    return [r for r in done if r is not None]


def _write_table(rows: list[dict[str, Any]], out: Path) -> None:
    import pandas as pd

    df = pd.DataFrame(rows)
    if not df.empty:
        for c in ("input_tokens", "output_tokens"):
            df[c] = df[c].astype("Int64")
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df.to_parquet(out, index=False)
    elif suffix == ".csv":
        df.to_csv(out, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        df.to_json(out, orient="records", lines=True, force_ascii=False)
    else:
        raise ValueError(f"--out {out}: give a .parquet, .csv or .jsonl file")


def _summary(
    rows: list[dict[str, Any]],
    journal: _Journal,
    cap: CostCap,
    settings: ProfileSettings,
    made: int,
    skipped: int,
    estimate: float,
    elapsed: float,
) -> dict[str, Any]:
    def ok(x: Any) -> bool:
        return x is not None and not (isinstance(x, float) and math.isnan(x))

    per_model: dict[str, dict[str, Any]] = {}
    for m in settings.models:
        rs = [r for r in rows if r["model"] == m]
        qs = [r["quality"] for r in rs if ok(r["quality"])]
        per_model[m] = {
            "rows": len(rs),
            "graded": len(qs),
            "mean_quality": sum(qs) / len(qs) if qs else None,
            "cost_usd": sum(r["cost_usd"] for r in rs if ok(r["cost_usd"])),
        }
    both = [r for r in rows if r["grader"] != "judge" and ok(r["quality"]) and ok(r["judge_quality"])]
    pairs = [r["judge_consistent"] for r in rows if r["judge_consistent"] is not None]
    judge_spent = sum(float(r.get("cost_usd") or 0.0) for r in journal.judged.values())
    return {
        "rows": len(rows),
        "graded": sum(ok(r["quality"]) for r in rows),
        "grade_errors": sum(r["grade_error"] is not None for r in rows),
        "judge_failures": sum(
            r["grade_error"] is not None and str(r["grade_error"]).startswith("judge") for r in rows
        ),
        "calls_made": made,
        "calls_not_made_cap": skipped,
        "spent_usd": cap.spent,
        "judge_spent_usd": judge_spent,
        "estimate_usd": estimate,
        "max_usd": settings.max_usd,
        "elapsed_s": elapsed,
        "models": per_model,
        "judge": settings.judge,
        "judge_mode": None
        if not settings.judge
        else ("pairwise" if settings.pairwise_reference else "single"),
        "rubric": RUBRIC_VERSION if settings.judge else None,
        "judge_agreement": {
            "vs_reference_n": len(both),
            "vs_reference": (
                sum((r["quality"] >= 0.5) == (r["judge_quality"] >= 0.5) for r in both) / len(both)
                if both
                else None
            ),
            "pairwise_pairs": len(pairs),
            "pairwise_order_consistency": sum(pairs) / len(pairs) if pairs else None,
        },
        "journal": str(journal.path),
    }


class _Progress:
    """A rich progress bar on stderr (no-op when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p: Any = None
        self._task: Any = None

    def start(self, total: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(
            TextColumn("profiling"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task("calls", total=total)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
