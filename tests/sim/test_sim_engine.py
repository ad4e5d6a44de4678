"""Tests of the batched engine: solvers against scipy's solve_ivp, schedules, trajectories, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp

import medtwin.sim as sim
from medtwin.errors import ValidationError
from medtwin.sim import (
    RK4,
    Bolus,
    DormandPrince,
    ExactLinear,
    Infusion,
    IntegrationError,
    Meal,
    MichaelisMentenElimination,
    PiecewiseConstant,
    Schedule,
    TwoCompartmentLinear,
    simulate,
)

LINEAR_PARAMS = {"k10": [0.01, 0.02, 0.005], "k12": [0.02, 0.03, 0.05], "k21": [0.01, 0.015, 0.02]}
MM_PARAMS = {"vmax_mg_min": [2.0, 5.0, 1.0], "km_mg": [50.0, 200.0, 10.0]}


def _reference(
    model: sim.Model, params: dict[str, list[float]], rate: float, x0: list[float], t_end: float
) -> np.ndarray:
    """solve_ivp (DOP853, rtol 1e-12) of each member with a constant input on [0, 60) then none."""
    p = model.make_params(params)
    finals = []
    for i in range(p.batch):
        pi = p.take(np.array([i]))

        def f(t: float, y: np.ndarray, r: float, pi: sim.Params = pi) -> np.ndarray:
            return model.rhs(t, y[None, :], pi, np.array([[r]]))[0]

        y = solve_ivp(f, (0, 60), x0, args=(rate,), method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
        y = solve_ivp(f, (60, t_end), y, args=(0.0,), method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
        finals.append(y)
    return np.array(finals)


@pytest.mark.parametrize(
    ("model", "params", "x0"),
    [
        (TwoCompartmentLinear(), LINEAR_PARAMS, [100.0, 0.0]),
        (MichaelisMentenElimination(), MM_PARAMS, [300.0]),
    ],
)
@pytest.mark.parametrize(
    ("solver", "rtol"),
    [(RK4(dt=1.0), 1e-7), (DormandPrince(rtol=1e-10, atol=1e-12), 1e-8)],
)
def test_solvers_match_solve_ivp(
    model: sim.Model, params: dict[str, list[float]], x0: list[float], solver: sim.Solver, rtol: float
) -> None:
    schedule = Schedule([Infusion(start=0, end=60, input="rate_mg_min", rate=3.0)])
    traj = simulate(model, params, schedule, [0.0, 240.0], x0=x0, solver=solver)
    ref = _reference(model, params, 3.0, x0, 240.0)
    np.testing.assert_allclose(traj.states[-1], ref, rtol=rtol, atol=1e-9)
    assert traj.rhs_evaluations > 0


def test_exact_linear_matches_solve_ivp_and_uses_no_rhs() -> None:
    model = TwoCompartmentLinear()
    schedule = Schedule([Infusion(start=0, end=60, input="rate_mg_min", rate=3.0)])
    traj = simulate(model, LINEAR_PARAMS, schedule, [0.0, 240.0], x0=[100.0, 0.0], solver=ExactLinear())
    np.testing.assert_allclose(traj.states[-1], _reference(model, LINEAR_PARAMS, 3.0, [100.0, 0.0], 240.0), rtol=1e-10)
    assert traj.rhs_evaluations == 0


def test_exact_linear_refuses_nonlinear_model() -> None:
    with pytest.raises(ValidationError, match="does not declare a linear system"):
        simulate(MichaelisMentenElimination(), MM_PARAMS, None, [0.0, 1.0], x0=[1.0], solver=ExactLinear())


def test_rk4_integration_respects_schedule_breakpoints() -> None:
    """Steps stop at input changes (3.3, 17.7): RK4 with 2-minute steps stays at its smooth-problem accuracy."""
    model = TwoCompartmentLinear()
    schedule = Schedule([Infusion(start=3.3, end=17.7, input="rate_mg_min", rate=[1.0, 2.0, 0.5])])
    t = np.arange(0.0, 61.0, 10.0)
    coarse = simulate(model, LINEAR_PARAMS, schedule, t, x0=[0.0, 0.0], solver=RK4(dt=2.0))
    exact = simulate(model, LINEAR_PARAMS, schedule, t, x0=[0.0, 0.0], solver=ExactLinear())
    np.testing.assert_allclose(coarse.states, exact.states, rtol=1e-4, atol=1e-9)


def test_linear_model_mass_balance() -> None:
    """Infused amount = amount left in both compartments + amount eliminated (integral of k10 * central)."""
    model = TwoCompartmentLinear()
    schedule = Schedule([Infusion(start=3.3, end=17.7, input="rate_mg_min", rate=[1.0, 2.0, 0.5])])
    t = np.linspace(0.0, 120.0, 2401)
    traj = simulate(model, LINEAR_PARAMS, schedule, t, x0=[0.0, 0.0], solver=ExactLinear())
    eliminated = np.trapezoid(np.array(LINEAR_PARAMS["k10"]) * traj.state("central_mg"), t, axis=0)
    infused = np.array([1.0, 2.0, 0.5]) * 14.4
    np.testing.assert_allclose(traj.states[-1].sum(axis=1) + eliminated, infused, rtol=1e-5)


def test_bolus_per_member_and_at_start() -> None:
    model = TwoCompartmentLinear()
    schedule = Schedule(
        [Bolus(time=0.0, state="central_mg", amount=100.0), Bolus(time=30.0, state="central_mg", amount=50.0, member=1)]
    )
    traj = simulate(model, LINEAR_PARAMS, schedule, [0.0, 30.0, 31.0], x0=[0.0, 0.0], solver=ExactLinear())
    assert traj.state("central_mg")[0].tolist() == [100.0, 100.0, 100.0]
    # members 0 and 2 get no second bolus, member 1 jumps by 50 at t=30 (recorded after the jump)
    no_second = simulate(
        model,
        LINEAR_PARAMS,
        Schedule([Bolus(time=0.0, state="central_mg", amount=100.0)]),
        [0.0, 30.0],
        x0=[0.0, 0.0],
        solver=ExactLinear(),
    )
    diff = traj.state("central_mg")[1] - no_second.state("central_mg")[1]
    np.testing.assert_allclose(diff, [0.0, 50.0, 0.0], atol=1e-9)


def test_meal_is_an_infusion_of_amount_over_rate() -> None:
    model = MichaelisMentenElimination()
    meal = Schedule([Meal(time=10.0, amount=45.0, rate=5.0, input="rate_mg_min")])
    inf = Schedule([Infusion(start=10.0, end=19.0, input="rate_mg_min", rate=5.0)])
    a = simulate(model, MM_PARAMS, meal, [0.0, 60.0], x0=[0.0])
    b = simulate(model, MM_PARAMS, inf, [0.0, 60.0], x0=[0.0])
    np.testing.assert_allclose(a.states, b.states)
    assert np.all(a.states[-1] > 0)


def test_piecewise_constant_per_member() -> None:
    model = MichaelisMentenElimination()
    pwc = PiecewiseConstant(input="rate_mg_min", times=[0.0, 30.0], values=[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    traj = simulate(model, {"vmax_mg_min": [0.0] * 3, "km_mg": 1.0}, Schedule([pwc]), [0.0, 30.0, 60.0], x0=[0.0])
    # no elimination (vmax = 0): amounts are exact integrals of the inputs
    np.testing.assert_allclose(traj.state("amount_mg")[-1], [30.0, 60.0, 90.0], rtol=1e-12)


def test_trajectory_dataframe_and_outputs() -> None:
    traj = simulate(TwoCompartmentLinear(), LINEAR_PARAMS, None, [0.0, 10.0], x0=[10.0, 0.0])
    df = traj.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["member", "t_min", "central_mg", "peripheral_mg"]
    assert len(df) == 6
    assert df.loc[(df.member == 1) & (df.t_min == 10.0), "central_mg"].item() == pytest.approx(traj.states[1, 1, 0])
    with pytest.raises(ValidationError, match="unknown state"):
        traj.state("nope")


def test_dormand_prince_reports_step_failure() -> None:
    class Blowup(MichaelisMentenElimination):
        def rhs(self, t: float, x: np.ndarray, p: sim.Params, u: np.ndarray) -> np.ndarray:
            return x * x * 1e6

    with pytest.raises(IntegrationError):
        simulate(Blowup(), MM_PARAMS, None, [0.0, 100.0], x0=[1.0], solver=DormandPrince(max_steps=200))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"times": [0.0, 0.0]}, "strictly increasing"),
        ({"x0": [1.0, 2.0, 3.0]}, "x0 must be"),
    ],
)
def test_simulate_validates_inputs(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"times": [0.0, 1.0], "x0": [1.0]}
    args.update(kwargs)
    with pytest.raises(ValidationError, match=match):
        simulate(MichaelisMentenElimination(), MM_PARAMS, None, args["times"], x0=args["x0"])  # type: ignore[arg-type]


def test_params_validation() -> None:
    model = MichaelisMentenElimination()
    with pytest.raises(ValidationError, match="missing"):
        model.make_params({"vmax_mg_min": 1.0})
    with pytest.raises(ValidationError, match="do not match"):
        model.make_params({"vmax_mg_min": [1.0, 2.0], "km_mg": [1.0, 2.0, 3.0]})
    with pytest.raises(ValidationError, match="non-finite"):
        model.make_params({"vmax_mg_min": np.nan, "km_mg": 1.0})
    with pytest.raises(ValidationError, match="end"):
        Infusion(start=5.0, end=5.0, input="rate_mg_min", rate=1.0)
    with pytest.raises(ValidationError, match="before the start time"):
        simulate(model, MM_PARAMS, Schedule([Bolus(time=-1.0, state="amount_mg", amount=1.0)]), [0.0, 1.0], x0=[0.0])
    with pytest.raises(ValidationError, match="unknown input"):
        simulate(model, MM_PARAMS, Schedule([Infusion(start=0, end=1, input="x", rate=1.0)]), [0.0, 2.0], x0=[0.0])


def test_public_api_is_pinned() -> None:
    assert set(sim.__all__) == {
        "RK4", "Bolus", "DormandPrince", "ExactLinear", "FloatArray", "Infusion", "IntegrationError", "Meal",
        "MichaelisMentenElimination", "Model", "Params", "PiecewiseConstant", "Schedule", "ScheduleEvent",
        "Solver", "Trajectory", "TwoCompartmentLinear", "make_params", "simulate",
    }  # fmt: skip


def test_modal_superposition_via_sim_linear_equals_expm_stepping() -> None:
    """ExactLinear(method='modal') delegates the whole schedule to medtwin.sim.linear; same states as expm."""
    model = TwoCompartmentLinear()
    schedule = Schedule(
        [
            Infusion(start=5.0, end=65.0, input="rate_mg_min", rate=[10.0, 20.0, 5.0]),
            Bolus(time=30.0, state="central_mg", amount=100.0, member=1),
            Meal(time=70.0, amount=30.0, rate=5.0, input="rate_mg_min"),
            PiecewiseConstant(input="rate_mg_min", times=[100.0, 150.0], values=[[1.0, 2.0, 3.0], [0.0, 0.5, 0.0]]),
        ]
    )
    t = np.arange(0.0, 241.0, 30.0)
    stepped = simulate(model, LINEAR_PARAMS, schedule, t, x0=[5.0, 1.0], solver=ExactLinear())
    modal = simulate(model, LINEAR_PARAMS, schedule, t, x0=[5.0, 1.0], solver=ExactLinear(method="modal"))
    np.testing.assert_allclose(modal.states, stepped.states, rtol=1e-10, atol=1e-10)


def test_modal_superposition_refuses_what_it_cannot_represent() -> None:
    model = TwoCompartmentLinear()
    with pytest.raises(ValidationError, match=">= 0"):
        simulate(model, LINEAR_PARAMS, None, [0.0, 1.0], x0=[-1.0, 0.0], solver=ExactLinear(method="modal"))
    with pytest.raises(ValidationError, match="method"):
        ExactLinear(method="pade")
    with pytest.raises(ValidationError, match="does not declare a linear system"):
        simulate(MichaelisMentenElimination(), MM_PARAMS, None, [0.0, 1.0], x0=[1.0], solver=ExactLinear("modal"))
