"""Compiled (numba) BG at chosen minutes for identification: insulin stepped exactly, glucose by RK4 in 1-3 min steps.

The minute-exact kernel (:mod:`medtwin.glucose._twin_kernels`) integrates all 13 states with classical RK4 at one
minute, the step the fastest insulin kinetics need (m1 + m30 up to 1.1/min in the prior: a plain RK4 at 2-3
minutes is unstable there). The identification only needs BG at the fitted readings (>= 15 minutes apart), so this
kernel splits the model:

- the insulin subsystem (Ip, X, I1, Id, Il, Isc1, Isc2) is linear given the insulin delivered, piecewise constant
  per minute: it is advanced with its exact propagator, z(t + h) = Phi(h) z(t) + Gamma(h) [u, 1], from the matrix
  exponential of the augmented system (scaling and squaring, Taylor degree 12; per member, once per call);
- the gut and glucose states (qsto1, qsto2, Qgut, Gp, Gt, Gs) are advanced by classical RK4 with X and Id at the
  stage times taken from the exact insulin trajectory (minute points, half-minute points from Phi(1/2)), in steps
  of up to *max_step* minutes that end on every minute whose BG is wanted and on every minute of eating (one-minute
  steps there, with the meal bookkeeping of ``_patient_minute``: 5 g/min, Dbar from the stomach at the meal's start).

Its BG differs from the minute-exact kernel's by a fraction of a mg/dL over the prior (test_split_kernel_accuracy;
docs/models/glucose_twin.md, Sampling); forecasts, replays and the simulator keep the minute-exact kernel.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit, prange  # type: ignore[import-untyped]

from medtwin.glucose._kernels import _MG_PER_G, _PMOL_PER_U
from medtwin.sim.model import FloatArray

IntArray = npt.NDArray[np.int64]

__all__ = ["MAX_STEP_MIN", "run_readings"]

MAX_STEP_MIN = 3
"""Longest glucose step (minutes) of the identification: its BG is within ~0.1 mg/dL of the minute-exact kernel's
over prior draws (docs/models/glucose_twin.md)."""

_INSULIN = 5
"""States 5-11 (Ip, X, I1, Id, Il, Isc1, Isc2) are the insulin subsystem, linear given the insulin input."""


@njit(cache=True)
def _expm(a: FloatArray) -> FloatArray:  # pragma: no cover
    # matrix exponential by scaling and squaring with a degree-12 Taylor polynomial (norm <= 1/2 after scaling:
    # truncation below 1e-16)
    n = a.shape[0]
    norm = 0.0
    for i in range(n):
        row = 0.0
        for j in range(n):
            row += abs(a[i, j])
        norm = max(norm, row)
    squarings = 0
    if norm > 0.5:
        squarings = math.ceil(math.log2(norm / 0.5))
    scaled = a / (2.0**squarings)
    result = np.eye(n)
    term = np.eye(n)
    for k in range(1, 13):
        term = term @ scaled / k
        result = result + term
    for _ in range(squarings):
        result = result @ result
    return result


@njit(cache=True)
def _insulin_propagator(p: FloatArray, h: float, out: FloatArray) -> None:  # pragma: no cover
    # out (7, 9): z(t + h) = out[:, :7] z(t) + out[:, 7] * ins + out[:, 8], z = (Ip, X, I1, Id, Il, Isc1, Isc2) and
    # ins the insulin input (pmol/kg/min) held over the step; the equations of _kernels._rhs, rows 5-11
    m1, m2, m4, m30 = p[18], p[19], p[20], p[21]
    vi, p2u, ib, ki = p[22], p[23], p[24], p[25]
    ka1, ka2, kd = p[26], p[27], p[28]
    a = np.zeros((9, 9))
    a[0, 0] = -(m2 + m4)
    a[0, 4] = m1
    a[0, 5] = ka1
    a[0, 6] = ka2
    a[1, 1] = -p2u
    a[1, 0] = p2u / vi
    a[1, 8] = -p2u * ib
    a[2, 2] = -ki
    a[2, 0] = ki / vi
    a[3, 3] = -ki
    a[3, 2] = ki
    a[4, 4] = -(m1 + m30)
    a[4, 0] = m2
    a[5, 5] = -(ka1 + kd)
    a[5, 7] = 1.0
    a[6, 6] = -ka2
    a[6, 5] = kd
    e = _expm(a * h)
    for i in range(7):
        for j in range(9):
            out[i, j] = e[i, j]


@njit(cache=True)
def _advance_insulin(prop: FloatArray, z: FloatArray, ins: float, out: FloatArray) -> None:  # pragma: no cover
    for i in range(7):
        s = prop[i, 7] * ins + prop[i, 8]
        for j in range(7):
            s += prop[i, j] * z[j]
        out[i] = s


@njit(cache=True)
def _glucose_rhs(
    g: FloatArray, p: FloatArray, c: FloatArray, cho: float, x_ins: float, id_ins: float, dg: FloatArray
) -> None:  # pragma: no cover
    # g = (qsto1, qsto2, Qgut, Gp, Gt, Gs): rows 0-4 and 12 of _kernels._rhs with X = x_ins and Id = id_ins
    kmax = p[2]
    kmin = p[3]
    if c[4] > 0:
        qsto = g[0] + g[1]
        kgut = kmin + (kmax - kmin) / 2.0 * (math.tanh(c[0] * (qsto - c[2])) - math.tanh(c[1] * (qsto - c[3])) + 2.0)
    else:
        kgut = kmax
    dg[0] = -kmax * g[0] + cho
    dg[1] = kmax * g[0] - g[1] * kgut
    dg[2] = kgut * g[1] - p[1] * g[2]
    rat = p[6] * p[1] * g[2] / p[0]
    egp = p[7] - p[8] * g[3] - p[9] * id_ins
    if egp < 0.0:
        egp = 0.0
    et = p[11] * (g[3] - p[12]) if g[3] > p[12] else 0.0
    d3 = egp + rat - p[10] - et - p[13] * g[3] + p[14] * g[4]
    dg[3] = d3 if g[3] >= 0 else 0.0
    uid = (p[15] + p[16] * x_ins) * g[4] / (p[17] + g[4])
    d4 = -uid + p[13] * g[3] - p[14] * g[4]
    dg[4] = d4 if g[4] >= 0 else 0.0
    d5 = -p[29] * g[5] + p[29] * g[3]
    dg[5] = d5 if g[5] >= 0 else 0.0


@njit(cache=True)
def _glucose_rk4(
    g: FloatArray,
    p: FloatArray,
    c: FloatArray,
    cho: float,
    h: float,
    ins0: FloatArray,
    insm: FloatArray,
    ins1: FloatArray,
    work: FloatArray,
) -> None:  # pragma: no cover
    # one RK4 step of length h; ins0 / insm / ins1: insulin states at t, t + h/2, t + h (X at 1, Id at 3)
    k1, k2, k3, k4, gt = work[0], work[1], work[2], work[3], work[4]
    _glucose_rhs(g, p, c, cho, ins0[1], ins0[3], k1)
    for i in range(6):
        gt[i] = g[i] + 0.5 * h * k1[i]
    _glucose_rhs(gt, p, c, cho, insm[1], insm[3], k2)
    for i in range(6):
        gt[i] = g[i] + 0.5 * h * k2[i]
    _glucose_rhs(gt, p, c, cho, insm[1], insm[3], k3)
    for i in range(6):
        gt[i] = g[i] + h * k3[i]
    _glucose_rhs(gt, p, c, cho, ins1[1], ins1[3], k4)
    for i in range(6):
        g[i] = g[i] + (h / 6.0) * (k1[i] + 2.0 * (k2[i] + k3[i]) + k4[i])


@njit(cache=True)
def _gut_constants(p: FloatArray, dbar: float, c: FloatArray) -> None:  # pragma: no cover
    # as _kernels._gut_constants
    if dbar > 0:
        c[0] = 5.0 / 2.0 / (1.0 - p[4]) / dbar
        c[1] = 5.0 / 2.0 / p[5] / dbar
        c[2] = p[4] * dbar
        c[3] = p[5] * dbar
        c[4] = 1.0
    else:
        c[4] = 0.0


@njit(cache=True)
def _member_readings(
    b: int,
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    wanted: FloatArray,
    col: IntArray,
    stop: IntArray,
    max_step: int,
    bg_out: FloatArray,
) -> None:  # pragma: no cover
    # member b from minute 0 to stop[b]; bg_out[m, b] = BG after m minutes for every m with wanted[m, col[b]] > 0
    xb = x[b]
    pb = p[b]
    cb = col[b]
    end = stop[b]
    full = np.empty((7, 9))
    half = np.empty((7, 9))
    _insulin_propagator(pb, 1.0, full)
    _insulin_propagator(pb, 0.5, half)
    work = np.empty((5, 6))
    c = np.empty(5)
    g = np.empty(6)
    for i in range(5):
        g[i] = xb[i]
    g[5] = xb[12]
    traj = np.empty((max_step + 1, 7))  # exact insulin states at the minutes of the current step
    for i in range(7):
        traj[0, i] = xb[_INSULIN + i]
    mid = np.empty(7)
    ins_scale = _PMOL_PER_U / pb[0]
    if wanted[0, cb] > 0:
        bg_out[0, b] = g[5] / pb[30]
    k = 0
    while k < end:
        # the meal bookkeeping of _patient_minute for minute k
        planned = meal_state[b, 0] + meals_g[k, cb]
        to_eat = 0.0
        if planned > 0:
            to_eat = min(5.0, planned)
            planned = max(planned - to_eat, 0.0)
        meal_state[b, 0] = planned
        last = meal_state[b, 1]
        if to_eat > 0 and last <= 0:
            meal_state[b, 2] = g[0] + g[1]
            meal_state[b, 3] = 0.0
            meal_state[b, 4] = 1.0
        if meal_state[b, 4] > 0:
            meal_state[b, 3] += to_eat
        if to_eat <= 0 and last > 0:
            meal_state[b, 4] = 0.0
        meal_state[b, 1] = to_eat
        h = 1
        if to_eat <= 0:
            # no eating: the step runs on while no carbohydrate is announced, no BG is wanted and the data last
            # (the bookkeeping of those minutes is the no-meal one above: nothing changes)
            while h < max_step and k + h < end and wanted[k + h, cb] <= 0 and meals_g[k + h, cb] <= 0:
                h += 1
        _gut_constants(pb, meal_state[b, 2] + meal_state[b, 3] * _MG_PER_G, c)
        for j in range(h):
            _advance_insulin(full, traj[j], insulin_u_min[k + j, cb] * ins_scale, traj[j + 1])
        if h % 2 == 0:
            for i in range(7):
                mid[i] = traj[h // 2, i]
        else:
            _advance_insulin(half, traj[h // 2], insulin_u_min[k + h // 2, cb] * ins_scale, mid)
        _glucose_rk4(g, pb, c, to_eat * _MG_PER_G, float(h), traj[0], mid, traj[h], work)
        for i in range(7):
            traj[0, i] = traj[h, i]
        k += h
        if wanted[k, cb] > 0:
            bg_out[k, b] = g[5] / pb[30]
    for i in range(5):
        xb[i] = g[i]
    xb[12] = g[5]
    for i in range(7):
        xb[_INSULIN + i] = traj[0, i]


@njit(cache=True, parallel=True)
def _run_readings_parallel(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    wanted: FloatArray,
    col: IntArray,
    stop: IntArray,
    max_step: int,
    bg_out: FloatArray,
) -> None:  # pragma: no cover
    for b in prange(x.shape[0]):
        member = np.int64(b)  # prange's index is unsigned (see _twin_kernels)
        _member_readings(member, x, p, meal_state, meals_g, insulin_u_min, wanted, col, stop, max_step, bg_out)  # type: ignore[arg-type]


@njit(cache=True)
def _run_readings_serial(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    wanted: FloatArray,
    col: IntArray,
    stop: IntArray,
    max_step: int,
    bg_out: FloatArray,
) -> None:  # pragma: no cover
    for b in range(x.shape[0]):
        _member_readings(b, x, p, meal_state, meals_g, insulin_u_min, wanted, col, stop, max_step, bg_out)


PARALLEL_MIN_WORK = 8 * 1440
"""Member-minutes from which the threaded build pays for its start-up (as for the minute-exact kernel)."""


def run_readings(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals_g: FloatArray,
    insulin_u_min: FloatArray,
    wanted: npt.NDArray[np.bool_],
    *,
    col: IntArray,
    stop: IntArray,
    max_step: int = MAX_STEP_MIN,
    parallel: bool | None = None,
) -> FloatArray:
    """BG (mg/dL) ``(minutes + 1, B)`` after m minutes for every m with ``wanted[m, col[b]]`` (NaN elsewhere).

    *x* ``(B, 13)``, *p* ``(B, 32)`` and *meal_state* ``(B, 5)`` as for :func:`~medtwin.glucose._twin_kernels.
    run_inputs` (x and meal_state are advanced in place); *meals_g* (g announced) and *insulin_u_min* (U/min
    delivered) ``(minutes, C)``, member b reading column ``col[b]`` and running its first ``stop[b]`` minutes;
    *wanted* ``(minutes + 1, C)``; *max_step*: the longest glucose step in minutes (1 to 3).
    """
    if not 1 <= max_step <= MAX_STEP_MIN:
        raise ValueError(
            f"max_step {max_step}: 1 to {MAX_STEP_MIN} minutes (4 and more were unstable for some prior draws)"
        )
    meals = np.ascontiguousarray(meals_g, dtype=np.float64)
    insulin = np.ascontiguousarray(insulin_u_min, dtype=np.float64)
    n = meals.shape[0]
    if insulin.shape != meals.shape or wanted.shape != (n + 1, meals.shape[1]):
        raise ValueError(f"inputs {meals.shape} / {insulin.shape} and wanted {wanted.shape} do not match")
    b = x.shape[0]
    st = np.minimum(np.ascontiguousarray(stop, dtype=np.int64), n)
    bg = np.full((n + 1, b), np.nan)
    threaded = int(st.sum()) >= PARALLEL_MIN_WORK if parallel is None else parallel
    kernel = _run_readings_parallel if threaded and b > 1 else _run_readings_serial
    kernel(x, p, meal_state, meals, insulin, np.ascontiguousarray(wanted, dtype=np.float64),
           np.ascontiguousarray(col, dtype=np.int64), st, int(max_step), bg)  # fmt: skip
    return bg
