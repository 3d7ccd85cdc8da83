"""`llmroute models add|remove|list|report`: change a router's models from profiles, no retraining.

    llmroute models add NAME --profile TABLE --router FILE --out FILE [--price IN,OUT]
    llmroute models remove NAME --router FILE --out FILE
    llmroute models list [--router FILE] [--json]
    llmroute models report --profile TABLE [--router FILE] --out report.html

A profile is a long-format routing table with graded rows for the model (`llmroute profile`
writes one). See `llmroute.onboard`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from llmroute.cliapp import Typer

app = Typer(
    name="models",
    help="Add, remove and list a router's models from their profiles (no retraining).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RouterOpt = Annotated[
    Path | None,
    typer.Option("--router", help="Router file (llmroute train); default: the shipped router."),
]


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _load(router: Path | None) -> Any:
    from llmroute.router import Router, RouterFileError, default_router_path

    try:
        return Router.load(router or default_router_path())
    except RouterFileError as exc:
        _fail(str(exc))


def _price(spec: str | None) -> Any:
    if spec is None:
        return None
    from llmroute.data.table import ModelPrice

    try:
        a, b = (float(x) for x in spec.split(","))
    except ValueError:
        _fail(f"--price {spec!r}: give USD per 1M input and output tokens as IN,OUT (e.g. 0.15,0.6)")
    if not (a >= 0 and b >= 0):
        _fail(f"--price {spec!r}: prices must be >= 0")
    return ModelPrice(a, b)


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from llmroute.data.table import TableError

    try:
        return fn(*args, **kwargs)
    except (TableError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@app.command("add")
def add_cmd(
    name: Annotated[str, typer.Argument(help="Name the router (and the gateway's router_model) uses.")],
    profile: Annotated[Path, typer.Option("--profile", help="Profile table with graded rows for the model.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the router with the model added.")],
    router: RouterOpt = None,
    price: Annotated[
        str | None,
        typer.Option("--price", help="USD per 1M input,output tokens (default: from the profile)."),
    ] = None,
    profile_model: Annotated[
        str | None, typer.Option("--profile-model", help="The model's name in the profile (default: NAME).")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="How the quality column is fitted: auto (default: paired when the profile or "
            "--reference has the known models' grades on most of its prompts, else ridge), ridge, "
            "paired (pairs the new model's grades with the known models' on the same prompts) or margin (paired, and the new "
            "model must beat the best known model by a margin calibrated on --reference, the "
            "router's training table) or factor (a vector in a low-rank model of the training "
            "table, fitted once on --reference) or task (paired plus a per-task offset; the task "
            "labels of --reference and of the profile train a task classifier kept in the router) "
            "or region (task, else embedding clusters, with each region's offset shrunk by how far the "
            "known models' own regional offsets move, measured on --reference); "
            "docs/onboarding-notes.md.",
        ),
    ] = "auto",
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="With --method auto / paired / margin: a table with the known models' grades on the "
            "profile prompts (e.g. the router's training table); the profile's own known-model rows "
            "are used first. With margin, a router not yet calibrated is calibrated on it first "
            "(kept in the saved router). With factor: the router's training table, needed by the "
            "first factor add (the factor model fitted on it is kept in the saved router). With task: "
            "its prompts' task labels (and the profile's) train the task classifier at the first add. "
            "With region: also the known models' grades per region (the prior; kept in the router).",
        ),
    ] = None,
) -> None:
    """Add a model from its profile; the known models' estimates stay exactly as they were."""
    for opt, path in (("--profile", profile), ("--reference", reference)):
        if path is not None and not path.exists():
            _fail(f"{opt} {path}: no such file or directory")
    r = _load(router)
    if method == "margin" and reference is not None and not r.info.get("margin_z"):
        from llmroute.onboard import calibrate_margin

        _guard(calibrate_margin, r, reference)
    summary = _guard(
        r.add_model,
        name,
        profile,
        _price(price),
        profile_model=profile_model,
        reference=reference,
        method=method,
    )
    r.save(out)
    typer.echo(json.dumps({"router": str(out), "models": r.models, "added": summary}, indent=1))


@app.command("remove")
def remove_cmd(
    name: Annotated[str, typer.Argument(help="The model to stop routing to.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the router without the model.")],
    router: RouterOpt = None,
) -> None:
    """Remove a model (trained or profiled) from a router."""
    r = _load(router)
    _guard(r.remove_model, name)
    r.save(out)
    typer.echo(json.dumps({"router": str(out), "models": r.models}, indent=1))


@app.command("list")
def list_cmd(
    router: RouterOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the router's models: trained or profiled, mean quality, how cost is estimated."""
    from llmroute.onboard import list_models

    rows = list_models(_load(router))
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        q = "-" if row["mean_quality"] is None else f"{row['mean_quality']:.3f}"
        extra = f" ({row['profile_rows']} profile rows)" if row["profile_rows"] else ""
        typer.echo(f"{row['model']}\t{row['source']}{extra}\tq={q}\tcost={row['cost_mode']}")


@app.command("report")
def report_cmd(
    profile: Annotated[Path, typer.Option("--profile", help="Profile table (one or more models).")],
    out: Annotated[Path, typer.Option("--out", help="HTML report to write (a PNG is written beside it).")],
    router: RouterOpt = None,
) -> None:
    """ "Is this model worth adding?": quality by task, cost, where the router would pick each
    profiled model, and the expected saving with and without it (HTML with an embedded chart)."""
    from llmroute.onboard_report import write_report

    if not profile.exists():
        _fail(f"--profile {profile}: no such file or directory")
    r = _load(router)
    paths = _guard(write_report, r, profile, out)
    typer.echo(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
