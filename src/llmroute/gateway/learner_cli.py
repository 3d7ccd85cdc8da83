"""`llmroute learner snapshots | snapshot | rollback`: the gateway's online learner state
(`llmroute.gateway.learning`), read and changed while the gateway runs (its workers pick a
rollback up at their next sync)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated, Any

import typer

from llmroute.cliapp import Typer

__all__ = ["learner_app"]

learner_app = Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The gateway's online learner state: list snapshots, take one, roll back to one.",
)

ConfigOpt = Annotated[Path, typer.Option("--config", help="The gateway's YAML config.")]
AliasOpt = Annotated[str, typer.Option("--alias", help="The alias whose learner to use.")]


def _open(config: Path, alias: str) -> Any:
    """The learner state of `alias` in `config` (exit 2 with a message when it cannot be)."""
    from llmroute.gateway.config import ConfigError, load_config
    from llmroute.gateway.learning import learner_state_path, open_learner_state

    try:
        cfg = load_config(config)
    except (ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    a = cfg.aliases.get(alias)
    if a is None or not a.learning.enabled:
        known = sorted(n for n, x in cfg.aliases.items() if x.learning.enabled)
        typer.echo(
            f"error: alias {alias!r} does not learn online in {config}; aliases with learning "
            f"enabled: {', '.join(known) or 'none'}",
            err=True,
        )
        raise typer.Exit(2)
    path = learner_state_path(cfg, a.learning)
    if path == ":memory:":
        typer.echo("error: this config keeps the learner state in memory (memory:// store)", err=True)
        raise typer.Exit(2)
    from llmroute.gateway.learning_redis import is_redis_url

    if is_redis_url(path):  # `state: redis://...`: the replicas' shared learner state
        st = open_learner_state(path)
        if not st.ping():  # type: ignore[attr-defined]
            st.close()
            typer.echo(
                "error: the learner state's Redis (the config's `state:`) does not answer: start it", err=True
            )
            raise typer.Exit(1)
        return st
    if not Path(path).exists():
        typer.echo(f"error: no learner state at {path} yet (start the gateway first)", err=True)
        raise typer.Exit(2)
    return open_learner_state(path)


def _when(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@learner_app.command("snapshots")
def snapshots_cmd(config: ConfigOpt, alias: AliasOpt) -> None:
    """List the alias's learner snapshots, newest first: id, kind (initial, periodic, manual,
    rollback, reset), the outcome sequence number it includes, outcomes learned, time."""
    st = _open(config, alias)
    try:
        rows = st.snapshots(alias)
        head = st.head(alias)
    finally:
        st.close()
    typer.echo(f"{'id':>5}  {'kind':<9} {'seq':>8} {'outcomes':>9}  taken")
    for r in rows:
        typer.echo(f"{r['id']:>5}  {r['kind']:<9} {r['seq']:>8} {r['outcomes']:>9.0f}  {_when(r['ts'])}")
    typer.echo(f"outcomes recorded: {head} (sequence number of the newest)")


@learner_app.command("snapshot")
def snapshot_cmd(config: ConfigOpt, alias: AliasOpt) -> None:
    """Take a snapshot now: the newest snapshot with every outcome recorded after it applied."""
    from llmroute.online.learner import OnlineLearner

    st = _open(config, alias)
    try:
        base = st.load(alias)
        if base is None:
            typer.echo("error: no snapshot to start from (start the gateway first)", err=True)
            raise typer.Exit(2)
        learner = OnlineLearner.from_bytes(base[2])
        seq = base[1]
        for d in st.deltas(alias, seq):
            if d.model in learner.models:
                learner.observe(d.x, learner.models.index(d.model), d.residual, d.cost_residual, d.weight)
            seq = d.seq
        sid = st.snapshot(alias, seq, learner.to_bytes(), "manual", float(learner.n_.sum()))
    finally:
        st.close()
    typer.echo(f"snapshot {sid if sid is not None else '(unchanged: one exists at this point)'} at seq {seq}")


@learner_app.command("rollback")
def rollback_cmd(
    config: ConfigOpt,
    alias: AliasOpt,
    to: Annotated[int, typer.Option("--to", help="The snapshot id to go back to (see `snapshots`).")],
) -> None:
    """Make snapshot TO the alias's learner state again: the outcomes recorded since are dropped,
    later ones apply on top; every gateway worker reloads it at its next sync."""
    st = _open(config, alias)
    try:
        sid = st.rollback(alias, to)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}; list them with `llmroute learner snapshots`", err=True)
        raise typer.Exit(2) from exc
    finally:
        st.close()
    typer.echo(
        f"rolled {alias} back to snapshot {to} (new snapshot {sid}); workers reload it at their next sync"
    )
