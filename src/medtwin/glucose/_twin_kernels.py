"""Compiled (numba) stepping of many parameter sets through one recorded input history.

Identification, replay and forecasting all simulate a batch of candidate patients (posterior samples, MCMC
walkers, particles) under the same minute-by-minute insulin and announced carbohydrate, which the closed-loop
kernels of :mod:`medtwin.glucose._kernels` do not take (they hold insulin constant over a control period). The
minute step itself is theirs (``_minute_step``: meal queue at 5 g/min, gastric-emptying bookkeeping, RK4), so
these trajectories are the simglucose-exact model's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange  # type: ignore[import-untyped]

from medtwin.glucose._kernels import _load, _minute_step, _store
from medtwin.sim.model import FloatArray

IntArray = npt.NDArray[np.int64]

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
    meal_col: IntArray,
    insulin_col: IntArray,
    stop: IntArray,
    n_sub: int,
    bg_out: FloatArray,
) -> None:  # pragma: no cover
    # member b reads its inputs from columns meal_col[b], insulin_col[b] and runs minutes [0, stop[b]); its state in
    # scalars meanwhile (medtwin.glucose._kernels.State)
    xb = x[b]
    pb = p[b]
    cm = meal_col[b]
    ci = insulin_col[b]
    state = _load(xb)
    for k in range(stop[b]):
        state, _ = _minute_step(b, state, pb, meals_g[k, cm], insulin_u_min[k, ci], meal_state, n_sub)
        bg_out[k, b] = state[12] / pb[30]
    _store(state, xb)


# Two functions, not two builds of one: numba's cache keys a function by name and signature only, so a threaded
# and a serial build of the same function would load whichever was compiled first.
@njit(cache=True, parallel=True)
def _run_inputs_parallel(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    meal_col: IntArray,
    insulin_col: IntArray,
    stop: IntArray,
    n_sub: int,
    bg_out: FloatArray,
) -> None:  # pragma: no cover
    for b in prange(x.shape[0]):
        # prange's index is unsigned: unified with the literal 0 inside, it would become a float
        member = np.int64(b)
        _member_inputs(member, x, p, meal_state, meals_g, insulin_u_min, meal_col, insulin_col, stop, n_sub, bg_out)  # type: ignore[arg-type]


@njit(cache=True)
def _run_inputs_serial(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    meal_col: IntArray,
    insulin_col: IntArray,
    stop: IntArray,
    n_sub: int,
    bg_out: FloatArray,
) -> None:  # pragma: no cover
    for b in range(x.shape[0]):
        _member_inputs(b, x, p, meal_state, meals_g, insulin_u_min, meal_col, insulin_col, stop, n_sub, bg_out)


def _columns(a: FloatArray, b: int, what: str) -> IntArray:
    if a.shape[1] == 1:
        return np.zeros(b, dtype=np.int64)
    if a.shape[1] != b:
        raise ValueError(f"{what}: {a.shape[1]} columns for {b} members")
    return np.arange(b, dtype=np.int64)


def run_inputs(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    n_sub: int = 1,
    *,
    meal_col: IntArray | None = None,
    insulin_col: IntArray | None = None,
    stop: IntArray | None = None,
    parallel: bool | None = None,
) -> FloatArray:
    """Advance states *x* ``(B, 13)`` (in place) under per-minute inputs; return BG ``(minutes, B)`` in mg/dL.

    *p* is ``(B, 32)`` in ``PARAM_ORDER``; *meal_state* ``(B, 5)`` the meal bookkeeping of
    :class:`~medtwin.glucose.simulation.PatientBatch` (updated in place); *meals_g* the carbohydrate announced in
    each minute and *insulin_u_min* the insulin delivered during it, ``(minutes,)`` shared by every member,
    ``(minutes, B)`` one column per member, or ``(minutes, C)`` with *meal_col* / *insulin_col* ``(B,)`` naming each
    member's column (members of different people in one batch). *stop* ``(B,)``: member b runs only its first
    ``stop[b]`` minutes (its BG after that is NaN). *parallel*: the threaded build (None: from
    :data:`PARALLEL_MIN_WORK` member-minutes on).
    """
    meals = np.ascontiguousarray(meals_g, dtype=np.float64)
    insulin = np.ascontiguousarray(insulin_u_min, dtype=np.float64)
    if meals.ndim == 1:
        meals = meals[:, None]
    if insulin.ndim == 1:
        insulin = insulin[:, None]
    n, b = meals.shape[0], x.shape[0]
    mc = _columns(meals, b, "meals") if meal_col is None else np.ascontiguousarray(meal_col, dtype=np.int64)
    ic = _columns(insulin, b, "insulin") if insulin_col is None else np.ascontiguousarray(insulin_col, dtype=np.int64)
    if stop is None:
        st = np.full(b, n, dtype=np.int64)
        bg = np.empty((n, b))
    else:
        st = np.minimum(np.ascontiguousarray(stop, dtype=np.int64), n)
        bg = np.full((n, b), np.nan)
    work = int(st.sum())
    threaded = work >= PARALLEL_MIN_WORK if parallel is None else parallel
    kernel = _run_inputs_parallel if threaded and b > 1 else _run_inputs_serial
    kernel(x, p, meal_state, meals, insulin, mc, ic, st, n_sub, bg)
    return bg
