"""The fake upstream's server-wide latency (the realistic-upstream scenario of benchmarks/gateway.py)
and the gateway's disconnect watcher ending without a per-request cancellation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conftest import StubRouter, loopback_config, run_gateway, start_fake_server
from llmroute.gateway import app as app_mod
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


def test_disconnect_watchers_end_without_being_cancelled(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each completion request starts a watcher for client disconnects. After a complete response
    it ends on the server's http.disconnect instead of being cancelled (a cancellation leaves a
    CancelledError/traceback cycle holding the request for the garbage collector)."""
    made: list[Any] = []
    init = app_mod._Disconnect.__init__

    def record(self: Any, receive: Any) -> None:
        init(self, receive)
        made.append(self)

    monkeypatch.setattr(app_mod._Disconnect, "__init__", record)
    with start_fake_server() as fs:
        cfg = loopback_config(fs.base_url, tmp_path)
        with run_gateway(cfg, routers={"default": StubRouter()}) as gw, httpx.Client(timeout=10) as c:
            for i in range(6):
                body = {**CHAT, "model": "llmroute/auto", "stream": i % 2 == 1}
                assert c.post(gw + "/chat/completions", json=body).status_code == 200
            r = c.post(gw + "/messages", json={**CHAT, "model": "llmroute/auto", "max_tokens": 8})
            assert r.status_code == 200
            # a later request on the same connection runs after every earlier watcher's turn
            assert c.get(gw + "/models").status_code == 200
            assert len(made) == 7
            assert all(w.watcher.done() and not w.watcher.cancelled() for w in made)
