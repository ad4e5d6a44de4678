"""UVA/Padova model validation against simglucose 0.2.11 and physiological properties for all 30 patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.glucose import (
    BasalBolusController,
    BasalOnlyController,
    CGMSensor,
    InsulinPump,
    UvaPadova2008,
    all_patient_names,
    load_cohort,
    meal_matrix,
    pump_spec,
    sensor_spec,
    simulate_closed_loop,
    simulate_open_loop,
)
from medtwin.glucose.simulation import PatientBatch
from medtwin.sim import RK4, DormandPrince

STATE_COLS = [f"x{i}" for i in range(13)]
BENCH_MEALS = [(420.0, 45.0), (720.0, 70.0), (1080.0, 80.0)]


def _open_loop(ref: pd.DataFrame, solver: RK4 | DormandPrince | None) -> np.ndarray:
    cohort = load_cohort(["adult#001"])
    return simulate_open_loop(
        cohort, ref.eaten_CHO_g_per_min.to_numpy(), ref.insulin_U_per_min.to_numpy(), solver=solver
    ).states[1:, 0, :]


def test_open_loop_dormand_prince_reproduces_every_state(adult001_1min: pd.DataFrame) -> None:
    """Same inputs as simglucose: BG within 0.5 mg/dL and all 13 states within 0.1 % at every minute."""
    states = _open_loop(adult001_1min, DormandPrince(rtol=1e-8, atol=1e-10))
    ref = adult001_1min[STATE_COLS].to_numpy()
    vg = load_cohort(["adult#001"]).params["Vg"][0]
    assert np.max(np.abs(states[:, 12] / vg - adult001_1min.BG_sc)) < 0.5
    assert np.max(np.abs(states[:, 3] / vg - adult001_1min.BG_plasma)) < 0.5
    # 0.1 % relative, with an absolute floor for states that start at exactly zero (X, the gut at meal onset)
    floor = 1e-6 * np.max(np.abs(ref), axis=0)
    np.testing.assert_array_less(np.abs(states - ref), 1e-3 * np.abs(ref) + floor)


def test_open_loop_rk4_fast_path_reproduces_bg(adult001_1min: pd.DataFrame) -> None:
    """The production solver (compiled RK4, 1-minute steps): BG within 0.5 mg/dL, states within 0.1 % of range."""
    states = _open_loop(adult001_1min, None)
    ref = adult001_1min[STATE_COLS].to_numpy()
    vg = load_cohort(["adult#001"]).params["Vg"][0]
    assert np.max(np.abs(states[:, 12] / vg - adult001_1min.BG_sc)) < 0.5
    scale = np.max(np.abs(ref), axis=0) + 1e-12
    assert np.max(np.abs(states - ref) / scale) < 1e-3


def test_compiled_kernel_equals_numpy_model(adult001_1min: pd.DataFrame) -> None:
    """The numba kernel and the numpy model with the same RK4 give the same trajectory."""
    compiled = _open_loop(adult001_1min.iloc[:720], None)
    cohort = load_cohort(["adult#001"])
    numpy_path = PatientBatch(cohort, RK4(dt=1.0))
    numpy_path._n_sub = 0  # force the numpy model through the generic solver
    out = []
    for cho, ins in zip(adult001_1min.eaten_CHO_g_per_min[:720], adult001_1min.insulin_U_per_min[:720], strict=True):
        numpy_path.advance(np.array([[cho]]), np.array([ins]))
        out.append(numpy_path.x[0].copy())
    np.testing.assert_allclose(compiled, np.array(out), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fused", [True, False])
def test_closed_loop_all_30_patients_match_simglucose(batch_reference: dict[str, pd.DataFrame], fused: bool) -> None:
    """Controller + pump + seeded Dexcom sensor (seed 1 for every patient, as in the reference) within 1 mg/dL."""
    names = all_patient_names()
    cohort = load_cohort(names)
    result = simulate_closed_loop(
        cohort,
        minutes=1440,
        meals=meal_matrix(1440, BENCH_MEALS, cohort.size),
        controller=BasalBolusController(
            basal_u_min=cohort.basal_u_per_min, cr_g_per_u=cohort.cr_g_per_u, cf_mg_dl_per_u=cohort.cf_mg_dl_per_u
        ),
        sensor=CGMSensor(sensor_spec("Dexcom"), [1] * cohort.size),
        pump=InsulinPump(pump_spec("Insulet")),
        fused=fused,
    )
    sampled = result.sampled()
    for i, name in enumerate(names):
        ref = batch_reference[name]
        assert len(ref) == sampled["bg_mg_dl"].shape[0]
        assert np.max(np.abs(ref.BG.to_numpy() - sampled["bg_mg_dl"][:, i])) < 1.0, name
        assert np.max(np.abs(ref.CGM.to_numpy() - sampled["cgm_mg_dl"][:, i])) < 1.0, name
        np.testing.assert_allclose(sampled["insulin_u_min"][:, i], ref.insulin.to_numpy()[:-1], atol=1e-4)
        np.testing.assert_allclose(sampled["cho_g_min"][:, i], ref.CHO.to_numpy()[:-1], atol=1e-9)
    assert result.rhs_evaluations == 4 * 1440


def test_steady_state_holds_for_all_30_patients() -> None:
    """Basal insulin (u2ss * BW / 6000), no meal: every patient stays at its basal glucose for a day."""
    cohort = load_cohort(["all"])
    result = simulate_open_loop(cohort, np.zeros((1440, 30)), np.tile(cohort.basal_u_per_min, (1440, 1)))
    states = result.states
    bg = result.bg_mg_dl
    np.testing.assert_allclose(bg, states[:, :, 12] / cohort.params["Vg"])
    assert np.max(np.abs(bg - cohort.basal_glucose_mg_dl)) < 0.01
    np.testing.assert_allclose(states[-1], cohort.x0, rtol=1e-6, atol=1e-9)
    model = UvaPadova2008()
    u = np.zeros((30, 3))
    u[:, 1] = cohort.params["u2ss"]
    dx = model.rhs(0.0, cohort.x0, model.make_params(cohort.params), u)
    assert np.max(np.abs(dx)) < 1e-9


def test_meal_mass_balance_for_all_30_patients() -> None:
    """Carbohydrate eaten = what remains in stomach and gut + what was absorbed (kabs Qgut integrated)."""
    cohort = load_cohort(["all"])
    minutes = 720
    cho = np.zeros((minutes, 30))
    cho[60:72] = 5.0  # a 60 g meal eaten at 5 g/min
    states = simulate_open_loop(
        cohort, cho, np.tile(cohort.basal_u_per_min, (minutes, 1)), solver=DormandPrince(rtol=1e-9, atol=1e-9)
    ).states
    absorbed = np.trapezoid(cohort.params["kabs"] * states[:, :, 2], dx=1.0, axis=0)
    remaining = states[-1, :, 0:3].sum(axis=1)
    np.testing.assert_allclose(absorbed + remaining, 60_000.0, rtol=2e-3)
    # and the meal raises glucose in every patient
    bg = states[:, :, 12] / cohort.params["Vg"]
    assert np.all(bg.max(axis=0) > cohort.basal_glucose_mg_dl + 10)


def test_no_insulin_raises_glucose_and_states_stay_non_negative() -> None:
    cohort = load_cohort(["child"])
    result = simulate_closed_loop(
        cohort,
        minutes=600,
        meals=meal_matrix(600, [(60.0, 50.0)], cohort.size),
        controller=BasalOnlyController(np.zeros(cohort.size)),
        sensor=CGMSensor(sensor_spec("GuardianRT"), list(range(cohort.size)), noise=False),
        pump=InsulinPump(pump_spec("Cozmo")),
    )
    assert np.all(result.bg_mg_dl[-1] > result.bg_mg_dl[0])
    # the first period runs on the initial basal action (as simglucose's loop), then the controller's zero
    pump = InsulinPump(pump_spec("Cozmo"))
    np.testing.assert_allclose(result.insulin_u_min[:5], np.tile(pump.basal(cohort.basal_u_per_min), (5, 1)))
    assert np.all(result.insulin_u_min[5:] == 0.0)
    # noise-free sensor: CGM equals BG at each 5-minute reading, held in between
    np.testing.assert_allclose(result.cgm_mg_dl[5::5], np.clip(result.bg_mg_dl[5::5], 39, 600))
    np.testing.assert_allclose(result.cgm_mg_dl[6], result.cgm_mg_dl[5])


def test_threaded_kernel_equals_serial_kernel() -> None:
    """Cohorts of >= PARALLEL_MIN_BATCH members run on threads; results equal the serial build."""
    from medtwin.glucose import run_scenario
    from medtwin.glucose._kernels import PARALLEL_MIN_BATCH

    small = run_scenario(["all"], seed=4)
    big = run_scenario(["all"], replicate=3, seed=4)
    assert big.bg_mg_dl.shape[1] >= PARALLEL_MIN_BATCH > small.bg_mg_dl.shape[1]
    np.testing.assert_array_equal(big.bg_mg_dl[:, :30], small.bg_mg_dl)
    np.testing.assert_array_equal(big.insulin_u_min[:, :30], small.insulin_u_min)


def test_numpy_model_with_sim_solvers_matches_solve_ivp() -> None:
    """The engine's RK4 and Dormand-Prince on the UVA/Padova RHS against scipy's DOP853 at rtol 1e-11."""
    from scipy.integrate import solve_ivp

    from medtwin.sim import simulate
    from medtwin.sim.schedule import Infusion, PiecewiseConstant, Schedule

    cohort = load_cohort(["adolescent#004", "child#009"])
    model = UvaPadova2008()
    p = model.make_params(cohort.params)
    insulin = cohort.params["u2ss"] * 1.5
    schedule = Schedule(
        [
            Infusion(start=10.0, end=19.0, input="cho_mg_min", rate=5000.0),
            PiecewiseConstant(input="insulin_pmol_kg_min", times=[0.0], values=[insulin]),
            PiecewiseConstant(input="dbar_mg", times=[0.0], values=[45000.0]),
        ]
    )
    t = np.array([0.0, 60.0, 120.0])
    for solver, rtol in ((RK4(dt=0.5), 1e-5), (DormandPrince(rtol=1e-9, atol=1e-9), 1e-7)):
        traj = simulate(model, p, schedule, t, x0=cohort.x0, solver=solver)
        for i in range(2):
            pi = p.take(np.array([i]))

            def f(tt: float, y: np.ndarray, i: int = i, pi: object = pi) -> np.ndarray:
                u = schedule.inputs(model, tt, 2)[i : i + 1]
                return model.rhs(tt, y[None, :], pi, u)[0]  # type: ignore[arg-type]

            ref = cohort.x0[i]
            for a, b in ((0.0, 10.0), (10.0, 19.0), (19.0, 120.0)):
                ref = solve_ivp(f, (a, b), ref, method="DOP853", rtol=1e-10, atol=1e-10).y[:, -1]
            np.testing.assert_allclose(traj.states[-1, i], ref, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("sensor_name", ["GuardianRT", "Navigator"])
def test_fused_loop_equals_general_loop_for_other_sensors(sensor_name: str) -> None:
    cohort = load_cohort(["adolescent#002", "adult#005", "child#003"])
    runs = []
    for fused in (True, False):
        runs.append(
            simulate_closed_loop(
                cohort,
                minutes=600,
                meals=meal_matrix(600, [(100.0, 60.0), (400.0, 30.0)], cohort.size),
                controller=BasalBolusController(
                    basal_u_min=cohort.basal_u_per_min,
                    cr_g_per_u=cohort.cr_g_per_u,
                    cf_mg_dl_per_u=cohort.cf_mg_dl_per_u,
                ),
                sensor=CGMSensor(sensor_spec(sensor_name), [3, 4, 5]),
                pump=InsulinPump(pump_spec("Cozmo")),
                fused=fused,
            )
        )
    np.testing.assert_allclose(runs[0].bg_mg_dl, runs[1].bg_mg_dl, rtol=1e-12)
    np.testing.assert_allclose(runs[0].cgm_mg_dl, runs[1].cgm_mg_dl, rtol=1e-12)
    np.testing.assert_allclose(runs[0].insulin_u_min, runs[1].insulin_u_min, rtol=1e-12)
