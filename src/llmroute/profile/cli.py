"""`llmroute profile`: call your models on your prompts, grade the answers, write a routing table.

    llmroute profile --config llmroute.yaml (--prompts FILE | --from-traces) [--models a,b] [--n 200]
                     [--judge MODEL [--pairwise-against MODEL]] [--max-usd X [--partial]]
                     [--concurrency 16] [--rpm R] --out TABLE

Interrupted (Ctrl-C, a crash)? Rerun the same command: calls already in `TABLE.journal.jsonl` are
not made again. See `llmroute.profile.runner` for the cap, graders and judge.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["profile_cmd"]


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _task_graders(spec: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        task, sep, grader = part.partition("=")
        if not sep or not task.strip() or not grader.strip():
            raise typer.BadParameter(
                f"{part!r}: write task=grader, e.g. gsm8k=number", param_hint="--graders"
            )
        out[task.strip()] = grader.strip()
    return out


def profile_cmd(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Gateway YAML: the models, their prices and keys.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Routing table to write (.parquet, .csv or .jsonl).")],
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="JSONL/CSV/Parquet with a 'prompt' column; optional prompt_id, task, reference (or answer), "
            "grader (exact|normalized|choice|number|regex|code|judge), tests (for code)."
        ),
    ] = None,
    from_traces: Annotated[
        bool,
        typer.Option(
            "--from-traces", help="Prompts from the gateway's trace store (needs trace.store_prompts: true)."
        ),
    ] = False,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model names (default: every model).")
    ] = None,
    n: Annotated[int, typer.Option(help="Profile this many prompts, a diverse subset (k-means).")] = 200,
    judge: Annotated[
        str | None, typer.Option(help="A config model that grades answers without a reference.")
    ] = None,
    pairwise_against: Annotated[
        str | None, typer.Option(help="Judge pairwise against this profiled model (both orders).")
    ] = None,
    judge_check: Annotated[
        float, typer.Option(help="Share of reference-graded answers also judged, to report agreement.")
    ] = 0.1,
    graders: Annotated[
        str | None, typer.Option(help="Grader per task, e.g. 'gsm8k=number,mbpp=code,chat=judge'.")
    ] = None,
    max_usd: Annotated[
        float | None, typer.Option(help="Cost cap in USD (judge calls included); never exceeded.")
    ] = None,
    partial: Annotated[
        bool, typer.Option("--partial", help="Start even if the estimate exceeds --max-usd; stop at the cap.")
    ] = False,
    concurrency: Annotated[int, typer.Option(help="Calls in flight per model.")] = 16,
    rpm: Annotated[
        float | None, typer.Option(help="At most this many calls per minute per model (rate limits).")
    ] = None,
    retries: Annotated[int, typer.Option(help="Retries of a failed call (timeouts, 429, 5xx).")] = 2,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each answer (bounds its cost).")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the k-means subset.")] = 0,
    router: Annotated[
        Path | None,
        typer.Option(
            help="Embed prompts for the subset with this router's encoder (default: static MiniLM)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Also write the 'is it worth adding?' HTML report (PNG beside it) for the profiled "
            "models against --router (default: the shipped router); same as `llmroute models report`."
        ),
    ] = None,
) -> None:
    """Call each model on your prompts, grade the answers and write a long-format routing table."""
    from llmroute.data.table import TableError
    from llmroute.gateway.config import ConfigError, load_config
    from llmroute.profile.prompts import items_from_traces, load_items, select_diverse
    from llmroute.profile.runner import BudgetError, ProfileSettings, journal_path, run_profile

    if (prompts is None) == (not from_traces):
        _fail("give exactly one of --prompts FILE or --from-traces")
    if concurrency < 1 or n < 1 or max_tokens < 1 or retries < 0 or (rpm is not None and rpm <= 0):
        _fail("--concurrency, --n and --max-tokens must be >= 1, --retries >= 0, --rpm > 0")
    if not 0.0 <= judge_check <= 1.0:
        _fail("--judge-check must be in [0, 1]")
    try:
        cfg = load_config(config)
        items = load_items(prompts) if prompts is not None else items_from_traces(cfg)
        encoder = None
        if router is not None and len(items) > n:
            from llmroute.router import Router

            encoder = Router.load(router).encoder
        chosen = select_diverse(items, n, encoder=encoder, seed=seed)
        names = [m.strip() for m in models.split(",") if m.strip()] if models else None
        if names is None:
            names = [m.name for m in cfg.models if m.name != judge]
        settings = ProfileSettings(
            models=names,
            judge=judge,
            pairwise_reference=pairwise_against,
            judge_check=judge_check if judge else 0.0,
            task_graders=_task_graders(graders),
            max_usd=max_usd,
            partial=partial,
            concurrency=concurrency,
            rpm=rpm,
            retries=retries,
            max_tokens=max_tokens,
            progress=progress,
        )
        typer.echo(f"profiling {len(names)} model(s) on {len(chosen)} of {len(items)} prompts", err=True)
        result = asyncio.run(run_profile(cfg, chosen, settings, out))
    except (BudgetError, ConfigError, TableError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted: finished calls are kept in {journal_path(out)}; rerun the same command to resume",
            err=True,
        )
        raise typer.Exit(130) from None
    summary_path = out.with_name(out.name + ".summary.json")
    summary_path.write_text(json.dumps(result.summary, indent=1))
    s = result.summary
    typer.echo(json.dumps(s, indent=1))
    if s["calls_not_made_cap"]:
        typer.echo(
            f"{s['calls_not_made_cap']} call(s) not made: the --max-usd cap is reached; rerun with a higher "
            "--max-usd to finish (calls already made are kept)",
            err=True,
        )
    typer.echo(f"wrote {out} ({s['rows']} rows, ${s['spent_usd']:.6f} spent) and {summary_path}", err=True)
    if report is not None:
        from llmroute.onboard_cli import _guard, _load
        from llmroute.onboard_report import write_report

        paths = _guard(write_report, _load(router), out, report)
        typer.echo(f"wrote the report {paths['html']} and {paths['png']}", err=True)
