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


def _substring_counts(tail: str, low: str) -> tuple[int, int, int, int, int, bool, bool]:  # = _Sub
    """Per text: math symbols and words, code markers, question, writing and ratio words (each a
    sum of `str.count`), and the 'how many/much' and blank-marker flags."""
    return (
        sum(map(tail.count, _MATH_CHARS)) + sum(map(low.count, _MATH_SUBSTR)),
        sum(map(tail.count, _CODE_MARKERS)),
        sum(map(low.count, _QWORDS)),
        sum(map(low.count, _WRITE_WORDS)),
        sum(map(low.count, _RATIO_WORDS)),
        "how many" in low or "how much" in low,
        "__" in tail or "[mask]" in low or "blank" in low,
    )


_Sub = tuple[int, int, int, int, int, bool, bool]
# what a batch precomputes per text: substring counts, numbers, MC / QA / sentence-end counts
_Pre = tuple[_Sub, list[str], int, int, int]


def _one(text: str, pre: _Pre | None = None) -> list[float]:
    n = len(text)
    if n == 0:
        return [0.0] * len(FEATURE_NAMES)
    nw = len(text.split())
    tail = text[-_MAX_SCAN:]
    n_cp, digits, upper, lower, space, non_ascii, cjk = _char_classes(tail)
    inv = 1.0 / n_cp
    punct = n_cp - digits - upper - lower - space - non_ascii
    if pre is None:
        sub = _substring_counts(tail, tail.lower())
        nums = _NUM.findall(tail)
        mc_n, qa_n, sent_n = (
            len(_MC.findall(tail)),
            len(_QA_BLOCK.findall(tail)),
            len(_SENT_END.findall(tail)),
        )
    else:
        sub, nums, mc_n, qa_n, sent_n = pre
    values = [_number(x) for x in nums[:200]]
    math_n, code_n, q_n, write_n, ratio_n, how_many, blank = sub
    return [
        math.log1p(n),
        math.log1p(nw),
        math.log1p(text.count("\n")),
        (n - text.count(" ")) / max(nw, 1),
        digits * inv,
        math.log1p(len(nums)),
        math_n * inv * 10.0,
        math.log1p(code_n),
        math.log1p(mc_n),
        math.log1p(q_n),
        float(how_many),
        math.log1p(write_n),
        math.log1p(tail.count("?")),
        float(blank),
        math.log1p(qa_n),
        upper * inv,
        punct * inv,
        non_ascii * inv,
        cjk * inv,
        float(tail.rstrip().endswith("?")),
        math.log1p(sent_n),
        math.log1p(len(set(nums))),
        math.log1p(min(max(values, default=0.0), 1e12)),
        math.log1p(ratio_n),
        math.log1p(sum("." in x for x in nums)),
    ]


# ---- batches: the substring counts of all ASCII tails in one numpy pass --------------------------
_VECTOR_MIN_TEXTS = 8
_BYTE_MASKS = [(1 << (8 * k)) - 1 for k in range(9)]
# (buffer, patterns) per summed group, in `_substring_counts` order; single characters are
# counted per text with str.count (cheap), longer patterns here. Case as in `_substring_counts`.
_TAIL, _LOW = 0, 1
_GROUPS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (_LOW, tuple(p for p in _MATH_SUBSTR if len(p) > 1)),
    (_TAIL, _CODE_MARKERS),
    (_LOW, _QWORDS),
    (_LOW, _WRITE_WORDS),
    (_LOW, tuple(p for p in _RATIO_WORDS if len(p) > 1)),
    (_LOW, ("how many", "how much")),
    (_TAIL, ("__",)),
    (_LOW, ("[mask]", "blank")),
)


def _self_overlapping(p: str) -> bool:
    """True when a proper suffix of `p` is also its prefix (occurrences can overlap)."""
    return any(p[-k:] == p[:k] for k in range(1, len(p)))


