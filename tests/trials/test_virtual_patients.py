"""Virtual glucose populations: the fit, the sampled statistics against the source, the basal steady state."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from medtwin.glucose import UvaPadova2008, load_cohort
from medtwin.glucose.patients import GROUPS
from medtwin.trials.virtual_patients import (
    FREE_PARAMETERS,
    TITRATION_FACTORS,
    _from_unbounded,
    fit_glucose_population,
    sample_glucose_patients,
    steady_state,
    titrate_therapy,
)


def test_steady_state_equations_reproduce_all_30_source_subjects() -> None:
    fit = fit_glucose_population()
    source = load_cohort("all")
    params, x0 = steady_state(_from_unbounded(fit.source_transformed, fit.shared["Fsnc"]), fit.shared)
    for name in ("Gpb", "Gtb", "Vm0", "kp1", "Ipb", "m4", "m30", "Ilb", "u2ss", "isc1ss", "isc2ss", "kmin", "b"):
        assert np.allclose(params[name], source.params[name], rtol=1e-8), name
    assert np.allclose(x0, source.x0, rtol=1e-8, atol=1e-9)
    assert np.allclose(params["CR"], source.cr_g_per_u)
    assert np.allclose(params["CF"], source.cf_mg_dl_per_u)


@pytest.fixture(scope="module")
def big_sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    groups = [g for g in GROUPS for _ in range(20_000)]
    drawn = sample_glucose_patients(groups, rng=rng)
    return {
        "transformed": drawn.transformed,
        "groups": np.array(drawn.groups),
        "x0": drawn.cohort.x0,
        **drawn.cohort.params,
        "rejected": np.array([drawn.rejected]),
    }


def test_sampled_summary_statistics_match_the_source_per_group(big_sample: dict[str, np.ndarray]) -> None:
    fit = fit_glucose_population()
    z, groups = big_sample["transformed"], big_sample["groups"]
    src_groups = np.array(fit.source_groups)
    for g in GROUPS:
        src = fit.source_transformed[src_groups == g]
        sample = z[groups == g]
        # means: within 0.05 source SD (rejection of a few draws per thousand shifts them very little)
        assert np.all(np.abs(sample.mean(axis=0) - src.mean(axis=0)) < 0.05 * src.std(axis=0, ddof=1)), g
        assert np.allclose(sample.std(axis=0), src.std(axis=0, ddof=1), rtol=0.05), g
        # medians on the natural scale (log-scale parameters): the source's geometric means, within 6 %
        for j, name in enumerate(FREE_PARAMETERS):
            if name in ("b", "d", "kmin", "EGPb"):
                continue
            assert np.median(np.exp(sample[:, j])) == pytest.approx(np.exp(src[:, j].mean()), rel=0.06), (g, name)
    resid = np.vstack([(z[groups == g] - fit.mean[k]) / fit.sd[k] for k, g in enumerate(GROUPS)])
    assert np.allclose(np.corrcoef(resid.T), fit.correlation, atol=0.03)
    assert 0.0 < fit.shrinkage < 1.0


def test_every_sampled_patient_is_at_its_basal_steady_state(big_sample: dict[str, np.ndarray]) -> None:
    assert np.all(big_sample["Gtb"] > 0)
    assert np.all(big_sample["Gpb"] < big_sample["ke2"])
    assert np.all(big_sample["Vm0"] > 0)
    assert np.all(big_sample["kmin"] < big_sample["kmax"])
    assert 0 < big_sample["rejected"][0] < 0.01 * big_sample["x0"].shape[0]
    rows = np.arange(0, big_sample["x0"].shape[0], 97)
    model = UvaPadova2008()
    params = model.make_params({k: v[rows] for k, v in big_sample.items() if k in model.param_names})
    u = np.zeros((rows.size, 3))
    u[:, 1] = params["u2ss"]  # basal insulin, pmol/kg/min
    dx = model.rhs(0.0, big_sample["x0"][rows], params, u)
    assert np.max(np.abs(dx)) < 1e-9


def test_sampling_is_reproducible_and_names_are_indexed() -> None:
    a = sample_glucose_patients(["adult", "child"], rng=np.random.default_rng(1))
    b = sample_glucose_patients(["adult", "child"], rng=np.random.default_rng(1))
    assert a.cohort.names == ("vp-adult-000000", "vp-child-000001")
    assert np.array_equal(a.cohort.x0, b.cohort.x0)
    # children are smaller than adults in the source, and so in the sample
    assert a.cohort.params["BW"][1] < 60


def test_titration_picks_the_risk_minimizing_factor() -> None:
    cohort = sample_glucose_patients(["adult"] * 4, rng=np.random.default_rng(9)).cohort
    factors = titrate_therapy(cohort)
    assert factors.shape == (4,)
    assert set(factors) <= set(TITRATION_FACTORS)
    # the source subjects titrated from their own Quest settings stay within the grid and mostly near 1
    source = titrate_therapy(load_cohort("adult"))
    assert np.median(source) == pytest.approx(1.0, rel=0.3)


@pytest.mark.slow
def test_titrated_populations_match_the_source_outcomes_on_the_standard_day() -> None:
    from dataclasses import replace

    from medtwin.glucose import (
        CGMSensor,
        InsulinPump,
        make_controller,
        meal_matrix,
        pump_spec,
        sensor_spec,
        simulate_closed_loop,
        summary_metrics_batch,
    )
    from medtwin.glucose.scenarios import daily_meals

    def day(c: Any) -> dict[str, np.ndarray]:
        r = simulate_closed_loop(
            c,
            minutes=1440,
            meals=meal_matrix(1440, daily_meals(c.size, 1), c.size),
            controller=make_controller("basal-bolus", c),
            sensor=CGMSensor(sensor_spec("Dexcom"), [1] * c.size, noise=False),
            pump=InsulinPump(pump_spec("Insulet")),
        )
        return summary_metrics_batch(r.bg_mg_dl[1:])

    for group, most_hypo in (("adult", 0.03), ("adolescent", 0.08), ("child", 0.2)):
        sampled = sample_glucose_patients([group] * 300, rng=np.random.default_rng(5)).cohort
        f = titrate_therapy(sampled)
        titrated = replace(sampled, cr_g_per_u=sampled.cr_g_per_u * f, cf_mg_dl_per_u=sampled.cf_mg_dl_per_u * f)
        before, after, source = day(sampled), day(titrated), day(load_cohort(group))
        assert np.mean(after["tbr_level2_pct"] > 5) < min(most_hypo, np.mean(before["tbr_level2_pct"] > 5))
        assert np.median(after["tir_pct"]) == pytest.approx(np.median(source["tir_pct"]), abs=4.0), group
