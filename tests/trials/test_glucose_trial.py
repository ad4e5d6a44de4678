"""Glucose trials: a crossover reproduces direct glucose runs exactly; null trials hold their size; Dask agrees."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from medtwin.glucose import (
    CGMSensor,
    InsulinPump,
    load_cohort,
    make_controller,
    meal_matrix,
    pump_spec,
    run_scenario,
    sensor_spec,
    simulate_closed_loop,
    summary_metrics_batch,
)
from medtwin.sim.runners import DaskRunner, SequentialRunner
from medtwin.trials import analyse, parse_spec, simulate_trial, simulated_power
from medtwin.trials.glucose_arms import glucose_endpoints, patient_meals
from medtwin.trials.protocol import GlucoseScenario, TrialSpec
from medtwin.trials.trial import TrialData


def _spec(**changes: Any) -> TrialSpec:
    base: dict[str, Any] = {
        "trial": {"name": "t", "kind": "glucose", "design": "crossover", "seed": 5},
        "population": {"source": "original", "patients": ["all"]},
        "scenario": {"days": 1, "randomise_meals": False},
        "arms": [
            {"name": "bb", "controller": "basal-bolus", "control": True},
            {"name": "basal", "controller": "basal"},
        ],
        "endpoints": {"primary": "tir_pct", "secondary": ["tbr70_pct", "tbr54_pct", "gmi_pct", "lbgi"]},
    }
    for key, value in changes.items():
        base[key] = value
    return parse_spec(base)


def test_crossover_on_the_30_original_patients_reproduces_direct_glucose_runs_exactly() -> None:
    spec = _spec()
    data = simulate_trial(spec)
    assert data.arm is None
    assert data.cohort.ids == load_cohort("all").names
    for a, controller in enumerate(("basal-bolus", "basal")):
        direct = run_scenario("all", days=1, controller=controller, seed=spec.seed)
        expected = glucose_endpoints(summary_metrics_batch(direct.bg_mg_dl[1:]))
        for endpoint in spec.endpoints:
            assert np.array_equal(data.outcomes[endpoint][a], expected[endpoint]), (controller, endpoint)
    comparison = analyse(data)[0]
    paired = data.outcomes["tir_pct"][1] - data.outcomes["tir_pct"][0]
    assert comparison.estimate("difference").estimate == pytest.approx(paired.mean(), rel=1e-12)


def test_randomised_meals_crossover_equals_the_closed_loop_built_by_hand() -> None:
    spec = _spec(scenario={"days": 2, "randomise_meals": True, "skip_probability": 0.2})
    data = simulate_trial(spec)
    cohort = load_cohort("all")
    sc = spec.scenario
    assert isinstance(sc, GlucoseScenario)
    plans = np.stack([patient_meals(sc, 2, spec.seed, 0, i) for i in range(cohort.size)])
    assert np.any(plans[:, :, 1] == 0)  # some meals skipped
    result = simulate_closed_loop(
        cohort,
        minutes=2880,
        meals=meal_matrix(2880, plans, cohort.size),
        controller=make_controller("basal-bolus", cohort),
        sensor=CGMSensor(sensor_spec("Dexcom"), [spec.seed + i for i in range(cohort.size)]),
        pump=InsulinPump(pump_spec("Insulet")),
    )
    expected = glucose_endpoints(summary_metrics_batch(result.bg_mg_dl[1:]))
    assert np.array_equal(data.outcomes["tir_pct"][0], expected["tir_pct"])
    assert np.array_equal(data.outcomes["lbgi"][0], expected["lbgi"])


_PARALLEL: dict[str, Any] = {
    "trial": {"name": "p", "kind": "glucose", "design": "parallel", "seed": 77},
    "population": {"source": "fitted", "size": 24, "groups": {"adult": 1, "adolescent": 1}, "therapy": "sampled"},
    "scenario": {"days": 1, "run_in_days": 1},
    "arms": [{"name": "a", "control": True}, {"name": "b", "target_mg_dl": 120}],
    "allocation": {"method": "stratified", "block_size": 4, "strata": [{"variable": "group"}]},
    "analysis": {"methods": ["difference", "ancova", "procova"], "prognostic": "known-parameters"},
    "execution": {"chunk_size": 5},
}


@pytest.fixture(scope="module")
def dask_runner() -> Iterator[DaskRunner]:
    with DaskRunner(n_workers=2, processes=True, preload=("medtwin.trials",)) as runner:
        yield runner


def test_dask_local_cluster_gives_identical_results(dask_runner: DaskRunner) -> None:
    spec = parse_spec(_PARALLEL)
    seq = simulate_trial(spec, SequentialRunner())
    cpu = dask_runner.worker_cpu_seconds()
    par = simulate_trial(spec, dask_runner)
    assert dask_runner.worker_cpu_seconds() > cpu  # the workers did the simulating
    assert seq.cohort.ids == par.cohort.ids
    assert np.array_equal(seq.arm, par.arm)
    for k in seq.outcomes:
        assert np.array_equal(seq.outcomes[k], par.outcomes[k], equal_nan=True)
        assert np.array_equal(seq.prognostic[k], par.prognostic[k])
    for k in seq.cohort.variables:
        assert np.array_equal(seq.cohort.variables[k], par.cohort.variables[k])
    # chunking does not change a number either
    one_chunk = simulate_trial(replace(spec, chunk_size=1000))
    assert np.array_equal(seq.outcomes["tir_pct"], one_chunk.outcomes["tir_pct"], equal_nan=True)


def test_stratified_allocation_balances_groups_and_seeds_reproduce() -> None:
    spec = parse_spec(_PARALLEL)
    data = simulate_trial(spec)
    assert data.arm is not None
    groups = np.array(data.cohort.groups)
    for g in ("adult", "adolescent"):
        counts = np.bincount(data.arm[groups == g], minlength=2)
        assert abs(int(counts[0]) - int(counts[1])) <= 2  # permuted blocks of 4 within each group
    again = simulate_trial(spec)
    assert np.array_equal(again.arm, data.arm)  # type: ignore[arg-type]
    other = simulate_trial(replace(spec, seed=78))
    assert not np.array_equal(other.cohort.variables["parameter:BW"], data.cohort.variables["parameter:BW"])
    # observed outcomes are the allocated arm's, the other arm is not simulated
    assert np.all(np.isnan(data.outcomes["tir_pct"][1 - data.arm, np.arange(data.cohort.size)]))
    assert data.observed("tir_pct").shape == (data.cohort.size,)


@pytest.fixture(scope="module")
def null_pool() -> TrialData:
    """400 fitted patients simulated under two identical arms (1 day, 1-day run-in, their twins)."""
    spec = parse_spec(
        _PARALLEL
        | {
            "population": {"source": "fitted", "size": 400, "groups": {"adult": 1}, "therapy": "sampled"},
            "arms": [{"name": "a", "control": True}, {"name": "same"}],
            "execution": {"chunk_size": 400},
            "allocation": {},
        }
    )
    return simulate_trial(spec, size=400, potential=True)


def test_type_i_error_of_glucose_trials_drawn_from_a_simulated_pool(null_pool: TrialData) -> None:
    # identical arms: the potential outcomes coincide, so the null holds exactly
    assert np.array_equal(null_pool.outcomes["tir_pct"][0], null_pool.outcomes["tir_pct"][1])
    draws = simulated_power(null_pool, 1, sizes=(60,), replicates=1000)
    mc = math.sqrt(0.05 * 0.95 / 1000)
    for method in ("difference", "ancova", "procova"):
        rate = float(draws[method][0].mean())
        assert abs(rate - 0.05) < 3.5 * mc, f"{method}: {rate}"
    # twins predict the run-in-adjusted outcome well: PROCOVA's estimates vary least
    sd = {m: float(draws[m][1].std()) for m in draws}
    assert sd["procova"] < sd["ancova"] < sd["difference"]


@pytest.mark.slow
def test_type_i_error_over_1000_fully_simulated_glucose_trials() -> None:
    spec = parse_spec(
        _PARALLEL
        | {
            "population": {"source": "fitted", "size": 40, "groups": {"adult": 1}, "therapy": "sampled"},
            "arms": [{"name": "a", "control": True}, {"name": "same"}],
            "allocation": {},
            "execution": {"chunk_size": 40},
        }
    )
    rejections: dict[str, list[bool]] = {"difference": [], "ancova": [], "procova": []}
    for r in range(1000):
        data = simulate_trial(spec, stream=5000 + r, offset=r * 40)
        for e in analyse(data)[0].estimates:
            rejections[e.method].append(e.p_value < 0.05)
    mc = math.sqrt(0.05 * 0.95 / 1000)
    for method, values in rejections.items():
        assert abs(np.mean(values) - 0.05) < 3 * mc, method
