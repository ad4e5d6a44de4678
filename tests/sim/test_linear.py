"""Exact linear compartment solutions: agreement of the modal and matrix-exponential paths with an
ODE solver, mass balance, steady state, degenerate eigenvalues and input validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from medtwin.errors import ValidationError
from medtwin.sim.linear import (
    InputSchedule,
    modal_decomposition,
    output_integral,
    output_integral_expm,
    output_values,
    output_values_expm,
)


def two_cmt(cl: float, v1: float, q: float, v2: float) -> np.ndarray:
    return np.array([[-(cl + q) / v1, q / v2], [q / v1, -q / v2]])


def ode_reference(
    A: np.ndarray, doses: list[tuple[float, float, float, int]], times: np.ndarray, c: np.ndarray
) -> np.ndarray:
    """solve_ivp with tight tolerances, boluses as jumps, infusions as rates."""
    n = A.shape[0]
    breaks = sorted({0.0, *(t for t, _, _, _ in doses), *(t + d for t, _, d, _ in doses if d > 0), float(times.max())})

    def rate(t: float) -> np.ndarray:
        r = np.zeros(n)
        for t0, amt, dur, comp in doses:
            if dur > 0 and t0 <= t < t0 + dur:
                r[comp] += amt / dur
        return r

    x = np.zeros(n)
    out = np.full(times.size, np.nan)
    for a, b in itertools.pairwise(breaks):
        for t0, amt, dur, comp in doses:
            if dur == 0 and t0 == a:
                x[comp] += amt
        mid = (a + b) / 2
        sel = (times >= a) & (times < b)
        sol = solve_ivp(
            lambda t, y, m=mid: A @ y + rate(m),
            (a, b),
            x,
            rtol=1e-11,
            atol=1e-12,
            t_eval=times[sel] if sel.any() else None,
            method="LSODA",
        )
        if sel.any():
            out[sel] = c @ sol.y[:, : sel.sum()]
        x = (
            sol.y[:, -1]
            if sol.t[-1] == b
            else solve_ivp(lambda t, y, m=mid: A @ y + rate(m), (a, b), x, rtol=1e-11, atol=1e-12).y[:, -1]
        )
    out[times == breaks[-1]] = c @ x
    return out


def test_two_compartment_infusions_match_ode_solver() -> None:
    A = two_cmt(3.0, 60.0, 6.5, 40.0)
    c = np.array([1 / 60.0, 0.0])
    doses = [(0.0, 2000.0, 2.0, 0), (24.2, 1000.0, 2.0, 0), (30.0, 500.0, 0.0, 0)]
    times = np.array([0.5, 2.0, 13.0, 24.2, 25.0, 30.0, 48.0])
    inp = InputSchedule.build([d[0] for d in doses], [d[1] for d in doses], duration=[d[2] for d in doses])
    ref = ode_reference(A, doses, times, c)
    np.testing.assert_allclose(output_values(A, inp, c, times)[0], ref, rtol=1e-8)
    np.testing.assert_allclose(output_values_expm(A, inp, c, times), ref, rtol=1e-8)


def test_oral_three_compartment_matches_ode_solver() -> None:
    ka, k10, k12, k21, k13, k31 = 1.2, 0.2, 0.5, 0.3, 0.1, 0.05
    A = np.array(
        [
            [-ka, 0, 0, 0],
            [ka, -(k10 + k12 + k13), k21, k31],
            [0, k12, -k21, 0],
            [0, k13, 0, -k31],
        ]
    )
    c = np.array([0.0, 1 / 20.0, 0.0, 0.0])
    doses = [(0.0, 500.0, 0.0, 0), (12.0, 500.0, 0.0, 0), (20.0, 100.0, 1.0, 1)]
    times = np.array([0.25, 1.0, 6.0, 12.0, 13.5, 20.5, 40.0])
    inp = InputSchedule.build([0.0, 12.0, 20.0], [500.0, 500.0, 100.0], duration=[0, 0, 1.0], compartment=[0, 0, 1])
    ref = ode_reference(A, doses, times, c)
    np.testing.assert_allclose(output_values(A, inp, c, times)[0], ref, rtol=1e-8)


def test_auc_to_infinity_is_dose_over_clearance() -> None:
    cl, v1 = 4.0, 50.0
    A = two_cmt(cl, v1, 6.5, 40.0)
    inp = InputSchedule.build([0.0], [1000.0], duration=[1.5])
    auc = output_integral(A, inp, [1 / v1, 0.0], [0.0], [5000.0])[0, 0]
    assert auc == pytest.approx(1000.0 / cl, rel=1e-10)


def test_steady_state_matches_many_repeated_doses() -> None:
    A = two_cmt(3.0, 60.0, 6.5, 40.0)
    c = np.array([1 / 60.0, 0.0])
    tau, n = 12.0, 200
    repeated = InputSchedule.build(np.arange(n) * tau, np.full(n, 1000.0), duration=np.full(n, 2.0))
    last = (n - 1) * tau
    ss = InputSchedule.build([0.0], [1000.0], duration=[2.0], ss_interval=[tau])
    t_rel = np.array([0.0, 1.0, 2.0, 7.0, 11.99])
    np.testing.assert_allclose(
        output_values(A, ss, c, t_rel)[0], output_values(A, repeated, c, last + t_rel)[0], rtol=1e-9
    )
    np.testing.assert_allclose(output_values_expm(A, ss, c, t_rel), output_values(A, ss, c, t_rel)[0], rtol=1e-9)
    auc_tau = output_integral(A, ss, c, [0.0], [tau])[0, 0]
    assert auc_tau == pytest.approx(1000.0 / 3.0, rel=1e-10)  # AUC_tau,ss = dose / CL


def test_repeated_eigenvalue_falls_back_to_expm_and_matches_closed_form() -> None:
    k = 0.3  # ka == k10: the modal form is not diagonalizable
    A = np.array([[-k, 0.0], [k, -k]])
    system = modal_decomposition(A)
    assert not system.exact[0]
    t = np.array([0.5, 2.0, 10.0])
    inp = InputSchedule.build([0.0], [100.0], compartment=[0])
    expected = 100.0 * k * t * np.exp(-k * t)  # amount in the central compartment
    np.testing.assert_allclose(output_values(A, inp, [0.0, 1.0], t)[0], expected, rtol=1e-10)


def test_batch_equals_one_by_one() -> None:
    mats = np.stack([two_cmt(cl, 50.0, 5.0, 30.0) for cl in (1.0, 3.0, 9.0)])
    inp = InputSchedule.build([0.0, 12.0], [500.0, 500.0], duration=[1.0, 1.0])
    c = np.array([1 / 50.0, 0.0])
    t = np.linspace(0, 30, 7)
    batch = output_values(mats, inp, c, t)
    for b in range(3):
        np.testing.assert_allclose(batch[b], output_values(mats[b], inp, c, t)[0], rtol=1e-12)
    ib = output_integral(mats, inp, c, [0.0, 12.0], [12.0, 30.0])
    for b in range(3):
        np.testing.assert_allclose(ib[b], output_integral_expm(mats[b], inp, c, [0.0, 12.0], [12.0, 30.0]), rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    cl=st.floats(0.2, 20.0),
    v1=st.floats(5.0, 200.0),
    q=st.floats(0.1, 20.0),
    v2=st.floats(5.0, 200.0),
    dur=st.floats(0.0, 6.0),
    gap=st.floats(0.5, 48.0),
)
def test_modal_and_expm_agree(cl: float, v1: float, q: float, v2: float, dur: float, gap: float) -> None:
    A = two_cmt(cl, v1, q, v2)
    inp = InputSchedule.build([0.0, gap], [1000.0, 750.0], duration=[dur, dur])
    c = np.array([1 / v1, 0.0])
    t = np.array([0.1, gap / 2, gap, gap + 0.3, gap + 30.0])
    a = output_values(A, inp, c, t)[0]
    b = output_values_expm(A, inp, c, t)
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12)
    assert np.all(a >= 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time": [0.0], "amount": [-1.0]}, "amounts must be >= 0"),
        ({"time": [0.0], "amount": [1.0], "duration": [-1.0]}, "must be >= 0"),
        ({"time": [0.0], "amount": [1.0], "duration": [13.0], "ss_interval": [12.0]}, "longer than its interval"),
        ({"time": [0.0, 5.0], "amount": [1.0, 1.0], "ss_interval": [0.0, 12.0]}, "earliest dose"),
        ({"time": [0.0, 1.0], "amount": [1.0]}, "amount has 1 doses"),
        ({"time": [float("nan")], "amount": [1.0]}, "finite"),
    ],
)
def test_input_validation(kwargs: dict[str, list[float]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        InputSchedule.build(**kwargs)  # type: ignore[arg-type]


def test_bad_matrix_and_compartment_are_refused() -> None:
    with pytest.raises(ValidationError, match="non-finite"):
        modal_decomposition(np.array([[np.nan]]))
    inp = InputSchedule.build([0.0], [1.0], compartment=[3])
    with pytest.raises(ValidationError, match="compartment out of range"):
        output_values(two_cmt(1, 1, 1, 1), inp, [1.0, 0.0], [1.0])


def test_steady_state_holds_before_a_lagged_dose() -> None:
    # an SS dose whose start is shifted (e.g. by a lag time): between the end of the previous
    # dose and this one the system is already in the periodic state
    A = two_cmt(3.0, 60.0, 6.5, 40.0)
    c = np.array([1 / 60.0, 0.0])
    tau, n = 12.0, 200
    ss = InputSchedule.build([5.0], [1000.0], duration=[2.0], ss_interval=[tau])
    repeated = InputSchedule.build(5.0 - tau * np.arange(n)[::-1], np.full(n, 1000.0), duration=np.full(n, 2.0))
    t = np.array([-4.9, 0.0, 4.99, 5.0, 6.0, 16.0])
    np.testing.assert_allclose(output_values(A, ss, c, t)[0], output_values(A, repeated, c, t)[0], rtol=1e-9)
    np.testing.assert_allclose(output_values_expm(A, ss, c, t), output_values(A, ss, c, t)[0], rtol=1e-9)
    auc = output_integral(A, ss, c, [0.0], [tau])[0, 0]
    assert auc == pytest.approx(1000.0 / 3.0, rel=1e-10)
    assert output_integral_expm(A, ss, c, [0.0], [tau])[0] == pytest.approx(auc, rel=1e-9)
