"""`medtwin risk`: risk equations from the record, for one patient or the whole population, and local validation.

medtwin risk PATIENT [--db URL] [--at TIME] [--model NAME ...] [--set race=black ...] [--json | --fhir]
medtwin risk cohort --db URL --out risks.parquet
medtwin risk evaluate predictions.parquet --pred COL --event COL [--time COL --horizon 10] --group sex ...
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
import pandas as pd
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from medtwin.cli.console import make_console
from medtwin.cli.records import open_existing, resolve_patient, store_errors
from medtwin.errors import MedtwinError, did_you_mean
from medtwin.risk import EQUATIONS, read_cohort
from medtwin.risk.validation import Outcome, evaluate, reliability_plot
from medtwin.store import Store
from medtwin.twin.risk_assessment import assess_patient, cohort_risks

__all__ = ["app"]


class _PatientByDefault(TyperGroup):
    """`medtwin risk PATIENT` runs the `patient` command; `cohort` and `evaluate` are commands of their own."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["patient", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_PatientByDefault,
    help="Risk prediction: `medtwin risk PATIENT`, `medtwin risk cohort`, `medtwin risk evaluate`.",
    no_args_is_help=True,
    add_completion=False,
)
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: $MEDTWIN_DATABASE_URL, medtwin.toml, or ./medtwin.db)."),
]
AtOption = Annotated[str | None, typer.Option("--at", help="Assessment time, ISO 8601 (default: now, UTC).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="An input not in the record, NAME=VALUE (e.g. race=black, townsend=2.1, sdi_decile=7)."),
]
ModelOption = Annotated[list[str] | None, typer.Option("--model", help="Equation to run (repeat); default all.")]


def _fail(message: str) -> typer.Exit:
    make_console(stderr=True).print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code=1)


