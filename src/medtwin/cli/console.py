"""Consoles for the `medtwin` command: full-width tables when the output is piped, and tidy help.

Rich sizes its output to the terminal, and to 80 columns when the output is a pipe or a file, so a table
piped into ``less`` or a log file was folded into unreadable cells.  :func:`make_console` keeps the terminal's
width on a terminal and otherwise lets lines and tables take the width they need (``COLUMNS`` still wins when
set); :func:`heading` prints a section rule that stays short on a wide console.  :func:`tidy_help` removes the
type tag Typer prints beside every option in ``--help`` (``<bool>`` on a flag, ``<str>``...): flags show
nothing, options that take a value show its kind in capitals (``FLOAT``, ``PATH``), as click does.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.rule import Rule

__all__ = ["PIPE_WIDTH", "heading", "make_console", "tidy_help", "tidy_options"]

#: Width of a console writing to a pipe or a file: wide enough that no table of medtwin is folded.
PIPE_WIDTH = 400
_RULE_WIDTH = 100


def make_console(*, stderr: bool = False) -> Console:
    """A Rich console for stdout (or *stderr*) that does not fold tables at 80 columns when piped."""
    stream = sys.stderr if stderr else sys.stdout
    if os.environ.get("COLUMNS") or stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=True)


def heading(console: Console, title: str) -> None:
    """A section rule with *title*, at most 100 columns wide."""
    console.print(Rule(title), width=min(console.width, _RULE_WIDTH))


# Typer ships its own copy of click (typer._click), so options and commands are recognised by what they have,
# not by isinstance against the installed click.
_KINDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "datetime": "DATETIME"}


def _value_kind(param: Any, ctx: Any) -> str:
    shown = getattr(param, "display_type", None)
    label = str(shown(ctx)).strip("<>") if shown is not None else "value"
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None and descriptor.is_choice:
        return label  # the choices themselves, as they are typed
    label = label.removeprefix("list[").removesuffix("]").removesuffix(" range")
    return _KINDS.get(label, label.upper())


def tidy_options(params: list[Any], ctx: Any) -> list[Any]:
    """*params* with plain tags: nothing on a flag, the kind of value (``NUMBER``, ``a|b``) on other options, and
    arguments named in capitals (``CASEFILE``)."""
    for param in params:
        kind = getattr(param, "param_type_name", "")
        if kind == "option" and param.metavar is None:
            param.metavar = "" if param.is_flag or param.count else _value_kind(param, ctx)
        elif kind == "argument" and param.metavar is None and param.name:
            param.metavar = str(param.name).upper()
    return params


def tidy_help(command: Any) -> Any:
    """*command* (a click command or group, and every sub-command already loaded) with plain option tags."""
    seen: set[int] = set()
    stack = [command]
    while stack:
        cmd = stack.pop()
        if id(cmd) in seen or not hasattr(cmd, "get_help_option"):
            continue
        seen.add(id(cmd))
        ctx = cmd.context_class(cmd)
        help_option = cmd.get_help_option(ctx)  # created once and cached by click
        tidy_options([*cmd.params, *([help_option] if help_option is not None else [])], ctx)
        stack.extend(getattr(cmd, "commands", {}).values())
    return command
