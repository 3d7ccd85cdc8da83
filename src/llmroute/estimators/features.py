"""Hand-made prompt features that complement the embedding.

Cheap facts about the prompt text that embeddings from averaged word vectors capture badly:
length, digits and math symbols, code markers, multiple-choice layout, question words, script
(Latin / CJK / other) and few-shot structure. All pure Python + numpy, no model, no state.

`prompt_features(texts)` returns an (n, k) float32 matrix with one column per name in
`FEATURE_NAMES`; estimators standardise the columns themselves. Batches of 8+ texts are computed
column-wise in numpy (`_batch_rows`); the values are identical to the per-text code (`_one`),
which the tests check against a verbatim copy of it.
"""

from __future__ import annotations

import functools
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
_ASCII = bytes(range(128))
_NON_ASCII_CHAR = re.compile("[^\x00-\x7f]")
_CJK = re.compile("[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")  # kana, CJK ideographs, Hangul


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
    # UTF-8: the ASCII classes are counted on bytes (a non-ASCII character has no byte < 128)
    b = tail.encode("utf-8")
    n = len(b)
    n_cp = len(tail)
    return (
        n_cp,
        n - len(b.translate(None, _DIGITS)),
        n - len(b.translate(None, _UPPER)),
        n - len(b.translate(None, _LOWER)),
        n - len(b.translate(None, _SPACE)),
        n_cp - (n - len(b.translate(None, _ASCII))),
        n_cp - len(_CJK.sub("", tail)),
    )


def _substring_counts(tail: str, low: str) -> tuple[int, int, int, int, int, bool, bool]:
    """Per text: math symbols and words, code markers, question, writing and ratio words (each a
    sum of `str.count`), and the 'how many/much' and blank-marker flags.

    Most patterns are absent from a given prompt, and `p in s` costs a third of `s.count(p)` (whose
    argument parsing dominates on short texts), so each pattern is counted only where present:
    the same sums, ~30% faster on a request's prompt."""
    return (
        sum([tail.count(p) for p in _MATH_CHARS if p in tail])
        + sum([low.count(p) for p in _MATH_SUBSTR if p in low]),
        sum([tail.count(p) for p in _CODE_MARKERS if p in tail]),
        sum([low.count(p) for p in _QWORDS if p in low]),
        sum([low.count(p) for p in _WRITE_WORDS if p in low]),
        sum([low.count(p) for p in _RATIO_WORDS if p in low]),
        "how many" in low or "how much" in low,
        "__" in tail or "[mask]" in low or "blank" in low,
    )


def _one(text: str) -> list[float]:
    n = len(text)
    if n == 0:
        return [0.0] * len(FEATURE_NAMES)
    nw = len(text.split())
    tail = text[-_MAX_SCAN:]
    n_cp, digits, upper, lower, space, non_ascii, cjk = _char_classes(tail)
    inv = 1.0 / n_cp
    punct = n_cp - digits - upper - lower - space - non_ascii
    math_n, code_n, q_n, write_n, ratio_n, how_many, blank = _substring_counts(tail, tail.lower())
    # regex scans skipped where they cannot match (an ASCII text without digits has no number;
    # a question/answer block needs a colon)
    nums = _NUM.findall(tail) if digits or non_ascii else []
    qa_n = len(_QA_BLOCK.findall(tail)) if ":" in tail or "\uff1a" in tail else 0
    mc_n, sent_n = len(_MC.findall(tail)), len(_SENT_END.findall(tail))
    values = [_number(x) for x in nums[:200]]
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
# The batch path has a fixed cost of ~0.5 ms per call; it pays off once the batch holds about this
# many characters (measured break-even: 50 texts of 60 chars, 12 of 600, < 8 of 2,000).
_VECTOR_MIN_CHARS = 6000
_VECTOR_CHUNK = 4096
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


def _batch_group_counts(tails: list[str]) -> np.ndarray:
    """(groups, k) counts of `_GROUPS` (patterns of 2+ characters) in many ASCII tails: the texts
    are joined (a NUL between them, which no pattern holds, so no occurrence spans two texts) and
    scanned once per buffer."""
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
    return counts


