"""A person's type 1 diabetes data for the personal twin: CGM readings, insulin and carbohydrate, read from files.

Formats
-------
CSV (one row per time; every column but ``time`` optional in a row; units in the column names):

    time,cgm_mg_dl,bolus_u,basal_u_h,carbs_g
    2024-03-01T07:00:00+01:00,142,,0.85,
    2024-03-01T07:02:00+01:00,,6.5,,55

- ``time``: ISO 8601 with a zone offset (or give *timezone* for local times without one).
- ``cgm_mg_dl`` (or ``cgm_mmol_l``, converted with 1 mmol/L = 18.016 mg/dL): sensor glucose; ``Low`` / ``High``
  (what Dexcom exports outside 40-400 mg/dL) are kept as censored readings at 40 / 400 mg/dL.
- ``bolus_u``: insulin bolus (U) given at that time; ``basal_u_h``: basal rate (U/h) from that time until the next
  basal value (people on injections give long-acting insulin as its daily dose / 24 h); ``carbs_g``: carbohydrate
  eaten (g) at that time.

Nightscout (the data store of open-source automated insulin delivery): ``entries.json`` (``type`` ``sgv``: sensor
glucose, always mg/dL; ``date`` in ms since the epoch), ``treatments.json`` (``insulin`` in U, ``carbs`` in g,
``Temp Basal`` with ``absolute``/``rate`` U/h for ``duration`` minutes, ``Combo Bolus`` extended part as
``relative`` U/h) and optionally ``profile.json`` (the scheduled basal rates by time of day in the profile's zone).

Nothing is dropped silently: a row or record that cannot be used is kept in ``TherapyData.skipped`` with where it
was (``line 12``, ``treatments[40]``) and why; the twin starts at the first CGM reading, so insulin and meals
before it are reported there too.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from datetime import timezone as fixed_offset
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray

__all__ = [
    "CSV_COLUMNS",
    "SENSOR_HIGH_MG_DL",
    "SENSOR_LOW_MG_DL",
    "SkippedRecord",
    "TherapyData",
    "TherapyDataBuilder",
    "read_nightscout",
    "read_therapy_csv",
]

CSV_COLUMNS = ("time", "cgm_mg_dl", "cgm_mmol_l", "bolus_u", "basal_u_h", "carbs_g")
SENSOR_LOW_MG_DL = 40.0
SENSOR_HIGH_MG_DL = 400.0
# Plausibility limits: a value outside is a data error, not a patient state (CGMs read 40-400 mg/dL; pumps deliver
# at most 25-35 U per bolus and 15-35 U/h basal).
_CGM_RANGE_MG_DL = (20.0, 600.0)
_MAX_BOLUS_U = 50.0
_MAX_BASAL_U_H = 35.0
_MAX_CARBS_G = 400.0
_MG_DL_PER_MMOL_L = codes.convert(1.0, "mmol/L", "mg/dL", analyte="glucose")


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    """A row or record that was not used: where it was, why, and its text."""

    where: str
    reason: str
    text: str = ""


def _array(values: Iterable[float]) -> FloatArray:
    return np.asarray(list(values), dtype=np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class TherapyData:
    """CGM, insulin and carbohydrate of one person, as minutes from *start* (the first CGM reading, UTC).

    ``basal_*`` are the times a basal rate starts (it holds until the next one); every array is sorted by time.
    ``cgm_censored`` marks sensor-limit readings (``Low``/``High``).
    """

    start: datetime
    cgm_t_min: FloatArray
    cgm_mg_dl: FloatArray
    cgm_censored: FloatArray
    bolus_t_min: FloatArray
    bolus_u: FloatArray
    basal_t_min: FloatArray
    basal_u_h: FloatArray
    carbs_t_min: FloatArray
    carbs_g: FloatArray
    body_weight_kg: float | None = None
    utc_offset_min: float = 0.0
    source: str = ""
    skipped: tuple[SkippedRecord, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValidationError("TherapyData.start must be timezone-aware")
        if self.cgm_t_min.size < 2:
            raise ValidationError(f"{self.source or 'data'}: need at least 2 CGM readings, got {self.cgm_t_min.size}")
        if self.basal_t_min.size == 0:
            raise ValidationError(
                f"{self.source or 'data'}: no basal insulin rate (give basal_u_h, a Nightscout profile, or a "
                "constant basal rate)"
            )
        if self.body_weight_kg is not None and not 10.0 <= self.body_weight_kg <= 250.0:
            raise ValidationError(f"body weight {self.body_weight_kg} kg is outside 10-250 kg")

    @property
    def duration_min(self) -> float:
        """Minutes from the first to the last CGM reading."""
        return float(self.cgm_t_min[-1])

    @property
    def end(self) -> datetime:
        """Time of the last CGM reading."""
        return self.start + timedelta(minutes=self.duration_min)

    def local_start_minute(self) -> float:
        """Minute of the local day (UTC offset *utc_offset_min*) at which the data start."""
        local = self.start + timedelta(minutes=self.utc_offset_min)
        return float(local.hour * 60 + local.minute + local.second / 60.0)

    def basal_rate_at(self, t_min: FloatArray) -> FloatArray:
        """Basal rate (U/h) in force at each time (the first rate also covers the time before it)."""
        idx = np.searchsorted(self.basal_t_min, np.asarray(t_min, dtype=np.float64), side="right") - 1
        return np.asarray(self.basal_u_h[np.maximum(idx, 0)], dtype=np.float64)

    def minute_inputs(self, n_minutes: int | None = None) -> tuple[FloatArray, FloatArray]:
        """Per-minute announced carbohydrate (g) and delivered insulin (U/min) over ``[0, n_minutes)``.

        A bolus is delivered within the minute it was given; basal is the rate in force at the minute's start.
        """
        n = int(np.ceil(self.duration_min)) if n_minutes is None else n_minutes
        meals = np.zeros(n)
        insulin = self.basal_rate_at(np.arange(n, dtype=np.float64)) / 60.0
        for t, v, out in ((self.carbs_t_min, self.carbs_g, meals), (self.bolus_t_min, self.bolus_u, insulin)):
            k = np.floor(t).astype(np.int64)
            inside = (k >= 0) & (k < n)
            np.add.at(out, k[inside], v[inside])
        return meals, insulin

    def window(self, since_min: float, until_min: float) -> TherapyData:
        """The data with times in ``[since_min, until_min]`` re-based so the first CGM reading in it is time 0."""
        cgm = (self.cgm_t_min >= since_min) & (self.cgm_t_min <= until_min)
        if np.count_nonzero(cgm) < 2:
            raise ValidationError(f"window {since_min:g}-{until_min:g} min holds fewer than 2 CGM readings")
        t0 = float(self.cgm_t_min[cgm][0])

        def pick(t: FloatArray, *vals: FloatArray) -> list[FloatArray]:
            sel = (t >= t0) & (t <= until_min)
            return [t[sel] - t0, *(v[sel] for v in vals)]

        bt, bu = pick(self.bolus_t_min, self.bolus_u)
        ct, cg = pick(self.carbs_t_min, self.carbs_g)
        at, au = pick(self.basal_t_min, self.basal_u_h)
        at = np.concatenate([[0.0], at])
        au = np.concatenate([self.basal_rate_at(np.array([t0])), au])
        return replace(
            self, start=self.start + timedelta(minutes=t0), cgm_t_min=self.cgm_t_min[cgm] - t0,
            cgm_mg_dl=self.cgm_mg_dl[cgm], cgm_censored=self.cgm_censored[cgm], bolus_t_min=bt, bolus_u=bu,
            basal_t_min=at, basal_u_h=au, carbs_t_min=ct, carbs_g=cg,
        )  # fmt: skip

    def write_csv(self, path: str | Path) -> Path:
        """Write the documented CSV (times in UTC offset *utc_offset_min*; one row per time)."""
        zone = fixed_offset(timedelta(minutes=self.utc_offset_min))
        rows: dict[float, dict[str, str]] = {}
        for t, v, c in zip(self.cgm_t_min, self.cgm_mg_dl, self.cgm_censored, strict=True):
            rows.setdefault(float(t), {})["cgm_mg_dl"] = (
                ("Low" if v <= SENSOR_LOW_MG_DL else "High") if c else f"{v:.1f}"
            )
        for column, times, values in (("bolus_u", self.bolus_t_min, self.bolus_u),
                                      ("basal_u_h", self.basal_t_min, self.basal_u_h),
                                      ("carbs_g", self.carbs_t_min, self.carbs_g)):  # fmt: skip
            for t, v in zip(times, values, strict=True):
                cell = rows.setdefault(float(t), {})
                cell[column] = f"{float(cell.get(column, 0.0)) + v:.4g}" if column != "basal_u_h" else f"{v:.4g}"
        out = Path(path)
        with out.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            columns = ("cgm_mg_dl", "bolus_u", "basal_u_h", "carbs_g")
            writer.writerow(("time", *columns))
            for t in sorted(rows):
                stamp = (self.start + timedelta(minutes=t)).astimezone(zone).isoformat()
                writer.writerow((stamp, *(rows[t].get(c, "") for c in columns)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (kept inside a twin's snapshot so replays need no other file)."""
        out: dict[str, Any] = {
            "start": self.start.isoformat(), "body_weight_kg": self.body_weight_kg, "source": self.source,
            "utc_offset_min": self.utc_offset_min,
            "notes": list(self.notes), "skipped": [[s.where, s.reason, s.text] for s in self.skipped],
        }  # fmt: skip
        for name in _ARRAYS:
            out[name] = getattr(self, name).tolist()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TherapyData:
        """Inverse of :meth:`to_dict`."""
        arrays = {name: np.asarray(d[name], dtype=np.float64) for name in _ARRAYS}
        return cls(
            start=datetime.fromisoformat(d["start"]), body_weight_kg=d.get("body_weight_kg"),
            utc_offset_min=float(d.get("utc_offset_min", 0.0)),
            source=d.get("source", ""), notes=tuple(d.get("notes", ())),
            skipped=tuple(SkippedRecord(*s) for s in d.get("skipped", ())), **arrays,
        )  # fmt: skip


