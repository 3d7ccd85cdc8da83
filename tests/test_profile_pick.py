"""Profiles picked in proportion to the tasks (llmroute.profile.prompts.select_diverse)."""

from __future__ import annotations

from llmroute.profile.prompts import PromptItem, select_diverse, task_quotas

_TEMPLATE = (
    "Read the passage and answer with the letter of the right option. Passage: the committee met "
    "on Tuesday to review the annual budget and approved the proposal. Question {i}: what did the "
    "committee approve? A) the budget B) the proposal C) the minutes D) nothing"
)
_CODE = [
    "Write a Python function that reverses a linked list in place.",
    "Implement binary search over a sorted array and return the index or -1.",
    "Parse an ISO 8601 timestamp in Rust without external crates.",
    "Write a SQL query listing customers with more than three orders last month.",
    "Explain and fix the race condition in this Go worker pool.",
    "Write a bash one-liner counting unique IP addresses in an nginx access log.",
    "Implement an LRU cache with O(1) get and put in Java.",
    "Write a regular expression matching valid IPv4 addresses.",
    "Convert this recursive Fibonacci in JavaScript into an iterative one.",
    "Write a C function computing the CRC32 of a buffer.",
]


def test_task_quotas_follow_the_task_sizes() -> None:
    """Largest remainder in proportion to the counts, summing to n; a task left at 0 gets one
    from the largest quota while n allows."""
    tasks = ["mc"] * 47 + ["wino"] * 40 + ["code"] * 13
    assert task_quotas(tasks, 100) == {"mc": 47, "wino": 40, "code": 13}
    assert task_quotas(tasks, 10) == {"mc": 5, "wino": 4, "code": 1}
    assert task_quotas(["a"] * 98 + ["b"] * 2, 10) == {"a": 9, "b": 1}
    assert task_quotas(["a"] * 5 + ["b"] + ["c"], 2) == {"a": 1, "b": 1, "c": 0}
    for n in (1, 3, 7, 50):
        assert sum(task_quotas(tasks, n).values()) == n


def test_select_diverse_is_stratified_by_task() -> None:
    """90 near-identical templated prompts and 10 varied code prompts: k-means alone would spend
    its centres on the varied ones; with tasks the 10 picks follow the tasks' shares (9 + 1).
    Without task labels the plain k-means pick is kept."""
    items = [PromptItem(prompt_id=f"mc{i}", prompt=_TEMPLATE.format(i=i), task="mc") for i in range(90)]
    items += [PromptItem(prompt_id=f"code{i}", prompt=p, task="code") for i, p in enumerate(_CODE)]
    picked = select_diverse(items, 10)
    assert sorted(it.task for it in picked) == ["code"] + ["mc"] * 9
    assert [it.prompt_id for it in picked] == [it.prompt_id for it in items if it in picked]  # input order
    plain = select_diverse([PromptItem(prompt_id=it.prompt_id, prompt=it.prompt) for it in items], 10)
    assert len(plain) == 10
    assert sum(it.prompt_id.startswith("code") for it in plain) > 1
