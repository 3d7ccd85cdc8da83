"""Issue 15 acceptance: with `llmroute serve --workers 2`, a key created through the admin API works
without a restart, and a revoked key is refused on the next request, on every worker.

Which worker accepts a connection is the kernel's choice, so requests go out on new connections
until each worker's own metrics snapshot (`metrics-<pid>.json` in the workers' shared folder)
shows that it answered one; every answer must be the expected one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from conftest import loopback_config
from llmroute.gateway.auth import hash_key
from llmroute.gateway.metrics import _decode
from test_gateway_workers import _serve_workers

MASTER = "sk-admin-workers-master-0123456789"


def _per_worker(shared: Path, count: Callable[[dict[str, Any]], float]) -> dict[str, float]:
    """{snapshot file: count(its decoded counters)} for every worker that published one."""
    import orjson

    out = {}
    for p in shared.glob("metrics-*.json"):
        try:
            out[p.name] = count(_decode(orjson.loads(p.read_bytes())))
        except (OSError, ValueError):  # being replaced right now: read it next time
            continue
    return out


def _ok(state: dict[str, Any]) -> float:
    return sum(n for (_m, _a, status), n in state["requests"].items() if status == "200")


def _refused(state: dict[str, Any]) -> float:
    return sum(n for key, n in state["rejections"].items() if key[0] == "401")


def _until_both_workers(
    root: str, key: str, shared: Path, count: Callable[[dict[str, Any]], float], want: str
) -> int:
    """Chat requests with `key`, each on a new connection, until both workers' snapshots count one
    more than before; every answer must be `want` ('ok' or an HTTP status). Returns how many."""
    before = _per_worker(shared, count)
    client = openai.OpenAI(
        base_url=f"{root}/v1",
        api_key=key,
        max_retries=0,
        timeout=30,
        http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)),  # new connection each
    )
    n = 0
    end = time.monotonic() + 90
    try:
        while time.monotonic() < end:
            try:
                client.chat.completions.create(
                    model="llmroute/auto", messages=[{"role": "user", "content": "hi"}], max_tokens=20
                )
                got = "ok"
            except openai.APIStatusError as e:
                got = str(e.status_code)
            n += 1
            assert got == want, f"request {n}: {got}, expected {want}"
            now = _per_worker(shared, count)
            if len(now) == 2 and all(v > before.get(name, 0) for name, v in now.items()):
                return n
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError(f"not both workers answered within the time: {_per_worker(shared, count)}")


def test_new_key_works_and_revoked_key_refused_on_every_worker(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMROUTE_TEST_ADMIN_KEY", MASTER)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["models"][0]["router_model"] = "gpt-4-1106-preview"  # the shipped router's columns
    cfg["models"][1]["router_model"] = "mistralai/mistral-7b-chat"
    cfg["admin"] = {"key_env": "LLMROUTE_TEST_ADMIN_KEY"}
    cfg["keys"] = [{"id": "yaml-team", "key_sha256": hash_key("sk-yaml-workers-0123456789")}]
    admin = {"authorization": f"Bearer {MASTER}"}
    with _serve_workers(cfg, tmp_path) as root:
        (shared,) = tmp_path.glob("llmroute-workers-*")
        r = httpx.post(f"{root}/admin/v1/keys", json={"id": "live"}, headers=admin, timeout=30)
        assert r.status_code == 201, r.text
        secret = r.json()["key"]
        assert _until_both_workers(root, secret, shared, _ok, "ok") >= 2

        r = httpx.delete(f"{root}/admin/v1/keys/live", headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        assert _until_both_workers(root, secret, shared, _refused, "401") >= 2

        # the worker that did not take the admin calls lists the same keys
        for _ in range(6):
            r = httpx.get(f"{root}/admin/v1/keys", headers={**admin, "connection": "close"}, timeout=30)
            assert {k["id"]: k["active"] for k in r.json()["data"]} == {"yaml-team": True, "live": False}

        # a key added to the config file works on every worker after one reload
        added = "sk-yaml-added-workers-0123456789"
        cfg["keys"].append({"id": "yaml-added", "key_sha256": hash_key(added)})
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        r = httpx.post(f"{root}/admin/v1/reload", headers=admin, timeout=30)
        assert r.status_code == 200 and r.json()["config_keys"] == 2, r.text
        assert _until_both_workers(root, added, shared, _ok, "ok") >= 2


def test_config_reload_applies_on_every_worker(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alias's candidates, a rule and a model's upstream URL changed in the file: after one
    reload the next request on every worker of `--workers 2` uses them."""
    from conftest import start_fake_server

    monkeypatch.setenv("LLMROUTE_TEST_ADMIN_KEY", MASTER)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["models"][0]["router_model"] = "gpt-4-1106-preview"  # the shipped router's columns
    cfg["models"][1]["router_model"] = "mistralai/mistral-7b-chat"
    cfg["aliases"]["llmroute/auto"]["tradeoff"] = 0  # quality only: fake-strong
    cfg["admin"] = {"key_env": "LLMROUTE_TEST_ADMIN_KEY"}
    cfg["signals"] = {"zebra": {"type": "keywords", "keywords": ["zebra"]}}
    admin = {"authorization": f"Bearer {MASTER}"}

    def served_by(model: str) -> Callable[[dict[str, Any]], float]:
        """Answers from `model`, or with model '' the requests refused with a 400 (a rule's block)."""
        want = "200" if model else "400"
        return lambda st: sum(
            n for (m, _a, status), n in st["requests"].items() if m == model and status == want
        )

    def until_both(root: str, shared: Path, model: str, text: str = "hi") -> int:
        """Requests on new connections until both workers answered one more from `model`; every
        answer must come from `model` ('': every request refused with a 400)."""
        before = _per_worker(shared, served_by(model))
        client = openai.OpenAI(
            base_url=f"{root}/v1",
            api_key="unused",
            max_retries=0,
            timeout=60,
            http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)),
        )
        n = 0
        end = time.monotonic() + 120
        try:
            while time.monotonic() < end:
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="llmroute/auto", messages=[{"role": "user", "content": text}], max_tokens=20
                    )
                    got = raw.headers["x-llmroute-model"]
                except openai.BadRequestError:
                    got = ""
                n += 1
                assert got == model, f"request {n}: {got!r}"
                now = _per_worker(shared, served_by(model))
                if len(now) == 2 and all(v > before.get(name, 0) for name, v in now.items()):
                    return n
                time.sleep(0.05)
        finally:
            client.close()
        raise AssertionError(f"not both workers answered within the time: {now}")

    with _serve_workers(cfg, tmp_path) as root, start_fake_server() as other:
        (shared,) = tmp_path.glob("llmroute-workers-*")
        assert until_both(root, shared, "fake-strong") >= 2
        assert until_both(root, shared, "fake-strong", "a zebra") >= 2  # no rule yet
        weak_before = fake_server.state.counts.get("fake-weak", 0)  # the fixture serves the module
        cfg["aliases"]["llmroute/auto"]["candidates"] = ["fake-weak"]
        cfg["models"][1]["base_url"] = other.base_url
        cfg["rules"] = [
            {"name": "no-zebras", "when": {"signal": "zebra"}, "action": {"type": "block", "status": 400}}
        ]
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        r = httpx.post(f"{root}/admin/v1/reload", headers=admin, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["models"]["changed"] == ["fake-weak"] and r.json()["runtime_rebuilt"]
        assert r.json()["rules"]["added"] == ["no-zebras"]
        n = until_both(root, shared, "fake-weak")
        assert n >= 2 and other.state.counts.get("fake-weak", 0) == n
        assert fake_server.state.counts.get("fake-weak", 0) == weak_before
        assert until_both(root, shared, "", "a zebra") >= 2
