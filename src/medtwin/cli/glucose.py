"""`medtwin glucose ...` sub-commands: simulate virtual patients and compute CGM metrics of a file."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medtwin.cli import glucose_twin
from medtwin.cli.console import make_console
from medtwin.errors import MedtwinError, ValidationError
from medtwin.glucose.envs import DEFAULT_MEALS
from medtwin.glucose.metrics import cgm_metrics, summary_metrics_batch
from medtwin.glucose.plots import plot_agp, plot_trace
from medtwin.glucose.scenarios import CONTROLLERS, SEED_MODES, run_scenario
from medtwin.glucose.simulation import ClosedLoopResult
from medtwin.interop.cgm import SENSOR_HIGH_MG_DL, SENSOR_LOW_MG_DL, SIGNAL_BG, SIGNAL_CGM, read_cgm_file

__all__ = ["app", "parse_meal"]

app = typer.Typer(help="Type 1 diabetes twin (UVA/Padova) commands.", no_args_is_help=True, add_completion=False)
app.add_typer(glucose_twin.app, name="twin")

_PROGRESS_THRESHOLD = 200  # patient-days above which a progress bar is shown
_TABLE_ROWS = 50  # members listed in the simulate table


class _Signal(StrEnum):
    """Which simulated glucose the `simulate` summary describes."""

    bg = "bg"
    cgm = "cgm"


# signal -> (column written by --output, words for the summary)
_SIGNALS = {
    _Signal.bg: ("bg_mg_dl", SIGNAL_BG),
    _Signal.cgm: ("cgm_mg_dl", f"{SIGNAL_CGM}, with the sensor's noise"),
}


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def parse_meal(text: str) -> tuple[float, float]:
    """Parse ``HH:MM=grams`` (e.g. ``07:00=45``) into (minute of day, grams)."""
    try:
        clock, grams = text.split("=")
        hh, mm = clock.split(":")
        minute = int(hh) * 60 + int(mm)
        amount = float(grams)
    except ValueError:
        raise ValidationError(f"meal {text!r}: expected HH:MM=grams, e.g. 07:00=45") from None
    if not 0 <= minute < 1440 or amount < 0:
        raise ValidationError(f"meal {text!r}: time must be 00:00-23:59 and grams >= 0")
    return float(minute), amount


def _fail(message: str) -> typer.Exit:
    make_console(stderr=True).print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code=1)


def _write_outputs(
    result: ClosedLoopResult, start_time: datetime, days: int, output: Path | None, plot: Path | None,
    agp: Path | None,
) -> None:  # fmt: skip
    minutes = result.bg_mg_dl.shape[0] - 1
    t_min = np.arange(minutes + 1, dtype=np.float64)
    if output is not None:
        n = len(result.names)
        frame = pd.DataFrame(
            {
                "patient": np.repeat(np.array(result.names), minutes),
                "member": np.repeat(np.arange(n), minutes),
                "time": np.tile(pd.date_range(start_time + timedelta(minutes=1), periods=minutes, freq="min"), n),
                "t_min": np.tile(t_min[1:], n),
                "bg_mg_dl": result.bg_mg_dl[1:].T.ravel(),
                "cgm_mg_dl": result.cgm_mg_dl[1:].T.ravel(),
                "cho_announced_g": result.cho_announced_g.T.ravel(),
                "cho_eaten_g_min": result.cho_eaten_g_min.T.ravel(),
                "insulin_u_min": result.insulin_u_min.T.ravel(),
            }
        )
        if output.suffix == ".csv":
            frame.to_csv(output, index=False)
        else:
            frame.to_parquet(output, index=False)
    if plot is not None:
        plot_trace(plot, t_min, result.bg_mg_dl[:, 0], cgm_mg_dl=result.cgm_mg_dl[:, 0],
                   cho_g=result.cho_announced_g[:, 0], insulin_u_min=result.insulin_u_min[:, 0],
                   title=result.names[0])  # fmt: skip
    if agp is not None:
        plot_agp(agp, t_min[1:], result.bg_mg_dl[1:], title=f"AGP, {len(result.names)} patients x {days} d")


@app.command()
def simulate(
    patient: Annotated[
        list[str] | None,
        typer.Option("--patient", "-p", help="Patient name (adult#001) or group (adult, child, adolescent, all)."),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Days to simulate.")] = 1,
    meal: Annotated[list[str] | None, typer.Option("--meal", "-m", help="Daily meal HH:MM=grams (repeatable).")] = None,
    replicate: Annotated[int, typer.Option(min=1, help="Copies of each patient.")] = 1,
    randomize_meals: Annotated[bool, typer.Option(help="Jitter meal times (SD 30 min) and sizes (x0.7-1.3).")] = False,
    controller: Annotated[str, typer.Option(help=f"Controller: {', '.join(CONTROLLERS)}.")] = "basal-bolus",
    sensor: Annotated[str, typer.Option(help="CGM sensor: Dexcom, GuardianRT, Navigator.")] = "Dexcom",
    pump: Annotated[str, typer.Option(help="Insulin pump: Insulet, Cozmo.")] = "Insulet",
    noise: Annotated[bool, typer.Option(help="Sensor noise (seeded).")] = True,
    seed: Annotated[int, typer.Option(min=0, help="Seed (>= 0) of the sensor noise and meal randomization.")] = 1,
    seed_mode: Annotated[
        str,
        typer.Option(
            help="Sensor seeds: member (member i uses seed + i) or patient (every member uses seed, as simglucose "
            "seeds each patient's sensor on its own: member i equals a run of that patient alone)."
        ),
    ] = "member",
    sensor_seeds: Annotated[
        str | None, typer.Option(help="One sensor seed per member, comma-separated (overrides --seed-mode).")
    ] = None,
    start: Annotated[str, typer.Option(help="Start time, ISO 8601 with zone.")] = "2018-01-01T00:00:00+00:00",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Per-minute trace (.csv or .parquet).")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of the first patient's trace.")] = None,
    agp: Annotated[Path | None, typer.Option(help="PNG of the ambulatory glucose profile of the run.")] = None,
    signal: Annotated[
        _Signal,
        typer.Option(
            help="Glucose the summary describes: bg (the model's noise-free glucose, simglucose's BG, column bg_mg_dl) "
            "or cgm (sensor readings with noise, column cgm_mg_dl, what `medtwin glucose metrics` reads by default)."
        ),
    ] = _Signal.bg,
    json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Simulate virtual patients in closed loop and summarise (or save) their glucose.

    The summary is of the true blood glucose unless ``--signal cgm`` is given; it says which signal it used.
    """
    try:
        try:
            start_time = datetime.fromisoformat(start)
        except ValueError:
            raise ValidationError(f"--start {start!r}: not an ISO 8601 time (e.g. 2018-01-01T00:00:00+00:00)") from None
        if start_time.tzinfo is None:
            raise ValidationError(f"--start {start!r} has no time zone (add +00:00)")
        start_time = start_time.astimezone(UTC)
        for flag, target in (("--output", output), ("--plot", plot), ("--agp", agp)):
            if target is not None and not target.resolve().parent.is_dir():
                raise ValidationError(f"{flag} {target}: no such folder {target.resolve().parent}")
        meals = tuple(parse_meal(m) for m in meal) if meal else DEFAULT_MEALS
        names = patient or ["adult#001"]
        if output is not None and output.suffix not in (".csv", ".parquet"):
            raise ValidationError(f"--output {output}: use a .csv or .parquet file name")
        if seed_mode not in SEED_MODES:
            raise ValidationError(f"--seed-mode {seed_mode!r}: use {' or '.join(SEED_MODES)}")
        explicit = None
        if sensor_seeds is not None:
            try:
                explicit = [int(s) for s in sensor_seeds.split(",")]
            except ValueError:
                raise ValidationError(f"--sensor-seeds {sensor_seeds!r}: expected integers, e.g. 1,2,3") from None
        kwargs: dict[str, Any] = {
            "days": days, "meals": meals, "replicate": replicate, "randomize_meals": randomize_meals,
            "controller": controller, "sensor": sensor, "pump": pump, "sensor_noise": noise, "seed": seed,
            "seed_mode": seed_mode, "sensor_seeds": explicit,
        }  # fmt: skip
        n_members = len(names) * replicate  # groups make this an underestimate; fine for the bar threshold
        if not json and n_members * days >= _PROGRESS_THRESHOLD:
            with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                          TimeElapsedColumn(), console=Console(stderr=True)) as bar:  # fmt: skip
                task = bar.add_task("sim", total=1440 * days)
                result = run_scenario(names, progress=lambda done, total: bar.update(task, completed=done), **kwargs)
        else:
            result = run_scenario(names, **kwargs)
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    try:
        _write_outputs(result, start_time, days, output, plot, agp)
    except OSError as exc:
        raise _fail(f"cannot write the output: {exc}") from None
    signal_column, signal_words = _SIGNALS[signal]
    trace = result.bg_mg_dl if signal is _Signal.bg else result.cgm_mg_dl
    summary = summary_metrics_batch(trace[1:])
    per_patient = [
        {"patient": name, "member": i, **{k: round(float(v[i]), 4) for k, v in summary.items()}}
        for i, name in enumerate(result.names)
    ]
    report = {
        "patients": len(result.names),
        "days": days,
        "controller": controller,
        "rhs_evaluations": result.rhs_evaluations,
        "signal": signal.value,
        "signal_description": signal_words,
        "signal_column": signal_column,
        "seed_mode": "explicit" if sensor_seeds is not None else seed_mode,
        "cohort_mean_mg_dl": round(float(summary["mean_mg_dl"].mean()), 4),
        "cohort_tir_pct": round(float(summary["tir_pct"].mean()), 4),
        "output": str(output) if output else None,
        "plot": str(plot) if plot else None,
        "agp": str(agp) if agp else None,
        "members": per_patient,
    }
    if json:
        _print_json(report)
        return
    table = Table(title=f"{len(result.names)} patient(s) x {days} day(s), {controller}", title_justify="left")
    for col in ("patient", "mean", "CV %", "TIR %", "TBR<70 %", "TAR>180 %", "LBGI", "HBGI"):
        table.add_column(col)
    tbr = summary["tbr_level1_pct"] + summary["tbr_level2_pct"]
    tar = summary["tar_level1_pct"] + summary["tar_level2_pct"]
    other = _Signal.cgm if signal is _Signal.bg else _Signal.bg
    table.caption = f"summary of {signal_words} ({signal_column}); --signal {other.value} for {_SIGNALS[other][1]}"
    if len(result.names) > _TABLE_ROWS:
        table.caption += f"; first {_TABLE_ROWS} of {len(result.names)} members shown, --json or --output has all"
    for i, name in enumerate(result.names[:_TABLE_ROWS]):
        table.add_row(
            name, f"{summary['mean_mg_dl'][i]:.1f}", f"{summary['cv_pct'][i]:.1f}", f"{summary['tir_pct'][i]:.1f}",
            f"{tbr[i]:.1f}", f"{tar[i]:.1f}", f"{summary['lbgi'][i]:.2f}", f"{summary['hbgi'][i]:.2f}",
        )  # fmt: skip
    make_console().print(table)


