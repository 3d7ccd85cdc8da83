"""`llmroute traces` (query decision traces) and `llmroute keys` (make/hash API keys).

Wiring (cli.py)::

    from llmroute.gateway.traces_cli import keys_app, traces_app
    app.add_typer(traces_app, name="traces")
    app.add_typer(keys_app, name="keys")

Examples::

    llmroute traces list --config examples/llmroute.yaml --since 1h --model fake-weak
    llmroute traces list --store sqlite:///llmroute-traces.sqlite --json --limit 5
    llmroute traces show 5f0c...        (same --store/--config options)
    llmroute traces summary --since 1d  (per alias/model: requests, errors, cost, p50/p99)
    llmroute traces prune --older-than 30d
    llmroute keys new                   (prints a new key and the sha256 to put in the config)
    llmroute keys spend --config FILE   (spend per key today and this month)
    llmroute keys hash sk-...           (or pipe the key on stdin)
    llmroute keys create|list|revoke|budget|audit --url URL   (a running gateway's admin API:
                                        llmroute.gateway.admin_cli)

The store comes from `--store URL`, else `--config FILE` (its `store.url`, relative paths
resolved against the config's folder), else `$LLMROUTE_STORE`, else the gateway default
`sqlite:///llmroute-traces.sqlite` in the current folder.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from llmroute.cliapp import Typer

__all__ = ["keys_app", "resolve_store_url", "summarize", "traces_app"]

traces_app = Typer(help="Query the gateway's decision traces.", no_args_is_help=True)
keys_app = Typer(help="Create and hash gateway API keys.", no_args_is_help=True)

_DEFAULT_URL = "sqlite:///llmroute-traces.sqlite"

StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Store URL: sqlite:///file.db, a path, or postgresql://...")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Gateway YAML config; its store.url is used.")
]


def resolve_store_url(store: str | None, config: Path | None) -> tuple[str, str | None]:
    """(url, base_dir) of the trace store chosen by the CLI options (see the module docstring)."""
    if store:
        return store, None
    if config is not None:
        from llmroute.gateway.config import ConfigError, load_config

        try:
            cfg = load_config(config)
        except ConfigError as e:
            raise typer.BadParameter(str(e), param_hint="--config") from None
        return cfg.store.url, cfg.base_dir
    return os.environ.get("LLMROUTE_STORE") or _DEFAULT_URL, None


def _open(store: str | None, config: Path | None, *, must_exist: bool = True) -> Any:
    from llmroute.gateway.store import StoreError, _resolve_url, open_store

    url, base_dir = resolve_store_url(store, config)
    try:
        kind, target = _resolve_url(url, base_dir)
        if kind == "sqlite" and target != ":memory:" and must_exist and not Path(target).exists():
            typer.echo(
                f"error: no trace store at {target} (give --store URL or --config FILE of the gateway)",
                err=True,
            )
            raise typer.Exit(2)
        return open_store(url, base_dir=base_dir)
    except StoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


@traces_app.command("list")
def list_traces(
    store: StoreOpt = None,
    config: ConfigOpt = None,
    since: Annotated[str | None, typer.Option(help="Age (30m, 2h, 7d), ISO time or unix seconds.")] = None,
    until: Annotated[str | None, typer.Option(help="Same forms as --since.")] = None,
    model: Annotated[str | None, typer.Option(help="Chosen model.")] = None,
    alias: Annotated[str | None, typer.Option(help="Requested alias, e.g. llmroute/auto.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="API key id.")] = None,
    status: Annotated[int | None, typer.Option(help="HTTP status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most records to show (newest first).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of full records.")] = False,
) -> None:
    """List decision traces, newest first."""
    st = _open(store, config)
    try:
        rows = st.query(
            since=since, until=until, model=model, alias=alias, key_id=key, status=status, limit=limit
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    finally:
        st.close_sync()
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} trace(s)", show_lines=False)
    for col in (
        "time (UTC)",
        "request id",
        "key",
        "alias",
        "model",
        "status",
        "total ms",
        "tok in/out",
        "cost $",
    ):
        table.add_column(col, no_wrap=col not in ("alias", "model"))
    for r in rows:
        table.add_row(
            _when(r["ts"]),
            r["request_id"],
            r["key_id"] or "-",
            r["alias"] or "-",
            r["model"] or "-",
            _num(r["status"], "d"),
            _num(r["total_ms"], ".1f"),
            f"{_num(r['tokens_in'], 'd')}/{_num(r['tokens_out'], 'd')}",
            _num(r["cost_usd"], ".6f"),
        )
    Console(width=200).print(table)


@traces_app.command("show")
def show_trace(
    request_id: Annotated[str, typer.Argument(help="The x-llmroute-request-id of a response.")],
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print one full trace record as JSON."""
    st = _open(store, config)
    try:
        rec = st.get(request_id)
    finally:
        st.close_sync()
    if rec is None:
        typer.echo(f"error: no trace with request id {request_id!r}", err=True)
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(rec, option=orjson.OPT_INDENT_2).decode() + "\n")


