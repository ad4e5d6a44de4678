"""The `medtwin` command: one Typer app that gathers the sub-commands of every package.

The glucose, dosing and hospital command groups pull in numba, scipy's optimisers and Dask; they are imported
only when their group is invoked (or help lists it), so `medtwin news2` or `medtwin listen` start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from medtwin.cli import demo, monitor, platform_demo, records
from medtwin.cli.console import tidy_help, tidy_options

__all__ = ["app", "main"]

# name -> (module holding a Typer `app`, one-line help shown in `medtwin --help`)
_LAZY_GROUPS: dict[str, tuple[str, str]] = {
    "glucose": ("medtwin.cli.glucose", "Type 1 diabetes twin (UVA/Padova): simulate cohorts, CGM metrics."),
    "dose": (
        "medtwin.cli.dose",
        "Precision dosing twin: `medtwin dose CASEFILE`, `--patient ID`; `medtwin dose models`.",
    ),
    "hospital": ("medtwin.cli.hospital", "Hospital operations twin: calibrate, forecast, what-if, report."),
    "risk": ("medtwin.cli.risk", "Risk equations from the record (PCE, PREVENT, QRISK3...) and local validation."),
    "inbox": ("medtwin.cli.inbox", "The raw inbound log: dead letters, conflicts, retry after a fix."),
    "trial": ("medtwin.cli.trial", "Virtual trials: `medtwin trial run SPEC`, `medtwin trial power SPEC`."),
    "twin": ("medtwin.cli.twin", "The living twin of a patient from the record: show, forecast, whatif, recommend."),
    "devices": ("medtwin.cli.devices", "Wearables over MQTT: register and bind devices, simulate CGM wearers."),
    "audit": ("medtwin.cli.audit", "The audit chain: verify, export as FHIR AuditEvent, review break-glass."),
    "serve": ("medtwin.cli.serve", "API server (FHIR R4 facade, OAuth2, live events); --mllp adds listener + twins."),
    "users": ("medtwin.cli.users", "API users: add, list, disable; assign patients to care teams."),
    "clients": ("medtwin.cli.clients", "OAuth clients of the API: devices, services, browser apps."),
    "keys": ("medtwin.cli.keys", "Keys of encryption at rest: status, rotate the master key."),
    "certs": ("medtwin.cli.certs", "Development certificates: `medtwin certs dev` (a CA, server and client)."),
}


class _LazyGroup(TyperGroup):
    """The top-level group: eager commands as usual, plus the heavy groups loaded on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *_LAZY_GROUPS]

    def get_params(self, ctx: Any) -> list[Any]:
        return tidy_options(super().get_params(ctx), ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in _LAZY_GROUPS:
            module = importlib.import_module(_LAZY_GROUPS[cmd_name][0])
            command = typer.main.get_command(module.app)
            command.name = cmd_name
            command.short_help = _LAZY_GROUPS[cmd_name][1]
            return tidy_help(command)
        return tidy_help(super().get_command(ctx, cmd_name))


app = typer.Typer(
    name="medtwin",
    cls=_LazyGroup,
    help="medtwin: healthcare digital twins (records, glucose, dosing, monitoring, hospital).",
    no_args_is_help=True,
    add_completion=False,
)
# `medtwin demo` is the platform in the browser; `medtwin demo-terminal` the terminal story; records adds its
# ingest-only demo only when no `demo` exists.
platform_demo.register(app)
demo.register(app)
monitor.register(app)
records.register(app)


def main() -> None:
    """Entry point of the `medtwin` console script."""
    app()
