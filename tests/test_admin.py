"""Admin API (issue 15): the master-key check, keys created / listed / re-budgeted / revoked without
a restart (stored hashed), hot reload of the config file (validated first), the masked config view
and the audit log; a real gateway on 127.0.0.1, the official openai client for the data plane and
httpx for the admin calls. The `--workers 2` acceptance test is in test_admin_workers.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from conftest import StubRouter, loopback_config, run_gateway
from llmroute.gateway.admin import BIND_HOST_ENV, AdminAuth, check_admin, is_loopback, merge_keys
from llmroute.gateway.auth import ApiKey, Authenticator, GatewayError, hash_key
from llmroute.gateway.keystore import KeyGeneration
from llmroute.gateway.ledger import SharedLedger

MASTER = "sk-admin-master-0123456789"
YAML_KEY = "sk-yaml-team-0123456789"


def _scope(
    headers: dict[str, str] | None = None, client: str = "127.0.0.1", server: str = "127.0.0.1"
) -> dict:
    return {
        "type": "http",
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (client, 50000),
        "server": (server, 8080),
    }


# ---- the master-key check -------------------------------------------------------------------------


def test_admin_key_checked_by_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BIND_HOST_ENV, raising=False)
    auth = AdminAuth(hash_key(MASTER))
    assert auth.check(_scope({"authorization": f"Bearer {MASTER}"}, client="10.1.2.3")) == "key"
    assert auth.check(_scope({"x-api-key": MASTER})) == "key"
    assert auth.check(_scope(), presented=MASTER) == "key"  # e.g. from a cookie
    for headers in ({}, {"authorization": f"Bearer {MASTER}x"}, {"x-api-key": YAML_KEY}):
        with pytest.raises(GatewayError) as e:
            auth.check(_scope(headers))
        assert e.value.status == 401 and e.value.code == "invalid_admin_key"
        assert MASTER not in e.value.message
    # a configured key wins over demo mode: loopback without the key is still refused
    with pytest.raises(GatewayError) as e:
        AdminAuth(hash_key(MASTER), demo=True).check(_scope())
    assert e.value.status == 401


def test_admin_off_and_demo_only_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BIND_HOST_ENV, raising=False)
    with pytest.raises(GatewayError) as e:
        AdminAuth(None).check(_scope())
    assert e.value.status == 403 and e.value.code == "admin_disabled"
    demo = AdminAuth(None, demo=True)
    assert demo.check(_scope()) == "demo"
    assert demo.check(_scope(client="::1", server="::1")) == "demo"
    for scope in (_scope(client="192.168.1.5"), _scope(server="0.0.0.0"), _scope(server="10.0.0.1")):
        with pytest.raises(GatewayError) as e:
            demo.check(scope)
        assert e.value.status == 403 and e.value.code == "admin_demo_not_loopback"
    # `llmroute serve --host 0.0.0.0` says so in LLMROUTE_BIND_HOST: a loopback connection is not enough
    monkeypatch.setenv(BIND_HOST_ENV, "0.0.0.0")
    with pytest.raises(GatewayError):
        demo.check(_scope())
    monkeypatch.setenv(BIND_HOST_ENV, "127.0.0.1")
    assert demo.check(_scope()) == "demo"
    assert AdminAuth(None, demo=True, bind_host="0.0.0.0").enabled
    with pytest.raises(GatewayError):
        AdminAuth(None, demo=True, bind_host="0.0.0.0").check(_scope())


def test_demo_mode_refuses_rebound_hosts_and_cross_site_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page in the admin's browser must not use keyless demo mode: a DNS-rebound name reaches the
    loopback socket with its own Host, and a cross-site form posts with its Origin."""
    monkeypatch.delenv(BIND_HOST_ENV, raising=False)
    demo = AdminAuth(None, demo=True)
    for headers in (
        {"host": "127.0.0.1:8080"},
        {"host": "localhost"},
        {"host": "[::1]:8080", "origin": "http://[::1]:8080"},
        {"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080"},
        {"host": "localhost:8080", "origin": "http://localhost:3000"},
    ):
        assert demo.check(_scope(headers)) == "demo", headers
    for headers in (
        {"host": "rebound.example.com:8080"},
        {"host": "rebound.example.com"},
        {"host": "127.0.0.1:8080", "origin": "https://evil.example.com"},
        {"host": "127.0.0.1:8080", "origin": "null"},
        {"host": "127.0.0.1:8080", "origin": "http://[bad"},
    ):
        with pytest.raises(GatewayError) as e:
            demo.check(_scope(headers))
        assert e.value.status == 403 and e.value.code == "admin_demo_not_loopback", headers
    # the master key is not a cookie: a request carrying it is not refused for its Host or Origin
    keyed = AdminAuth(hash_key(MASTER), demo=True)
    assert keyed.check(_scope({"host": "gw.example.com", "origin": "https://x.example", "x-api-key": MASTER}))


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.1") and is_loopback("::1")
    assert is_loopback("localhost") and is_loopback("[::1]")
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", "", None):
        assert not is_loopback(host)


