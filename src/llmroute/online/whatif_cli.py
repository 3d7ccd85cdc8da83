"""`llmroute whatif`: off-policy estimate of another trade-off or router on a decision log
(see `llmroute.online.whatif`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["whatif_cmd"]


def whatif_cmd(
    router: Annotated[Path, typer.Option("--router", help="Router file of the target policy.")],
    tradeoff: Annotated[float, typer.Option("--tradeoff", help="The target policy's trade-off lambda.")],
    log: Annotated[
        Path | None,
        typer.Option(
            "--log", help="Decision log (JSONL or Parquet: prompt, model, propensity, quality, cost)."
        ),
    ] = None,
    traces: Annotated[
        str | None,
        typer.Option(
            "--traces",
            help="Or the gateway's trace store (SQLite path or store URL): the decisions of aliases "
            "that learn online, with their feedback (needs trace.store_prompts).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The gateway's config: its trace store is the default --traces, and its models' "
            "router_model maps logged model names onto the router's columns.",
        ),
    ] = None,
    estimator: Annotated[
        str, typer.Option("--estimator", help="Headline estimator: ips | snips | dr.")
    ] = "dr",
    out: Annotated[Path | None, typer.Option("--out", help="Write every estimate as JSON here.")] = None,
    from_table: Annotated[
        Path | None,
        typer.Option(
            "--from-table",
            help="First write --log by replaying this routing table under an epsilon-greedy logging "
            "policy (the router at --log-tradeoff).",
        ),
    ] = None,
    log_tradeoff: Annotated[
        float | None, typer.Option("--log-tradeoff", help="Logging policy's trade-off (with --from-table).")
    ] = None,
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Logging policy's exploration share (with --from-table).")
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the logging policy (with --from-table).")] = 0,
) -> None:
    """Estimate the mean quality, cost and reward (quality - tradeoff * cost) that ROUTER at
    TRADEOFF would have had on the logged requests: IPS, self-normalised IPS and doubly robust
    (the router's estimates as reward model), 95% normal intervals, effective sample size."""
    from llmroute.data.table import TableError
    from llmroute.online.whatif import (
        ESTIMATORS,
        epsilon_greedy_log,
        read_log,
        read_traces,
        result_json,
        whatif,
        write_log,
    )
    from llmroute.router import Router

    columns: dict[str, str] | None = None
    if config is not None:
        from llmroute.gateway.config import ConfigError, load_config

        try:
            cfg = load_config(config)
        except (ConfigError, OSError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--config") from exc
        columns = {m.name: m.estimated_by for m in cfg.models}
        if traces is None and log is None:
            url = cfg.store.url
            if url.startswith("sqlite:///"):
                traces = str(cfg.resolve_path(url[len("sqlite:///") :]))
            else:
                traces = url if "://" in url else str(cfg.resolve_path(url))
    if (log is None) == (traces is None):
        raise typer.BadParameter("give --log FILE or --traces DB (one of them)", param_hint="--log")

    if estimator not in ESTIMATORS:
        raise typer.BadParameter(
            f"{estimator!r}: choose one of {', '.join(ESTIMATORS)}", param_hint="--estimator"
        )
    if not router.exists():
        raise typer.BadParameter(f"{router} does not exist", param_hint="--router")
    try:
        r = Router.load(router)
        extra: dict[str, object] = {"log": str(log or traces), "router": str(router)}
        if from_table is not None:
            if log is None:
                raise ValueError("--from-table writes --log: give --log FILE")
            from llmroute.eval.runner import load_dataset, with_cost_fallback

            if log_tradeoff is None:
                raise ValueError("--from-table needs --log-tradeoff (the logging policy's trade-off)")
            table, _ = with_cost_fallback(load_dataset(from_table))
            df, full = epsilon_greedy_log(table, r, tradeoff=log_tradeoff, epsilon=epsilon, seed=seed)
            write_log(df, log)
            import numpy as np

            from llmroute.policy import choose

            # the truth the log hides: the target's real outcomes on these prompts
            q_hat, c_hat = r.estimate(list(df["prompt"]))
            pick = np.asarray(choose(q_hat, c_hat, tradeoff=tradeoff))
            cols = np.array([full["models"].index(r.models[k]) for k in pick])
            rows = np.arange(len(df))
            tq, tc = full["Q"][rows, cols], full["C"][rows, cols]
            extra["true"] = {
                "quality": float(tq.mean()),
                "cost": float(tc.mean()),
                "reward": float((tq - tradeoff * tc).mean()),
            }
            typer.echo(f"wrote {len(df)} logged decisions to {log} (epsilon {epsilon})", err=True)
        res = whatif(
            read_log(log) if log is not None else read_traces(str(traces), columns=columns), r, tradeoff
        )
    except (TableError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for w in res.warnings:
        typer.echo(f"warning: {w}", err=True)
    if estimator not in res.estimates:
        typer.echo(f"error: {estimator} is not available on this log (see the warnings)", err=True)
        raise typer.Exit(2)
    e = res.estimates[estimator]
    typer.echo(
        f"{estimator} on {res.n} logged requests (ess {res.ess:.0f}), lambda {tradeoff:.4g}: "
        + ", ".join(f"{k} {v.value:.4g} [{v.lo:.4g}, {v.hi:.4g}]" for k, v in e.items())
    )
    if "true" in extra:
        t = extra["true"]
        assert isinstance(t, dict)
        typer.echo("true (from the full table): " + ", ".join(f"{k} {v:.4g}" for k, v in t.items()))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result_json(res, {"headline": estimator, **extra}))
        typer.echo(f"wrote {out}", err=True)
