"""In-silico validation of the personal twin: identification, replay, forecasting and bolus advice against the
virtual patients' truth.

Protocol per virtual patient (:mod:`medtwin.glucose.insilico`; the twin never sees the true parameters):

1. Therapy A: the basal-bolus controller, randomized meals, Dexcom noise, ``days`` + 1 days. The twin is fitted on
   the first ``days`` days' records only, from the population prior of the *other* 29 patients (leave-one-out).
2. Replay: each therapy B applied to the recorded fit days and simulated on the true patient (open loop) is the
   truth; the twin's replay of B is compared with it (RMSE of the median, 95 % band coverage, time in range: the
   twin's is the median of the draws' noise-free TIR, the figure :func:`~medtwin.glucose.replay.replay` and the CLI
   report; the posterior mean and the TIR of the median curve are reported beside, see
   :func:`replay_tir_estimates`).
3. Forecast: the particle filter assimilates the fit days, then every reading of the last day; from every other
   reading it forecasts 30 and 60 minutes ahead, scored against the CGM reading then (what a user sees) and the
   true glucose, next to persistence and linear extrapolation of the last 15 minutes.
4. Advice: one more day (new random meals) is lived twice by the true patient from its steady state, once with
   every meal bolus from the standard calculator (the patient's Quest CR and CF, target 120 mg/dL, IOB) and once
   with the twin's bolus (its filter following that day's CGM); time in range and below 70 mg/dL of the true BG.
   The ``robust`` (default) and ``calibrated`` policies' error is measured on the meals of the last day of step 3
   (assimilated, not fitted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from medtwin.glucose._twin_kernels import run_inputs
from medtwin.glucose.advise import (
    AdviceCalibration,
    advise_meal_bolus,
    calculator_bolus,
    calibrate_advice,
    insulin_on_board,
)
from medtwin.glucose.devices import CGMSensor, sensor_spec
from medtwin.glucose.envs import DEFAULT_MEALS
from medtwin.glucose.error_grid import parkes_zone_fractions
from medtwin.glucose.forecast import GlucoseForecaster
from medtwin.glucose.identify import FitSettings, Posterior, fit_cohort, fit_map_cohort
from medtwin.glucose.insilico import START, simulate_therapy_a, true_glucose
from medtwin.glucose.patients import Cohort
from medtwin.glucose.replay import replay
from medtwin.glucose.scenarios import daily_meals
from medtwin.glucose.simulation import PatientBatch
from medtwin.glucose.therapy import Therapy, apply_therapy
from medtwin.glucose.therapy_data import TherapyData
from medtwin.glucose.twin_model import population_prior
from medtwin.sim.model import FloatArray

__all__ = [
    "DEFAULT_THERAPIES_B",
    "PatientResult",
    "ValidationReport",
    "compare_parameter_sets",
    "replay_tir_estimates",
    "tir_before_zero",
    "validate_twin",
]

DEFAULT_THERAPIES_B = (
    Therapy(name="boluses x1.3", bolus_scale=1.3),
    Therapy(name="boluses 20 min earlier", bolus_shift_min=-20.0),
)
_CALCULATOR_TARGET_MG_DL = 120.0


def _tir(bg: FloatArray) -> FloatArray:
    return np.asarray(100.0 * np.mean((bg >= 70) & (bg <= 180), axis=0), dtype=np.float64)


def _tbr(bg: FloatArray) -> FloatArray:
    return np.asarray(100.0 * np.mean(bg < 70, axis=0), dtype=np.float64)


def replay_tir_estimates(draws_mg_dl: FloatArray) -> dict[str, float]:
    """The twin's estimates of time in range (%, 70-180 mg/dL) from a replay's per-draw glucose ``(minutes + 1, n)``
    (row 0, the start, left out as in :func:`~medtwin.glucose.replay.replay`'s metrics; no model/sensor error added:
    the truth compared with is the noise-free glucose).

    ``median``: the median of the draws' TIR, the figure the replay reports to its user and so the one validated
    (``tir_twin_pct``; the Bayes estimate under the absolute error the criterion |dTIR| <= 5 reads). ``mean``: the
    posterior expectation, the mean over draws of each draw's TIR, which equals the time average of the posterior
    probability of being in range at each minute. ``median_curve``: the TIR of the pointwise median trajectory, shown
    for contrast only (near 70 mg/dL it is neither of the others)."""
    bg = np.asarray(draws_mg_dl, dtype=np.float64)
    if bg.ndim != 2 or bg.shape[0] < 2 or bg.shape[1] < 1:
        raise ValueError(f"replay_tir_estimates: draws must be (minutes + 1 >= 2, n >= 1), got shape {bg.shape}")
    per_draw = _tir(bg[1:])
    return {"mean": float(np.mean(per_draw)), "median": float(np.median(per_draw)),
            "median_curve": float(_tir(np.median(bg[1:], axis=1)[:, None])[0])}  # fmt: skip


def tir_before_zero(truth_mg_dl: FloatArray, draws_mg_dl: FloatArray) -> dict[str, float]:
    """The true and the twin's (median of draws) time in range read only up to the first minute the true glucose
    reaches 0 mg/dL, and how many minutes it stays there.

    The 2008 model as simglucose integrates it stops a glucose state once it is below zero (``dGp = 0`` when
    ``Gp < 0``, :mod:`medtwin.glucose._kernels`), so a truth that reaches 0 mg/dL stays there for the rest of the
    days: a state of the simulator, not of a person (the 2008 model has no counter-regulation). A replay whose truth
    does so is compared on the whole days for the goal, and on the minutes before it as a secondary figure.
    *truth_mg_dl* ``(minutes + 1,)`` and *draws_mg_dl* ``(minutes + 1, n)`` start at minute 0 (left out)."""
    truth = np.asarray(truth_mg_dl, dtype=np.float64)
    draws = np.asarray(draws_mg_dl, dtype=np.float64)
    if truth.ndim != 1 or draws.ndim != 2 or draws.shape[0] != truth.size or truth.size < 2:
        raise ValueError(f"tir_before_zero: truth (m,) and draws (m, n) with m >= 2, got {truth.shape}, {draws.shape}")
    zero = np.flatnonzero(truth[1:] <= 0.0)
    end = int(zero[0]) + 1 if zero.size else truth.size
    if end < 2:
        return {"minutes_at_zero": float(truth.size - 1), "tir_true_pct": 0.0, "tir_twin_pct": float("nan")}
    return {"minutes_at_zero": float(truth.size - end), "tir_true_pct": float(_tir(truth[1:end, None])[0]),
            "tir_twin_pct": replay_tir_estimates(draws[:end])["median"]}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientResult:
    """One virtual patient's figures (see :meth:`ValidationReport.summary` for their meaning)."""

    name: str
    fit: dict[str, Any]
    replay: dict[str, dict[str, float]]
    forecast: dict[str, float] = field(default_factory=dict)
    advice: dict[str, float] = field(default_factory=dict)


