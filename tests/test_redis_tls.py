"""A rediss:// URL's TLS options (a private CA, no verification) apply to the gateway's own async
Redis connection (`llmroute.gateway.redis_pipe._AutoPipe`, the shared state's hot path) as they
do to redis-py's clients beside it: a real `redis-server` serving TLS only, with a throwaway CA
(trustme), on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port
from llmroute.gateway.redis_pipe import _AutoPipe, tls_context
from llmroute.gateway.state import redis_server_binary


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(TLS port, CA file) of a redis-server that speaks TLS only."""
    trustme = pytest.importorskip("trustme")
    exe = redis_server_binary()
    if exe is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server; `make test` does it)"
        )
    d = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    port = free_port()
    cmd = [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "",
           "--tls-cert-file", str(d / "cert.pem"), "--tls-key-file", str(d / "key.pem"),
           "--tls-ca-cert-file", str(d / "ca.pem"), "--tls-auth-clients", "no", "--daemonize", "no",
           "--loglevel", "warning", "--protected-mode", "no"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.skip(f"this redis-server cannot serve TLS: {err.strip()[-200:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError("the TLS redis-server did not listen within 30 s") from None
                time.sleep(0.05)
        yield port, d / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(30)


def _ping(url: str) -> object:
    async def go() -> object:
        pipe = _AutoPipe(url, 10.0, asyncio.get_running_loop())
        try:
            return await pipe.call("PING")
        finally:
            pipe.close()

    return asyncio.run(go())


def test_a_private_ca_in_the_url_is_trusted(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    assert _ping(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}") == "PONG"
    redis = pytest.importorskip("redis")  # redis-py takes the same URL
    client = redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_without_the_ca_the_certificate_is_refused(tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    with pytest.raises(ConnectionError, match="cannot connect to Redis: SSLCertVerificationError"):
        _ping(f"rediss://127.0.0.1:{port}/0")


def test_ssl_cert_reqs_none_skips_verification(tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    assert _ping(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none") == "PONG"


def test_tls_context_follows_redis_py() -> None:
    from redis.connection import parse_url

    strict = tls_context(parse_url("rediss://h:6380/0"))
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    loose = tls_context(parse_url("rediss://h:6380/0?ssl_cert_reqs=none"))
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    named = tls_context(parse_url("rediss://h:6380/0?ssl_check_hostname=false"))
    assert named.verify_mode == ssl.CERT_REQUIRED and not named.check_hostname
    with pytest.raises(ValueError, match="ssl_cert_reqs must be none, optional or required"):
        tls_context(parse_url("rediss://h:6380/0?ssl_cert_reqs=maybe"))
