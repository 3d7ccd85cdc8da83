"""The processes of benchmarks/hardening.py (see its docstring): the fake server and `llmroute
serve --workers N` as subprocesses on 127.0.0.1, the gateway config they share (the two fake models
of examples/loopback.yaml with their prices and context windows, API keys with budgets), and the
budget books a restarted gateway reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from llmroute.gateway.auth import hash_key

ROOT = Path(__file__).resolve().parents[1]
PRICES = {"fake-strong": (10.0, 30.0), "fake-weak": (0.2, 0.2)}  # USD per million tokens (in, out)
STRONG_WINDOW, WEAK_WINDOW = 8000, 4000


# ---- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(fake_url: str, folder: Path, keys: list[dict[str, Any]], **server: Any) -> dict[str, Any]:
    """The gateway config: examples/loopback.yaml's two fake models (with context windows), the
    shipped router, `keys`, a SQLite store in `folder`."""
    return {
        "server": {"request_timeout_s": 60, "retries": 1, "backoff_s": 0.01, **server},
        "models": [
            {
                "name": name,
                "provider": "openai",
                "base_url": fake_url,
                "input_per_mtok": PRICES[name][0],
                "output_per_mtok": PRICES[name][1],
                "timeout_s": 30,
                "context_window": window,
                "router_model": column,
            }
            for name, window, column in (
                ("fake-strong", STRONG_WINDOW, "gpt-4-1106-preview"),
                ("fake-weak", WEAK_WINDOW, "mistralai/mistral-7b-chat"),
            )
        ],
        "routers": {"default": "builtin:default"},
        "aliases": {
            "llmroute/auto": {"router": "default", "tradeoff": 0, "candidates": ["fake-strong", "fake-weak"]}
        },
        "keys": keys,
        "store": {"url": f"sqlite:///{folder / 'traces.sqlite'}"},
        "trace": {"store_prompts": False},
    }


def key_entry(key_id: str, budget: float) -> dict[str, Any]:
    return {"id": key_id, "key_sha256": hash_key(secret(key_id)), "budget_usd_day": budget}


def secret(key_id: str) -> str:
    return f"sk-hardening-{key_id}-0123456789abcdef"


class Served:
    """`llmroute serve --workers N` in its own process group (so kill -9 reaches every worker)."""

    def __init__(self, cfg: dict[str, Any], folder: Path, workers: int, tmpdir: Path) -> None:
        self.cfg_path = folder / "gateway.yaml"
        self.cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log = folder / f"serve-{self.port}.log"
        env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1")
        env.pop("LLMROUTE_SHARED_DIR", None)
        cmd = [sys.executable, "-c", "from llmroute.cli import app; app()", "serve", "--config",
               str(self.cfg_path), "--port", str(self.port), "--workers", str(workers),
               "--log-level", "info"]  # fmt: skip
        self._fh = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited early:\n{self.log.read_text()[-3000:]}")
            if self.log.read_text(errors="replace").count("Application startup complete") >= workers:
                return
            time.sleep(0.2)
        raise SystemExit(f"serve did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._fh.close()

    def kill9(self) -> None:
        """SIGKILL to the whole process group; returns once every process of it is gone (reaped),
        as it would be long before an operator restarts the gateway."""
        group = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == self.proc.pid]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._fh.close()
        end = time.monotonic() + 30
        while time.monotonic() < end and any(os.path.exists(f"/proc/{p}") for p in group):
            time.sleep(0.05)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


@contextlib.contextmanager
def fake_server(folder: Path) -> Iterator[str]:
    port = free_port()
    fh = open(folder / "fake.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmroute.gateway.fake", "--port", str(port)],
        stdout=fh,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/v1/models", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise SystemExit("the fake server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        fh.close()


def read_books(cfg_path: Path, key_ids: list[str]) -> dict[str, dict[str, float]]:
    """The budget books a restarted gateway starts from, per key (a `Gateway` built in this
    process on the same config, started and stopped), and the trace rows' cost per key."""
    from llmroute.gateway.app import Gateway
    from llmroute.gateway.config import load_config

    async def main() -> dict[str, dict[str, float]]:
        gw = Gateway(load_config(cfg_path))
        await gw.startup()
        try:
            out = {k: dict(gw.budgets.usage(k)) for k in key_ids}  # type: ignore[union-attr]
            gw.store.flush_sync(10)
            for k in key_ids:
                rows = gw.store.query(key_id=k, limit=None)
                out[k]["trace_rows"] = float(len(rows))
                out[k]["trace_rows_200"] = float(sum(r["status"] == 200 for r in rows))
                out[k]["trace_cost"] = float(sum(r["cost_usd"] or 0.0 for r in rows))
            return out
        finally:
            await gw.shutdown()

    env_before = os.environ.pop("LLMROUTE_SHARED_DIR", None)
    try:
        return asyncio.run(main())
    finally:
        if env_before is not None:
            os.environ["LLMROUTE_SHARED_DIR"] = env_before