def _member(cohort: Cohort, b: int) -> Cohort:
    """The one-patient cohort of member *b*."""
    pick = slice(b, b + 1)
    return Cohort(names=(cohort.names[b],), params={k: v[pick] for k, v in cohort.params.items()}, x0=cohort.x0[pick],
                  cr_g_per_u=cohort.cr_g_per_u[pick], cf_mg_dl_per_u=cohort.cf_mg_dl_per_u[pick])  # fmt: skip


def _replay_scores(posterior: Posterior, cohort: Cohort, b: int, data: TherapyData,
                   therapies: Sequence[Therapy], seed: int) -> dict[str, dict[str, float]]:  # fmt: skip
    out = {}
    for result in replay(posterior, data, therapies, seed=seed):
        changed = apply_therapy(data, result.therapy)
        truth = true_glucose(_member(cohort, b), [changed])[:, 0]
        n = min(truth.size, result.median_mg_dl.size)
        truth, med = truth[:n], result.median_mg_dl[:n]
        inside = (truth >= result.lo95_mg_dl[:n]) & (truth <= result.hi95_mg_dl[:n])
        tir = replay_tir_estimates(result.draws[:n])
        before_zero = tir_before_zero(truth, result.draws[:n])
        out[result.therapy.name] = {
            "rmse_mg_dl": float(np.sqrt(np.mean((med - truth) ** 2))), "coverage_95": float(np.mean(inside)),
            "tir_true_pct": float(_tir(truth[:, None])[0]), "tir_twin_pct": tir["median"],
            "tir_twin_mean_pct": tir["mean"], "tir_twin_of_median_curve_pct": tir["median_curve"],
            "tir_twin_lo95_pct": result.metrics["tir_pct"][1], "tir_twin_hi95_pct": result.metrics["tir_pct"][2],
            "truth_minutes_at_zero": before_zero["minutes_at_zero"],
            "tir_true_before_zero_pct": before_zero["tir_true_pct"],
            "tir_twin_before_zero_pct": before_zero["tir_twin_pct"],
            "tbr_true_pct": float(_tbr(truth[:, None])[0]),
            "tbr_twin_pct": result.metrics["tbr_level1_pct"][0] + result.metrics["tbr_level2_pct"][0],
        }  # fmt: skip
    return out


