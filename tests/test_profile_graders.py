"""Reference graders and judge parsing of `llmroute profile` (no network, no model)."""

from __future__ import annotations

import pytest

from llmroute.profile.graders import (
    extract_choice,
    extract_code,
    final_number,
    grade,
    grade_choice,
    grade_code,
    grade_exact,
    grade_normalized,
    grade_number,
    grade_regex,
    normalize_text,
    run_code,
)
from llmroute.profile.judge import (
    combine_orders,
    pairwise_prompt,
    parse_pairwise,
    parse_rating,
    rating_to_quality,
    single_prompt,
)
from llmroute.profile.prompts import PromptItem
from llmroute.profile.runner import CostCap, resolve_grader


def test_exact_is_strict_but_strips() -> None:
    assert grade_exact("  Paris\n", "Paris").quality == 1.0
    assert grade_exact("paris", "Paris").quality == 0.0
    assert grade_exact("Paris.", "Paris").quality == 0.0


def test_normalized_ignores_case_punctuation_articles() -> None:
    assert normalize_text("The  Eiffel Tower!") == "eiffel tower"
    assert grade_normalized("the eiffel tower.", "Eiffel Tower").quality == 1.0
    assert grade_normalized("Eiffel", "Eiffel Tower").quality == 0.0


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("(c)", "C"),
        ("The answer is (D).", "D"),
        ("Answer: a", "A"),
        ("I first thought (A) but the answer is B", "B"),
        ("Comparing (A) and (C): (C)", "C"),
        ("no letter here", None),
    ],
)
def test_extract_choice(answer: str, letter: str | None) -> None:
    assert extract_choice(answer) == letter


def test_choice_grader() -> None:
    assert grade_choice("The answer is (B).", "B").quality == 1.0
    assert grade_choice("The answer is (C).", "B").quality == 0.0
    assert grade_choice("nothing", "B").quality == 0.0
    bad = grade_choice("B", "forty-two")
    assert bad.quality is None and "not a letter" in (bad.error or "")


def test_final_number_and_number_grader() -> None:
    assert final_number("first 3, then 1,234.5 apples") == 1234.5
    assert final_number("minus -7") == -7
    assert final_number("none") is None
    assert grade_number("so the total is 42.", "#### 42").quality == 1.0
    assert grade_number("42 first, finally 43", "42").quality == 0.0  # the final number counts
    assert grade_number("41", "42").quality == 0.0
    assert grade_number("42.0000000001", "42").quality == 1.0  # within the relative tolerance
    assert grade_number("no number", "42").quality == 0.0
    assert grade_number("42", "n/a").quality is None


def test_regex_grader() -> None:
    assert grade_regex("Order id: AB-1234", r"[A-Z]{2}-\d{4}").quality == 1.0
    assert grade_regex("Order id: ab-12", r"[A-Z]{2}-\d{4}").quality == 0.0
    assert grade_regex("x", "(").quality is None


def test_extract_code() -> None:
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("x = 2") == "x = 2"


def test_code_grader_passes_and_fails() -> None:
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    tests = "assert add(1, 2) == 3\nassert add(0, 0) == 0"
    assert grade_code(good, tests).quality == 1.0
    g = grade_code(bad, tests)
    assert g.quality == 0.0 and "AssertionError" in g.detail
    assert grade_code("def add(:", tests).quality == 0.0  # a syntax error is a wrong answer
    assert grade_code(good, "").quality is None  # no tests: not gradable


def test_code_grader_timeout_is_a_wrong_answer() -> None:
    g = grade_code("while True:\n    pass", "assert True", timeout_s=1.0)
    assert g.quality == 0.0
    assert "timed out" in g.detail


def test_code_runs_isolated_cwd_env_and_no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-the-child")
    code = (
        "import os, tempfile\n"
        "assert 'HTTPS_PROXY' not in os.environ and 'OPENAI_API_KEY' not in os.environ\n"
        "assert os.path.basename(os.getcwd()).startswith('llmroute-grade-')\n"
        "import socket\n"
        "try:\n"
        "    socket.socket()\n"
        "except OSError as e:\n"
        "    assert 'disabled' in str(e)\n"
        "else:\n"
        "    raise SystemExit(3)\n"
    )
    status, tail = run_code(code, timeout_s=20)
    assert status == 0, tail


def test_grade_dispatch_needs_reference_and_known_name() -> None:
    assert grade("number", "7", "7").quality == 1.0
    assert grade("number", "7", None).error is not None
    assert "unknown grader" in (grade("fuzzy", "7", "7").error or "")


def test_resolve_grader_order() -> None:
    assert resolve_grader(PromptItem("1", "q", grader="regex", reference="x")) == "regex"
    assert resolve_grader(PromptItem("1", "q", task="gsm8k", reference="x"), {"gsm8k": "exact"}) == "exact"
    assert resolve_grader(PromptItem("1", "q", tests="assert 1")) == "code"
    assert resolve_grader(PromptItem("1", "q", reference="#### 42")) == "number"
    assert resolve_grader(PromptItem("1", "q", reference="B")) == "choice"
    assert resolve_grader(PromptItem("1", "q", reference="Paris")) == "normalized"
    assert resolve_grader(PromptItem("1", "q")) == "judge"


def test_parse_rating() -> None:
    assert parse_rating("Good. Rating: [[8]]") == 8
    assert parse_rating("[[3]] at first, then Rating: [[9]]") == 9
    assert parse_rating("Rating: 7/10") == 7
    assert parse_rating("Rating: [[11]]") is None
    assert parse_rating("Rating: [[0]]") is None
    assert parse_rating("quite good overall") is None
    assert rating_to_quality(1) == 0.0
    assert rating_to_quality(10) == 1.0
    assert rating_to_quality(4) == pytest.approx(1 / 3)


def test_pairwise_verdicts_and_order_combination() -> None:
    assert parse_pairwise("A is better [[A]]") == "A"
    assert parse_pairwise("[[C]]") == "C"
    assert parse_pairwise("no verdict") is None
    # the model is A in the first order and B in the second
    assert combine_orders("A", "B") == (1.0, True)  # wins both
    assert combine_orders("B", "A") == (0.0, True)  # loses both
    assert combine_orders("C", "C") == (0.5, True)
    assert combine_orders("A", "A") == (0.5, False)  # position bias: first answer always wins
    assert combine_orders("B", "B") == (0.5, False)


def test_judge_prompts_hold_question_answers_and_rubric() -> None:
    p = single_prompt("What is 2+2?", "4", reference="4")
    assert "Rating: [[5]]" in p and "[Question]\nWhat is 2+2?" in p and "Reference Answer" in p
    assert p.rstrip().endswith("[The End of Assistant's Answer]")
    q = pairwise_prompt("Q?", "first", "second")
    assert q.index("first") < q.index("second") and "[[C]]" in q


def test_cost_cap_never_passes_the_cap() -> None:
    cap = CostCap(1.0, spent=0.25)
    assert cap.reserve(0.5)
    assert not cap.reserve(0.3)  # 0.25 + 0.5 + 0.3 > 1
    assert cap.reserve(0.25)  # exactly at the cap is allowed
    cap.settle(0.5, 0.1)
    assert cap.spent == pytest.approx(0.35) and cap.reserved == pytest.approx(0.25)
    assert cap.reserve(0.4)
    assert cap.refused == 1
    assert CostCap(None).reserve(1e9)
