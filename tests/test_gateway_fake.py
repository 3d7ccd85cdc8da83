"""The fake upstream's server-wide latency (the realistic-upstream scenario of benchmarks/gateway.py)
and how the gateway notices client disconnects: a server callback under `llmroute serve`'s protocol,
else a watcher task that ends without a per-request cancellation."""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from conftest import StubRouter, free_port, loopback_config, run_gateway, start_fake_server
from llmroute.gateway import app as app_mod
from llmroute.gateway._uvicorn import DISCONNECT_EXTENSION
from llmroute.gateway.app import Gateway
from llmroute.gateway.config import parse_config
from llmroute.gateway.fake import STATE, main, make_app

CHAT = {"model": "fake-weak", "messages": [{"role": "user", "content": "hello"}]}


def test_latency_is_off_by_default_and_set_by_make_app() -> None:
    assert make_app()[STATE].latency_s == 0.0
    assert make_app(15)[STATE].latency_s == pytest.approx(0.015)
    with pytest.raises(ValueError, match="latency_ms"):
        make_app(-1)


def test_cli_rejects_a_negative_latency() -> None:
    with pytest.raises(SystemExit):
        main(["--latency-ms", "-5"])


def test_control_endpoint_sets_and_reads_the_latency() -> None:
    with start_fake_server() as fs:
        assert httpx.get(fs.url + "/_control/latency").json() == {"ms": 0.0}
        r = httpx.post(fs.url + "/_control/latency", json={"ms": 15})
        assert r.status_code == 200 and r.json() == {"ms": 15.0}
        assert fs.state.latency_s == pytest.approx(0.015)
        assert httpx.get(fs.url + "/_control/latency").json() == {"ms": 15.0}
        for bad in ({"ms": -1}, {"ms": "x"}, {}):
            assert httpx.post(fs.url + "/_control/latency", json=bad).status_code == 400
        httpx.delete(fs.url + "/_control/fault")  # clearing faults keeps the latency
        assert fs.state.latency_s == pytest.approx(0.015)


