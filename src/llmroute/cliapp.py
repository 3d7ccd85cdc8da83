"""The typer application class every `llmroute` command line uses.

`Typer` is `typer.Typer` with two defaults shared by all commands and sub-commands:

- `-h` works like `--help` (click's `help_option_names`);
- boolean flags (`--json`, `--progress/--no-progress`, `--help`) show no value placeholder such
  as ``<bool>`` in the help: they take no value.

Use it instead of `typer.Typer` (same arguments)::

    from llmroute.cliapp import Typer
    app = Typer(help="...", no_args_is_help=True)

    @app.command("list")
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

__all__ = ["HELP_OPTION_NAMES", "Command", "Group", "Typer", "context_settings", "hide_flag_placeholders"]

#: The help options of every command.
HELP_OPTION_NAMES: tuple[str, ...] = ("-h", "--help")


def context_settings(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """click context settings with `-h`/`--help` (a fresh dict), updated with `extra`."""
    return {"help_option_names": list(HELP_OPTION_NAMES), **(extra or {})}


def hide_flag_placeholders(params: list[Any]) -> list[Any]:
    """Give boolean flags (not counters) an empty metavar, so the help shows no ``<bool>``.

    Returns `params` (changed in place). Options that take a value are left alone.
    """
    for p in params:
        if getattr(p, "is_flag", False) and not getattr(p, "count", False):
            p.metavar = ""
    return params


class Command(TyperCommand):
    """A typer command whose flags (and its help option) show no value placeholder."""

    def get_params(self, ctx: Any) -> list[Any]:
        return hide_flag_placeholders(super().get_params(ctx))


class Group(TyperGroup):
    """A typer group whose flags (and its help option) show no value placeholder."""

    def get_params(self, ctx: Any) -> list[Any]:
        return hide_flag_placeholders(super().get_params(ctx))


class Typer(typer.Typer):
    """`typer.Typer` with `-h` as `--help` and no placeholder for boolean flags (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("cls") is None:
            kwargs["cls"] = Group
        kwargs["context_settings"] = context_settings(kwargs.get("context_settings"))
        super().__init__(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """`typer.Typer.command`, with the `Command` class and `-h` unless given."""
        if kwargs.get("cls") is None:
            kwargs["cls"] = Command
        kwargs["context_settings"] = context_settings(kwargs.get("context_settings"))
        return super().command(*args, **kwargs)
