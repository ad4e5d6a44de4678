"""What the web app's screens show, read from the store and computed by the domain packages (no HTTP here).

Every function takes an open :class:`~medtwin.store.Store` (and plain arguments) and returns JSON-ready
dictionaries; access control, audit and HTTP live in :mod:`medtwin.server.web.api`.

* Ward board rows: latest vitals of each patient with an open encounter on a ward, NEWS2 (RCP 2017) scored from
  the values fresh at the patient's newest reading (a vital older than the freshness window is shown stale and left
  out of the score, as the twin runtime does), active alerts, and the NEWS2 trend (the twin's stored NEWS2
  observations) for a sparkline.
* Patient page: vital-sign series, NEWS2 line, alerts, and the record summary (conditions, medications,
  encounters).
* Glucose panel: CGM trace, AGP percentile bands (5/25/50/75/95 % by time of day, Battelino et al., Diabetes Care
  2019, doi:10.2337/dci19-0028), the consensus metrics (:func:`medtwin.glucose.cgm_metrics`) and the twin's
  what-if replay (:meth:`medtwin.glucose.PersonalGlucoseTwin.replay`).
* Dosing panel: the vancomycin doses and levels of the record turned into a dosing case by
  :func:`medtwin.dosing.record_case.case_from_patient_records` (the same case as ``medtwin dose --patient``) and
  analysed by :func:`medtwin.dosing.analyze_case` (MAP fit, prediction band, regimen options with AUC24, trough
  and probability of target attainment).
* Hospital page: the example hospital's census, occupancy forecast fan charts (P10/P50/P90, P(unit full)) and
  scenario comparisons (:mod:`medtwin.hospital`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.monitoring.vitals import LatestVitals
from medtwin.records import Coding, Encounter, Event, Observation, Patient, Quantity
from medtwin.store import Store

if TYPE_CHECKING:
    from medtwin.dosing import PatientCase

__all__ = [
    "GLUCOSE_TWIN_PREFIX",
    "VITALS",
    "board_row",
    "dosing_view",
    "glucose_view",
    "glucose_whatif",
    "hospital_view",
    "hospital_whatif",
    "patient_view",
    "record_dosing_case",
    "report_view",
    "ward_of",
    "ward_patients",
]

#: The vital signs the board and the patient page show: key -> (coding, label, unit).
VITALS: dict[str, tuple[Coding, str, str]] = {
    "rr": (codes.RESPIRATORY_RATE, "Resp. rate", "/min"),
    "spo2": (codes.OXYGEN_SATURATION_PULSE_OX, "SpO2", "%"),
    "o2": (codes.INHALED_OXYGEN_FLOW, "O2 flow", "L/min"),
    "sbp": (codes.SYSTOLIC_BP, "Systolic BP", "mmHg"),
    "hr": (codes.HEART_RATE, "Heart rate", "/min"),
    "temp": (codes.BODY_TEMPERATURE, "Temperature", "degC"),
    "acvpu": (codes.LEVEL_OF_CONSCIOUSNESS, "ACVPU", ""),
}
#: Snapshot id prefix of a patient's personal glucose twin (``glucose:<patient id>``).
GLUCOSE_TWIN_PREFIX = "glucose:"
_FRESHNESS = timedelta(minutes=60)  # the twin runtime's default freshness window (medtwin listen)
_CGM_CODES = (codes.GLUCOSE_INTERSTITIAL,)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


def _value(obs: Observation) -> float | str | None:
    v = obs.value
    if isinstance(v, Quantity):
        return v.value
    if isinstance(v, Coding):
        return v.display or v.code
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | float):
        return float(v)
    return None if v is None else str(v)


def _name(p: Patient) -> str | None:
    ident = p.identity
    return None if ident is None else ident.display_name


def _mrn(p: Patient) -> str | None:
    ident = p.identity
    if ident is None or not ident.identifiers:
        return None
    return next((i.value for i in ident.identifiers if i.type_code == "MR"), ident.identifiers[0].value)


def ward_of(encounters: Sequence[Encounter]) -> tuple[str, str | None] | None:
    """(unit, bed) of the last location of the newest open encounter, or None."""
    for e in sorted(encounters, key=lambda e: e.start, reverse=True):
        if e.end is None and e.locations:
            loc = e.locations[-1]
            return loc.unit, loc.bed
    return None


def ward_patients(store: Store, wards: Sequence[str] | None) -> list[tuple[str, str, str | None]]:
    """(patient id, unit, bed) of every patient with an open encounter on one of *wards* (every ward when None)."""
    found: dict[str, tuple[str, str | None]] = {}
    for e in store.encounters():
        if e.end is not None or not e.locations:
            continue
        loc = e.locations[-1]
        if loc.end is not None:
            continue
        if wards is not None and loc.unit not in wards:
            continue
        found[e.patient_id] = (loc.unit, loc.bed)
    return sorted(((pid, unit, bed) for pid, (unit, bed) in found.items()), key=lambda r: (r[1], r[2] or "", r[0]))


def _alert_json(e: Event) -> dict[str, Any]:
    return {
        "id": e.event_id,
        "code": e.code,
        "severity": e.severity,
        "status": e.status,
        "time": _iso(e.time),
        "message": e.message,
        "acknowledged_by": e.data.get("acknowledged_by") if e.data else None,
    }


def _recent(store: Store, patient_id: str, coding: Coding, since: datetime, n: int) -> list[Observation]:
    """The newest *n* observations of *coding* (LOINC, primary code) since *since*, oldest first: read with a
    limit, not decoded whole (a twin writes a NEWS2 observation at every change of the score)."""
    from sqlalchemy import select

    from medtwin.store import codec, schema

    t = schema.observations
    stmt = (
        select(t.c.body)
        .where(t.c.patient_id == patient_id, t.c.loinc_code == coding.code, t.c.effective >= since)
        .order_by(t.c.effective.desc())
        .limit(n)
    )
    with store.engine.connect() as conn:
        bodies = [r[0] for r in conn.execute(stmt)]
    return [codec.decode(Observation, b) for b in reversed(bodies)]


def board_row(store: Store, patient_id: str, *, unit: str | None = None, bed: str | None = None,
              now: datetime | None = None, identified: bool = True, trend: bool = True) -> dict[str, Any]:  # fmt: skip
    """One row of the ward board: vitals (with their time and staleness), NEWS2, active alerts, NEWS2 trend."""
    now = now or datetime.now(UTC)
    latest = store.latest_observations(patient_id, [c for c, _, _ in VITALS.values()])
    obs_by_key = {k: latest.get(c.code) for k, (c, _, _) in VITALS.items()}
    newest = max((o.effective for o in obs_by_key.values() if o is not None), default=None)
    # "now" for freshness: the wall clock, or the patient's newest reading when the monitor's clock runs ahead
    at = max(now, newest) if newest is not None else now
    vitals_state = LatestVitals.from_observations(o for o in obs_by_key.values() if o is not None)
    snap = vitals_state.snapshot(at, freshness=_FRESHNESS)
    news2 = snap.news2()
    vitals: dict[str, Any] = {}
    for key, (_coding, label, unit_text) in VITALS.items():
        o = obs_by_key[key]
        value = None if o is None else _value(o)
        if key == "acvpu" and o is not None:  # the ACVPU letter, not the code's display text
            letter = vitals_state.latest("consciousness")
            value = None if letter is None else str(letter[1])
        vitals[key] = {
            "label": label,
            "unit": unit_text,
            "value": value,
            "time": None if o is None else _iso(o.effective),
            "stale": o is not None and (at - o.effective) > _FRESHNESS,
        }
    alerts = [_alert_json(e) for e in store.events(patient_id, kind="alert", status="active")]
    since = (newest or now) - timedelta(hours=6)
    points = _recent(store, patient_id, codes.NEWS2_TOTAL, since, 40) if trend else []
    trend_points = [[_iso(o.effective), _value(o)] for o in points]
    row: dict[str, Any] = {
        "patient_id": patient_id,
        "unit": unit,
        "bed": bed,
        "last_reading": _iso(newest),
        "no_data": newest is None,
        "vitals": vitals,
        "news2": {
            "total": news2.total if len(news2.missing) < len(news2.scores) else None,
            "level": news2.level,
            "missing": list(news2.missing),
            "stale": list(snap.stale),
            "scores": dict(news2.scores),
        },
        "alerts": alerts,
        "trend": trend_points if trend else None,
    }
    if identified:
        p = store.patient(patient_id)
        row["name"] = None if p is None else _name(p)
        row["mrn"] = None if p is None else _mrn(p)
    return row


# -- patient page ------------------------------------------------------------------------------------------------
def _series(store: Store, patient_id: str, coding: Coding, since: datetime | None) -> dict[str, list[Any]]:
    obs = store.observations(patient_id, coding, since=since)
    t, v = [], []
    for o in obs:
        value = _value(o)
        if isinstance(value, float):
            t.append(_iso(o.effective))
            v.append(value)
    return {"t": t, "v": v}


def patient_view(
    store: Store, patient_id: str, *, hours: float | None = 24.0, identified: bool = True
) -> dict[str, Any]:
    """The patient page's data: summary, vitals and NEWS2 series over the last *hours* of data, alerts, record.

    Raises
    ------
    KeyError
        No such patient.
    """
    p = store.patient(patient_id)
    if p is None:
        raise KeyError(patient_id)
    newest_obs = store.latest_observations(patient_id, [c for c, _, _ in VITALS.values()])
    newest = max((o.effective for o in newest_obs.values()), default=None)
    since = None if hours is None or newest is None else newest - timedelta(hours=hours)
    series = {k: {"label": label, "unit": unit, **_series(store, patient_id, c, since)}
              for k, (c, label, unit) in VITALS.items() if k != "acvpu"}  # fmt: skip
    series["news2"] = {"label": "NEWS2", "unit": "points", **_series(store, patient_id, codes.NEWS2_TOTAL, since)}
    alerts = [_alert_json(e) for e in store.events(patient_id, kind="alert")]
    encounters = store.encounters(patient_id)
    where = ward_of(encounters)
    view: dict[str, Any] = {
        "patient_id": patient_id,
        "gender": p.gender,
        "birth_year": p.birth_date.year if p.birth_date else None,
        "unit": where[0] if where else None,
        "bed": where[1] if where else None,
        "series": series,
        "alerts": alerts,
        "conditions": [
            {"code": c.code.code, "display": c.code.display or c.code.code, "status": c.clinical_status,
             "onset": _iso(c.onset)} for c in store.conditions(patient_id)
        ][-30:],
        "medications": [
            {"display": m.medication.display or m.medication.code, "intent": m.intent, "status": m.status,
             "authored": _iso(m.authored),
             "dose": None if m.dose is None else f"{m.dose.value:g} {m.dose.unit}",
             "interval_h": m.interval_h, "note": m.note} for m in store.medication_requests(patient_id)
        ][-30:],
        "encounters": [
            {"class": e.class_code, "status": e.status, "start": _iso(e.start), "end": _iso(e.end),
             "type": None if e.type is None else (e.type.display or e.type.code),
             "unit": e.locations[-1].unit if e.locations else None} for e in encounters
        ][-15:],
        "has_glucose": _has_cgm(store, patient_id)
        or store.latest_snapshot(GLUCOSE_TWIN_PREFIX + patient_id) is not None,
        "has_dosing": _has_vancomycin(store, patient_id),
    }  # fmt: skip
    if identified:
        view["name"] = _name(p)
        view["mrn"] = _mrn(p)
        view["birth_date"] = p.birth_date.isoformat() if p.birth_date else None
    return view


# -- glucose panel -----------------------------------------------------------------------------------------------
def _has_cgm(store: Store, patient_id: str) -> bool:
    return bool(store.latest_observations(patient_id, list(_CGM_CODES)))


def _cgm(store: Store, patient_id: str) -> tuple[list[datetime], np.ndarray]:
    times: list[datetime] = []
    values: list[float] = []
    for coding in _CGM_CODES:
        for o in store.observations(patient_id, coding):
            v = o.value
            if isinstance(v, Quantity):
                mg = v.value if v.unit == "mg/dL" else codes.convert(v.value, v.unit, "mg/dL")
                times.append(o.effective)
                values.append(float(mg))
    order = np.argsort(np.array([t.timestamp() for t in times])) if times else np.array([], dtype=int)
    return [times[i] for i in order], np.asarray(values, dtype=np.float64)[order]


def _agp(times: Sequence[datetime], values: np.ndarray, bin_min: int = 30) -> dict[str, list[float]]:
    """AGP percentiles (5, 25, 50, 75, 95) of the readings by time of day (UTC), in *bin_min* bins."""
    minute = np.array([t.hour * 60 + t.minute for t in times])
    centres: list[float] = []
    rows: list[np.ndarray] = []
    for start in range(0, 1440, bin_min):
        sel = values[(minute >= start) & (minute < start + bin_min)]
        if sel.size == 0:
            continue
        centres.append((start + bin_min / 2) / 60.0)
        rows.append(np.percentile(sel, [5, 25, 50, 75, 95]))
    pct = np.array(rows) if rows else np.zeros((0, 5))
    return {"hour": centres, **{f"p{q}": pct[:, i].round(1).tolist() for i, q in enumerate((5, 25, 50, 75, 95))}}


def glucose_view(store: Store, patient_id: str) -> dict[str, Any]:
    """CGM trace, AGP bands and consensus metrics of *patient_id*; whether a personal twin exists."""
    from medtwin.glucose import cgm_metrics

    times, values = _cgm(store, patient_id)
    twin = store.latest_snapshot(GLUCOSE_TWIN_PREFIX + patient_id)
    out: dict[str, Any] = {"patient_id": patient_id, "has_twin": twin is not None, "units": "mg/dL"}
    if not times:
        out.update(trace=None, agp=None, metrics=None)
        return out
    t0 = times[0]
    minutes = np.array([(t - t0).total_seconds() / 60.0 for t in times])
    metrics = cgm_metrics(minutes, values).to_dict()
    out["trace"] = {"t": [_iso(t) for t in times], "v": values.round(1).tolist()}
    out["agp"] = _agp(times, values)
    out["metrics"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()}
    out["days"] = round(float(minutes[-1] - minutes[0]) / 1440.0, 2)
    return out


def glucose_whatif(store: Store, patient_id: str, *, bolus_scale: float = 1.0, basal_scale: float = 1.0,
                   bolus_shift_min: float = 0.0, meal_scale: float = 1.0,
                   draws: int = 60) -> dict[str, Any]:  # fmt: skip
    """Replay the twin's recorded days under the recorded therapy and under the changed one (insulin, and the size of
    every meal): two curves with their 95 % bands and metrics. Raises KeyError when the patient has no glucose
    twin."""
    from medtwin.glucose import PersonalGlucoseTwin, Therapy

    snap = store.latest_snapshot(GLUCOSE_TWIN_PREFIX + patient_id)
    if snap is None:
        raise KeyError(patient_id)
    for name, value, lo, hi in (("bolus_scale", bolus_scale, 0.0, 3.0), ("basal_scale", basal_scale, 0.0, 3.0),
                                ("bolus_shift_min", bolus_shift_min, -120.0, 120.0),
                                ("meal_scale", meal_scale, 0.0, 3.0)):  # fmt: skip
        if not (lo <= value <= hi) or math.isnan(value):
            raise ValidationError(f"{name}: {value:g} is outside {lo:g}..{hi:g}")
    twin = PersonalGlucoseTwin.restore(snap[1])
    changed = Therapy(
        name="what-if",
        bolus_scale=bolus_scale,
        basal_scale=basal_scale,
        bolus_shift_min=bolus_shift_min,
        meal_scale=meal_scale,
    )
    recorded, whatif = twin.replay([Therapy(), changed], draws=draws, seed=1)
    start = twin.data.start
    out: dict[str, Any] = {"patient_id": patient_id, "start": _iso(start), "curves": []}
    for label, r in (("recorded therapy", recorded), ("what-if", whatif)):
        d = r.to_dict(every_min=10)
        out["curves"].append({
            "label": label, "therapy": d["therapy"],
            "t": [_iso(start + timedelta(minutes=float(m))) for m in d["t_min"]],
            "median": d["median_mg_dl"], "lo95": d["lo95_mg_dl"], "hi95": d["hi95_mg_dl"],
            "metrics": {k: round(v["median"], 1) for k, v in d["metrics"].items()},
        })  # fmt: skip
    return out


# -- dosing panel ------------------------------------------------------------------------------------------------
def _has_vancomycin(store: Store, patient_id: str) -> bool:
    from medtwin.dosing.record_case import RETRACTED_STATUSES, drug_of

    return any(a.status not in RETRACTED_STATUSES and drug_of(a.medication) == "vancomycin"
               for a in store.medication_administrations(patient_id))  # fmt: skip


def record_dosing_case(store: Store, patient_id: str) -> PatientCase:
    """The dosing case of the patient's vancomycin course, built from the record by
    :func:`medtwin.dosing.record_case.case_from_patient_records`: the same case as ``medtwin dose --patient ID
    --drug vancomycin`` (covariates, infusion durations, the next-dose time of the regimen options).

    Raises
    ------
    KeyError
        The patient has no vancomycin administration.
    medtwin.dosing.CaseError
        A covariate the model needs is not in the record (named), or a dose or level the model cannot use.
    """
    from medtwin.dosing.record_case import case_from_patient_records

    if not _has_vancomycin(store, patient_id):
        raise KeyError(patient_id)
    return case_from_patient_records(patient_id, store.patient(patient_id), store.medication_administrations(
        patient_id), store.observations(patient_id), drug="vancomycin")  # fmt: skip


def dosing_view(store: Store, patient_id: str, *, n_samples: int = 500) -> dict[str, Any]:
    """MAP fit, prediction band and regimen options of the patient's vancomycin course (:func:`record_dosing_case`,
    analysed by :func:`medtwin.dosing.analyze_case` with seed 0)."""
    from medtwin.dosing import analyze_case

    case = record_dosing_case(store, patient_id)
    report = analyze_case(case, n_samples=n_samples, seed=0)
    if case.origin is None:  # pragma: no cover - a case from the record always has its first dose as origin
        raise ValidationError(f"patient {patient_id}: the dosing case has no origin")
    doses = [{"time_h": round(d.time_h, 4), "amount": {"value": d.amount_mg, "unit": "mg"},
              "duration_h": round(d.infusion_duration_h, 4), "source": "record"} for d in case.doses]  # fmt: skip
    levels = [{"time_h": round(lv.time_h, 4), "value": lv.value_mg_l, "unit": "mg/L", "id": lv.observation_id,
               "source": "record"} for lv in case.levels]  # fmt: skip
    return report_view(patient_id, report, case.origin, doses, levels)


def report_view(patient_id: str, report: Any, origin: datetime, doses: Sequence[Mapping[str, Any]],
                levels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The dosing panel's JSON of a :class:`medtwin.dosing.DosingReport` whose times count from *origin*; *doses*
    and *levels* are the rows shown (``time_h``, and ``source``: ``record`` or ``entered``)."""
    d = report.to_dict()

    def at(hours: float) -> str | None:
        return _iso(origin + timedelta(hours=float(hours)))

    band = report.band
    return {
        "patient_id": patient_id,
        "drug": report.case.model.drug,
        "model": d["model"],
        "origin": _iso(origin),
        "covariates": d["covariates"],
        "target": d["target"],
        "doses": [{**r, "time": at(r["time_h"])} for r in doses],
        "levels": [{**lv, "time": at(lv["time_h"])} for lv in levels],
        "level_fit": d["levels"],
        "parameters": d["parameters"],
        "estimation": d["estimation"],
        "band": {
            "t": [at(x) for x in band["time_h"]],
            "p05": list(band["p05"]),
            "median": list(band["median"]),
            "p95": list(band["p95"]),
            "map": list(band["map"]),
        },
        "proposals": d["proposals"],
        "recommended": d["recommended"],
        "loading_dose": d["loading_dose"],
        "warnings": d["warnings"],
        "notes": d["notes"],
    }


