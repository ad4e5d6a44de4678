"""The dosing panel's entered case: doses, levels, weight and creatinine typed in by a clinician or pharmacist.

An entered case is the patient's recorded course of the drug (:func:`medtwin.dosing.recorded_course`) with the
entered rows added, made a case by :func:`medtwin.dosing.case_from_records` exactly as a case from the record is, so
the MAP fit, band and regimen options are the same computation. Decisions (docs/web.md, "Dosing panel"):

* Entered values are **never written into the record** by the panel: they are not measurements the record holds,
  and storing them as if measured would let a typing error become a lab result. To record a measured level or a
  given dose, use the record's own ways in (FHIR API, HL7 feed). Each entered row is marked ``"source": "entered"``
  in the answer, recorded rows ``"source": "record"``.
* Entered doses and levels are added to the record's (``include_record``, default true; false: the entered rows
  alone). An entered weight or creatinine is used in place of the record's (it counts as the newest value).
* A proposal made from an entered case is stored (a MedicationRequest, intent ``proposal``, status ``draft``) with
  a note saying that it came from entered data and how many rows were entered; its predicted-exposure
  Observations are derived from the recorded levels only (an entered level has no record to point to).

Validation refuses the whole entry (nothing computed, nothing stored) and names every bad row: its list, index,
field, value and why (:class:`EntryError`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from medtwin.dosing import DosingReport, PatientCase, analyze_case, to_records
from medtwin.dosing.record_case import DEFAULT_MODELS, RecordedCourse, case_from_records, recorded_course
from medtwin.errors import ValidationError
from medtwin.server.web.data import report_view
from medtwin.store import Store

__all__ = ["Entry", "EntryError", "entered_proposal_records", "entered_report", "entered_view", "parse_entry"]

_MAX_ROWS = 100
_FUTURE_SLACK = timedelta(minutes=5)  # clock skew between the browser and the server
# Plausibility bounds: a value outside them is a typing or unit error, not a patient (mg, h, mg/L, kg, mg/dL).
_AMOUNT_MG = (1.0, 6000.0)
_DURATION_H = (0.0, 48.0)
_LEVEL_MG_L = (0.0, 200.0)
_WEIGHT_KG = (0.5, 400.0)
_SCR_MG_DL = (0.05, 25.0)
_ENTERED = "entered:"


class EntryError(ValidationError):
    """Entered dosing data refused; *issues* are (where, why) pairs, one per problem."""

    def __init__(self, issues: Sequence[tuple[str, str]]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(f"{where}: {why}" for where, why in self.issues))


@dataclass(frozen=True, slots=True)
class Entry:
    """Validated entered data: doses (start, mg, infusion h), levels (time, mg/L), covariates, drug."""

    drug: str
    doses: tuple[tuple[datetime, float, float], ...]
    levels: tuple[tuple[datetime, float], ...]
    weight_kg: float | None
    scr_mg_dl: float | None
    include_record: bool

    @property
    def n_rows(self) -> int:
        """How many values were entered."""
        return len(self.doses) + len(self.levels) + (self.weight_kg is not None) + (self.scr_mg_dl is not None)


def _time(value: Any, where: str, now: datetime, issues: list[tuple[str, str]]) -> datetime | None:
    if not isinstance(value, str) or not value:
        issues.append((where, "a date and time is required (ISO 8601 with a time zone, e.g. 2026-12-07T08:00Z)"))
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        issues.append((where, f"{value!r} is not an ISO 8601 date and time"))
        return None
    if t.tzinfo is None:
        issues.append((where, f"{value!r} has no time zone (add Z or an offset such as +01:00)"))
        return None
    if t > now + _FUTURE_SLACK:
        issues.append((where, f"{value} is in the future: enter given doses and drawn levels only"))
        return None
    return t.astimezone(UTC)


def _quantity(value: Any, where: str, bounds: tuple[float, float], unit: str, issues: list[tuple[str, str]],
              *, low_open: bool = False) -> float | None:  # fmt: skip
    if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
        issues.append((where, f"a number in {unit} is required"))
        return None
    try:
        x = float(value)
    except ValueError:
        issues.append((where, f"{value!r} is not a number"))
        return None
    low, high = bounds
    if not math.isfinite(x) or x > high or x < low or (low_open and x <= low):
        side = f"more than {low:g}" if low_open else f"from {low:g}"
        issues.append((where, f"{value} {unit} is outside the plausible range ({side} to {high:g} {unit})"))
        return None
    return x


def _rows(body: Mapping[str, Any], key: str, issues: list[tuple[str, str]]) -> list[Mapping[str, Any]]:
    rows = body.get(key, [])
    if not isinstance(rows, list):
        issues.append((key, "a list of rows is required"))
        return []
    if len(rows) > _MAX_ROWS:
        issues.append((key, f"{len(rows)} rows: at most {_MAX_ROWS}"))
        return []
    out: list[Mapping[str, Any]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            issues.append((f"{key}[{i}]", "each row is an object"))
        else:
            out.append(row)
    return out


def parse_entry(body: Mapping[str, Any], *, now: datetime | None = None) -> Entry:
    """Validate entered dosing data: ``{"drug", "doses": [{"time", "amount_mg", "duration_h"}], "levels": [{"time",
    "value_mg_l"}], "weight_kg", "scr_mg_dl", "include_record"}`` (times ISO 8601 with a time zone, not in the
    future). Raises :class:`EntryError` naming every problem (``doses[1].amount_mg: ...``)."""
    now = now or datetime.now(UTC)
    issues: list[tuple[str, str]] = []
    drug = body.get("drug", "vancomycin")
    if drug not in DEFAULT_MODELS:
        issues.append(("drug", f"{drug!r} has no model in the library (one of {', '.join(DEFAULT_MODELS)})"))
    doses: list[tuple[datetime, float, float]] = []
    for i, row in enumerate(_rows(body, "doses", issues)):
        where = f"doses[{i}]"
        t = _time(row.get("time"), f"{where}.time", now, issues)
        mg = _quantity(row.get("amount_mg"), f"{where}.amount_mg", _AMOUNT_MG, "mg", issues)
        dur = _quantity(row.get("duration_h", 1.0), f"{where}.duration_h", _DURATION_H, "h", issues)
        if t is not None and mg is not None and dur is not None:
            doses.append((t, mg, dur))
    levels: list[tuple[datetime, float]] = []
    for i, row in enumerate(_rows(body, "levels", issues)):
        where = f"levels[{i}]"
        t = _time(row.get("time"), f"{where}.time", now, issues)
        value = _quantity(row.get("value_mg_l"), f"{where}.value_mg_l", _LEVEL_MG_L, "mg/L", issues, low_open=True)
        if t is not None and value is not None:
            levels.append((t, value))
    weight = scr = None
    if body.get("weight_kg") not in (None, ""):
        weight = _quantity(body["weight_kg"], "weight_kg", _WEIGHT_KG, "kg", issues)
    if body.get("scr_mg_dl") not in (None, ""):
        scr = _quantity(body["scr_mg_dl"], "scr_mg_dl", _SCR_MG_DL, "mg/dL", issues)
    include = body.get("include_record", True)
    if not isinstance(include, bool):
        issues.append(("include_record", "true or false"))
    if not doses and not levels and weight is None and scr is None and not issues:
        issues.append(("entry", "nothing entered: add a dose, a level, a weight or a creatinine"))
    if issues:
        raise EntryError(issues)
    return Entry(str(drug), tuple(sorted(doses)), tuple(sorted(levels)), weight, scr, bool(include))


def _entered_note(note: str) -> str:
    for what in ("weight", "creatinine"):
        note = note.replace(f" from Observation {_ENTERED}{what}", "")
    return note.replace("from the record: ", "entered in the web app (not in the record): ")


def entered_report(store: Store, patient_id: str, entry: Entry, *, n_samples: int = 500) -> DosingReport:
    """The dosing report of the record's course of *entry*'s drug plus the entered rows (module docstring).

    Raises
    ------
    medtwin.dosing.CaseError
        No dose at all, a covariate missing from both the record and the entry, or a level before the first dose.
    """
    return analyze_case(_case(store, patient_id, entry)[0], n_samples=n_samples, seed=0)


def _case(store: Store, patient_id: str, entry: Entry) -> tuple[PatientCase, RecordedCourse]:
    now = datetime.now(UTC)
    patient = store.patient(patient_id)
    if entry.include_record:
        course = recorded_course(entry.drug, patient, store.medication_administrations(patient_id),
                                 store.observations(patient_id))  # fmt: skip
    else:
        course = recorded_course(entry.drug, patient, (), ())
    doses = (*course.doses, *((t, mg, dur, f"{_ENTERED}dose-{i}") for i, (t, mg, dur) in enumerate(entry.doses)))
    levels = (*course.levels, *((t, v, f"{_ENTERED}level-{i}") for i, (t, v) in enumerate(entry.levels)))
    weights, scr = course.weights_kg, course.creatinine_mg_dl
    if entry.weight_kg is not None:
        weights = (*weights, (now, entry.weight_kg, f"{_ENTERED}weight"))
    if entry.scr_mg_dl is not None:
        scr = (*scr, (now, entry.scr_mg_dl, f"{_ENTERED}creatinine"))
    merged = dataclasses.replace(course, doses=tuple(sorted(doses)), levels=tuple(sorted(levels)),
                                 weights_kg=tuple(sorted(weights)), creatinine_mg_dl=tuple(sorted(scr)))  # fmt: skip
    case = case_from_records(patient_id, merged)  # regimen options as the record panel and `medtwin dose`
    notes = tuple(_entered_note(n) if _ENTERED in n else n for n in case.notes)
    return dataclasses.replace(case, source=f"record and entered data of patient {patient_id}", notes=notes), merged


def entered_view(store: Store, patient_id: str, entry: Entry, *, n_samples: int = 500) -> dict[str, Any]:
    """The dosing panel's JSON (:func:`medtwin.server.web.data.report_view`) of an entered case; each dose and
    level row says its ``source`` (``record`` or ``entered``)."""
    case, merged = _case(store, patient_id, entry)
    report = analyze_case(case, n_samples=n_samples, seed=0)
    origin = case.origin or datetime.now(UTC)

    def h(t: datetime) -> float:
        return round((t - origin).total_seconds() / 3600.0, 4)

    doses = [
        {
            "time_h": h(t),
            "amount": {"value": mg, "unit": "mg"},
            "duration_h": dur,
            "source": "entered" if ref.startswith(_ENTERED) else "record",
        }
        for t, mg, dur, ref in merged.doses
    ]
    levels = [
        {"time_h": h(t), "value": v, "unit": "mg/L", "id": None if ref.startswith(_ENTERED) else ref,
         "source": "entered" if ref.startswith(_ENTERED) else "record"}
        for t, v, ref in merged.levels
    ]  # fmt: skip
    out = report_view(patient_id, report, origin, doses, levels)
    out["entered"] = {"doses": len(entry.doses), "levels": len(entry.levels), "weight_kg": entry.weight_kg,
                      "scr_mg_dl": entry.scr_mg_dl, "include_record": entry.include_record}  # fmt: skip
    return out


def entered_proposal_records(store: Store, patient_id: str, entry: Entry, *, interval_h: float | None = None,
                             authored: datetime | None = None) -> list[Any]:  # fmt: skip
    """The proposal records (as :func:`medtwin.server.web.data.dosing_proposal_records`) of an entered case, noted
    as coming from entered data; predicted exposures derive from the recorded levels only."""
    report = entered_report(store, patient_id, entry)
    if interval_h is not None:
        chosen = [p for p in report.proposals if abs(p.interval_h - interval_h) < 1e-9]
        if not chosen:
            raise ValidationError(f"no regimen option with a {interval_h:g} h interval")
        report = dataclasses.replace(report, recommended=chosen[0], loading_dose=None)
    covariates = [n for n, v in (("weight", entry.weight_kg), ("creatinine", entry.scr_mg_dl)) if v is not None]
    said = (f"from entered data: {len(entry.doses)} dose(s), {len(entry.levels)} level(s)"
            + "".join(f", {n}" for n in covariates) + " entered in the web app, not in the record"
            + ("" if entry.include_record else "; the record's doses and levels were left out"))  # fmt: skip
    out: list[Any] = []
    for r in to_records(report, authored=authored):
        if hasattr(r, "intent"):
            r = dataclasses.replace(r, note=f"{r.note}; {said}")
        else:
            r = dataclasses.replace(r, derived_from=tuple(x for x in r.derived_from if not x.startswith(_ENTERED)))
        out.append(r)
    return out
