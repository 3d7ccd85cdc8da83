"""Hand-made prompt features that complement the embedding.

Cheap facts about the prompt text that embeddings from averaged word vectors capture badly:
length, digits and math symbols, code markers, multiple-choice layout, question words, script
(Latin / CJK / other) and few-shot structure. All pure Python + numpy, no model, no state.

`prompt_features(texts)` returns an (n, k) float32 matrix with one column per name in
`FEATURE_NAMES`; estimators standardise the columns themselves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["FEATURE_NAMES", "prompt_features", "text_of"]

_CODE_MARKERS = (
    "```",
    "def ",
    "return",
    "import ",
    "class ",
    "function",
    "=>",
    "console.",
    "print(",
    "printf(",
    ";\n",
    "{\n",
    "int ",
    "void ",
    "#include",
    "self.",
)
_QWORDS = ("what ", "which ", "who ", "whom ", "whose ", "when ", "where ", "why ", "how ")
_WRITE_WORDS = (
    "write",
    "compose",
    "draft",
    "create",
    "generate",
    "explain",
    "describe",
    "summari",
    "imagine",
)
_RATIO_WORDS = ("%", "percent", "half", "twice", "third", "quarter", "ratio", "per ", "each ", "times ")
_SENT_END = re.compile(r"[.!?](?:\s|$)")
_MATH_SUBSTR = ("\\frac", "\\sqrt", "$", "solve", "equation", "probability")
_MC = re.compile(r"(?m)^\s*\(?[A-Ea-e][\).:]\s")
_NUM = re.compile(r"\d+(?:[.,]\d+)*")
_QA_BLOCK = re.compile(r"(?mi)^\s*(question|q|answer|a)\s*[:：]")
_MATH_CHARS = "=+-*/^<>"

FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "mean_word_len",
    "digit_frac",
    "log_numbers",
    "math_sym_frac",
    "code_markers",
    "mc_options",
    "question_words",
    "how_many",
    "generative_verbs",
    "question_marks",
    "blank_markers",
    "qa_blocks",
    "upper_frac",
    "punct_frac",
    "non_ascii_frac",
    "cjk_frac",
    "ends_with_question",
    "log_sentences",
    "log_distinct_numbers",
    "log_max_number",
    "ratio_words",
    "decimal_numbers",
)


def text_of(prompt_or_messages: str | Sequence[dict]) -> str:
    """The text a router sees: a string as is, or the user/system contents of chat messages."""
    if isinstance(prompt_or_messages, str):
        return prompt_or_messages
    parts: list[str] = []
    for msg in prompt_or_messages:
        content = msg.get("content", "")
        if isinstance(content, list):  # OpenAI content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if msg.get("role", "user") in ("user", "system") and content:
            parts.append(str(content))
    return "\n".join(parts)


_MAX_SCAN = 2000  # regex features look at the last characters only (the question sits at the end)


def _number(token: str) -> float:
    """Value of a digit run such as 1,200.5 (0 when it is not one number, e.g. a version 1.2.3)."""
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return 0.0


_DIGITS = bytes(range(48, 58))
_UPPER = bytes(range(65, 91))
_LOWER = bytes(range(97, 123))
_SPACE = b" \n\t\r"


def _char_classes(tail: str) -> tuple[int, int, int, int, int, int, int]:
    """Counts in `tail`: chars, digits, upper, lower, whitespace, non-ASCII, CJK."""
    if tail.isascii():  # the common case: byte deletions in C, no array work
        b = tail.encode("ascii")
        n = len(b)
        return (
            n,
            n - len(b.translate(None, _DIGITS)),
            n - len(b.translate(None, _UPPER)),
            n - len(b.translate(None, _LOWER)),
            n - len(b.translate(None, _SPACE)),
            0,
            0,
        )
    cp = np.frombuffer(tail.encode("utf-32-le"), dtype=np.uint32)
    cjk = (
        ((cp >= 0x3040) & (cp <= 0x30FF))
        | ((cp >= 0x3400) & (cp <= 0x9FFF))
        | ((cp >= 0xAC00) & (cp <= 0xD7AF))
    )
    return (
        len(cp),
        int(np.count_nonzero((cp >= 48) & (cp <= 57))),
        int(np.count_nonzero((cp >= 65) & (cp <= 90))),
        int(np.count_nonzero((cp >= 97) & (cp <= 122))),
        int(np.count_nonzero((cp == 32) | (cp == 10) | (cp == 9) | (cp == 13))),
        int(np.count_nonzero(cp > 127)),
        int(np.count_nonzero(cjk)),
    )


def _one(text: str) -> list[float]:
    n = len(text)
    if n == 0:
        return [0.0] * len(FEATURE_NAMES)
    nw = len(text.split())
    tail = text[-_MAX_SCAN:]
    low = tail.lower()
    n_cp, digits, upper, lower, space, non_ascii, cjk = _char_classes(tail)
    inv = 1.0 / n_cp
    punct = n_cp - digits - upper - lower - space - non_ascii
    nums = _NUM.findall(tail)
    values = [_number(x) for x in nums[:200]]
    return [
        math.log1p(n),
        math.log1p(nw),
        math.log1p(text.count("\n")),
        (n - text.count(" ")) / max(nw, 1),
        digits * inv,
        math.log1p(len(nums)),
        (sum(map(tail.count, _MATH_CHARS)) + sum(map(low.count, _MATH_SUBSTR))) * inv * 10.0,
        math.log1p(sum(map(tail.count, _CODE_MARKERS))),
        math.log1p(len(_MC.findall(tail))),
        math.log1p(sum(map(low.count, _QWORDS))),
        float("how many" in low or "how much" in low),
        math.log1p(sum(map(low.count, _WRITE_WORDS))),
        math.log1p(tail.count("?")),
        float("__" in tail or "[mask]" in low or "blank" in low),
        math.log1p(len(_QA_BLOCK.findall(tail))),
        upper * inv,
        punct * inv,
        non_ascii * inv,
        cjk * inv,
        float(tail.rstrip().endswith("?")),
        math.log1p(len(_SENT_END.findall(tail))),
        math.log1p(len(set(nums))),
        math.log1p(min(max(values, default=0.0), 1e12)),
        math.log1p(sum(map(low.count, _RATIO_WORDS))),
        math.log1p(sum("." in x for x in nums)),
    ]


def prompt_features(texts: Sequence[str]) -> np.ndarray:
    """(len(texts), len(FEATURE_NAMES)) float32 hand-made features, one row per text."""
    out = np.zeros((len(texts), len(FEATURE_NAMES)), dtype=np.float32)
    for i, t in enumerate(texts):
        out[i] = _one(t if isinstance(t, str) else text_of(t))
    return out
