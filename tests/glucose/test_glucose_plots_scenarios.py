"""Plots (PNG files) and the scenario runners, including the chunked summary-only cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose import daily_meals, load_cohort, resolve_patient_names, run_scenario, run_summary
from medtwin.glucose.plots import plot_agp, plot_trace


def test_plots_write_png(tmp_path: Path) -> None:
    result = run_scenario(["adult#003"], days=2, randomize_meals=True, seed=3)
    t = np.arange(result.bg_mg_dl.shape[0], dtype=float)
    trace = plot_trace(tmp_path / "t.png", t, result.bg_mg_dl[:, 0], cho_g=result.cho_announced_g[:, 0])
    agp = plot_agp(tmp_path / "a.png", t, result.bg_mg_dl[:, 0])
    for p in (trace, agp):
        assert p.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValidationError, match="AGP"):
        plot_agp(tmp_path / "x.png", t[:5], result.bg_mg_dl[:, 0])


def test_randomized_meals_are_seeded_and_bounded() -> None:
    rng = np.random.default_rng(5)
    meals = daily_meals(4, 2, rng=rng)
    assert meals.shape == (4, 6, 2)
    assert np.all((meals[..., 1] >= 0.7 * 45) & (meals[..., 1] <= 1.3 * 80))
    assert np.array_equal(meals, daily_meals(4, 2, rng=np.random.default_rng(5)))


def test_summary_runs_in_chunks_and_equals_full_run() -> None:
    summary = run_summary(
        ["adult#001", "child#001"], n_members=5, chunk_size=2, randomize_meals=False, sensor_noise=False
    )
    assert summary["mean_mg_dl"].shape == (5,)
    # members 0, 2, 4 are adult#001 with identical (deterministic) inputs
    assert summary["mean_mg_dl"][0] == pytest.approx(summary["mean_mg_dl"][2])
    full = run_scenario(["adult#001"], sensor_noise=False)
    assert summary["mean_mg_dl"][0] == pytest.approx(full.bg_mg_dl[1:, 0].mean())


def test_progress_reports_in_chunks_without_changing_results() -> None:
    calls: list[tuple[int, int]] = []
    with_progress = run_scenario(["all"], replicate=3, seed=2, progress=lambda done, total: calls.append((done, total)))
    plain = run_scenario(["all"], replicate=3, seed=2)
    np.testing.assert_array_equal(with_progress.bg_mg_dl, plain.bg_mg_dl)
    np.testing.assert_array_equal(with_progress.cgm_mg_dl, plain.cgm_mg_dl)
    assert len(calls) >= 2
    assert calls[-1] == (1440, 1440)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_glucose_public_api_is_pinned() -> None:
    import medtwin.glucose as glucose

    assert set(glucose.__all__) == {
        "BasalBolusController", "BasalOnlyController", "CGMSensor", "CgmMetrics", "ClosedLoopResult", "Cohort",
        "Controller", "ControllerAction", "ControllerObservation", "InsulinPump", "PatientBatch", "PumpSpec",
        "SensorSpec", "UvaPadova2008", "all_patient_names", "cgm_metrics", "count_episodes", "daily_meals",
        "load_cohort", "make_controller", "meal_matrix", "pump_spec", "resolve_patient_names", "risk_components",
        "run_scenario", "run_summary", "sensor_spec", "simulate_closed_loop", "simulate_open_loop",
        "summary_metrics_batch", "DormandPrince", "RK4", "OpenLoopResult", "member_sensor_seeds",
    } | {  # the personal twin (issue 17)
        "BolusAdvice", "BolusSettings", "ConvergenceError", "FitSettings", "Forecast", "GlucoseForecaster",
        "PersonalGlucoseTwin", "PopulationPrior", "Posterior", "ReplayResult", "Therapy", "TherapyData",
        "advise_meal_bolus", "calculator_bolus", "fit", "insulin_on_board", "population_prior", "read_nightscout",
        "read_therapy_csv", "replay", "update",
    }  # fmt: skip


def test_meal_plan_rejects_times_outside_the_day() -> None:
    """A daily meal at minute >= 1440 used to vanish silently (no carbohydrate at all in the run)."""
    for bad in ([(1440.0, 45.0)], [(2000.0, 45.0)], [(-10.0, 45.0)]):
        with pytest.raises(ValidationError, match="minute of day"):
            daily_meals(1, 1, bad)
        with pytest.raises(ValidationError, match="minute of day"):
            run_scenario(["adult#001"], meals=bad)
    with pytest.raises(ValidationError, match=">= 0 g"):
        daily_meals(1, 1, [(420.0, -5.0)])
    assert daily_meals(1, 2, [(1439.0, 10.0)])[0, :, 0].tolist() == [1439.0, 2879.0]


def test_a_single_name_is_one_patient_not_its_characters() -> None:
    """`run_scenario("adult#001")` from a notebook used to fail with "unknown virtual patient 'a'"."""
    result = run_scenario("adult#001", sensor_noise=False)
    assert result.names == ("adult#001",)
    assert load_cohort("adolescent").names == resolve_patient_names(["adolescent"])
    assert run_summary("child", n_members=2, sensor_noise=False, randomize_meals=False)["mean_mg_dl"].shape == (2,)
