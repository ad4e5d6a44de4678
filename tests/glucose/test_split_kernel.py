"""The identification's split kernel (exact insulin, RK4 glucose in 1-3 minute steps) against the minute-exact one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose._split_kernels import MAX_STEP_MIN, run_readings
from medtwin.glucose._twin_kernels import run_inputs
from medtwin.glucose.data_quality import assess_quality
from medtwin.glucose.identify import FitSettings, Objective, _reference_basal
from medtwin.glucose.insilico import simulate_therapy_a
from medtwin.glucose.twin_model import PersonalModel, population_prior

PATIENTS = ("adult#001", "adolescent#003", "child#005", "child#008")
DRAWS = 24


@pytest.fixture(scope="module")
def prior_draws() -> list[dict[str, Any]]:
    """For each patient: two days of therapy A (seed 1), a model from the leave-one-out age-group prior, DRAWS prior
    draws (parameters, initial states) and the minute-exact BG of each draw."""
    sim = simulate_therapy_a(list(PATIENTS), days=2, seed=1)
    rng = np.random.default_rng(11)
    cases = []
    for name, data in zip(PATIENTS, sim.data, strict=True):
        prior = population_prior(name.split("#")[0], exclude=[name])
        model = PersonalModel(prior, body_weight_kg=float(data.body_weight_kg), basal_u_h=_reference_basal(data))
        objective = Objective(model, data, assess_quality(data))
        p, _ = model.parameters(prior.sample(DRAWS, rng))
        x = model.initial_state(p, np.exp(objective.g0_log_mean + 0.1 * rng.standard_normal(DRAWS)))
        meals, insulin = objective.simulation_inputs()
        advanced = x.copy()
        meal_state = np.zeros((DRAWS, 5))
        bg = run_inputs(advanced, p, meal_state, meals, insulin, parallel=False)
        exact = np.concatenate([x[None, :, 12] / p[None, :, 30], bg])
        cases.append({"p": p, "x": x, "meals": meals, "insulin": insulin, "index": objective.index,
                      "exact": exact, "x_end": advanced, "meal_state_end": meal_state})  # fmt: skip
    return cases


def _split(case: dict[str, Any], step: int, wanted_minutes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    minutes = case["meals"].size
    wanted = np.zeros((minutes + 1, 1), dtype=bool)
    wanted[wanted_minutes, 0] = True
    x = case["x"].copy()
    meal_state = np.zeros((DRAWS, 5))
    bg = run_readings(x, case["p"], meal_state, case["meals"][:, None], case["insulin"][:, None], wanted,
                      col=np.zeros(DRAWS, dtype=np.int64), stop=np.full(DRAWS, minutes), max_step=step)  # fmt: skip
    return bg, x, meal_state


def test_one_minute_steps_reproduce_the_minute_exact_kernel(prior_draws: list[dict[str, Any]]) -> None:
    """With 1-minute glucose steps only the insulin integration differs (exact instead of RK4): the same BG (to
    1e-4 mg/dL), states and meal bookkeeping."""
    for case in prior_draws:
        every = np.arange(case["meals"].size + 1)
        bg, x, meal_state = _split(case, 1, every)
        np.testing.assert_allclose(bg, case["exact"], rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(x, case["x_end"], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(meal_state, case["meal_state_end"])


def test_coarse_steps_stay_far_below_the_cgm_noise(prior_draws: list[dict[str, Any]]) -> None:
    """At the fitted readings (>= 15 min apart) the 3-minute steps are within 0.5 mg/dL of the minute-exact kernel
    (0.054 mg/dL at most over 2,560 draws of the 30 patients, docs/models/glucose_twin.md) for every draw whose
    glucose stays above 10 mg/dL, against a CGM noise SD of ~11 mg/dL; draws that crash to 0 mg/dL (where both
    kernels hit the non-negativity clamps of the model) may differ more, and their likelihood is negligible."""
    largest = []
    for case in prior_draws:
        bg, _, _ = _split(case, MAX_STEP_MIN, case["index"])
        assert np.all(np.isfinite(bg[case["index"]]))
        unwanted = np.setdiff1d(np.arange(bg.shape[0]), case["index"])
        assert np.all(np.isnan(bg[unwanted]))
        error = np.max(np.abs(bg[case["index"]] - case["exact"][case["index"]]), axis=0)
        physiological = np.min(case["exact"], axis=0) >= 10.0
        largest.append(error[physiological])
    errors = np.concatenate(largest)
    assert errors.size >= 0.5 * len(PATIENTS) * DRAWS
    assert np.max(errors) < 0.5
    assert np.median(errors) < 0.01


def test_step_bounds_are_enforced(prior_draws: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="max_step 4"):
        _split(prior_draws[0], MAX_STEP_MIN + 1, prior_draws[0]["index"])
    with pytest.raises(ValidationError, match="glucose_step_min"):
        FitSettings(glucose_step_min=0)
