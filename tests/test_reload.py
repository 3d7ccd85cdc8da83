"""Hot reload of the whole config (issue 15, `llmroute.gateway.reload`): a real gateway on
127.0.0.1 started from a YAML file, the official openai client for requests, httpx for the admin
calls. The `--workers 2` test is in test_admin_workers.py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from conftest import StubRouter, loopback_config, run_gateway, start_fake_server
from llmroute.gateway.auth import hash_key
from llmroute.gateway.config import load_config, parse_config
from llmroute.gateway.reload import (
    RESTART_ONLY,
    config_changes,
    restart_required,
    router_signatures,
    running_config,
)

MASTER = "sk-reload-master-0123456789"
TEAM_KEY = "sk-reload-team-0123456789"


def _config(fake_url: str, tmp_path: Path) -> dict[str, Any]:
    cfg = loopback_config(fake_url, tmp_path)
    cfg["admin"] = {"key_sha256": hash_key(MASTER)}
    cfg["keys"] = [{"id": "team", "key_sha256": hash_key(TEAM_KEY), "budget_usd_day": 100.0}]
    cfg["models"][1]["timeout_s"] = 30.0  # fake-weak: the in-flight test holds a call for seconds
    cfg["signals"] = {"zebra": {"type": "keywords", "keywords": ["zebra"]}}
    return cfg


@pytest.fixture
def gw(fake_server: Any, tmp_path: Path) -> Iterator[Any]:
    cfg = _config(fake_server.base_url, tmp_path)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with run_gateway(load_config(path), routers={"default": StubRouter()}) as h:
        h.app.config_path = str(path)
        h.cfg = cfg
        h.path = path
        yield h


def _reload(gw: Any, cfg: dict[str, Any] | str) -> httpx.Response:
    gw.path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return httpx.post(
        f"{gw.root}/admin/v1/reload", headers={"authorization": f"Bearer {MASTER}"}, timeout=120
    )


def _ask(gw: Any, model: str = "llmroute/auto", text: str = "hi") -> tuple[int, str]:
    """(status, the model that answered) of one chat request with the team key."""
    client = openai.OpenAI(base_url=gw, api_key=TEAM_KEY, max_retries=0, timeout=60)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=20
        )
        return raw.status_code, raw.headers["x-llmroute-model"]
    except openai.APIStatusError as e:
        return e.status_code, ""
    finally:
        client.close()


@contextlib.contextmanager
def _held_request(gw: Any, fake_server: Any) -> Iterator[list[tuple[int, str]]]:
    """A request to fake-weak kept in flight (the upstream holds its answer) while the body
    runs; then released and finished: the list holds its (status, model)."""
    fake_server.set_fault("fake-weak", "hold", count=1)
    seen = fake_server.state.counts.get("fake-weak", 0)
    result: list[tuple[int, str]] = []
    t = threading.Thread(target=lambda: result.append(_ask(gw, model="fake-weak")))
    t.start()
    try:
        end = time.monotonic() + 60
        while fake_server.state.counts.get("fake-weak", 0) == seen and time.monotonic() < end:
            time.sleep(0.02)
        yield result
    finally:
        fake_server.state.release_holds()
        t.join(60)
        fake_server.clear()


def test_alias_rule_and_upstream_url_apply_on_the_next_request(gw: Any, fake_server: Any) -> None:
    app = gw.app
    first = app.live
    assert {_ask(gw)[1] for _ in range(3)} <= {"fake-strong", "fake-weak"}
    assert _ask(gw, text="a zebra")[0] == 200
    cfg = dict(gw.cfg)
    with start_fake_server() as other:
        cfg["aliases"] = {"llmroute/auto": {"router": "default", "candidates": ["fake-weak"]}}
        cfg["rules"] = [
            {"name": "no-zebras", "when": {"signal": "zebra"}, "action": {"type": "block", "status": 400}}
        ]
        cfg["models"] = [dict(cfg["models"][0]), {**cfg["models"][1], "base_url": other.base_url}]
        before = dict(fake_server.state.counts)
        r = _reload(gw, cfg)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["runtime_rebuilt"] and out["restart_required"] == []
        assert out["models"] == {"added": [], "removed": [], "changed": ["fake-weak"]}
        assert out["aliases"]["changed"] == ["llmroute/auto"]
        assert out["rules"] == {"added": ["no-zebras"], "removed": [], "changed": []}
        assert out["sections"] == []  # the signal was there already
        assert app.live is not first and first.retired
        # the next requests: only the new candidate, on the new upstream; the rule blocks
        for _ in range(3):
            assert _ask(gw) == (200, "fake-weak")
        assert other.state.counts.get("fake-weak", 0) == 3
        assert fake_server.state.counts.get("fake-weak", 0) == before.get("fake-weak", 0)
        assert _ask(gw, text="a zebra")[0] == 400
        # the unchanged model kept its backend and breaker; the changed one has new ones
        live = app.live
        assert live.backends["fake-strong"] is first.backends["fake-strong"]
        assert live.executor.breakers["fake-strong"] is first.executor.breakers["fake-strong"]
        assert live.backends["fake-weak"] is not first.backends["fake-weak"]
        assert live.executor.breakers["fake-weak"] is not first.executor.breakers["fake-weak"]
        audit = httpx.get(
            f"{gw.root}/admin/v1/audit", headers={"authorization": f"Bearer {MASTER}"}, timeout=30
        ).json()["data"][0]
        assert audit["action"] == "config.reload" and audit["detail"]["models"]["changed"] == ["fake-weak"]
        assert audit["detail"]["rules"]["added"] == ["no-zebras"]


def test_bad_configs_leave_the_running_one(gw: Any, tmp_path: Path) -> None:
    app = gw.app
    first = app.live
    good = dict(gw.cfg)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a router file")
    bad_alias = {**good, "aliases": {"llmroute/auto": {"router": "default", "candidates": ["nope"]}}}
    bad_router = {
        **good,
        "routers": {"default": "builtin:default", "other": str(garbage)},
        "aliases": {**good["aliases"], "llmroute/other": {"router": "other", "candidates": ["fake-weak"]}},
    }
    missing_router = {
        **bad_router,
        "routers": {"default": "builtin:default", "other": str(tmp_path / "no.st")},
    }
    for bad, why in (
        (bad_alias, "unknown model(s) ['nope']"),
        (bad_router, "running one stays"),
        (missing_router, "not found"),
        ("models: [\n", "not valid YAML"),
    ):
        r = _reload(gw, bad)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_config" and why in err["message"], err
        assert app.live is first and not first.retired
        assert _ask(gw)[0] == 200
    audit = httpx.get(
        f"{gw.root}/admin/v1/audit", headers={"authorization": f"Bearer {MASTER}"}, timeout=30
    ).json()["data"]
    assert [a["action"] for a in audit[:4]] == ["config.reload_failed"] * 4


def test_request_in_flight_finishes_on_its_runtime_and_keys_and_spend_survive(
    gw: Any, fake_server: Any
) -> None:
    app = gw.app
    first = app.live
    assert _ask(gw, model="fake-weak") == (200, "fake-weak")
    spent = app.budgets.usage("team")["day_spent"]
    assert spent > 0
    with _held_request(gw, fake_server) as result:
        assert first.inflight == 1
        cfg = dict(gw.cfg)
        cfg["models"] = [dict(cfg["models"][0]), {**cfg["models"][1], "timeout_s": 29.0}]
        r = _reload(gw, cfg)
        assert r.status_code == 200 and r.json()["models"]["changed"] == ["fake-weak"], r.text
        assert app.live is not first
    assert result == [(200, "fake-weak")]  # finished on the old runtime's backend
    end = time.monotonic() + 60  # then the old runtime closes (its learners, changed backends)
    while app.__dict__.get("_draining") and time.monotonic() < end:
        time.sleep(0.05)
    assert not app.__dict__.get("_draining") and first.inflight == 0
    # keys and spend survive; new spend adds to the old
    assert app.live.budgets is app.budgets and app.budgets.usage("team")["day_spent"] >= spent
    assert _ask(gw, model="fake-weak") == (200, "fake-weak")
    assert app.budgets.usage("team")["day_spent"] > spent


def test_restart_only_changes_apply_nothing(gw: Any) -> None:
    app = gw.app
    first = app.live
    cfg = dict(gw.cfg)
    cfg["store"] = {**cfg["store"], "flush_interval_s": 0.5}
    cfg["server"] = {**cfg["server"], "max_connections": 77}
    r = _reload(gw, cfg)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["restart_required"] == ["store", "server.max_connections"]
    assert not out["runtime_rebuilt"] and out["sections"] == [] and app.live is first
    assert first.config.store.flush_interval_s == 0.05 and first.config.server.max_connections != 77
    # the same file again: nothing changes
    r = _reload(gw, cfg)
    assert not r.json()["runtime_rebuilt"] and app.live is first


def test_plan_helpers(tmp_path: Path) -> None:
    base = loopback_config("http://127.0.0.1:9/v1", tmp_path)
    old = parse_config(base)
    new = parse_config(
        {
            **base,
            "telemetry": {"service_name": "x"},
            "server": {**base["server"], "keep_alive_s": 3, "retries": 3},
            "models": [base["models"][0], {**base["models"][1], "name": "fake-new"}],
            "aliases": {"llmroute/auto": {"router": "default", "candidates": ["fake-strong"]}},
        }
    )
    assert restart_required(old, new) == ["telemetry", "server.keep_alive_s"]
    assert restart_required(old, old) == [] and set(restart_required(old, new)) <= set(RESTART_ONLY)
    run = running_config(old, new)
    assert run.telemetry == old.telemetry and run.server.keep_alive_s == old.server.keep_alive_s
    assert run.server.retries == 3 and [m.name for m in run.models] == ["fake-strong", "fake-new"]
    ch = config_changes(old, run)
    assert ch["models"] == {"added": ["fake-new"], "removed": ["fake-weak"], "changed": []}
    assert ch["aliases"]["changed"] == ["llmroute/auto"] and ch["sections"] == ["server"]


def test_a_profile_rewritten_in_place_changes_the_router_signature(tmp_path: Path) -> None:
    """A reload reuses a router only while its signature holds: rewriting a profiled model's
    profile file (same path, new rows) must change it, or the old added column would stay."""
    base = loopback_config("http://127.0.0.1:9/v1", tmp_path)
    prof = tmp_path / "new-model.csv"
    prof.write_text("prompt,model,quality\nhi,fake-new,1\n")
    cfg = parse_config({**base, "models": [*base["models"], {**base["models"][1], "name": "fake-new",
                                                              "profile": str(prof)}]})  # fmt: skip
    first = router_signatures(cfg)
    assert router_signatures(cfg) == first  # nothing changed: reused
    prof.write_text("prompt,model,quality\nhi,fake-new,0\nbye,fake-new,1\n")
    assert router_signatures(cfg)["default"] != first["default"]


def test_another_gateway_on_the_same_store_follows_a_reload(fake_server: Any, tmp_path: Path) -> None:
    """Two gateways (as on two hosts) share one trace store: a reload sent to one is picked up by
    the other within admin.key_poll_s (it polls the audit log's newest config.reload)."""
    cfg = _config(fake_server.base_url, tmp_path)
    cfg["admin"]["key_poll_s"] = 0.2
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with (
        run_gateway(load_config(path), routers={"default": StubRouter()}) as a,
        run_gateway(load_config(path), routers={"default": StubRouter()}) as b,
    ):
        for h in (a, b):
            h.app.config_path = str(path)
        a.path = path
        assert _ask(b, model="fake-weak")[0] == 200
        cfg["aliases"] = {"llmroute/auto": {"router": "default", "candidates": ["fake-weak"]}}
        r = _reload(a, cfg)
        assert r.status_code == 200 and r.json()["runtime_rebuilt"], r.text
        first_b = b.app.live
        end = time.monotonic() + 60
        while b.app.keyman.generation.config_value == 0 and time.monotonic() < end:
            time.sleep(0.05)
        assert b.app.keyman.generation.config_value >= 1  # b's poller saw a's reload
        for _ in range(3):
            assert _ask(b) == (200, "fake-weak")
        assert b.app.live is not first_b and b.app.live.config.aliases["llmroute/auto"].candidates == [
            "fake-weak"
        ]


def test_cli_keys_reload(gw: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llmroute.cli import app

    monkeypatch.setenv("T_CLI_RELOAD_ADMIN", MASTER)
    common = ["--url", gw.root, "--admin-key-env", "T_CLI_RELOAD_ADMIN"]
    cfg = dict(gw.cfg)
    cfg["aliases"] = {"llmroute/auto": {"router": "default", "candidates": ["fake-weak"]}}
    cfg["store"] = {**cfg["store"], "batch_size": 7}
    gw.path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["keys", "reload", *common])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("reloaded: new runtime") and "aliases: ~llmroute/auto" in lines
    assert "restart required (the running value stays): store" in lines
    assert _ask(gw) == (200, "fake-weak")
    gw.path.write_text("models: [\n")
    r = CliRunner().invoke(app, ["keys", "reload", *common])
    assert r.exit_code == 1 and "400" in r.output and "not valid YAML" in r.output
    assert _ask(gw) == (200, "fake-weak")


def test_sighup_reloads_a_single_process_gateway(fake_server: Any, tmp_path: Path) -> None:
    """`kill -HUP` of `llmroute serve` (one process) reloads its config like the admin API."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import free_port

    cfg = _config(fake_server.base_url, tmp_path)
    cfg["models"][0]["router_model"] = "gpt-4-1106-preview"  # the shipped router's columns
    cfg["models"][1]["router_model"] = "mistralai/mistral-7b-chat"
    cfg["aliases"]["llmroute/auto"]["tradeoff"] = 0  # quality only: fake-strong
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("LLMROUTE_SHARED_DIR", None)
    cmd = [sys.executable, "-c", "from llmroute.cli import app; app()", "serve", "--config", str(path),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw: Any = f"http://127.0.0.1:{port}/v1"
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert _ask(gw) == (200, "fake-strong")
        cfg["aliases"]["llmroute/auto"]["candidates"] = ["fake-weak"]
        path.write_text(yaml.safe_dump(cfg))
        proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 120
        got = _ask(gw)
        while got == (200, "fake-strong") and time.monotonic() < end:
            time.sleep(0.1)
            got = _ask(gw)
        assert got == (200, "fake-weak") and proc.poll() is None  # reloaded, still serving
        audit = httpx.get(
            f"http://127.0.0.1:{port}/admin/v1/audit",
            headers={"authorization": f"Bearer {MASTER}"},
            timeout=30,
        ).json()["data"][0]
        assert audit["action"] == "config.reload" and audit["actor"] == "sighup"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait(10)


def test_learner_state_of_an_unchanged_alias_survives(fake_server: Any, tmp_path: Path) -> None:
    """An alias that learns keeps what it learned across a reload that changes something else;
    an alias whose candidates changed starts afresh."""
    cfg = _config(fake_server.base_url, tmp_path)
    cfg["keys"] = []
    learn = {"enabled": True, "learner": "greedy", "sync_interval_s": 0.05}
    cfg["aliases"]["llmroute/auto"]["learning"] = learn
    cfg["aliases"]["llmroute/other"] = {"router": "default", "candidates": ["fake-strong", "fake-weak"],
                                        "learning": learn}  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with run_gateway(load_config(path), routers={"default": StubRouter()}) as gw:
        gw.app.config_path = str(path)
        gw.path = path
        client = openai.OpenAI(base_url=gw, api_key="x", max_retries=0, timeout=60)
        taught = 0
        for _ in range(40):  # thumbs down on fake-weak until the greedy learner prefers fake-strong
            raw = client.chat.completions.with_raw_response.create(
                model="llmroute/auto", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
            if raw.headers["x-llmroute-model"] == "fake-strong":
                break
            rid = raw.headers["x-llmroute-request-id"]
            end = time.monotonic() + 30
            while (r := httpx.post(f"{gw}/feedback", json={"request_id": rid, "thumbs": "down"}, timeout=30)
                   ).status_code == 404 and time.monotonic() < end:  # fmt: skip
                time.sleep(0.02)
            assert r.status_code == 200, r.text
            taught += 1
        else:
            pytest.fail("40 bad outcomes of fake-weak did not move the greedy choice")
        lr = gw.app.learning
        end = time.monotonic() + 30
        while lr.aliases["llmroute/auto"].learner.n_.sum() < taught and time.monotonic() < end:
            time.sleep(0.02)
        learned = lr.aliases["llmroute/auto"].learner.n_.copy()
        assert learned.sum() == taught > 0
        raw = client.chat.completions.with_raw_response.create(
            model="llmroute/other", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        rid = raw.headers["x-llmroute-request-id"]
        end = time.monotonic() + 30
        while (r := httpx.post(f"{gw}/feedback", json={"request_id": rid, "thumbs": "up"}, timeout=30)
               ).status_code == 404 and time.monotonic() < end:  # fmt: skip
            time.sleep(0.02)
        while lr.aliases["llmroute/other"].learner.n_.sum() < 1 and time.monotonic() < end:
            time.sleep(0.02)
        assert lr.aliases["llmroute/other"].learner.n_.sum() == 1
        cfg["aliases"]["llmroute/other"]["candidates"] = ["fake-weak"]
        cfg["models"][0] = {**cfg["models"][0], "timeout_s": 0.75}
        r = _reload(gw, cfg)
        assert r.status_code == 200 and r.json()["aliases"]["changed"] == ["llmroute/other"], r.text
        new = gw.app.live.learning
        assert new is not lr
        assert (new.aliases["llmroute/auto"].learner.n_ == learned).all()
        assert new.aliases["llmroute/other"].learner.n_.sum() == 0
        raw = client.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert raw.headers["x-llmroute-model"] == "fake-strong"  # still what it learned
        client.close()


def test_a_changed_router_file_is_loaded_an_unchanged_one_reused(
    fake_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmroute.gateway.routing as routing

    loaded: list[str] = []

    class FileRouter(StubRouter):
        pass

    def load(ref: str, config: Any) -> Any:
        loaded.append(ref)
        if b"broken" in Path(ref).read_bytes():
            raise ValueError(f"{ref}: not a router file")
        return FileRouter()

    monkeypatch.setattr(routing, "load_router", load)
    rfile = tmp_path / "file-router.safetensors"
    rfile.write_bytes(b"version 1")
    cfg = _config(fake_server.base_url, tmp_path)
    cfg["routers"] = {"default": "builtin:default", "file": str(rfile)}
    cfg["aliases"]["llmroute/file"] = {"router": "file", "candidates": ["fake-strong", "fake-weak"]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first_file = StubRouter()
    with run_gateway(load_config(path), routers={"default": StubRouter(), "file": first_file}) as gw:
        gw.app.config_path = str(path)
        gw.path = path
        cfg["models"][0] = {**cfg["models"][0], "timeout_s": 0.75}  # a rebuild, the file unchanged
        r = _reload(gw, cfg)
        assert r.status_code == 200 and r.json()["routers"]["changed"] == [], r.text
        assert loaded == [] and gw.app.live.engine.routers["file"] is first_file
        rfile.write_bytes(b"version 2, longer")  # a new router in the same file
        r = _reload(gw, cfg)
        assert r.status_code == 200 and r.json()["routers"]["changed"] == ["file"], r.text
        assert loaded == [str(rfile)] and isinstance(gw.app.live.engine.routers["file"], FileRouter)
        assert gw.app.live.engine.routers["default"] is gw.app.engine.routers["default"]
        assert _ask(gw, model="llmroute/file")[0] == 200
        live = gw.app.live
        rfile.write_bytes(b"broken")
        r = _reload(gw, cfg)
        assert r.status_code == 400 and "not a router file" in r.json()["error"]["message"], r.text
        assert gw.app.live is live and _ask(gw, model="llmroute/file")[0] == 200


def test_response_cache_kept_when_its_section_is_unchanged(fake_server: Any, tmp_path: Path) -> None:
    cfg = _config(fake_server.base_url, tmp_path)
    cfg["cache"] = {"backend": "sqlite", "path": ":memory:", "ttl_s": 600, "semantic": False}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def reason(gw: Any) -> str:
        client = openai.OpenAI(base_url=gw, api_key=TEAM_KEY, max_retries=0, timeout=60)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="fake-weak", messages=[{"role": "user", "content": "cache me please"}], max_tokens=5
            )
            return raw.headers["x-llmroute-reason"]
        finally:
            client.close()

    def lookups(gw: Any) -> list[str]:
        text = httpx.get(f"{gw.root}/metrics", timeout=30).text
        return [line for line in text.splitlines() if line.startswith("llmroute_cache_lookups_total{")]

    with run_gateway(load_config(path), routers={"default": StubRouter()}) as gw:
        gw.app.config_path = str(path)
        gw.path = path
        first = gw.app.live
        assert not reason(gw).startswith("cache") and reason(gw).startswith("cache")
        cfg["models"][0] = {**cfg["models"][0], "timeout_s": 0.75}
        assert _reload(gw, cfg).status_code == 200
        assert gw.app.live.guard.cache is first.guard.cache and reason(gw).startswith("cache")
        # the cache section changed: a new (empty) cache, and the metrics count the new one
        cfg["cache"] = {**cfg["cache"], "ttl_s": 300}
        r = _reload(gw, cfg)
        assert r.status_code == 200 and r.json()["sections"] == ["cache"], r.text
        assert gw.app.live.guard.cache is not first.guard.cache
        assert not reason(gw).startswith("cache")
        assert len(lookups(gw)) == 3  # exact_hit, semantic_hit, miss: one collector, not two
        assert any(line.endswith(" 1.0") and 'result="miss"' in line for line in lookups(gw))


def test_a_worker_rereads_the_file_only_when_it_changed(gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker's (or host's) reload bumps the shared counter; a worker whose running config
    came from the file as it is now does not read and rebuild it again."""
    import llmroute.gateway.admin_keys as admin_mod  # KeyManager reads the config file there

    cfg = dict(gw.cfg)
    cfg["models"] = [{**cfg["models"][0], "timeout_s": 0.75}, cfg["models"][1]]
    assert _reload(gw, cfg).status_code == 200
    reads: list[str] = []
    real = admin_mod.load_config
    monkeypatch.setattr(admin_mod, "load_config", lambda p: reads.append(str(p)) or real(p))
    km = gw.app.keyman
    live = gw.app.live
    km.generation.bump(config=True)  # as a reload elsewhere does
    assert _ask(gw)[0] == 200 and reads == [] and gw.app.live is live
    cfg["aliases"] = {"llmroute/auto": {"router": "default", "candidates": ["fake-weak"]}}
    gw.path.write_text(yaml.safe_dump(cfg))  # another worker reloads this file
    km.generation.bump(config=True)
    assert _ask(gw) == (200, "fake-weak") and reads == [str(gw.path)] and gw.app.live is not live


def test_two_reloads_during_one_request(gw: Any, fake_server: Any) -> None:
    """A runtime replaced twice while its request is in flight: the second replacement (a new
    upstream client) closes nothing the first, still draining runtime uses."""
    app = gw.app
    first = app.live
    with _held_request(gw, fake_server) as result:
        assert first.inflight == 1
        cfg = dict(gw.cfg)
        cfg["models"] = [{**cfg["models"][0], "timeout_s": 0.75}, cfg["models"][1]]
        assert _reload(gw, cfg).status_code == 200  # keeps fake-weak's backend and the client
        second = app.live
        assert second.http is first.http and second.backends["fake-weak"] is first.backends["fake-weak"]
        cfg["server"] = {**cfg["server"], "proxy": "none"}  # a new upstream client, new backends
        assert _reload(gw, cfg).status_code == 200
        assert app.live.http is not first.http
        end = time.monotonic() + 60  # the second runtime had no request: it is closed at once
        while second in app.__dict__.get("_retiring", ()) and time.monotonic() < end:
            time.sleep(0.02)
        assert second not in app.__dict__["_retiring"] and first in app.__dict__["_retiring"]
        assert first.http._pools  # the client the request in flight uses is still open
    assert result == [(200, "fake-weak")]
    end = time.monotonic() + 60  # once that request is done, its runtime and client are closed
    while first in app.__dict__["_retiring"] and time.monotonic() < end:
        time.sleep(0.02)
    assert first not in app.__dict__["_retiring"] and not first.http._pools
    assert _ask(gw, model="fake-weak") == (200, "fake-weak")
