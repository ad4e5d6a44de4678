"""The compiled minute step (scalars, medtwin.glucose._kernels) does the array form's arithmetic exactly.

A plain-Python transcription of the array form the kernels had before 2026-12-07 (state rows, RK4 stages in work
rows) is run on the same members, a fasting stretch with insulin boluses (no gastric-emptying tanh, whose libm and
LLVM versions may differ in the last bit): the compiled trajectories must be bit-identical, not merely close.
"""

from __future__ import annotations

import numpy as np

from medtwin.glucose._kernels import _MG_PER_G, _PMOL_PER_U
from medtwin.glucose._twin_kernels import run_inputs
from medtwin.glucose.twin_model import PersonalModel, population_prior


def _rhs(x: list[float], p: np.ndarray, cho: float, ins: float) -> list[float]:
    kmax = p[2]
    kgut = kmax  # fasting: no meal in the stomach (Dbar = 0)
    dx = [0.0] * 13
    dx[0] = -kmax * x[0] + cho
    dx[1] = kmax * x[0] - x[1] * kgut
    dx[2] = kgut * x[1] - p[1] * x[2]
    rat = p[6] * p[1] * x[2] / p[0]
    egp = max(p[7] - p[8] * x[3] - p[9] * x[8], 0.0)
    et = p[11] * (x[3] - p[12]) if x[3] > p[12] else 0.0
    d3 = egp + rat - p[10] - et - p[13] * x[3] + p[14] * x[4]
    dx[3] = d3 if x[3] >= 0 else 0.0
    uid = (p[15] + p[16] * x[6]) * x[4] / (p[17] + x[4])
    d4 = -uid + p[13] * x[3] - p[14] * x[4]
    dx[4] = d4 if x[4] >= 0 else 0.0
    d5 = -(p[19] + p[20]) * x[5] + p[18] * x[9] + p[26] * x[10] + p[27] * x[11]
    dx[5] = d5 if x[5] >= 0 else 0.0
    it = x[5] / p[22]
    dx[6] = -p[23] * x[6] + p[23] * (it - p[24])
    dx[7] = -p[25] * (x[7] - it)
    dx[8] = -p[25] * (x[8] - x[7])
    d9 = -(p[18] + p[21]) * x[9] + p[19] * x[5]
    dx[9] = d9 if x[9] >= 0 else 0.0
    d10 = ins - (p[26] + p[28]) * x[10]
    dx[10] = d10 if x[10] >= 0 else 0.0
    d11 = p[28] * x[10] - p[27] * x[11]
    dx[11] = d11 if x[11] >= 0 else 0.0
    d12 = -p[29] * x[12] + p[29] * x[3]
    dx[12] = d12 if x[12] >= 0 else 0.0
    return dx


def _minute(x: list[float], p: np.ndarray, insulin_u_min: float) -> list[float]:
    h = 1.0
    ins = insulin_u_min * _PMOL_PER_U / p[0]
    cho = 0.0 * _MG_PER_G
    k1 = _rhs(x, p, cho, ins)
    k2 = _rhs([x[i] + 0.5 * h * k1[i] for i in range(13)], p, cho, ins)
    k3 = _rhs([x[i] + 0.5 * h * k2[i] for i in range(13)], p, cho, ins)
    k4 = _rhs([x[i] + h * k3[i] for i in range(13)], p, cho, ins)
    return [x[i] + (h / 6.0) * (k1[i] + 2.0 * (k2[i] + k3[i]) + k4[i]) for i in range(13)]


def test_the_compiled_minute_step_is_bit_identical_to_the_array_form() -> None:
    prior = population_prior("all")
    model = PersonalModel(prior, body_weight_kg=70.0, basal_u_h=1.0)
    p, gb = model.parameters(prior.sample(8, np.random.default_rng(4)))
    x0 = model.initial_state(p, gb)
    minutes = 90
    insulin = np.full((minutes, 8), 1.0 / 60.0)
    insulin[10] += 4.0  # a correction bolus: the states move
    x = x0.copy()
    bg = run_inputs(x, p, np.zeros((8, 5)), np.zeros(minutes), insulin, parallel=False)
    for b in range(8):
        state = [float(v) for v in x0[b]]
        for k in range(minutes):
            state = _minute(state, p[b], float(insulin[k, b]))
            assert bg[k, b] == state[12] / p[b, 30], (b, k)
        assert x[b].tolist() == state
    assert np.ptp(bg) > 10.0  # not a flat line: the comparison covers a moving state
