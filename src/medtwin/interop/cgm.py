"""CGM files as exported by devices and apps, read into one shape: :func:`read_cgm_file`.

Formats recognised from the file itself (no option needed):

* **Dexcom Clarity CSV** (``Index, Timestamp (YYYY-MM-DDThh:mm:ss), Event Type, ..., Glucose Value (mg/dL)`` or
  ``(mmol/L)``): the ``EGV`` rows; the header rows (patient, device, alerts) and other events are not readings.
* **FreeStyle Libre CSV** (LibreView / LibreLink export: a title line, then ``Device, Serial Number, Device
  Timestamp, Record Type, Historic Glucose mg/dL`` or ``mmol/L``, ``Scan Glucose ...``): the historic
  (``Record Type`` 0, every 15 minutes) readings; scans are counted in the notes. Its timestamps are
  ``DD-MM-YYYY HH:MM`` or ``MM-DD-YYYY HH:MM`` by locale: the order is inferred from the dates (a day above 12)
  or given with *date_order*.
* **Nightscout entries**: the JSON of ``/api/v1/entries.json`` (objects with ``type`` ``sgv``, ``sgv`` in mg/dL,
  ``date`` in ms since the epoch) and the tab-separated ``entries.csv`` (``dateString, date, sgv, direction,
  device``, no header).
* **A table with a time and a glucose column** (CSV or Parquet): ``time``/``timestamp``/``Timestamp``/...
  and ``glucose``/``gl``/``sgv``/``Glucose (mmol/L)``/``Glucose (mg/dL)``/``cgm_mg_dl``/...; the unit comes from
  the column name when it says, else from *unit* (mg/dL by default). A ``medtwin glucose simulate`` output is
  such a table: its ``cgm_mg_dl`` column (sensor readings) is read unless *column* says ``bg_mg_dl``.

Every result names the format, the column and unit read and the *signal* (CGM sensor glucose, or the simulated
noise-free blood glucose), counts the rows it could not read (``skipped_rows``) and the ``Low``/``High`` readings
it took as the sensor's limits (40 / 400 mg/dL), so nothing is dropped without a number. Device exports carry
local device time without a zone: only differences between readings are used, and a daylight-saving change shows
as a gap or an overlap.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped,unused-ignore]

from medtwin import codes
from medtwin.errors import ValidationError

__all__ = ["GLUCOSE_UNITS", "SENSOR_HIGH_MG_DL", "SENSOR_LOW_MG_DL", "CgmReadings", "read_cgm_file"]

FloatArray = npt.NDArray[np.float64]
GLUCOSE_UNITS = ("mg/dL", "mmol/L")
# Dexcom (G4-G7), Libre and most exports write "Low" / "High" outside their 40-400 mg/dL reporting range: read them
# as those limits (dropping them would hide the worst hypo- and hyperglycaemia).
SENSOR_LOW_MG_DL = 40.0
SENSOR_HIGH_MG_DL = 400.0
# CGMs read 40-400 mg/dL: a median outside 30-600 mg/dL means the unit is wrong (mmol/L read as mg/dL or back).
_MIN_PLAUSIBLE_MEDIAN_MG_DL = 30.0
_MAX_PLAUSIBLE_MEDIAN_MG_DL = 600.0

_GLUCOSE_COLUMNS = (
    "glucose_mg_dl", "glucose_mmol_l", "gl", "glucose", "Glucose", "Glucose (mg/dL)", "Glucose (mmol/L)",
    "Glucose Value (mg/dL)", "Glucose Value (mmol/L)", "cgm_mg_dl", "bg_mg_dl", "CGM", "BG", "sgv",
)  # fmt: skip
_ID_COLUMNS = ("id", "patient", "subject", "member")
_TIME_COLUMNS = ("time", "timestamp", "Time", "Timestamp", "datetime", "dateString", "t_min")
_BG_COLUMNS = ("bg_mg_dl", "BG")  # simulated, noise-free model glucose (simglucose's BG)
SIGNAL_CGM = "CGM (sensor glucose)"
SIGNAL_BG = "blood glucose (simulated, noise-free model BG)"


@dataclass(frozen=True, slots=True)
class CgmReadings:
    """The readings of one file: minutes since the earliest reading, glucose in mg/dL and a subject per reading."""

    path: str
    format: str
    signal: str
    glucose_column: str
    unit: str
    time_min: FloatArray
    glucose_mg_dl: FloatArray
    subjects: npt.NDArray[np.str_]
    skipped_rows: int = 0
    limit_readings: dict[str, int] = field(default_factory=lambda: {"low": 0, "high": 0})
    notes: tuple[str, ...] = ()


def _unit_of(column: str, given: str | None) -> str:
    """The glucose unit: stated by the column name when it says, else *given*, else mg/dL; a clash is an error."""
    lowered = column.lower().replace(" ", "")
    stated = "mmol/L" if "mmol" in lowered else "mg/dL" if "mg/dl" in lowered or "mg_dl" in lowered else None
    chosen = None
    if given is not None:
        chosen = next((u for u in GLUCOSE_UNITS if given.replace(" ", "").lower() == u.lower()), None)
        if chosen is None:
            raise ValidationError(f"--unit {given!r}: use one of {', '.join(GLUCOSE_UNITS)}")
    if stated is not None and chosen is not None and stated != chosen:
        raise ValidationError(f"--unit {chosen} contradicts the column {column!r}, which is in {stated}")
    return stated or chosen or "mg/dL"


def _read_table(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read *path* (.parquet, else CSV), turning every reader failure into a ValidationError naming the file."""
    try:
        frame: pd.DataFrame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, **kwargs)
        return frame
    except pd.errors.EmptyDataError:
        raise ValidationError(f"{path}: the file is empty (expected a header row and CGM readings)") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{path}: not a text CSV file (it is not UTF-8 text)") from None
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (pd.errors.ParserError, ValueError, ImportError) as exc:
        kind = "Parquet" if path.suffix == ".parquet" else "CSV"
        raise ValidationError(f"{path}: not a readable {kind} file ({exc})") from None


