"""The top-level CLI loads the heavy command groups (glucose, dose, hospital) only when they are used."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from medtwin.cli import app

HEAVY = ("medtwin.glucose", "medtwin.dosing", "medtwin.hospital", "numba", "distributed")


def test_importing_the_cli_does_not_import_heavy_areas() -> None:
    code = f"import sys, medtwin.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_groups_are_listed_and_resolve() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("glucose", "dose", "hospital", "news2", "ingest"):
        assert name in result.output
    models = CliRunner().invoke(app, ["dose", "models"])
    assert models.exit_code == 0
    assert "goti2018_vancomycin" in models.output
    unknown = CliRunner().invoke(app, ["nosuch"])
    assert unknown.exit_code != 0
