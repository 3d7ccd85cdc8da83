"""Reliability: with one backend failing (each fault type in turn) and one healthy, requests through
`llmroute/auto` never fail; retries, breakers, deadlines and mid-stream failures behave as specified.

The acceptance run (1,000 requests per fault) is in benchmarks/gateway.py; here 200 per fault keep
the suite fast."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import StubRouter, loopback_config, run_gateway
from llmroute.gateway.fake import FAULTS
from llmroute.gateway.reliability import CircuitBreaker

LONG = "Prove that there are infinitely many primes, step by step. " * 4  # the stub router picks fake-strong


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("faults"), breaker_cooldown_s=60)
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        yield url


def _reset(gw: Any, fake_server: Any) -> None:
    fake_server.clear()
    for br in gw.app.executor.breakers.values():
        br.success()


# a 400 (also the echoing one) is the request's fault (returned, not hidden); drip only slows streams down
SERVING_FAULTS = [f for f in FAULTS if f not in ("400", "echo", "drip")]


@pytest.mark.parametrize("fault", SERVING_FAULTS)
def test_no_failed_requests_with_one_faulty_backend(gw: Any, fake_server: Any, fault: str) -> None:
    _reset(gw, fake_server)
    fake_server.set_fault("fake-strong", fault, delay=5.0 if fault == "timeout" else None)
    client = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=30)

    def one(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": f"{LONG} #{i}"}]
        )
        r = raw.parse()
        assert r.choices[0].message.content
        return raw.headers["x-llmroute-model"]

    with ThreadPoolExecutor(16) as pool:
        models = list(pool.map(one, range(200)))
    assert len(models) == 200  # every request succeeded (any failure would have raised)
    if fault == "slow":
        assert set(models) <= {"fake-strong", "fake-weak"}  # 0.5 s first byte = the model's timeout
    else:
        assert set(models) == {"fake-weak"}, models
        # the breaker opened: the failing backend stopped receiving traffic (only requests already in
        # flight when it opened, at most 16 threads x 2 attempts, still reached it)
        assert gw.app.executor.breakers["fake-strong"].state == "open"
        assert fake_server.state.counts.get("fake-strong", 0) < 100, fake_server.state.counts
    _reset(gw, fake_server)


@pytest.mark.parametrize("fault", ["500", "503", "429", "timeout", "reset", "badjson", "slow"])
def test_streams_fall_back_before_the_first_token(gw: Any, fake_server: Any, fault: str) -> None:
    _reset(gw, fake_server)
    fake_server.set_fault("fake-strong", fault, delay=5.0 if fault in ("timeout", "slow") else None)
    client = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=30)
    for i in range(5):
        with client.chat.completions.with_streaming_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": f"{LONG} {i}"}], stream=True
        ) as resp:
            assert resp.headers["x-llmroute-model"] == "fake-weak"
            assert "fallback=fake-weak" in resp.headers["x-llmroute-reason"]
            text = "".join(ch.choices[0].delta.content or "" for ch in resp.parse() if ch.choices)
        assert text.startswith("[fake-weak]")
    _reset(gw, fake_server)


def test_stream_cut_after_first_token_ends_with_error_event(gw: Any, fake_server: Any) -> None:
    _reset(gw, fake_server)
    fake_server.set_fault("fake-strong", "cut")
    body = {"model": "llmroute/auto", "messages": [{"role": "user", "content": LONG}], "stream": True}
    with httpx.stream("POST", gw + "/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["x-llmroute-model"] == "fake-strong"
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    assert '"code":"stream_interrupted"' in lines[-2]
    assert any('"content":"[fake-st' in ln for ln in lines[:-2])  # content reached the client first
    # the openai client surfaces it as an error, not a hang
    client = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=10)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(**body):
            pass
    _reset(gw, fake_server)


def test_retry_same_backend_for_a_transient_error(gw: Any, fake_server: Any) -> None:
    _reset(gw, fake_server)
    fake_server.set_fault("fake-weak", "503", count=1)
    c = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="llmroute/auto", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-llmroute-model"] == "fake-weak"
    assert fake_server.state.counts == {"fake-weak": 2}
    _reset(gw, fake_server)


def test_all_backends_down_gives_clean_error_within_deadline(fake_server: Any, tmp_path: Path) -> None:
    fake_server.clear()
    cfg = loopback_config(fake_server.base_url, tmp_path, request_timeout_s=1.5)
    for m in cfg["models"]:
        m["timeout_s"] = 5
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        fake_server.set_fault("*", "timeout", delay=20)
        r = httpx.post(
            url + "/chat/completions",
            json={"model": "llmroute/auto", "messages": [{"role": "user", "content": "x"}]},
            timeout=30,
        )
        # a clean 504, never a hang (a hang would raise the client's own timeout here)
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        fake_server.set_fault("*", "500")
        r = httpx.post(
            url + "/chat/completions",
            json={"model": "fake-weak", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 502 and "upstream error 500" in r.json()["error"]["message"]
        r = httpx.post(
            url + "/chat/completions",
            json={"model": "fake-weak", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 502 and r.json()["error"]["type"]
    fake_server.clear()


def test_breaker_half_open_probe_closes_after_recovery(fake_server: Any, tmp_path: Path) -> None:
    fake_server.clear()
    cfg = loopback_config(fake_server.base_url, tmp_path, breaker_cooldown_s=0.3, retries=0)
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        fake_server.set_fault("fake-strong", "500")
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        for _ in range(5):
            c.chat.completions.create(model="llmroute/auto", messages=[{"role": "user", "content": LONG}])
        assert httpx.get(url.root + "/healthz").json()["breakers"]["fake-strong"] == "open"
        fake_server.clear()
        time.sleep(0.4)
        raw = c.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": LONG}]
        )
        assert raw.headers["x-llmroute-model"] == "fake-strong"  # the half-open probe went through
        assert httpx.get(url.root + "/healthz").json()["breakers"]["fake-strong"] == "closed"
        text = httpx.get(url.root + "/metrics").text
        assert 'llmroute_breaker_transitions_total{model="fake-strong",state="open"}' in text
    fake_server.clear()


def test_circuit_breaker_states() -> None:
    now = [0.0]
    br = CircuitBreaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    assert br.allow()
    br.failure()
    assert br.state == "closed" and br.allow()
    br.failure()
    assert br.state == "open" and not br.allow()
    now[0] = 10.5
    assert br.allow() and br.state == "half_open"
    assert not br.allow()  # one probe at a time
    br.failure()
    assert br.state == "open" and not br.allow()
    now[0] = 21.0
    assert br.allow()
    br.success()
    assert br.state == "closed" and br.allow() and br.allow()


def test_client_disconnect_mid_stream_cancels_upstream(gw: Any, fake_server: Any) -> None:
    """A streaming client that goes away after the first tokens: the upstream stream is closed
    (its connection is not returned to the pool) and the trace records the disconnect."""
    import socket

    _reset(gw, fake_server)
    fake_server.set_fault("fake-weak", "drip", delay=0.3)
    body = json.dumps(
        {"model": "fake-weak", "stream": True, "messages": [{"role": "user", "content": "drip"}]}
    )
    host, port = gw.root.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body.encode()
    )
    first = s.recv(4096)
    assert b" 200 " in first.split(b"\r\n")[0] and b"x-llmroute-request-id" in first
    rid = next(
        ln.split(b": ")[1].decode() for ln in first.split(b"\r\n") if ln.startswith(b"x-llmroute-request-id")
    )
    s.close()
    deadline = time.monotonic() + 10
    rec = None
    while time.monotonic() < deadline and rec is None:
        gw.app.store.flush_sync(5)
        rec = gw.app.store.get(rid)
        time.sleep(0.05)
    assert rec is not None and rec["status"] == 499 and rec["error"] == "client disconnected"
    _reset(gw, fake_server)


def _five_model_config(backend_url: str, tmp_path: Path, **server: Any) -> dict[str, Any]:
    """Five candidates (m0..m4, all on `backend_url`) behind `llmroute/many`, ranked m0 first."""
    cfg = loopback_config(backend_url, tmp_path, **server)
    names = [f"m{i}" for i in range(5)]
    cfg["models"] = [
        {
            "name": n,
            "base_url": backend_url,
            # strictly dearer each step, same router column: the ranking is m0, m1, ... for any prompt
            "input_per_mtok": 0.1 * (i + 1),
            "output_per_mtok": 0.1 * (i + 1),
            "timeout_s": 2,
            "router_model": "weak",
        }
        for i, n in enumerate(names)
    ]
    cfg["aliases"] = {"llmroute/many": {"router": "default", "candidates": names}}
    return cfg


@pytest.mark.parametrize("max_fallbacks", [0, 1, 2])
def test_max_fallbacks_caps_the_models_tried(fake_server: Any, tmp_path: Path, max_fallbacks: int) -> None:
    """Every upstream failing: exactly 1 + max_fallbacks distinct models are called, once each
    (retries=0), and the client gets the upstream failure."""
    fake_server.clear()
    cfg = _five_model_config(fake_server.base_url, tmp_path, retries=0, max_fallbacks=max_fallbacks)
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        fake_server.set_fault("*", "500")
        r = httpx.post(
            url + "/chat/completions",
            json={"model": "llmroute/many", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        counts = dict(fake_server.state.counts)
    fake_server.clear()
    assert r.status_code == 502, r.text
    assert len(counts) == 1 + max_fallbacks, counts
    assert all(v == 1 for v in counts.values()), counts


class _StatusUpstream:
    """An OpenAI-shaped upstream on 127.0.0.1 that answers every request with one HTTP status and
    counts the requests it got."""

    def __init__(self, status: int) -> None:
        import http.server
        import threading

        owner = self
        self.status = status
        self.calls = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.calls += 1
                body = json.dumps({"error": {"message": "no", "type": "x", "code": None}}).encode()
                self.send_response(owner.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _StatusUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [400, 401, 403])
def test_client_and_auth_errors_from_upstream_are_not_retried(tmp_path: Path, status: int) -> None:
    """A 400/401/403 from the upstream is not retried on the same model, whatever `server.retries`."""
    with _StatusUpstream(status) as up:
        cfg = loopback_config(up.base_url, tmp_path, retries=3, backoff_s=0.001)
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
            r = httpx.post(
                url + "/chat/completions",
                json={"model": "fake-weak", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
        assert r.status_code == (400 if status == 400 else 502), r.text
        assert up.calls == 1


@pytest.mark.parametrize("fault", ["500", "503", "429"])
@pytest.mark.parametrize("retries", [0, 2])
def test_transient_upstream_errors_are_retried_per_server_retries(
    fake_server: Any, tmp_path: Path, fault: str, retries: int
) -> None:
    """A 500/503/429 that persists: the model is called exactly 1 + retries times."""
    fake_server.clear()
    cfg = loopback_config(
        fake_server.base_url, tmp_path, retries=retries, backoff_s=0.001, breaker_failures=10
    )
    with run_gateway(cfg, routers={"default": StubRouter()}) as url:
        fake_server.set_fault("fake-weak", fault)
        r = httpx.post(
            url + "/chat/completions",
            json={"model": "fake-weak", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        counts = dict(fake_server.state.counts)
    fake_server.clear()
    assert r.status_code in (429, 502), r.text
    assert counts == {"fake-weak": 1 + retries}, counts
