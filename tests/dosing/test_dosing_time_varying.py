"""Time-varying covariates (LOCF): exact piecewise solution, MAP and case files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from medtwin.dosing import (
    CovariateSeries,
    Dose,
    Level,
    analyze_case,
    load_model,
    map_estimate,
    objective,
    parse_case,
    predict_auc,
    predict_concentrations,
)
from medtwin.errors import ValidationError
from medtwin.sim.linear import InputSchedule, output_piecewise

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pk"
DOSES = [Dose(time_h=0.0, amount_mg=1000.0, duration_h=1.0, interval_h=12.0, additional=4)]


def test_constant_series_equals_scalar_covariate() -> None:
    m = load_model("goti2018_vancomycin")
    flat = CovariateSeries.build("CRCL", [0.0, 20.0], [80.0, 80.0])
    t = np.linspace(0, 60, 31)
    a = predict_concentrations(m, {"CRCL": flat, "WT": 70.0, "DIAL": 0.0}, DOSES, t, np.zeros(3))
    b = predict_concentrations(m, {"CRCL": 80.0, "WT": 70.0, "DIAL": 0.0}, DOSES, t, np.zeros(3))
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_renal_decline_matches_ode_solution() -> None:
    m = load_model("goti2018_vancomycin")
    crcl = CovariateSeries.build("CRCL", [0.0, 30.0], [100.0, 30.0])  # AKI at 30 h (LOCF)
    cov = {"CRCL": crcl, "WT": 70.0, "DIAL": 0.0}
    t = np.linspace(0.5, 60, 25)
    got = predict_concentrations(m, cov, DOSES, t, np.zeros(3))[0]
    params = [m.system({"CRCL": c, "WT": 70.0, "DIAL": 0.0}, np.zeros((1, 3))) for c in (100.0, 30.0)]

    def rhs(tt: float, y: np.ndarray) -> np.ndarray:
        A = params[0 if tt < 30.0 else 1].matrix[0]
        rate = 1000.0 if any(s <= tt < s + 1.0 for s in (0, 12, 24, 36, 48)) else 0.0
        return A @ y + np.array([rate, 0.0])

    sol = solve_ivp(rhs, (0, 60), [0.0, 0.0], t_eval=t, rtol=1e-10, atol=1e-10, max_step=0.02)
    v1 = float(params[0].parameters["V1"][0])
    np.testing.assert_allclose(got, sol.y[0] / v1, rtol=1e-5)
    # lower clearance after 30 h: more exposure than with the initial value throughout
    high = predict_auc(m, {"CRCL": 100.0, "WT": 70.0, "DIAL": 0.0}, DOSES, [36.0], [60.0], np.zeros(3))
    assert predict_auc(m, cov, DOSES, [36.0], [60.0], np.zeros(3))[0, 0] > high[0, 0]


def test_piecewise_solver_validation() -> None:
    A = np.array([[-0.1]])
    inp = InputSchedule.build([0.0], [1.0], duration=[5.0], ss_interval=[12.0])
    with pytest.raises(ValidationError, match="steady-state dose must end"):
        output_piecewise([A, A], [[1.0], [1.0]], [2.0], inp, [1.0])
    with pytest.raises(ValidationError, match="need 2 matrices"):
        output_piecewise([A], [[1.0]], [2.0], inp, [1.0])


def test_map_with_time_varying_covariate() -> None:
    m = load_model("goti2018_vancomycin")
    crcl = CovariateSeries.build("CRCL", [0.0, 30.0], [100.0, 30.0])
    cov = {"CRCL": crcl, "WT": 70.0, "DIAL": 0.0}
    truth = np.array([0.2, -0.1, 0.1])
    y = predict_concentrations(m, cov, DOSES, [11.9, 47.9], truth)[0]
    fit = map_estimate(m, cov, DOSES, [Level(11.9, float(y[0])), Level(47.9, float(y[1]))])
    assert fit.converged
    levels = [Level(11.9, float(y[0])), Level(47.9, float(y[1]))]
    around = fit.eta + np.random.default_rng(0).normal(scale=0.05, size=(30, 3))
    assert np.all(objective(m, cov, DOSES, levels, around) >= fit.ofv - 1e-9)
    np.testing.assert_allclose(
        fit.predictions_mg_l, predict_concentrations(m, cov, DOSES, [11.9, 47.9], fit.eta)[0], rtol=1e-12
    )
    assert fit.parameters["CL"] == pytest.approx(4.5 * (30 / 120) ** 0.8 * np.exp(fit.eta[0]))


def test_case_file_with_creatinine_series() -> None:
    data = json.loads((FIXTURES / "case_a.json").read_text())
    data["covariates"] = {
        "age_y": 70,
        "sex": "male",
        "weight_kg": 70,
        "dialysis": 0,
        "scr": [{"time_h": 0, "value": 1.0, "unit": "mg/dL"}, {"time_h": 30, "value": 2.0, "unit": "mg/dL"}],
    }
    case = parse_case(data)
    crcl = case.covariates["CRCL"]
    assert isinstance(crcl, CovariateSeries)
    assert crcl.at(10.0) == pytest.approx(70 * 70 / 72)
    assert crcl.at(40.0) == pytest.approx(70 * 70 / 144)
    report = analyze_case(case, n_samples=200)
    assert report.parameters["CL"]["value"] == pytest.approx(
        4.5 * (70 * 70 / 144 / 120) ** 0.8 * np.exp(report.fit.eta[0])  # type: ignore[union-attr]
    )
    assert any("CRCL varies in time" in n for n in report.to_dict()["notes"])