def _positions(buf: bytes, patterns: list[str]) -> list[np.ndarray]:
    """Start offsets of the non-overlapping occurrences of each pattern in `buf`, scanning left
    to right like `str.count` (every pattern is ASCII, 2-16 characters)."""
    B = np.frombuffer(buf, dtype=np.uint8)
    if len(B) < 2:
        return [np.zeros(0, dtype=np.int64) for _ in patterns]
    bigram = (B[:-1].astype(np.uint16) << 8) | B[1:]
    first = sorted({(ord(p[0]) << 8) | ord(p[1]) for p in patterns})
    lut = np.zeros(1 << 16, dtype=np.uint8)  # 1 + index of the first bigram, 0 for none
    lut[first] = np.arange(1, len(first) + 1)
    code = lut[bigram]
    cand = np.flatnonzero(code)
    groups = code[cand]
    order = np.argsort(groups, kind="stable")  # candidates by first bigram, positions ascending
    cand = cand[order]
    bounds = np.searchsorted(groups[order], np.arange(1, len(first) + 2))
    v8 = np.ndarray(shape=(len(buf) + 8,), dtype="<u8", buffer=buf + bytes(24), offset=0, strides=(1,))
    out = []
    for p in patterns:
        g = first.index((ord(p[0]) << 8) | ord(p[1]))
        pos = cand[bounds[g] : bounds[g + 1]]
        raw = p.encode("ascii")
        ok = (v8[pos] & np.uint64(_BYTE_MASKS[min(len(raw), 8)])) == np.uint64(
            int.from_bytes(raw[:8].ljust(8, b"\0"), "little")
        )
        if len(raw) > 8:
            ok &= (v8[pos + 8] & np.uint64(_BYTE_MASKS[len(raw) - 8])) == np.uint64(
                int.from_bytes(raw[8:16].ljust(8, b"\0"), "little")
            )
        pos = pos[ok]
        if len(pos) > 1 and _self_overlapping(p):  # keep the greedy, non-overlapping ones
            kept, nxt = [], -1
            for x in pos.tolist():
                if x >= nxt:
                    kept.append(x)
                    nxt = x + len(raw)
            pos = np.asarray(kept, dtype=np.int64)
        out.append(pos)
    return out


def _batch_substring_counts(tails: list[str]) -> list[_Sub]:
    """`_substring_counts` of many ASCII tails: the texts are joined (a NUL between them, which
    no pattern holds, so no occurrence spans two texts) and scanned once per buffer."""
    k = len(tails)
    joined = "\0".join(tails)
    bufs = (joined.encode("ascii"), joined.lower().encode("ascii"))
    lens = np.fromiter(map(len, tails), dtype=np.int64, count=k)
    starts = np.cumsum(lens + 1) - (lens + 1)
    counts = np.zeros((len(_GROUPS), k), dtype=np.int64)
    for which in (_TAIL, _LOW):
        idx = [g for g, (b, _) in enumerate(_GROUPS) if b == which]
        pats = [p for g in idx for p in _GROUPS[g][1]]
        found = _positions(bufs[which], pats)
        at = 0
        for g in idx:
            n_p = len(_GROUPS[g][1])
            pos = np.concatenate(found[at : at + n_p])
            at += n_p
            if len(pos):
                counts[g] = np.bincount(np.searchsorted(starts, pos, side="right") - 1, minlength=k)
    math_n, code_n, q_n, write_n, ratio_n, how_n, blank_tail, blank_low = counts.tolist()
    # single characters (ASCII: the same count in the lower-cased text)
    math_single = _MATH_CHARS + "".join(p for p in _MATH_SUBSTR if len(p) == 1)
    ratio_single = "".join(p for p in _RATIO_WORDS if len(p) == 1)
    return [
        (
            sum(map(tail.count, math_single)) + math_n[i],
            code_n[i],
            q_n[i],
            write_n[i],
            sum(map(tail.count, ratio_single)) + ratio_n[i],
            how_n[i] > 0,
            blank_tail[i] > 0 or blank_low[i] > 0,
        )
        for i, tail in enumerate(tails)
    ]


def _in(B: np.ndarray, chars: str) -> np.ndarray:
    """Boolean mask: B (uint8) is one of `chars` (ASCII)."""
    lut = np.zeros(256, dtype=bool)
    lut[list(chars.encode("ascii"))] = True
    return lut[B]


_RE_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "  # what `\s` matches in ASCII