def _head(path: Path, lines: int = 4) -> list[str]:
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as fh:
            return [fh.readline().rstrip("\r\n") for _ in range(lines)]
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _minutes(stamps: pd.Series, path: Path, column: str) -> FloatArray:
    """Minutes since the earliest readable time (unreadable ones NaN)."""
    if stamps.isna().all():
        raise ValidationError(f"{path}: column {column!r} holds no readable timestamps")
    return np.asarray(((stamps - stamps.min()).dt.total_seconds() / 60.0).to_numpy(dtype=float), dtype=np.float64)


def _parse_times(values: pd.Series, path: Path, column: str, fmt: str | None = None) -> FloatArray:
    with warnings.catch_warnings():  # pandas warns when it falls back to per-element parsing
        warnings.simplefilter("ignore", UserWarning)
        stamps = pd.to_datetime(values, errors="coerce", utc=True, format=fmt)
    return _minutes(stamps, path, column)


def _glucose(values: pd.Series, unit: str) -> tuple[FloatArray, dict[str, int]]:
    """Glucose in mg/dL from *values* in *unit*; ``Low`` / ``High`` become the sensor limits (counted)."""
    g = np.array(pd.to_numeric(values, errors="coerce"), dtype=np.float64)
    if unit != "mg/dL":
        g = g * codes.convert(1.0, unit, "mg/dL", analyte="glucose")
    words = values.astype(str).str.strip().str.lower().to_numpy()
    g[words == "low"] = SENSOR_LOW_MG_DL
    g[words == "high"] = SENSOR_HIGH_MG_DL
    return g, {"low": int(np.count_nonzero(words == "low")), "high": int(np.count_nonzero(words == "high"))}


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...]) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise ValidationError(f"column {wanted!r} not in the file (columns: {columns})")
        return wanted
    return next((c for c in candidates if c in columns), None)


def _clarity(path: Path, unit: str | None) -> dict[str, Any]:
    frame = _read_table(path, dtype=str)
    g_col = next((c for c in frame.columns if str(c).startswith("Glucose Value")), None)
    t_col = next((c for c in frame.columns if str(c).startswith("Timestamp")), None)
    if g_col is None or t_col is None or "Event Type" not in frame.columns:
        raise ValidationError(f"{path}: a Dexcom Clarity export without Timestamp / Event Type / Glucose Value")
    egv = frame[frame["Event Type"].astype(str).str.strip() == "EGV"]
    g_unit = _unit_of(str(g_col), unit)
    g, limits = _glucose(egv[g_col], g_unit)
    other = len(frame) - len(egv)
    return {
        "format": "Dexcom Clarity CSV",
        "signal": SIGNAL_CGM,
        "glucose_column": str(g_col),
        "unit": g_unit,
        "time_min": _parse_times(egv[t_col], path, str(t_col)),
        "glucose_mg_dl": g,
        "subjects": np.full(len(egv), "all"),
        "limit_readings": limits,
        "notes": [f"{other} non-reading row(s) (patient, device, alerts, events) not used"] if other else [],
    }