_RE_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "  # `\s` (and str.split / str.isspace) in ASCII
# byte classes for the batch path: bit flags
_F_DIGIT, _F_SEP, _F_SPACE, _F_END, _F_LETTER = 1, 2, 4, 8, 16
_HIST_CLASSES = 10  # 0 other, 1 digit, 2 upper, 3 lower, 4 ' ', 5 '\n', 6 '\t' '\r', 7 '?', 8 math, 9 '%'


@functools.cache
def _byte_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per byte: class flags (`_F_*`) and histogram class."""
    flags = np.zeros(256, dtype=np.uint8)
    hist = np.zeros(256, dtype=np.int64)
    for c in range(256):
        ch = chr(c)
        if ch.isdigit() and c < 128:
            flags[c] |= _F_DIGIT
            hist[c] = 1
        elif 65 <= c <= 90:
            hist[c] = 2
        elif 97 <= c <= 122:
            hist[c] = 3
        if ch in ".,":
            flags[c] |= _F_SEP
        if ch in _RE_SPACE:
            flags[c] |= _F_SPACE
        if ch in ".!?":
            flags[c] |= _F_END
        if ch.isascii() and ch.isalpha():
            flags[c] |= _F_LETTER
    hist[ord(" ")], hist[ord("\n")], hist[ord("\t")], hist[ord("\r")], hist[ord("?")] = 4, 5, 6, 6, 7
    hist[list((_MATH_CHARS + "$").encode())] = 8
    hist[ord("%")] = 9
    return flags, hist


def _log1p(values: Sequence[float]) -> list[float]:
    return [math.log1p(v) for v in values]  # math.log1p, as the per-text code (numpy may differ by an ulp)


def _skip_spaces(pos: np.ndarray, is_space: np.ndarray, step: int) -> np.ndarray:
    """From each position, the first one holding no space, walking by `step` (+1 or -1).

    `is_space` must hold a non-space at both ends (the batch buffer's NUL padding), so every
    walk stops inside it (backwards, position -1 reads the padding at the end).
    """
    pos = pos.copy()
    act = np.flatnonzero(is_space[pos])
    for _ in range(32):  # whitespace runs are short: a few vectorised steps
        if act.size == 0:
            return pos
        pos[act] += step
        act = act[is_space[pos[act]]]
    if act.size:  # long runs: search the non-space positions
        ns = np.flatnonzero(~is_space)
        if step > 0:
            pos[act] = ns[np.searchsorted(ns, pos[act])]
        else:
            j = np.searchsorted(ns, pos[act], side="right") - 1
            pos[act] = np.where(j >= 0, ns[np.maximum(j, 0)], -1)
    return pos


def _ascii_stand_in(text: str) -> str | None:
    """`text` with each non-ASCII character replaced by an ASCII one that every feature except
    the non-ASCII / CJK shares treats the same way (None when there is no such character).

    A non-ASCII character only ever counts as "whitespace" (str.split, `\\s`, rstrip) or as
    "some other character": it becomes \\x1c (whitespace, in no pattern or class) or \\x01
    (neither). Not possible for decimal digits (`\\d` takes them into numbers), the fullwidth
    colon (the Q/A pattern) and characters whose case mappings hold ASCII (lower-casing and the
    case-insensitive Q/A pattern would see them as letters).

    A few distinct characters (the usual case: a curly quote, a dash) are replaced one by one
    with str.replace (C string search; str.translate looks every character up in a dict: ~7x
    slower on a 1,500-character prompt); many go through one translate.
    """
    table: dict[int, str] = {}
    for ch in set(_NON_ASCII_CHAR.findall(text)):
        cased = ch.lower() + ch.upper() + ch.casefold()
        if ch.isdecimal() or ch == "：" or any(ord(c) < 128 for c in cased):
            return None
        table[ord(ch)] = "\x1c" if ch.isspace() else "\x01"
    if len(table) > 8:
        return text.translate(table)
    for code, to in table.items():
        text = text.replace(chr(code), to)
    return text


def _batch_rows(texts: list[str], shares: list[tuple[int, int]] | None = None) -> np.ndarray:
    """(k, len(FEATURE_NAMES)) float64 features of non-empty ASCII texts: the values `_one` gives,
    computed for all texts at once. `shares`: per text, the non-ASCII and CJK character counts of
    the original tail when the text is an `_ascii_stand_in` (else 0, 0).

    The tails are joined with a NUL between them (no pattern holds one, so nothing spans two
    texts). Character counts come from one histogram; the regexes are replaced by mask logic:
    - numbers: maximal runs of digits and of '.'/',' with a digit on both sides (what
      `\\d+(?:[.,]\\d+)*` finds scanning left to right);
    - sentence ends: '.', '!' or '?' followed by whitespace or at the end of the text (a match
      consumes the whitespace, which never starts another match);
    - multiple-choice and Q/A lines: the first non-space character after a line start (the start
      of a text or after a newline; `\\s*` crosses newlines) opens the option / the
      question-answer label. Distinct openers are independent matches (a match ends on its
      opener's line or in the whitespace after it).
    """
    k = len(texts)
    tails = [t[-_MAX_SCAN:] for t in texts]
    lens = np.fromiter(map(len, tails), dtype=np.int64, count=k)
    starts = np.cumsum(lens + 1) - (lens + 1)
    buf = "\0".join(tails).encode("ascii")
    n = len(buf)
    flag_lut, hist_lut = _byte_tables()
    B = np.frombuffer(buf + bytes(16), dtype=np.uint8)  # padding: lookahead past the last text
    F = flag_lut[B]
    # character histogram per text (the NUL after each text falls in class 0)
    hist = np.bincount(
        np.repeat(np.arange(k, dtype=np.int64) * _HIST_CLASSES, lens + 1)[:n] + hist_lut[B[:n]],
        minlength=k * _HIST_CLASSES,
    ).reshape(k, _HIST_CLASSES)
    digits, upper, lower = hist[:, 1], hist[:, 2], hist[:, 3]
    space = hist[:, 4] + hist[:, 5] + hist[:, 6]
    qmarks, math_chars, percent = hist[:, 7], hist[:, 8], hist[:, 9]
    is_space = (F & _F_SPACE) != 0
    # numbers
    digit = (F & _F_DIGIT) != 0
    tok = digit.copy()
    sep = (F & _F_SEP) != 0
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
    last = np.zeros(len(B), dtype=bool)
    ends_at = starts + lens - 1
    last[ends_at] = True
    ends = np.flatnonzero(((F[:n] & _F_END) != 0) & (is_space[1 : n + 1] | last[:n]))
    sent = np.bincount(np.searchsorted(starts, ends, side="right") - 1, minlength=k)
    # ends with '?' after stripping whitespace: the last non-space character of the text
    last_ns = _skip_spaces(ends_at, is_space, -1)
    ends_q = (last_ns >= starts) & (B[np.maximum(last_ns, 0)] == 63)
    # words (str.split): non-space characters at a text start or after a space
    word_start = ~is_space[:n]
    word_start[1:] &= is_space[: n - 1]
    word_start[starts] = ~is_space[starts]
    word_start[starts[1:] - 1] = False  # the NUL between two texts
    words = np.bincount(np.searchsorted(starts, np.flatnonzero(word_start), side="right") - 1, minlength=k)
    # line openers: the first non-space at or after each line start
    line = np.zeros(n + 1, dtype=bool)
    line[starts] = True
    line[np.flatnonzero(B[:n] == 10) + 1] = True
    o = _skip_spaces(np.flatnonzero(line[:n]), is_space, 1)
    if len(o) > 1:
        o = o[np.concatenate(([True], o[1:] != o[:-1]))]  # sorted: drop repeats
    b0, b1, b2, b3 = B[o], B[o + 1], B[o + 2], B[o + 3]
    lut_letter = np.zeros(256, dtype=bool)
    lut_letter[list(b"ABCDEabcde")] = True
    lut_close = np.zeros(256, dtype=bool)
    lut_close[list(b").:")] = True
    sp = (flag_lut[[b2, b3]] & _F_SPACE) != 0
    mc_ok = (lut_letter[b0] & lut_close[b1] & sp[0]) | ((b0 == 40) & lut_letter[b1] & lut_close[b2] & sp[1])
    mc = np.bincount(np.searchsorted(starts, o[mc_ok], side="right") - 1, minlength=k)
    is_letter = (F & _F_LETTER) != 0

    def word_at(pos: np.ndarray, word: str) -> np.ndarray:
        ok = np.ones(len(pos), dtype=bool)
        for m, ch in enumerate(word.encode("ascii")):
            ok &= is_letter[pos + m] & ((B[pos + m] | np.uint8(0x20)) == ch)
        return ok

    qa_ok = np.zeros(len(o), dtype=bool)
    for word in ("question", "q", "answer", "a"):  # the alternation, tried in order
        cand = ~qa_ok & word_at(o, word)
        if cand.any():
            qa_ok[cand] = B[_skip_spaces(o[cand] + len(word), is_space, 1)] == 58  # then ':'
    qa = np.bincount(np.searchsorted(starts, o[qa_ok], side="right") - 1, minlength=k)
    # substrings of 2+ characters
    g_math, g_code, g_q, g_write, g_ratio, g_how, g_blank_tail, g_blank_low = _batch_group_counts(tails)
    # full-text counts (the tail is the text unless it is longer than _MAX_SCAN)
    n_chars = np.fromiter(map(len, texts), dtype=np.int64, count=k)
    newlines, spaces = hist[:, 5].copy(), hist[:, 4].copy()
    for i in np.flatnonzero(n_chars > _MAX_SCAN).tolist():
        t = texts[i]
        words[i], newlines[i], spaces[i] = len(t.split()), t.count("\n"), t.count(" ")
    # numbers: values, distinct, decimals (the per-text code's Python, per text with numbers)
    n_nums = [len(x) for x in nums]
    distinct = [len(set(x)) if x else 0 for x in nums]
    top = [min(max([_number(v) for v in x[:200]]), 1e12) if x else 0.0 for x in nums]
    decimals = [sum("." in v for v in x) if x else 0 for x in nums]
    inv = 1.0 / lens
    non_ascii, cjk = (
        np.array(shares, dtype=np.int64).reshape(k, 2).T if shares else (np.zeros(k), np.zeros(k))
    )
    punct = lens - digits - upper - lower - space - non_ascii
    cols = [
        _log1p(n_chars.tolist()),
        _log1p(words.tolist()),
        _log1p(newlines.tolist()),
        (n_chars - spaces) / np.maximum(words, 1),
        digits * inv,
        _log1p(n_nums),
        (math_chars + g_math) * inv * 10.0,
        _log1p(g_code.tolist()),
        _log1p(mc.tolist()),
        _log1p(g_q.tolist()),
        (g_how > 0).astype(np.float64),
        _log1p(g_write.tolist()),
        _log1p(qmarks.tolist()),
        ((g_blank_tail > 0) | (g_blank_low > 0)).astype(np.float64),
        _log1p(qa.tolist()),
        upper * inv,
        punct * inv,
        non_ascii * inv,
        cjk * inv,
        ends_q.astype(np.float64),
        _log1p(sent.tolist()),
        _log1p(distinct),
        _log1p(top),
        _log1p((percent + g_ratio).tolist()),
        _log1p(decimals),
    ]
    return np.column_stack([np.asarray(c, dtype=np.float64) for c in cols])


def prompt_features(texts: Sequence[str]) -> np.ndarray:
    """(len(texts), len(FEATURE_NAMES)) float32 hand-made features, one row per text."""
    texts = [t if isinstance(t, str) else text_of(t) for t in texts]
    if not (len(texts) >= _VECTOR_MIN_TEXTS and sum(map(len, texts)) >= _VECTOR_MIN_CHARS):
        # text by text (a request's micro-batch): one conversion of all rows, straight to float32
        # (each double rounded once, as assigning it to a float64 row and casting that would)
        if not texts:
            return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
        return np.array([_one(t) for t in texts], dtype=np.float32)
    out = np.zeros((len(texts), len(FEATURE_NAMES)), dtype=np.float64)
    use: dict[int, str] = {}  # the texts the batch path takes: ASCII ones and stand-ins
    shares: dict[int, tuple[int, int]] = {}
    for i, t in enumerate(texts):
        if t and t.isascii():
            use[i] = t
        elif t:
            stand_in = _ascii_stand_in(t)
            if stand_in is not None:
                use[i] = stand_in
                shares[i] = _char_classes(t[-_MAX_SCAN:])[5:]
    fast = list(use)
    for j in range(0, len(fast), _VECTOR_CHUNK):  # in slices: bounded memory
        part = fast[j : j + _VECTOR_CHUNK]
        out[part] = _batch_rows([use[i] for i in part], [shares.get(i, (0, 0)) for i in part])
    done = set(fast)
    for i, t in enumerate(texts):
        if i not in done:
            out[i] = _one(t)
    return out.astype(np.float32)  # the same rounding as assigning the float rows to float32