def test_admin_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmroute.gateway.config import AdminConfig

    monkeypatch.setenv("T_ADMIN_KEY", MASTER)
    assert AdminAuth.from_config(AdminConfig(key_env="T_ADMIN_KEY")).sha256 == hash_key(MASTER)
    assert AdminAuth.from_config(AdminConfig(key_sha256=hash_key(MASTER))).sha256 == hash_key(MASTER)
    monkeypatch.delenv("T_ADMIN_KEY")
    with pytest.raises(ValueError, match="T_ADMIN_KEY"):
        AdminAuth.from_config(AdminConfig(key_env="T_ADMIN_KEY"))
    gw = type("G", (), {"config": type("C", (), {"admin": AdminConfig(key_sha256=hash_key(MASTER))})()})()
    assert check_admin(gw, _scope({"x-api-key": MASTER})) == "key"
    assert gw.admin_auth.sha256 == hash_key(MASTER)  # built once, then reused


# ---- building blocks --------------------------------------------------------------------------------


def test_merge_keys_config_wins_on_clash() -> None:
    cfg = [ApiKey("team", hash_key("a"))]
    none = {"budget_usd_day": None, "budget_usd_month": None, "rpm": None, "aliases": None}
    stored = [
        {**none, "id": "team", "sha256": hash_key("b"), "revoked_ts": None},
        {**none, "id": "same-text", "sha256": hash_key("a"), "revoked_ts": None},
        {**none, "id": "gone", "sha256": hash_key("c"), "revoked_ts": 1.0},
        {**none, "id": "new", "sha256": hash_key("d"), "revoked_ts": None, "budget_usd_day": 2.0, "rpm": 5}
        | {"aliases": ["m*"]},
    ]
    keys, warnings = merge_keys(cfg, stored)
    assert [(k.id, k.sha256) for k in keys] == [("team", hash_key("a")), ("new", hash_key("d"))]
    assert keys[1].budget_usd_day == 2.0 and keys[1].rpm == 5 and keys[1].allowed == ("m*",)
    assert len(warnings) == 2 and all("config's wins" in w for w in warnings)


def test_authenticator_set_keys_keeps_buckets_and_refuses_duplicates() -> None:
    auth = Authenticator([ApiKey("a", hash_key("ka"), rpm=60), ApiKey("b", hash_key("kb"), rpm=60)])
    bucket = auth._buckets["a"]
    auth.set_keys([ApiKey("a", hash_key("ka"), rpm=60), ApiKey("b", hash_key("kb"), rpm=120)])
    assert auth._buckets["a"] is bucket  # same rate: the bucket (and what it used) stays
    assert auth._buckets["b"].rate == 2.0
    with pytest.raises(ValueError, match="twice"):
        auth.set_keys([ApiKey("a", hash_key("ka")), ApiKey("c", hash_key("ka"))])
    assert set(k.id for k in auth.keys.values()) == {"a", "b"}  # unchanged after the refusal
    auth.set_keys([ApiKey("b", hash_key("kb"))])
    with pytest.raises(GatewayError):
        auth.authenticate({"authorization": "Bearer ka"})


