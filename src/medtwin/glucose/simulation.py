"""Open- and closed-loop simulation of a cohort of UVA/Padova virtual patients, vectorized over the cohort.

The loop follows simglucose 0.2.11 minute by minute so results are comparable: meals are announced at their
time and eaten at 5 g/min; the meal-digestion amount Dbar (Qsto at meal start + carbohydrate eaten since) is
updated before each 1-minute step; inputs are held constant within a step; the CGM reads when the patient
time is a multiple of its sample time and holds its reading in between; every sample period the controller
sees the period's average CGM and the carbohydrate announced in it, and its action (through the pump) holds
for the next period. At the start the sensor reads ``1 + warmup_readings`` times, as simglucose's environment
does (one reading on construction, one on reset).

Both entry points return glucose, not only states: :func:`simulate_open_loop` an :class:`OpenLoopResult` (states,
BG, plasma glucose), :func:`simulate_closed_loop` a :class:`ClosedLoopResult` (BG, CGM, inputs, the final states,
and every minute's states with ``record_states=True``). The default solver is the compiled RK4 with 1-minute
steps (simglucose's results within 0.5 mg/dL); ``solver=DormandPrince(rtol=1e-8, atol=1e-10)`` (exported by
:mod:`medtwin.glucose`) is the accurate reference, reproducing every state of simglucose within 0.1 %.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.glucose._kernels import PARALLEL_MIN_BATCH, PARAM_ORDER, bb_closed_loop, run_period
from medtwin.glucose.controllers import (
    BasalBolusController,
    Controller,
    ControllerAction,
    ControllerObservation,
)
from medtwin.glucose.devices import CGMSensor, InsulinPump
from medtwin.glucose.patients import Cohort
from medtwin.glucose.uva_padova import PMOL_PER_UNIT_INSULIN, UvaPadova2008
from medtwin.sim.model import FloatArray
from medtwin.sim.solvers import RK4, Solver

__all__ = [
    "EAT_RATE_G_PER_MIN",
    "ClosedLoopResult",
    "OpenLoopResult",
    "PatientBatch",
    "meal_matrix",
    "simulate_closed_loop",
    "simulate_open_loop",
]

EAT_RATE_G_PER_MIN = 5.0
_MG_PER_G = codes.convert(1.0, "g", "mg")


class PatientBatch:
    """The state of a batch of virtual patients, stepped one minute at a time with constant inputs.

    With the default solver (``RK4`` with ``dt`` dividing one minute) the compiled kernel does the stepping;
    any other :class:`~medtwin.sim.solvers.Solver` goes through the numpy model, minute by minute.
    """

    def __init__(self, cohort: Cohort, solver: Solver | None = None) -> None:
        self.model = UvaPadova2008()
        self.cohort = cohort
        self.params = self.model.make_params(cohort.params)
        self.solver = solver if solver is not None else RK4(dt=1.0)
        self._p_matrix = np.ascontiguousarray(np.stack([self.params[k] for k in PARAM_ORDER], axis=1))
        self._n_sub = 0
        if type(self.solver) is RK4:
            n_sub = round(1.0 / self.solver.dt)
            if n_sub >= 1 and abs(n_sub * self.solver.dt - 1.0) < 1e-12:
                self._n_sub = n_sub
        self.reset()

    @property
    def compiled(self) -> bool:
        """Whether the compiled RK4 kernel is used."""
        return self._n_sub > 0

    def reset(self) -> None:
        """Return every patient to its initial steady state."""
        self.x: FloatArray = np.array(self.cohort.x0, dtype=np.float64, order="C")
        self.t_min = 0.0
        # columns: planned meal (g), last eaten (g/min), Qsto at meal start (mg), eaten since (g), eating (0/1)
        self.meal_state = np.zeros((self.cohort.size, 5))
        self.meal_state[:, 2] = self.x[:, 0] + self.x[:, 1]

    @property
    def bg_mg_dl(self) -> FloatArray:
        """Subcutaneous glucose Gs / Vg (mg/dL), simglucose's "BG"."""
        return np.asarray(self.x[:, 12] / self.params["Vg"], dtype=np.float64)

    @property
    def plasma_glucose_mg_dl(self) -> FloatArray:
        """Plasma glucose Gp / Vg (mg/dL)."""
        return np.asarray(self.x[:, 3] / self.params["Vg"], dtype=np.float64)

    def announce(self, meal_g: FloatArray) -> FloatArray:
        """Add announced carbohydrate to the queue; return what is eaten this minute (g/min, at most 5)."""
        planned = self.meal_state[:, 0] + meal_g
        to_eat = np.where(planned > 0, np.minimum(EAT_RATE_G_PER_MIN, planned), 0.0)
        self.meal_state[:, 0] = np.maximum(planned - to_eat, 0.0)
        return np.asarray(to_eat, dtype=np.float64)

    def step(self, cho_g_min: FloatArray, insulin_u_min: FloatArray) -> None:
        """Advance one minute eating *cho_g_min* and receiving *insulin_u_min* (both held constant)."""
        ms = self.meal_state
        last = ms[:, 1].copy()
        start = (cho_g_min > 0) & (last <= 0)
        ms[:, 2] = np.where(start, self.x[:, 0] + self.x[:, 1], ms[:, 2])
        ms[:, 3] = np.where(start, 0.0, ms[:, 3])
        ms[:, 4] = np.where(start, 1.0, ms[:, 4])
        ms[:, 3] += np.where(ms[:, 4] > 0, cho_g_min, 0.0)
        ms[:, 4] = np.where((cho_g_min <= 0) & (last > 0), 0.0, ms[:, 4])
        ms[:, 1] = cho_g_min
        u = np.empty((self.cohort.size, 3))
        u[:, 0] = cho_g_min * _MG_PER_G
        u[:, 1] = insulin_u_min * PMOL_PER_UNIT_INSULIN / self.params["BW"]
        u[:, 2] = ms[:, 2] + ms[:, 3] * _MG_PER_G
        x = self.solver.advance(self.model, self.t_min, self.t_min + 1.0, self.x, self.params, u)
        self.x = np.ascontiguousarray(x)
        self.t_min += 1.0

    def advance(self, meals_g: FloatArray, insulin_u_min: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Advance ``len(meals_g)`` minutes with announced meals ``(minutes, batch)`` and constant insulin.

        Returns per-minute BG at the end of each minute and eaten carbohydrate (g/min), both ``(minutes, batch)``.
        """
        n_min = meals_g.shape[0]
        bg = np.empty((n_min, self.cohort.size))
        eaten = np.empty((n_min, self.cohort.size))
        if self.compiled:
            run_period(
                self.x, self._p_matrix, self.meal_state, np.ascontiguousarray(meals_g),
                np.ascontiguousarray(insulin_u_min, dtype=np.float64), self._n_sub, bg, eaten,
            )  # fmt: skip
            self.solver.rhs_evaluations += 4 * self._n_sub * n_min
            self.t_min += n_min
        else:
            for k in range(n_min):
                eaten[k] = self.announce(meals_g[k])
                self.step(eaten[k], insulin_u_min)
                bg[k] = self.bg_mg_dl
        return bg, eaten


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenLoopResult:
    """Open-loop traces, index 0 = start: *states* ``(n_minutes + 1, batch, 13)`` (order
    :data:`~medtwin.glucose.uva_padova.STATE_NAMES`), *bg_mg_dl* (Gs / Vg, simglucose's BG: the noise-free
    subcutaneous glucose a sensor reads) and *plasma_glucose_mg_dl* (Gp / Vg), both ``(n_minutes + 1, batch)``."""

    names: tuple[str, ...]
    states: FloatArray
    bg_mg_dl: FloatArray
    plasma_glucose_mg_dl: FloatArray
    rhs_evaluations: int


def simulate_open_loop(
    cohort: Cohort, cho_g_min: ArrayLike, insulin_u_min: ArrayLike, *, solver: Solver | None = None
) -> OpenLoopResult:
    """States and glucose under per-minute eaten carbohydrate and insulin ``(n_minutes, batch)`` (or
    ``(n_minutes,)`` for one patient); *solver* ``DormandPrince(...)`` for the accurate reference."""
    cho = np.asarray(cho_g_min, dtype=np.float64)
    ins = np.asarray(insulin_u_min, dtype=np.float64)
    if cho.ndim == 1:
        cho, ins = cho[:, None], ins[:, None]
    if cho.shape != ins.shape or cho.shape[1] != cohort.size:
        raise ValidationError(f"open loop: inputs {cho.shape} and {ins.shape} must be (minutes, {cohort.size})")
    if np.any(cho > EAT_RATE_G_PER_MIN) or np.any(cho < 0):
        raise ValidationError(f"open loop: eaten carbohydrate must be within [0, {EAT_RATE_G_PER_MIN}] g/min")
    patients = PatientBatch(cohort, solver)
    evals0 = patients.solver.rhs_evaluations
    out = np.empty((cho.shape[0] + 1, cohort.size, 13))
    out[0] = patients.x
    for k in range(cho.shape[0]):
        patients.advance(cho[k : k + 1], ins[k])
        out[k + 1] = patients.x
    vg = patients.params["Vg"]
    return OpenLoopResult(
        names=cohort.names,
        states=out,
        bg_mg_dl=np.asarray(out[:, :, 12] / vg, dtype=np.float64),
        plasma_glucose_mg_dl=np.asarray(out[:, :, 3] / vg, dtype=np.float64),
        rhs_evaluations=patients.solver.rhs_evaluations - evals0,
    )


def meal_matrix(n_minutes: int, meals: Sequence[tuple[float, float]] | FloatArray, batch: int) -> FloatArray:
    """Announced carbohydrate per minute ``(n_minutes, batch)`` from meals.

    *meals* is a sequence of ``(time_min, carbs_g)`` shared by every member, or an array ``(batch, n_meals, 2)``
    of per-member times and amounts. A meal at minute t is announced in the step starting at t.
    """
    arr = np.asarray(meals, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((n_minutes, batch))
    if arr.ndim == 2:
        arr = np.broadcast_to(arr, (batch, *arr.shape))
    if arr.ndim != 3 or arr.shape[0] != batch or arr.shape[2] != 2:
        raise ValidationError(f"meals must be [(time_min, carbs_g), ...] or ({batch}, n_meals, 2), got {arr.shape}")
    if np.any(arr[..., 1] < 0):
        raise ValidationError("meals: carbohydrate amounts must be >= 0 g")
    out = np.zeros((n_minutes, batch))
    idx = np.rint(arr[..., 0]).astype(np.int64)
    member = np.broadcast_to(np.arange(batch)[:, None], idx.shape)
    inside = (idx >= 0) & (idx < n_minutes)
    np.add.at(out, (idx[inside], member[inside]), arr[..., 1][inside])
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ClosedLoopResult:
    """Per-minute traces ``(n_minutes + 1, batch)`` (index 0 = start) and per-minute inputs ``(n_minutes, batch)``.

    ``bg_mg_dl`` is subcutaneous glucose (simglucose's BG), ``cgm_mg_dl`` the held sensor reading.
    Inputs at index k apply during minute [k, k+1). ``sample_time_min`` is the control period.
    ``final_states`` ``(batch, 13)`` is where the run ends (to continue it); ``states``
    ``(n_minutes + 1, batch, 13)`` is every minute's, recorded only with ``record_states=True`` (13 floats per
    member-minute: 150 MB for a 1,000-patient day).
    """

    names: tuple[str, ...]
    bg_mg_dl: FloatArray
    cgm_mg_dl: FloatArray
    cho_announced_g: FloatArray
    cho_eaten_g_min: FloatArray
    insulin_u_min: FloatArray
    sample_time_min: int
    rhs_evaluations: int
    final_states: FloatArray
    states: FloatArray | None = None

    def sampled(self) -> dict[str, FloatArray]:
        """simglucose-style per-period log: times, and BG/CGM/CHO/insulin averaged over each sample period."""
        st = self.sample_time_min
        n = (self.bg_mg_dl.shape[0] - 1) // st

        def avg(a: FloatArray) -> FloatArray:
            return np.asarray(a[: n * st].reshape(n, st, -1).mean(axis=1), dtype=np.float64)

        return {
            "t_min": np.arange(n + 1) * float(st),
            "bg_mg_dl": np.concatenate([self.bg_mg_dl[:1], avg(self.bg_mg_dl[1:])]),
            "cgm_mg_dl": np.concatenate([self.cgm_mg_dl[:1], avg(self.cgm_mg_dl[1:])]),
            "cho_g_min": avg(self.cho_announced_g),
            "insulin_u_min": avg(self.insulin_u_min),
        }


def _fused_basal_bolus(
    patients: PatientBatch,
    controller: BasalBolusController,
    sensor: CGMSensor,
    pump: InsulinPump,
    meals: FloatArray,
    st: int,
    warmup: int,
    bg: FloatArray,
    cgm: FloatArray,
    eaten: FloatArray,
    insulin: FloatArray,
    progress: Callable[[int, int], None] | None,
) -> None:
    n = patients.cohort.size
    minutes = meals.shape[0]
    n_readings = 1 + warmup + minutes // st
    noise = sensor.take_noise(n_readings) if sensor.noise else np.zeros((n_readings, n))
    spec = pump.spec
    pump_vec = np.array(
        [spec.min_bolus, spec.max_bolus, spec.inc_bolus, spec.min_basal, spec.max_basal, spec.inc_basal]
    )
    quest = np.empty((n, 4))
    quest[:, 0] = controller.cr_g_per_u
    quest[:, 1] = controller.cf_mg_dl_per_u
    quest[:, 2] = controller.target_mg_dl
    quest[:, 3] = controller.correction_threshold_mg_dl
    if not np.allclose(controller.basal_u_min, patients.cohort.basal_u_per_min):
        raise ValidationError("fused basal-bolus loop: controller basal differs from the cohort's u2ss * BW / 6000")
    limits = np.array([sensor.spec.min_mg_dl, sensor.spec.max_mg_dl])
    # members are independent: with a progress callback, run them in chunks so the caller sees progress
    chunk = n if progress is None else max(PARALLEL_MIN_BATCH, -(-n // 20))
    for b0 in range(0, n, chunk):
        rows = slice(b0, min(b0 + chunk, n))
        x = np.ascontiguousarray(patients.x[rows])
        state = np.ascontiguousarray(patients.meal_state[rows])
        whole = rows.stop - rows.start == n  # one chunk: the kernel writes the result arrays directly
        outs = [a if whole else np.empty((a.shape[0], x.shape[0])) for a in (bg, cgm, eaten, insulin)]
        bb_closed_loop(
            x, np.ascontiguousarray(patients._p_matrix[rows]), state, np.ascontiguousarray(meals[:, rows]),
            np.ascontiguousarray(noise[:, rows]), limits, st, warmup, pump_vec, np.ascontiguousarray(quest[rows]),
            patients._n_sub, *outs,
        )  # fmt: skip
        patients.x[rows] = x
        patients.meal_state[rows] = state
        if not whole:
            for full, part in zip((bg, cgm, eaten, insulin), outs, strict=True):
                full[:, rows] = part
        if progress is not None:
            progress(minutes * rows.stop // n, minutes)
    patients.solver.rhs_evaluations += 4 * patients._n_sub * minutes
    patients.t_min += minutes


def simulate_closed_loop(
    cohort: Cohort,
    *,
    minutes: int,
    meals: FloatArray,
    controller: Controller,
    sensor: CGMSensor,
    pump: InsulinPump,
    solver: Solver | None = None,
    warmup_readings: int = 1,
    fused: bool = True,
    record_states: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ClosedLoopResult:
    """Run the cohort for *minutes* under *controller* with *sensor* and *pump*; see the module docstring.

    With the compiled RK4 solver and a :class:`BasalBolusController`, the whole loop runs in one compiled kernel
    (``fused=False`` forces the general path, which calls ``controller.act`` every sample period).
    ``record_states=True`` keeps every minute's 13 states in the result (general path, stepping minute by minute).
    *meals* is the announced carbohydrate per minute ``(minutes, batch)`` (see :func:`meal_matrix`).
    *progress*, if given, is called as ``progress(done, minutes)`` as work completes (per simulated hour on the
    general path; per chunk of members, scaled to minutes, on the fused path).
    """
    n = cohort.size
    if meals.shape != (minutes, n):
        raise ValidationError(f"closed loop: meals must be ({minutes}, {n}), got {meals.shape}")
    if sensor.batch != n:
        raise ValidationError(f"closed loop: sensor batch {sensor.batch} != cohort size {n}")
    st_float = sensor.spec.sample_time_min
    st = round(st_float)
    if st < 1 or abs(st - st_float) > 1e-9:
        raise ValidationError(f"closed loop: sensor sample time {st_float} min must be a whole number of minutes")
    patients = PatientBatch(cohort, solver)
    sensor.reset()
    controller.reset()
    bg = np.empty((minutes + 1, n))
    cgm = np.empty((minutes + 1, n))
    eaten = np.empty((minutes, n))
    insulin = np.empty((minutes, n))
    evals0 = patients.solver.rhs_evaluations
    states = np.empty((minutes + 1, n, 13)) if record_states else None
    if states is not None:
        states[0] = patients.x
    if fused and patients.compiled and type(controller) is BasalBolusController and not record_states:
        _fused_basal_bolus(
            patients, controller, sensor, pump, meals, st, warmup_readings, bg, cgm, eaten, insulin, progress
        )
    else:
        bg[0] = patients.bg_mg_dl
        cgm[0] = sensor.measure(bg[0])
        reading = cgm[0]
        for _ in range(warmup_readings):
            reading = sensor.measure(bg[0])
        action = ControllerAction(basal_u_min=cohort.basal_u_per_min, bolus_u_min=np.zeros(n))
        for k0 in range(0, minutes, st):
            k1 = min(k0 + st, minutes)
            delivered = pump.basal(action.basal_u_min) + pump.bolus(action.bolus_u_min)
            if states is None:
                bg[k0 + 1 : k1 + 1], eaten[k0:k1] = patients.advance(meals[k0:k1], delivered)
            else:  # minute by minute, to keep each minute's states (same stepping, same results)
                for k in range(k0, k1):
                    bg[k + 1 : k + 2], eaten[k : k + 1] = patients.advance(meals[k : k + 1], delivered)
                    states[k + 1] = patients.x
            insulin[k0:k1] = delivered
            cgm[k0 + 1 : k1] = reading
            if k1 - k0 == st:
                reading = sensor.measure(bg[k1])
            cgm[k1] = reading
            obs = ControllerObservation(
                time_min=float(k1),
                cgm_mg_dl=cgm[k0 + 1 : k1 + 1].mean(axis=0),
                meal_g=meals[k0:k1].sum(axis=0),
                sample_time_min=float(st),
            )
            action = controller.act(obs)
            if progress is not None and k1 // 60 != k0 // 60:
                progress(k1, minutes)
    return ClosedLoopResult(
        names=cohort.names,
        bg_mg_dl=bg,
        cgm_mg_dl=cgm,
        cho_announced_g=meals,
        cho_eaten_g_min=eaten,
        insulin_u_min=insulin,
        sample_time_min=st,
        rhs_evaluations=patients.solver.rhs_evaluations - evals0,
        final_states=np.array(patients.x, dtype=np.float64),
        states=states,
    )
