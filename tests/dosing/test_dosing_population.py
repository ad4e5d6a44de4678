"""Cohort MAP (vectorized over patients) agrees with single-patient MAP; bad cohorts are refused."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.dosing import Dose, Level, load_model, map_estimate
from medtwin.dosing.population import CohortData, map_estimate_cohort, newton_minimize
from medtwin.errors import ValidationError


def cohort(n: int, seed: int = 7) -> tuple[CohortData, np.ndarray]:
    rng = np.random.default_rng(seed)
    crcl, wt = rng.uniform(30, 130, n), rng.uniform(50, 110, n)
    levels = rng.uniform(5, 30, (n, 2))
    data = CohortData(
        covariates={"CRCL": crcl, "WT": wt, "DIAL": np.zeros(n)},
        dose_time_h=np.tile([0.0, 12.0, 24.0], (n, 1)),
        dose_amount_mg=rng.choice([750.0, 1000.0, 1250.0], (n, 3)),
        dose_duration_h=np.ones(3),
        level_time_h=np.column_stack([rng.uniform(2, 11, n), rng.uniform(26, 36, n)]),
        level_mg_l=levels,
    )
    return data, np.column_stack([crcl, wt])


def test_cohort_fit_equals_single_fits() -> None:
    m = load_model("goti2018_vancomycin")
    data, cov = cohort(6)
    fit = map_estimate_cohort(m, data)
    assert fit.converged.all()
    for p in range(6):
        doses = [
            Dose(time_h=float(t), amount_mg=float(a), duration_h=1.0)
            for t, a in zip(data.dose_time_h[p], data.dose_amount_mg[p], strict=True)
        ]
        levels = [Level(float(t), float(v)) for t, v in zip(data.level_time_h[p], data.level_mg_l[p], strict=True)]
        single = map_estimate(m, {"CRCL": cov[p, 0], "WT": cov[p, 1], "DIAL": 0.0}, doses, levels)
        np.testing.assert_allclose(fit.eta[p], single.eta, atol=1e-5)
        assert fit.ofv[p] == pytest.approx(single.ofv, abs=1e-8)
        np.testing.assert_allclose(fit.covariance[p], single.covariance, rtol=1e-3, atol=1e-6)


def test_newton_minimize_on_quadratics() -> None:
    centres = np.array([[1.0, -2.0], [0.5, 0.25]])
    A = np.array([[3.0, 1.0], [1.0, 2.0]])

    def fun_rows(rows: np.ndarray, pts: np.ndarray) -> np.ndarray:
        d = pts - centres[rows][:, None, :]
        return np.einsum("pmi,ij,pmj->pm", d, A, d)

    x, f, H, conv, _ = newton_minimize(fun_rows, np.zeros((2, 2)))
    np.testing.assert_allclose(x, centres, atol=1e-7)
    np.testing.assert_allclose(H, np.broadcast_to(2 * A, (2, 2, 2)), rtol=1e-5)
    assert conv.all()
    assert np.all(f < 1e-12)


def test_bad_cohort_data_is_refused() -> None:
    data, _ = cohort(3)
    with pytest.raises(ValidationError, match="before the patient's first dose"):
        CohortData(
            covariates=data.covariates,
            dose_time_h=data.dose_time_h + 50.0,
            dose_amount_mg=data.dose_amount_mg,
            dose_duration_h=data.dose_duration_h,
            level_time_h=data.level_time_h,
            level_mg_l=data.level_mg_l,
        )
    with pytest.raises(ValidationError, match="covariate CRCL"):
        CohortData(
            covariates={**data.covariates, "CRCL": np.ones(2)},
            dose_time_h=data.dose_time_h,
            dose_amount_mg=data.dose_amount_mg,
            dose_duration_h=data.dose_duration_h,
            level_time_h=data.level_time_h,
            level_mg_l=data.level_mg_l,
        )
