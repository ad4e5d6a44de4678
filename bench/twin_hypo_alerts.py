"""Predicted-low alerts of the living twin on the 30 virtual patients: lead time before hypoglycaemia, false alerts.

Each virtual patient (UVA/Padova, 10 adults, 10 adolescents, 10 children, medtwin.glucose) runs in closed loop with
the basal-bolus controller and randomized meals for --days days; their 5-minute CGM readings, announced carbohydrate
and insulin (the basal rate and each bolus) go as records into a patient twin (the glucose component, from the
population prior: the twin has not identified the person), as the runtime would feed them.

Hypoglycaemia episode: the simulated blood glucose (not the sensor) below 70 mg/dL, an episode starting when it
falls below and ending when it has been back at or above 70 for 30 minutes. For each episode: detected when an
alert was raised in the 60 minutes before its start (lead time = start - alert time) or during it (lead time 0 or
negative: late). An alert is false when no episode starts within 60 minutes after it and none is in progress.

    .venv/bin/python bench/twin_hypo_alerts.py            # 30 patients, 3 days
    .venv/bin/python bench/twin_hypo_alerts.py --days 1
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

START = datetime(2026, 1, 1, tzinfo=UTC)


def evaluate(days: int, seed: int = 1, particles: int = 128) -> dict[str, Any]:
    """Run the 30 virtual patients through patient twins and score the predicted-low alerts."""
    from medtwin import codes
    from medtwin.glucose.patients import all_patient_names
    from medtwin.glucose.scenarios import run_scenario
    from medtwin.interop.glucose_records import CARBOHYDRATE_INTAKE
    from medtwin.records import Coding, Event, MedicationAdministration, Observation, Quantity, Record
    from medtwin.twin import PatientTwin
    from medtwin.twin.component import ComponentRegistry
    from medtwin.twin.glucose_component import flush_glucose

    names = list(all_patient_names())
    result = run_scenario(names, days=days, randomize_meals=True, seed=seed)
    insulin = Coding(system="http://www.whocc.no/atc", code="A10AB", display="insulin (rapid-acting)")
    registry = ComponentRegistry.default(entry_points=False)
    settings = {"glucose_particles": particles, "glucose_reidentify": False}
    twins = {i: PatientTwin(f"vp-{i}", registry=registry, settings=settings) for i in range(len(names))}
    basal = np.median(result.insulin_u_min, axis=0)  # U/min: the controller's basal
    minutes = result.cgm_mg_dl.shape[0] - 1
    alerts: dict[int, list[datetime]] = {i: [] for i in twins}
    t0 = time.perf_counter()
    from medtwin.glucose.patients import load_cohort

    weights = load_cohort(names).params["BW"]
    for i, twin in twins.items():  # the record has the person's weight and basal rate
        twin.observe([Observation(patient_id=twin.patient_id, code=codes.BODY_WEIGHT, effective=START,
                                  value=Quantity(value=float(weights[i]), unit="kg"), observation_id=f"w-{i}"),
                      MedicationAdministration(administration_id=f"basal-{i}", patient_id=twin.patient_id,
                                               medication=insulin, start=START,
                                               rate=Quantity(value=float(basal[i] * 60), unit="U/h"))])  # fmt: skip
    for minute in range(minutes):
        at = START + timedelta(minutes=minute)
        per: dict[int, list[Record]] = {}
        for i in twins:
            recs: list[Record] = []
            extra = float(result.insulin_u_min[minute, i] - basal[i])
            if extra > 0.05:
                recs.append(MedicationAdministration(administration_id=f"b-{i}-{minute}", patient_id=f"vp-{i}",
                                                     medication=insulin, start=at,
                                                     dose=Quantity(value=round(extra, 3), unit="U")))  # fmt: skip
            carbs = float(result.cho_announced_g[minute, i])
            if carbs > 0:
                recs.append(
                    Observation(
                        patient_id=f"vp-{i}",
                        code=CARBOHYDRATE_INTAKE,
                        effective=at,
                        value=Quantity(value=carbs, unit="g"),
                        observation_id=f"c-{i}-{minute}",
                    )
                )
            if minute % 5 == 0:
                value = float(np.clip(result.cgm_mg_dl[minute, i], 40.0, 400.0))
                recs.append(
                    Observation(
                        patient_id=f"vp-{i}",
                        code=codes.GLUCOSE_INTERSTITIAL,
                        effective=at,
                        value=Quantity(value=value, unit="mg/dL"),
                        observation_id=f"g-{i}-{minute}",
                    )
                )
            if recs:
                per[i] = recs
        out: list[Record] = []
        for i, recs in per.items():
            out += twins[i].observe(recs, defer=True)
        if minute % 5 == 0:
            out += flush_glucose([t.components["glucose"] for t in twins.values() if "glucose" in t.components])
        for e in out:
            if isinstance(e, Event) and e.code == "glucose-low-predicted":
                alerts[int(str(e.patient_id).split("-")[1])].append(e.time)
    seconds = time.perf_counter() - t0
    episodes: list[tuple[int, int, int]] = []  # (patient, start minute, end minute)
    for i in twins:
        bg = result.bg_mg_dl[:, i]
        k = 0
        while k <= minutes:
            if bg[k] < 70:
                start = k
                above = 0
                while k <= minutes and above < 30:
                    above = above + 1 if bg[k] >= 70 else 0
                    k += 1
                episodes.append((i, start, k - above))
            else:
                k += 1
    leads: list[float] = []
    missed = 0
    for i, start, end in episodes:
        window = [(a - START).total_seconds() / 60 for a in alerts[i]]
        before = [start - m for m in window if start - 60 <= m <= end]
        if before:
            leads.append(max(before))
        else:
            missed += 1
    false_alerts = 0
    total_alerts = sum(len(v) for v in alerts.values())
    for i, times in alerts.items():
        for a in times:
            m = (a - START).total_seconds() / 60
            if not any(s - 60 <= m <= e for j, s, e in episodes if j == i):
                false_alerts += 1
    leads_arr = np.asarray(leads)
    return {
        "patients": len(names), "days": days, "particles": particles, "episodes": len(episodes),
        "detected": len(leads), "missed": missed,
        "detected_before_onset": int(np.sum(leads_arr > 0)) if leads else 0,
        "lead_time_min_median": float(np.median(leads_arr)) if leads else None,
        "lead_time_min_p25_p75": [float(np.percentile(leads_arr, 25)), float(np.percentile(leads_arr, 75))]
        if leads else None,
        "alerts": total_alerts, "false_alerts": false_alerts,
        "false_alert_fraction": round(false_alerts / total_alerts, 3) if total_alerts else None,
        "false_alerts_per_patient_day": round(false_alerts / (len(names) * days), 3),
        "twin_seconds": round(seconds, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--particles", type=int, default=128)
    args = parser.parse_args()
    out = {"date": datetime.now(UTC).isoformat(timespec="seconds"), **evaluate(args.days, args.seed, args.particles)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
