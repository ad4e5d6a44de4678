"""Dosing records through the dosing layer: oral absorption with lag and F, repeats, steady state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtwin.dosing import (
    Dose,
    DoseError,
    Level,
    load_model,
    map_estimate,
    predict_auc,
    predict_concentrations,
    steady_state_metrics,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pk"


def bateman(t: np.ndarray, dose: float) -> np.ndarray:
    f, ka, cl, v, tlag = 0.8, 1.0, 5.0, 50.0, 0.5
    k = cl / v
    s = np.maximum(t - tlag, 0.0)
    return f * dose * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s))


def test_oral_dose_with_lag_and_bioavailability_matches_bateman() -> None:
    m = load_model(FIXTURES / "oral_1cmt_example.toml")
    t = np.array([0.0, 0.4, 0.5, 1.0, 3.0, 12.0])
    got = predict_concentrations(m, {"WT": 70.0}, [Dose(time_h=0.0, amount_mg=500.0, route="oral")], t, np.zeros(2))
    np.testing.assert_allclose(got[0], bateman(t, 500.0), rtol=1e-10, atol=1e-14)
    auc = predict_auc(m, {"WT": 70.0}, [Dose(time_h=0.0, amount_mg=500.0, route="oral")], [0.0], [1e4], np.zeros(2))
    assert auc[0, 0] == pytest.approx(0.8 * 500.0 / 5.0, rel=1e-9)  # F * dose / CL


def test_oral_steady_state_peak_and_trough() -> None:
    m = load_model(FIXTURES / "oral_1cmt_example.toml")
    ss = steady_state_metrics(
        m, {"WT": 70.0}, amount_mg=500.0, interval_h=8.0, duration_h=0.0, etas=np.zeros((1, 2)), route="oral"
    )
    reps = [Dose(time_h=0.0, amount_mg=500.0, interval_h=8.0, additional=99, route="oral")]
    grid = 792.0 + np.arange(0.0, 8.0001, 0.05)
    c = predict_concentrations(m, {"WT": 70.0}, reps, grid, np.zeros(2))[0]
    assert ss["trough_ss"][0] == pytest.approx(c[-1], rel=1e-6)
    assert ss["peak_ss"][0] == pytest.approx(c.max(), rel=1e-6)
    assert ss["auc24_ss"][0] == pytest.approx(3 * 0.8 * 500.0 / 5.0, rel=1e-9)


def test_additional_doses_equal_separate_records() -> None:
    m = load_model("goti2018_vancomycin")
    cov = {"CRCL": 70.0, "WT": 80.0, "DIAL": 0.0}
    t = np.linspace(0, 60, 61)
    addl = [Dose(time_h=0.0, amount_mg=1000.0, rate_mg_h=1000.0, interval_h=12.0, additional=3)]
    sep = [Dose(time_h=12.0 * i, amount_mg=1000.0, duration_h=1.0) for i in range(4)]
    np.testing.assert_allclose(
        predict_concentrations(m, cov, addl, t, np.zeros(3)),
        predict_concentrations(m, cov, sep, t, np.zeros(3)),
        rtol=1e-12,
    )


def test_steady_state_record_matches_many_doses() -> None:
    m = load_model("thomson2009_vancomycin")
    cov = {"CRCL": 60.0, "WT": 70.0}
    ss = [Dose(time_h=0.0, amount_mg=1000.0, duration_h=1.0, interval_h=12.0, steady_state=True)]
    many = [Dose(time_h=-1200.0, amount_mg=1000.0, duration_h=1.0, interval_h=12.0, additional=100)]
    t = np.array([0.5, 1.0, 6.0, 11.9])
    np.testing.assert_allclose(
        predict_concentrations(m, cov, ss, t, np.zeros(4)),
        predict_concentrations(m, cov, many, t, np.zeros(4)),
        rtol=1e-6,
    )


def test_map_on_oral_model_recovers_noise_free_etas() -> None:
    m = load_model(FIXTURES / "oral_1cmt_example.toml")
    doses = [Dose(time_h=0.0, amount_mg=500.0, interval_h=8.0, additional=5, route="oral")]
    truth = np.array([0.15, -0.1])
    t = [1.5, 7.9, 41.0, 47.9]
    y = predict_concentrations(m, {"WT": 70.0}, doses, t, truth)[0]
    fit = map_estimate(m, {"WT": 70.0}, doses, [Level(a, float(b)) for a, b in zip(t, y, strict=True)])
    # noise-free data: the posterior mode is pulled only slightly towards 0 by the prior
    np.testing.assert_allclose(fit.eta, truth, atol=0.03)
    assert fit.converged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount_mg": -1.0}, "amount_mg must be >= 0"),
        ({"amount_mg": 1.0, "duration_h": -2.0}, "duration_h must be >= 0"),
        ({"amount_mg": 1.0, "duration_h": 1.0, "rate_mg_h": 5.0}, "not both"),
        ({"amount_mg": 1.0, "additional": 2}, "need interval_h > 0"),
        ({"amount_mg": 1.0, "steady_state": True, "interval_h": 2.0, "duration_h": 3.0}, "longer than"),
        ({"amount_mg": float("nan")}, "finite"),
    ],
)
def test_bad_dose_records(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(DoseError, match=message):
        Dose(time_h=0.0, **kwargs)  # type: ignore[arg-type]


def test_oral_dose_on_iv_model_is_refused() -> None:
    m = load_model("goti2018_vancomycin")
    with pytest.raises(DoseError, match="no absorption"):
        predict_concentrations(
            m,
            {"CRCL": 70.0, "WT": 80.0, "DIAL": 0.0},
            [Dose(time_h=0.0, amount_mg=1.0, route="oral")],
            [1.0],
            np.zeros(3),
        )