def _forecast_scores(posterior: Posterior, data: TherapyData, truth: FloatArray, fit_minutes: float,
                     seed: int) -> dict[str, float]:  # fmt: skip
    f = GlucoseForecaster(posterior, data.start, seed=seed)
    f.basal = list(zip(data.basal_t_min.tolist(), data.basal_u_h.tolist(), strict=True))
    f.bolus = list(zip(data.bolus_t_min.tolist(), data.bolus_u.tolist(), strict=True))
    f.carbs = list(zip(data.carbs_t_min.tolist(), data.carbs_g.tolist(), strict=True))
    t, y = data.cgm_t_min, data.cgm_mg_dl
    rows: dict[int, list[tuple[float, ...]]] = {30: [], 60: []}
    update_s: list[float] = []
    alerts = 0
    for i in range(t.size):
        started = time.perf_counter()
        alerts += sum(
            1 for e in f.update(data.start + timedelta(minutes=float(t[i])), float(y[i])) if e.status == "active"
        )
        if t[i] < fit_minutes:
            continue
        update_s.append(time.perf_counter() - started)
        if i % 2 or t[i] + 60 > t[-1]:
            continue
        fc = f.forecast((30, 60))
        back = int(np.searchsorted(t, t[i] - 15.0))
        slope = (y[i] - y[back]) / max(t[i] - t[back], 1.0)
        for h, med, lo, hi in zip(fc.horizons_min, fc.median_mg_dl, fc.lo95_mg_dl, fc.hi95_mg_dl, strict=True):
            j = int(np.searchsorted(t, t[i] + h))
            rows[h].append((med, lo, hi, y[j], truth[round(t[i] + h)], y[i], y[i] + slope * h))
    out: dict[str, float] = {"update_ms_median": 1e3 * float(np.median(update_s)), "alerts": float(alerts)}
    for h, r in rows.items():
        a = np.array(r)
        for name, col in (("twin", 0), ("persistence", 5), ("linear", 6)):
            err = a[:, col] - a[:, 3]
            out[f"{name}_rmse_{h}"] = float(np.sqrt(np.mean(err**2)))
            out[f"{name}_mae_{h}"] = float(np.mean(np.abs(err)))
        out[f"twin_rmse_vs_bg_{h}"] = float(np.sqrt(np.mean((a[:, 0] - a[:, 4]) ** 2)))
        out[f"coverage_95_{h}"] = float(np.mean((a[:, 3] >= a[:, 1]) & (a[:, 3] <= a[:, 2])))
        zones = parkes_zone_fractions(np.maximum(a[:, 3], 0.0), np.maximum(a[:, 0], 0.0))
        out[f"parkes_ab_pct_{h}"] = zones["A"] + zones["B"]
        out[f"n_{h}"] = float(a.shape[0])
    return out


