"""#11 item 9: the served `/openapi.json` describes what the server accepts.

A real gateway (StubRouter; two OpenAI-compatible models and an Anthropic one, on the fake
upstream) on 127.0.0.1, fuzzed by the schemathesis CLI from its own `/openapi.json`: every
operation, positive and negative modes, every check (no 5xx, status codes, content types, headers
and bodies as documented, valid data accepted, invalid data rejected), the examples, coverage,
fuzzing and stateful phases (a completion's request id -> /v1/feedback), bounded by a fixed number
of examples per operation and a seed (~1 min on 2 cores; LLMROUTE_FUZZ_EXAMPLES and
LLMROUTE_FUZZ_SEED run it longer or elsewhere: seed 3 with 150 examples, 3,271 cases, passes).

`positive_data_acceptance` also takes 422: a valid request whose per-request policy
(`llmroute.on_unmet: reject`) no candidate meets is refused as documented, not as malformed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import GatewayHandle, StubRouter, anthropic_model, loopback_config, run_gateway
from llmroute.gateway.app import openapi_document

#: examples per operation and mode; the whole run takes well under a minute on 2 cores
MAX_EXAMPLES = int(os.environ.get("LLMROUTE_FUZZ_EXAMPLES", "40"))
SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "422", "429"]
"""


ANTHROPIC_KEY_ENV = "LLMROUTE_TEST_FUZZ_ANTHROPIC_KEY"


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    """Two OpenAI-compatible models and an Anthropic one (`claude-fake`: chat requests routed to it
    go through the OpenAI -> Anthropic translation), all on the fake upstream."""
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("openapi-fuzz"))
    cfg["models"].append(anthropic_model(fake_server.url, ANTHROPIC_KEY_ENV, timeout_s=5))
    mp = pytest.MonkeyPatch()
    mp.setenv(ANTHROPIC_KEY_ENV, "sk-ant-test")
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
            yield url
    finally:
        mp.undo()


def test_served_document_is_generated_from_the_schemas(gw: GatewayHandle) -> None:
    doc = httpx.get(gw.root + "/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    chat = schemas["ChatRequest"]
    assert chat["required"] == ["model", "messages"] and "additionalProperties" not in chat
    assert schemas["RequestPolicy"]["additionalProperties"] is False
    assert chat["properties"]["n"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 128}
    # the served model field lists what this gateway routes
    names = chat["properties"]["model"]["anyOf"][0]["enum"]
    assert set(names) == {"llmroute/auto", "fake-strong", "fake-weak", "claude-fake"}
    post = doc["paths"]["/v1/messages"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MessagesRequest"
    }
    assert post["responses"]["4XX"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnthropicError"
    }
    # without a config: the same operations and schemas
    assert openapi_document()["paths"].keys() == doc["paths"].keys()


def test_schemathesis_finds_no_server_errors_and_no_schema_violations(
    gw: GatewayHandle, fake_server: Any, tmp_path: Path
) -> None:
    upstream_before = sum(fake_server.state.counts.values())
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    junit = tmp_path / "junit.xml"
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "run",
        f"{gw.root}/openapi.json",
        "--checks",
        "all",
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        os.environ.get("LLMROUTE_FUZZ_SEED", "11"),
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--request-timeout",
        "20",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
    ]
    env = {**os.environ, "NO_COLOR": "1"}
    # The timeout only guards against a hang: a loaded CI box can take several times the usual ~90 s.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)
    report = out.stdout[-8000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    assert "Test cases:" in out.stdout and " passed" in out.stdout, report
    # generated valid chat / messages requests were accepted and reached the upstream
    # (before the schemas, every generated POST was a 400)
    assert sum(fake_server.state.counts.values()) - upstream_before >= 20, report
    # the stateful phase followed the documented link: feedback on completions' request ids
    url = gw.app.config.store.url
    deadline = time.monotonic() + 10  # the trace writer commits every 50 ms here
    rated = 0
    while not rated and time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            rated = db.execute("SELECT COUNT(*) FROM traces WHERE outcome IS NOT NULL").fetchone()[0]
        time.sleep(0.1)
    assert rated > 0, report