def test_ledger_add_keys_shares_slots_between_processes(tmp_path: Path) -> None:
    a = SharedLedger(tmp_path / "l", ["x"])
    b = SharedLedger(tmp_path / "l", ["x"])
    try:
        assert a.add_keys(["x", "y"]) == ["y"]
        assert b.add_keys(["y"]) == ["y"]  # maps the slot `a` claimed
        assert a.reserve("y", 1, 1, None, None, 0.5) is None
        a.settle("y", 1, 1, 0.5, 0.25)
        assert b.usage("y", 1, 1) == (0.25, 0.0, 0.25, 0.0)
        assert a.add_keys(["y"]) == []
    finally:
        a.close()
        b.close()


def test_key_generation_shared_through_a_folder(tmp_path: Path) -> None:
    a, b = KeyGeneration(tmp_path), KeyGeneration(tmp_path)
    local = KeyGeneration(None)
    try:
        assert a.value == b.value == 0
        assert a.bump() == 1 and b.value == 1 and b.config_value == 0
        assert b.bump(config=True) == 2 and a.value == 2 and a.config_value == 1
        assert local.bump() == 1 and local.value == 1 and local.config_value == 0
    finally:
        a.close()
        b.close()


# ---- a real gateway ---------------------------------------------------------------------------------


def _config(fake_url: str, tmp_path: Path) -> dict[str, Any]:
    cfg = loopback_config(fake_url, tmp_path)
    cfg["admin"] = {"key_sha256": hash_key(MASTER)}
    cfg["keys"] = [{"id": "yaml-team", "key_sha256": hash_key(YAML_KEY)}]
    cfg["models"][0]["headers"] = {"x-upstream-token": "secret-header-value"}
    return cfg


@pytest.fixture
def gw(fake_server: Any, tmp_path: Path) -> Iterator[Any]:
    cfg = _config(fake_server.base_url, tmp_path)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from llmroute.gateway.config import load_config

    with run_gateway(load_config(path), routers={"default": StubRouter()}) as h:
        h.app.config_path = str(path)
        h.cfg = cfg
        h.path = path
        h.db = tmp_path / "traces.sqlite"
        yield h


