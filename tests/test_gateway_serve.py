"""`llmroute serve` as a new user meets it (issue 10, item 6): a real process on 127.0.0.1.

- the banner prints only once the gateway answers, and its `try:` line is a command that works;
- `--fake-upstream` with examples/loopback.yaml (`make demo`) answers chat requests without any
  API key;
- a busy port is one clear line and exit status 1, not a traceback;
- one warning line per model without credentials and per alias whose candidates all map to one
  router column.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import yaml

from conftest import free_port
from llmroute.gateway.config import parse_config
from llmroute.gateway.serve import banner, startup_warnings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LLMROUTE = str(Path(sys.executable).parent / "llmroute")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "LLMROUTE_BACKEND_URL"}
    env.update(LLMROUTE_STORE_URL=f"sqlite:///{tmp_path}/traces.sqlite", **extra)
    return env


class Served:
    """A running `llmroute serve`: its stderr lines so far (`lines`) and its process."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def until(self, prefix: str, timeout_s: float = 90.0) -> str:
        """Read stderr lines until one starts with `prefix`; return it."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                line = self._q.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("serve exited:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r}:\n" + "\n".join(self.lines))


@contextlib.contextmanager
def _serve(args: list[str], env: dict[str, str]) -> Iterator[Served]:
    proc = subprocess.Popen(
        [LLMROUTE, "serve", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield Served(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _run_try_line(line: str) -> bytes:
    """Run the banner's suggested curl command (no shell: split as a shell would)."""
    argv = shlex.split(line.removeprefix("try: "))
    assert argv[0] == "curl"
    return subprocess.run(argv, capture_output=True, timeout=30, check=True).stdout


def test_demo_answers_chat_without_keys_and_banner_means_ready(tmp_path: Path) -> None:
    port = free_port()
    args = ["--config", str(EXAMPLES / "loopback.yaml"), "--fake-upstream", "--port", str(port)]
    with _serve(args, _env(tmp_path)) as s:
        first = s.until("llmroute gateway on")
        # the banner is printed only once the gateway answers: no retry needed
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["status"] == "ok"
        assert first.startswith(f"llmroute gateway on http://127.0.0.1:{port} (2 models")
        try_line = s.until("try: ")
        assert not any(line.startswith("warning:") for line in s.lines)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        r = c.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": "hello"}]
        )
        assert r.parse().choices[0].message.content == f"[{r.headers['x-llmroute-model']}] hello"
        if shutil.which("curl"):
            out = orjson.loads(_run_try_line(try_line))
            assert out["choices"][0]["message"]["content"].startswith("[fake-")


def test_make_demo_runs_the_demo_command() -> None:
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    # under `make test` this is a sub-make: without --no-print-directory it adds "Entering/Leaving
    # directory" lines, and the environment's MAKEFLAGS must not leak into the dry run
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    r = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo", "PORT=8123"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=env,
    )
    (cmd,) = [line for line in r.stdout.splitlines() if "llmroute serve" in line]
    assert "llmroute serve --config examples/loopback.yaml --fake-upstream" in cmd and "--port 8123" in cmd


def test_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [LLMROUTE, "serve", "--config", str(EXAMPLES / "loopback.yaml"), "--port", str(port)],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}: port {port} is already in use")
    assert "--port" in lines[0] and "Traceback" not in r.stderr and "llmroute gateway on" not in r.stderr


def _warning_config(tmp_path: Path) -> Path:
    model = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "input_per_mtok": 1.0}
    cfg = {
        "models": [
            dict(
                model, name="hosted", api_key_env="LLMROUTE_TEST_UNSET_KEY", router_model="gpt-4-1106-preview"
            ),
            dict(model, name="big", router_model="gpt-4-1106-preview", input_per_mtok=5.0),
            dict(model, name="small", router_model="mistralai/mistral-7b-chat"),
        ],
        "aliases": {
            "team/same": {"router": "default", "candidates": ["hosted", "big"]},
            "team/mixed": {"router": "default", "candidates": ["big", "small"]},
        },
        "keys": [{"id": "k", "key_sha256": "0" * 64}],
        "store": {"url": "memory://"},
    }
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_serve_warns_once_per_problem_then_prints_a_working_try_line(tmp_path: Path) -> None:
    port = free_port()
    with _serve(["--config", str(_warning_config(tmp_path)), "--port", str(port)], _env(tmp_path)) as s:
        s.until("llmroute gateway on")
        try_line = s.until("try: ")
        warnings = [line for line in s.lines if line.startswith("warning:")]
        assert len(warnings) == 2, s.lines
        assert warnings[0].startswith("warning: model 'hosted': LLMROUTE_TEST_UNSET_KEY is not set")
        assert "team/same" in warnings[1] and "'gpt-4-1106-preview'" in warnings[1]
        assert "cheapest always wins" in warnings[1] and "router_model" in warnings[1]
        # not a chat line (no model here answers): a routing decision, with the key header
        assert f"http://127.0.0.1:{port}/v1/route" in try_line and "$LLMROUTE_API_KEY" in try_line


def test_make_run_banner_try_line_works(tmp_path: Path) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    port = free_port()
    env = _env(tmp_path, LOCAL_LLM_URL=f"http://127.0.0.1:{free_port()}/v1")
    with _serve(["--config", str(EXAMPLES / "llmroute.yaml"), "--port", str(port)], env) as s:
        s.until("llmroute gateway on")
        decision = orjson.loads(_run_try_line(s.until("try: ")))
    assert decision["object"] == "llmroute.decision" and decision["alias"] == "llmroute/auto"
    assert decision["model"] in {c["model"] for c in decision["ranked"]}


def test_startup_warnings_and_banner_units() -> None:
    base = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
    cfg = parse_config(
        {
            "models": [
                dict(base, name="a", api_key_env="K_A", router_model="col"),
                dict(base, name="b", router_model="col"),
            ],
            "aliases": {"all": {"router": "default"}},  # no candidates: every model
        }
    )
    assert startup_warnings(cfg, env={"K_A": "set"}) == [
        "alias 'all': all its candidates (a, b) map to one router column 'col', so the router cannot "
        "tell them apart and the cheapest always wins; give them different router_model columns "
        "(the closest in strength) or train a router on your own models"
    ]
    w = startup_warnings(cfg, {"all": ["a"]}, env={})  # the alias routes one model: nothing to tell apart
    assert len(w) == 1 and w[0].startswith("model 'a': K_A is not set")
    # two of three candidates share a column: said once, naming the one that wins
    three = parse_config(
        {
            "models": [
                dict(base, name="a", router_model="col", input_per_mtok=2.0),
                dict(base, name="b", router_model="col", input_per_mtok=1.0),
                dict(base, name="c", router_model="other"),
            ],
            "aliases": {"mix": {"router": "default"}},
        }
    )
    (w,) = startup_warnings(three, env={})
    assert w.startswith("alias 'mix': a, b share the router column 'col'")
    assert "b (the cheapest) is picked over a" in w
    lines = banner(cfg, "0.0.0.0", 9999, workers=2, chat=True)
    assert lines[0] == "llmroute gateway on http://0.0.0.0:9999 (2 models; aliases: all; 2 workers)"
    argv = shlex.split(lines[1].removeprefix("try: "))
    assert argv[:2] == ["curl", "-s"] and argv[2] == "http://127.0.0.1:9999/v1/chat/completions"
    assert orjson.loads(argv[-1]) == {
        "model": "all",
        "messages": [{"role": "user", "content": "Hello! Who are you?"}],
    }
