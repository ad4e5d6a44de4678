"""In-silico ground truth for the personal twin: virtual patients' days as a person's data would record them.

The way ReplayBG was validated (Cappon et al., IEEE TBME 2023, doi:10.1109/TBME.2023.3286856): simulate virtual
patients under therapy A with the simglucose-exact simulator (basal-bolus controller, randomized meals, CGM
noise), hand the twin only what a person's records hold (CGM readings, boluses, basal rate, carbohydrate, body
weight), and compare the twin's replay of another therapy B with the same virtual patients simulated under B.
The twin never sees the true parameters; :func:`true_glucose` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from medtwin.glucose._twin_kernels import run_inputs
from medtwin.glucose.devices import CGMSensor, InsulinPump, pump_spec, sensor_spec
from medtwin.glucose.envs import DEFAULT_MEALS
from medtwin.glucose.patients import Cohort, load_cohort
from medtwin.glucose.scenarios import daily_meals, make_controller
from medtwin.glucose.simulation import ClosedLoopResult, PatientBatch, meal_matrix, simulate_closed_loop
from medtwin.glucose.therapy_data import TherapyData
from medtwin.sim.model import FloatArray

__all__ = ["START", "InSilicoDays", "simulate_therapy_a", "therapy_data_from_result", "true_glucose"]

START = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class InSilicoDays:
    """Virtual patients' closed-loop days (the truth) and the records a person would have of them."""

    cohort: Cohort
    result: ClosedLoopResult
    data: tuple[TherapyData, ...]


def therapy_data_from_result(
    result: ClosedLoopResult,
    member: int,
    *,
    body_weight_kg: float,
    cgm_limits_mg_dl: tuple[float, float] | None = None,
) -> TherapyData:
    """The records of one member of a closed-loop run: CGM readings every sample period, one bolus per control
    period in which the pump delivered more than basal, the basal rate, and the announced carbohydrate. Readings at
    the sensor's limits *cgm_limits_mg_dl* (the simulated sensor clips there) are marked censored, as a CGM export
    marks its Low and High readings."""
    st = result.sample_time_min
    minutes = result.insulin_u_min.shape[0]
    cgm_t = np.arange(0, minutes + 1, st, dtype=np.float64)
    cgm = result.cgm_mg_dl[::st, member].copy()
    censored = np.zeros(cgm_t.size)
    if cgm_limits_mg_dl is not None:
        censored[(cgm <= cgm_limits_mg_dl[0]) | (cgm >= cgm_limits_mg_dl[1])] = 1.0
    insulin = result.insulin_u_min[:, member]
    basal = float(np.min(insulin))
    extra = (insulin - basal).reshape(-1, st).sum(axis=1)
    bolus_k = np.flatnonzero(extra > 1e-9)
    carbs = result.cho_announced_g[:, member]
    carbs_k = np.flatnonzero(carbs > 0)
    return TherapyData(
        start=START, cgm_t_min=cgm_t, cgm_mg_dl=cgm,
        cgm_censored=censored, bolus_t_min=(bolus_k * st).astype(np.float64), bolus_u=extra[bolus_k],
        basal_t_min=np.zeros(1), basal_u_h=np.array([basal * 60.0]), carbs_t_min=carbs_k.astype(np.float64),
        carbs_g=carbs[carbs_k].copy(), body_weight_kg=body_weight_kg, source=f"in silico {result.names[member]}",
    )  # fmt: skip


def simulate_therapy_a(
    names: Sequence[str],
    *,
    days: int = 2,
    seed: int = 1,
    sensor: str = "Dexcom",
    pump: str = "Insulet",
    meals: Sequence[tuple[float, float]] = DEFAULT_MEALS,
) -> InSilicoDays:
    """*days* of the basal-bolus controller with randomized meals (times SD 30 min, sizes x0.7-1.3) and CGM noise
    (member i seeded ``seed + i``), from ``START`` (midnight UTC)."""
    cohort = load_cohort(list(names))
    spec = sensor_spec(sensor)
    minutes = 1440 * days
    rng = np.random.default_rng(seed)
    plan = meal_matrix(minutes, daily_meals(cohort.size, days, meals, rng=rng), cohort.size)
    result = simulate_closed_loop(
        cohort,
        minutes=minutes,
        meals=plan,
        controller=make_controller("basal-bolus", cohort),
        sensor=CGMSensor(spec, [seed + i for i in range(cohort.size)]),
        pump=InsulinPump(pump_spec(pump)),
    )
    limits = (spec.min_mg_dl, spec.max_mg_dl)
    data = tuple(
        therapy_data_from_result(result, b, body_weight_kg=float(cohort.params["BW"][b]), cgm_limits_mg_dl=limits)
        for b in range(cohort.size)
    )
    return InSilicoDays(cohort=cohort, result=result, data=data)


def true_glucose(cohort: Cohort, data: Sequence[TherapyData]) -> FloatArray:
    """True BG (mg/dL) of each virtual patient ``(minutes + 1, B)`` under the inputs recorded in its *data*
    (open loop, from its steady state), all of the same length."""
    minutes = int(np.ceil(max(d.duration_min for d in data)))
    inputs = [d.minute_inputs(minutes) for d in data]
    meals = np.stack([m for m, _ in inputs], axis=1)
    insulin = np.stack([i for _, i in inputs], axis=1)
    batch = PatientBatch(cohort)
    bg = run_inputs(batch.x, batch._p_matrix, batch.meal_state, meals, insulin)
    return np.concatenate([cohort.basal_glucose_mg_dl[None, :], bg], axis=0)
