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
docs/models/glucose_twin.md, "Numerics of the likelihood"); forecasts, replays and the simulator keep the
minute-exact kernel.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit, prange  # type: ignore[import-untyped]

from medtwin.glucose._kernels import _MG_PER_G, _PMOL_PER_U
from medtwin.sim.model import FloatArray

IntArray = npt.NDArray[np.int64]
Insulin = tuple[float, float, float, float, float, float, float]
"""Ip, X, I1, Id, Il, Isc1, Isc2."""
Glucose = tuple[float, float, float, float, float, float]
"""qsto1, qsto2, Qgut, Gp, Gt, Gs."""
Gut = tuple[float, float, float, float, float]
Rates = tuple[float, ...]

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
def _advance_insulin(q: FloatArray, z: Insulin, u: float) -> Insulin:  # pragma: no cover
    # q[:, :7] z + q[:, 7] u + q[:, 8], skipping the entries that are zero for every parameter set (Isc1 feeds Isc2,
    # both feed Ip and Il, which feed each other and X, I1 -> Id; only X has a constant term): 35 of 63 terms
    z0, z1, z2, z3, z4, z5, z6 = z
    return (
        q[0, 0] * z0 + q[0, 4] * z4 + q[0, 5] * z5 + q[0, 6] * z6 + q[0, 7] * u,
        q[1, 1] * z1 + q[1, 0] * z0 + q[1, 4] * z4 + q[1, 5] * z5 + q[1, 6] * z6 + q[1, 7] * u + q[1, 8],
        q[2, 2] * z2 + q[2, 0] * z0 + q[2, 4] * z4 + q[2, 5] * z5 + q[2, 6] * z6 + q[2, 7] * u,
        q[3, 3] * z3 + q[3, 2] * z2 + q[3, 0] * z0 + q[3, 4] * z4 + q[3, 5] * z5 + q[3, 6] * z6 + q[3, 7] * u,
        q[4, 0] * z0 + q[4, 4] * z4 + q[4, 5] * z5 + q[4, 6] * z6 + q[4, 7] * u,
        q[5, 5] * z5 + q[5, 7] * u,
        q[6, 5] * z5 + q[6, 6] * z6 + q[6, 7] * u,
    )


@njit(cache=True)
def _glucose_rhs(
    g: Glucose, k: Rates, gut: Gut, cho: float, x_ins: float, id_ins: float
) -> Glucose:  # pragma: no cover
    # g = (qsto1, qsto2, Qgut, Gp, Gt, Gs): rows 0-4 and 12 of _kernels._rhs with X = x_ins and Id = id_ins;
    # k = p[0:18] and ksc (see _rates), gut = the constants of _kernels._gut_constants; in scalars, not arrays:
    # the array version spent most of its time making views
    q1, q2, qgut, gp, gt, gs = g
    kmax = k[2]
    kmin = k[3]
    if gut[4] > 0:
        qsto = q1 + q2
        kgut = kmin + (kmax - kmin) / 2.0 * (
            math.tanh(gut[0] * (qsto - gut[2])) - math.tanh(gut[1] * (qsto - gut[3])) + 2.0
        )
    else:
        kgut = kmax
    rat = k[6] * k[1] * qgut / k[0]
    egp = k[7] - k[8] * gp - k[9] * id_ins
    if egp < 0.0:
        egp = 0.0
    et = k[11] * (gp - k[12]) if gp > k[12] else 0.0
    d3 = egp + rat - k[10] - et - k[13] * gp + k[14] * gt
    uid = (k[15] + k[16] * x_ins) * gt / (k[17] + gt)
    d4 = -uid + k[13] * gp - k[14] * gt
    d5 = -k[18] * gs + k[18] * gp
    return (
        -kmax * q1 + cho,
        kmax * q1 - q2 * kgut,
        kgut * q2 - k[1] * qgut,
        d3 if gp >= 0 else 0.0,
        d4 if gt >= 0 else 0.0,
        d5 if gs >= 0 else 0.0,
    )


