"""Admission histories: unit stays from encounters or from an ADT CSV, and the census they imply.

An :class:`AdmissionHistory` is a table of unit stays (one row per stay of an encounter in a unit,
with the unit it went to next). It is built from :class:`medtwin.records.Encounter` objects (their
``locations``), or read from a CSV of admission/transfer/discharge events::

    encounter_id,patient_id,class_code,event,time,unit,disposition
    E1,P1,EMER,admit,2026-01-05T08:12:00+00:00,ED,
    E1,P1,EMER,transfer,2026-01-05T12:40:00+00:00,Medicine,
    E1,P1,EMER,discharge,2026-01-10T10:00:00+00:00,,home

``event`` is ``admit`` (opens the first stay, in ``unit``), ``transfer`` (closes the current stay and
opens one in ``unit``) or ``discharge`` (closes the last stay; ``disposition`` ``lwbs`` marks an
ED patient who left without being seen). Times must carry a UTC offset. An encounter without a
discharge is still open: it is part of the census.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medtwin.codes import DISCHARGE_LWBS
from medtwin.errors import ValidationError
from medtwin.hospital.config import HOURS_PER_WEEK, HospitalConfig
from medtwin.hospital.forecast import hour_of_week
from medtwin.hospital.simulation import CensusEntry, simulate
from medtwin.records import Coding, Encounter, EncounterLocation

__all__ = [
    "ADT_COLUMNS",
    "AdmissionHistory",
    "HistoryError",
    "UnitStay",
    "census_from_model",
    "encounters_from_history",
    "history_from_encounters",
    "read_adt_csv",
    "synthetic_history",
    "write_adt_csv",
]

ADT_COLUMNS = ("encounter_id", "patient_id", "class_code", "event", "time", "unit", "disposition")


class HistoryError(ValidationError):
    """An admission history that cannot be read (bad CSV row, events out of order, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitStay:
    """One stay of an encounter in a unit; *next_unit* None means the patient left the hospital."""

    encounter_id: str
    patient_id: str
    class_code: str
    unit: str
    start: datetime
    end: datetime | None
    next_unit: str | None = None
    lwbs: bool = False

    @property
    def duration_h(self) -> float | None:
        """Hours in the unit, or None while the stay is open."""
        return None if self.end is None else (self.end - self.start) / timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class AdmissionHistory:
    """Unit stays ordered by encounter and time; ``stays[i]`` of an encounter precede later ones."""

    stays: tuple[UnitStay, ...]

    def __len__(self) -> int:
        return len(self.stays)

    @property
    def window(self) -> tuple[datetime, datetime]:
        """First and last event time in the history."""
        if not self.stays:
            raise HistoryError("the admission history is empty")
        first = min(s.start for s in self.stays)
        last = max(s.end if s.end is not None else s.start for s in self.stays)
        return first, last

    def census(self, at: datetime | None = None) -> list[CensusEntry]:
        """Patients in a unit at *at* (default: the last event time): the open encounters then."""
        when = self.window[1] if at is None else at
        if when.tzinfo is None:
            raise HistoryError(f"census time {when.isoformat()} is naive; give a timezone")
        return [
            CensusEntry(unit=s.unit, elapsed_h=(when - s.start) / timedelta(hours=1))
            for s in self.stays
            if s.start <= when and (s.end is None or s.end > when)
        ]


def _is_lwbs(disposition: Coding | None) -> bool:
    """True for the medtwin ``lwbs`` discharge disposition (the FHIR code system has no LWBS code)."""
    return disposition is not None and (disposition.system, disposition.code) == (
        DISCHARGE_LWBS.system,
        DISCHARGE_LWBS.code,
    )


def history_from_encounters(encounters: Iterable[Encounter]) -> AdmissionHistory:
    """Unit stays from encounters' ``locations`` (an encounter without locations is skipped).

    An encounter whose ``disposition`` is :data:`medtwin.codes.DISCHARGE_LWBS` marks its last stay ``lwbs``
    (left without being seen), as ``disposition=lwbs`` does in the ADT CSV.
    """
    stays: list[UnitStay] = []
    for enc in encounters:
        lwbs = _is_lwbs(enc.disposition)
        locs = sorted(enc.locations, key=lambda loc: loc.start)
        for k, loc in enumerate(locs):
            nxt = locs[k + 1].unit if k + 1 < len(locs) else None
            end = loc.end
            if end is None and nxt is not None:
                end = locs[k + 1].start
            if end is None and nxt is None and enc.end is not None:
                end = enc.end
            stays.append(
                UnitStay(
                    encounter_id=enc.encounter_id,
                    patient_id=enc.patient_id,
                    class_code=enc.class_code,
                    unit=loc.unit,
                    start=loc.start,
                    end=end,
                    next_unit=nxt,
                    lwbs=lwbs and nxt is None,
                )
            )
    return AdmissionHistory(tuple(stays))


def encounters_from_history(history: AdmissionHistory) -> list[Encounter]:
    """Encounters (with locations) from a history: the inverse of :func:`history_from_encounters`."""
    grouped: dict[str, list[UnitStay]] = {}
    for s in history.stays:
        grouped.setdefault(s.encounter_id, []).append(s)
    out = []
    for enc_id, stays in grouped.items():
        last = stays[-1]
        out.append(
            Encounter(
                encounter_id=enc_id,
                patient_id=stays[0].patient_id,
                status="finished" if last.end is not None else "in-progress",
                class_code=stays[0].class_code,
                start=stays[0].start,
                end=last.end,
                locations=tuple(EncounterLocation(unit=s.unit, start=s.start, end=s.end) for s in stays),
                disposition=DISCHARGE_LWBS if last.lwbs else None,
            )
        )
    return out


def _parse_time(text: str, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise HistoryError(f"{where}: time {text!r} is not ISO 8601") from exc
    if t.tzinfo is None:
        raise HistoryError(f"{where}: time {text!r} has no UTC offset")
    return t.astimezone(UTC)


def read_adt_csv(path: str | Path) -> AdmissionHistory:
    """Read an ADT event CSV (see the module docstring) into unit stays."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise HistoryError(f"{path}: cannot open ADT CSV: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = sorted(set(ADT_COLUMNS[:6]) - set(reader.fieldnames or ()))
        if missing:
            raise HistoryError(f"{path}: ADT CSV lacks column(s) {missing}; header {reader.fieldnames}")
        open_stay: dict[str, UnitStay] = {}
        closed: dict[str, list[UnitStay]] = {}
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            enc = (row["encounter_id"] or "").strip()
            event = (row["event"] or "").strip().lower()
            unit = (row["unit"] or "").strip()
            if not enc:
                raise HistoryError(f"{where}: empty encounter_id")
            t = _parse_time((row["time"] or "").strip(), where)
            current = open_stay.get(enc)
            if current is not None and t < current.start:
                raise HistoryError(
                    f"{where}: encounter {enc} event at {t.isoformat()} precedes its current stay "
                    f"(from {current.start.isoformat()}); rows must be in time order per encounter"
                )
            if event == "admit":
                if current is not None or enc in closed:
                    raise HistoryError(f"{where}: encounter {enc} admitted twice")
                if not unit:
                    raise HistoryError(f"{where}: admit of {enc} has no unit")
                open_stay[enc] = UnitStay(
                    encounter_id=enc,
                    patient_id=(row["patient_id"] or "").strip() or enc,
                    class_code=(row["class_code"] or "").strip() or "IMP",
                    unit=unit,
                    start=t,
                    end=None,
                )
            elif event in ("transfer", "discharge"):
                if current is None:
                    raise HistoryError(f"{where}: {event} of encounter {enc} that is not open")
                if event == "transfer" and not unit:
                    raise HistoryError(f"{where}: transfer of {enc} has no target unit")
                lwbs = (row.get("disposition") or "").strip().lower() == "lwbs"
                done = UnitStay(
                    encounter_id=enc,
                    patient_id=current.patient_id,
                    class_code=current.class_code,
                    unit=current.unit,
                    start=current.start,
                    end=t,
                    next_unit=unit if event == "transfer" else None,
                    lwbs=lwbs,
                )
                closed.setdefault(enc, []).append(done)
                del open_stay[enc]
                if event == "transfer":
                    open_stay[enc] = UnitStay(
                        encounter_id=enc,
                        patient_id=current.patient_id,
                        class_code=current.class_code,
                        unit=unit,
                        start=t,
                        end=None,
                    )
            else:
                raise HistoryError(f"{where}: event {event!r} unknown; expected admit, transfer or discharge")
    stays: list[UnitStay] = []
    for enc in dict.fromkeys([*closed, *open_stay]):
        stays.extend(closed.get(enc, []))
        if enc in open_stay:
            stays.append(open_stay[enc])
    return AdmissionHistory(tuple(stays))


def write_adt_csv(history: AdmissionHistory, path: str | Path) -> None:
    """Write *history* as an ADT event CSV that :func:`read_adt_csv` reads back."""
    rows: list[tuple[datetime, int, list[str]]] = []
    order = 0
    grouped: dict[str, list[UnitStay]] = {}
    for s in history.stays:
        grouped.setdefault(s.encounter_id, []).append(s)
    for enc, stays in grouped.items():
        head = stays[0]
        base = [enc, head.patient_id, head.class_code]
        rows.append((head.start, order, [*base, "admit", head.start.isoformat(), head.unit, ""]))
        order += 1
        for s in stays:
            if s.end is None:
                continue
            if s.next_unit is not None:
                rows.append((s.end, order, [*base, "transfer", s.end.isoformat(), s.next_unit, ""]))
            else:
                disp = "lwbs" if s.lwbs else "home"
                rows.append((s.end, order, [*base, "discharge", s.end.isoformat(), "", disp]))
            order += 1
    rows.sort(key=lambda r: (r[0], r[1]))
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ADT_COLUMNS)
        writer.writerows(r[2] for r in rows)


def synthetic_history(
    config: HospitalConfig,
    *,
    start: datetime,
    weeks: float,
    seed: int,
    warmup_weeks: float = 4.0,
) -> AdmissionHistory:
    """A synthetic admission history of *weeks* weeks from *start*, generated by the model itself.

    The model runs from an empty hospital *warmup_weeks* before *start*; encounters that began
    before *start* are dropped, and those still in hospital at the end stay open (the census).
    """
    if start.tzinfo is None:
        raise HistoryError(f"start {start.isoformat()} is naive; give a timezone")
    if not weeks > 0:
        raise HistoryError(f"weeks must be > 0, got {weeks}")
    warmup_h = warmup_weeks * HOURS_PER_WEEK
    t0 = start.astimezone(UTC) - timedelta(hours=warmup_h)
    result = simulate(
        config,
        seed=seed,
        horizon_h=weeks * HOURS_PER_WEEK,
        warmup_h=warmup_h,
        start_how_h=hour_of_week(t0),
        record_stays=True,
    )
    assert result.stays is not None
    names = config.unit_names
    first_start: dict[int, float] = {}
    rows = sorted(result.stays.tolist(), key=lambda r: (r[0], r[3]))
    for pid, _route, _unit, s_h, _e_h, _nxt in rows:
        first_start.setdefault(int(pid), s_h)
    stays: list[UnitStay] = []
    for pid_f, route, unit, s_h, e_h, nxt in rows:
        pid = int(pid_f)
        if first_start[pid] < warmup_h:
            continue
        enc = f"S{seed}-{pid}"
        stays.append(
            UnitStay(
                encounter_id=enc,
                patient_id=f"P{seed}-{pid}",
                class_code="EMER" if route == 0 else "IMP",
                unit=names[int(unit)],
                start=t0 + timedelta(hours=s_h),
                end=None if math.isnan(e_h) else t0 + timedelta(hours=e_h),
                next_unit=names[int(nxt)] if nxt >= 0 else None,
                lwbs=nxt == -2,
            )
        )
    return AdmissionHistory(tuple(stays))


def census_from_model(
    config: HospitalConfig, *, at: datetime, seed: int, warmup_weeks: float = 4.0
) -> list[CensusEntry]:
    """A plausible census at *at*: the patients present after running *config* from empty.

    Used when no real census is available, so that a forecast starts from a loaded hospital
    rather than an empty one.
    """
    if at.tzinfo is None:
        raise HistoryError(f"census time {at.isoformat()} is naive; give a timezone")
    warmup_h = warmup_weeks * HOURS_PER_WEEK
    result = simulate(
        config,
        seed=seed,
        horizon_h=1.0,
        warmup_h=warmup_h - 1.0,
        start_how_h=hour_of_week(at) - warmup_h,
        record_stays=True,
    )
    assert result.stays is not None
    names = config.unit_names
    return [
        CensusEntry(unit=names[int(row[2])], elapsed_h=warmup_h - row[3])
        for row in result.stays.tolist()
        if math.isnan(row[4])
    ]
