"""Reference graders: turn a model's answer into a quality in [0, 1] without calling a model.

Every grader returns a `Grade`: `quality` 1.0 (right) or 0.0 (wrong), or None with an `error` when
the answer cannot be graded (e.g. a reference that is not a number for `number`); `detail` says
briefly what was compared. Graders, by name (`GRADERS`):

- `exact`: the answer, stripped, equals the reference, stripped;
- `normalized`: equal after lower-casing, removing punctuation, the articles a/an/the and extra
  whitespace (the SQuAD normalisation);
- `choice`: the multiple-choice letter of the answer (A-J: "the answer is (B)", "Answer: B", or
  the answer being just the letter; the last stated one wins) equals the reference letter;
- `number`: the final number of the answer equals the final number of the reference (commas as
  thousands separators ignored; relative tolerance 1e-6), e.g. GSM8K's "#### 42";
- `regex`: the reference, as a Python regular expression, matches somewhere in the answer;
- `code`: the answer's code (its first ```python block, else its first ``` block, else the whole
  answer) followed by the row's tests (e.g. `assert f(1) == 2` lines) exits 0 in a separate
  Python process; see `run_code` for the isolation it gives and the one it does not.
"""

from __future__ import annotations

import os
import re
import string
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "GRADERS",
    "Grade",
    "extract_choice",
    "extract_code",
    "final_number",
    "grade",
    "grade_choice",
    "grade_code",
    "grade_exact",
    "grade_normalized",
    "grade_number",
    "grade_regex",
    "normalize_text",
    "run_code",
]


@dataclass(frozen=True)
class Grade:
    """The result of grading one answer: `quality` in [0, 1], or None with `error` (not gradable)."""

    quality: float | None
    error: str | None = None
    detail: str = ""


_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(s: str) -> str:
    """Lower-case, punctuation and the articles a/an/the removed, whitespace collapsed."""
    s = _ARTICLES.sub(" ", s.lower().translate(_PUNCT))
    return " ".join(s.split())


def grade_exact(answer: str, reference: str) -> Grade:
    """1.0 when the stripped answer equals the stripped reference."""
    return Grade(float(answer.strip() == reference.strip()), detail="exact")


def grade_normalized(answer: str, reference: str) -> Grade:
    """1.0 when the answer equals the reference after `normalize_text`."""
    return Grade(float(normalize_text(answer) == normalize_text(reference)), detail="normalized")


_CHOICE_STATED = re.compile(
    r"(?i)\b(?:answer|option|choice)\s*(?:is|:)?\s*(?:option\s*)?[\(\[]?([A-J])[\)\]]?(?![\w])"
)
_CHOICE_PAREN = re.compile(r"\(([A-J])\)")
_CHOICE_ALONE = re.compile(r"(?i)^\s*[\(\[]?([A-J])[\)\]\.:]?\s*$")


def extract_choice(answer: str) -> str | None:
    """The multiple-choice letter an answer gives (upper case), or None."""
    m = _CHOICE_ALONE.match(answer)
    if m:
        return m.group(1).upper()
    stated = _CHOICE_STATED.findall(answer)
    if stated:
        return stated[-1].upper()
    paren = _CHOICE_PAREN.findall(answer)
    return paren[-1] if paren else None


def grade_choice(answer: str, reference: str) -> Grade:
    """1.0 when the answer's letter (`extract_choice`) is the reference letter."""
    ref = extract_choice(reference)
    if ref is None:
        return Grade(None, f"reference {reference[:20]!r} is not a letter A-J", "choice")
    got = extract_choice(answer)
    return Grade(float(got == ref), detail=f"choice {got} vs {ref}")


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def final_number(text: str) -> float | None:
    """The last number written in `text` (1,234.5 -> 1234.5), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def grade_number(answer: str, reference: str, rel_tol: float = 1e-6) -> Grade:
    """1.0 when the answer's final number equals the reference's (relative tolerance `rel_tol`)."""
    ref = final_number(reference)
    if ref is None:
        return Grade(None, f"reference {reference[:20]!r} holds no number", "number")
    got = final_number(answer)
    ok = got is not None and abs(got - ref) <= rel_tol * max(1.0, abs(ref))
    return Grade(float(ok), detail=f"number {got} vs {ref}")


def grade_regex(answer: str, pattern: str) -> Grade:
    """1.0 when `pattern` (a Python regular expression) matches somewhere in the answer."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        return Grade(None, f"invalid regex: {e}", "regex")
    return Grade(float(rx.search(answer) is not None), detail="regex")


