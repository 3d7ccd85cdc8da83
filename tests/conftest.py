"""Shared fixtures: real servers on 127.0.0.1 (a free port each), started and stopped by the tests.

- `free_port()`: an unused TCP port on 127.0.0.1.
- `fake_server` (module scope): the project's fake OpenAI/Anthropic server in a background thread;
  `.base_url` (".../v1"), `.url`, `.state` (`FakeState`: `.faults`, `.counts`, `.last`),
  `.set_fault(model, fault, count=None, delay=None)`, `.clear()`.
- `run_gateway(config, routers=None)`: context manager serving a `Gateway` with uvicorn in a
  thread; yields the gateway's base URL (".../v1") and exposes the app as `.app`.
- `StubRouter`: a tiny deterministic router (`.models`, `.estimate`) for gateway tests that do not
  need a trained one: the strong model's expected quality rises with prompt length.
- `Replica(config path, tmp)`: an `llmroute serve` process (one worker) on a free port.
- `RedisProc` / `redis_proc` (module scope): a throwaway `redis-server` on a free port with its
  append-only file in a temporary folder (`.url`, `.stop()`, `.start()` again on the same data);
  the fixture skips when redis-server is not installed.
- `postgres_url` (session scope): a throwaway Postgres (`pgserver`) or `LLMROUTE_TEST_POSTGRES_URL`;
  skips with the reason when neither works. `postgres_db` (function scope): the URL of a new, empty
  database on that server (`new_postgres_database(url)`), for tests that count every row.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StubRouter:
    """Deterministic two-column router: 'strong' is better on long prompts, 'weak' is cheap."""

    def __init__(self) -> None:
        self.models = ["strong", "weak"]

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(prompts)
        q = np.empty((n, 2))
        lengths = np.array([len(p) for p in prompts], dtype=float)
        q[:, 0] = 0.6 + 0.3 * np.minimum(lengths / 200.0, 1.0)
        q[:, 1] = 0.62 - 0.3 * np.minimum(lengths / 200.0, 1.0)
        c = np.tile([1e-3, 1e-5], (n, 1))
        return q, c


class RedisProc:
    """A throwaway redis-server that can be stopped and started again on the same port and data."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Any = None

    def start(self) -> None:
        from llmroute.gateway.state import spawn_redis_server

        self.proc = spawn_redis_server(self.port, str(self.folder))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProc]:
    from llmroute.gateway.state import redis_server_binary

    if redis_server_binary() is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server; `make test` does it)"
        )
    rp = RedisProc(tmp_path_factory.mktemp("redis"))
    rp.start()
    try:
        yield rp
    finally:
        rp.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway Postgres for the test session, started with the `pgserver` package (Postgres
    binaries in a wheel; dev extra) over a Unix socket and deleted afterwards, or the server that
    `LLMROUTE_TEST_POSTGRES_URL` names. Skips with the reason when neither works (no
    pgserver/asyncpg, or the server cannot start). As root, pgserver runs Postgres as a system user
    `pgserver` (initdb refuses root), who cannot enter pytest's own temporary folders (mode 0700
    under /tmp/pytest-of-root): the data folder lives in a folder of its own that others may enter."""
    import shutil
    import tempfile
    import warnings

    pytest.importorskip(
        "asyncpg", reason="the Postgres store needs asyncpg (pip install 'llmroute[postgres]')"
    )
    url = os.environ.get("LLMROUTE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    try:
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR unset, falls back to /tmp
            warnings.simplefilter("ignore")
            import pgserver  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("no Postgres: install pgserver (dev extra) or set LLMROUTE_TEST_POSTGRES_URL")
    parent = Path(tempfile.mkdtemp(prefix="llmroute-pg-"))
    parent.chmod(0o755)  # as root, Postgres runs as the user `pgserver`, who must reach the data
    try:
        try:
            server = pgserver.get_server(parent / "data", cleanup_mode="delete")
        except Exception as e:  # initdb/pg_ctl failures, no useradd as root, a read-only /tmp, ...
            pytest.skip(f"cannot start a throwaway Postgres with pgserver: {type(e).__name__}: {e}")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def new_postgres_database(url: str) -> str:
    """Create a new, empty database on the server at `url`; returns its URL (same server, user and
    query string, another database name)."""
    import asyncio
    import urllib.parse

    import asyncpg  # type: ignore[import-not-found]

    name = "t_" + os.urandom(6).hex()

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    asyncio.run(create())
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


@pytest.fixture
def postgres_db(postgres_url: str) -> str:
    """The URL of a new, empty database on the test session's Postgres."""
    return new_postgres_database(postgres_url)


