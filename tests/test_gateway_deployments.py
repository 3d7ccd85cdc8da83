"""#16 item 2: several deployments behind one model name (`models[].deployments`): weighted,
least-busy and latency choice, a breaker and a limit per deployment, failover between them; two
fake upstreams stand for two regions."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from conftest import FakeServer, StubRouter, run_gateway, start_fake_server
from llmroute.gateway.backends.balanced import BalancedBackend, Deployment
from llmroute.gateway.config import ConfigError, parse_config
from llmroute.gateway.reliability import CircuitBreaker

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeServer, FakeServer]]:
    with start_fake_server() as a, start_fake_server() as b:
        yield a, b


def _config(
    a: FakeServer, b: FakeServer, tmp: Any, balance: str, wa: float = 1, wb: float = 1
) -> dict[str, Any]:
    return {
        "server": {"retries": 0, "breaker_failures": 3, "breaker_cooldown_s": 600},
        "models": [
            {
                "name": "gpt",
                "upstream_model": "gpt-up",
                "input_per_mtok": 1,
                "output_per_mtok": 2,
                "timeout_s": 30,
                "balance": balance,
                "deployments": [
                    {"name": "east", "base_url": a.base_url, "weight": wa},
                    {"name": "west", "base_url": b.base_url, "weight": wb},
                ],
            }
        ],
        "store": {"url": f"sqlite:///{tmp}/t.sqlite"},
    }


def _counts(a: FakeServer, b: FakeServer) -> tuple[int, int]:
    return a.state.counts.get("gpt-up", 0), b.state.counts.get("gpt-up", 0)


def _reset(a: FakeServer, b: FakeServer) -> None:
    a.clear()
    b.clear()


def test_weighted_split_and_failover_with_a_breaker_per_deployment(
    fakes: tuple[FakeServer, FakeServer], tmp_path: Any
) -> None:
    a, b = fakes
    _reset(a, b)
    with run_gateway(
        _config(a, b, tmp_path, "weighted", wa=3, wb=1), routers={"default": StubRouter()}
    ) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
        for _ in range(100):
            c.chat.completions.create(model="gpt", messages=MSG)  # type: ignore[arg-type]
        na, nb = _counts(a, b)
        assert na + nb == 100 and na > nb > 0  # 3:1 by weight (P(na <= nb) < 1e-6)
        # east fails: every request is still answered (by west); east's breaker opens after 3
        _reset(a, b)
        a.set_fault("gpt-up", "500")
        for _ in range(30):
            r = c.chat.completions.create(model="gpt", messages=MSG)  # type: ignore[arg-type]
            assert r.choices[0].message.content
        chunks = list(c.chat.completions.create(model="gpt", messages=MSG, stream=True))  # type: ignore[arg-type]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        na, nb = _counts(a, b)
        assert na == 3 and nb == 31  # east tried until its breaker opened, then skipped
        # embeddings and completions go to the deployments too
        assert c.embeddings.create(model="gpt", input="x").data
        assert c.completions.create(model="gpt", prompt="x").choices
        assert _counts(a, b)[0] == 3


def test_least_busy_sends_the_next_request_elsewhere(
    fakes: tuple[FakeServer, FakeServer], tmp_path: Any
) -> None:
    a, b = fakes
    _reset(a, b)
    with run_gateway(_config(a, b, tmp_path, "least_busy"), routers={"default": StubRouter()}) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
        a.set_fault("gpt-up", "slow", count=1, delay=8.0)  # east holds the first request
        t = threading.Thread(target=lambda: c.chat.completions.create(model="gpt", messages=MSG))  # type: ignore[arg-type]
        t.start()
        deadline = time.monotonic() + 30
        while _counts(a, b)[0] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _counts(a, b) == (1, 0)  # ties go to the first deployment
        c.chat.completions.create(model="gpt", messages=MSG)  # type: ignore[arg-type]
        assert _counts(a, b) == (1, 1)  # east is busy: west answers
        t.join(60)


def _member(name: str, weight: float = 1.0, limit: int = 8) -> Deployment:
    class Stub:
        cfg = type("Cfg", (), {"name": name})()

    return Deployment(Stub(), weight, limit, CircuitBreaker(3, 600))  # type: ignore[arg-type]


def test_order_by_latency_weight_limit_and_breaker() -> None:
    cfg = parse_config({"models": [{"name": "m", "deployments": [{}], "balance": "latency"}]}).models[0]
    x, y, z = _member("x"), _member("y"), _member("z")
    bal = BalancedBackend(cfg, [x, y, z])
    x.observe(0.5)
    y.observe(0.1)
    assert [d.name for d in bal.order()] == ["z", "y", "x"]  # unmeasured first, then fastest
    z.observe(1.0)
    z.observe(0.0)  # an exponential average: 1.0 + 0.3 * (0 - 1.0)
    assert z.latency_s == pytest.approx(0.7)
    assert [d.name for d in bal.order()] == ["y", "x", "z"]
    # a deployment at its limit or with an open breaker goes last
    y.in_flight = y.limit
    assert [d.name for d in bal.order()][-1] == "y"
    y.in_flight = 0
    for _ in range(3):
        x.breaker.failure()
    assert [d.name for d in bal.order()] == ["y", "z", "x"]
    # weighted: the first pick follows the weights (seeded)
    cfg.balance = "weighted"
    heavy, light = _member("heavy", 9.0), _member("light", 1.0)
    w = BalancedBackend(cfg, [light, heavy], rng=random.Random(7))
    firsts = [w.order()[0].name for _ in range(1000)]
    assert 850 < firsts.count("heavy") < 950


def test_deployment_config() -> None:
    m = parse_config(
        {
            "models": [
                {
                    "name": "gpt4o",
                    "provider": "azure",
                    "base_url": "https://east.openai.azure.com",
                    "api_key_env": "EAST_KEY",
                    "deployments": [
                        {},
                        {
                            "base_url": "https://west.openai.azure.com",
                            "deployment": "gpt4o-w",
                            "api_key_env": "WEST_KEY",
                        },
                    ],
                }
            ]
        }
    ).models[0]
    east, west = m.deployment_configs()
    assert east.name == "gpt4o#0" and east.api_key_env == "EAST_KEY"
    assert east.base_url == "https://east.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21"
    assert west.base_url == "https://west.openai.azure.com/openai/deployments/gpt4o-w?api-version=2024-10-21"
    assert west.api_key_env == "WEST_KEY" and west.upstream == "gpt4o"
    with pytest.raises(ConfigError, match=r"deployments\[0\]"):
        parse_config({"models": [{"name": "m", "deployments": [{"base_url": "ftp://x"}]}]})
    with pytest.raises(ConfigError, match="OpenAI-compatible"):
        parse_config({"models": [{"name": "m", "provider": "anthropic", "deployments": [{}]}]})
