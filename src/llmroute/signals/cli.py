"""`llmroute rules check|explain`: validate a rules config and explain a decision.

`check` builds every used signal and runs the load-time validation (unknown signal, bad
threshold, a rule that can never fire, same-priority rules that can both fire with different
actions); it exits 1 with every problem listed. `explain` evaluates one prompt and prints the
signals computed, the rules that fired, the winner and why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from llmroute.cliapp import Typer

app = Typer(
    name="rules",
    help="Check and explain routing rules (the signals:/rules: sections of a gateway config).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML file with signals:/rules: sections.")]
EncoderOpt = Annotated[
    str, typer.Option("--encoder", help="Encoder spec for embedding signals (e.g. static-minilm, hash).")
]
RouterOpt = Annotated[
    Path | None, typer.Option("--router", help="Saved router (for difficulty / ood signals).")
]


def _engine(config: Path, encoder: str, router: Path | None) -> Any:
    from llmroute.signals.engine import RuleEngine, RulesError

    if not config.is_file():
        typer.echo(f"error: config file {config} not found", err=True)
        raise typer.Exit(2)
    r = None
    if router is not None:
        from llmroute.router import Router

        r = Router.load(router)
    try:
        return RuleEngine.from_yaml(config, encoder=encoder, router=r)
    except RulesError as e:
        typer.echo(f"{config}: {len(e.problems)} problem(s):", err=True)
        for p in e.problems:
            typer.echo(f"  - {p}", err=True)
        raise typer.Exit(1) from None


@app.command("check")
def check(config: ConfigOpt, encoder: EncoderOpt = "static-minilm", router: RouterOpt = None) -> None:
    """Validate the rules; exit 1 listing every problem."""
    eng = _engine(config, encoder, router)
    n_sig = len(eng.signals)
    typer.echo(
        f"{config}: OK — {len(eng.rules)} rule(s), {n_sig} signal(s) used: {', '.join(sorted(eng.signals))}"
    )
    for r in eng.rules:
        typer.echo(
            f"  [{r.priority:>4}] {r.name}: {r.action.type} {json.dumps(r.action.target() or r.action.overrides())}"
        )


@app.command("explain")
def explain(
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message), or '-' to read stdin.")],
    config: ConfigOpt,
    encoder: EncoderOpt = "static-minilm",
    router: RouterOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the trace record as JSON.")] = False,
) -> None:
    """Evaluate PROMPT: signals computed, rules that fired, the winning rule and why."""
    import sys

    text = sys.stdin.read() if prompt == "-" else prompt
    eng = _engine(config, encoder, router)
    if as_json:
        typer.echo(json.dumps(eng.evaluate(text).trace(), indent=2, default=str))
    else:
        typer.echo(eng.explain(text))
