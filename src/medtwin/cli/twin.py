"""`medtwin twin show|forecast|whatif|recommend PATIENT`: the living twin of a patient, from the stored record.

Each command replays the patient's record through a fresh twin (:func:`medtwin.twin.from_record.twin_from_record`:
the components the record calls for, fed in time order) and asks it; nothing is written. ``--json`` on every
command. The alerts the running twins raised are read from the store.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import typer

from medtwin.cli.console import make_console
from medtwin.cli.records import open_existing, print_json, resolve_patient, store_errors
from medtwin.errors import MedtwinError
from medtwin.records import Event, MedicationRequest, Record
from medtwin.twin.component import ComponentRegistry
from medtwin.twin.from_record import twin_from_record
from medtwin.twin.patient import PatientTwin

__all__ = ["app"]

app = typer.Typer(
    help="The living twin of a patient, built from the stored record: show, forecast, whatif, recommend.",
    no_args_is_help=True,
    add_completion=False,
)

DbOption = typer.Option(None, "--db", help="Database URL (default: $MEDTWIN_DATABASE_URL, medtwin.toml, ./medtwin.db).")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


def _plain(value: Any) -> Any:
    """*value* as JSON-ready data (dataclasses and numpy arrays of forecasts included)."""
    to_dict = getattr(value, "to_dict", None)
    if to_dict is not None:
        return to_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__ if not k.startswith("path")}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, timedelta):
        return value.total_seconds()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _twin(patient_id: str, db: str | None) -> tuple[str, PatientTwin, list[Record], list[Event]]:
    console = make_console(stderr=True)
    store = open_existing(db, console)
    try:
        with store_errors(console):
            patient = resolve_patient(store, patient_id, console)
            try:
                twin, produced = twin_from_record(store, patient.patient_id, registry=ComponentRegistry.default())
            except MedtwinError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            stored = [e for e in store.events(patient_id=patient.patient_id) if e.status == "active"]
    finally:
        store.close()
    return patient.patient_id, twin, produced, stored


def _component_summary(twin: PatientTwin) -> dict[str, Any]:
    out: dict[str, Any] = {}
    vitals = twin.vitals.last_news2
    out["vitals"] = (
        {"news2": None, "note": "no NEWS2 yet: no vital signs in the record"}
        if vitals is None
        else {"news2": vitals.total, "level": vitals.level, "missing": list(vitals.missing)}
    )
    for name, component in twin.components.items():
        summary = getattr(component, "summary", None)
        if callable(summary):
            out[name] = _plain(summary())
        else:
            out[name] = {"state": "running"}
    return out


@app.command("show")
def show(patient: str = typer.Argument(..., help="Patient id (a unique prefix is enough)."),
         db: str | None = DbOption, as_json: bool = JsonOption) -> None:  # fmt: skip
    """The twin's components and what each knows, the proposals it makes and the active alerts."""
    pid, twin, produced, stored = _twin(patient, db)
    proposals = [r for r in produced if isinstance(r, MedicationRequest)]
    data: dict[str, Any] = {
        "patient_id": pid,
        "components": _component_summary(twin),
        "proposals": [
            {
                "request_id": r.request_id,
                "medication": r.medication.display,
                "dose_mg": r.dose and r.dose.value,
                "interval_h": r.interval_h,
                "duration_h": r.infusion_duration_h,
                "status": r.status,
            }
            for r in proposals
        ],
        "active_alerts": [
            {"code": e.code, "severity": e.severity, "time": e.time.isoformat(), "message": e.message}
            for e in stored
            if e.kind == "alert"
        ],
    }
    if as_json:
        print_json(data)
        return
    console = make_console()
    console.print(f"patient {pid}: components {', '.join(data['components'])}", highlight=False)
    for name, summary in data["components"].items():
        console.print(f"  {name}: {json.dumps(summary, default=str)}", highlight=False)
    for p in data["proposals"]:
        console.print(f"  proposal {p['request_id']}: {p['medication']} {p['dose_mg']:g} mg every "
                      f"{p['interval_h']:g} h over {p['duration_h']:g} h ({p['status']})", highlight=False)  # fmt: skip
    console.print(f"  active alerts: {len(data['active_alerts'])}", highlight=False)
    for a in data["active_alerts"]:
        console.print(f"    [{a['severity']}] {a['time']} {a['code']}: {a['message']}", highlight=False)