@traces_app.command("prune")
def prune_cmd(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age (30d, 12h) or ISO time / unix seconds.")
    ],
    store: StoreOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete traces older than a given age (key spend for budgets is kept)."""
    st = _open(store, config)
    try:
        n = st.prune(older_than)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--older-than") from None
    finally:
        st.close_sync()
    typer.echo(f"deleted {n} trace(s)")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (alias, model): requests, errors, fallbacks, tokens, cost, p50/p99 total and overhead ms."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["alias"] or "-", r["model"] or "-"), []).append(r)
    out = []
    for (alias, model), rs in sorted(groups.items()):
        tot = np.array([r["total_ms"] for r in rs if r["total_ms"] is not None], dtype=float)
        ovh = np.array([r["overhead_ms"] for r in rs if r["overhead_ms"] is not None], dtype=float)

        def pct(a: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(a, q)), 3) if a.size else None

        out.append(
            {
                "alias": alias,
                "model": model,
                "requests": len(rs),
                "errors": sum(1 for r in rs if (r["status"] or 0) >= 400 or r["error"]),
                "fallbacks": sum(len(r["fallbacks"] or []) for r in rs),
                "tokens_in": sum(r["tokens_in"] or 0 for r in rs),
                "tokens_out": sum(r["tokens_out"] or 0 for r in rs),
                "cost_usd": sum(r["cost_usd"] or 0.0 for r in rs),
                "total_ms_p50": pct(tot, 50),
                "total_ms_p99": pct(tot, 99),
                "overhead_ms_p50": pct(ovh, 50),
                "overhead_ms_p99": pct(ovh, 99),
            }
        )
    return out


@traces_app.command("summary")
def summary_cmd(
    store: StoreOpt = None,
    config: ConfigOpt = None,
    since: Annotated[str | None, typer.Option(help="Age (30m, 2h, 7d), ISO time or unix seconds.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="API key id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Totals per alias and model: requests, errors, fallbacks, tokens, cost, latency percentiles."""
    st = _open(store, config)
    try:
        rows = st.query(since=since, key_id=key, limit=None)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    finally:
        st.close_sync()
    stats = summarize(rows)
    if as_json:
        sys.stdout.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} trace(s)")
    cols = list(stats[0]) if stats else ["alias", "model", "requests"]
    for c in cols:
        table.add_column(c)
    for s in stats:
        table.add_row(
            *("-" if s[c] is None else (f"{s[c]:.6f}" if c == "cost_usd" else str(s[c])) for c in cols)
        )
    Console(width=220).print(table)


@keys_app.command("new")
def new_key(
    key_id: Annotated[str, typer.Option("--id", help="Key id for the config entry.")] = "my-key",
) -> None:
    """Create a random API key; print it once with the config entry holding only its hash."""
    from llmroute.gateway.auth import generate_key, hash_key

    key = generate_key()
    typer.echo(f"key (give it to the client; it is not stored anywhere): {key}")
    typer.echo("config entry:")
    typer.echo(f"  keys:\n    - id: {key_id}\n      key_sha256: {hash_key(key)}")


@keys_app.command("spend")
def spend_cmd(
    store: StoreOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Spend per key in the current UTC day and month, as the budgets count it: from the budget
    ledger (`store.ledger`, exact, also while the gateway runs; with the config's `state:`, the
    replicas' books in Redis) where it has the key, else from the spend persisted in the trace
    store."""
    import time

    from llmroute.gateway.auth import _day_span
    from llmroute.gateway.ledger import read_spend
    from llmroute.gateway.store import spend_ledger_path

    _, _, day, month, day_no, month_no = _day_span(time.time())
    url, base_dir = resolve_store_url(store, config)
    key_ids: list[str] = []
    ledger_opt = None
    state_url = None
    if config is not None and not store:
        from llmroute.gateway.config import load_config

        cfg = load_config(config)
        key_ids, ledger_opt, state_url = [k.id for k in cfg.keys], cfg.store.ledger, cfg.state
    st = _open(store, config)
    try:
        spend = st.load_spend([day, month])
    finally:
        st.close_sync()
    out: dict[str, dict[str, float]] = {}
    for (kid, period), usd in spend.items():
        out.setdefault(kid, {"day_usd": 0.0, "month_usd": 0.0})[
            "day_usd" if period == day else "month_usd"
        ] = usd
    ledger = spend_ledger_path(url, ledger_opt, base_dir)
    if state_url:  # replicas on Redis (llmroute.gateway.state): their books are there
        from llmroute.gateway.state import RedisState, StateUnavailable

        rs = RedisState(state_url)
        try:
            books = rs.read_spend(sorted({*key_ids, *out}), day_no, month_no)
        except StateUnavailable as e:
            typer.echo(f"error: {e} (state: in {config}); start Redis or check the URL", err=True)
            raise typer.Exit(1) from e
        finally:
            rs.close()
        for kid, (d, m) in books.items():
            out[kid] = {"day_usd": d, "month_usd": m}
    elif ledger is not None:
        for kid, (d, m) in read_spend(ledger, sorted({*key_ids, *out}), day_no, month_no).items():
            out[kid] = {"day_usd": d, "month_usd": m}
    if as_json:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    typer.echo(f"{'key':<24} {day[2:]:>14} {month[2:]:>14}")
    for kid, v in sorted(out.items()):
        typer.echo(f"{kid:<24} {v['day_usd']:>14.6f} {v['month_usd']:>14.6f}")


@keys_app.command("hash")
def hash_cmd(
    key: Annotated[str | None, typer.Argument(help="The API key; read from stdin when omitted.")] = None,
) -> None:
    """Print the sha256 hex of an API key (the value of key_sha256 in the config)."""
    from llmroute.gateway.auth import hash_key

    if key is None:
        key = sys.stdin.readline()
    if not key.strip():
        typer.echo("error: empty key", err=True)
        raise typer.Exit(2)
    typer.echo(hash_key(key))


def _admin_commands() -> None:
    from llmroute.gateway.admin_cli import register

    register(keys_app)


_admin_commands()  # keys create|list|revoke|budget|audit (the admin API of a running gateway)