def _libre_time_format(stamps: pd.Series, date_order: str | None, path: Path) -> str:
    if date_order is not None:
        if date_order not in ("dmy", "mdy"):
            raise ValidationError(f"--date-order {date_order!r}: use dmy (DD-MM-YYYY) or mdy (MM-DD-YYYY)")
        order = date_order
    else:
        parts = stamps.dropna().astype(str).str.extract(r"^(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})")
        first, second = pd.to_numeric(parts[0]), pd.to_numeric(parts[1])
        if (first > 12).any():
            order = "dmy"
        elif (second > 12).any():
            order = "mdy"
        else:
            raise ValidationError(
                f"{path}: FreeStyle Libre dates like {stamps.dropna().iloc[0]!r} can be day-month or month-day "
                "and no day above 12 tells which: give --date-order dmy or mdy"
            )
    sep = "-" if stamps.dropna().astype(str).str.contains("-").any() else "/"
    return f"%d{sep}%m{sep}%Y %H:%M" if order == "dmy" else f"%m{sep}%d{sep}%Y %H:%M"


def _libre(path: Path, header_row: int, unit: str | None, date_order: str | None) -> dict[str, Any]:
    frame = _read_table(path, skiprows=header_row, dtype=str)
    g_col = next((c for c in frame.columns if str(c).startswith("Historic Glucose")), None)
    if g_col is None or "Device Timestamp" not in frame.columns:
        raise ValidationError(f"{path}: a FreeStyle Libre export without Device Timestamp / Historic Glucose")
    kind = frame["Record Type"].astype(str).str.strip()
    historic = frame[kind == "0"]
    scans = int(np.count_nonzero(kind == "1"))
    g_unit = _unit_of(str(g_col), unit)
    g, limits = _glucose(historic[g_col], g_unit)
    fmt = _libre_time_format(historic["Device Timestamp"], date_order, path)
    notes = [f"timestamps read as {fmt.split(' ')[0].replace('%', '')}"]
    if scans:
        notes.append(f"{scans} scan reading(s) (Record Type 1) not used: metrics use the 15-minute historic ones")
    return {
        "format": "FreeStyle Libre CSV",
        "signal": SIGNAL_CGM,
        "glucose_column": str(g_col),
        "unit": g_unit,
        "time_min": _parse_times(historic["Device Timestamp"], path, "Device Timestamp", fmt),
        "glucose_mg_dl": g,
        "subjects": np.full(len(historic), "all"),
        "limit_readings": limits,
        "notes": notes,
    }