_ARRAYS = (
    "cgm_t_min", "cgm_mg_dl", "cgm_censored", "bolus_t_min", "bolus_u", "basal_t_min", "basal_u_h",
    "carbs_t_min", "carbs_g",
)  # fmt: skip


class TherapyDataBuilder:
    """Collects timed values from any reader (files, stored records), then builds TherapyData relative to the first
    CGM reading; *where* strings locate each value in its source for the skipped-records report."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.cgm: list[tuple[datetime, float, bool, str]] = []
        self.bolus: list[tuple[datetime, float, str]] = []
        self.basal: list[tuple[datetime, float, str]] = []
        self.carbs: list[tuple[datetime, float, str]] = []
        self.skipped: list[SkippedRecord] = []
        self.notes: list[str] = []
        self.utc_offset_min = 0.0

    def skip(self, where: str, reason: str, text: str = "") -> None:
        """Keep a record that is not used, with the reason."""
        self.skipped.append(SkippedRecord(where, reason, text[:200]))

    def add_cgm(self, at: datetime, mg_dl: float, where: str, *, censored: bool = False) -> None:
        """A sensor reading (mg/dL) at *at*."""
        self.cgm.append((at.astimezone(UTC), mg_dl, censored, where))

    def add_bolus(self, at: datetime, units: float, where: str) -> None:
        """An insulin bolus (U) at *at*."""
        self.bolus.append((at.astimezone(UTC), units, where))

    def add_basal(self, at: datetime, rate_u_h: float, where: str) -> None:
        """A basal rate (U/h) from *at* on."""
        self.basal.append((at.astimezone(UTC), rate_u_h, where))

    def add_carbs(self, at: datetime, grams: float, where: str) -> None:
        """Carbohydrate (g) eaten at *at*."""
        self.carbs.append((at.astimezone(UTC), grams, where))

    def build(self, body_weight_kg: float | None) -> TherapyData:
        """The TherapyData of everything added (raises ValidationError with fewer than 2 CGM readings)."""
        if len(self.cgm) < 2:
            reasons = "; ".join(f"{s.where}: {s.reason}" for s in self.skipped[:3])
            raise ValidationError(
                f"{self.source}: {len(self.cgm)} usable CGM reading(s), need at least 2"
                + (f" (first problems: {reasons})" if reasons else "")
            )
        self.cgm.sort(key=lambda r: r[0])
        cgm: list[tuple[datetime, float, bool, str]] = []
        for row in self.cgm:
            if cgm and row[0] == cgm[-1][0]:
                self.skip(row[3], f"second CGM reading at {row[0].isoformat()} (the first one is kept)")
            else:
                cgm.append(row)
        start = cgm[0][0].replace(second=0, microsecond=0)

        def rel(t: datetime) -> float:
            return (t - start).total_seconds() / 60.0

        def timed(rows: list[tuple[datetime, float, str]], what: str) -> tuple[FloatArray, FloatArray]:
            kept = []
            for t, v, where in sorted(rows, key=lambda r: r[0]):
                if t < start:
                    self.skip(
                        where, f"{what} before the first CGM reading ({start.isoformat()}): the twin starts there"
                    )
                elif t <= cgm[-1][0]:
                    kept.append((rel(t), v))
                else:
                    self.skip(where, f"{what} after the last CGM reading ({cgm[-1][0].isoformat()})")
            return _array(r[0] for r in kept), _array(r[1] for r in kept)

        # the basal rate in force at the first reading is the last one set before it
        before = [r for r in self.basal if r[0] <= start]
        basal_rows = [r for r in self.basal if r[0] > start]
        if before:
            first = max(before, key=lambda r: r[0])
            basal_rows.append((start, first[1], first[2]))
        elif basal_rows:
            first = min(basal_rows, key=lambda r: r[0])
            basal_rows.append((start, first[1], first[2]))
            self.notes.append(f"no basal rate before {first[0].isoformat()}: its rate {first[1]:g} U/h is assumed")
        bt, bu = timed(self.bolus, "bolus")
        ct, cg = timed(self.carbs, "carbohydrate")
        at, au = timed(basal_rows, "basal rate")
        return TherapyData(
            start=start, cgm_t_min=_array(rel(r[0]) for r in cgm), cgm_mg_dl=_array(r[1] for r in cgm),
            cgm_censored=_array(float(r[2]) for r in cgm), bolus_t_min=bt, bolus_u=bu, basal_t_min=at,
            basal_u_h=au, carbs_t_min=ct, carbs_g=cg, body_weight_kg=body_weight_kg, source=self.source,
            utc_offset_min=self.utc_offset_min,
            skipped=tuple(self.skipped), notes=tuple(self.notes),
        )  # fmt: skip


def _zone(timezone: str | None) -> ZoneInfo | None:
    if timezone is None:
        return None
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {timezone!r} (use an IANA name such as Europe/Rome)") from None


def _parse_time(text: str, zone: ZoneInfo | None) -> datetime:
    """An aware datetime in its own zone (the caller converts to UTC once it has read the local offset)."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text.strip()!r} is not ISO 8601 (e.g. 2024-03-01T07:00:00+01:00)") from None
    if t.tzinfo is None:
        if zone is None:
            raise ValueError(f"time {text.strip()!r} has no zone offset (add one, or pass a time zone)")
        t = t.replace(tzinfo=zone)
    return t