class Replica:
    """`llmroute serve --config PATH` (one worker) on a free port in a subprocess, TMPDIR `tmp`;
    `.ready` is set once it has started (`.lines`: its log), `.root` its URL, `.stop()`."""

    def __init__(self, path: Path, tmp: Path) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
        env.pop("LLMROUTE_SHARED_DIR", None)
        cmd = [sys.executable, "-c", "from llmroute.cli import app; app()", "serve", "--config", str(path),
               "--port", str(self.port), "--log-level", "info"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "Application startup complete" in line:
                self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class FakeServer:
    url: str
    base_url: str
    state: Any
    port: int

    def set_fault(self, model: str, fault: str, count: int | None = None, delay: float | None = None) -> None:
        self.state.faults[model] = {"fault": fault, "count": count, "delay": delay}

    def clear(self) -> None:
        self.state.faults.clear()
        self.state.counts.clear()


@contextlib.contextmanager
def start_fake_server() -> Iterator[FakeServer]:
    """Run the fake server on a free port in a background thread (`llmroute.gateway.fake.serve_in_thread`)."""
    from llmroute.gateway.fake import serve_in_thread

    with serve_in_thread() as fake:
        yield FakeServer(fake.url, fake.base_url, fake.state, fake.port)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeServer]:
    with start_fake_server() as fs:
        yield fs


class GatewayHandle(str):
    """The gateway base URL (".../v1"), with the app and root URL attached."""

    app: Any
    root: str


@contextlib.contextmanager
def run_gateway(config: Any, routers: dict[str, Any] | None = None) -> Iterator[GatewayHandle]:
    """Serve a `Gateway` built from `config` (a `GatewayConfig` or a dict) with uvicorn in a thread."""
    import uvicorn

    from llmroute.gateway._uvicorn import CoalescingHttpToolsProtocol
    from llmroute.gateway.app import Gateway
    from llmroute.gateway.config import GatewayConfig, parse_config

    cfg = config if isinstance(config, GatewayConfig) else parse_config(config)
    gw = Gateway(cfg, routers=routers)
    port = free_port()
    # the protocol `llmroute serve` uses (one socket write per non-streamed response)
    server = uvicorn.Server(
        uvicorn.Config(
            gw,
            host="127.0.0.1",
            port=port,
            loop="asyncio",
            http=CoalescingHttpToolsProtocol,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
    )
    t = threading.Thread(target=server.run, daemon=True, name="gateway")
    t.start()
    end = time.monotonic() + 20
    while not server.started and t.is_alive() and time.monotonic() < end:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("gateway did not start")
    h = GatewayHandle(f"http://127.0.0.1:{port}/v1")
    h.app = gw
    h.root = f"http://127.0.0.1:{port}"
    try:
        yield h
    finally:
        server.should_exit = True
        t.join(20)


def loopback_config(backend_url: str, tmp_path: Any, **server: Any) -> dict[str, Any]:
    """A loopback-style config dict (fake-strong / fake-weak on the stub router's columns)."""
    return {
        "server": {
            "request_timeout_s": 10,
            "retries": 1,
            "backoff_s": 0.001,
            "breaker_failures": 3,
            "breaker_cooldown_s": 30,
            **server,
        },
        "models": [
            {
                "name": "fake-strong",
                "base_url": backend_url,
                "input_per_mtok": 10,
                "output_per_mtok": 30,
                "timeout_s": 0.5,
                "router_model": "strong",
            },
            {
                "name": "fake-weak",
                "base_url": backend_url,
                "input_per_mtok": 0.2,
                "output_per_mtok": 0.2,
                # fake-strong's short timeout is what the fault tests fall back from; fake-weak is the
                # fallback target and must not time out on a loaded 2-core CI box
                "timeout_s": 5.0,
                "router_model": "weak",
            },
        ],
        "routers": {"default": "builtin:default"},
        "aliases": {"llmroute/auto": {"router": "default", "candidates": ["fake-strong", "fake-weak"]}},
        "store": {"url": f"sqlite:///{tmp_path}/traces.sqlite", "flush_interval_s": 0.05},
    }


def anthropic_model(
    fake_url: str, key_env: str, *, timeout_s: float = 5, name: str = "claude-fake"
) -> dict[str, Any]:
    """A model entry for the fake server's Anthropic Messages API (`claude-x` upstream, priced like a
    mid-size Claude, on the stub router's 'strong' column), its key read from `key_env`."""
    return {
        "name": name,
        "provider": "anthropic",
        "base_url": fake_url,
        "api_key_env": key_env,
        "upstream_model": "claude-x",
        "input_per_mtok": 3,
        "output_per_mtok": 15,
        "router_model": "strong",
        "timeout_s": timeout_s,
    }


@pytest.fixture(scope="module")
def anthropic_gw(
    fake_server: FakeServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayHandle]:
    """A gateway whose `llmroute/claude` alias routes between an Anthropic model (`claude-fake`, on the
    fake server's /v1/messages) and `fake-weak`, with the stub router."""
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("anthropic"))
    cfg["models"].append(anthropic_model(fake_server.url, "LLMROUTE_TEST_ANTHROPIC_KEY", timeout_s=2))
    cfg["aliases"]["llmroute/claude"] = {"router": "default", "candidates": ["claude-fake", "fake-weak"]}
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMROUTE_TEST_ANTHROPIC_KEY", "sk-ant-test")
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as url:
            yield url
    finally:
        mp.undo()
