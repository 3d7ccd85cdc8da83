"""`llmroute serve`: run the gateway with uvicorn (uvloop + httptools), one or more workers.

Non-streamed responses go out in one socket write (`llmroute.gateway._uvicorn`); granian was measured
and was slower for this app on the reference 2-core box (see BENCHMARKS.md, Gateway).

The config is validated before the server starts; errors name the field and what is allowed.
Once the app is built, everything loaded so far (routers, encoder vocabularies, config: ~100k
objects) is moved out of the cyclic garbage collector's reach with `gc.freeze()`; otherwise each
full collection walks all of it (~50 ms on the reference box, a p99 spike and ~5-8 % of the CPU
under load).
With `--workers N > 1` each worker process builds its own `Gateway` from the same file (the
path travels in the `LLMROUTE_CONFIG` environment variable to `create_app_from_env`). `serve`
also creates a private temporary folder, named to the workers in `LLMROUTE_SHARED_DIR` and removed
at exit, where the workers share budgets and rate limits (`llmroute.gateway.ledger`) and publish
their metrics so that any worker's /metrics shows the totals (`llmroute.gateway.metrics`).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from llmroute.cliapp import Typer
from llmroute.gateway.config import ConfigError, load_config

__all__ = ["app", "create_app", "create_app_from_env", "freeze_startup_objects", "serve"]

app = Typer(add_completion=False, help="Run the llmroute gateway.")


def create_app(config_path: str | Path):  # type: ignore[no-untyped-def]
    """A `Gateway` ASGI app built from a YAML config file."""
    from llmroute.gateway.app import Gateway

    return Gateway(load_config(config_path))


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


def freeze_startup_objects() -> None:
    """Collect once, then `gc.freeze()` what survives, so later collections skip the startup objects.

    Called by `llmroute serve` in the serving process after the app is built (not by `create_app`,
    so tests and embedders keep the collector's default behaviour)."""
    import gc

    gc.collect()
    gc.freeze()


@app.command("serve")
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="gateway YAML (see examples/llmroute.yaml)"),
    host: str = typer.Option("127.0.0.1", help="bind address"),
    port: int = typer.Option(8080, help="bind port"),
    workers: int = typer.Option(1, min=1, help="worker processes"),
    log_level: str = typer.Option("warning", help="uvicorn log level"),
    access_log: bool = typer.Option(False, help="log every request (slower)"),
) -> None:
    """Serve the OpenAI-compatible routing gateway."""
    import uvicorn

    try:
        cfg = load_config(config)
        gw = create_app(config) if workers == 1 else None
    except (ConfigError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    aliases = ", ".join(cfg.aliases) or "none"
    typer.echo(
        f"llmroute gateway on http://{host}:{port} ({len(cfg.models)} models; aliases: {aliases})", err=True
    )
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
        timeout_keep_alive=30,
        backlog=4096,
        proxy_headers=False,
        server_header=False,
    )
    if gw is not None:
        freeze_startup_objects()
        uvicorn.run(gw, **kw)  # type: ignore[arg-type]
    else:
        import shutil
        import tempfile

        from llmroute.gateway.ledger import SHARED_DIR_ENV

        shared = tempfile.mkdtemp(prefix="llmroute-workers-")  # mode 0700
        os.environ["LLMROUTE_CONFIG"] = str(Path(config).resolve())
        os.environ[SHARED_DIR_ENV] = shared
        try:
            uvicorn.run("llmroute.gateway.serve:create_app_from_env", factory=True, workers=workers, **kw)  # type: ignore[arg-type]
        finally:
            os.environ.pop(SHARED_DIR_ENV, None)
            shutil.rmtree(shared, ignore_errors=True)


if __name__ == "__main__":
    app()