@app.command("forecast")
def forecast(patient: str = typer.Argument(..., help="Patient id (a unique prefix is enough)."),
             minutes: int = typer.Option(120, min=1, max=1440, help="Horizon in minutes."),
             db: str | None = DbOption, as_json: bool = JsonOption) -> None:  # fmt: skip
    """Each component's forecast *minutes* ahead (NEWS2 trend, CGM glucose, drug exposure)."""
    pid, twin, _, _ = _twin(patient, db)
    horizon = timedelta(minutes=minutes)
    data: dict[str, Any] = {"patient_id": pid, "horizon_min": minutes, "vitals": _plain(twin.forecast(horizon))}
    for name, component in twin.components.items():
        data[name] = _plain(component.forecast(horizon))
    if as_json:
        print_json(data)
    else:
        make_console().print(json.dumps(data, indent=2, default=str), highlight=False)


def _target(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    from medtwin.cli.dose import _target_mapping
    from medtwin.dosing.case import TargetSpec

    return _target_mapping(text, [], TargetSpec("auc24_ss", 500, 400, 600))


@app.command("whatif")
def whatif(patient: str = typer.Argument(..., help="Patient id (a unique prefix is enough)."),
           bolus_u: float = typer.Option(0.0, "--bolus-u", min=0.0, max=50.0, help="Glucose: insulin bolus now (U)."),
           carbs_g: float = typer.Option(0.0, "--carbs-g", min=0.0, max=400.0, help="Glucose: carbohydrate now (g)."),
           minutes: int = typer.Option(180, min=1, max=720, help="Glucose: minutes ahead."),
           drug: str | None = typer.Option(None, "--drug", help="Drug: which course (default: the first)."),
           target: str | None = typer.Option(None, "--target", help="Drug: another target, e.g. 'trough_ss=15-20'."),
           db: str | None = DbOption, as_json: bool = JsonOption) -> None:  # fmt: skip
    """Glucose with a bolus and/or meal now; the dosing report for another target."""
    pid, twin, _, _ = _twin(patient, db)
    data: dict[str, Any] = {"patient_id": pid}
    try:
        if "glucose" in twin.components and (bolus_u or carbs_g):
            data["glucose"] = twin.components["glucose"].what_if(
                {"bolus_u": bolus_u, "carbs_g": carbs_g, "minutes": minutes}
            )
        if "drug" in twin.components and (drug or target):
            report = twin.components["drug"].what_if({"drug": drug, "target": _target(target)})
            data["drug"] = {"recommended": report["recommended"], "current_regimen": report["current_regimen"],
                            "target": report["target"]}  # fmt: skip
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if len(data) == 1:
        typer.echo("error: nothing to simulate: give --bolus-u/--carbs-g (glucose twin) or --drug/--target "
                   f"(drug twin); this twin has: vitals, {', '.join(twin.components) or 'no other component'}",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    if as_json:
        print_json(_plain(data))
    else:
        make_console().print(json.dumps(_plain(data), indent=2, default=str), highlight=False)


@app.command("recommend")
def recommend(patient: str = typer.Argument(..., help="Patient id (a unique prefix is enough)."),
              carbs_g: float | None = typer.Option(None, "--carbs-g", help="Glucose: a meal bolus for this meal (g)."),
              cr: float | None = typer.Option(None, "--cr", help="Glucose: carbohydrate ratio (g/U)."),
              cf: float | None = typer.Option(None, "--cf", help="Glucose: correction factor (mg/dL per U)."),
              db: str | None = DbOption, as_json: bool = JsonOption) -> None:  # fmt: skip
    """Each component's recommendation: the drug proposal, a meal bolus, the NEWS2 response level."""
    pid, twin, _, _ = _twin(patient, db)
    data: dict[str, Any] = {"patient_id": pid, "vitals": twin.vitals.recommend()}
    try:
        if "drug" in twin.components:
            last = twin.components["drug"].recommend() or {}
            data["drug"] = {drug: {"after_level": r["level"], "recommended": r["report"]["recommended"],
                                   "warnings": r["report"]["warnings"]} for drug, r in last.items()}  # fmt: skip
        if "glucose" in twin.components and carbs_g is not None:
            if cr is None or cf is None:
                raise typer.BadParameter("a meal bolus needs --cr and --cf too")
            data["glucose"] = twin.components["glucose"].recommend(
                {"carbs_g": carbs_g, "cr_g_per_u": cr, "cf_mg_dl_per_u": cf}
            )
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        print_json(_plain(data))
    else:
        make_console().print(json.dumps(_plain(data), indent=2, default=str), highlight=False)
