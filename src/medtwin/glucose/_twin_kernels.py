"""Compiled (numba) stepping of many parameter sets through one recorded input history.

Identification, replay and forecasting all simulate a batch of candidate patients (posterior samples, MCMC
walkers, particles) under the same minute-by-minute insulin and announced carbohydrate, which the closed-loop
kernels of :mod:`medtwin.glucose._kernels` do not take (they hold insulin constant over a control period). The
minute step itself is theirs (``_patient_minute``: meal queue at 5 g/min, gastric-emptying bookkeeping, RK4), so
these trajectories are the simglucose-exact model's.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange  # type: ignore[import-untyped]

from medtwin.glucose._kernels import _patient_minute
from medtwin.sim.model import FloatArray

__all__ = ["PARALLEL_MIN_WORK", "run_inputs"]

PARALLEL_MIN_WORK = 8 * 1440
"""Member-minutes from which the threaded build pays for its start-up (measured on the 2-core machine)."""


@njit(cache=True)
def _member_inputs(
    b: int,
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
) -> None:  # pragma: no cover
    # inputs are (minutes, C): C = 1 shared by every member, or one column per member
    work = np.empty((6, 13))
    xb = x[b]
    pb = p[b]
    cm = 0 if meals_g.shape[1] == 1 else b
    ci = 0 if insulin_u_min.shape[1] == 1 else b
    for k in range(meals_g.shape[0]):
        _patient_minute(b, xb, pb, meals_g[k, cm], insulin_u_min[k, ci], meal_state, n_sub, work)
        bg_out[k, b] = xb[12] / pb[30]


# Two functions, not two builds of one: numba's cache keys a function by name and signature only, so a threaded
# and a serial build of the same function would load whichever was compiled first.
@njit(cache=True, parallel=True)
def _run_inputs_parallel(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
) -> None:  # pragma: no cover
    for b in prange(x.shape[0]):
        # prange's index is unsigned: unified with the literal 0 inside, it would become a float
        _member_inputs(np.int64(b), x, p, meal_state, meals_g, insulin_u_min, n_sub, bg_out)  # type: ignore[arg-type]


@njit(cache=True)
def _run_inputs_serial(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
) -> None:  # pragma: no cover
    for b in range(x.shape[0]):
        _member_inputs(b, x, p, meal_state, meals_g, insulin_u_min, n_sub, bg_out)


def run_inputs(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    n_sub: int = 1,
) -> FloatArray:
    """Advance states *x* ``(B, 13)`` (in place) under per-minute inputs; return BG ``(minutes, B)`` in mg/dL.

    *p* is ``(B, 32)`` in ``PARAM_ORDER``; *meal_state* ``(B, 5)`` the meal bookkeeping of
    :class:`~medtwin.glucose.simulation.PatientBatch` (updated in place); *meals_g* the carbohydrate announced in
    each minute and *insulin_u_min* the insulin delivered during it, ``(minutes,)`` shared by every member or
    ``(minutes, B)``.
    """
    meals = np.ascontiguousarray(meals_g, dtype=np.float64)
    insulin = np.ascontiguousarray(insulin_u_min, dtype=np.float64)
    if meals.ndim == 1:
        meals = meals[:, None]
    if insulin.ndim == 1:
        insulin = insulin[:, None]
    bg = np.empty((meals.shape[0], x.shape[0]))
    kernel = _run_inputs_parallel if x.shape[0] * meals.shape[0] >= PARALLEL_MIN_WORK and x.shape[0] > 1 else None
    (kernel or _run_inputs_serial)(x, p, meal_state, meals, insulin, n_sub, bg)
    return bg