_FENCE_PY = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.S | re.I)
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)


def extract_code(answer: str) -> str:
    """The code of an answer: its first ```python block, else its first ``` block, else all of it."""
    m = _FENCE_PY.search(answer) or _FENCE.search(answer)
    return m.group(1) if m else answer


#: Runs before the answer's code: resource limits (filled in), then socket creation fails (best
#: effort, see `run_code`).
_PRELUDE = """\
import resource as _r
for _k, _v in ((_r.RLIMIT_CPU, {cpu}), (_r.RLIMIT_AS, {mem}), (_r.RLIMIT_FSIZE, 16 << 20), (_r.RLIMIT_CORE, 0)):
    _r.setrlimit(_k, (_v, _v))
del _r, _k, _v
import socket as _s
def _no_network(*a, **k):
    raise OSError("network access is disabled in the llmroute code grader")
_s.socket = _no_network
_s.create_connection = _no_network
_s.getaddrinfo = _no_network
del _s
"""


def run_code(code: str, timeout_s: float = 10.0, memory_mb: int = 512) -> tuple[int | None, str]:
    """Run Python `code` in a separate process; returns (exit status or None on timeout, last
    output lines).

    Isolation it gives: a separate `python -I` process (no user site-packages, no PYTHON* variables)
    in a fresh temporary directory (its cwd, deleted after), with a minimal environment (PATH and
    LANG only: no proxies, no API keys), its own session (the whole process group is killed on
    timeout), limits set by a prelude on CPU time (`timeout_s` rounded up), address space (`memory_mb`), file size
    (16 MB) and no core dumps, and socket creation disabled by a prelude (network).

    Isolation it does NOT give: it is not a sandbox. The code runs as the same user, can read and
    write every file that user can (outside the temporary directory too), can start processes
    and can reach the network by undoing the prelude (e.g. `importlib.reload(socket)` or ctypes).
    Grade untrusted models' code in a container or VM without network (e.g.
    `docker run --network none`), not on a machine holding secrets.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
    with tempfile.TemporaryDirectory(prefix="llmroute-grade-") as tmp:
        path = os.path.join(tmp, "answer.py")
        with open(path, "w", encoding="utf-8") as f:
            prelude = _PRELUDE.format(cpu=max(1, int(timeout_s + 0.999)), mem=memory_mb << 20)
            f.write(prelude + "\n" + code)
        proc = subprocess.Popen(
            [sys.executable, "-I", "answer.py"],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return None, f"timed out after {timeout_s:g} s"
        finally:
            if proc.poll() is None:  # pragma: no cover - interrupted while waiting
                _kill_group(proc)
    tail = out.decode("utf-8", "replace").strip().splitlines()[-3:]
    return proc.returncode, " | ".join(tail)[:300]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import contextlib
    import signal

    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)


def grade_code(answer: str, tests: str, timeout_s: float = 10.0) -> Grade:
    """1.0 when the answer's code (`extract_code`) followed by `tests` exits 0 (see `run_code`).

    A timeout or a failing test is a wrong answer (0.0, with the reason in `detail`); only missing
    tests make the row ungradable."""
    if not tests or not tests.strip():
        return Grade(None, "the code grader needs tests (a 'tests' field)", "code")
    status, tail = run_code(extract_code(answer) + "\n\n" + tests + "\n", timeout_s)
    if status is None:
        return Grade(0.0, detail=f"code {tail}")
    return Grade(float(status == 0), detail="code passed" if status == 0 else f"code failed: {tail}")


GRADERS: dict[str, Callable[..., Grade]] = {
    "exact": grade_exact,
    "normalized": grade_normalized,
    "choice": grade_choice,
    "number": grade_number,
    "regex": grade_regex,
    "code": grade_code,
}


def grade(
    name: str, answer: str, reference: str | None, tests: str | None = None, timeout_s: float = 10.0
) -> Grade:
    """Grade `answer` with the grader `name` (see `GRADERS`) against `reference` (or `tests` for code)."""
    if name == "code":
        return grade_code(answer, tests or "", timeout_s)
    fn = GRADERS.get(name)
    if fn is None:
        return Grade(None, f"unknown grader {name!r}; choose from {', '.join(GRADERS)} or judge")
    if reference is None or str(reference) == "":
        return Grade(None, f"grader {name!r} needs a reference answer (a 'reference' field)", name)
    return fn(answer, str(reference))
