"""benchmarks/hardening.py's own logic: the independent per-request bound is at least the gateway's
hold, the bad-input cases are what they claim (depth, distinct bodies), and the report renders every
run with its verdict (from a small hand-made result; the full run starts real servers for minutes)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from llmroute.gateway.auth import max_request_cost
from llmroute.gateway.tokens import TokenCounter, estimate_input_tokens

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def hardening() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("hardening")
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("n", [1, 8])
@pytest.mark.parametrize("script", ["ascii", "cjk", "emoji", "code"])
def test_independent_bound_covers_the_gateways_hold(hardening: ModuleType, script: str, n: int) -> None:
    messages = [{"role": "user", "content": hardening.PROMPTS[script]}]
    body = {"messages": messages, "max_tokens": hardening.MAX_TOKENS, "n": n}
    for model in ("fake-strong", "gpt-4o"):  # byte bound and tokenizer bound
        tokens = estimate_input_tokens(body, TokenCounter.for_model("openai", model))
        hold = max_request_cost(10.0, 30.0, tokens, hardening.MAX_TOKENS, n)
        assert hold <= hardening.one_request_max(messages, n)
    assert hardening.one_request_max(messages, 8) > hardening.one_request_max(messages, 1)


def test_deep_json_cases_nest_as_deep_as_named(hardening: ModuleType) -> None:
    cases = hardening.json_cases()
    deep = [c for c in cases if c[0] == "deep JSON"]
    assert len(deep) == 18
    for _, name, _, body in deep:
        levels = int(name.split()[0])
        depth = best = 0
        for ch in body.decode():
            depth += ch in "[{"
            depth -= ch in "]}"
            best = max(best, depth)
        assert best >= levels, name
    requests = [(c[2], c[3]) for c in cases]
    assert len(set(requests)) == len(requests)  # every named case is a different request


def test_mutations_hit_every_field_with_every_wrong_value(hardening: ModuleType) -> None:
    muts = hardening.mutation_cases()
    fields = {(p, f) for p, f, _ in muts}
    assert len(muts) == len(fields) * len(hardening.WRONG)
    assert ("/v1/messages", "messages.2.content.0.content") in fields  # tool_result.content
    assert ("/v1/chat/completions", "llmroute.on_unmet") in fields


def _result() -> dict[str, Any]:
    run = {"workers": 2, "script": "cjk", "n": 8, "mode": "disconnect", "admitted_per_wave": [2, 0]}
    return {
        "date": "2026-12-07 10:00 UTC",
        "seconds": 1.0,
        "machine": {"cpus": 2, "loadavg_at_start": [1.0, 1.0, 1.0]},
        "budget": [
            {**run, "spend": 0.11, "budget": 0.1, "bound": 0.2, "trace_cost": 0.11, "pass": True},
            {
                **run,
                "mode": "plain",
                "spend": 0.25,
                "budget": 0.1,
                "bound": 0.2,
                "trace_cost": 0.25,
                "pass": False,
            },
        ],
        "kill": [
            {
                "workers": 1,
                "acknowledged": 1003,
                "acknowledged_cost": 0.005,
                "ledger_spend_after_restart": 0.005,
                "spend_lost_share": 0.0,
                "reserved_after_restart": 0.0,
                "trace_rows_200": 1000,
                "trace_rows_lost": 3,
                "window_rows": 4,
                "workers_dirs_left_after_restart": [],
                "spend_pass": True,
                "traces_pass": True,
            }
        ],
        "bad": {
            "named": [
                {"group": "deep JSON", "case": "65 levels", "path": "/v1/chat/completions", "status": 400}
            ],
            "mutations": {"/v1/messages": {"400": 3, "200": 1}},
            "inputs": 5,
            "responses_5xx": 0,
            "closed_without_status": 0,
            "healthz_after": 200,
            "tracebacks_in_log": 0,
        },
    }


def test_report_shows_each_run_and_its_verdict(hardening: ModuleType) -> None:
    md = hardening.markdown(json.loads(json.dumps(_result())))
    assert "1 of 2 runs within the bound" in md
    assert "| 2 | cjk | 8 | disconnect | 2 0 |" in md and "**no**" in md
    assert "| 1 | 1003 |" in md
    assert "5 inputs, 0 answered 5xx" in md and "3 x 400" in md
