"""What the Redis state test modules share (`test_state_redis*.py`): the skip when `redis-server`
is not installed, the API keys and prompt of the tests, the fake models' prices, and small helpers
on a `RedisProc` (a `RedisState` on it, an empty database, a key's books as Redis has them). The
`redis_proc` fixture itself is in conftest.py (one server per test module).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conftest import RedisProc
from llmroute.gateway.state import RedisState, redis_server_binary

needs_redis = pytest.mark.skipif(
    redis_server_binary() is None,
    reason="redis-server is not installed (Debian: apt-get install redis-server; `make test` does it)",
)

KEY_A = "sk-state-team-a-0123456789"
KEY_B = "sk-state-team-b-0123456789"
KEY_C = "sk-state-team-c-0123456789"
MESSAGES = [{"role": "user", "content": "Why is the sky blue? Answer in one short paragraph, please."}]

BUDGET_A = 0.05
PRICE_IN, PRICE_OUT = 10.0, 30.0  # fake-strong, USD per 1M tokens


def _state(rp: RedisProc, **kw: Any) -> RedisState:
    return RedisState(rp.url, **kw)


def _flush(rp: RedisProc) -> None:
    st = _state(rp)
    st.client.flushdb()
    st.close()


def _spent(rp: RedisProc, kid: str) -> tuple[float, float]:
    """(day spent, day reserved) of key `kid` as Redis has it."""
    st = _state(rp)
    v = st.client.hmget(st.key("b", kid), "ds", "dr")
    st.close()
    return float(v[0] or 0), float(v[1] or 0)


def spend_rest(roots: list[str], key: str = KEY_A) -> tuple[float, list[str], int]:
    """After a burst (whose holds were for the worst case): spend the rest of `key`'s budget one
    request at a time on each replica in turn, until 6 in a row are refused for quota (every
    refusal must be that). Returns (the answered requests' cost from their usage, every request's
    id, the refusals in a row it ended with)."""
    acknowledged, ids = 0.0, []
    refused, i = 0, 0
    while refused < 6 and i < 300:
        r = httpx.post(
            f"{roots[i % len(roots)]}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "fake-strong", "messages": MESSAGES, "max_tokens": 50},
            timeout=60,
        )
        i += 1
        ids.append(r.headers["x-llmroute-request-id"])
        if r.status_code == 200:
            u = r.json()["usage"]
            acknowledged += (u["prompt_tokens"] * PRICE_IN + u["completion_tokens"] * PRICE_OUT) / 1e6
            refused = 0
        else:
            assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
            refused += 1
    return acknowledged, ids, refused