@app.command()
def metrics(
    file: Annotated[
        Path,
        typer.Argument(
            help="CGM file: a Dexcom Clarity or FreeStyle Libre CSV export, Nightscout entries (JSON or CSV), or a "
            "table (.csv or .parquet) with a time and a glucose column."
        ),
    ],
    column: Annotated[str | None, typer.Option(help="Glucose column of a table; guessed when omitted.")] = None,
    unit: Annotated[
        str | None,
        typer.Option(help="Unit of the glucose values when the file does not say: mg/dL (default) or mmol/L."),
    ] = None,
    id_column: Annotated[str | None, typer.Option(help="Subject id column of a table; guessed when omitted.")] = None,
    time_column: Annotated[str | None, typer.Option(help="Time column of a table (timestamps or t_min).")] = None,
    date_order: Annotated[
        str | None, typer.Option(help="FreeStyle Libre dates: dmy or mdy, when the dates do not tell.")
    ] = None,
    max_gap_min: Annotated[float, typer.Option(help="Longest interval one reading may stand for (min).")] = 15.0,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Consensus CGM metrics (TIR, GMI, CV, LBGI/HBGI, episodes) per subject of FILE; says which signal it read.

    Rows whose time or glucose cannot be read are skipped and counted (``skipped_rows``); ``Low`` / ``High``
    sensor readings count as 40 / 400 mg/dL (``limit_readings``).
    """
    try:
        readings = read_cgm_file(
            file, column=column, unit=unit, id_column=id_column, time_column=time_column, date_order=date_order
        )
        results = {}
        for sid in dict.fromkeys(readings.subjects):
            sel = readings.subjects == sid
            try:
                found = cgm_metrics(readings.time_min[sel], readings.glucose_mg_dl[sel], max_gap_min=max_gap_min)
            except ValidationError as exc:
                raise ValidationError(f"{file}: subject {sid!r}: {exc}") from None
            results[str(sid)] = found.to_dict()
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    limits, skipped = readings.limit_readings, readings.skipped_rows
    if json:
        _print_json(
            {
                "file": str(file),
                "format": readings.format,
                "signal": readings.signal,
                "glucose_column": readings.glucose_column,
                "unit": readings.unit,
                "skipped_rows": skipped,
                "limit_readings": limits,
                "notes": list(readings.notes),
                "subjects": results,
            }
        )
        return
    table = Table(title=f"CGM metrics: {file.name}", title_justify="left")
    table.caption = (
        f"{readings.format}; signal: {readings.signal}, column {readings.glucose_column!r} in {readings.unit}"
    )
    # "days": days of data (consensus: days of CGM wear), not the first-to-last span (coverage_pct in --json)
    for col in ("subject", "days", "mean", "CV%", "GMI%", "<70%", "TIR%", ">180%", "hypos"):
        table.add_column(col)
    for sid, m in results.items():
        table.add_row(
            escape(sid), f"{m['duration_h'] * m['coverage_pct'] / 100 / 24:.1f}", f"{m['mean_mg_dl']:.1f}",
            f"{m['cv_pct']:.1f}", f"{m['gmi_pct']:.2f}",
            f"{m['tbr_level1_pct'] + m['tbr_level2_pct']:.1f}", f"{m['tir_pct']:.1f}",
            f"{m['tar_level1_pct'] + m['tar_level2_pct']:.1f}", str(m["hypo_episodes_level1"]),
        )  # fmt: skip
    make_console().print(table)
    err = make_console(stderr=True)
    for note in readings.notes:
        err.print(f"note: {escape(note)}", highlight=False)
    if limits["low"] or limits["high"]:
        err.print(
            f"note: {limits['low']} Low read as {SENSOR_LOW_MG_DL:.0f} mg/dL, "
            f"{limits['high']} High as {SENSOR_HIGH_MG_DL:.0f} mg/dL (the sensor's reporting limits)",
            highlight=False,
        )
    if skipped:
        err.print(f"[yellow]warning:[/yellow] {skipped} row(s) skipped: unreadable time or glucose")
