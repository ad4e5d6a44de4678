"""The `medtwin` command: one Typer app that gathers the sub-commands of every package."""

from __future__ import annotations

import typer

from medtwin.cli import dose, glucose, hospital, monitor, records

__all__ = ["app", "main"]

app = typer.Typer(
    name="medtwin",
    help="medtwin: healthcare digital twins (records, glucose, dosing, monitoring, hospital).",
    no_args_is_help=True,
    add_completion=False,
)
# The monitoring area registers the full `demo`; records adds its ingest-only demo when none exists.
monitor.register(app)
records.register(app)
app.add_typer(glucose.app, name="glucose")
app.add_typer(dose.app, name="dose")
app.add_typer(hospital.app, name="hospital")


def main() -> None:
    """Entry point of the `medtwin` console script."""
    app()
