"""MAP objective, Laplace approximation and SIR: exact identities and properties."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.dosing import (
    Dose,
    Level,
    load_model,
    map_estimate,
    objective,
    predict_concentrations,
    sir_sample,
)
from medtwin.errors import ValidationError

COV = {"CRCL": 65.0, "WT": 70.0, "DIAL": 0.0}
DOSES = [Dose(time_h=0.0, amount_mg=2000.0, duration_h=2.0), Dose(time_h=24.2, amount_mg=1000.0, duration_h=2.0)]
LEVELS = [Level(13.0, 12.0), Level(48.0, 9.5)]


@pytest.fixture(scope="module")
def goti():  # type: ignore[no-untyped-def]
    return load_model("goti2018_vancomycin")


def test_objective_matches_hand_computation(goti) -> None:  # type: ignore[no-untyped-def]
    eta = np.array([0.1, -0.2, 0.3])
    f = predict_concentrations(goti, COV, DOSES, [13.0, 48.0], eta)[0]
    g = 3.4 + 0.227 * f
    y = np.array([12.0, 9.5])
    expected = np.sum(((y - f) / g) ** 2 + np.log(g**2)) + eta @ np.linalg.inv(goti.omega) @ eta
    assert objective(goti, COV, DOSES, LEVELS, eta)[0] == pytest.approx(expected, rel=1e-12)


def test_without_levels_the_posterior_is_the_prior(goti) -> None:  # type: ignore[no-untyped-def]
    fit = map_estimate(goti, COV, DOSES, [])
    np.testing.assert_allclose(fit.eta, 0.0, atol=1e-6)
    np.testing.assert_allclose(fit.covariance, goti.omega, rtol=1e-4, atol=1e-8)
    sir = sir_sample(goti, COV, DOSES, [], fit, n_proposals=8000, n_samples=2000, seed=1)
    np.testing.assert_allclose(np.cov(sir.samples.T), goti.omega, rtol=0.15, atol=0.02)


def test_map_is_a_minimum_and_independent_of_the_seed(goti) -> None:  # type: ignore[no-untyped-def]
    fits = [map_estimate(goti, COV, DOSES, LEVELS, seed=s, n_starts=3) for s in (0, 1, 2)]
    for f in fits[1:]:
        np.testing.assert_allclose(f.eta, fits[0].eta, atol=1e-5)
    best = fits[0]
    rng = np.random.default_rng(3)
    around = best.eta + rng.normal(scale=0.05, size=(50, 3))
    assert np.all(objective(goti, COV, DOSES, LEVELS, around) >= best.ofv - 1e-9)
    assert best.converged
    assert not best.warnings


def test_levels_shrink_the_posterior(goti) -> None:  # type: ignore[no-untyped-def]
    fit = map_estimate(goti, COV, DOSES, LEVELS)
    sir = sir_sample(goti, COV, DOSES, LEVELS, fit, n_proposals=4000, n_samples=1000, seed=0)
    assert sir.effective_sample_size > 500
    # CL is informed by two levels: its posterior variance is below the prior's 0.147
    assert fit.covariance[0, 0] < goti.omega[0, 0]
    assert np.var(sir.samples[:, 0]) < goti.omega[0, 0]
    assert np.all(np.linalg.eigvalsh(fit.covariance) > 0)


def test_level_before_first_dose_is_refused(goti) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match="before the first dose"):
        map_estimate(goti, COV, DOSES, [Level(-1.0, 3.0)])
    with pytest.raises(ValidationError, match="negative"):
        Level(1.0, -3.0)


def test_laplace_covariance_matches_the_fit(goti) -> None:  # type: ignore[no-untyped-def]
    from medtwin.dosing import laplace_covariance

    fit = map_estimate(goti, COV, DOSES, LEVELS)
    cov = laplace_covariance(goti, COV, DOSES, LEVELS, fit.eta)
    np.testing.assert_allclose(cov, fit.covariance, rtol=1e-3, atol=1e-7)
    # no data: exactly the prior
    np.testing.assert_allclose(laplace_covariance(goti, COV, DOSES, [], np.zeros(3)), goti.omega, rtol=1e-6)
