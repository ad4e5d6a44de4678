"""Top-level `medtwin` commands of the records area: ingest, patients, patient, export, and the interim demo."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from medtwin import codes
from medtwin.cli.console import make_console
from medtwin.errors import MedtwinError
from medtwin.interop.fhir import FhirLimits, FileReport, IngestReport, fhir_files, ingest_paths, patient_bundle
from medtwin.records import Observation, ObservationValue, Patient, Quantity
from medtwin.store import Store
from medtwin.store.engine import reason

__all__ = [
    "DEMO_DIR",
    "DbOption",
    "JsonOption",
    "fail",
    "open_existing",
    "print_json",
    "register",
    "resolve_patient",
    "run_ingest_demo",
    "sample_bundles",
    "store_errors",
]

DEMO_DIR = Path(".medtwin-demo")

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: $MEDTWIN_DATABASE_URL, medtwin.toml, or ./medtwin.db)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]

# What `medtwin patient` shows as the latest vitals, in this order.
_LATEST = (
    codes.HEART_RATE,
    codes.RESPIRATORY_RATE,
    codes.OXYGEN_SATURATION_PULSE_OX,
    codes.BLOOD_PRESSURE_PANEL_OLD,
    codes.BLOOD_PRESSURE_PANEL,
    codes.SYSTOLIC_BP,
    codes.DIASTOLIC_BP,
    codes.BODY_TEMPERATURE,
    codes.BODY_WEIGHT,
    codes.BODY_HEIGHT,
    codes.BMI,
    codes.GLUCOSE_SERUM,
    codes.GLUCOSE_BLOOD,
    codes.HBA1C,
    codes.CREATININE_SERUM,
    codes.loinc("38483-4", "Creatinine [Mass/volume] in Blood"),  # Synthea's creatinine code
)


def print_json(data: Any) -> None:
    """Write *data* to stdout as indented JSON (what ``--json`` prints)."""
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


_SHOWN_MATCHES = 5  # ids listed when a prefix is ambiguous
_MAX_ID_CHARS = 200  # the store's id columns


def fail(console: Console, message: str) -> typer.Exit:
    """Print *message* as an error on *console*; the exit (status 1) to raise."""
    console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code=1)


def open_existing(db: str | None, console: Console | None = None) -> Store:
    """The store at *db* for a command that reads (or changes what is there): it must exist; a mistyped path is a
    clear error, never a new empty database."""
    try:
        return Store(db, create=False)
    except MedtwinError as exc:
        raise fail(console or make_console(stderr=True), str(exc)) from None


@contextmanager
def store_errors(console: Console) -> Iterator[None]:
    """Turn a database error inside the block (a read-only file, a disk that is full, a locked database) into a
    clear message and exit status 1 instead of a traceback."""
    try:
        yield
    except (SQLAlchemyError, sqlite3.Error) as exc:  # the store's fast write path runs on the driver directly
        raise fail(console, f"database error: {reason(exc)}") from None


def _value_text(value: ObservationValue) -> str:
    if isinstance(value, Quantity):
        return f"{value.value:.4g} {value.unit}"
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return value.display or value.code


def _observation_text(obs: Observation) -> str:
    sys_bp, dia_bp = obs.component(codes.SYSTOLIC_BP), obs.component(codes.DIASTOLIC_BP)
    s_val = sys_bp.value if sys_bp is not None else None
    d_val = dia_bp.value if dia_bp is not None else None
    if isinstance(s_val, Quantity) and isinstance(d_val, Quantity):
        return f"{s_val.value:.0f}/{d_val.value:.0f} {s_val.unit}"
    if obs.components and obs.value is None:
        return " / ".join(_value_text(c.value) for c in obs.components)
    return _value_text(obs.value)


def _value_json(value: ObservationValue) -> Any:
    if isinstance(value, Quantity):
        return {"value": value.value, "unit": value.unit}
    if value is None or isinstance(value, str):
        return value
    return {"system": value.system, "code": value.code, "display": value.display}


def _patient_json(p: Patient) -> dict[str, Any]:
    return {
        "patient_id": p.patient_id,
        "name": p.identity.display_name if p.identity else None,
        "gender": p.gender,
        "birth_date": p.birth_date.isoformat() if p.birth_date else None,
        "deceased": p.deceased.isoformat() if p.deceased else None,
    }


def _age(p: Patient) -> str:
    at = p.deceased or datetime.now(UTC)
    age = p.age_years(at)
    return "" if age is None else f"{int(age)}"


def _ingest_table(report: IngestReport) -> Table:
    table = Table(title="FHIR ingest")
    for col in ("file", "status", "resources", "inserted", "duplicates", "unmapped"):
        numeric = col in ("resources", "inserted", "duplicates", "unmapped")
        table.add_column(col, justify="right" if numeric else "left", overflow="ellipsis" if numeric else "fold")
    for f in report.files:
        colour = {"ok": "green", "duplicate": "cyan", "unmapped": "yellow"}.get(f.status, "red")
        table.add_row(
            escape(Path(f.path).name),
            f"[{colour}]{f.status}[/{colour}]",
            str(f.resources),
            str(f.inserted),
            str(f.duplicates),
            str(sum(f.unmapped.values())),
        )
    table.add_section()
    table.add_row(
        f"{len(report.files)} files",
        "ok" if report.ok else "[red]errors[/red]",
        str(report.total("resources")),
        str(report.total("inserted")),
        str(report.total("duplicates")),
        str(sum(report.unmapped.values())),
    )
    return table


def _ingest(
    store: Store,
    paths: Sequence[Path],
    console: Console,
    *,
    source: str,
    show_progress: bool,
    limits: FhirLimits = FhirLimits(),
) -> IngestReport:
    files = fhir_files(paths)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=True,
    ) as progress:
        task = progress.add_task(f"ingesting {len(files)} files", total=len(files))

        def done(file_report: FileReport) -> None:
            progress.update(task, description=f"ingested {Path(file_report.path).name[:40]}")
            progress.advance(task)

        return ingest_paths(store, files, source_system=source, on_file=done, limits=limits)


def _print_problems(report: IngestReport, console: Console) -> None:
    unmapped = report.unmapped
    if unmapped:
        listed = escape(", ".join(f"{k}={v}" for k, v in sorted(unmapped.items())))
        console.print(f"[yellow]unmapped resources (kept in the raw log):[/yellow] {listed}")
    for f in report.files:
        for w in f.warnings[:5]:
            console.print(f"[yellow]warning:[/yellow] {escape(w)}")
        for e in f.errors:
            console.print(f"[red]rejected:[/red] {escape(e)}")


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="FHIR files (bundle, resource, .ndjson) or folders.")],
    db: DbOption = None,
    source: Annotated[str, typer.Option("--source", help="Source system name for provenance.")] = "fhir",
    as_json: JsonOption = False,
    max_file_mb: Annotated[float, typer.Option(min=0.001, help="Largest JSON file read whole (MB).")] = 64.0,
    max_line_mb: Annotated[float, typer.Option(min=0.001, help="Largest NDJSON line (MB).")] = 16.0,
    max_string_mb: Annotated[float, typer.Option(min=0.001, help="Longest JSON string (million characters).")] = 8.0,
) -> None:
    """Load FHIR R4 bundles, resources and bulk NDJSON into the store (idempotent; every valid resource is kept)."""
    console = make_console(stderr=as_json)
    limits = FhirLimits(
        max_file_bytes=int(max_file_mb * 2**20),
        max_line_bytes=int(max_line_mb * 2**20),
        max_string_chars=int(max_string_mb * 2**20),
    )

    def refuse(message: str) -> typer.Exit:
        if as_json:  # scripts read stdout: they get a summary saying why nothing was ingested
            print_json({**IngestReport().as_dict(), "ok": False, "error": message})
        return fail(console, message)

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise refuse(f"no such file or folder: {', '.join(missing)}")
    if not fhir_files(paths):
        listed = ", ".join(str(p) for p in paths)
        raise refuse(f"no FHIR files (*.json, *.ndjson, *.jsonl; not compressed) in {listed}")
    try:
        opened = Store(db)
    except MedtwinError as exc:
        raise refuse(str(exc)) from None
    try:
        with opened as store:
            report = _ingest(store, paths, console, source=source, show_progress=not as_json, limits=limits)
    except (SQLAlchemyError, sqlite3.Error) as exc:  # a read-only or full database: nothing more can be written
        raise refuse(f"database error: {reason(exc)}") from None
    if as_json:
        print_json(report.as_dict())
    else:
        console.print(_ingest_table(report))
        _print_problems(report, console)
    if not report.ok:
        raise typer.Exit(code=1)


def patients(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List the patients in the store."""
    console = make_console(stderr=True)
    with store_errors(console), open_existing(db, console) as store:
        found = store.patients()
    if as_json:
        print_json([_patient_json(p) for p in found])
        return
    table = Table(title=f"{len(found)} patients")
    table.add_column("id", overflow="fold")
    for col in ("name", "gender", "born", "age", "deceased"):
        table.add_column(col)
    for p in found:
        table.add_row(
            escape(p.patient_id),
            escape(p.identity.display_name or "") if p.identity else "",
            p.gender or "",
            p.birth_date.isoformat() if p.birth_date else "",
            _age(p),
            p.deceased.date().isoformat() if p.deceased else "",
        )
    make_console().print(table)


