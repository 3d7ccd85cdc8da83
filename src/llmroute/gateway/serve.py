"""`llmroute serve`: run the gateway with uvicorn (uvloop + httptools), one or more workers.

Non-streamed responses go out in one socket write (`llmroute.gateway._uvicorn`); granian was measured
and was slower for this app on the reference 2-core box (see BENCHMARKS.md, Gateway).

The config is validated before the server starts; errors name the field and what is allowed.
Once the app is built, everything loaded so far (routers, encoder vocabularies, config: ~100k
objects) is moved out of the cyclic garbage collector's reach with `gc.freeze()`; otherwise each
full collection walks all of it (~50 ms on the reference box, a p99 spike and ~5-8 % of the CPU
under load); young collections then run rarely (`GC_GEN0_THRESHOLD`).
With `--workers N > 1` each worker process builds its own `Gateway` from the same file (the
path travels in the `LLMROUTE_CONFIG` environment variable to `create_app_from_env`). `serve`
also creates a private temporary folder, named to the workers in `LLMROUTE_SHARED_DIR` and removed
at exit, where the workers share rate limits (`llmroute.gateway.ledger`; budgets live in the
persistent ledger beside the trace store) and publish their metrics so that any worker's /metrics
shows the totals (`llmroute.gateway.metrics`). The folder's name carries the pid and start time of
the `serve` process (`llmroute-workers-<pid>-<start>-*`); a `serve` killed with SIGKILL cannot
remove it, so each start removes such folders of this user whose process is gone
(`remove_stale_worker_dirs`).

Start-up, in order: the config is validated (exit 2 on an error naming the field); the port is
bound (a busy or forbidden port: one line naming it and what to do, exit 1); the app is built;
one warning line per model whose `api_key_env` is unset and per alias whose candidates all map
to one router column (`startup_warnings`); the server starts, and only once it answers the
banner prints (`banner`: the address, the models and aliases, and one `curl` line to try).
`--fake-upstream` also runs the project's fake OpenAI-compatible server (`llmroute.gateway.fake`)
on a free port and points `LLMROUTE_BACKEND_URL` at it: with `examples/loopback.yaml` that is a
keyless demo (`make demo`) whose chat requests get answers.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import typer

from llmroute.cliapp import Typer
from llmroute.gateway.config import ConfigError, GatewayConfig, load_config

__all__ = [
    "GC_GEN0_THRESHOLD",
    "app",
    "banner",
    "create_app",
    "create_app_from_env",
    "freeze_startup_objects",
    "remove_stale_worker_dirs",
    "serve",
    "startup_warnings",
    "worker_dir_prefix",
]

app = Typer(add_completion=False, help="Run the llmroute gateway.")


def create_app(config_path: str | Path):  # type: ignore[no-untyped-def]
    """A `Gateway` ASGI app built from a YAML config file."""
    from llmroute.gateway.app import Gateway

    gw = Gateway(load_config(config_path))
    gw.config_path = str(Path(config_path).resolve())  # POST /admin/v1/reload re-reads it
    return gw


def create_app_from_env():  # type: ignore[no-untyped-def]
    """ASGI app factory for multi-worker uvicorn: reads the config path from `LLMROUTE_CONFIG`."""
    path = os.environ.get("LLMROUTE_CONFIG")
    if not path:
        raise RuntimeError(
            "LLMROUTE_CONFIG is not set; start the gateway with `llmroute serve --config FILE`"
        )
    gw = create_app(path)
    freeze_startup_objects()
    return gw


_WORKER_DIR = "llmroute-workers-"


def worker_dir_prefix() -> str:
    """The prefix of this process's workers folder: `llmroute-workers-<pid>-<start ticks>-`."""
    from llmroute.gateway.ledger import process_start

    pid = os.getpid()
    return f"{_WORKER_DIR}{pid}-{int(process_start(pid))}-"


def remove_stale_worker_dirs(parent: str | Path | None = None) -> list[str]:
    """Remove the workers folders (in `parent`, default the temporary directory) that a `serve`
    killed with SIGKILL left behind: those of this user whose owner process (pid and start time
    in the name) no longer exists. Returns the paths removed; never raises."""
    import re
    import shutil
    import stat
    import tempfile

    from llmroute.gateway.ledger import process_alive

    root = Path(parent if parent is not None else tempfile.gettempdir())
    pattern = re.compile(re.escape(_WORKER_DIR) + r"(\d+)-(\d+)-")
    removed: list[str] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    uid = os.getuid()
    for p in entries:
        m = pattern.match(p.name)
        if m is None:
            continue
        try:
            st = p.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        if process_alive(int(m.group(1)), float(m.group(2))):
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(str(p))
    return removed


