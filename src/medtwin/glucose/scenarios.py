"""Ready-made closed-loop runs: a meal plan, the controller, sensor and pump by name, for N patients x D days.

``run_scenario`` keeps full per-minute traces; ``run_summary`` runs very large cohorts in chunks and keeps only
per-member summary metrics, so memory stays bounded by the chunk size.

Sensor noise is seeded per member (:func:`member_sensor_seeds`): ``seed_mode="member"`` (default) gives member i the
seed ``seed + i``, so replicates of one patient see different noise; ``seed_mode="patient"`` gives every member
``seed``, as simglucose seeds each patient's sensor on its own: member i of a batched run then equals a run of
that patient alone with the same seed (replicates of one patient see the same noise). ``sensor_seeds`` sets one
seed per member explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from medtwin.errors import ValidationError
from medtwin.glucose.controllers import BasalBolusController, BasalOnlyController, Controller
from medtwin.glucose.devices import CGMSensor, InsulinPump, pump_spec, sensor_spec
from medtwin.glucose.envs import DEFAULT_MEALS
from medtwin.glucose.metrics import summary_metrics_batch
from medtwin.glucose.patients import Cohort, load_cohort, resolve_patient_names
from medtwin.glucose.simulation import ClosedLoopResult, meal_matrix, simulate_closed_loop
from medtwin.sim.model import FloatArray

__all__ = [
    "CONTROLLERS",
    "SEED_MODES",
    "daily_meals",
    "make_controller",
    "member_sensor_seeds",
    "run_scenario",
    "run_summary",
]

CONTROLLERS = ("basal-bolus", "basal")
SEED_MODES = ("member", "patient")


def member_sensor_seeds(
    size: int, seed: int, *, mode: str = "member", explicit: Sequence[int] | None = None
) -> list[int]:
    """One sensor seed per member: *explicit* when given, else ``seed + i`` (mode ``member``) or ``seed`` for
    every member (mode ``patient``, simglucose's: each patient's sensor seeded on its own)."""
    if explicit is not None:
        seeds = [int(s) for s in explicit]
        if len(seeds) != size:
            raise ValidationError(f"sensor seeds: {len(seeds)} given for {size} member(s); give one per member")
        return seeds
    if mode not in SEED_MODES:
        raise ValidationError(f"seed mode {mode!r}: use {' or '.join(SEED_MODES)}")
    return [seed + i for i in range(size)] if mode == "member" else [seed] * size


def make_controller(name: str, cohort: Cohort, *, target_mg_dl: float = 140.0) -> Controller:
    """The controller called *name* (``basal-bolus`` or ``basal``) set up for *cohort*."""
    if name == "basal-bolus":
        return BasalBolusController(
            basal_u_min=cohort.basal_u_per_min,
            cr_g_per_u=cohort.cr_g_per_u,
            cf_mg_dl_per_u=cohort.cf_mg_dl_per_u,
            target_mg_dl=target_mg_dl,
        )
    if name == "basal":
        return BasalOnlyController(cohort.basal_u_per_min)
    raise ValidationError(f"unknown controller {name!r} (known: {list(CONTROLLERS)})")


def daily_meals(
    batch: int,
    days: int,
    meals: Sequence[tuple[float, float]] = DEFAULT_MEALS,
    *,
    rng: np.random.Generator | None = None,
    time_sd_min: float = 30.0,
    size_range: tuple[float, float] = (0.7, 1.3),
) -> FloatArray:
    """Per-member meals ``(batch, days * n_meals, 2)``: *meals* (minute of day in [0, 1440), grams) every day.

    With *rng*, times get N(0, time_sd_min) jitter and sizes a uniform factor in *size_range*.
    """
    base = np.asarray(meals, dtype=np.float64).reshape(-1, 2)
    outside = base[(base[:, 0] < 0) | (base[:, 0] >= 1440) | ~np.isfinite(base[:, 0])]
    if outside.size:
        raise ValidationError(f"meals: time {outside[0, 0]:g} is not a minute of day in [0, 1440)")
    if np.any(base[:, 1] < 0) or not np.all(np.isfinite(base[:, 1])):
        raise ValidationError("meals: carbohydrate amounts must be finite and >= 0 g")
    shift = np.array([1440.0, 0.0])
    plan = np.concatenate([base + d * shift for d in range(days)]) if base.size else np.zeros((0, 2))
    out = np.broadcast_to(plan, (batch, *plan.shape)).copy()
    if rng is not None and plan.size:
        out[..., 0] = np.clip(out[..., 0] + rng.normal(0.0, time_sd_min, out.shape[:2]), 0.0, None)
        out[..., 1] *= rng.uniform(size_range[0], size_range[1], out.shape[:2])
    return out


def run_scenario(
    patients: str | Sequence[str],
    *,
    days: int = 1,
    meals: Sequence[tuple[float, float]] = DEFAULT_MEALS,
    replicate: int = 1,
    randomize_meals: bool = False,
    controller: str = "basal-bolus",
    sensor: str = "Dexcom",
    pump: str = "Insulet",
    sensor_noise: bool = True,
    seed: int = 1,
    seed_mode: str = "member",
    sensor_seeds: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClosedLoopResult:
    """Simulate *patients* (names or groups, each repeated *replicate* times) for *days* days in closed loop.

    Sensor noise of member i is seeded with ``seed + i`` (*seed_mode* ``member``), ``seed`` (``patient``: as a
    run of that patient alone, simglucose's seeding) or ``sensor_seeds[i]``; meal randomization uses
    ``default_rng(seed)``.
    """
    if days < 1 or replicate < 1:
        raise ValidationError(f"days ({days}) and replicate ({replicate}) must be >= 1")
    names = resolve_patient_names(patients) * replicate
    cohort = load_cohort(names)
    minutes = 1440 * days
    rng = np.random.default_rng(seed) if randomize_meals else None
    plan = meal_matrix(minutes, daily_meals(cohort.size, days, meals, rng=rng), cohort.size)
    return simulate_closed_loop(
        cohort,
        minutes=minutes,
        meals=plan,
        controller=make_controller(controller, cohort),
        sensor=CGMSensor(
            sensor_spec(sensor),
            member_sensor_seeds(cohort.size, seed, mode=seed_mode, explicit=sensor_seeds),
            noise=sensor_noise,
        ),
        pump=InsulinPump(pump_spec(pump)),
        progress=progress,
    )


def run_summary(
    patients: str | Sequence[str],
    *,
    n_members: int,
    days: int = 1,
    chunk_size: int = 2000,
    randomize_meals: bool = True,
    controller: str = "basal-bolus",
    sensor_noise: bool = True,
    seed: int = 1,
    seed_mode: str = "member",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, FloatArray]:
    """Per-member summary metrics (see :func:`summary_metrics_batch`) of *n_members* patients cycled from
    *patients*, simulated in chunks of *chunk_size* so only one chunk's traces exist at a time.
    """
    names = resolve_patient_names(patients)
    out: dict[str, list[FloatArray]] = {}
    for start in range(0, n_members, chunk_size):
        size = min(chunk_size, n_members - start)
        chunk = [names[(start + i) % len(names)] for i in range(size)]
        result = run_scenario(
            chunk,
            days=days,
            randomize_meals=randomize_meals,
            controller=controller,
            sensor_noise=sensor_noise,
            seed=seed + start if seed_mode == "member" else seed,  # member mode: seed + global member index
            seed_mode=seed_mode,
        )
        for key, values in summary_metrics_batch(result.bg_mg_dl[1:]).items():
            out.setdefault(key, []).append(values)
        del result
        if progress is not None:
            progress(start + size, n_members)
    return {k: np.concatenate(v) for k, v in out.items()}
