"""`medtwin dose ...`: the precision-dosing twin on the command line.

``medtwin dose CASEFILE`` (same as ``medtwin dose report CASEFILE``) reads a JSON or CSV case
(``medtwin dose --patient ID`` builds it from the patient's stored record: medtwin.dosing.record_case),
fits the patient and prints the report; ``--json`` prints the JSON form, ``--plot OUT.png`` writes
the concentration-time plot, ``--fhir OUT.json`` writes a FHIR R4 Bundle of the proposal.
``--target`` replaces the case's target and ``--also`` adds criteria of a combined target::

    --target "auc24_ss=400-600"                           AUC24 at steady state, 400-600 mg.h/L
    --target "trough_ss=15"                               trough 15 mg/L
    --target "time_to_threshold_ss=16-20,threshold_mg_l=1"  C falls to 1 mg/L 16-20 h after each dose
    --target "auc=400,start_h=48,end_h=72"                AUC over a window
    --also "trough_ss<=20" --also "peak_ss>=30"           AND criteria counted in the PTA

``medtwin dose models [PATH ...]`` lists the model library (or the model files at PATH: files or
folders); ``medtwin dose check MODEL`` validates a model file and prints what medtwin understood of
it (parameters, covariates with units, Omega, error model) and a typical patient's profile.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from medtwin.dosing import analyze_case, library_models, load_case, load_model, to_records
from medtwin.dosing.case import CaseError, PatientCase, TargetSpec, parse_target
from medtwin.dosing.check import check_model
from medtwin.errors import MedtwinError
from medtwin.interop.fhir import to_fhir

__all__ = ["app"]


class _CaseFileGroup(TyperGroup):
    """A group where an unknown first word is a case file for the ``report`` command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if (args and not args[0].startswith("-") and args[0] not in self.commands) or (
            args and (args[0] == "--patient" or args[0].startswith("--patient="))
        ):
            args = ["report", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_CaseFileGroup,
    help="Precision dosing twin.\n\n"
    "medtwin dose CASEFILE [OPTIONS]: fit the patient in CASEFILE (.json or .csv) and print the dosing report "
    "(the same as `medtwin dose report CASEFILE`; options: `medtwin dose report --help`).",
    no_args_is_help=True,
    add_completion=False,
)


def _model_paths(paths: list[Path]) -> list[str]:
    """Model files named on the command line: files as given, folders by their *.toml files."""
    out: list[str] = []
    for path in paths:
        if path.is_dir():
            out += [str(p) for p in sorted(path.glob("*.toml"))]
        else:
            out.append(str(path))
    return out


