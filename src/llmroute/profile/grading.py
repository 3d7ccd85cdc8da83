"""The profile run's grading (`llmroute.profile.runner` has the design): which grader each prompt
gets (`resolve_grader`, step 1), which answers the judge sees and what its verdicts mean (steps 1
and 5), reference and code grading overlapped with the calls (`_RefGrader`) and the table's rows
(`_grade_rows`, step 6).

The seam: grading only reads what the calls journaled (`llmroute.profile.calls`); it spends
nothing. The run's order of work is `runner`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from typing import TYPE_CHECKING, Any

from llmroute.profile.calls import _Journal
from llmroute.profile.graders import Grade, grade
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

if TYPE_CHECKING:
    from llmroute.profile.runner import ProfileSettings

__all__ = ["resolve_grader"]


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


def _check_share(pid: str, share: float) -> bool:
    """Whether a reference-graded prompt is also judged (seeded by its id)."""
    h = int.from_bytes(hashlib.sha256(pid.encode()).digest()[:8], "big") / 2.0**64
    return h < share


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
