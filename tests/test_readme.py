"""The README's command lines parse against the real CLI, so the tour cannot name a command or option that is gone."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from medtwin.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _command_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    lines: list[str] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.DOTALL):
        for raw in block.splitlines():
            line = raw.split("  #")[0].strip()
            for part in re.split(r"\s*(?:&&|;|&(?!\S))\s*", line):
                part = part.split(" > ")[0].strip()
                if part.startswith("medtwin "):
                    lines.append(part)
    return lines


def _is_group(command: object) -> bool:
    # Typer >= 0.20 ships its own copy of click, so duck-type rather than isinstance(click.Group).
    return hasattr(command, "resolve_command")


def _parse(args: list[str]) -> Any:
    """Parse *args* down the group tree without running anything; return the leaf command."""
    command: Any = get_command(app)
    ctx = command.make_context("medtwin", list(args))
    while _is_group(command):
        remaining = [*ctx._protected_args, *ctx.args]
        if not remaining:
            break
        name, sub, rest = command.resolve_command(ctx, remaining)
        assert sub is not None, f"no command {name!r}"
        ctx = sub.make_context(name or sub.name or "", rest, parent=ctx)
        command = sub
    return command


def test_readme_has_command_examples() -> None:
    assert len(_command_lines()) >= 12


@pytest.mark.parametrize("line", _command_lines())
def test_readme_command_line_parses(line: str) -> None:
    args = shlex.split(line)[1:]
    leaf = _parse(args)
    assert not _is_group(leaf), f"{line!r} stops at a group"


@pytest.mark.parametrize(
    "args", [["glucose", "simulate", "--bogus"], ["hospital", "nosuch"], ["dose", "models", "--bogus"], ["nosuch"]]
)
def test_the_parser_check_rejects_what_does_not_exist(args: list[str]) -> None:
    with pytest.raises(Exception, match=r"(?i)no such|does not exist|not found|invalid"):
        _parse(args)
