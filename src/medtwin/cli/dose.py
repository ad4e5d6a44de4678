"""`medtwin dose ...`: the precision-dosing twin on the command line.

``medtwin dose CASEFILE`` (same as ``medtwin dose report CASEFILE``) reads a JSON or CSV case,
fits the patient and prints the report; ``--json`` prints the JSON form, ``--plot OUT.png`` writes
the concentration-time plot, ``--fhir OUT.json`` writes a FHIR R4 Bundle of the proposal.
``medtwin dose models`` lists the model library.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from medtwin.dosing import analyze_case, library_models, load_case, load_model, to_records
from medtwin.errors import MedtwinError
from medtwin.interop.fhir import to_fhir

__all__ = ["app"]


class _CaseFileGroup(TyperGroup):
    """A group where an unknown first word is a case file for the ``report`` command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["report", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_CaseFileGroup,
    help="Precision dosing twin: `medtwin dose CASEFILE` prints the report; "
    "`medtwin dose models` lists the model library.",
    no_args_is_help=True,
)


@app.command("models")
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print the library as JSON."),
) -> None:
    """List the population PK models shipped with medtwin."""
    rows: list[dict[str, Any]] = []
    for model_id in library_models():
        m = load_model(model_id)
        rows.append(
            {
                "id": m.id,
                "drug": m.drug,
                "compartments": m.compartments,
                "error_model": m.error.kind,
                "covariates": [c.name for c in m.covariates],
                "title": m.title,
                "doi": m.doi,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r['id']:<24} {r['drug']:<11} {r['compartments']}-cmt  error={r['error_model']:<11}"
            f" covariates={','.join(r['covariates'])}  doi:{r['doi']}"
        )


def _fhir_bundle(records: list[Any]) -> dict[str, Any]:
    """A FHIR R4 collection Bundle of the proposal records (converter: medtwin.interop.fhir)."""
    entries = []
    for rec in records:
        resource = to_fhir(rec)
        url = f"https://medtwin.invalid/fhir/{resource['resourceType']}/{resource['id']}"
        entries.append({"fullUrl": url, "resource": resource})
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "entry": entries,
    }


@app.command("report")
def report_command(
    casefile: Path = typer.Argument(..., help="Patient case (.json or .csv)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG plot here."),
    fhir_out: Path | None = typer.Option(
        None, "--fhir", help="Write a FHIR R4 Bundle (MedicationRequest proposal + Observations)."
    ),
    samples: int = typer.Option(1000, "--samples", min=100, help="Posterior (SIR) samples."),
    seed: int = typer.Option(0, "--seed", help="Random seed (multi-start and SIR)."),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 2) instead of warning on validity-range problems."),
) -> None:
    """Fit the patient in CASEFILE and print the dosing report."""
    try:
        case = load_case(casefile)
        if strict and case.warnings:
            typer.echo("error: " + "; ".join(case.warnings), err=True)
            raise typer.Exit(2)
        report = analyze_case(case, n_samples=samples, seed=seed)
        if plot is not None:
            report.plot(str(plot))
        if fhir_out is not None:
            bundle = _fhir_bundle(to_records(report))
            fhir_out.write_text(json.dumps(bundle, indent=2), encoding="utf-8")
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.to_text())
