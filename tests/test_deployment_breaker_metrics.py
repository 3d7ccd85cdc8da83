"""#16: the circuit breaker of each deployment of a model (`models[].deployments`) is in /metrics:
`llmroute_deployment_breaker_state{model,deployment}` (0 closed, 1 half-open, 2 open; the most
open over worker processes) and `llmroute_deployment_breaker_transitions_total{model,deployment,state}`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FakeServer, StubRouter, run_gateway, start_fake_server
from llmroute.gateway.backends.balanced import BalancedBackend, Deployment
from llmroute.gateway.config import parse_config
from llmroute.gateway.metrics import GatewayMetrics
from llmroute.gateway.reliability import CircuitBreaker, Executor

MSG = [{"role": "user", "content": "hi"}]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if "deployment" in s.name
    }


def _state(samples: dict[Any, float], dep: str) -> float | None:
    return samples.get(("llmroute_deployment_breaker_state", (("deployment", dep), ("model", "gpt"))))


def _transitions(samples: dict[Any, float], dep: str, state: str) -> float | None:
    key = (("deployment", dep), ("model", "gpt"), ("state", state))
    return samples.get(("llmroute_deployment_breaker_transitions_total", key))


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_deployment_breaker_changes_reach_the_metrics() -> None:
    """open after `failures`, half-open after the cool-down, closed on a probe's success: each
    change is in the gauge and counted once; the other deployment's breaker is untouched."""
    cfg = parse_config({"models": [{"name": "gpt", "deployments": [{"name": "east"}, {"name": "west"}]}]})
    model = cfg.models[0]
    clock = _Clock()

    def member(name: str) -> Deployment:
        stub = type("Stub", (), {"cfg": type("Cfg", (), {"name": name, "max_concurrency": 8})()})()
        return Deployment(stub, 1.0, 8, CircuitBreaker(3, 60, clock=clock))  # type: ignore[arg-type]

    east, west = member("east"), member("west")
    balanced = BalancedBackend(model, [east, west])
    metrics = GatewayMetrics()
    Executor({"gpt": balanced}, on_deployment_breaker=metrics.set_deployment_breaker)  # type: ignore[dict-item]

    def now() -> dict[Any, float]:
        return _samples(metrics.render()[0].decode())

    east.breaker.failure()
    east.breaker.failure()
    assert _state(now(), "east") is None  # still closed, nothing changed yet
    east.breaker.failure()
    assert _state(now(), "east") == 2.0 and _transitions(now(), "east", "open") == 1.0
    east.breaker.failure()  # already open: no new transition
    assert _transitions(now(), "east", "open") == 1.0
    assert not east.breaker.allow()  # cooling down
    clock.t += 61
    assert east.breaker.allow()  # the probe
    assert _state(now(), "east") == 1.0 and _transitions(now(), "east", "half_open") == 1.0
    east.breaker.success()
    s = now()
    assert _state(s, "east") == 0.0 and _transitions(s, "east", "closed") == 1.0
    west.breaker.success()  # closed stays closed: no transition
    assert _state(now(), "west") is None


def test_deployment_breaker_is_the_most_open_over_workers(tmp_path: Path) -> None:
    a = GatewayMetrics(shared_dir=tmp_path, publish_interval_s=3600)
    b = GatewayMetrics(shared_dir=tmp_path, publish_interval_s=3600)
    b._pid += 1  # a second worker's snapshot file in the same folder
    try:
        a.set_deployment_breaker("gpt", "east", "open")
        b.set_deployment_breaker("gpt", "east", "closed")
        b.set_deployment_breaker("gpt", "east", "open")
        b.set_deployment_breaker("gpt", "east", "closed")
        a.publish()
        s = _samples(b.render()[0].decode())
        assert _state(s, "east") == 2.0  # open at a, closed at b: open
        assert _transitions(s, "east", "open") == 2.0  # summed: once at each
        assert _transitions(s, "east", "closed") == 1.0
    finally:
        a.close()
        b.close()


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeServer, FakeServer]]:
    with start_fake_server() as a, start_fake_server() as b:
        yield a, b


def test_metrics_endpoint_shows_a_failing_deployments_open_breaker(
    fakes: tuple[FakeServer, FakeServer], tmp_path: Any
) -> None:
    a, b = fakes
    a.clear()
    b.clear()
    cfg = {
        "server": {"retries": 0, "breaker_failures": 3, "breaker_cooldown_s": 600},
        "models": [
            {
                "name": "gpt",
                "upstream_model": "gpt-up",
                "timeout_s": 30,
                "balance": "least_busy",
                "deployments": [
                    {"name": "east", "base_url": a.base_url},
                    {"name": "west", "base_url": b.base_url},
                ],
            }
        ],
        "store": {"url": f"sqlite:///{tmp_path}/t.sqlite"},
    }
    a.set_fault("gpt-up", "500")
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
        for _ in range(5):  # east first (ties: the first deployment) until its breaker opens
            assert c.chat.completions.create(model="gpt", messages=MSG).choices  # type: ignore[arg-type]
        text = httpx.get(url.root + "/metrics", timeout=30).text
    s = _samples(text)
    assert _state(s, "east") == 2.0 and _transitions(s, "east", "open") == 1.0
    assert _state(s, "west") is None  # never changed: closed