def _batch_regex(
    buf: bytes, starts: np.ndarray, lens: np.ndarray
) -> tuple[list[list[str]], list[int], list[int], list[int]]:
    """`_NUM.findall`, and the match counts of `_MC`, `_QA_BLOCK` and `_SENT_END`, per ASCII text
    of `buf` (texts at `starts` with `lens`, separated by one NUL), without the regex engine.

    - numbers: maximal runs of digits and of '.'/',' with a digit on both sides (what
      `\\d+(?:[.,]\\d+)*` finds scanning left to right);
    - sentence ends: '.', '!' or '?' followed by whitespace or at the end of the text (a match
      consumes the whitespace, which never starts another match);
    - multiple-choice and Q/A lines: the first non-space character after a line start (the start
      of a text or after a newline; `\\s*` crosses newlines) opens the option / the
      question-answer label. Distinct openers are independent matches (a match ends on its
      opener's line or in the whitespace after it).
    """
    k = len(starts)
    B = np.frombuffer(buf + bytes(16), dtype=np.uint8)  # padding: lookahead past the last text
    n = len(buf)
    digit = (B >= 48) & (B <= 57)
    # numbers
    tok = digit.copy()
    sep = _in(B, ".,")
    sep[1:-1] &= digit[:-2] & digit[2:]
    sep[0] = False
    tok |= sep
    edge = np.diff(tok[:n].view(np.int8), prepend=np.int8(0), append=np.int8(0))
    n_start, n_end = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    nums: list[list[str]] = [[] for _ in range(k)]
    text = buf.decode("ascii")
    for i, a, b in zip(
        (np.searchsorted(starts, n_start, side="right") - 1).tolist(),
        n_start.tolist(),
        n_end.tolist(),
        strict=True,
    ):
        nums[i].append(text[a:b])
    # sentence ends
    space = _in(B, _RE_SPACE)
    last = np.zeros(len(B), dtype=bool)
    last[(starts + lens - 1)[lens > 0]] = True
    ends = np.flatnonzero(_in(B[:n], ".!?") & (space[1 : n + 1] | last[:n]))
    sent = np.bincount(np.searchsorted(starts, ends, side="right") - 1, minlength=k)
    # line openers: the first non-space at or after each line start
    line_starts = np.concatenate((starts, np.flatnonzero(B[:n] == 10) + 1))
    non_space = np.flatnonzero(~space[:n])
    idx = np.searchsorted(non_space, line_starts)
    opener = np.unique(non_space[idx[idx < len(non_space)]])
    letter = _in(B, "ABCDEabcde")
    close = _in(B, ").:")
    o = opener
    mc_ok = (letter[o] & close[o + 1] & space[o + 2]) | (
        (B[o] == 40) & letter[o + 1] & close[o + 2] & space[o + 3]
    )
    mc = np.bincount(np.searchsorted(starts, o[mc_ok], side="right") - 1, minlength=k)
    low = B | np.uint8(0x20)  # ASCII letters lower-cased (only compared with letters)
    is_letter = _in(B, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

    def word_at(pos: np.ndarray, word: str) -> np.ndarray:
        ok = np.ones(len(pos), dtype=bool)
        for j, ch in enumerate(word.encode("ascii")):
            ok &= is_letter[pos + j] & (low[pos + j] == ch)
        return ok

    def colon_after(pos: np.ndarray) -> np.ndarray:
        nxt = np.searchsorted(non_space, pos)  # next non-space at or after pos
        ok = nxt < len(non_space)
        where = non_space[np.minimum(nxt, len(non_space) - 1)]
        return ok & (B[where] == 58)

    qa_ok = np.zeros(len(o), dtype=bool)
    for word in ("question", "q", "answer", "a"):  # the alternation, tried in order
        cand = ~qa_ok & word_at(o, word)
        if cand.any():
            qa_ok[cand] = colon_after(o[cand] + len(word))
    qa = np.bincount(np.searchsorted(starts, o[qa_ok], side="right") - 1, minlength=k)
    return nums, mc.tolist(), qa.tolist(), sent.tolist()


def _batch_pre(tails: list[str]) -> list[_Pre]:
    """What `_one` scans per text, for many ASCII tails at once (the same values)."""
    k = len(tails)
    lens = np.fromiter(map(len, tails), dtype=np.int64, count=k)
    starts = np.cumsum(lens + 1) - (lens + 1)
    nums, mc, qa, sent = _batch_regex("\0".join(tails).encode("ascii"), starts, lens)
    subs = _batch_substring_counts(tails)
    return list(zip(subs, nums, mc, qa, sent, strict=True))


def prompt_features(texts: Sequence[str]) -> np.ndarray:
    """(len(texts), len(FEATURE_NAMES)) float32 hand-made features, one row per text."""
    texts = [t if isinstance(t, str) else text_of(t) for t in texts]
    rows: list[list[float]] = [[]] * len(texts)
    if len(texts) >= _VECTOR_MIN_TEXTS:
        fast = [i for i, t in enumerate(texts) if t and t.isascii()]
        pres = _batch_pre([texts[i][-_MAX_SCAN:] for i in fast])
        for i, pre in zip(fast, pres, strict=True):
            rows[i] = _one(texts[i], pre)
    for i, t in enumerate(texts):
        if not rows[i]:
            rows[i] = _one(t)
    if not rows:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return np.array(rows, dtype=np.float64).astype(np.float32)  # the same rounding as row assignment