#: Young-generation threshold of the serving process's collector (CPython's default: 700). A
#: request allocates thousands of container objects, and the ~32-100 requests in flight keep a
#: few thousand alive at any moment, so at 700 a young collection ran every ~40 requests and
#: walked that in-flight state each time (~0.3 ms): ~8 us of collector CPU per routed request,
#: measured with gc.callbacks under wrk (benchmarks/gateway.py setup). At 10,000 it runs once
#: per several thousand requests (a ~2-3 ms pause then) and costs < 0.5 us per request; the
#: request path creates almost no reference cycles, so garbage does not pile up meanwhile.
GC_GEN0_THRESHOLD = 10_000


def freeze_startup_objects() -> None:
    """Collect once, then `gc.freeze()` what survives, so later collections skip the startup objects,
    and raise the young-generation threshold to `GC_GEN0_THRESHOLD` (older generations keep
    their defaults).

    Called by `llmroute serve` in the serving process after the app is built (not by `create_app`,
    so tests and embedders keep the collector's default behaviour)."""
    import gc

    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_GEN0_THRESHOLD, gen0), gen1, gen2)


def startup_warnings(
    cfg: GatewayConfig,
    candidates: Mapping[str, Sequence[str]] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """One line per configured problem a new user should know about at start-up:

    - a model whose `api_key_env` is unset in `env` (default: the environment): it cannot be
      called; aliases fall back to their other candidates, a request naming it gets a 501;
    - an alias whose candidates (`candidates[alias]`, default: its configured candidates, or
      every model) are all estimated by one router column (`router_model`): the router sees
      them as one model, so the cheapest always wins;
    - otherwise, each group of an alias's candidates that share one column: the dearer ones of
      the group are never picked by quality (only as fallbacks).
    """
    env = os.environ if env is None else env
    out: list[str] = []
    for m in cfg.models:
        if m.api_key_env and not env.get(m.api_key_env):
            out.append(
                f"model {m.name!r}: {m.api_key_env} is not set, so it cannot be called (aliases use "
                f"their other candidates; asking for it by name gets a 501); set {m.api_key_env} "
                "and restart to use it"
            )
    by_name = {m.name: m for m in cfg.models}
    for name, alias in cfg.aliases.items():
        names = list(candidates[name]) if candidates and name in candidates else None
        if names is None:
            names = alias.candidates or list(by_name)
        groups: dict[str, list[str]] = {}
        for n in names:
            if n in by_name:
                groups.setdefault(by_name[n].estimated_by, []).append(n)
        if len(names) > 1 and len(groups) == 1:
            out.append(
                f"alias {name!r}: all its candidates ({', '.join(names)}) map to one router column "
                f"{next(iter(groups))!r}, so the router cannot tell them apart and the cheapest "
                f"always wins; give them different router_model columns (the closest in strength) "
                f"or train a router on your own models"
            )
            continue
        for column, group in groups.items():
            if len(group) < 2:
                continue
            price = {n: by_name[n].input_per_mtok + by_name[n].output_per_mtok for n in group}
            cheapest = min(group, key=lambda n: (price[n], group.index(n)))
            others = [n for n in group if n != cheapest]
            out.append(
                f"alias {name!r}: {', '.join(group)} share the router column {column!r}, so they tie "
                f"on expected quality and {cheapest} (the cheapest) is picked over "
                f"{', '.join(others)}, which serve only as fallbacks; a column is a stand-in until "
                f"the model is profiled (train a router on your own models)"
            )
    return out


def banner(cfg: GatewayConfig, host: str, port: int, *, workers: int = 1, chat: bool = False) -> list[str]:
    """The two start-up lines: where the gateway listens (models, aliases) and one `curl`
    command to try next: a chat request when `chat` (the models answer without keys, e.g. the
    demo), else a routing decision (`POST /v1/route`, which needs no provider key)."""
    aliases = ", ".join(cfg.aliases) or "none"
    shown = f"[{host}]" if ":" in host else host
    more = f"; {workers} workers" if workers > 1 else ""
    first = f"llmroute gateway on http://{shown}:{port} ({len(cfg.models)} models; aliases: {aliases}{more})"
    target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, shown)
    model = next(iter(cfg.aliases), cfg.models[0].name)
    if chat:
        path = "/v1/chat/completions"
        body: dict[str, object] = {
            "model": model,
            "messages": [{"role": "user", "content": "Hello! Who are you?"}],
        }
    else:
        path = "/v1/route"
        body = {"model": model, "prompt": "Prove that the square root of 2 is irrational."}
    auth = ' -H "Authorization: Bearer $LLMROUTE_API_KEY"' if cfg.keys else ""
    curl = (
        f"curl -s http://{target}:{port}{path} -H 'Content-Type: application/json'{auth} "
        f"-d '{json.dumps(body)}'"
    )
    return [first, f"try: {curl}"]


def _echo_lines(lines: Sequence[str], prefix: str = "") -> None:
    for line in lines:
        typer.echo(f"{prefix}{line}", err=True)
    sys.stderr.flush()


