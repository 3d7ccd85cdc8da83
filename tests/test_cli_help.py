"""Help of every `llmroute` command and sub-command: `-h` works and flags show no placeholder."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from llmroute import cli
from llmroute.cliapp import Typer

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # rich wraps help at $COLUMNS


def _paths(cmd: Any, prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """(argv prefix, click command) of `cmd` and every command below it."""
    out = [(prefix, cmd)]
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        out += _paths(sub, (*prefix, name))
    return out


def _all_commands() -> list[tuple[tuple[str, ...], Any]]:
    """Every command reachable from `llmroute`, plugins (serve, traces, keys, rules) included."""
    root = typer.main.get_command(cli.app)
    found = [((), root)]
    for name, sub in sorted(root.commands.items()):
        if name in cli.PLUGINS:
            obj = cli._load_plugin(name)
            if isinstance(obj, typer.Typer):
                found += _paths(typer.main.get_command(obj), (name,))
            else:  # a plain function: the plugin runner wraps it as one command
                single = Typer()
                single.command(name)(obj)
                found += _paths(typer.main.get_command(single), (name,))
        else:
            found += _paths(sub, (name,))
    return found


COMMANDS = _all_commands()


def test_the_walk_finds_the_commands_of_every_part() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    for expected in (
        "",
        "eval",
        "train",
        "route",
        "serve",
        "traces",
        "traces list",
        "keys new",
        "rules explain",
    ):
        assert expected in names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "llmroute")
def test_dash_h_is_help(path: tuple[str, ...]) -> None:
    long = runner.invoke(cli.app, [*path, "--help"], env=WIDE)
    short = runner.invoke(cli.app, [*path, "-h"], env=WIDE)
    assert long.exit_code == 0, long.output
    assert short.exit_code == 0, short.output
    assert "Usage:" in short.output
    assert short.output == long.output


def _flags(cmd: Any) -> list[str]:
    return [opt for p in cmd.params if getattr(p, "is_flag", False) for opt in [*p.opts, *p.secondary_opts]]


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "llmroute")
def test_flags_show_no_value_placeholder(path: tuple[str, ...]) -> None:
    res = runner.invoke(cli.app, [*path, "--help"], env=WIDE)
    assert res.exit_code == 0, res.output
    out = res.output
    for bad in ("<bool>", "BOOLEAN", "<boolean>"):
        assert bad not in out, f"`llmroute {' '.join(path)} --help` shows {bad!r}:\n{out}"
    # options that take a value still show their type
    cmd = dict(COMMANDS)[path]
    valued = [p for p in cmd.params if not getattr(p, "is_flag", True) and getattr(p, "opts", None)]
    if valued and any(o.startswith("--") for p in valued for o in p.opts):
        assert "<" in out or "TEXT" in out or "PATH" in out


def test_every_bool_option_is_a_flag() -> None:
    """A bool option that is not a flag would take a value (`--json true`)."""
    for path, cmd in COMMANDS:
        for p in cmd.params:
            desc = getattr(p, "type_descriptor", None)
            if p.param_type_name == "option" and getattr(desc, "annotation", None) is bool:
                assert p.is_flag, f"llmroute {' '.join(path)}: {p.opts} takes a value"
    assert any(_flags(cmd) for _, cmd in COMMANDS)


def test_eval_help_shows_the_defaults_of_its_optional_options() -> None:
    """--routers/--folds/--encoder default to None (so --router can refuse them): the help says
    what they mean when left out (square brackets would be eaten as rich markup)."""
    out = " ".join(runner.invoke(cli.app, ["eval", "-h"], env=WIDE).output.split())
    assert "(default: default,knn,linear,mlp,mf)" in out
    assert "(default: 5)" in out and "(default: static-minilm)" in out