def _admin(gw: Any, method: str, path: str, key: str | None = MASTER, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{gw.root}/admin/v1{path}", headers=headers, timeout=30, **kw)


def _chat(gw: Any, key: str) -> str:
    """'ok' or the error code of one chat request with `key` (official openai client)."""
    client = openai.OpenAI(base_url=gw, api_key=key, max_retries=0, timeout=30)
    try:
        client.chat.completions.create(
            model="llmroute/auto", messages=[{"role": "user", "content": "hi"}], max_tokens=20
        )
        return "ok"
    except openai.APIStatusError as e:
        return f"{e.status_code} {e.body.get('code') if isinstance(e.body, dict) else e.body}"
    finally:
        client.close()


def test_admin_api_needs_the_master_key(gw: Any) -> None:
    for key in (None, YAML_KEY, "wrong"):
        r = _admin(gw, "GET", "/keys", key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_key"
    assert _admin(gw, "GET", "/keys/nope").status_code == 404
    assert _admin(gw, "PUT", "/keys").status_code == 405
    assert _admin(gw, "GET", "/nothing").status_code == 404


def test_keys_created_rebudgeted_revoked_without_restart(gw: Any) -> None:
    # YAML keys are on: a request without a known key is refused; the master key is not an API key
    assert _chat(gw, "sk-unknown").startswith("401")
    assert _chat(gw, MASTER).startswith("401")
    assert _chat(gw, YAML_KEY) == "ok"

    r = _admin(
        gw, "POST", "/keys", json={"id": "team-b", "budget_usd_day": 5, "rpm": 600, "aliases": ["llmroute/*"]}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["key"]
    assert secret.startswith("sk-llmroute-") and created["source"] == "store" and created["active"]
    assert _chat(gw, secret) == "ok"

    # hashed at rest: the store holds the sha256, never the key text
    db = sqlite3.connect(gw.db)
    try:
        rows = db.execute("SELECT id, sha256 FROM llmroute_api_keys").fetchall()
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert rows == [("team-b", hash_key(secret))]
    assert secret not in dump

    listed = _admin(gw, "GET", "/keys").json()["data"]
    assert {(k["id"], k["source"], k["active"]) for k in listed} == {
        ("yaml-team", "config", True),
        ("team-b", "store", True),
    }
    assert secret not in str(listed) and hash_key(secret) not in str(listed)
    b = next(k for k in listed if k["id"] == "team-b")
    assert b["budget_usd_day"] == 5 and b["rpm"] == 600 and b["aliases"] == ["llmroute/*"]
    assert b["usage"]["day_spent"] > 0  # the request above was billed to it

    # a model outside the key's aliases is refused
    client = openai.OpenAI(base_url=gw, api_key=secret, max_retries=0, timeout=30)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="fake-weak", messages=[{"role": "user", "content": "hi"}])
    client.close()

    # re-budget to 0: the next request is over budget; a null removes the limit again
    r = _admin(gw, "PATCH", "/keys/team-b", json={"budget_usd_day": 0})
    assert r.status_code == 200 and r.json()["budget_usd_day"] == 0 and r.json()["rpm"] == 600
    assert _chat(gw, secret) == "429 insufficient_quota"
    assert _admin(gw, "PATCH", "/keys/team-b", json={"budget_usd_day": None}).status_code == 200
    assert _chat(gw, secret) == "ok"
    assert _admin(gw, "PATCH", "/keys/team-b", json={"budget": 1}).status_code == 400
    assert _admin(gw, "PATCH", "/keys/team-b", json={"rpm": 0}).status_code == 400
    assert _admin(gw, "PATCH", "/keys/team-b", json={}).status_code == 400

    # revoke: refused on the next request; the id cannot be reused
    r = _admin(gw, "DELETE", "/keys/team-b")
    assert r.status_code == 200 and r.json()["active"] is False and r.json()["revoked_ts"]
    assert _chat(gw, secret) == "401 invalid_api_key"
    assert _chat(gw, YAML_KEY) == "ok"
    assert _admin(gw, "DELETE", "/keys/team-b").status_code == 404
    assert _admin(gw, "PATCH", "/keys/team-b", json={"rpm": 5}).status_code == 404
    assert _admin(gw, "POST", "/keys", json={"id": "team-b"}).status_code == 409

    # config-file keys are read-only here
    for method, body in (("DELETE", None), ("PATCH", {"rpm": 5})):
        r = _admin(gw, method, "/keys/yaml-team", json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "key_in_config"
    r = _admin(gw, "POST", "/keys", json={"id": "yaml-team"})
    assert r.status_code == 409
    assert _admin(gw, "POST", "/keys", json={"id": "bad id!"}).status_code == 400
    assert _admin(gw, "POST", "/keys", json={"name": "x"}).status_code == 400
    # an id is generated when none is given
    anon = _admin(gw, "POST", "/keys", json={}).json()
    assert anon["id"].startswith("key-") and _chat(gw, anon["key"]) == "ok"

    # the audit log: every change, newest first, no secret
    audit = _admin(gw, "GET", "/audit?limit=50").json()["data"]
    actions = [(a["action"], a["target"]) for a in audit]
    assert actions[:5] == [
        ("key.create", anon["id"]),
        ("key.revoke", "team-b"),
        ("key.update", "team-b"),
        ("key.update", "team-b"),
        ("key.create", "team-b"),
    ]
    assert audit[1]["actor"] == "key" and audit[3]["detail"] == {"budget_usd_day": 0}
    assert secret not in str(audit) and anon["key"] not in str(audit)
    assert len(_admin(gw, "GET", "/audit?limit=2").json()["data"]) == 2
    assert _admin(gw, "GET", "/audit?limit=x").status_code == 400


def test_config_view_masks_secrets(gw: Any) -> None:
    r = _admin(gw, "GET", "/config")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    text = r.text
    assert hash_key(MASTER) not in text and hash_key(YAML_KEY) not in text
    assert "secret-header-value" not in text
    cfg = r.json()["config"]
    assert cfg["keys"][0]["id"] == "yaml-team" and cfg["keys"][0]["key_sha256"] == "***"
    assert cfg["models"][0]["headers"] == {"x-upstream-token": "***"}
    assert [m["name"] for m in cfg["models"]] == ["fake-strong", "fake-weak"]


def test_reload_applies_keys_and_refuses_a_bad_config(gw: Any) -> None:
    new_key = "sk-yaml-new-0123456789"
    created = _admin(gw, "POST", "/keys", json={"id": "clash"}).json()
    cfg = dict(gw.cfg)
    cfg["keys"] = [
        {"id": "yaml-new", "key_sha256": hash_key(new_key)},
        {"id": "clash", "key_sha256": hash_key("sk-clash-from-yaml-0123")},  # the config's wins
    ]
    # retries apply at once; the listener's keep-alive needs a restart (the running value stays)
    cfg["server"] = {**cfg["server"], "retries": 2, "keep_alive_s": 7}
    gw.path.write_text(yaml.safe_dump(cfg))
    assert _chat(gw, new_key).startswith("401")  # nothing changes before the reload
    r = _admin(gw, "POST", "/reload")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["reloaded"] and out["config_keys"] == 2
    assert out["restart_required"] == ["server.keep_alive_s"] and out["sections"] == ["keys", "server"]
    live = gw.app.live
    assert live is not gw.app and live.executor.retries == 2 and live.config.server.keep_alive_s == 30
    assert any("clash" in w for w in out["warnings"])
    assert _chat(gw, new_key) == "ok"
    assert _chat(gw, YAML_KEY) == "401 invalid_api_key"  # removed from the file
    assert _chat(gw, created["key"]) == "401 invalid_api_key"  # the config's 'clash' wins
    assert _chat(gw, "sk-clash-from-yaml-0123") == "ok"
    assert {k["id"]: k["source"] for k in _admin(gw, "GET", "/keys").json()["data"]}["clash"] == "config"

    # a bad file: 400 saying why, and the running config stays
    for bad, why in (
        ("models: [\n", "not valid YAML"),
        (yaml.safe_dump({**cfg, "keys": [{"id": "x"}]}), "key_sha256"),
        (yaml.safe_dump({**cfg, "admin": {"key_env": "T_UNSET_ADMIN_VAR"}}), "T_UNSET_ADMIN_VAR"),
    ):
        gw.path.write_text(bad)
        r = _admin(gw, "POST", "/reload")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_config", r.text
        assert why in r.json()["error"]["message"] and "running one stays" in r.json()["error"]["message"]
        assert _chat(gw, new_key) == "ok"
        assert _admin(gw, "GET", "/keys").status_code == 200  # the master key still works
    audit = [a["action"] for a in _admin(gw, "GET", "/audit").json()["data"]]
    assert audit[:4] == ["config.reload_failed"] * 3 + ["config.reload"]


def test_admin_off_without_a_master_key(fake_server: Any, tmp_path: Path) -> None:
    cfg = loopback_config(fake_server.base_url, tmp_path)
    with run_gateway(cfg, routers={"default": StubRouter()}) as h:
        r = httpx.get(f"{h.root}/admin/v1/keys", timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
        assert _chat(h, "anything") == "ok"  # no keys: the gateway is open


def test_demo_mode_on_loopback_and_first_key_closes_the_gateway(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BIND_HOST_ENV, raising=False)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["admin"] = {"demo": True}
    with run_gateway(cfg, routers={"default": StubRouter()}) as h:
        assert _chat(h, "anything") == "ok"
        r = httpx.post(f"{h.root}/admin/v1/keys", json={"id": "first"}, timeout=30)
        assert r.status_code == 201
        # keys exist now: the gateway wants one
        assert _chat(h, "anything") == "401 invalid_api_key"
        assert _chat(h, r.json()["key"]) == "ok"
        audit = httpx.get(f"{h.root}/admin/v1/audit", timeout=30).json()["data"]
        assert audit[0]["actor"] == "demo"
        # keys from the store survive a restart of the gateway
    with run_gateway(cfg, routers={"default": StubRouter()}) as h:
        assert _chat(h, r.json()["key"]) == "ok"
        assert _chat(h, "anything") == "401 invalid_api_key"


def test_demo_mode_end_to_end_refuses_rebinding_and_cross_site_posts(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(BIND_HOST_ENV, raising=False)
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["admin"] = {"demo": True}
    with run_gateway(cfg, routers={"default": StubRouter()}) as h:
        url = f"{h.root}/admin/v1/keys"
        r = httpx.get(url, headers={"host": "rebound.example.com"}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_demo_not_loopback"
        r = httpx.get(f"{h.root}/ui", headers={"host": "rebound.example.com"}, timeout=30)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        # a cross-site form: text/plain needs no preflight, so only the Origin tells it apart
        evil = {"origin": "https://evil.example.com", "content-type": "text/plain"}
        r = httpx.post(url, content=b'{"id": "csrf"}', headers=evil, timeout=30)
        assert r.status_code == 403
        assert httpx.get(url, timeout=30).json()["data"] == []  # nothing was created
        assert _chat(h, "anything") == "ok"  # and the gateway is still open (no first key)
        r = httpx.post(url, json={"id": "mine"}, headers={"origin": h.root}, timeout=30)
        assert r.status_code == 201


def test_serve_refuses_demo_mode_off_loopback(fake_server: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llmroute.cli import app

    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["admin"] = {"demo": True}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["serve", "--config", str(path), "--host", "0.0.0.0", "--port", "1"])
    assert r.exit_code == 2
    assert "admin.demo" in r.output and "loopback" in r.output


def test_cli_keys_create_list_budget_revoke_audit(gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from llmroute.cli import app

    monkeypatch.setenv("T_CLI_ADMIN", MASTER)
    run = CliRunner().invoke
    common = ["--url", gw.root, "--admin-key-env", "T_CLI_ADMIN"]
    r = run(
        app,
        [
            "keys",
            "create",
            "--id",
            "cli-team",
            "--budget-day",
            "3",
            "--alias",
            "llmroute/*",
            *common,
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    secret = json.loads(r.output)["key"]
    assert _chat(gw, secret) == "ok"

    r = run(app, ["keys", "list", *common])
    assert r.exit_code == 0 and "cli-team" in r.output and "yaml-team" in r.output
    assert secret not in r.output

    r = run(app, ["keys", "budget", "cli-team", "--day", "0", "--rpm", "none", *common])
    assert r.exit_code == 0, r.output
    assert "day 0 USD" in r.output
    assert _chat(gw, secret) == "429 insufficient_quota"
    r = run(app, ["keys", "budget", "cli-team", "--day", "lots", *common])
    assert r.exit_code == 2 and "none" in r.output

    r = run(app, ["keys", "revoke", "cli-team", *common])
    assert r.exit_code == 0 and _chat(gw, secret) == "401 invalid_api_key"
    r = run(app, ["keys", "revoke", "cli-team", *common])
    assert r.exit_code == 1 and "404" in r.output and "No live key" in r.output

    r = run(app, ["keys", "audit", "--limit", "3", *common])
    assert r.exit_code == 0 and r.output.splitlines()[0].split()[2] == "key.revoke"

    # a wrong master key / no gateway: one line saying so
    monkeypatch.setenv("T_CLI_ADMIN", "wrong")
    r = run(app, ["keys", "list", *common])
    assert r.exit_code == 1 and "401" in r.output and "wrong" not in r.output
    r = run(app, ["keys", "list", "--url", "http://127.0.0.1:9", "--admin-key-env", "T_CLI_ADMIN"])
    assert r.exit_code == 1 and "cannot reach" in r.output


def test_a_second_gateway_on_the_same_store_sees_key_changes(fake_server: Any, tmp_path: Path) -> None:
    """Two gateways (think: two hosts) sharing one key store, no shared folder: the other one picks
    a change up within admin.key_poll_s."""
    import time

    cfg = _config(fake_server.base_url, tmp_path)
    cfg["admin"]["key_poll_s"] = 0.2
    with (
        run_gateway(cfg, routers={"default": StubRouter()}) as a,
        run_gateway(cfg, routers={"default": StubRouter()}) as b,
    ):
        secret = _admin(a, "POST", "/keys", json={"id": "shared"}).json()["key"]
        assert _chat(a, secret) == "ok"

        def wait_for(want: str) -> str:
            got, end = "", time.monotonic() + 30
            while time.monotonic() < end:
                got = _chat(b, secret)
                if got == want:
                    break
                time.sleep(0.1)
            return got

        assert wait_for("ok") == "ok"
        assert _admin(a, "DELETE", "/keys/shared").status_code == 200
        assert _chat(a, secret) == "401 invalid_api_key"
        assert wait_for("401 invalid_api_key") == "401 invalid_api_key"


def test_admin_actions_logged_without_secrets(gw: Any, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="llmroute.gateway.admin"):
        secret = _admin(gw, "POST", "/keys", json={"id": "logged", "rpm": 60}).json()["key"]
        _admin(gw, "DELETE", "/keys/logged")
    lines = [r.getMessage() for r in caplog.records if r.name == "llmroute.gateway.admin"]
    assert any("key.create logged" in m and '"rpm":60' in m for m in lines), lines
    assert any("key.revoke logged" in m for m in lines), lines
    assert all(secret not in m and hash_key(secret) not in m and MASTER not in m for m in lines)


# ---- the key store on Postgres (skips without a server: `postgres_url` in conftest.py) ---------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_key_store_on_sqlite_and_postgres(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import asyncio

    from llmroute.gateway.keystore import KeyStore
    from llmroute.gateway.store import open_store

    url = request.getfixturevalue("postgres_url") if kind == "postgres" else f"sqlite:///{tmp_path}/k.sqlite"
    kid = f"k-{kind}-{tmp_path.name}"[:60]

    async def go(ks: KeyStore) -> None:
        before = await ks.astamp()
        row = await ks.acreate(kid, hash_key("s1"), budget_usd_day=1.5, aliases=["a*"])
        assert row is not None and row["aliases"] == ["a*"] and row["revoked_ts"] is None
        assert await ks.acreate(kid, hash_key("s2")) is None  # the id is taken
        assert (await ks.astamp())[0] == before[0] + 1
        got = await ks.aupdate(kid, {"rpm": 30, "budget_usd_day": None, "aliases": None})
        assert (
            got is not None and got["rpm"] == 30 and got["budget_usd_day"] is None and got["aliases"] is None
        )
        assert await ks.arevoke(kid) and not await ks.arevoke(kid)
        assert await ks.aupdate(kid, {"rpm": 1}) is None
        rows = {r["id"]: r for r in await ks.alist()}
        assert rows[kid]["revoked_ts"] is not None and rows[kid]["sha256"] == hash_key("s1")
        assert kid not in {r["id"] for r in await ks.alist(revoked=False)}
        await ks.aaudit("key.create", kid, "key", {"rpm": 30})
        log = await ks.aaudit_log(limit=1)
        assert log[0]["action"] == "key.create" and log[0]["detail"] == {"rpm": 30}

    store = open_store(url)
    try:
        asyncio.run(go(KeyStore(store)))
    finally:
        store.close_sync()


def test_create_refused_when_the_budget_ledger_is_full(fake_server: Any, tmp_path: Path) -> None:
    cfg = _config(fake_server.base_url, tmp_path)
    # a ledger file with room for two key ids (the gateway's default is max(64, 2 x keys))
    SharedLedger(tmp_path / "traces.sqlite.ledger", ["yaml-team"], capacity=2).close()
    with run_gateway(cfg, routers={"default": StubRouter()}) as h:
        first = _admin(h, "POST", "/keys", json={"id": "fits"})
        assert first.status_code == 201 and _chat(h, first.json()["key"]) == "ok"
        r = _admin(h, "POST", "/keys", json={"id": "no-room"})
        assert r.status_code == 507 and r.json()["error"]["code"] == "ledger_full"
        assert "move that file away" in r.json()["error"]["message"]
        assert "no-room" not in {k["id"] for k in _admin(h, "GET", "/keys").json()["data"]}
        assert _chat(h, first.json()["key"]) == "ok"


def test_masked_config_hides_the_passwords_of_state_cache_and_otlp_urls(tmp_path: Path) -> None:
    from llmroute.gateway.admin import masked_config
    from llmroute.gateway.config import GatewayConfig

    raw = loopback_config("http://127.0.0.1:9/v1", tmp_path)
    raw["state"] = "redis://:state-pass-123@redis.internal:6379/0"
    raw["cache"] = {"ttl_s": 60}  # the cache goes on the state's Redis: its url copies the password
    raw["telemetry"] = {"otlp_endpoint": "https://user:otlp-pass-456@collector.internal:4318"}
    cfg = GatewayConfig.model_validate(raw)
    assert cfg.cache is not None and "state-pass-123" in cfg.cache["url"]
    data = masked_config(cfg)
    text = str(data)
    assert "state-pass-123" not in text and "otlp-pass-456" not in text
    assert data["state"] == "redis://:***@redis.internal:6379/0"
    assert data["cache"]["url"] == "redis://:***@redis.internal:6379/0"
    assert data["telemetry"]["otlp_endpoint"] == "https://user:***@collector.internal:4318"


def test_models_list_follows_an_allow_list_changed_through_the_admin_api(gw: Any) -> None:
    """GET /v1/models is cached per key: a PATCH of the key's `aliases` must show at once."""
    created = _admin(gw, "POST", "/keys", json={"id": "lister", "aliases": ["fake-weak"]}).json()
    client = openai.OpenAI(base_url=gw, api_key=created["key"], max_retries=0, timeout=30)
    try:
        assert [m.id for m in client.models.list()] == ["fake-weak"]
        r = _admin(gw, "PATCH", "/keys/lister", json={"aliases": ["fake-strong", "llmroute/*"]})
        assert r.status_code == 200
        assert sorted(m.id for m in client.models.list()) == ["fake-strong", "llmroute/auto"]
    finally:
        client.close()


def test_openapi_documents_the_admin_api_when_it_is_on(gw: Any, tmp_path: Path) -> None:
    from llmroute.gateway.app import openapi_document
    from llmroute.gateway.config import parse_config

    doc = httpx.get(f"{gw.root}/openapi.json", timeout=30).json()
    admin = {p: ops for p, ops in doc["paths"].items() if p.startswith("/admin/v1/")}
    assert set(admin) == {"/admin/v1/keys", "/admin/v1/keys/{id}", "/admin/v1/config", "/admin/v1/reload",
                          "/admin/v1/audit"}  # fmt: skip
    assert doc["components"]["securitySchemes"]["admin"]["scheme"] == "bearer"
    create = doc["components"]["schemas"]["KeyCreate"]
    assert create["additionalProperties"] is False and "budget_usd_day" in create["properties"]
    for path, ops in admin.items():
        for method, op in ops.items():
            assert op["security"] == [{"admin": []}], (path, method)
            url = f"{gw.root}{path.replace('{id}', 'yaml-team')}"
            r = httpx.request(method.upper(), url, json={} if "requestBody" in op else None, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_key", (path, method)
    # the admin API off: not in the document
    off = parse_config(loopback_config("http://127.0.0.1:9/v1", tmp_path))
    assert not any(p.startswith("/admin/") for p in openapi_document(off)["paths"])
    assert not any(p.startswith("/admin/") for p in openapi_document()["paths"])