def _nightscout_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{path}: not a readable JSON file ({exc})") from None
    entries = data.get("entries") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValidationError(f"{path}: expected Nightscout entries (a JSON list of objects with type, sgv, date)")
    sgv = [e for e in entries if e.get("type", "sgv") == "sgv"]
    times = pd.Series([e.get("date", e.get("dateString")) for e in sgv], dtype=object)
    numeric = pd.to_numeric(times, errors="coerce")
    stamps = pd.to_datetime(numeric, unit="ms", utc=True, errors="coerce")
    text_times = pd.to_datetime(times.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601")
    stamps = stamps.fillna(text_times)
    g, limits = _glucose(pd.Series([e.get("sgv") for e in sgv], dtype=object), "mg/dL")
    other = len(entries) - len(sgv)
    return {
        "format": "Nightscout entries JSON",
        "signal": SIGNAL_CGM,
        "glucose_column": "sgv",
        "unit": "mg/dL",
        "time_min": _minutes(stamps, path, "date"),
        "glucose_mg_dl": g,
        "subjects": np.full(len(sgv), "all"),
        "limit_readings": limits,
        "notes": [f"{other} entr(y/ies) of other types (mbg, cal) not used"] if other else [],
    }


def _is_nightscout_tsv(line: str) -> bool:
    fields = [f.strip().strip('"') for f in line.split("\t")]
    return len(fields) >= 3 and fields[1].isdigit() and len(fields[1]) >= 12 and _is_number(fields[2])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _nightscout_tsv(path: Path) -> dict[str, Any]:
    frame = _read_table(path, sep="\t", header=None, dtype=str)
    stamps = pd.to_datetime(pd.to_numeric(frame[1], errors="coerce"), unit="ms", utc=True, errors="coerce")
    g, limits = _glucose(frame[2], "mg/dL")
    return {
        "format": "Nightscout entries CSV",
        "signal": SIGNAL_CGM,
        "glucose_column": "sgv (3rd field)",
        "unit": "mg/dL",
        "time_min": _minutes(stamps, path, "date (2nd field)"),
        "glucose_mg_dl": g,
        "subjects": np.full(len(frame), "all"),
        "limit_readings": limits,
        "notes": [],
    }


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


def _table(
    path: Path, column: str | None, unit: str | None, id_column: str | None, time_column: str | None
) -> dict[str, Any]:
    frame = _read_table(path)
    cols = [str(c) for c in frame.columns]
    g_col = _pick(cols, column, _GLUCOSE_COLUMNS)
    t_col = _pick(cols, time_column, _TIME_COLUMNS)
    if g_col is None or t_col is None:
        raise ValidationError(
            f"{path}: not a known CGM export (Dexcom Clarity, FreeStyle Libre, Nightscout) and no time column "
            f"{_TIME_COLUMNS} and glucose column {_GLUCOSE_COLUMNS} (columns: {cols}); give --column / --time-column"
        )
    g_unit = _unit_of(g_col, unit)
    if t_col == "t_min":
        t_all = np.asarray(pd.to_numeric(frame[t_col], errors="coerce").to_numpy(dtype=float), dtype=np.float64)
    else:
        t_all = _parse_times(frame[t_col], path, t_col)
    g, limits = _glucose(frame[g_col], g_unit)
    simulated = {"bg_mg_dl", "cgm_mg_dl"} <= set(cols)
    notes = []
    if simulated:
        other = "bg_mg_dl" if g_col != "bg_mg_dl" else "cgm_mg_dl"
        what = "noise-free model BG, what `glucose simulate` summarises by default" if other == "bg_mg_dl" else "CGM"
        notes.append(f"the file also has {other} ({what}): --column {other} to read it")
    return {
        "format": "medtwin glucose simulate output"
        if simulated
        else f"{'Parquet' if path.suffix == '.parquet' else 'CSV'} table",
        "signal": SIGNAL_BG if g_col in _BG_COLUMNS else SIGNAL_CGM,
        "glucose_column": g_col,
        "unit": g_unit,
        "time_min": t_all,
        "glucose_mg_dl": g,
        "subjects": _subject_ids(frame, _pick(cols, id_column, _ID_COLUMNS), guessed=id_column is None),
        "limit_readings": limits,
        "notes": notes,
    }


def read_cgm_file(
    path: str | Path,
    *,
    column: str | None = None,
    unit: str | None = None,
    id_column: str | None = None,
    time_column: str | None = None,
    date_order: str | None = None,
) -> CgmReadings:
    """Read a CGM export or table (format detected, see the module docstring) into :class:`CgmReadings`.

    *column*, *id_column*, *time_column* choose the columns of a plain table; *unit* is the glucose unit when the
    column name does not state it (a stated one that disagrees is an error); *date_order* (``dmy``/``mdy``)
    settles FreeStyle Libre dates that could be either. Rows whose time or glucose cannot be read are counted in
    ``skipped_rows`` and left out; a file whose median glucose is impossible for a CGM in the unit read is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise ValidationError(f"{p}: no such file")
    table_options = column is not None or id_column is not None or time_column is not None
    head = [] if p.suffix in (".parquet", ".json") else _head(p)
    libre_row = next((i for i, line in enumerate(head) if "Device Timestamp" in line and "Record Type" in line), None)
    if p.suffix == ".json":
        parts = _nightscout_json(p)
    elif head and head[0].startswith("Index,") and "Event Type" in head[0] and "Glucose Value" in head[0]:
        parts = _clarity(p, unit)
    elif libre_row is not None:
        parts = _libre(p, libre_row, unit, date_order)
    elif head and _is_nightscout_tsv(head[0]):
        parts = _nightscout_tsv(p)
    else:
        parts = _table(p, column, unit, id_column, time_column)
    if table_options and not parts["format"].endswith(("table", "output")):
        raise ValidationError(f"{p}: a {parts['format']} has fixed columns; --column / --id-column / --time-column "
                              "apply to plain tables")  # fmt: skip
    t_all, g_all = parts["time_min"], parts["glucose_mg_dl"]
    usable = np.isfinite(t_all) & np.isfinite(g_all)
    if not usable.any():
        raise ValidationError(
            f"{p}: no readable glucose readings in {parts['format']} column {parts['glucose_column']!r}"
        )
    median = float(np.median(g_all[usable]))
    if not _MIN_PLAUSIBLE_MEDIAN_MG_DL <= median <= _MAX_PLAUSIBLE_MEDIAN_MG_DL:
        hint = "if the values are mmol/L, pass --unit mmol/L" if parts["unit"] == "mg/dL" else "are they mg/dL?"
        raise ValidationError(
            f"{p}: column {parts['glucose_column']!r} read as {parts['unit']} gives a median of {median:.3g} mg/dL, "
            f"impossible for CGM; {hint}"
        )
    return CgmReadings(
        path=str(p),
        format=parts["format"],
        signal=parts["signal"],
        glucose_column=parts["glucose_column"],
        unit=parts["unit"],
        time_min=np.asarray(t_all[usable], dtype=np.float64),
        glucose_mg_dl=np.asarray(g_all[usable], dtype=np.float64),
        subjects=np.asarray(parts["subjects"][usable], dtype=str),
        skipped_rows=int(np.count_nonzero(~usable)),
        limit_readings=parts["limit_readings"],
        notes=tuple(parts["notes"]),
    )