@njit(cache=True)
def _glucose_rk4(
    g: Glucose, k: Rates, gut: Gut, cho: float, h: float, ins0: Insulin, insm: Insulin, ins1: Insulin
) -> Glucose:  # pragma: no cover
    # one RK4 step of length h; ins0 / insm / ins1: insulin states at t, t + h/2, t + h (X at 1, Id at 3)
    a = _glucose_rhs(g, k, gut, cho, ins0[1], ins0[3])
    b = _glucose_rhs(_axpy(g, 0.5 * h, a), k, gut, cho, insm[1], insm[3])
    c = _glucose_rhs(_axpy(g, 0.5 * h, b), k, gut, cho, insm[1], insm[3])
    d = _glucose_rhs(_axpy(g, h, c), k, gut, cho, ins1[1], ins1[3])
    w = h / 6.0
    return (
        g[0] + w * (a[0] + 2.0 * (b[0] + c[0]) + d[0]),
        g[1] + w * (a[1] + 2.0 * (b[1] + c[1]) + d[1]),
        g[2] + w * (a[2] + 2.0 * (b[2] + c[2]) + d[2]),
        g[3] + w * (a[3] + 2.0 * (b[3] + c[3]) + d[3]),
        g[4] + w * (a[4] + 2.0 * (b[4] + c[4]) + d[4]),
        g[5] + w * (a[5] + 2.0 * (b[5] + c[5]) + d[5]),
    )


@njit(cache=True)
def _axpy(g: Glucose, h: float, d: Glucose) -> Glucose:  # pragma: no cover
    return (g[0] + h * d[0], g[1] + h * d[1], g[2] + h * d[2], g[3] + h * d[3], g[4] + h * d[4], g[5] + h * d[5])


@njit(cache=True)
def _gut_constants(p: FloatArray, dbar: float) -> Gut:  # pragma: no cover
    # as _kernels._gut_constants
    if dbar > 0:
        return (5.0 / 2.0 / (1.0 - p[4]) / dbar, 5.0 / 2.0 / p[5] / dbar, p[4] * dbar, p[5] * dbar, 1.0)
    return (0.0, 0.0, 0.0, 0.0, 0.0)


@njit(cache=True)
def _rates(p: FloatArray) -> Rates:  # pragma: no cover
    # the parameters of the glucose part: BW, kabs, kmax, kmin, b, d, f, kp1, kp2, kp3, Fsnc, ke1, ke2, k1, k2, Vm0,
    # Vmx, Km0 (PARAM_ORDER 0-17), then ksc
    return (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15],
            p[16], p[17], p[29])  # fmt: skip


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
    rates = _rates(pb)
    vg = pb[30]
    g = (xb[0], xb[1], xb[2], xb[3], xb[4], xb[12])
    z = (xb[5], xb[6], xb[7], xb[8], xb[9], xb[10], xb[11])
    ins_scale = _PMOL_PER_U / pb[0]
    if wanted[0, cb] > 0:
        bg_out[0, b] = g[5] / vg
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
        gut = _gut_constants(pb, meal_state[b, 2] + meal_state[b, 3] * _MG_PER_G)
        # exact insulin states at the minutes of the step and at its middle (half a minute on for odd h)
        start = z
        mid = z
        for j in range(h):
            u = insulin_u_min[k + j, cb] * ins_scale
            if 2 * j + 1 == h:
                mid = _advance_insulin(half, z, u)
            z = _advance_insulin(full, z, u)
            if 2 * j + 2 == h:
                mid = z
        g = _glucose_rk4(g, rates, gut, to_eat * _MG_PER_G, float(h), start, mid, z)
        k += h
        if wanted[k, cb] > 0:
            bg_out[k, b] = g[5] / vg
    for i in range(5):
        xb[i] = g[i]
    xb[12] = g[5]
    for i in range(7):
        xb[_INSULIN + i] = z[i]


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
