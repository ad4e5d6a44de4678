"""Compiled (numba) kernels of the UVA/Padova loop: the same equations as :mod:`medtwin.glucose.uva_padova`.

Why compiled: a closed-loop day is 1,440 one-minute steps; with numpy each step costs ~100 array calls plus the
meal bookkeeping, measured at ~1 s per single patient-day and 1.0-2.9 ms per patient-day for a 1,020-patient
cohort on the shared 2-core machine, against goals of 20 ms and 1.2 ms. The kernels run a whole control period
(or a whole day for the built-in basal-bolus controller) per call, member by member, with classical RK4.
The numpy model stays the reference implementation; tests check both give the same trajectories.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange  # type: ignore[import-untyped]

from medtwin import codes
from medtwin.glucose.uva_padova import PMOL_PER_UNIT_INSULIN
from medtwin.sim.model import FloatArray

__all__ = ["PARALLEL_MIN_BATCH", "PARAM_ORDER", "bb_closed_loop", "run_period"]

_MG_PER_G = codes.convert(1.0, "g", "mg")  # compile-time constants of the kernels
_PMOL_PER_U = PMOL_PER_UNIT_INSULIN

PARAM_ORDER = (
    "BW", "kabs", "kmax", "kmin", "b", "d", "f", "kp1", "kp2", "kp3", "Fsnc", "ke1", "ke2",
    "k1", "k2", "Vm0", "Vmx", "Km0", "m1", "m2", "m4", "m30", "Vi", "p2u", "Ib", "ki",
    "ka1", "ka2", "kd", "ksc", "Vg", "u2ss",
)  # fmt: skip


State = tuple[float, float, float, float, float, float, float, float, float, float, float, float, float]
"""The 13 states of one member (qsto1, qsto2, Qgut, Gp, Gt, Ip, X, I1, Id, Il, Isc1, Isc2, Gs) in scalars: the minute
step works on scalars, not on array rows, so they stay in registers (an array row is re-read after every store,
as the compiler cannot tell it from the others: the step ran 3-5 times slower; docs/benchmarks.md, "Living twin").
The arithmetic is the same operations in the same order: the results are bit-identical."""
Gut = tuple[float, float, float, float, float]


@njit(cache=True, inline="always")
def _gut_constants(p: FloatArray, dbar: float) -> Gut:  # pragma: no cover
    # constant within a minute: a, c of the gastric-emptying tanh terms and b*Dbar, d*Dbar, and whether they apply
    if dbar > 0:
        return (5.0 / 2.0 / (1.0 - p[4]) / dbar, 5.0 / 2.0 / p[5] / dbar, p[4] * dbar, p[5] * dbar, 1.0)
    return (0.0, 0.0, 0.0, 0.0, 0.0)


@njit(cache=True)
def _rhs(x: State, p: FloatArray, c: Gut, cho: float, ins: float) -> State:  # pragma: no cover
    kmax = p[2]
    kmin = p[3]
    if c[4] > 0:
        qsto = x[0] + x[1]
        kgut = kmin + (kmax - kmin) / 2.0 * (math.tanh(c[0] * (qsto - c[2])) - math.tanh(c[1] * (qsto - c[3])) + 2.0)
    else:
        kgut = kmax
    rat = p[6] * p[1] * x[2] / p[0]
    egp = p[7] - p[8] * x[3] - p[9] * x[8]
    if egp < 0.0:
        egp = 0.0
    et = p[11] * (x[3] - p[12]) if x[3] > p[12] else 0.0
    d3 = egp + rat - p[10] - et - p[13] * x[3] + p[14] * x[4]
    uid = (p[15] + p[16] * x[6]) * x[4] / (p[17] + x[4])
    d4 = -uid + p[13] * x[3] - p[14] * x[4]
    d5 = -(p[19] + p[20]) * x[5] + p[18] * x[9] + p[26] * x[10] + p[27] * x[11]
    it = x[5] / p[22]
    d9 = -(p[18] + p[21]) * x[9] + p[19] * x[5]
    d10 = ins - (p[26] + p[28]) * x[10]
    d11 = p[28] * x[10] - p[27] * x[11]
    d12 = -p[29] * x[12] + p[29] * x[3]
    return (
        -kmax * x[0] + cho,
        kmax * x[0] - x[1] * kgut,
        kgut * x[1] - p[1] * x[2],
        d3 if x[3] >= 0 else 0.0,
        d4 if x[4] >= 0 else 0.0,
        d5 if x[5] >= 0 else 0.0,
        -p[23] * x[6] + p[23] * (it - p[24]),
        -p[25] * (x[7] - it),
        -p[25] * (x[8] - x[7]),
        d9 if x[9] >= 0 else 0.0,
        d10 if x[10] >= 0 else 0.0,
        d11 if x[11] >= 0 else 0.0,
        d12 if x[12] >= 0 else 0.0,
    )


@njit(cache=True, inline="always")
def _axpy(x: State, a: float, k: State) -> State:  # pragma: no cover
    # x + a * k, state by state
    return (x[0] + a * k[0], x[1] + a * k[1], x[2] + a * k[2], x[3] + a * k[3], x[4] + a * k[4], x[5] + a * k[5],
            x[6] + a * k[6], x[7] + a * k[7], x[8] + a * k[8], x[9] + a * k[9], x[10] + a * k[10],
            x[11] + a * k[11], x[12] + a * k[12])  # fmt: skip


@njit(cache=True, inline="always")
def _rk4_combine(x: State, w: float, k1: State, k2: State, k3: State, k4: State) -> State:  # pragma: no cover
    # x + w * (k1 + 2 (k2 + k3) + k4), state by state
    return (
        x[0] + w * (k1[0] + 2.0 * (k2[0] + k3[0]) + k4[0]), x[1] + w * (k1[1] + 2.0 * (k2[1] + k3[1]) + k4[1]),
        x[2] + w * (k1[2] + 2.0 * (k2[2] + k3[2]) + k4[2]), x[3] + w * (k1[3] + 2.0 * (k2[3] + k3[3]) + k4[3]),
        x[4] + w * (k1[4] + 2.0 * (k2[4] + k3[4]) + k4[4]), x[5] + w * (k1[5] + 2.0 * (k2[5] + k3[5]) + k4[5]),
        x[6] + w * (k1[6] + 2.0 * (k2[6] + k3[6]) + k4[6]), x[7] + w * (k1[7] + 2.0 * (k2[7] + k3[7]) + k4[7]),
        x[8] + w * (k1[8] + 2.0 * (k2[8] + k3[8]) + k4[8]), x[9] + w * (k1[9] + 2.0 * (k2[9] + k3[9]) + k4[9]),
        x[10] + w * (k1[10] + 2.0 * (k2[10] + k3[10]) + k4[10]),
        x[11] + w * (k1[11] + 2.0 * (k2[11] + k3[11]) + k4[11]),
        x[12] + w * (k1[12] + 2.0 * (k2[12] + k3[12]) + k4[12]),
    )  # fmt: skip


@njit(cache=True, inline="always")
def _rk4_minute(x: State, p: FloatArray, cho: float, ins: float, dbar: float, n_sub: int) -> State:  # pragma: no cover
    h = 1.0 / n_sub
    c = _gut_constants(p, dbar)
    for _ in range(n_sub):
        k1 = _rhs(x, p, c, cho, ins)
        k2 = _rhs(_axpy(x, 0.5 * h, k1), p, c, cho, ins)
        k3 = _rhs(_axpy(x, 0.5 * h, k2), p, c, cho, ins)
        k4 = _rhs(_axpy(x, h, k3), p, c, cho, ins)
        x = _rk4_combine(x, h / 6.0, k1, k2, k3, k4)
    return x


@njit(cache=True)
def _load(row: FloatArray) -> State:  # pragma: no cover
    return (row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11],
            row[12])  # fmt: skip


@njit(cache=True)
def _store(x: State, row: FloatArray) -> None:  # pragma: no cover
    for i in range(13):
        row[i] = x[i]


@njit(cache=True, inline="always")
def _minute_step(
    b: int, x: State, p: FloatArray, meal: float, insulin_u_min: float, meal_state: FloatArray, n_sub: int
) -> tuple[State, float]:  # pragma: no cover
    # one minute of member b: the meal bookkeeping, then RK4; the new state and the carbohydrate eaten (g)
    # meal_state columns: planned_g, last_cho_g_min, last_qsto_mg, food_taken_g, eating (0/1)
    planned = meal_state[b, 0] + meal
    to_eat = 0.0
    if planned > 0:
        to_eat = min(5.0, planned)
        planned = max(planned - to_eat, 0.0)
    meal_state[b, 0] = planned
    last = meal_state[b, 1]
    if to_eat > 0 and last <= 0:
        meal_state[b, 2] = x[0] + x[1]
        meal_state[b, 3] = 0.0
        meal_state[b, 4] = 1.0
    if meal_state[b, 4] > 0:
        meal_state[b, 3] += to_eat
    if to_eat <= 0 and last > 0:
        meal_state[b, 4] = 0.0
    meal_state[b, 1] = to_eat
    dbar = meal_state[b, 2] + meal_state[b, 3] * _MG_PER_G
    return _rk4_minute(x, p, to_eat * _MG_PER_G, insulin_u_min * _PMOL_PER_U / p[0], dbar, n_sub), to_eat


@njit(cache=True)
def _patient_minute(
    b: int, x: FloatArray, p: FloatArray, meal: float, insulin_u_min: float, meal_state: FloatArray, n_sub: int
) -> float:  # pragma: no cover
    # _minute_step on the state row x (updated in place); the carbohydrate eaten (g)
    state, to_eat = _minute_step(b, _load(x), p, meal, insulin_u_min, meal_state, n_sub)
    _store(state, x)
    return to_eat


@njit(cache=True)
def _member_period(
    b: int,
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals: FloatArray,
    insulin_u_min: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
    eaten_out: FloatArray,
) -> None:  # pragma: no cover
    xb = x[b]
    pb = p[b]
    for k in range(meals.shape[0]):
        eaten_out[k, b] = _patient_minute(b, xb, pb, meals[k, b], insulin_u_min[b], meal_state, n_sub)
        bg_out[k, b] = xb[12] / pb[30]


@njit(cache=True)
def _quantize(rate: float, inc: float, lo: float, hi: float) -> float:  # pragma: no cover
    q = np.round(rate * _PMOL_PER_U / inc) * inc / _PMOL_PER_U
    out: float = max(min(q, hi), lo)
    return out


@njit(cache=True)
def _member_bb(
    b: int,
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals: FloatArray,
    noise: FloatArray,
    sensor_limits: FloatArray,
    st: int,
    warmup: int,
    pump: FloatArray,
    quest: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
    cgm_out: FloatArray,
    eaten_out: FloatArray,
    insulin_out: FloatArray,
) -> None:  # pragma: no cover
    # the whole closed loop of member b with the basal-bolus controller (see bb_closed_loop)
    n_min = meals.shape[0]
    lo = sensor_limits[0]
    hi = sensor_limits[1]
    xb = x[b]
    pb = p[b]
    basal = pb[31] * pb[0] / _PMOL_PER_U
    bg = xb[12] / pb[30]
    bg_out[0, b] = bg
    cgm_out[0, b] = min(max(bg + noise[0, b], lo), hi)
    r = warmup
    reading = min(max(bg + noise[r, b], lo), hi)
    r += 1
    delivered = _quantize(basal, pump[5], pump[3], pump[4]) + _quantize(0.0, pump[2], pump[0], pump[1])
    cgm_sum = 0.0
    meal_sum = 0.0
    for k in range(n_min):
        eaten_out[k, b] = _patient_minute(b, xb, pb, meals[k, b], delivered, meal_state, n_sub)
        insulin_out[k, b] = delivered
        bg = xb[12] / pb[30]
        bg_out[k + 1, b] = bg
        if (k + 1) % st == 0:
            reading = min(max(bg + noise[r, b], lo), hi)
            r += 1
        cgm_out[k + 1, b] = reading
        cgm_sum += reading
        meal_sum += meals[k, b]
        if (k + 1) % st == 0:
            cgm = cgm_sum / st
            bolus = 0.0
            if meal_sum > 0:
                bolus = meal_sum / quest[b, 0]
                if cgm > quest[b, 3]:
                    bolus += (cgm - quest[b, 2]) / quest[b, 1]
            bolus = bolus / st
            delivered = _quantize(basal, pump[5], pump[3], pump[4]) + _quantize(bolus, pump[2], pump[0], pump[1])
            cgm_sum = 0.0
            meal_sum = 0.0


# Each loop kernel as two functions, threaded over members for cohorts and serial for small batches (thread start-up
# and contention on a busy machine cost more than one patient-day takes). Two functions, not two builds of one:
# numba's on-disk cache names a function's entries by its qualified name and keys them by signature only, not by
# the parallel option, so a threaded and a serial build of one function would both load whichever was compiled
# first (tests/glucose/test_kernel_builds.py).
@njit(cache=True, parallel=True)
def _run_period_parallel(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals: FloatArray,
    insulin_u_min: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
    eaten_out: FloatArray,
) -> None:  # pragma: no cover
    for b in prange(x.shape[0]):
        # prange's index is unsigned: unified with the literal 0 inside, it would become a float
        _member_period(np.int64(b), x, p, meal_state, meals, insulin_u_min, n_sub, bg_out, eaten_out)  # type: ignore[arg-type]


@njit(cache=True)
def _run_period_serial(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals: FloatArray,
    insulin_u_min: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
    eaten_out: FloatArray,
) -> None:  # pragma: no cover
    for b in range(x.shape[0]):
        _member_period(b, x, p, meal_state, meals, insulin_u_min, n_sub, bg_out, eaten_out)


@njit(cache=True, parallel=True)
def _bb_parallel(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals: FloatArray,
    noise: FloatArray,
    sensor_limits: FloatArray,
    st: int,
    warmup: int,
    pump: FloatArray,
    quest: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
    cgm_out: FloatArray,
    eaten_out: FloatArray,
    insulin_out: FloatArray,
) -> None:  # pragma: no cover
    for b in prange(x.shape[0]):
        member: int = np.int64(b)  # type: ignore[assignment]
        _member_bb(member, x, p, meal_state, meals, noise, sensor_limits, st, warmup, pump, quest, n_sub, bg_out,
                   cgm_out, eaten_out, insulin_out)  # fmt: skip


@njit(cache=True)
def _bb_serial(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals: FloatArray,
    noise: FloatArray,
    sensor_limits: FloatArray,
    st: int,
    warmup: int,
    pump: FloatArray,
    quest: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
    cgm_out: FloatArray,
    eaten_out: FloatArray,
    insulin_out: FloatArray,
) -> None:  # pragma: no cover
    for b in range(x.shape[0]):
        _member_bb(b, x, p, meal_state, meals, noise, sensor_limits, st, warmup, pump, quest, n_sub, bg_out,
                   cgm_out, eaten_out, insulin_out)  # fmt: skip


PARALLEL_MIN_BATCH = 64


def run_period(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals: FloatArray,
    insulin_u_min: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
    eaten_out: FloatArray,
) -> None:
    """Advance every member ``len(meals)`` minutes (meals ``(minutes, B)``); record BG and eaten CHO per minute."""
    kernel = _run_period_parallel if x.shape[0] >= PARALLEL_MIN_BATCH else _run_period_serial
    kernel(x, p, meal_state, meals, insulin_u_min, n_sub, bg_out, eaten_out)


def bb_closed_loop(
    x: FloatArray,
    p: FloatArray,
    meal_state: FloatArray,
    meals: FloatArray,
    noise: FloatArray,
    sensor_limits: FloatArray,
    st: int,
    warmup: int,
    pump: FloatArray,
    quest: FloatArray,
    n_sub: int,
    bg_out: FloatArray,
    cgm_out: FloatArray,
    eaten_out: FloatArray,
    insulin_out: FloatArray,
) -> None:
    """The whole closed loop with the basal-bolus controller, member by member (see simulation.py).

    noise: (readings, B) sensor noise (zeros for a noise-free sensor); pump: [min_bolus, max_bolus, inc_bolus,
    min_basal, max_basal, inc_basal]; quest: (B, 4) columns CR, CF, target, correction threshold.
    """
    kernel = _bb_parallel if x.shape[0] >= PARALLEL_MIN_BATCH else _bb_serial
    kernel(
        x,
        p,
        meal_state,
        meals,
        noise,
        sensor_limits,
        st,
        warmup,
        pump,
        quest,
        n_sub,
        bg_out,
        cgm_out,
        eaten_out,
        insulin_out,
    )
