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

The run is split by concern: this module holds the settings, the run's order of work, the cost
estimate and the table and summary; `llmroute.profile.calls` the calls within the cap and the
resume journal (steps 2-4); `llmroute.profile.grading` the graders, the judge's prompts and
verdicts and the table's rows (steps 1, 5, 6). The names importable from here are unchanged.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmroute.profile.calls import CostCap, _Caller, _Journal, _sha, journal_path
from llmroute.profile.graders import GRADERS
from llmroute.profile.grading import _grade_rows, _judge_needed, _judge_prompts, _RefGrader, resolve_grader
from llmroute.profile.judge import RUBRIC_VERSION, pairwise_prompt, single_prompt
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