def _number(text: str, column: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{column} {text.strip()!r} is not a number") from None
    if not np.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{column} {text.strip()!r} is outside {lo:g}-{hi:g}")
    return value


def read_therapy_csv(
    source: str | Path | io.TextIOBase,
    *,
    timezone: str | None = None,
    body_weight_kg: float | None = None,
    basal_u_h: float | None = None,
) -> TherapyData:
    """Read the documented CSV (see the module docstring) from a path or an open text stream.

    *timezone* (IANA name) applies to times written without an offset; *basal_u_h* is a constant basal rate for
    files without a ``basal_u_h`` column. Bad rows are kept in ``skipped`` with their line number and reason.
    """
    name = str(source) if isinstance(source, str | Path) else "CSV"
    zone = _zone(timezone)
    try:
        text = Path(source).read_text(encoding="utf-8-sig") if isinstance(source, str | Path) else source.read()
    except OSError as exc:
        raise ValidationError(f"{name}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{name}: not a UTF-8 text file") from None
    reader = csv.reader(io.StringIO(str(text)))
    header = next(reader, None)
    if not header:
        raise ValidationError(f"{name}: empty file (expected a header: {', '.join(CSV_COLUMNS)})")
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if "time" not in header or unknown:
        raise ValidationError(
            f"{name}: line 1: columns {unknown or header} not understood; expected time and any of "
            f"{', '.join(CSV_COLUMNS[1:])} (units are part of the names)"
        )
    col = {h: i for i, h in enumerate(header)}
    b = TherapyDataBuilder(name)
    if basal_u_h is not None:
        constant = _number(str(basal_u_h), "basal_u_h", 0, _MAX_BASAL_U_H)
        b.basal.append((datetime(1970, 1, 1, tzinfo=UTC), constant, "constant basal rate"))
    for row in reader:
        where = f"line {reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        raw = ",".join(row)
        if len(row) != len(header):
            b.skip(where, f"{len(row)} fields, the header has {len(header)}", raw)
            continue
        cell = {h: row[i].strip() for h, i in col.items()}
        try:
            local = _parse_time(cell["time"], zone)
            parsed = _parse_csv_values(cell)
        except ValueError as exc:
            b.skip(where, str(exc), raw)
            continue
        if not parsed:
            b.skip(where, "no value in the row", raw)
        offset = local.utcoffset()
        if not (b.cgm or b.bolus or b.carbs) and offset is not None:
            b.utc_offset_min = offset.total_seconds() / 60.0
        t = local.astimezone(UTC)
        for kind, value, censored in parsed:
            if kind == "cgm":
                b.cgm.append((t, value, censored, where))
            elif value > 0 or kind == "basal":
                getattr(b, kind).append((t, value, where))
    return b.build(body_weight_kg)


def _parse_csv_values(cell: Mapping[str, str]) -> list[tuple[str, float, bool]]:
    out: list[tuple[str, float, bool]] = []
    for column, scale in (("cgm_mg_dl", 1.0), ("cgm_mmol_l", _MG_DL_PER_MMOL_L)):
        text = cell.get(column, "")
        if not text:
            continue
        word = text.lower()
        if word in ("low", "high"):
            out.append(("cgm", SENSOR_LOW_MG_DL if word == "low" else SENSOR_HIGH_MG_DL, True))
        else:
            out.append(("cgm", _number(text, column, *(v / scale for v in _CGM_RANGE_MG_DL)) * scale, False))
    for column, kind, hi in (("bolus_u", "bolus", _MAX_BOLUS_U), ("basal_u_h", "basal", _MAX_BASAL_U_H),
                             ("carbs_g", "carbs", _MAX_CARBS_G)):  # fmt: skip
        if cell.get(column, ""):
            out.append((kind, _number(cell[column], column, 0.0, hi), False))
    return out


def _load_json(source: str | Path | Sequence[Any] | Mapping[str, Any], what: str) -> Any:
    if not isinstance(source, str | Path):
        return source
    try:
        return json.loads(Path(source).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValidationError(f"{source}: cannot read {what} ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{source}: not a JSON {what} export ({exc})") from None


def _ns_time(rec: Mapping[str, Any]) -> datetime:
    for key in ("date", "mills"):
        if isinstance(rec.get(key), int | float) and not isinstance(rec.get(key), bool):
            return datetime.fromtimestamp(float(rec[key]) / 1000.0, tz=UTC)
    for key in ("created_at", "dateString", "timestamp"):
        if isinstance(rec.get(key), str):
            return _parse_time(rec[key], ZoneInfo("UTC")).astimezone(UTC)
    raise ValueError("no time (date, mills, created_at, dateString or timestamp)")


def _ns_profile_basal(profile: Any, since: datetime, until: datetime) -> list[tuple[datetime, float]]:
    """Scheduled basal rate changes over [since, until] from a Nightscout profile export (default profile)."""
    doc = profile[0] if isinstance(profile, list) and profile else profile
    if not isinstance(doc, Mapping) or not isinstance(doc.get("store"), Mapping):
        raise ValidationError("Nightscout profile: expected an object with 'store' and 'defaultProfile'")
    name = doc.get("defaultProfile") or next(iter(doc["store"]), None)
    prof = doc["store"].get(name)
    if not isinstance(prof, Mapping) or not isinstance(prof.get("basal"), list) or not prof["basal"]:
        raise ValidationError(f"Nightscout profile {name!r}: no basal schedule")
    zone = _zone(prof.get("timezone") or "UTC")
    assert zone is not None
    schedule = []
    for i, seg in enumerate(prof["basal"]):
        try:
            hh, mm = str(seg["time"]).split(":")[:2]
            schedule.append((int(hh) * 60 + int(mm), float(seg["value"])))
        except (KeyError, ValueError, TypeError):
            raise ValidationError(
                f"Nightscout profile {name!r}: basal[{i}] {seg!r} is not {{time: HH:MM, value}}"
            ) from None
    out = []
    day = since.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    while day <= until:
        for minute, rate in schedule:
            out.append(((day + timedelta(minutes=minute)).astimezone(UTC), rate))
        day = (day + timedelta(days=1, hours=3)).replace(hour=0)  # DST-safe next local midnight
    return out


def read_nightscout(
    entries: str | Path | Sequence[Any],
    treatments: str | Path | Sequence[Any],
    *,
    profile: str | Path | Mapping[str, Any] | Sequence[Any] | None = None,
    basal_u_h: float | None = None,
    body_weight_kg: float | None = None,
) -> TherapyData:
    """Read Nightscout ``entries`` and ``treatments`` exports (paths or parsed JSON lists).

    The scheduled basal comes from *profile* (a ``profile.json`` export) or the constant *basal_u_h*; temporary
    basal rates and boluses from the treatments. Records that carry neither insulin nor carbohydrate (site
    changes, notes, finger-stick checks) are kept in ``skipped`` with the reason.
    """
    name = str(entries) if isinstance(entries, str | Path) else "Nightscout"
    ent = _load_json(entries, "entries")
    trt = _load_json(treatments, "treatments")
    if not isinstance(ent, list) or not isinstance(trt, list):
        raise ValidationError(f"{name}: entries and treatments must be JSON arrays (Nightscout API exports)")
    b = TherapyDataBuilder(name)
    for i, rec in enumerate(ent):
        where = f"entries[{i}]"
        if not isinstance(rec, Mapping):
            b.skip(where, "not a JSON object", repr(rec))
            continue
        if rec.get("type", "sgv") != "sgv":
            b.skip(where, f"type {rec.get('type')!r} is not a sensor reading (sgv)", json.dumps(rec))
            continue
        try:
            t = _ns_time(rec)
            value = _number(str(rec.get("sgv")), "sgv", *_CGM_RANGE_MG_DL)
        except ValueError as exc:
            b.skip(where, str(exc), json.dumps(rec))
            continue
        b.cgm.append((t, value, value <= SENSOR_LOW_MG_DL or value >= SENSOR_HIGH_MG_DL, where))
    temp_basals: list[tuple[datetime, datetime, float, str]] = []
    for i, rec in enumerate(trt):
        where = f"treatments[{i}]"
        if not isinstance(rec, Mapping):
            b.skip(where, "not a JSON object", repr(rec))
            continue
        try:
            _read_treatment(rec, where, b, temp_basals)
        except (ValueError, TypeError) as exc:
            b.skip(where, str(exc), json.dumps(rec, default=str))
    if b.cgm:
        since = min(r[0] for r in b.cgm)
        until = max(r[0] for r in b.cgm)
        scheduled = [] if profile is None else _ns_profile_basal(_load_json(profile, "profile"), since, until)
        if basal_u_h is not None and not scheduled:
            scheduled = [(since - timedelta(days=1), _number(str(basal_u_h), "basal_u_h", 0, _MAX_BASAL_U_H))]
        b.basal.extend((t, v, "profile") for t, v in _overlay_temp_basals(scheduled, temp_basals))
    return b.build(body_weight_kg)


def _read_treatment(
    rec: Mapping[str, Any], where: str, b: TherapyDataBuilder, temp_basals: list[tuple[datetime, datetime, float, str]]
) -> None:
    kind = str(rec.get("eventType", ""))
    t = _ns_time(rec)
    used = False
    if rec.get("insulin") not in (None, "", 0):
        b.bolus.append((t, _number(str(rec["insulin"]), "insulin", 0.0, _MAX_BOLUS_U), where))
        used = True
    if rec.get("carbs") not in (None, "", 0):
        b.carbs.append((t, _number(str(rec["carbs"]), "carbs", 0.0, _MAX_CARBS_G), where))
        used = True
    if kind == "Temp Basal":
        rate = rec.get("absolute", rec.get("rate"))
        if rate is None:
            raise ValueError("Temp Basal without 'absolute' or 'rate' (U/h)")
        minutes = _number(str(rec.get("duration")), "duration", 0.0, 24 * 60.0)
        temp_basals.append((t, t + timedelta(minutes=minutes), _number(str(rate), "rate", 0.0, _MAX_BASAL_U_H), where))
        used = True
    elif kind == "Combo Bolus" and rec.get("relative") and rec.get("duration"):
        minutes = _number(str(rec["duration"]), "duration", 0.0, 24 * 60.0)
        rate = _number(str(rec["relative"]), "relative", 0.0, _MAX_BASAL_U_H)
        b.bolus.extend((t + timedelta(minutes=m), rate / 60.0, where) for m in range(int(minutes)))
        used = True
    if not used:
        b.skip(where, f"eventType {kind!r} carries no insulin or carbohydrate", json.dumps(rec, default=str))


def _overlay_temp_basals(
    scheduled: list[tuple[datetime, float]], temps: list[tuple[datetime, datetime, float, str]]
) -> list[tuple[datetime, float]]:
    """The basal rate changes once temporary basals (start, end, rate) override the schedule; a later temp
    basal cancels an earlier one (as pumps do)."""
    temps = sorted(temps, key=lambda r: r[0])
    out: list[tuple[datetime, float]] = []
    sched = sorted(scheduled)

    def scheduled_at(t: datetime) -> float | None:
        rates = [v for s, v in sched if s <= t]
        return rates[-1] if rates else None

    cut = [(t, v) for t, v in sched]
    for i, (s, e, rate, _) in enumerate(temps):
        end = min(e, temps[i + 1][0]) if i + 1 < len(temps) else e
        cut = [(t, v) for t, v in cut if not s <= t < end]
        out.append((s, rate))
        back = scheduled_at(end)
        if back is not None and (i + 1 >= len(temps) or temps[i + 1][0] > end):
            out.append((end, back))
    return sorted(cut + out)
