"""`medtwin glucose ...` sub-commands: simulate virtual patients and compute CGM metrics of a file."""

from __future__ import annotations

import sys
import warnings
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medtwin import codes
from medtwin.cli import glucose_twin
from medtwin.errors import MedtwinError, ValidationError
from medtwin.glucose.envs import DEFAULT_MEALS
from medtwin.glucose.metrics import cgm_metrics, summary_metrics_batch
from medtwin.glucose.plots import plot_agp, plot_trace
from medtwin.glucose.scenarios import CONTROLLERS, run_scenario
from medtwin.glucose.simulation import ClosedLoopResult

__all__ = ["app", "parse_meal"]

app = typer.Typer(help="Type 1 diabetes twin (UVA/Padova) commands.", no_args_is_help=True, add_completion=False)
app.add_typer(glucose_twin.app, name="twin")

_GLUCOSE_COLUMNS = ("glucose_mg_dl", "glucose_mmol_l", "gl", "glucose", "cgm_mg_dl", "bg_mg_dl", "CGM", "BG", "sgv")
_ID_COLUMNS = ("id", "patient", "subject", "member")
_TIME_COLUMNS = ("time", "timestamp", "Time", "datetime", "t_min")
_GLUCOSE_UNITS = ("mg/dL", "mmol/L")
# CGMs read 40-400 mg/dL: a median outside 30-600 mg/dL means the unit is wrong (mmol/L read as mg/dL or back).
_MIN_PLAUSIBLE_MEDIAN_MG_DL = 30.0
_MAX_PLAUSIBLE_MEDIAN_MG_DL = 600.0
_PROGRESS_THRESHOLD = 200  # patient-days above which a progress bar is shown
_TABLE_ROWS = 50  # members listed in the simulate table
# Dexcom (G4-G7) and most CGM exports write "Low" / "High" outside their 40-400 mg/dL reporting range: read them as
# those limits (dropping them would hide the worst hypo- and hyperglycaemia).
_SENSOR_LOW_MG_DL = 40.0
_SENSOR_HIGH_MG_DL = 400.0


class _Signal(StrEnum):
    """Which simulated glucose the `simulate` summary describes."""

    bg = "bg"
    cgm = "cgm"


