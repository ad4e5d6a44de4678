"""Predicted-low alerts of the living twin on the 30 virtual patients: lead time before hypoglycaemia, false alerts.

The replay and the scoring are :mod:`medtwin.twin.glucose_alert_validation` (episode: simulated blood glucose below
70 mg/dL; detected with an alert in the hour before or during it; false: no episode within the hour after). Besides
the alerts the component raised, every reading's full alert horizon is recorded (every particle run 30 minutes
ahead, on the side: it draws nothing from the filter's random generator, so the filter runs as without it), which
gives in the same run:

- the alert rules compared (``--rules``): the probability of glucose below 70 mg/dL within 30 min at several
  thresholds (medtwin's rule: 0.5) and below 55 mg/dL within 20 min (Dexcom's "urgent low soon" horizon and level),
  each with the component's raise-once, resolve-after-three-quiet-readings logic;
- the 30-minute forecast error: the weighted median of the particles' 30-minute CGM (model glucose plus the
  carried sensor error rho^30 e) against the CGM reading 30 minutes later, and the model glucose against the
  simulated blood glucose, MAE and RMSE over every reading with a reading 30 minutes on;
- whether the screened horizon (the default) raised the same alerts as running every particle would have.

    .venv/bin/python bench/twin_hypo_alerts.py                        # 30 patients, 3 days, 32 particles, seed 2
    .venv/bin/python bench/twin_hypo_alerts.py --particles 16 32 64 128 --days 3 --seed 2
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from medtwin.glucose.forecast import _ALERT_PROBABILITY, GlucoseForecaster
from medtwin.twin.glucose_alert_validation import hypo_episodes, replay_virtual_patients, score_alerts

RULES = {  # name -> (threshold mg/dL, horizon min, probability); "cgm": the predicted CGM path (bg + rho^h e)
    "p(<70 in 30 min) >= 0.5": (70.0, 30, 0.5),
    "either p(<70 in 30 min) >= 0.5": (70.0, 30, 0.5),
    "cgm p(<70 in 30 min) >= 0.5": (70.0, 30, 0.5),
    "cgm p(<70 in 30 min) >= 0.3": (70.0, 30, 0.3),
    "cgm p(<70 in 20 min) >= 0.5": (70.0, 20, 0.5),
    "cgm p(<65 in 30 min) >= 0.5": (65.0, 30, 0.5),
    "cgm p(<75 in 30 min) >= 0.5": (75.0, 30, 0.5),
    "p(<70 in 30 min) >= 0.4": (70.0, 30, 0.4),
    "p(<70 in 30 min) >= 0.3": (70.0, 30, 0.3),
    "p(<70 in 30 min) >= 0.2": (70.0, 30, 0.2),
    "p(<70 in 30 min) >= 0.1": (70.0, 30, 0.1),
    "p(<55 in 20 min) >= 0.5": (55.0, 20, 0.5),
    "p(<55 in 20 min) >= 0.3": (55.0, 20, 0.3),
}


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    return float(values[order][min(int(np.searchsorted(cw, 0.5 * cw[-1])), values.size - 1)])


class Recorder:
    """Per reading and patient: the weight below each rule's level within its horizon, and the 30-minute forecasts."""

    def __init__(self, patients: int) -> None:
        self.minutes: list[int] = []
        self.probs: dict[str, list[list[float]]] = {name: [] for name in RULES}
        self.p54: list[list[float]] = []
        self.p54_either: list[list[float]] = []
        self.p54_cgm: list[list[float]] = []
        self.cgm30: list[list[float]] = []
        self.bg30: list[list[float]] = []
        self.patients = patients

    def __call__(self, minute: int, components: Sequence[Any]) -> None:
        self.minutes.append(minute)
        row = {name: [0.0] * self.patients for name in RULES}
        p54 = [0.0] * self.patients
        p54_either = [0.0] * self.patients
        p54_cgm = [0.0] * self.patients
        cgm30 = [float("nan")] * self.patients
        bg30 = [float("nan")] * self.patients
        for c in components:
            f: GlucoseForecaster | None = c.forecaster
            if f is None or not f.started:
                continue
            i = int(c.patient_id.split("-")[1])
            bg = f.simulate_ahead(30)[:, 0, :]  # (31, N): no random draw, the filter is unchanged
            w = f.weights
            h = np.arange(31, dtype=np.float64)[:, None]
            cgm = bg + np.exp(-h / f.tau_min) * f.sensor_error
            either = np.minimum(bg, cgm)
            for name, (level, horizon, _) in RULES.items():
                paths = cgm if name.startswith("cgm") else either if name.startswith("either") else bg
                row[name][i] = float(np.sum(w[paths[: horizon + 1].min(axis=0) < level]))
            p54[i] = float(np.sum(w[bg.min(axis=0) < 54.0]))
            p54_either[i] = float(np.sum(w[either.min(axis=0) < 54.0]))
            p54_cgm[i] = float(np.sum(w[cgm.min(axis=0) < 54.0]))
            rho = np.exp(-30.0 / f.tau_min)
            cgm30[i] = _weighted_median(bg[30] + rho * f.sensor_error, w)
            bg30[i] = _weighted_median(bg[30], w)
        for name in RULES:
            self.probs[name].append(row[name])
        self.p54.append(p54)
        self.p54_either.append(p54_either)
        self.p54_cgm.append(p54_cgm)
        self.cgm30.append(cgm30)
        self.bg30.append(bg30)


