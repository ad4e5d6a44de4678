"""The glucose component's predicted-low alerts scored against simulated hypoglycaemia on the virtual patients.

Each virtual patient (UVA/Padova, :func:`medtwin.glucose.patients.all_patient_names`: 10 adults, 10 adolescents,
10 children) runs in closed loop with the basal-bolus controller and randomized meals
(:func:`medtwin.glucose.scenarios.run_scenario`); their 5-minute CGM readings, announced carbohydrate, insulin (the
basal rate and each bolus above it) and body weight go as records into a :class:`~medtwin.twin.PatientTwin` with the
glucose component (from the population prior: the twin has not identified the person), deferred and flushed for
all patients at each 5-minute reading, as the twin runtime does.

Episode: the simulated blood glucose (not the sensor) below 70 mg/dL; it starts when it falls below and ends when it
has been back at or above 70 for 30 minutes. An episode is detected when an alert was raised in the 60 minutes
before its start (lead time = start - the earliest such alert, minutes) or during it (lead time 0 or negative:
late). An alert is false when no episode starts within the 60 minutes after it and none is in progress. These
definitions are medtwin's (the 60-minute window is twice the alert horizon).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from medtwin import codes
from medtwin.glucose.patients import all_patient_names, load_cohort
from medtwin.glucose.scenarios import run_scenario
from medtwin.interop.glucose_records import CARBOHYDRATE_INTAKE
from medtwin.records import Coding, Event, MedicationAdministration, Observation, Quantity, Record
from medtwin.sim.model import FloatArray
from medtwin.twin.component import ComponentRegistry
from medtwin.twin.glucose_component import GlucoseComponent, flush_glucose
from medtwin.twin.patient import PatientTwin

__all__ = ["AlertScore", "Episode", "VirtualReplay", "hypo_episodes", "replay_virtual_patients", "score_alerts"]

START = datetime(2026, 1, 1, tzinfo=UTC)
HYPO_MG_DL = 70.0
RECOVERED_MIN = 30
WINDOW_MIN = 60
_INSULIN = Coding(system="http://www.whocc.no/atc", code="A10AB", display="insulin (rapid-acting)")


@dataclass(frozen=True, slots=True)
class Episode:
    """A hypoglycaemia episode of virtual patient *patient*: minutes *start_min* (first below 70) to *end_min*."""

    patient: int
    start_min: int
    end_min: int


@dataclass(frozen=True, slots=True)
class AlertScore:
    """Episodes detected and alerts raised (module docstring): lead times of the detected episodes (minutes)."""

    patients: int
    days: float
    episodes: int
    lead_times_min: tuple[float, ...]
    alerts: int
    false_alerts: int

    @property
    def detected(self) -> int:
        """Episodes with an alert in the hour before or during them."""
        return len(self.lead_times_min)

    @property
    def detected_before_onset(self) -> int:
        """Episodes alerted before their start."""
        return sum(1 for t in self.lead_times_min if t > 0)

    @property
    def false_alerts_per_patient_day(self) -> float:
        """False alerts per patient and day."""
        return self.false_alerts / (self.patients * self.days)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        leads = np.asarray(self.lead_times_min)
        return {
            "patients": self.patients, "days": self.days, "episodes": self.episodes, "detected": self.detected,
            "detected_before_onset": self.detected_before_onset, "missed": self.episodes - self.detected,
            "lead_time_min_median": float(np.median(leads)) if leads.size else None,
            "lead_time_min_p25_p75": [float(np.percentile(leads, 25)), float(np.percentile(leads, 75))]
            if leads.size else None,
            "alerts": self.alerts, "false_alerts": self.false_alerts,
            "false_alerts_per_patient_day": round(self.false_alerts_per_patient_day, 3),
        }  # fmt: skip


def hypo_episodes(bg_mg_dl: FloatArray) -> list[Episode]:
    """The episodes in simulated blood glucose *bg_mg_dl* ``(minutes, patients)`` (module docstring)."""
    out = []
    minutes = bg_mg_dl.shape[0]
    for i in range(bg_mg_dl.shape[1]):
        bg = bg_mg_dl[:, i]
        k = 0
        while k < minutes:
            if bg[k] >= HYPO_MG_DL:
                k += 1
                continue
            start, above = k, 0
            while k < minutes and above < RECOVERED_MIN:
                above = above + 1 if bg[k] >= HYPO_MG_DL else 0
                k += 1
            out.append(Episode(i, start, k - above))
    return out


def score_alerts(alerts: Sequence[Sequence[float]], episodes: Sequence[Episode], days: float) -> AlertScore:
    """Score *alerts* (per patient, the minutes at which a predicted-low alert was raised) against *episodes*."""
    leads = []
    for ep in episodes:
        before = [ep.start_min - m for m in alerts[ep.patient] if ep.start_min - WINDOW_MIN <= m <= ep.end_min]
        if before:
            leads.append(float(max(before)))
    false = 0
    for i, times in enumerate(alerts):
        mine = [ep for ep in episodes if ep.patient == i]
        false += sum(1 for m in times if not any(ep.start_min - WINDOW_MIN <= m <= ep.end_min for ep in mine))
    return AlertScore(patients=len(alerts), days=days, episodes=len(episodes), lead_times_min=tuple(leads),
                      alerts=sum(len(a) for a in alerts), false_alerts=false)  # fmt: skip


@dataclass(frozen=True, slots=True)
class VirtualReplay:
    """What :func:`replay_virtual_patients` gives: each patient's alert minutes, the simulated BG and CGM
    ``(minutes, patients)``, the score and the seconds the twins took."""

    names: tuple[str, ...]
    alerts: tuple[tuple[float, ...], ...]
    bg_mg_dl: FloatArray
    cgm_mg_dl: FloatArray
    score: AlertScore
    twin_seconds: float


Probe = Callable[[int, Sequence[GlucoseComponent]], None]


def replay_virtual_patients(
    days: int,
    *,
    seed: int = 1,
    names: Sequence[str] | None = None,
    settings: dict[str, Any] | None = None,
    probe: Probe | None = None,
) -> VirtualReplay:
    """Run *names* (all 30 by default) for *days* in closed loop (*seed*: the meals) and through patient twins
    (*settings*: the component settings, re-identification off by default); *probe(minute, components)* is called
    after each reading's flush. See the module docstring."""
    chosen = list(all_patient_names()) if names is None else list(names)
    result = run_scenario(chosen, days=days, randomize_meals=True, seed=seed)
    registry = ComponentRegistry.default(entry_points=False)
    opts = {"glucose_reidentify": False, **(settings or {})}
    twins = [PatientTwin(f"vp-{i}", registry=registry, settings=opts) for i in range(len(chosen))]
    basal = np.median(result.insulin_u_min, axis=0)  # U/min: the controller's basal
    weights = load_cohort(chosen).params["BW"]
    minutes = result.cgm_mg_dl.shape[0] - 1
    alerts: list[list[float]] = [[] for _ in chosen]
    t0 = time.perf_counter()
    for i, twin in enumerate(twins):  # the record has the person's weight and basal rate
        twin.observe([Observation(patient_id=twin.patient_id, code=codes.BODY_WEIGHT, effective=START,
                                  value=Quantity(value=float(weights[i]), unit="kg"), observation_id=f"w-{i}"),
                      MedicationAdministration(administration_id=f"basal-{i}", patient_id=twin.patient_id,
                                               medication=_INSULIN, start=START,
                                               rate=Quantity(value=float(basal[i] * 60), unit="U/h"))])  # fmt: skip
    for minute in range(minutes):
        at = START + timedelta(minutes=minute)
        out: list[Record] = []
        for i, twin in enumerate(twins):
            recs = _records(i, minute, at, result, float(basal[i]))
            if recs:
                out += twin.observe(recs, defer=True)
        if minute % 5 == 0:
            components = [t.components["glucose"] for t in twins if "glucose" in t.components]
            out += flush_glucose(components)
            if probe is not None:
                probe(minute, components)  # type: ignore[arg-type]
        for e in out:
            if isinstance(e, Event) and e.code == "glucose-low-predicted" and e.status != "resolved":
                alerts[int(str(e.patient_id).split("-")[1])].append((e.time - START).total_seconds() / 60)
    seconds = time.perf_counter() - t0
    bg = result.bg_mg_dl[: minutes + 1]
    score = score_alerts(alerts, hypo_episodes(bg), days)
    return VirtualReplay(names=tuple(chosen), alerts=tuple(tuple(a) for a in alerts), bg_mg_dl=bg,
                         cgm_mg_dl=result.cgm_mg_dl[: minutes + 1], score=score, twin_seconds=seconds)  # fmt: skip


def _records(i: int, minute: int, at: datetime, result: Any, basal_u_min: float) -> list[Record]:
    pid = f"vp-{i}"
    recs: list[Record] = []
    extra = float(result.insulin_u_min[minute, i] - basal_u_min)
    if extra > 0.05:
        recs.append(MedicationAdministration(administration_id=f"b-{i}-{minute}", patient_id=pid, medication=_INSULIN,
                                             start=at, dose=Quantity(value=round(extra, 3), unit="U")))  # fmt: skip
    carbs = float(result.cho_announced_g[minute, i])
    if carbs > 0:
        recs.append(Observation(patient_id=pid, code=CARBOHYDRATE_INTAKE, effective=at,
                                value=Quantity(value=carbs, unit="g"), observation_id=f"c-{i}-{minute}"))  # fmt: skip
    if minute % 5 == 0:
        value = float(np.clip(result.cgm_mg_dl[minute, i], 40.0, 400.0))
        reading = Quantity(value=value, unit="mg/dL")
        recs.append(Observation(patient_id=pid, code=codes.GLUCOSE_INTERSTITIAL, effective=at,
                                observation_id=f"g-{i}-{minute}", value=reading))  # fmt: skip
    return recs