# signal -> (column written by --output, words for the summary)
_SIGNALS = {
    _Signal.bg: ("bg_mg_dl", "true blood glucose"),
    _Signal.cgm: ("cgm_mg_dl", "CGM sensor readings"),
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
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}")
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
    seed: Annotated[int, typer.Option(min=0, help="Seed (>= 0): member i's sensor uses seed + i.")] = 1,
    start: Annotated[str, typer.Option(help="Start time, ISO 8601 with zone.")] = "2018-01-01T00:00:00+00:00",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Per-minute trace (.csv or .parquet).")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of the first patient's trace.")] = None,
    agp: Annotated[Path | None, typer.Option(help="PNG of the ambulatory glucose profile of the run.")] = None,
    signal: Annotated[
        _Signal,
        typer.Option(
            help="Glucose the summary describes: bg (true subcutaneous glucose, column bg_mg_dl) or cgm (sensor "
            "readings with noise, column cgm_mg_dl, what `medtwin glucose metrics` reads by default)."
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
        kwargs: dict[str, Any] = {
            "days": days, "meals": meals, "replicate": replicate, "randomize_meals": randomize_meals,
            "controller": controller, "sensor": sensor, "pump": pump, "sensor_noise": noise, "seed": seed,
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
        "signal_column": signal_column,
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
    table = Table(title=f"{len(result.names)} patient(s) x {days} day(s), {controller}")
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
    Console().print(table)


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise ValidationError(f"column {wanted!r} not in the file (columns: {columns})")
        return wanted
    return next((c for c in candidates if c in columns), None)


def _read_table(file: Path) -> pd.DataFrame:
    """Read *file* (.parquet, else CSV), turning every reader failure into a ValidationError naming the file."""
    try:
        if file.suffix == ".parquet":
            return pd.read_parquet(file)
        return pd.read_csv(file)
    except pd.errors.EmptyDataError:
        raise ValidationError(f"{file}: the file is empty (expected a header row and CGM readings)") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{file}: not a text CSV file (it is not UTF-8 text)") from None
    except OSError as exc:
        raise ValidationError(f"{file}: cannot read ({exc.strerror or exc})") from None
    except (pd.errors.ParserError, ValueError, ImportError) as exc:
        kind = "Parquet" if file.suffix == ".parquet" else "CSV"
        raise ValidationError(f"{file}: not a readable {kind} file ({exc})") from None


def _glucose_unit(unit: str | None, column: str) -> str:
    """The unit of the glucose column: *unit* when given, else guessed from the column name (mg/dL by default)."""
    if unit is None:
        return "mmol/L" if "mmol" in column.lower() else "mg/dL"
    for known in _GLUCOSE_UNITS:
        if unit.replace(" ", "").lower() == known.lower():
            return known
    raise ValidationError(f"--unit {unit!r}: use one of {', '.join(_GLUCOSE_UNITS)}")


def _subject_ids(frame: pd.DataFrame, i_col: str | None, guessed: bool) -> npt.NDArray[np.str_]:
    """Subject key per row; a `medtwin glucose simulate` trace is split by member (replicates share a name)."""
    if i_col is None:
        return np.full(len(frame), "all")
    ids = frame[i_col].astype(str)
    if guessed and i_col != "member" and "member" in frame.columns:
        members = frame["member"].astype(str)
        if members.nunique() > ids.nunique():
            ids = ids + " (member " + members + ")"
    return ids.to_numpy(dtype=str)


@app.command()
def metrics(
    file: Annotated[Path, typer.Argument(help="CGM readings (.csv or .parquet) with a time and a glucose column.")],
    column: Annotated[str | None, typer.Option(help="Glucose column; guessed when omitted.")] = None,
    unit: Annotated[
        str | None,
        typer.Option(help="Unit of the glucose column: mg/dL or mmol/L (default: mmol/L if the column name says so)."),
    ] = None,
    id_column: Annotated[str | None, typer.Option(help="Subject id column; guessed when omitted.")] = None,
    time_column: Annotated[str | None, typer.Option(help="Time column (timestamps or t_min minutes).")] = None,
    max_gap_min: Annotated[float, typer.Option(help="Longest interval one reading may stand for (min).")] = 15.0,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Consensus CGM metrics (TIR, GMI, CV, LBGI/HBGI, episodes) per subject of FILE.

    Rows whose time or glucose cannot be read are skipped and counted (``skipped_rows``); ``Low`` / ``High``
    sensor readings count as 40 / 400 mg/dL (``limit_readings``).
    """
    try:
        if not file.exists():
            raise ValidationError(f"{file}: no such file")
        frame = _read_table(file)
        cols = [str(c) for c in frame.columns]
        g_col = _pick(cols, column, _GLUCOSE_COLUMNS, "glucose")
        t_col = _pick(cols, time_column, _TIME_COLUMNS, "time")
        if g_col is None or t_col is None:
            raise ValidationError(f"{file}: need a time column {_TIME_COLUMNS} and a glucose column {_GLUCOSE_COLUMNS}")
        g_unit = _glucose_unit(unit, g_col)
        i_col = _pick(cols, id_column, _ID_COLUMNS, "id")
        if t_col == "t_min":
            t_all = pd.to_numeric(frame[t_col], errors="coerce").to_numpy(dtype=float)
        else:
            with warnings.catch_warnings():  # pandas warns when it falls back to per-element parsing
                warnings.simplefilter("ignore", UserWarning)
                stamps = pd.to_datetime(frame[t_col], errors="coerce", utc=True)
            if stamps.isna().all():
                raise ValidationError(f"{file}: column {t_col!r} holds no readable timestamps")
            t_all = ((stamps - stamps.min()).dt.total_seconds() / 60.0).to_numpy(dtype=float)
        g_all = np.array(pd.to_numeric(frame[g_col], errors="coerce"), dtype=np.float64)
        if g_unit != "mg/dL":
            g_all = g_all * codes.convert(1.0, g_unit, "mg/dL", analyte="glucose")
        words = frame[g_col].astype(str).str.strip().str.lower().to_numpy()
        g_all[words == "low"] = _SENSOR_LOW_MG_DL
        g_all[words == "high"] = _SENSOR_HIGH_MG_DL
        limits = {"low": int(np.count_nonzero(words == "low")), "high": int(np.count_nonzero(words == "high"))}
        skipped = int(np.count_nonzero(~(np.isfinite(t_all) & np.isfinite(g_all))))
        valid = g_all[np.isfinite(g_all)]
        median = float(np.median(valid)) if valid.size else 100.0
        if not _MIN_PLAUSIBLE_MEDIAN_MG_DL <= median <= _MAX_PLAUSIBLE_MEDIAN_MG_DL:
            hint = "if the values are mmol/L, pass --unit mmol/L" if g_unit == "mg/dL" else "are they mg/dL?"
            raise ValidationError(
                f"{file}: column {g_col!r} read as {g_unit} gives a median of {median:.3g} mg/dL, "
                f"impossible for CGM; {hint}"
            )
        groups = _subject_ids(frame, i_col, guessed=id_column is None)
        results = {}
        for sid in dict.fromkeys(groups):
            sel = groups == sid
            try:
                results[str(sid)] = cgm_metrics(t_all[sel], g_all[sel], max_gap_min=max_gap_min).to_dict()
            except ValidationError as exc:
                raise ValidationError(f"{file}: subject {sid!r}: {exc}") from None
    except MedtwinError as exc:
        raise _fail(str(exc)) from None
    if json:
        _print_json(
            {
                "file": str(file),
                "glucose_column": g_col,
                "unit": g_unit,
                "skipped_rows": skipped,
                "limit_readings": limits,
                "subjects": results,
            }
        )
        return
    table = Table(title=f"CGM metrics: {file.name}")
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
    Console().print(table)
    if limits["low"] or limits["high"]:
        Console(stderr=True).print(
            f"note: {limits['low']} Low read as {_SENSOR_LOW_MG_DL:.0f} mg/dL, "
            f"{limits['high']} High as {_SENSOR_HIGH_MG_DL:.0f} mg/dL (the sensor's reporting limits)"
        )
    if skipped:
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {skipped} row(s) skipped: unreadable time or glucose")