def dosing_proposal_records(store: Store, patient_id: str, *, interval_h: float | None = None,
                            authored: datetime | None = None) -> list[Any]:  # fmt: skip
    """The records of a proposal (a MedicationRequest with intent ``proposal`` plus predicted-exposure
    Observations) for the recommended regimen, or for the option with dosing interval *interval_h*."""
    from dataclasses import replace

    from medtwin.dosing import analyze_case, to_records

    report = analyze_case(record_dosing_case(store, patient_id), n_samples=500, seed=0)
    if interval_h is not None:
        chosen = [p for p in report.proposals if abs(p.interval_h - interval_h) < 1e-9]
        if not chosen:
            raise ValidationError(f"no regimen option with a {interval_h:g} h interval")
        report = replace(report, recommended=chosen[0], loading_dose=None)
    return to_records(report, authored=authored)


# -- hospital page -----------------------------------------------------------------------------------------------
_HOSPITAL_LOCK = threading.Lock()
_HOSPITAL_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def hospital_view(
    *, start: datetime | None = None, horizon_h: int = 72, n_reps: int = 40, seed: int = 0
) -> dict[str, Any]:
    """The example hospital: census by unit now and the occupancy forecast (fan chart bands, P(unit full)).

    Cached per (hour, horizon, replications, seed): the command centre refreshes hourly.
    """
    from medtwin.hospital import census_from_model, example_hospital, forecast_occupancy

    start = (start or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    key = (start, horizon_h, n_reps, seed)
    with _HOSPITAL_LOCK:
        hit = _HOSPITAL_CACHE.get(key)
        if hit is not None:
            return hit
        config = example_hospital()
        census = census_from_model(config, at=start, seed=seed)
        fc = forecast_occupancy(config, start=start, horizon_h=horizon_h, census=census, n_reps=n_reps, seed=seed)
        counts: dict[str, int] = {}
        for entry in census:
            counts[entry.unit] = counts.get(entry.unit, 0) + 1
        d = fc.to_dict()
        units = []
        for i, name in enumerate(fc.unit_names):
            u: dict[str, Any] = d["units"][name]  # type: ignore[index]
            p_full: list[float] = list(u["p_full"])
            units.append({
                "name": name, "beds": fc.beds[i], "census": counts.get(name, 0),
                "p10": u["p10"], "p50": u["p50"], "p90": u["p90"], "p_full": p_full,
                "p_full_24h": max(p_full[:24]) if p_full else 0.0,
                "p_full_max": max(p_full) if p_full else 0.0,
            })  # fmt: skip
        out = {"start": _iso(start), "horizon_h": horizon_h, "n_reps": n_reps, "seed": seed, "times": d["times"],
               "units": units, "hospital": "example hospital (medtwin.hospital.example)"}  # fmt: skip
        _HOSPITAL_CACHE.clear()
        _HOSPITAL_CACHE[key] = out
        return out


def hospital_whatif(scenario: Mapping[str, Any], *, n_reps: int = 8, seed: int = 0) -> dict[str, Any]:
    """Baseline and one scenario (beds added per unit, nurse staffing scale, ED arrival surge) side by side."""
    from medtwin.hospital import example_hospital
    from medtwin.hospital.whatif import Scenario, compare_scenarios, kpi_label

    config = example_hospital()
    beds_raw = scenario.get("beds") or {}
    if not isinstance(beds_raw, Mapping):
        raise ValidationError("beds: an object of unit -> beds added")
    beds = {str(k): int(v) for k, v in beds_raw.items() if int(v) != 0}
    nurse_scale = float(scenario.get("nurse_scale", 1.0))
    arrival_scale = float(scenario.get("arrival_scale", 1.0))
    if not (0.1 <= nurse_scale <= 3.0) or not (0.1 <= arrival_scale <= 3.0):
        raise ValidationError("nurse_scale and arrival_scale must be within 0.1..3")
    s = Scenario(name="what-if", beds=beds, nurse_scale=nurse_scale, arrival_scale=arrival_scale)
    comparison = compare_scenarios(config, [s], n_reps=n_reps, seed=seed, horizon_h=24 * 7 * 2, warmup_h=24 * 7)
    d = comparison.to_dict()
    rows = []
    for kpi in comparison.kpi_names:
        base = d["scenarios"]["baseline"][kpi]  # type: ignore[index]
        alt = d["scenarios"]["what-if"][kpi]  # type: ignore[index]
        rows.append({"kpi": kpi, "label": kpi_label(kpi, comparison.currency),
                     "baseline": base["mean"], "baseline_hw": base["ci95_half_width"],
                     "whatif": alt["mean"], "whatif_hw": alt["ci95_half_width"],
                     "diff": alt["diff_vs_baseline"], "diff_hw": alt["diff_ci95_half_width"]})  # fmt: skip
    return {"scenario": {"beds": beds, "nurse_scale": nurse_scale, "arrival_scale": arrival_scale},
            "replications": n_reps, "horizon_h": d["horizon_h"], "warmup_h": d["warmup_h"], "kpis": rows,
            "units": list(config.unit_names[1:])}  # fmt: skip