def _when(at: str | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    try:
        t = datetime.fromisoformat(at)
    except ValueError:
        raise _fail(f"--at {at!r} is not an ISO 8601 time (e.g. 2026-05-01T09:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _overrides(values: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _fail(f"--set {item!r}: expected NAME=VALUE")
        if name == "race":
            out[name] = value
            continue
        try:
            out[name] = float(value)
        except ValueError:
            raise _fail(f"--set {item!r}: {value!r} is not a number") from None
    return out


def _models(models: list[str] | None) -> list[str] | None:
    unknown = [m for m in models or [] if m not in EQUATIONS]
    if unknown:
        hint = did_you_mean(unknown[0], EQUATIONS)
        raise _fail(f"unknown equation(s) {', '.join(unknown)}{hint}; known: {', '.join(EQUATIONS)}")
    return models or None


def _open(db: str | None) -> Store:
    """The existing store at *db* (a mistyped path is an error, never a new empty database)."""
    return open_existing(db, make_console(stderr=True))


def _dump(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


@app.command("patient")
def patient(
    patient_id: Annotated[str, typer.Argument(help="Patient id (or a unique prefix of it).")],
    db: DbOption = None,
    at: AtOption = None,
    model: ModelOption = None,
    set_: SetOption = None,
    bp_target: Annotated[float, typer.Option("--bp-target", help="Systolic BP target of the what-if (mmHg).")] = 130,
    as_json: Annotated[bool, typer.Option("--json", help="Inputs, results and explanations as JSON.")] = False,
    as_fhir: Annotated[bool, typer.Option("--fhir", help="A FHIR R4 Bundle of RiskAssessments.")] = False,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Store the RiskAssessments.")] = True,
) -> None:
    """Every equation for one patient from their record: a table, then each result explained."""
    when, names, overrides = _when(at), _models(model), _overrides(set_)
    errors = make_console(stderr=True)
    with store_errors(errors), _open(db) as store:
        patient_id = resolve_patient(store, patient_id, errors).patient_id
        result = assess_patient(
            store, patient_id, as_of=when, names=names, overrides=overrides, bp_target=bp_target, save=save
        )
    if result is None:  # erased between the two reads
        raise _fail(f"no patient with id {patient_id!r}")
    if as_fhir:
        _dump(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in result.resources.values()],
            }
        )
        return
    if as_json:
        _dump(result.to_dict())
        return
    console = make_console()
    table = Table(title=f"Risk for {patient_id} at {result.inputs.as_of:%Y-%m-%d %H:%M} UTC")
    for col in ("equation", "result", "status / reason"):
        table.add_column(col)
    for _name, e in result.explanations.items():
        if e.points is not None:
            value = f"{e.points:g} points" + (f" ({e.band})" if e.band else "")
        elif e.risk is not None:
            value = f"{100 * e.risk:.1f} %"
        else:
            value = "-"
        table.add_row(escape(e.title), value, escape("; ".join(e.reasons) or "ok"))
    console.print(table)
    for _name, e in result.explanations.items():
        if not e.lines:
            continue
        console.print(f"\n[bold]{escape(e.title)}[/bold]")
        if e.reference_risk is not None and e.risk is not None:
            console.print(f"  {100 * e.risk:.1f} %; a {escape(e.reference_text)}: {100 * e.reference_risk:.1f} %")
        for line in e.lines:
            console.print("  " + escape(str(line) if e.points is None else f"{line.text}: {line.lp:+g}"))
        for desc, risk, assumption in e.what_ifs:
            console.print(f"  what if {escape(desc)}: {100 * risk:.1f} % [dim]({escape(assumption)})[/dim]")
    if result.inputs.notes:
        console.print("\n[yellow]not used:[/yellow] " + escape("; ".join(result.inputs.notes)))


@app.command("cohort")
def cohort(
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    db: DbOption = None,
    at: AtOption = None,
    model: ModelOption = None,
    set_: SetOption = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Patients per store read.")] = 500,
) -> None:
    """Every equation for every patient in the store, into one Parquet file (inputs, results, reasons)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    when, names, overrides = _when(at), _models(model), _overrides(set_)
    console = make_console(stderr=True)
    writer: pq.ParquetWriter | None = None
    rows = 0
    with (
        _open(db) as store,
        Progress(
            TextColumn("assessing patients"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("patients", total=None)
        for columns in cohort_risks(
            store,
            when,
            names=names,
            batch=batch,
            overrides=overrides,
            on_batch=lambda done, total: progress.update(task, completed=done, total=total),
        ):
            # text stays text even in a batch where a column is all empty
            data = pd.DataFrame(
                {k: pd.array(v, dtype="string") if v.dtype == object else v for k, v in columns.items()}
            )
            frame = pa.Table.from_pandas(data, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(out, frame.schema)
            writer.write_table(frame.cast(writer.schema))
            rows += frame.num_rows
    if writer is None:
        raise _fail("the store has no patients")
    writer.close()
    console.print(f"wrote {rows} patients to {out}")


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.DataFrame(read_cohort(path))
    except MedtwinError as exc:
        raise _fail(str(exc)) from None


def _age_band(age: pd.Series) -> np.ndarray:
    bands = pd.cut(
        age, [0, 40, 50, 60, 70, 80, 200], right=False, labels=["<40", "40-49", "50-59", "60-69", "70-79", "80+"]
    )
    return bands.astype(str).to_numpy()


@app.command("evaluate")
def evaluate_cmd(
    path: Annotated[Path, typer.Argument(help="Parquet or CSV with predictions and observed outcomes.")],
    pred: Annotated[str, typer.Option("--pred", help="Column of predicted risks (0-1).")],
    event: Annotated[str, typer.Option("--event", help="Column of outcomes: 1 event, 0 none/censored.")],
    time: Annotated[str | None, typer.Option("--time", help="Column of follow-up years (censored data).")] = None,
    horizon: Annotated[float, typer.Option("--horizon", help="Prediction horizon in years (with --time).")] = 10,
    group: Annotated[list[str] | None, typer.Option("--group", help="Column to report subgroups of (repeat).")] = None,
    age_col: Annotated[str | None, typer.Option("--age-col", help="Age column: adds 10-year age bands.")] = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the report, JSON and PNG go.")] = Path("."),
    holdout: Annotated[float, typer.Option("--holdout", help="Fraction held out to assess recalibration.")] = 0.0,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples for Harrell's C CI.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report instead of Markdown.")] = False,
) -> None:
    """Discrimination, calibration, fairness by subgroup and recalibration of predictions on local outcomes."""
    frame = _read_table(path)
    missing = [c for c in [pred, event, time, age_col, *(group or [])] if c and c not in frame.columns]
    if missing:
        raise _fail(f"{path}: no column(s) {', '.join(missing)}; columns: {', '.join(map(str, frame.columns))}")
    keep = frame[pred].notna()
    dropped = int((~keep).sum())
    frame = frame[keep]
    groups: dict[str, object] = {g: frame[g].to_numpy() for g in group or []}
    if age_col:
        groups["age band"] = _age_band(frame[age_col])
    try:
        outcome = Outcome.censored(frame[time], frame[event], horizon) if time else Outcome.binary(frame[event])
        report = evaluate(
            frame[pred].to_numpy(dtype=float), outcome, groups, model=pred, n_boot=n_boot, holdout=holdout
        )
    except MedtwinError as exc:
        raise _fail(f"{path}: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    png = reliability_plot(report, out_dir / f"{pred}_reliability.png")
    data = report.to_dict() | {"refused_or_missing_predictions": dropped, "reliability_plot": str(png)}
    (out_dir / f"{pred}_validation.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    markdown = report.to_markdown() + (f"\n{dropped} rows without a prediction were left out.\n" if dropped else "")
    (out_dir / f"{pred}_validation.md").write_text(markdown, encoding="utf-8")
    if as_json:
        _dump(data)
    else:
        sys.stdout.write(markdown)
        make_console(stderr=True).print(f"report, JSON and reliability plot in {out_dir}")