@app.command("models")
def models_command(
    paths: list[Path] = typer.Argument(
        None, help="Model files or folders (default: the library shipped with medtwin)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List population PK models: the library, or the model files at PATH."""
    rows: list[dict[str, Any]] = []
    failed = 0
    for name in _model_paths(paths) if paths else library_models():
        try:
            m = load_model(name)
        except MedtwinError as exc:
            typer.echo(f"error: {exc}", err=True)
            failed += 1
            continue
        rows.append(
            {
                "id": m.id,
                "file": m.source_path,
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
    else:
        for r in rows:
            typer.echo(
                f"{r['id']:<24} {r['drug']:<11} {r['compartments']}-cmt  error={r['error_model']:<11}"
                f" covariates={','.join(r['covariates'])}  doi:{r['doi']}"
            )
    if failed or (paths and not rows):
        raise typer.Exit(2)


def _covariate_values(items: list[str]) -> dict[str, float]:
    """``--covariate WT=80`` options as ``{"WT": 80.0}``."""
    out: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not name.strip() or not math.isfinite(number):
            raise CaseError(f"--covariate {item!r}: expected NAME=NUMBER in the model's unit, e.g. WT=80")
        out[name.strip()] = number
    return out


@app.command("check")
def check_command(
    model: str = typer.Argument(..., help="Model file (.toml) or library model id."),
    covariate: list[str] = typer.Option(
        [], "--covariate", help="A covariate of the typical patient, NAME=VALUE in the model's unit (repeatable)."
    ),
    dose_mg: float = typer.Option(1000.0, "--dose-mg", min=0.0, help="Dose of the typical profile (mg)."),
    duration_h: float = typer.Option(1.0, "--duration-h", min=0.0, help="Infusion duration (h; 0 = bolus)."),
    interval_h: float = typer.Option(12.0, "--interval-h", min=0.0, help="Dosing interval for steady state (h)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Validate a model file; print what medtwin understood of it and a typical patient's profile."""
    try:
        result = check_model(
            model,
            covariates=_covariate_values(covariate),
            dose_mg=dose_mg,
            duration_h=duration_h,
            interval_h=interval_h,
        )
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_text())


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


_RANGE = re.compile(r"^(?P<low>[0-9.eE+]+)(?:-(?P<high>[0-9.eE+]+))?$")
_BOUND = re.compile(r"^(?P<metric>[a-z0-9_]+)\s*(?P<op><=|>=|=)\s*(?P<rest>.+)$")


def _current_target(t: TargetSpec) -> dict[str, Any]:
    """The case's target as a case-file mapping (so that ``--also`` alone extends it)."""
    out: dict[str, Any] = {"metric": t.metric, "value": t.value, "low": t.low, "high": t.high}
    for key in ("start_h", "end_h", "time_h", "threshold_mg_l"):
        if getattr(t, key) is not None:
            out[key] = getattr(t, key)
    also = [
        {"metric": c.metric, "low": c.low} | ({"high": c.high} if c.high != float("inf") else {}) for c in t.constraints
    ]
    return out | ({"also": also} if also else {})


def _target_mapping(text: str | None, also: list[str], current: TargetSpec) -> dict[str, Any]:
    """``METRIC=LOW-HIGH[,key=value...]`` plus ``--also`` bounds, as a case-file target mapping."""
    if text is None:
        out = _current_target(current)
    else:
        head, *extras = [part.strip() for part in text.split(",")]
        metric, sep, rng = head.partition("=")
        match = _RANGE.match(rng.strip())
        if not sep or match is None:
            raise CaseError(f"--target {text!r}: expected METRIC=VALUE or METRIC=LOW-HIGH, e.g. auc24_ss=400-600")
        out = {"metric": metric.strip()}
        if match["high"] is None:
            out["value"] = match["low"]
        else:
            out["low"], out["high"] = match["low"], match["high"]
        for extra in extras:
            key, sep, value = extra.partition("=")
            if not sep:
                raise CaseError(f"--target {text!r}: {extra!r} is not key=value")
            out[key.strip()] = value.strip()
    constraints: list[dict[str, Any]] = list(out.get("also", []))
    for item in also:
        bound = _BOUND.match(item.strip())
        if bound is None:
            raise CaseError(f"--also {item!r}: expected METRIC<=HIGH, METRIC>=LOW or METRIC=LOW-HIGH")
        op, rest = bound["op"], bound["rest"].strip()
        if op == "=":
            lo, _, hi = rest.partition("-")
            constraints.append({"metric": bound["metric"], "low": lo, "high": hi or lo})
        else:
            constraints.append({"metric": bound["metric"], "high" if op == "<=" else "low": rest})
    if constraints:
        out["also"] = constraints
    return out


def _record_case(patient_id: str, db: str | None, drug: str | None, model: str | None) -> PatientCase:
    """The case of *patient_id* from the store (:mod:`medtwin.dosing.record_case`)."""
    from medtwin.dosing.record_case import case_from_patient_records
    from medtwin.store import Store

    store = Store(db, create=False)
    try:
        patient = store.patient(patient_id)
        if patient is None:
            matches = store.patient_ids(patient_id)
            if len(matches) != 1:
                raise CaseError(
                    f"no single patient with id {patient_id!r} ({len(matches)} match; see `medtwin patients`)"
                )
            patient = store.patient(matches[0])
            assert patient is not None
        administrations = store.medication_administrations(patient.patient_id)
        observations = store.observations(patient.patient_id)
    finally:
        store.close()
    return case_from_patient_records(patient.patient_id, patient, administrations, observations, drug=drug, model=model)


@app.command("report")
def report_command(
    casefile: Path | None = typer.Argument(None, help="Patient case (.json or .csv); or --patient."),
    patient: str | None = typer.Option(None, "--patient", help="Build the case from this patient's stored record."),
    db: str | None = typer.Option(None, "--db", help="Database URL for --patient (default: the configured store)."),
    drug: str | None = typer.Option(None, "--drug", help="With --patient: the drug (when the record has several)."),
    model: str | None = typer.Option(
        None, "--model", help="With --patient: a library model id instead of the drug's default."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG plot here."),
    fhir_out: Path | None = typer.Option(
        None, "--fhir", help="Write a FHIR R4 Bundle (MedicationRequest proposal + Observations)."
    ),
    samples: int = typer.Option(1000, "--samples", min=100, help="Posterior (SIR) samples."),
    seed: int = typer.Option(0, "--seed", help="Random seed (multi-start and SIR)."),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 2) instead of warning on validity-range problems."),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Replace the case's target: METRIC=LOW-HIGH[,key=value], e.g. "
        "'auc24_ss=400-600' or 'time_to_threshold_ss=16-20,threshold_mg_l=1'.",
    ),
    also: list[str] = typer.Option([], "--also", help="Extra criterion of a combined target, e.g. 'trough_ss<=20'."),
) -> None:
    """Fit the patient in CASEFILE and print the dosing report."""
    try:
        if (casefile is None) == (patient is None):
            raise CaseError("give a case file or --patient ID (one of them)")
        case = load_case(casefile) if casefile is not None else _record_case(str(patient), db, drug, model)
        if target is not None or also:
            mapping = _target_mapping(target, also, case.target)
            case = dataclasses.replace(case, target=parse_target(mapping, "--target"))
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