def alerts_of_rule(minutes: Sequence[int], p: np.ndarray, p54: np.ndarray, probability: float) -> list[list[float]]:
    """The alert minutes the component's raise/resolve logic gives for the weights *p* ``(readings, patients)``."""
    out: list[list[float]] = [[] for _ in range(p.shape[1])]
    for i in range(p.shape[1]):
        level: str | None = None
        quiet = 0
        for k, m in enumerate(minutes):
            now = "high" if p54[k, i] >= probability else "medium" if p[k, i] >= probability else None
            if now is None:
                if level is not None:
                    quiet += 1
                    if quiet >= 3:
                        level = None
                continue
            quiet = 0
            if level is not None and (level == now or now == "medium"):
                continue
            level = now
            out[i].append(float(m))
    return out


def evaluate(days: int, seed: int, particles: int) -> dict[str, Any]:
    """One replay of the 30 virtual patients with *particles*: the component's alerts, the rules, forecast errors."""
    recorder = Recorder(30)
    replay = replay_virtual_patients(days, seed=seed, settings={"glucose_particles": particles}, probe=recorder)
    episodes = hypo_episodes(replay.bg_mg_dl)
    minutes = recorder.minutes
    p54 = np.asarray(recorder.p54)
    p54_either = np.asarray(recorder.p54_either)
    p54_cgm = np.asarray(recorder.p54_cgm)
    rules = {}
    for name, (_, _, probability) in RULES.items():
        p = np.asarray(recorder.probs[name])
        severe = {"p(<70": p54, "either p(<70": p54_either, "cgm p(<70": p54_cgm}.get(
            name.split(" in ")[0], np.zeros_like(p)
        )
        rules[name] = score_alerts(alerts_of_rule(minutes, p, severe, probability), episodes, days).to_dict()
    rule = np.asarray(recorder.probs["cgm p(<70 in 30 min) >= 0.5"])
    full_alerts = alerts_of_rule(minutes, rule, p54_cgm, _ALERT_PROBABILITY)
    full = score_alerts(full_alerts, episodes, days)
    trend = []  # the baseline without a twin: the CGM now or its 15-minute trend extrapolated 30 min below 70
    for m in minutes:
        now = replay.cgm_mg_dl[m]
        slope = (now - replay.cgm_mg_dl[max(m - 15, 0)]) / 15.0
        trend.append(np.minimum(now, now + 30 * slope) < 70.0)
    rules["CGM trend (no twin): CGM or CGM + 30 min x 15-min slope < 70"] = score_alerts(
        alerts_of_rule(minutes, np.asarray(trend, dtype=np.float64), np.zeros_like(p54), 0.5), episodes, days
    ).to_dict()
    idx = np.asarray(minutes) + 30
    ok = idx < replay.cgm_mg_dl.shape[0]
    cgm_err = (np.asarray(recorder.cgm30)[ok] - replay.cgm_mg_dl[idx[ok]]).ravel()
    bg_err = (np.asarray(recorder.bg30)[ok] - replay.bg_mg_dl[idx[ok]]).ravel()
    cgm_err, bg_err = cgm_err[np.isfinite(cgm_err)], bg_err[np.isfinite(bg_err)]
    return {
        "particles": particles, "seed": seed, "days": days, "twin_seconds": round(replay.twin_seconds, 1),
        "component_alerts": replay.score.to_dict(),
        "screened_equals_full": [list(a) for a in replay.alerts] == full_alerts,
        "full_horizon_alerts": full.to_dict(),
        "forecast_30min": {"readings": int(cgm_err.size),
                           "cgm_mae_mg_dl": round(float(np.mean(np.abs(cgm_err))), 2),
                           "cgm_rmse_mg_dl": round(float(np.sqrt(np.mean(cgm_err**2))), 2),
                           "bg_mae_mg_dl": round(float(np.mean(np.abs(bg_err))), 2),
                           "bg_rmse_mg_dl": round(float(np.sqrt(np.mean(bg_err**2))), 2)},
        "rules": rules,
    }  # fmt: skip


def line(score: dict[str, Any]) -> str:
    """One line of a score: detected of episodes (before onset), lead time median (IQR), false alerts."""
    lead = score["lead_time_min_median"]
    iqr = score["lead_time_min_p25_p75"] or [None, None]
    return (f"{score['detected']}/{score['episodes']} detected ({score['detected_before_onset']} before onset), lead "
            f"median {lead} min (IQR {iqr[0]} to {iqr[1]}), {score['false_alerts']} of {score['alerts']} alerts false "
            f"= {score['false_alerts_per_patient_day']}/patient-day")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--particles", type=int, nargs="+", default=[32])
    args = parser.parse_args()
    for n in args.particles:
        out = {"date": datetime.now(UTC).isoformat(timespec="seconds"), **evaluate(args.days, args.seed, n)}
        out["component_alerts"] = line(out["component_alerts"])
        out["full_horizon_alerts"] = line(out["full_horizon_alerts"])
        out["rules"] = {name: line(score) for name, score in out["rules"].items()}
        print(json.dumps(out, indent=2), flush=True)


if __name__ == "__main__":
    main()
