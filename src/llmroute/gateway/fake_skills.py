"""Skill profiles and a judge for the fake server (`llmroute.gateway.fake`, see its docstring):
what a prompt of `skill_prompts()` asks and its right answer (`_solve`), a skilled model's
answer, right or wrong by a seeded coin (`_coin`, `_skilled`), the graders' view of an answer
(`is_right`) and the fake judge's verdict on a judge prompt (`_judge`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

SKILL_CATEGORIES = ("math", "code", "chat")
#: model -> category -> probability of a right answer
DEFAULT_SKILLS: dict[str, dict[str, float]] = {
    "skill-math": {"math": 0.95, "code": 0.1, "chat": 0.9},
    "skill-code": {"math": 0.1, "code": 0.95, "chat": 0.9},
    "skill-chat": {"math": 0.1, "code": 0.1, "chat": 0.95},
}
DEFAULT_JUDGES: tuple[str, ...] = ("fake-judge",)

_ARITH = re.compile(r"(?i)\bcompute (-?\d+) ([+*-]) (-?\d+)")
_MC = re.compile(r"(?i)which number is (largest|smallest)\?((?:\s*[A-D]\) -?\d+)+)")
_MC_OPT = re.compile(r"([A-D])\) (-?\d+)")
_CODE = re.compile(r"Python function `(\w+)\((\w+)\)` that returns ([^`\n]+?)\.(?:\s|$)")
_LAST_NUMBER = re.compile(r"-?\d+")
_LETTER = re.compile(r"\(([A-D])\)")
_REFUSAL = "Sorry, I cannot help with that."


@dataclass(frozen=True)
class _Task:
    category: str  # math | code | chat
    kind: str  # arith | mc | code | chat
    right: str  # the right final number / letter / function body line
    options: tuple[str, ...] = ()


def _solve(text: str) -> _Task:
    """What a prompt of `skill_prompts()` asks, and its right answer (chit-chat otherwise)."""
    m = _ARITH.search(text)
    if m:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        v = a + b if op == "+" else a - b if op == "-" else a * b
        return _Task("math", "arith", str(v))
    m = _MC.search(text)
    if m:
        opts = _MC_OPT.findall(m.group(2))
        pick = max if m.group(1).lower() == "largest" else min
        letter = pick(opts, key=lambda o: int(o[1]))[0]
        return _Task("math", "mc", letter, tuple(o[0] for o in opts))
    m = _CODE.search(text)
    if m:
        return _Task("code", "code", f"def {m.group(1)}({m.group(2)}):\n    return {m.group(3)}\n")
    return _Task("chat", "chat", "")


def _coin(seed: int, model: str, text: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, model, prompt)."""
    h = hashlib.sha256(f"{seed}\x00{model}\x00{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def _skilled(task: _Task, text: str, right: bool, coin: float) -> str:
    if task.kind == "arith":
        v = int(task.right) if right else int(task.right) + 1 + int(coin * 1e6) % 9
        return f"Let me work it out step by step. The answer is {v}."
    if task.kind == "mc":
        wrong = [o for o in task.options if o != task.right] or [task.right]
        letter = task.right if right else wrong[int(coin * 1e6) % len(wrong)]
        return f"Comparing the options, the answer is ({letter})."
    if task.kind == "code":
        body = task.right
        if not right:  # off by one
            head, ret = body.split("return ", 1)
            body = f"{head}return ({ret.strip()}) + 1\n"
        return f"Here it is:\n```python\n{body}```"
    return f"Sure! Happy to help with that: {text[:80]}" if right else _REFUSAL


def is_right(question: str, answer: str) -> bool:
    """Whether `answer` answers a `skill_prompts()` question right (the fake judge's view)."""
    task = _solve(question)
    if task.kind == "arith":
        nums = _LAST_NUMBER.findall(answer)
        return bool(nums) and nums[-1] == task.right
    if task.kind == "mc":
        letters = _LETTER.findall(answer)
        return bool(letters) and letters[-1] == task.right
    if task.kind == "code":
        return task.right in answer
    return bool(answer.strip()) and _REFUSAL not in answer


_J_SINGLE = re.compile(
    r"\[Question\]\n(.*?)\n\n(?:\[The Start of Reference Answer\].*?\[The End of Reference Answer\]\n\n)?"
    r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]",
    re.S,
)
_J_PAIR = re.compile(
    r"\[Question\]\n(.*?)\n\n\[The Start of Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A's Answer\]"
    r"\s*\[The Start of Assistant B's Answer\]\n(.*?)\n\[The End of Assistant B's Answer\]",
    re.S,
)


def _judge(text: str) -> str:
    """The fake judge's verdict on a single-answer or pairwise judge prompt."""
    m = _J_PAIR.search(text)
    if m:
        a, b = is_right(m.group(1), m.group(2)), is_right(m.group(1), m.group(3))
        verdict = "B" if b and not a else "A"  # ties go to the first answer: a position bias
        return f"Both answers were compared. [[{verdict}]]"
    m = _J_SINGLE.search(text)
    if m:
        score = 9 if is_right(m.group(1), m.group(2)) else 2
        return f"The answer was checked against the question. Rating: [[{score}]]"
    return "Rating: [[5]]"


_NAMES = ("Alice", "Bob", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jules", "Kofi", "Lena")
_CHAT = (
    "Hi there! Could you greet my friend {name} warmly?",
    "Say something nice to {name}, who just finished a marathon.",
    "Tell {name} good morning in a cheerful way.",
    "Write a short thank-you note to {name} for the birthday gift.",
    "How are you doing today? My name is {name}.",
    "Can you wish {name} a happy weekend?",
    "Give {name} a friendly word of encouragement before the exam.",
    "Please say hello to {name} and ask how the holiday was.",
)


def skill_prompts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` prompts the skilled fake models answer and the graders grade: a third maths (final
    number or multiple-choice letter, with `reference` and `grader`), a third code (a Python
    function with `tests`), a third chit-chat (graded by the judge). Each has `prompt_id`,
    `prompt` and `task` (math / code / chat)."""
    import random

    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        cat = SKILL_CATEGORIES[i % 3]
        row: dict[str, Any] = {"prompt_id": f"s{seed}-{i}", "task": cat}
        if cat == "math" and i % 2 == 0:
            a, b, op = rng.randint(2, 999), rng.randint(2, 99), rng.choice("+-*")
            row |= {"prompt": f"Compute {a} {op} {b}. Reply with the final number.", "grader": "number"}
            row["reference"] = _solve(row["prompt"]).right
        elif cat == "math":
            vals = rng.sample(range(-50, 500), 4)
            which = rng.choice(("largest", "smallest"))
            opts = " ".join(f"{ch}) {v}" for ch, v in zip("ABCD", vals, strict=True))
            row |= {"prompt": f"Which number is {which}? {opts}. Answer with the letter.", "grader": "choice"}
            row["reference"] = _solve(row["prompt"]).right
        elif cat == "code":
            name = rng.choice(("scale", "shift", "area", "score", "total", "step")) + f"_{i}"
            k, c = rng.randint(2, 9), rng.randint(0, 20)
            row["prompt"] = f"Write a Python function `{name}(x)` that returns x * {k} + {c}. Only the code."
            row["tests"] = "\n".join(f"assert {name}({x}) == {x * k + c}" for x in (0, 1, 7))
            row["grader"] = "code"
        else:
            row["prompt"] = rng.choice(_CHAT).format(name=rng.choice(_NAMES)) + f" (#{i})"
            row["grader"] = "judge"
        out.append(row)
    return out
