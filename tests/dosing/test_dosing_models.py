"""Model library conformance and model-file validation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from medtwin.dosing import (
    Dose,
    ModelError,
    library_models,
    load_model,
    predict_auc,
    predict_concentrations,
    steady_state_metrics,
)
from medtwin.dosing.expressions import compile_expression
from medtwin.errors import ValidationError

TYPICAL = {"CRCL": 80.0, "WT": 75.0, "DIAL": 0.0}


def test_library_has_the_required_models() -> None:
    assert set(library_models()) >= {
        "goti2018_vancomycin",
        "thomson2009_vancomycin",
        "buelga2005_vancomycin",
        "xuan2003_gentamicin",
    }


@pytest.mark.parametrize("model_id", library_models())
def test_library_model_conformance(model_id: str) -> None:
    m = load_model(model_id)
    # provenance and conventions are declared
    assert m.citation
    assert re.fullmatch(r"10\.\d{4,9}/\S+", m.doi), m.doi  # a real DOI, not a placeholder
    assert m.erratum
    assert m.validity_source  # where the validity ranges come from
    assert all(isinstance(u, str) and u for u in m.unverified)
    assert m.omega_convention
    assert m.error.kind in ("additive", "proportional", "combined1", "combined2")
    assert all(c.unit for c in m.covariates)
    assert all(c.valid_min is not None and c.valid_max is not None for c in m.covariates)
    assert np.all(np.linalg.eigvalsh(m.omega) > 0)
    assert Path(__file__).parents[2].joinpath("docs", "models", f"{model_id}.md").is_file()
    cov = {c.name: TYPICAL[c.name] if c.unit != "L/h" else 4.8 for c in m.covariates}
    eta0 = np.zeros((1, len(m.eta_names)))
    params = m.system(cov, eta0).parameters
    cl = float(params["CL"][0])
    # mass balance: AUC to infinity of one dose equals dose / CL, and AUC_tau at SS too
    dose = [Dose(time_h=0.0, amount_mg=1000.0, duration_h=1.0)]
    auc_inf = predict_auc(m, cov, dose, [0.0], [1e5], eta0)[0, 0]
    assert auc_inf == pytest.approx(1000.0 / cl, rel=1e-8)
    ss = steady_state_metrics(m, cov, amount_mg=1000.0, interval_h=12.0, duration_h=1.0, etas=eta0)
    assert ss["auc24_ss"][0] == pytest.approx(2000.0 / cl, rel=1e-8)
    assert ss["peak_ss"][0] > ss["trough_ss"][0] > 0
    conc = predict_concentrations(m, cov, dose, np.linspace(0, 48, 49), eta0)[0]
    assert np.all(conc >= 0)
    assert np.all(np.diff(conc[2:]) < 0)  # declines after the infusion


def test_goti_typical_values() -> None:
    m = load_model("goti2018_vancomycin")
    p = m.system({"CRCL": 120.0, "WT": 70.0, "DIAL": 1.0}, np.zeros((1, 3))).parameters
    assert float(p["CL"][0]) == pytest.approx(4.5 * 0.7)
    assert float(p["V1"][0]) == pytest.approx(58.4 * 0.5)
    assert float(p["V2"][0]) == pytest.approx(38.4)


def test_buelga_omega_from_cv_and_correlation() -> None:
    om = load_model("buelga2005_vancomycin").omega
    np.testing.assert_allclose(om, [[0.07929856, 0.02418685], [0.02418685, 0.13801225]], rtol=1e-6)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.toml"
    p.write_text(text, encoding="utf-8")
    return p


BASE = """
schema = 1
[model]
id = "t"
drug = "d"
title = "t"
citation = "c"
doi = "x"
[covariates.WT]
unit = "kg"
from = "weight_kg"
valid = [40.0, 150.0]
[parameters]
CL = "{cl}"
V = "10 * exp(ETA_V)"
[structure]
compartments = 1
k10 = "CL / V"
central_volume = "V"
[omega]
etas = ["ETA_V"]
variance = [0.1]
[error]
model = "{err}"
additive_sd_mg_l = 1.0
"""


def test_user_model_file_loads(tmp_path: Path) -> None:
    m = load_model(write(tmp_path, BASE.format(cl="0.1 * WT", err="additive")))
    assert m.compartments == 1
    assert m.eta_names == ("ETA_V",)


@pytest.mark.parametrize(
    ("cl", "err", "message"),
    [
        ("0.1 * HEIGHT", "additive", "undefined names"),
        ("__import__('os') * WT", "additive", "unknown function __import__"),
        ("0.1 *", "additive", "cannot parse"),
        ("0.1 * WT", "lognormal", "unknown error model"),
    ],
)
def test_bad_model_files_are_refused(tmp_path: Path, cl: str, err: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_model(write(tmp_path, BASE.format(cl=cl, err=err)))


def test_unknown_model_lists_the_library() -> None:
    with pytest.raises(ModelError, match="goti2018_vancomycin"):
        load_model("nosuchmodel")


def test_expression_attribute_access_is_refused() -> None:
    with pytest.raises(ValidationError, match="attribute access"):
        compile_expression("WT.__class__")
    assert compile_expression("max(2, 3) + min(1, 0)")({}) == 3.0


@pytest.mark.parametrize("model_id", library_models())
def test_map_converges_on_every_library_model(model_id: str) -> None:
    from medtwin.dosing import Level, map_estimate, objective

    m = load_model(model_id)
    cov = {c.name: TYPICAL[c.name] if c.unit != "L/h" else 4.8 for c in m.covariates}
    k = len(m.eta_names)
    truth = 0.5 * np.sqrt(np.diag(m.omega)) * np.resize([1.0, -1.0], k)
    doses = [Dose(time_h=0.0, amount_mg=1000.0, duration_h=1.0, interval_h=12.0, additional=3)]
    t = [1.5, 11.5, 37.5, 47.5]
    y = predict_concentrations(m, cov, doses, t, truth)[0]
    levels = [Level(a, float(b)) for a, b in zip(t, y, strict=True)]
    fit = map_estimate(m, cov, doses, levels)
    assert fit.converged
    around = fit.eta + np.random.default_rng(1).normal(scale=0.02, size=(40, k))
    assert np.all(objective(m, cov, doses, levels, around) >= fit.ofv - 1e-9)
    assert np.all(np.linalg.eigvalsh(fit.covariance) > 0)


def test_public_api_is_pinned() -> None:
    import medtwin.dosing

    assert set(medtwin.dosing.__all__) == {
        "CaseError",
        "CohortData",
        "CohortMapResult",
        "Constraint",
        "CovariateSeries",
        "CovariateSpec",
        "Dose",
        "DoseError",
        "DosingReport",
        "ErrorModel",
        "Level",
        "MapResult",
        "ModelError",
        "PKModel",
        "PKSystem",
        "PatientCase",
        "Proposal",
        "RegimenOptions",
        "SirResult",
        "Target",
        "TargetSpec",
        "adjusted_body_weight_kg",
        "analyze_case",
        "bsa_dubois_m2",
        "bsa_mosteller_m2",
        "cockcroft_gault_ml_min",
        "creatinine_mg_dl",
        "dose_for_target",
        "ideal_body_weight_kg",
        "interval_for_concentration",
        "laplace_covariance",
        "library_models",
        "load_case",
        "load_model",
        "maintenance_doses",
        "map_estimate",
        "map_estimate_cohort",
        "objective",
        "parse_case",
        "parse_target",
        "predict_auc",
        "predict_concentrations",
        "round_dose",
        "sir_sample",
        "steady_state_metrics",
        "time_to_threshold",
        "to_records",
    }
    for name in medtwin.dosing.__all__:
        assert getattr(medtwin.dosing, name) is not None


def test_provenance_states_what_was_verified_and_what_was_not() -> None:
    goti = load_model("goti2018_vancomycin")
    # Goti 2018 Table 1 ranges (via nlmixr2lib): age 17-101 y, weight 33-255 kg, CrCL 4-150 mL/min
    assert goti.raw_validity["age_y"] == (17.0, 101.0)
    spec = {c.name: (c.valid_min, c.valid_max) for c in goti.covariates}
    assert spec["WT"] == (33.0, 255.0)
    assert spec["CRCL"] == (4.0, 150.0)
    xuan = load_model("xuan2003_gentamicin")
    assert xuan.doi == "10.1016/j.ijantimicag.2003.07.010"
    assert "Int J Antimicrob Agents. 2004;23(3)" in xuan.citation
    # the Xuan variances are ln(CV^2 + 1) of the published %CV 29.6 / 5.8 / 69.9 / 63.9
    cv = np.array([0.296, 0.058, 0.699, 0.639])
    assert np.allclose(np.diag(xuan.omega), np.log(cv**2 + 1), atol=5e-4)
    # what could not be checked is said in the file, for every library model with default ranges
    for model_id in ("thomson2009_vancomycin", "buelga2005_vancomycin", "xuan2003_gentamicin"):
        m = load_model(model_id)
        assert "default" in m.validity_source
        assert any("Validity ranges" in u or "validity ranges" in u for u in m.unverified)
    thomson = load_model("thomson2009_vancomycin")
    assert thomson.error.kind == "combined2"  # SD = sqrt(a^2 + b^2 f^2), as InsightRX codes it
    assert any("Residual error convention" in u for u in thomson.unverified)
