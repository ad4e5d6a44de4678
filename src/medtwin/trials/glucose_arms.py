"""Glucose arms: one period of a chunk of virtual patients under one controller, reduced to endpoint values.

A :class:`GlucoseJob` holds everything a worker needs (patients' parameters, the arm, the scenario, the seed and
the *stream*), so a chunk's result depends on nothing else: where it runs and how the cohort is cut into chunks
do not change any number. Random numbers are per patient: patient *i* (its index in the screened population) eats
meals drawn from ``default_rng(SeedSequence(seed, spawn_key=(stream, i)))``, and in the trial period (stream 0)
its CGM is seeded ``seed + i``, exactly as ``medtwin.glucose.run_scenario`` seeds member *i*, so a trial of the 30
original patients reproduces a direct run. Other streams (run-in, twins) use sensor seeds drawn from the same
per-patient sequence. Only summaries leave the worker; traces are dropped with the chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medtwin.glucose.controllers import BasalBolusController, BasalOnlyController, Controller
from medtwin.glucose.devices import CGMSensor, InsulinPump, pump_spec, sensor_spec
from medtwin.glucose.metrics import summary_metrics_batch
from medtwin.glucose.patients import Cohort
from medtwin.glucose.scenarios import daily_meals
from medtwin.glucose.simulation import meal_matrix, simulate_closed_loop
from medtwin.sim.model import FloatArray
from medtwin.trials.protocol import GlucoseArm, GlucoseScenario

__all__ = [
    "STREAM_LIBRARY",
    "STREAM_RUN_IN",
    "STREAM_TRIAL",
    "STREAM_TWIN",
    "GlucoseJob",
    "arm_controller",
    "glucose_endpoints",
    "patient_meals",
    "run_glucose_job",
    "sensor_seeds",
]

STREAM_TRIAL = 0
STREAM_RUN_IN = 1
STREAM_LIBRARY = 2
STREAM_TWIN = 16  # twin replicate r uses stream 16 + r


def glucose_endpoints(metrics: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
    """Trial endpoints (see ``GLUCOSE_ENDPOINTS``) from :func:`~medtwin.glucose.summary_metrics_batch` output."""
    return {
        "tir_pct": metrics["tir_pct"],
        "tbr70_pct": metrics["tbr_level1_pct"] + metrics["tbr_level2_pct"],
        "tbr54_pct": metrics["tbr_level2_pct"],
        "tar180_pct": metrics["tar_level1_pct"] + metrics["tar_level2_pct"],
        "tar250_pct": metrics["tar_level2_pct"],
        "gmi_pct": metrics["gmi_pct"],
        "mean_mg_dl": metrics["mean_mg_dl"],
        "cv_pct": metrics["cv_pct"],
        "lbgi": metrics["lbgi"],
        "hbgi": metrics["hbgi"],
    }


def patient_meals(scenario: GlucoseScenario, days: int, seed: int, stream: int, index: int) -> FloatArray:
    """Meals ``(days * n_meals, 2)`` (minute, grams) of patient *index* in *stream* (module docstring)."""
    if not scenario.randomise_meals:
        return np.asarray(daily_meals(1, days, scenario.meals)[0], dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))
    plan = daily_meals(
        1, days, scenario.meals, rng=rng, time_sd_min=scenario.time_sd_min, size_range=scenario.size_range
    )[0]
    if scenario.skip_probability > 0:
        plan[:, 1] *= rng.random(plan.shape[0]) >= scenario.skip_probability
    return np.asarray(plan, dtype=np.float64)


def sensor_seeds(seed: int, stream: int, indices: FloatArray | np.ndarray) -> list[int]:
    """CGM seeds of patients *indices* in *stream*: ``seed + i`` in the trial period, else drawn per patient."""
    if stream == STREAM_TRIAL:
        return [seed + int(i) for i in indices]
    return [int(np.random.SeedSequence(seed, spawn_key=(stream, int(i), 1)).generate_state(1)[0]) for i in indices]


def arm_controller(arm: GlucoseArm, cohort: Cohort) -> Controller:
    """The arm's controller for *cohort* (scales multiply each patient's own CR, CF and basal)."""
    basal = cohort.basal_u_per_min * arm.basal_scale
    if arm.controller == "basal":
        return BasalOnlyController(basal)
    return BasalBolusController(
        basal_u_min=basal,
        cr_g_per_u=cohort.cr_g_per_u * arm.cr_scale,
        cf_mg_dl_per_u=cohort.cf_mg_dl_per_u * arm.cf_scale,
        target_mg_dl=arm.target_mg_dl,
        correction_threshold_mg_dl=arm.correction_threshold_mg_dl,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseJob:
    """A chunk of patients, one arm, one period (picklable; see the module docstring)."""

    cohort: Cohort
    indices: np.ndarray  # screening index of each patient (seeds)
    arm: GlucoseArm
    scenario: GlucoseScenario
    days: int
    seed: int
    stream: int


def run_glucose_job(job: GlucoseJob) -> dict[str, FloatArray]:
    """Simulate the chunk and return its endpoint values ``{endpoint: (n,)}``."""
    cohort, sc = job.cohort, job.scenario
    minutes = 1440 * job.days
    plans = np.stack([patient_meals(sc, job.days, job.seed, job.stream, int(i)) for i in job.indices])
    result = simulate_closed_loop(
        cohort,
        minutes=minutes,
        meals=meal_matrix(minutes, plans, cohort.size),
        controller=arm_controller(job.arm, cohort),
        sensor=CGMSensor(
            sensor_spec(sc.sensor), sensor_seeds(job.seed, job.stream, job.indices), noise=sc.sensor_noise
        ),
        pump=InsulinPump(pump_spec(sc.pump)),
        # the compiled basal-bolus loop delivers each patient's own basal; scaled basal takes the general path
        fused=job.arm.basal_scale == 1.0,
    )
    trace = result.bg_mg_dl if sc.signal == "bg" else result.cgm_mg_dl
    return glucose_endpoints(summary_metrics_batch(trace[1:]))
