"""#11 item 6: no cross-tenant writes. Feedback on a request id is accepted only from the API key
that made the request (another key gets the same 404 as for an unknown id); request ids are 128
random bits, not a process prefix plus a counter. A real gateway on 127.0.0.1 with two keys."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import FakeServer, StubRouter, loopback_config, run_gateway
from llmroute.gateway.auth import hash_key
from llmroute.gateway.store import open_store

KEY_A = "sk-tenant-a-0123456789abcdef"
KEY_B = "sk-tenant-b-0123456789abcdef"


@pytest.fixture(scope="module")
def tenants(fake_server: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("tenants"))
    cfg["keys"] = [
        {"id": "tenant-a", "key_sha256": hash_key(KEY_A)},
        {"id": "tenant-b", "key_sha256": hash_key(KEY_B)},
    ]
    with run_gateway(cfg, routers={"default": StubRouter()}) as gw:
        yield gw, cfg["store"]["url"]


def _request_id(gw: str, key: str) -> str:
    client = openai.OpenAI(base_url=gw, api_key=key, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="llmroute/auto", messages=[{"role": "user", "content": "hello"}], max_tokens=20
    )
    return raw.headers["x-llmroute-request-id"]


def _feedback(gw: str, key: str, rid: str, quality: float) -> httpx.Response:
    return httpx.post(
        f"{gw}/feedback",
        headers={"authorization": f"Bearer {key}"},
        json={"request_id": rid, "quality": quality},
    )


def test_feedback_only_from_the_key_that_made_the_request(tenants: tuple[Any, str]) -> None:
    gw, store_url = tenants
    rid_a = _request_id(gw, KEY_A)
    rid_b = _request_id(gw, KEY_B)

    r = _feedback(gw, KEY_B, rid_a, 0.0)  # tenant B on tenant A's request
    assert r.status_code == 404, r.text
    unknown = _feedback(gw, KEY_B, "0" * 32, 0.0)
    assert unknown.status_code == 404
    # the refusal does not confirm that the id exists: same answer as an unknown id
    assert r.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"

    assert _feedback(gw, KEY_A, rid_a, 0.9).status_code == 200
    assert _feedback(gw, KEY_B, rid_b, 0.4).status_code == 200
    assert _feedback(gw, KEY_A, rid_b, 0.0).status_code == 404
    r = httpx.post(f"{gw}/feedback", json={"request_id": rid_a, "quality": 0.0})  # no key at all
    assert r.status_code == 401

    gw.app.store.flush_sync()
    with open_store(store_url) as st:
        assert st.get(rid_a)["outcome"] == {"quality": 0.9}  # type: ignore[index]
        assert st.get(rid_b)["outcome"] == {"quality": 0.4}  # type: ignore[index]


def test_store_attach_checks_the_owner(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/t.sqlite") as st:
        st.write({"request_id": "r1", "key_id": "tenant-a", "status": 200})
        st.write({"request_id": "r2", "status": 200})  # made without keys
        assert not st.attach_feedback("r1", {"quality": 0.1}, owner="tenant-b")
        assert st.attach_feedback("r1", {"quality": 0.7}, owner="tenant-a")
        assert not st.attach_feedback("r2", {"quality": 0.1}, owner="tenant-b")
        assert st.attach_feedback("r2", {"quality": 0.5})  # no keys configured: open as before
        assert st.get("r1")["outcome"] == {"quality": 0.7}  # type: ignore[index]


def test_request_ids_are_random_128_bit(tenants: tuple[Any, str]) -> None:
    gw, _ = tenants
    ids = [_request_id(gw, KEY_A) for _ in range(8)]
    ids += [httpx.post(f"{gw}/route", headers={"authorization": f"Bearer {KEY_A}"},
                       json={"model": "llmroute/auto", "prompt": "hi"}).json()["id"] for _ in range(4)]  # fmt: skip
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    # no shared per-process prefix and no counter: any 12 leading or trailing hex digits differ
    assert len({i[:12] for i in ids}) == len(ids)
    assert len({i[-12:] for i in ids}) == len(ids)
    assert len({gw.app.new_id()[:16] for _ in range(1000)}) == 1000
