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


def _command_lines(*, keep_redirect: bool = False) -> list[str]:
    text = README.read_text(encoding="utf-8")
    lines: list[str] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.DOTALL):
        for raw in block.splitlines():
            line = raw.split("  #")[0].strip()
            for part in re.split(r"\s*(?:&&|;|&(?!\S))\s*", line):
                part = part.strip() if keep_redirect else part.split(" > ")[0].strip()
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


# -- the tour runs as written ---------------------------------------------------------------------------------------
ROOT = README.parent
# What a fresh clone has that the tour's command lines read (copied into an empty folder, which is the working folder).
_TOUR_INPUTS = ("src/medtwin/data/samples", "src/medtwin/data/cgm", "src/medtwin/data/therapy", "tests/fixtures/pk")
# Lines that need another process running: `listen &` then `monitors`; tests/cli/test_monitor_cli.py runs both
# together through `medtwin demo-terminal` (listener, twin runtime and virtual monitors in one command).
# `medtwin demo` (the platform, until Ctrl-C) runs in tests/web/test_browser.py; `demo-terminal` in test_monitor_cli.py.
# `devices simulate` needs a broker (tests/interop/test_mqtt.py).
_NEEDS_A_LISTENER = (
    "medtwin listen ",
    "medtwin monitors ",
    "medtwin serve ",
    "medtwin demo ",
    "medtwin demo-terminal ",
    "medtwin devices simulate ",
)
# Lines that ask for a password at a prompt (tests/server/test_cli_access.py runs users/clients with --password-stdin).
_NEEDS_A_PROMPT = ("medtwin users add ",)
# Lines that read the user's own data, which a fresh clone does not have (outcomes to evaluate predictions on).
_NEEDS_YOUR_DATA = (
    "medtwin risk evaluate ",
    "medtwin dose --patient ",
)  # dose --patient: a drug course in the record (tests/twin/test_drug_component.py runs it)
# Lines that take tens of seconds (Dask clusters, 20 patient-days, identifying a glucose twin): `make test-slow`.
_SLOW = (
    "medtwin glucose simulate ",
    "medtwin glucose metrics run.parquet",
    "medtwin hospital ",
    "medtwin glucose twin ",
)


def _tour(slow: bool) -> list[str]:
    skipped = (*_NEEDS_A_LISTENER, *_NEEDS_YOUR_DATA, *_NEEDS_A_PROMPT)
    lines = [line for line in _command_lines(keep_redirect=True) if not line.startswith(skipped)]
    return [line for line in lines if line.startswith(_SLOW) == slow]


def _run_tour(lines: list[str], folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import shutil

    from typer.testing import CliRunner

    for rel in _TOUR_INPUTS:
        shutil.copytree(ROOT / rel, folder / rel)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MEDTWIN_DATABASE_URL", raising=False)
    runner = CliRunner()
    outputs: dict[str, str] = {}
    for line in lines:
        command, _, redirect = line.partition(" > ")
        result = runner.invoke(app, shlex.split(command)[1:])
        assert result.exit_code == 0, f"{line}\n{result.output}"
        if redirect:
            (folder / redirect.strip()).write_text(result.stdout, encoding="utf-8")
        outputs[line] = result.stdout
    return outputs


def test_the_readme_tour_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every quick command of the README, in order, in an empty folder holding only what a fresh clone has."""
    lines = _tour(slow=False)
    assert len(lines) >= 11
    out = _run_tour(lines, tmp_path, monkeypatch)
    text = {line.split("  #")[0].split(" --")[0]: o for line, o in out.items()}
    assert "NEWS2 6 - medium clinical response" in text["medtwin news2"]
    assert (tmp_path / "record.json").read_text().lstrip().startswith("{")  # the export went to the file
    sample = next(o for line, o in out.items() if "hall2018_subject1_clarity_mmol.csv" in line)
    assert '"format": "Dexcom Clarity CSV"' in sample
    assert '"signal": "CGM (sensor glucose)"' in sample
    assert "schema 1, valid" in text["medtwin dose check goti2018_vancomycin"]
    assert (tmp_path / "proposal.json").is_file()
    assert (tmp_path / "case_a.png").is_file()


@pytest.mark.slow
def test_the_readme_tour_slow_lines_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _tour(slow=True)
    assert len(lines) >= 6
    _run_tour(lines, tmp_path, monkeypatch)
    for made in ("agp.png", "run.parquet", "adt.csv", "model.json", "forecast.png", "me.json", "fit.png", "replay.png",
                 "twin_forecast.png"):  # fmt: skip
        assert (tmp_path / made).is_file(), made