def _advice_day(posterior: Posterior, cohort: Cohort, b: int, seed: int, *, policy: str = "guard",
                calibration: AdviceCalibration | None = None, raise_limit: float = 0.0,
                max_hypo_probability: float | None = None,
                arms: Sequence[str] = ("calculator", "twin")) -> dict[str, float]:  # fmt: skip
    """One day lived twice by the true patient: calculator boluses vs the twin's (see the module docstring); the
    twin's with *policy* (and its *calibration*, *raise_limit*, *max_hypo_probability*)."""
    rng = np.random.default_rng(seed)
    plan = daily_meals(1, 1, DEFAULT_MEALS, rng=rng)[0]
    meal_minutes = [round(m) for m, _ in plan]
    sensor = CGMSensor(sensor_spec("Dexcom"), [seed + b])
    noise = sensor.take_noise(1440 // 3 + 2)[:, 0]
    one = _member(cohort, b)
    basal_u_h = float(one.basal_u_per_min[0] * 60.0)
    cr, cf = float(one.cr_g_per_u[0]), float(one.cf_mg_dl_per_u[0])
    out: dict[str, float] = {}
    for arm in arms:
        patient = PatientBatch(one)
        f = GlucoseForecaster(posterior, START, particles=128, seed=seed, basal_u_h=basal_u_h)
        bg_day = [float(patient.bg_mg_dl[0])]
        boluses: list[tuple[float, float]] = []
        doses = []
        for k in range(0, 1440, 3):
            reading = float(np.clip(bg_day[-1] + noise[k // 3], 39.0, 400.0))
            if arm == "twin":  # the calculator's arm needs no filter
                f.update(f.start + timedelta(minutes=k), reading)
            meals = np.zeros(3)
            insulin = np.full(3, basal_u_h / 60.0)
            for m, (_, grams) in zip(meal_minutes, plan, strict=True):
                if k <= m < k + 3:
                    if arm == "calculator":
                        iob = insulin_on_board([t for t, _ in boluses], [u for _, u in boluses], float(k))
                        dose = calculator_bolus(grams, reading, iob, cr_g_per_u=cr, cf_mg_dl_per_u=cf,
                                                target_mg_dl=_CALCULATOR_TARGET_MG_DL)  # fmt: skip
                    else:
                        dose = advise_meal_bolus(
                            f,
                            grams,
                            cr_g_per_u=cr,
                            cf_mg_dl_per_u=cf,
                            target_mg_dl=_CALCULATOR_TARGET_MG_DL,
                            policy=policy,
                            calibration=calibration,
                            raise_limit=raise_limit,
                            max_hypo_probability=max_hypo_probability,
                        ).twin.bolus_u
                    meals[0] += grams
                    insulin[0] += dose
                    boluses.append((float(k), dose))
                    doses.append(dose)
                    if arm == "twin":
                        f.add_carbs(f.start + timedelta(minutes=k), grams)
                        f.add_bolus(f.start + timedelta(minutes=k), dose)
            bg = run_inputs(patient.x, patient._p_matrix, patient.meal_state, meals, insulin)
            bg_day.extend(bg[:, 0].tolist())
        day = np.array(bg_day[1:1441])
        out[f"{arm}_tir_pct"] = float(_tir(day[:, None])[0])
        out[f"{arm}_tbr_pct"] = float(_tbr(day[:, None])[0])
        out[f"{arm}_insulin_u"] = float(sum(doses))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationReport:
    """Per-patient results and the summary against the goals of issue 17."""

    patients: tuple[PatientResult, ...]
    settings: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """Cohort figures: replay (median RMSE, share of patients with |dTIR| <= 5, pooled band coverage, share of
        patients whose true TIR lies in the 95 % interval of the posterior draws' TIR; ``share_abs_dtir_le_5`` is
        of the median of the draws' TIR, ``..._mean`` and ``..._of_median_curve`` of the alternatives;
        ``patients_truth_reaches_zero``: patients whose true glucose under the therapy reaches 0 mg/dL, which the
        simulator (as simglucose) then holds for the rest of the days, and ``share_abs_dtir_le_5_before_zero`` the share
        with both TIRs read only up to that minute: a secondary figure, the goal is read on the whole days),
        forecast (pooled RMSE/MAE, Parkes A+B, coverage, improvement over the baselines), advice (mean TIR/TBR)."""
        out: dict[str, Any] = {"patients": len(self.patients)}
        fits = [p.fit for p in self.patients]
        out["fit"] = {
            "seconds_median": float(np.median([f["seconds"] for f in fits])),
            "simulations_median": float(np.median([f["simulations"] for f in fits])),
            "converged": int(sum(bool(f["converged"]) for f in fits)),
            "fell_back": int(sum(bool(f.get("dropped")) for f in fits)),
            "simulations_total": float(sum(f["simulations"] for f in fits)),
            "rhat_max": float(max(f["rhat_max"] for f in fits)), "ess_min": float(min(f["ess_min"] for f in fits)),
        }  # fmt: skip
        for name in self.patients[0].replay:
            r = [p.replay[name] for p in self.patients]
            dtir = np.array([abs(x["tir_twin_pct"] - x["tir_true_pct"]) for x in r])
            alternatives = {
                f"share_abs_dtir_le_5_{key}": float(np.mean([abs(x[f"tir_twin_{key}_pct"] - x["tir_true_pct"]) <= 5.0
                                                             for x in r]))
                for key in ("mean", "of_median_curve") if f"tir_twin_{key}_pct" in r[0]
            }  # fmt: skip
            out[f"replay: {name}"] = {
                "rmse_median_mg_dl": float(np.median([x["rmse_mg_dl"] for x in r])),
                "rmse_p90_mg_dl": float(np.percentile([x["rmse_mg_dl"] for x in r], 90)),
                "share_abs_dtir_le_5": float(np.mean(dtir <= 5.0)), "abs_dtir_median": float(np.median(dtir)),
                "coverage_95_pooled": float(np.mean([x["coverage_95"] for x in r])),
                "share_tir_in_95": float(np.mean([x.get("tir_twin_lo95_pct", np.nan) <= x["tir_true_pct"]
                                                  <= x.get("tir_twin_hi95_pct", np.nan) for x in r])),
                **alternatives,
            }  # fmt: skip
            if "truth_minutes_at_zero" in r[0]:
                before = [abs(x["tir_twin_before_zero_pct"] - x["tir_true_before_zero_pct"]) <= 5.0 for x in r]
                zero = int(sum(x["truth_minutes_at_zero"] > 0 for x in r))
                out[f"replay: {name}"]["patients_truth_reaches_zero"] = zero
                out[f"replay: {name}"]["share_abs_dtir_le_5_before_zero"] = float(np.mean(before))
        fc = [p.forecast for p in self.patients if p.forecast]
        if fc:
            s: dict[str, float] = {}
            for key in fc[0]:
                if key.startswith("n_"):
                    continue
                s[key] = (
                    float(np.median([x[key] for x in fc]))
                    if key.startswith("update")
                    else float(
                        np.sqrt(np.mean([x[key] ** 2 for x in fc])) if "rmse" in key else np.mean([x[key] for x in fc])
                    )
                )
            for h in (30, 60):
                s[f"gain_vs_persistence_{h}_pct"] = 100 * (1 - s[f"twin_rmse_{h}"] / s[f"persistence_rmse_{h}"])
                s[f"gain_vs_linear_{h}_pct"] = 100 * (1 - s[f"twin_rmse_{h}"] / s[f"linear_rmse_{h}"])
            out["forecast"] = s
        adv = [p.advice for p in self.patients if p.advice]
        if adv:
            out["advice"] = {k: float(np.mean([a[k] for a in adv])) for k in adv[0]}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"settings": self.settings, "summary": self.summary(),
                "patients": [{"name": p.name, "fit": p.fit, "replay": p.replay, "forecast": p.forecast,
                              "advice": p.advice} for p in self.patients]}  # fmt: skip


def _prior_for(name: str, population: str, identified: Sequence[str] | None = None, *, tie: bool = False) -> Any:
    """The leave-one-out prior of virtual patient *name*: from the whole population (``all``) or from the patients
    of its own age group (``group``: what a user gives with ``--population``); *tie* as in
    :func:`~medtwin.glucose.twin_model.population_prior`."""
    group = name.split("#")[0] if population == "group" else population
    if identified is None:
        return population_prior(group, exclude=[name], tie=tie)
    return population_prior(group, identified=identified, exclude=[name], tie=tie)


def validate_twin(
    names: Sequence[str],
    *,
    days: int = 2,
    seed: int = 1,
    therapies_b: Sequence[Therapy] = DEFAULT_THERAPIES_B,
    forecast: bool = True,
    advice: bool = True,
    population: str = "group",
    settings: FitSettings = FitSettings(require_convergence=False),
    advice_policy: str = "robust",
    identified: Sequence[str] | None = None,
    tie: bool = False,
) -> ValidationReport:
    """Run the protocol of the module docstring for the virtual patients *names* (all fits in one batched run,
    :func:`~medtwin.glucose.identify.fit_cohort`); *population* ``group`` takes each patient's prior from the other
    patients of its age group, ``all`` from all the others; *advice_policy*: the twin's bolus policy
    (:func:`~medtwin.glucose.advise.advise_meal_bolus`; ``robust`` and ``calibrated`` are calibrated on the last,
    assimilated day);
    *identified*: the parameters the twin identifies (default:
    :data:`~medtwin.glucose.twin_model.DEFAULT_IDENTIFIED`); *tie*: parameters of
    :data:`~medtwin.glucose.twin_model.TIED_PARAMETERS` follow their identified partner (``False``, the default:
    held at the population value)."""
    sim = simulate_therapy_a(names, days=days + 1, seed=seed)
    fit_minutes = 1440.0 * days
    windows = [sim.data[b].window(0.0, fit_minutes) for b in range(len(sim.cohort.names))]
    started = time.perf_counter()
    cpu = time.process_time()
    posteriors = fit_cohort(windows, [_prior_for(n, population, identified, tie=tie) for n in sim.cohort.names],
                            settings=settings)  # fmt: skip
    cohort_s, cohort_cpu = time.perf_counter() - started, time.process_time() - cpu
    results = []
    for b, name in enumerate(sim.cohort.names):
        posterior, fit_data = posteriors[b], windows[b]
        d = posterior.diagnostics
        summary = {"seconds": d.seconds, "simulations": d.simulations, "converged": d.converged,
                   "rhat_max": max(d.rhat.values()), "ess_min": min(min(d.ess_bulk.values()), min(d.ess_tail.values())),
                   "steps": d.steps, "dropped": list(d.dropped), "total_simulations": d.simulations}  # fmt: skip
        rep = _replay_scores(posterior, sim.cohort, b, fit_data, therapies_b, seed)
        fc = _forecast_scores(posterior, sim.data[b], sim.result.bg_mg_dl[:, b], fit_minutes, seed) if forecast else {}
        adv = {}
        if advice:
            calibration = None
            if advice_policy in (
                "calibrated",
                "robust",
            ):  # the twin's nadir errors on the assimilated last day, not fitted on
                data = sim.data[b]
                filt = GlucoseForecaster(posterior, data.start, particles=128, seed=seed,
                                         basal_u_h=float(data.basal_u_h[0]))  # fmt: skip
                calibration = calibrate_advice(filt, data, fit_minutes)
            adv = _advice_day(posterior, sim.cohort, b, seed + 1000, policy=advice_policy, calibration=calibration)
            if calibration is not None:
                adv |= {"calibration_bias_mg_dl": calibration.bias_mg_dl, "calibration_sd_mg_dl": calibration.sd_mg_dl}
        results.append(PatientResult(name=name, fit=summary, replay=rep, forecast=fc, advice=adv))
    return ValidationReport(
        patients=tuple(results),
        settings={"days": days, "seed": seed, "therapies_b": [t.to_dict() for t in therapies_b],
                  "prior_population": population, "advice_policy": advice_policy, "cohort_fit_s": cohort_s,
                  "cohort_fit_cpu_s": cohort_cpu,
                  "identified": list(_prior_for(names[0], population, identified).names), "tie": tie, "sampler": {
                      k: getattr(settings, k) for k in ("burn_in", "check_every", "max_steps", "rhat_max", "ess_min",
                                                        "fallback", "fallback_steps")}},
    )  # fmt: skip


def compare_parameter_sets(
    names: Sequence[str],
    candidate_sets: Sequence[Sequence[str]],
    *,
    days: int = 2,
    seed: int = 1,
    therapies_b: Sequence[Therapy] = DEFAULT_THERAPIES_B,
    population: str = "group",
    tie: bool = False,
) -> list[dict[str, Any]]:
    """For each set of identified parameters: MAP fits (no sampling) on therapy A, the replay of each therapy B at
    the MAP against the truth; medians over *names* of the fit RMSE against true BG, the replay RMSE, and the share
    of patients whose replayed time in range is within 5 points. The empirical check of the identifiability
    analysis (leave-one-out priors, *population* and *tie* as in :func:`validate_twin`; all patients' MAP fits
    batched)."""
    sim = simulate_therapy_a(names, days=days, seed=seed)
    out = []
    for identified in candidate_sets:
        rows = []
        priors = [_prior_for(name, population, identified, tie=tie) for name in sim.cohort.names]
        found = fit_map_cohort(list(sim.data), priors)
        for b, (theta, model) in enumerate(found):
            data = sim.data[b]
            g0 = float(np.exp(theta[-1]))
            fitted = model.simulate(theta[None, :-1], data, initial_glucose_mg_dl=g0)[:, 0]
            n = min(fitted.size, sim.result.bg_mg_dl.shape[0])
            row = [float(np.sqrt(np.mean((fitted[:n] - sim.result.bg_mg_dl[:n, b]) ** 2)))]
            for therapy in therapies_b:
                changed = apply_therapy(data, therapy)
                truth = true_glucose(_member(sim.cohort, b), [changed])[:, 0]
                bg = model.simulate(theta[None, :-1], changed, initial_glucose_mg_dl=g0)[:, 0]
                m = min(bg.size, truth.size)
                row += [float(np.sqrt(np.mean((bg[:m] - truth[:m]) ** 2))),
                        float(abs(_tir(bg[:m, None])[0] - _tir(truth[:m, None])[0]))]  # fmt: skip
            rows.append(row)
        a = np.array(rows)
        result: dict[str, Any] = {"identified": list(identified), "fit_rmse_median_mg_dl": float(np.median(a[:, 0]))}
        for k, therapy in enumerate(therapies_b):
            result[therapy.name] = {"rmse_median_mg_dl": float(np.median(a[:, 1 + 2 * k])),
                                    "share_abs_dtir_le_5": float(np.mean(a[:, 2 + 2 * k] <= 5.0))}  # fmt: skip
        out.append(result)
    return out
