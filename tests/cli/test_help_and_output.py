"""The command line reads well: --help without a type tag on every option, one help style across groups, the
`medtwin dose CASEFILE` form listed, and tables that are not folded at 80 columns when the output is piped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from medtwin.cli import app

runner = CliRunner()
SAMPLES = Path(__file__).parents[2] / "src" / "medtwin" / "data" / "samples"


def all_commands() -> list[tuple[list[str], Any]]:
    """Every command path (``["hospital", "whatif"]``) with its click command, lazy groups included."""
    root = typer.main.get_command(app)
    ctx = root.context_class(root)
    out: list[tuple[list[str], Any]] = []
    stack: list[tuple[list[str], Any]] = [([name], root.get_command(ctx, name)) for name in root.list_commands(ctx)]
    while stack:
        path, cmd = stack.pop()
        out.append((path, cmd))
        sub = getattr(cmd, "commands", None)
        if sub:
            stack.extend(([*path, name], c) for name, c in sub.items())
    return sorted(out, key=lambda item: item[0])


COMMANDS = all_commands()


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_shows_no_type_tag_on_flags_and_plain_ones_on_values(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    options = result.stdout.split("Options", 1)[-1]
    assert "<bool>" not in options  # a flag takes no value: it shows none (before: on --json, --help, ...)
    assert not re.search(r"--\S+\s+<(str|int|float|path)", options), options  # no <float>-style tags


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_help_is_a_sentence(path: list[str]) -> None:
    """One style in every group (the hospital group's were lower case without a full stop)."""
    command = {tuple(p): c for p, c in COMMANDS}[tuple(path)]
    for param in command.params:
        text = (param.help or "").strip()
        if not text:
            continue
        assert text[0].isupper() or text[0] in "-`", (path, param.name, text)
        assert text.endswith((".", ".)", "?")), (path, param.name, text)


def test_dose_help_lists_the_casefile_form() -> None:
    result = runner.invoke(app, ["dose", "--help"])
    assert "medtwin dose CASEFILE [OPTIONS]" in " ".join(result.stdout.split())
    top = runner.invoke(app, ["--help"])
    assert "`medtwin dose CASEFILE`" in " ".join(top.stdout.split())


def test_piped_tables_are_not_folded_at_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    result = runner.invoke(app, ["ingest", str(SAMPLES), "--db", f"sqlite:///{tmp_path / 'p.db'}"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "Alberto_Atencio" in line]
    assert len(rows) == 1  # one row, not a file name folded over three lines
    assert "Alberto_Atencio_fc712d1f-5a2e-4407-9c55-a2a2bad623c2.json" in rows[0]
    assert len(rows[0]) > 80
    monkeypatch.setenv("COLUMNS", "60")  # an explicit width is still honoured
    narrow = runner.invoke(app, ["patients", "--db", f"sqlite:///{tmp_path / 'p.db'}"])
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60
