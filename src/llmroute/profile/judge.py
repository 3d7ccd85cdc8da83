"""The LLM judge: pinned prompts, score parsing and the pairwise order check.

Two modes (MT-Bench style):

- **single**: the judge rates one answer 1-10 against `SINGLE_RUBRIC` (pinned: changing it changes
  every score, so it carries `RUBRIC_VERSION`, written into the profile summary); the rating maps
  to quality `(rating - 1) / 9` in [0, 1].
- **pairwise**: the judge compares the model's answer with a reference model's answer, once in
  each order (model first, then reference first) to cancel position bias. The model's quality is
  1 when it wins both orders, 0 when it loses both, and 0.5 otherwise (a tie, or the two orders
  disagree: an order-inconsistent verdict counts as a tie and lowers the reported consistency).

A reply without a parseable verdict is a judge failure: the caller marks the row (quality empty,
`grade_error` set); nothing here ever guesses a score.
"""

from __future__ import annotations

import re

__all__ = [
    "PAIRWISE_RUBRIC",
    "RUBRIC_VERSION",
    "SINGLE_RUBRIC",
    "combine_orders",
    "pairwise_prompt",
    "parse_pairwise",
    "parse_rating",
    "rating_to_quality",
    "single_prompt",
]

RUBRIC_VERSION = "llmroute-judge-v1"

SINGLE_RUBRIC = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Consider correctness first (a wrong final "
    "answer, wrong code or a refusal of a harmless request is a low rating whatever its style), then "
    "helpfulness, relevance, depth and clarity. {reference_note}Be as objective as possible. After a "
    "short explanation, give your rating on a scale of 1 to 10 in exactly this format: "
    '"Rating: [[5]]".'
)
PAIRWISE_RUBRIC = (
    "Please act as an impartial judge and evaluate the responses of two AI assistants to the user "
    "question displayed below. Choose the assistant that answers the question better: correctness "
    "first, then helpfulness, relevance and depth. Do not let the order of the responses, their "
    "length or the assistants' names influence you. After a short explanation, give your verdict in "
    'exactly this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and '
    '"[[C]]" for a tie.'
)


def single_prompt(question: str, answer: str, reference: str | None = None) -> str:
    """The single-answer judge prompt (rubric, question, optional reference answer, answer)."""
    note = "A reference answer is given; compare the response with it. " if reference else ""
    parts = [SINGLE_RUBRIC.format(reference_note=note), "", "[Question]", question, ""]
    if reference:
        parts += ["[The Start of Reference Answer]", reference, "[The End of Reference Answer]", ""]
    parts += ["[The Start of Assistant's Answer]", answer, "[The End of Assistant's Answer]"]
    return "\n".join(parts)


def pairwise_prompt(question: str, answer_a: str, answer_b: str) -> str:
    """The pairwise judge prompt: the question, then assistant A's and assistant B's answers."""
    return "\n".join(
        [
            PAIRWISE_RUBRIC,
            "",
            "[Question]",
            question,
            "",
            "[The Start of Assistant A's Answer]",
            answer_a,
            "[The End of Assistant A's Answer]",
            "",
            "[The Start of Assistant B's Answer]",
            answer_b,
            "[The End of Assistant B's Answer]",
        ]
    )


_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_LOOSE = re.compile(r"(?i)rating\s*[:=]\s*\[?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\]?")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_rating(text: str) -> float | None:
    """The 1-10 rating of a single-answer verdict (`[[7]]`, else `Rating: 7`; the last one wins),
    or None when there is none or it is outside 1-10."""
    found = _RATING.findall(text) or _RATING_LOOSE.findall(text)
    if not found:
        return None
    v = float(found[-1])
    return v if 1.0 <= v <= 10.0 else None


def rating_to_quality(rating: float) -> float:
    """A 1-10 rating as a quality in [0, 1]: (rating - 1) / 9."""
    return (float(rating) - 1.0) / 9.0


def parse_pairwise(text: str) -> str | None:
    """'A', 'B' or 'C' (tie) from a pairwise verdict (the last `[[X]]`), or None."""
    found = _VERDICT.findall(text)
    return found[-1] if found else None


def combine_orders(model_first: str, model_second: str) -> tuple[float, bool]:
    """(quality of the model vs the reference, whether the two orders agree).

    `model_first` is the verdict with the model's answer as A, `model_second` with it as B."""
    first = {"A": 1.0, "B": 0.0, "C": 0.5}[model_first]
    second = {"B": 1.0, "A": 0.0, "C": 0.5}[model_second]
    if first == second:
        return first, True
    return 0.5, False
