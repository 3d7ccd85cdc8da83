"""The `llmroute` command line (typer).

    llmroute eval  --data PATH [--routers default,knn,linear,mlp,mf] [--folds 5] [--seed 0]
                   [--tasks PREFIX] [--out DIR]
    llmroute eval  --data PATH --router FILE [--out DIR]     (a trained router on new data, no CV)
    llmroute train --data PATH [--router default] --out FILE
    llmroute route [--router FILE] [--tradeoff X | --max-cost USD] "prompt"
    llmroute calibrate [--router FILE] --prompts FILE --strong-share 0.3 --out FILE

Heavy imports live inside the commands so that `llmroute --help` stays fast. Commands owned by
other parts (serve, traces, rules) are registered lazily from `PLUGINS`: one line per command,
"name": ("module:attribute", "help"), where the attribute is a typer app or a plain function;
it is imported only when the command runs, and all arguments (including --help) are passed on.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from llmroute.cliapp import HELP_OPTION_NAMES, Typer

__all__ = ["PLUGINS", "app"]

app = Typer(
    name="llmroute",
    help="Route each LLM request to the model that gives the best answer for the money.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Lazily imported sub-commands of other parts: name -> ("module:attribute", help text).
PLUGINS: dict[str, tuple[str, str]] = {
    "serve": ("llmroute.gateway.serve:app", "Run the OpenAI-compatible routing gateway (see --help)."),
    "traces": ("llmroute.gateway.traces_cli:traces_app", "Query the gateway's decision traces (see --help)."),
    "keys": ("llmroute.gateway.traces_cli:keys_app", "Create and hash gateway API keys (see --help)."),
    "rules": ("llmroute.signals.cli:app", "Check and explain routing rules (see --help)."),
    "models": (
        "llmroute.onboard_cli:app",
        "Add, remove and list a router's models from profiles (see --help).",
    ),
    "simulate": (
        "llmroute.online.cli:simulate_cmd",
        "Replay a routing table as a bandit stream: an online learner's reward and regret (see --help).",
    ),
    "whatif": (
        "llmroute.online.whatif_cli:whatif_cmd",
        "Off-policy estimate of another trade-off on a decision log (see --help).",
    ),
    "learner": (
        "llmroute.gateway.learner_cli:learner_app",
        "The gateway's online learner state: snapshots, rollback (see --help).",
    ),
    "profile": (
        "llmroute.profile.cli:profile_cmd",
        "Call your models on your prompts, grade the answers, write a routing table (see --help).",
    ),
}

KNOWN_ROUTERS = ("default", "knn", "linear", "mlp", "mf")


class CLIError(Exception):
    """An error shown to the user as one line, without a traceback."""


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `fn`, turning expected errors into a one-line message and exit code 2."""
    from llmroute.data.table import TableError

    try:
        return fn(*args, **kwargs)
    except (CLIError, TableError, FileNotFoundError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        _fail(str(msg))
    except ImportError as exc:
        _fail(f"a component is missing: {exc}")


def _parse_routers(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise typer.BadParameter("give at least one router name", param_hint="--routers")
    bad = [n for n in names if n not in KNOWN_ROUTERS]
    if bad:
        raise typer.BadParameter(
            f"unknown router(s) {bad}; choose from {', '.join(KNOWN_ROUTERS)}", param_hint="--routers"
        )
    if len(set(names)) != len(names):
        raise typer.BadParameter(f"router listed twice: {names}", param_hint="--routers")
    return names


def _check_data(path: Path) -> None:
    if not path.exists():
        _fail(f"--data {path}: no such file or directory")


# ---- eval --------------------------------------------------------------------------------------
@app.command("eval")
def eval_cmd(
    data: Annotated[
        Path, typer.Option("--data", help="Routing table: a file or a folder with data.parquet.")
    ],
    routers: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated routers to cross-validate (default: {','.join(KNOWN_ROUTERS)})."),
    ] = None,
    router: Annotated[
        Path | None,
        typer.Option(
            "--router",
            help="A trained router file (llmroute train): score it on --data as it is, without CV. "
            "The table's models must be among the router's (matched by name).",
        ),
    ] = None,
    folds: Annotated[
        int | None, typer.Option(min=2, max=50, help="Cross-validation folds over prompt ids (default: 5).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fold split and the estimators.")] = 0,
    tasks: Annotated[
        str | None, typer.Option(help="Only prompts whose task starts with this prefix.")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Output folder for results.json, curves.png, report.html.")
    ] = Path("runs/eval"),
    encoder: Annotated[
        str | None,
        typer.Option(help="Encoder spec for llmroute.embed.load_encoder (default: static-minilm)."),
    ] = None,
    prices: Annotated[
        Path | None, typer.Option(help="Price table (USD per 1M tokens) for tables without cost.")
    ] = None,
    latency_prompts: Annotated[
        int, typer.Option(min=0, help="Held-out prompts timed with router.route.")
    ] = 500,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    cascade: Annotated[
        bool,
        typer.Option(
            "--cascade",
            help="Also cross-validate a cascade on the table's stored responses (first model from the "
            "first of --routers or the cheapest, re-estimated after each answer; every call is paid).",
        ),
    ] = False,
    verifier: Annotated[
        str,
        typer.Option(help="Cascade answer signals: comma-separated of checks, learned, agreement; or none."),
    ] = "checks,learned,agreement",
    max_steps: Annotated[int, typer.Option(min=1, help="Cascade: most answers per prompt.")] = 3,
    max_cost: Annotated[
        float | None,
        typer.Option(min=0.0, help="Cascade: cost ceiling per prompt (USD, estimated before each call)."),
    ] = None,
) -> None:
    """Cross-validated evaluation: curves, AIQ, gap closed, APGR/CPT, decision latency.

    With --router FILE: score that trained router on --data as it is (no CV): the same curve,
    metrics and report, for a table the router never saw. With --cascade: cascade curves beside
    the one-shot routers (tables with a response column).
    """
    signals = [] if verifier.strip() == "none" else [v.strip() for v in verifier.split(",") if v.strip()]
    from llmroute.cascade.offline import SIGNALS

    bad = [v for v in signals if v not in SIGNALS]
    if bad:
        raise typer.BadParameter(
            f"unknown signal(s) {bad}; choose from {', '.join(SIGNALS)} or none", param_hint="--verifier"
        )
    if cascade and router is not None:
        _fail("--cascade cannot go with --router: a cascade is cross-validated (drop --router)")
    if router is not None:
        given = [
            o
            for o, v in (("--routers", routers), ("--folds", folds), ("--encoder", encoder))
            if v is not None
        ]
        if given:
            _fail(
                f"{', '.join(given)} cannot go with --router: a trained router is scored as it is "
                "(its file names its estimator and encoder; there is no CV)"
            )
        if not router.is_file():
            _fail(f"--router {router}: no such file (train one with `llmroute train`)")
    names = _parse_routers(routers if routers is not None else ",".join(KNOWN_ROUTERS))
    _check_data(data)
    if prices is not None and not prices.exists():
        _fail(f"--prices {prices}: no such file")

    def go() -> tuple[dict, dict]:
        from llmroute.eval.report import write_report
        from llmroute.eval.runner import dataset_name, evaluate, evaluate_router, load_dataset

        table = load_dataset(data, tasks=tasks, prices=prices)
        if router is not None:
            from llmroute.router import Router

            res = evaluate_router(
                Router.load(router),
                table,
                name=router.stem,
                router_label=str(router),
                seed=seed,
                dataset=dataset_name(data, tasks),
                latency_prompts=latency_prompts,
            )
        else:
            res = evaluate(
                table,
                routers=names,
                folds=folds if folds is not None else 5,
                seed=seed,
                encoder=encoder or "static-minilm",
                progress=progress,
                dataset=dataset_name(data, tasks),
                latency_prompts=latency_prompts,
            )
            if cascade:
                res["cascades"] = {
                    "cascade": _eval_cascade(
                        table, names[0], folds or 5, seed, encoder, signals, max_steps, max_cost
                    )
                }
        return res, write_report(res, out)

    res, paths = _run(go)
    _print_summary(res)
    for kind in ("json", "png", "html"):
        typer.echo(f"wrote {paths[kind]}")


def _eval_cascade(
    table: Any,
    prior: str,
    folds: int,
    seed: int,
    encoder: str | None,
    signals: list[str],
    max_steps: int,
    max_cost: float | None,
) -> dict:
    """`llmroute.cascade.offline.evaluate_cascade` with router `prior`'s out-of-fold estimates."""
    from llmroute.cascade.offline import evaluate_cascade, oof_priors
    from llmroute.eval.runner import fit_router, with_cost_fallback

    table, _ = with_cost_fallback(table)

    def factory(tr: Any, enc: Any, s: int) -> Any:
        return fit_router(prior, tr, enc, s)

    pri = oof_priors(table, factory, folds=folds, seed=seed, encoder=encoder or "static-minilm")
    res = evaluate_cascade(table, priors=pri, signals=signals, max_steps=max_steps, max_cost_usd=max_cost)
    res["prior_router"] = prior
    return res


def _cell(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _print_summary(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    base = res["baselines"]
    two = len(res["models"]) == 2
    how = f"{res['folds']} folds" if res.get("folds") else f"router {res.get('router_file', '?')}, no CV"
    t = Table(
        title=f"{res['dataset']}: {res['n_prompts']} prompts, {len(res['models'])} models, "
        f"{how} ({res.get('elapsed_s', 0):.1f} s)"
    )
    cols = ["router", "AIQ", "gap closed", "cost ratio", "max q"] + (
        ["APGR", "CPT50", "CPT80"] if two else []
    )
    for c in [*cols, "p50 ms", "p99 ms"]:
        t.add_column(c, justify="left" if c == "router" else "right")
    rows = [*res["routers"].items(), ("random", base["random"])]
    for name, r in rows:
        cells = [
            name,
            _cell(r["aiq"], 4),
            _cell(r["gap_closed"]),
            _cell(r["cost_ratio_at_best_quality"]),
            _cell(r["max_quality"], 4),
        ]
        if two:
            cells += [_cell(r["apgr"]), _cell(r["cpt50"], 2), _cell(r["cpt80"], 2)]
        cells += [_cell(r.get("decision_ms_p50")), _cell(r.get("decision_ms_p99"))]
        t.add_row(*cells)
    con = Console(width=None if sys.stdout.isatty() else 160)
    con.print(t)
    for name, c in (res.get("cascades") or {}).items():
        one = c.get("one_shot") or {}
        con.print(
            f"{name} ({', '.join(c['signals']) or 'priors only'}; max {c['max_steps']} steps; every call paid): "
            f"AIQ {_cell(c['aiq'], 4)} · gap closed {_cell(c['gap_closed'])} · cost ratio "
            f"{_cell(c['cost_ratio_at_best_quality'])} · one-shot {c.get('prior_router', '')} on the same "
            f"estimates: AIQ {_cell(one.get('aiq'), 4)}"
        )
        for k, rel in (c.get("calibration") or {}).items():
            con.print(
                f"  calibration of {k}: ECE {_cell(rel.get('ece'))} · AUROC {_cell(rel.get('auroc'))} "
                f"({rel.get('n')} held-out answers; reliability diagram in report.html)"
            )
    best = base["best_single"]
    con.print(
        f"single-model hull AIQ {_cell(base['single_hull_aiq'], 4)} · oracle AIQ {_cell(base['oracle_aiq'], 4)}"
        f" · best single {best['model']} (quality {_cell(best['quality'], 4)}, cost {best['cost']:.3g})"
        f" · cost: {res.get('cost_source', 'cost_usd')}"
    )


# ---- train -------------------------------------------------------------------------------------
@app.command("train")
def train_cmd(
    data: Annotated[
        Path, typer.Option("--data", help="Routing table: a file or a folder with data.parquet.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the router file.")],
    router: Annotated[str, typer.Option(help=f"Estimator: one of {', '.join(KNOWN_ROUTERS)}.")] = "default",
    seed: Annotated[int, typer.Option(help="Seed of the estimator.")] = 0,
    tasks: Annotated[
        str | None, typer.Option(help="Only prompts whose task starts with this prefix.")
    ] = None,
    encoder: Annotated[
        str, typer.Option(help="Encoder spec for llmroute.embed.load_encoder.")
    ] = "static-minilm",
    prices: Annotated[
        Path | None, typer.Option(help="Price table (USD per 1M tokens) for tables without cost.")
    ] = None,
    everyday: Annotated[
        bool,
        typer.Option(
            "--everyday/--no-everyday",
            help="Also fit a regime head from the everyday prompts shipped in the package, so that "
            "greetings, simple facts and rewrites go to the cheapest model and proofs or designs to "
            "the strongest even when the table holds only benchmark prompts (as the shipped router). "
            "Needs an estimator that uses the hand-made features (default, linear, mlp).",
        ),
    ] = False,
    everyday_prompts: Annotated[
        Path | None,
        typer.Option(
            help="With --everyday: your own labelled everyday prompts instead (JSONL: prompt or "
            "messages, tier easy|medium|hard).",
        ),
    ] = None,
) -> None:
    """Fit a router on a routing table and save it as one file."""
    if "," in router:
        raise typer.BadParameter("takes one router name", param_hint="--router")
    name = _parse_routers(router)[0]
    _check_data(data)
    if out.exists() and out.is_dir():
        _fail(f"--out {out} is a directory; give a file path")

    def go() -> Any:
        from llmroute.eval.runner import check_routable, load_dataset, with_cost_fallback
        from llmroute.router import Router

        table = load_dataset(data, tasks=tasks, prices=prices)
        table, cost_source = with_cost_fallback(table)
        check_routable(table)
        t0 = time.perf_counter()
        r = Router.fit(table, estimator=name, encoder=encoder, seed=seed)
        if everyday:
            from llmroute.data.everyday import load_everyday

            items = load_everyday(everyday_prompts) if everyday_prompts is not None else None
            r.fit_regime_head(table, items, seed=seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        r.save(out)
        return r, table, cost_source, time.perf_counter() - t0

    r, table, cost_source, secs = _run(go)
    typer.echo(
        json.dumps(
            {
                "router": str(out),
                "estimator": name,
                "models": list(r.models),
                "n_prompts": table.n_prompts,
                "cost_source": cost_source,
                "regime_head": r.regime_head is not None,
                "fit_s": round(secs, 3),
            },
            indent=1,
        )
    )


# ---- route -------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return obj


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    return str(o)


def _default_router_path() -> Path:
    try:
        from llmroute.router import default_router_path
    except ImportError as exc:
        raise CLIError("no --router given and this build has no shipped default router") from exc
    return Path(default_router_path())


@app.command("route")
def route_cmd(
    prompt: Annotated[str, typer.Argument(help="The prompt to route ('-' reads it from stdin).")],
    router: Annotated[
        Path | None, typer.Option(help="Router file (default: the shipped default router).")
    ] = None,
    tradeoff: Annotated[float | None, typer.Option(help="Quality-vs-cost trade-off lambda (>= 0).")] = None,
    max_cost: Annotated[float | None, typer.Option(help="Maximum expected cost per request in USD.")] = None,
    min_quality: Annotated[
        float | None, typer.Option(help="Cheapest model reaching this expected quality.")
    ] = None,
    allowed: Annotated[str | None, typer.Option(help="Comma-separated models to choose from.")] = None,
) -> None:
    """Route one prompt and print the decision as JSON."""
    if tradeoff is not None and (math.isnan(tradeoff) or tradeoff < 0):
        raise typer.BadParameter("must be >= 0", param_hint="--tradeoff")
    if max_cost is not None and (math.isnan(max_cost) or max_cost < 0):
        raise typer.BadParameter("must be >= 0", param_hint="--max-cost")
    if min_quality is not None and not 0.0 <= min_quality <= 1.0:
        raise typer.BadParameter("must be in [0, 1]", param_hint="--min-quality")
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        _fail("the prompt is empty")

    def go() -> Any:
        path = router if router is not None else _default_router_path()
        if not path.exists():
            raise CLIError(f"router file {path} does not exist (train one with `llmroute train`)")
        from llmroute.router import Router

        r = Router.load(path)
        allow = [a.strip() for a in allowed.split(",") if a.strip()] if allowed else None
        return r.route(text, tradeoff=tradeoff, max_cost=max_cost, min_quality=min_quality, allowed=allow)

    decision = _run(go)
    typer.echo(json.dumps(_jsonable(decision), indent=1, default=_json_default))


# ---- calibrate ---------------------------------------------------------------------------------
@app.command("calibrate")
def calibrate_cmd(
    prompts: Annotated[
        Path,
        typer.Option(
            "--prompts", help="Sample of your traffic: text (one prompt a line), or JSONL/CSV with 'prompt'."
        ),
    ],
    strong_share: Annotated[
        float, typer.Option("--strong-share", min=0.0, max=1.0, help="Share of prompts for the strong model.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the calibrated router file.")],
    router: Annotated[
        Path | None, typer.Option(help="Router file (default: the shipped default router).")
    ] = None,
    strong: Annotated[
        str | None, typer.Option(help="Strong model (router column; default: the router's).")
    ] = None,
    weak: Annotated[
        str | None, typer.Option(help="Weak model (router column; default: the router's).")
    ] = None,
) -> None:
    """Set the strong/weak threshold so --strong-share of --prompts go to the strong model.

    The written router carries the threshold as its policy: `route` without a trade-off and a
    gateway alias without its own trade-off use it; the saved score quantiles let a gateway map
    any other share (`llmroute/auto@0.5`) to a threshold.
    """
    if out.exists() and out.is_dir():
        _fail(f"--out {out} is a directory; give a file path")

    def go() -> tuple[Any, float, int]:
        from llmroute.data.prompts import load_prompts
        from llmroute.router import Router

        path = router if router is not None else _default_router_path()
        if not path.exists():
            raise CLIError(f"router file {path} does not exist (train one with `llmroute train`)")
        r = Router.load(path)
        if strong is not None or weak is not None:
            r.set_policy(**{k: v for k, v in (("strong", strong), ("weak", weak)) if v is not None})
        texts = load_prompts(prompts)
        thr = r.calibrate(texts, strong_share)
        out.parent.mkdir(parents=True, exist_ok=True)
        r.save(out)
        return r, thr, len(texts)

    r, thr, n = _run(go)
    typer.echo(
        json.dumps(
            {
                "router": str(out),
                "threshold": thr,
                "strong_share": strong_share,
                "strong": r.policy["strong"],
                "weak": r.policy["weak"],
                "n_prompts": n,
            },
            indent=1,
        )
    )


# ---- lazily imported commands of other parts ---------------------------------------------------
def _load_plugin(name: str) -> Any:
    target, _ = PLUGINS[name]
    mod_name, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and mod_name.startswith(exc.name):
            raise CLIError(
                f"`llmroute {name}` is not available in this build ({mod_name} is missing)"
            ) from exc
        raise
    try:
        return getattr(mod, attr or "app")
    except AttributeError as exc:
        raise CLIError(f"`llmroute {name}`: {mod_name} has no attribute {attr or 'app'!r}") from exc


def _make_plugin_command(name: str, help_text: str) -> None:
    @app.command(
        name,
        help=help_text,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def _plugin(ctx: typer.Context) -> None:
        try:
            obj = _load_plugin(name)
        except CLIError as exc:
            _fail(str(exc))
        if not isinstance(obj, typer.Typer):
            single = Typer(add_completion=False, pretty_exceptions_enable=False)
            single.command(name)(obj)
            obj = single
        cmd = typer.main.get_command(obj)
        cmd.main(
            args=list(ctx.args),
            prog_name=f"llmroute {name}",
            standalone_mode=True,
            help_option_names=list(HELP_OPTION_NAMES),
        )


for _name, (_target, _help) in PLUGINS.items():
    _make_plugin_command(_name, _help)


def _version(value: bool) -> None:
    if value:
        from llmroute import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Route each LLM request to the model that gives the best answer for the money."""