def _announce_when_up(host: str, port: int, lines: Sequence[str], timeout_s: float = 300.0) -> None:
    """Print `lines` once GET /healthz answers (the workers of `--workers N` are up)."""
    import urllib.request

    target = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://[{target}]:{port}/healthz" if ":" in target else f"http://{target}:{port}/healthz"
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    _echo_lines(lines)
                    return
        except OSError:
            pass
        time.sleep(0.1)


@app.command("serve")
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="gateway YAML (see examples/llmroute.yaml)"),
    host: str = typer.Option("127.0.0.1", help="bind address"),
    port: int = typer.Option(8080, help="bind port"),
    workers: int = typer.Option(1, min=1, help="worker processes"),
    log_level: str = typer.Option("warning", help="uvicorn log level"),
    access_log: bool = typer.Option(False, help="log every request (slower)"),
    fake_upstream: bool = typer.Option(
        False,
        "--fake-upstream",
        help="also run the fake OpenAI-compatible server on a free port and set LLMROUTE_BACKEND_URL "
        "to it (with examples/loopback.yaml: a demo that answers without any API key)",
    ),
) -> None:
    """Serve the OpenAI-compatible routing gateway."""
    import uvicorn

    from llmroute.gateway._uvicorn import BindError, ReadyServer, bind_socket, run_workers

    fake = None
    if fake_upstream:
        from llmroute.gateway.fake import serve_in_thread

        fake = serve_in_thread()
        os.environ["LLMROUTE_BACKEND_URL"] = fake.base_url  # read by the config (and the workers)
    try:
        cfg = load_config(config)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    from llmroute.gateway.admin import BIND_HOST_ENV, is_loopback

    if cfg.admin.demo and not (cfg.admin.key_sha256 or cfg.admin.key_env) and not is_loopback(host):
        typer.echo(
            f"error: admin.demo (keyless admin API and dashboard) works only on a loopback address, "
            f"not --host {host}: set admin.key_env to a master key, or serve on 127.0.0.1",
            err=True,
        )
        raise typer.Exit(2)
    os.environ[BIND_HOST_ENV] = host  # where we are bound, for admin demo mode (workers inherit it)
    try:
        sock = bind_socket(host, port)
    except BindError as e:
        typer.echo(f"error: {e.strerror}", err=True)
        raise typer.Exit(1) from None
    try:
        gw = None
        if workers == 1:
            from llmroute.gateway.app import Gateway

            gw = Gateway(cfg)
            gw.config_path = str(Path(config).resolve())  # POST /admin/v1/reload re-reads it
    except (ConfigError, FileNotFoundError, ValueError) as e:
        sock.close()
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    plans = {name: plan.models for name, plan in gw.engine.plans.items()} if gw is not None else None
    _echo_lines(startup_warnings(cfg, plans), "warning: ")
    if fake is not None and not any((m.base_url or "").startswith(fake.url) for m in cfg.models):
        _echo_lines(
            [f"--fake-upstream: no model of {config} uses ${{LLMROUTE_BACKEND_URL}}; it is unused"],
            "warning: ",
        )
    lines = banner(cfg, host, sock.getsockname()[1], workers=workers, chat=fake is not None)
    try:  # httptools, one socket write per non-streamed response (falls back to stock httptools)
        from llmroute.gateway._uvicorn import CoalescingHttpToolsProtocol

        http: object = CoalescingHttpToolsProtocol
    except ImportError:  # pragma: no cover - a uvicorn without the httptools protocol module
        http = "httptools"
    kw = dict(
        host=host,
        port=port,
        loop="uvloop",
        http=http,
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        timeout_keep_alive=cfg.server.keep_alive_s,  # the protocol also reads the server: limits
        backlog=4096,
        proxy_headers=False,
        server_header=False,
    )
    try:
        if gw is not None:
            freeze_startup_objects()
            server = ReadyServer(uvicorn.Config(gw, **kw), on_ready=lambda: _echo_lines(lines))  # type: ignore[arg-type]
            server.run(sockets=[sock])
            if not server.started:
                raise typer.Exit(3)
        else:
            import shutil
            import tempfile

            from llmroute.gateway.ledger import SHARED_DIR_ENV

            remove_stale_worker_dirs()  # left by a `serve` killed with SIGKILL
            shared = tempfile.mkdtemp(prefix=worker_dir_prefix())  # mode 0700
            os.environ["LLMROUTE_CONFIG"] = str(Path(config).resolve())
            os.environ[SHARED_DIR_ENV] = shared
            try:
                threading.Thread(
                    target=_announce_when_up, args=(host, sock.getsockname()[1], lines), daemon=True
                ).start()
                run_workers(
                    uvicorn.Config(
                        "llmroute.gateway.serve:create_app_from_env",
                        factory=True,
                        workers=workers,
                        **kw,  # type: ignore[arg-type]
                    ),
                    sock,
                )
            finally:
                os.environ.pop(SHARED_DIR_ENV, None)
                shutil.rmtree(shared, ignore_errors=True)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if fake is not None:
            fake.stop()


if __name__ == "__main__":
    app()
