"""`llmroute simulate`: replay a routing table as a bandit stream (see `llmroute.online.simulate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["simulate_cmd"]


def simulate_cmd(
    data: Annotated[Path, typer.Option("--data", help="Routing table (file or folder, long format).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for simulate.json and simulate.png.")],
    learner: Annotated[str, typer.Option("--learner", help="thompson | linucb | greedy.")] = "thompson",
    tradeoff: Annotated[
        float | None,
        typer.Option(
            "--tradeoff",
            help="lambda in reward = quality - lambda * cost (default: the middle of the single-model cost range).",
        ),
    ] = None,
    warm_start: Annotated[
        float,
        typer.Option(
            "--warm-start", help="Share of prompts (full information) the starting router learns from."
        ),
    ] = 0.0,
    seeds: Annotated[int, typer.Option("--seeds", help="Number of random stream orders (seeds 0..N-1).")] = 5,
    baseline: Annotated[
        str, typer.Option("--baseline", help="Offline estimator for the cv and warm-start routers.")
    ] = "default",
    max_explore: Annotated[
        float,
        typer.Option(
            "--max-explore", help="Largest share of requests that may deviate from the greedy choice."
        ),
    ] = 0.2,
    refit: Annotated[
        bool,
        typer.Option(
            "--refit/--no-refit",
            help="Refit the baseline estimator on the logged outcomes during the stream "
            "(llmroute.online.refit; it replaces a warm-start router only when shown better).",
        ),
    ] = True,
) -> None:
    """Replay TABLE as a random stream revealing only the chosen model's outcome; write reward
    over time, cumulative regret against the cross-validated router and the oracle, and pick
    shares (JSON + PNG)."""
    from llmroute.data.table import TableError
    from llmroute.eval.runner import load_dataset, with_cost_fallback
    from llmroute.online.learner import METHODS
    from llmroute.online.simulate import simulate, write_outputs

    if learner not in METHODS:
        raise typer.BadParameter(f"{learner!r}: choose one of {', '.join(METHODS)}", param_hint="--learner")
    if seeds < 1:
        raise typer.BadParameter("give at least 1 seed", param_hint="--seeds")
    if not data.exists():
        raise typer.BadParameter(f"{data} does not exist", param_hint="--data")
    try:
        table, _ = with_cost_fallback(load_dataset(data))
        res = simulate(
            table,
            learner=learner,
            tradeoff=tradeoff,
            warm_start=warm_start,
            seeds=list(range(seeds)),
            baseline=baseline,
            learner_params={"max_explore": max_explore},
            refit={} if refit else None,
            log=lambda s: typer.echo(s, err=True),
        )
    except (TableError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    jpath, ppath = write_outputs(res, out)
    s = res["summary"]
    typer.echo(
        f"lambda {res['tradeoff']:.4g}: last-20% reward {s['last20_learner']['mean']:.4f} "
        f"(cv router {s['last20_cv']['mean']:.4f}, oracle {s['last20_oracle']['mean']:.4f}); "
        f"wrote {jpath} and {ppath}"
    )