@pytest.mark.parametrize(
    ("path", "body", "conversation"),
    [
        ("/v1/chat/completions", CHAT, True),
        ("/v1/messages", {"model": "fake-weak", "max_tokens": 8, "messages": CHAT["messages"]}, True),
        ("/v1/embeddings", {"model": "fake-weak", "input": "hello"}, False),
        ("/v1/completions", {"model": "fake-weak", "prompt": "hello"}, False),
    ],
)
def test_every_model_endpoint_reads_counts_and_faults_a_call_alike(
    path: str, body: dict[str, Any], conversation: bool
) -> None:
    """A body that is not a JSON object gets a 400 and is not counted; a call is counted per
    model (per model and last message too on the two conversation endpoints), its body kept as
    the model's last, and a header fault answers instead (counted as well)."""
    with start_fake_server() as fs:
        for raw in (b"[1, 2]", b"{not json"):
            r = httpx.post(fs.url + path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert fs.state.counts == {}
        assert httpx.post(fs.url + path, json=body).status_code == 200
        assert httpx.get(fs.url + "/_control/stats").json() == {"fake-weak": 1}
        assert httpx.get(fs.url + "/_control/last", params={"model": "fake-weak"}).json() == body
        assert fs.state.calls == ({("fake-weak", "hello"): 1} if conversation else {})
        r = httpx.post(fs.url + path, json=body, headers={"x-fake-fault": "503"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert fs.state.counts == {"fake-weak": 2}
        assert fs.state.calls == ({("fake-weak", "hello"): 2} if conversation else {})


def test_answers_wait_for_the_latency_faults_do_not() -> None:
    """With a 5 s latency nothing answers within 0.5 s; a fault still answers at once; the same
    request answers once the latency is back to 0."""
    with start_fake_server() as fs:
        fs.state.latency_s = 5.0
        with httpx.Client(timeout=0.5) as c:
            for path, body in (
                ("/v1/chat/completions", CHAT),
                ("/v1/chat/completions", {**CHAT, "stream": True}),
                ("/v1/messages", {**CHAT, "max_tokens": 8}),
            ):
                with pytest.raises(httpx.ReadTimeout):
                    c.post(fs.url + path, json=body)
            r = c.post(fs.base_url + "/chat/completions", json=CHAT, headers={"x-fake-fault": "503"})
            assert r.status_code == 503
            fs.state.latency_s = 0.0
            r = c.post(fs.base_url + "/chat/completions", json=CHAT)
            assert (
                r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "[fake-weak] hello"
            )


def test_gateway_with_upstream_latency_answers_normally(tmp_path: Any) -> None:
    with start_fake_server() as fs:
        fs.state.latency_s = 0.02
        with run_gateway(loopback_config(fs.base_url, tmp_path), routers={"default": StubRouter()}) as gw:
            r = httpx.post(gw + "/chat/completions", json={**CHAT, "model": "llmroute/auto"}, timeout=10)
            assert r.status_code == 200 and r.headers["x-llmroute-model"] in ("fake-strong", "fake-weak")


@contextlib.contextmanager
def _stock_uvicorn_gateway(cfg: dict[str, Any]) -> Iterator[Any]:
    """The gateway on stock uvicorn (httptools, no `llmroute.on_disconnect` extension)."""
    import uvicorn

    gw = Gateway(parse_config(cfg), routers={"default": StubRouter()})
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            gw,
            host="127.0.0.1",
            port=port,
            loop="asyncio",
            http="httptools",
            lifespan="on",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    end = time.monotonic() + 20
    while not server.started and t.is_alive() and time.monotonic() < end:
        time.sleep(0.02)
    assert server.started
    try:
        yield gw, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(20)


def _record_watchers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []
    init = app_mod._Disconnect.__init__

    def record(self: Any, scope: Any, receive: Any) -> None:
        init(self, scope, receive)
        made.append(self)

    monkeypatch.setattr(app_mod._Disconnect, "__init__", record)
    return made


def _requests(c: httpx.Client, root: str) -> None:
    for i in range(6):
        body = {**CHAT, "model": "llmroute/auto", "stream": i % 2 == 1}
        assert c.post(root + "/v1/chat/completions", json=body).status_code == 200
    r = c.post(root + "/v1/messages", json={**CHAT, "model": "llmroute/auto", "max_tokens": 8})
    assert r.status_code == 200
    # a later request on the same connection runs after every earlier watcher's turn
    assert c.get(root + "/v1/models").status_code == 200


@contextlib.contextmanager
def _garbage() -> Iterator[list[Any]]:
    """Collects what the garbage collector finds unreachable (in reference cycles) meanwhile."""
    found: list[Any] = []
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _request_objects(objs: list[Any]) -> list[Any]:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    return [o for o in objs if isinstance(o, RequestResponseCycle | app_mod._Disconnect | BaseException)]


def _disconnect_mid_request(gw: Any, root: str, fs: Any) -> None:
    """A client that goes away while the upstream is slow: the call is cancelled, the trace says 499."""
    fs.set_fault("fake-weak", "slow", delay=3.0)
    body = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "bye"}]})
    host, port = root.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        while not fs.state.counts.get("fake-weak"):  # the upstream call is under way
            time.sleep(0.01)
    deadline = time.monotonic() + 10
    rec: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rec:
        gw.store.flush_sync(5)
        rec = gw.store.query(status=499, limit=5)
        time.sleep(0.05)
    assert rec and rec[0]["error"] == "client disconnected"
    fs.clear()


def test_llmroute_serve_protocol_calls_back_on_disconnect(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the protocol `llmroute serve` uses, no watcher task per request: the server calls back
    when the client goes away, which cancels the request (and its upstream call)."""
    assert app_mod._DISCONNECT_EXT == DISCONNECT_EXTENSION
    made = _record_watchers(monkeypatch)
    with start_fake_server() as fs:
        cfg = loopback_config(fs.base_url, tmp_path)
        with run_gateway(cfg, routers={"default": StubRouter()}) as gw, httpx.Client(timeout=10) as c:
            with _garbage() as garbage:
                _requests(c, gw.root)
            assert len(made) == 7 and all(w.watcher is None for w in made)
            # no request leaves a reference cycle behind (each one would wait for the collector)
            assert _request_objects(garbage) == []
            _disconnect_mid_request(gw.app, gw.root, fs)


def test_other_servers_use_a_watcher_that_ends_uncancelled(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the extension a watcher task waits for http.disconnect. After a complete response it
    ends on the server's http.disconnect instead of being cancelled (a cancellation leaves a
    CancelledError/traceback cycle holding the request for the garbage collector); a real
    disconnect still cancels the request."""
    made = _record_watchers(monkeypatch)
    with start_fake_server() as fs:
        cfg = loopback_config(fs.base_url, tmp_path)
        with _stock_uvicorn_gateway(cfg) as (gw, root), httpx.Client(timeout=10) as c:
            with _garbage() as garbage:
                _requests(c, root)
            assert _request_objects(garbage) == []
            assert len(made) == 7
            assert all(w.watcher is not None and w.watcher.done() for w in made)
            assert not any(w.watcher.cancelled() for w in made)
            _disconnect_mid_request(gw, root, fs)