def resolve_patient(store: Store, patient_id: str, console: Console) -> Patient:
    """The patient whose id is *patient_id* or, failing that, starts with it (one only); otherwise the exit to
    raise after printing why on *console* (no such patient, or an ambiguous prefix with the ids it matches)."""
    if not patient_id or len(patient_id) > _MAX_ID_CHARS:
        raise fail(console, f"a patient id has 1 to {_MAX_ID_CHARS} characters; this one has {len(patient_id)}")
    found = store.patient(patient_id)
    if found is not None:
        return found
    # ids only, by a prefix query: loading every patient to match a prefix does not scale
    matches = store.patient_ids(patient_id)
    if len(matches) == 1:
        resolved = store.patient(matches[0])
        if resolved is not None:
            return resolved
    if len(matches) > 1:
        shown = ", ".join(matches[:_SHOWN_MATCHES]) + (", ..." if len(matches) > _SHOWN_MATCHES else "")
        raise fail(console, f"{patient_id!r} matches {len(matches)} patients ({shown}); give more of the id")
    raise fail(console, f"no patient with id {patient_id!r} (see `medtwin patients`)")


def patient(
    patient_id: Annotated[str, typer.Argument(help="Patient id (or a unique prefix of it).")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one patient: demographics, conditions, medications, latest vitals and results (labs)."""
    console = make_console(stderr=as_json)
    with store_errors(console), open_existing(db, console) as store:
        p = resolve_patient(store, patient_id, console)
        conditions = store.conditions(p.patient_id)
        meds = store.medication_requests(p.patient_id)
        latest = store.latest_observations(p.patient_id, _LATEST)
        shown = {(o.code.system, o.code.code) for o in latest.values()}
        results = [o for o in store.latest_results(p.patient_id) if (o.code.system, o.code.code) not in shown]
    if as_json:
        print_json(
            {
                **_patient_json(p),
                "conditions": [
                    {
                        "code": c.code.code,
                        "display": c.code.display,
                        "status": c.clinical_status,
                        "onset": c.onset.isoformat() if c.onset else None,
                    }
                    for c in conditions
                ],
                "medications": [
                    {
                        "code": m.medication.code,
                        "display": m.medication.display,
                        "status": m.status,
                        "intent": m.intent,
                        "authored": m.authored.isoformat() if m.authored else None,
                    }
                    for m in meds
                ],
                "latest": {
                    code: {
                        "display": o.code.display,
                        "effective": o.effective.isoformat(),
                        "value": _value_json(o.value),
                        "components": [{"code": c.code.code, "value": _value_json(c.value)} for c in o.components],
                    }
                    for code, o in latest.items()
                },
                "results": [
                    {
                        "system": o.code.system,
                        "code": o.code.code,
                        "display": o.code.display,
                        "effective": o.effective.isoformat(),
                        "value": _value_json(o.value),
                        "status": o.status,
                    }
                    for o in results
                ],
            }
        )
        return
    name = p.identity.display_name if p.identity else ""
    console.print(f"[bold]{escape(name or p.patient_id)}[/bold]  ({escape(p.patient_id)})")
    born = p.birth_date.isoformat() if p.birth_date else "unknown"
    line = f"{p.gender or 'unknown gender'}, born {born}, age {_age(p) or '?'}"
    if p.deceased:
        line += f", [red]deceased {p.deceased.date().isoformat()}[/red]"
    console.print(line)
    cond = Table(title="Conditions")
    for col in ("condition", "status", "onset"):
        cond.add_column(col)
    for c in conditions:
        cond.add_row(
            escape(c.code.display or c.code.code),
            escape(c.clinical_status),
            c.onset.date().isoformat() if c.onset else "",
        )
    console.print(cond)
    med = Table(title="Medications")
    for col in ("medication", "status", "intent", "authored"):
        med.add_column(col)
    for m in meds:
        med.add_row(
            escape(m.medication.display or m.medication.code),
            escape(m.status),
            escape(m.intent),
            m.authored.date().isoformat() if m.authored else "",
        )
    console.print(med)
    vit = Table(title="Latest vitals and labs")
    for col in ("measure", "value", "when"):
        vit.add_column(col)
    for coding in _LATEST:
        o = latest.get(coding.code)
        if o is not None:
            vit.add_row(
                escape(o.code.display or coding.display or coding.code),
                escape(_observation_text(o)),
                o.effective.isoformat(),
            )
    console.print(vit)
    res = Table(title="Results (labs and other observations; newest of each code)")
    for col in ("result", "value", "status", "when"):
        res.add_column(col)
    for o in results:
        res.add_row(
            escape(o.code.display or o.code.code), escape(_observation_text(o)), o.status, o.effective.isoformat()
        )
    console.print(res)


def export(
    patient_id: Annotated[str, typer.Argument(help="Patient id (or a unique prefix of it).")],
    db: DbOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the bundle here instead of stdout.")] = None,
) -> None:
    """Export a patient's record as a FHIR R4 Bundle (JSON)."""
    console = make_console(stderr=True)
    with store_errors(console), open_existing(db, console) as store:
        p = resolve_patient(store, patient_id, console)
        bundle = patient_bundle(store, p.patient_id)
    data = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            out.write_bytes(data)
        except OSError as exc:
            raise fail(console, f"cannot write {out}: {exc.strerror or exc}") from None
        console.print(f"wrote {len(bundle['entry'])} resources to {out}")


def sample_bundles() -> list[Path]:
    """The Synthea sample bundles shipped with medtwin (see medtwin/data/samples/SOURCES.md)."""
    folder = resources.files("medtwin").joinpath("data/samples")
    return sorted(Path(str(folder)).glob("*.json"))


def run_ingest_demo(console: Console, db_dir: Path = DEMO_DIR) -> Store:
    """Ingest the bundled sample patients into SQLite under *db_dir* and print a summary; returns the open store."""
    db_dir.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{(db_dir / 'medtwin.db').resolve()}")
    console.print(f"[bold]medtwin demo[/bold]: loading {len(sample_bundles())} Synthea sample patients into {db_dir}/")
    report = _ingest(store, sample_bundles(), console, source="synthea-sample", show_progress=True)
    console.print(_ingest_table(report))
    table = Table(title="Sample patients")
    for col in ("patient", "gender", "age", "conditions", "medications", "observations", "latest BP", "latest BMI"):
        table.add_column(col)
    for p in store.patients():
        latest = store.latest_observations(p.patient_id, [codes.BLOOD_PRESSURE_PANEL_OLD, codes.BMI])
        bp = latest.get(codes.BLOOD_PRESSURE_PANEL_OLD.code)
        bmi = latest.get(codes.BMI.code)
        name = p.identity.display_name if p.identity else p.patient_id
        table.add_row(
            escape(name) + (" (deceased)" if p.deceased else ""),
            p.gender or "",
            _age(p),
            str(len(store.conditions(p.patient_id))),
            str(len(store.medication_requests(p.patient_id))),
            str(len(store.observations(p.patient_id))),
            escape(_observation_text(bp)) if bp else "",
            escape(_observation_text(bmi)) if bmi else "",
        )
    console.print(table)
    console.print(
        f"Try: medtwin patients --db sqlite:///{db_dir}/medtwin.db   |   "
        f"medtwin patient <id> --db sqlite:///{db_dir}/medtwin.db"
    )
    return store


def demo() -> None:
    """Ingest the bundled sample patients into ./.medtwin-demo and print their summary."""
    run_ingest_demo(make_console()).close()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level *app*."""
    app.command("ingest")(ingest)
    app.command("patients")(patients)
    app.command("patient")(patient)
    app.command("export")(export)
    taken = {c.name or (c.callback.__name__ if c.callback else None) for c in app.registered_commands}
    if "demo" not in taken:
        app.command("demo")(demo)
