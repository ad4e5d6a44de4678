"""The risk equations reproduce every published example to its printed precision, and refuse what they must."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtwin.errors import ValidationError
from medtwin.risk import cha2ds2_vasc, compute_all, findrisc, has_bled, pooled_cohort, prevent, qrisk3

FIXTURES = Path(__file__).parents[1] / "fixtures" / "scores"
TABLE_S12 = {
    "age_years": 50,
    "total_chol_mg_dl": 200,
    "hdl_mg_dl": 45,
    "sbp_mm_hg": 160,
    "bp_treated": 1,
    "statin": 0,
    "diabetes": 1,
    "smoker": 0,
    "bmi_kg_m2": 35,
    "egfr_ml_min_1_73m2": 90,
}


def _rows(name: str) -> list[dict[str, str]]:
    with (FIXTURES / name).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _round_half_up(x: float, decimals: int) -> float:
    return math.floor(x * 10**decimals + 0.5) / 10**decimals


@pytest.mark.parametrize("row", _rows("pce_checks.csv"), ids=lambda r: f"{r['case']}-{r['race']}-{r['sex']}")
def test_pce_reproduces_goff_example_and_variants(row: dict[str, str]) -> None:
    r = pooled_cohort(
        {
            "age_years": 55,
            "sex": [row["sex"]],
            "race": [row["race"]],
            "total_chol_mg_dl": 213,
            "hdl_mg_dl": 50,
            "sbp_mm_hg": 120,
            "bp_treated": int(row["bp_treated"]),
            "smoker": int(row["smoker"]),
            "diabetes": int(row["diabetes"]),
        }
    )
    assert _round_half_up(100 * r.risk[0], 1) == float(row["expected_percent"])


def test_pce_white_male_example_is_within_the_guideline_tolerance() -> None:
    # RISK_EQUATIONS.md: the guideline prints 5.3 % with rounded constants; full precision gives 5.4; +-0.1 pp.
    r = pooled_cohort(
        {
            "age_years": 55,
            "sex": "male",
            "race": "white",
            "total_chol_mg_dl": 213,
            "hdl_mg_dl": 50,
            "sbp_mm_hg": 120,
            "bp_treated": 0,
            "smoker": 0,
            "diabetes": 0,
        }
    )
    assert abs(100 * r.risk[0] - 5.3) <= 0.1 + 0.05


@pytest.mark.parametrize(
    "row",
    _rows("prevent_checks.csv"),
    ids=lambda r: f"{r['source']}-{r['variant']}-{r['outcome']}-{r['years']}-{r['sex']}",
)
def test_prevent_reproduces_table_s12_and_calculator(row: dict[str, str]) -> None:
    optional = {k: [float(row[k]) if row[k] else np.nan] for k in ("uacr_mg_g", "hba1c_pct", "sdi_decile")}
    r = prevent(
        {**TABLE_S12, "sex": [row["sex"]], **optional},
        outcome=row["outcome"],  # type: ignore[arg-type]
        years=int(row["years"]),
        variant=row["variant"],
    )  # type: ignore[arg-type]
    assert round(float(r.risk[0]), int(row["decimals"])) == pytest.approx(float(row["expected"]), abs=1e-12)


def test_prevent_auto_variant_follows_the_calculator() -> None:
    inputs = {
        **TABLE_S12,
        "sex": ["female"] * 4,
        "uacr_mg_g": [np.nan, 40, 40, np.nan],
        "hba1c_pct": [np.nan, np.nan, 7.5, np.nan],
        "sdi_decile": [np.nan, np.nan, 8, np.nan],
    }
    r = prevent(inputs)
    assert list(r.inputs["variant"]) == ["base", "acr", "full", "base"]
    assert np.round(r.risk[:3], 4).tolist() == [0.1468, 0.1599, 0.1560]


def test_prevent_missing_optional_is_named_not_imputed() -> None:
    r = prevent({**TABLE_S12, "sex": ["female"], "uacr_mg_g": [40], "hba1c_pct": [7.5]}, variant="full")
    assert round(float(r.risk[0]), 3) == 0.150
    assert any("social deprivation index not recorded" in m for m in r.reasons(0))


def test_prevent_refuses_outside_its_range_and_names_missing_egfr() -> None:
    r = prevent(
        {**TABLE_S12, "sex": ["female"] * 3, "age_years": [29, 50, 65], "egfr_ml_min_1_73m2": [90, np.nan, 90]},
        years=30,
    )
    assert np.isnan(r.risk).all()
    assert "age outside its validity range 30-59 years" in r.reasons(0)[0]
    assert r.reasons(1) == ["cannot compute PREVENT 30-year total CVD: no eGFR"]
    assert "30-59" in r.reasons(2)[0]


def test_prevent_heart_failure_needs_bmi_but_not_cholesterol() -> None:
    inputs = {**TABLE_S12, "sex": ["male"], "total_chol_mg_dl": [np.nan], "hdl_mg_dl": [np.nan]}
    assert round(float(prevent(inputs, outcome="hf").risk[0]), 4) == 0.1059
    assert np.isnan(prevent(inputs, outcome="cvd").risk[0])
    assert np.isnan(prevent({**inputs, "bmi_kg_m2": [np.nan]}, outcome="hf").risk[0])


def _qrisk3_inputs(d: pd.DataFrame) -> dict[str, object]:
    return {
        "age_years": d.age,
        "sex": np.where(d.gender == 1, "female", "male"),
        "bmi_kg_m2": d.weight / (d.height / 100) ** 2,
        "chol_hdl_ratio": d.rati,
        "sbp_mm_hg": d.sbp,
        "sbp_sd_mm_hg": d.sbps5,
        "townsend": d.town,
        "ethnicity_qrisk": d.ethrisk,
        "smoking_category": d.smoke_cat - 1,
        "diabetes_type": np.where(d.b_type1 == 1, 1, np.where(d.b_type2 == 1, 2, 0)),
        "af": d.b_AF,
        "atypical_antipsychotic": d.b_atypicalantipsy,
        "corticosteroids": d.b_corticosteroids,
        "erectile_dysfunction": d.b_impotence2,
        "migraine": d.b_migraine,
        "rheumatoid_arthritis": d.b_ra,
        "ckd_3_5": d.b_renal,
        "severe_mental_illness": d.b_semi,
        "sle": d.b_sle,
        "bp_treated": d.b_treatedhyp,
        "family_history_chd": d.fh_cvd,
    }


def test_qrisk3_matches_clinrisk_c_algorithm_on_all_49_profiles() -> None:
    d = pd.read_csv(FIXTURES / "qrisk3_clinrisk_c_2019.csv")
    r = qrisk3(_qrisk3_inputs(d))
    got = [_round_half_up(100 * x, 1) for x in r.risk]
    assert got == d.QRISK_C_algorithm_score.tolist()
    assert r.status().tolist() == ["ok"] * len(d)


def test_qrisk3_refuses_age_and_flags_calculator_conventions() -> None:
    d = pd.read_csv(FIXTURES / "qrisk3_clinrisk_c_2019.csv").iloc[[0, 0, 0]]
    inputs = _qrisk3_inputs(d)
    inputs["age_years"] = np.array([24, 64, 64])
    inputs["bmi_kg_m2"] = np.array([25, 45, 25])
    inputs["townsend"] = np.array([0, 0, np.nan])
    r = qrisk3(inputs)
    assert np.isnan(r.risk[0])
    assert "25-84" in r.reasons(0)[0]
    at_40 = qrisk3({**inputs, "bmi_kg_m2": np.array([25, 40, 25])}).risk[1]
    assert r.risk[1] == pytest.approx(at_40)
    assert any("BMI outside 20-40" in m and "45" in m for m in r.reasons(1))
    assert any("Townsend deprivation score not known" in m for m in r.reasons(2))


def test_points_scores() -> None:
    f = findrisc(
        {
            "age_years": [44, 60, 70],
            "sex": ["male", "female", "female"],
            "bmi_kg_m2": [24.9, 30, 30.1],
            "waist_cm": [93.9, 88, 88.1],
            "physically_active": [1, 0, 0],
            "daily_fruit_veg": [1, 0, 0],
            "bp_medication_ever": [0, 1, 1],
            "high_glucose_ever": [0, 0, 1],
            "family_history_diabetes": [0, 1, 2],
        }
    )
    assert f.points.tolist() == [0, 3 + 1 + 3 + 2 + 1 + 2 + 3, 4 + 3 + 4 + 2 + 1 + 2 + 5 + 5]
    assert f.band.tolist() == ["low", "high", "very high"]
    c = cha2ds2_vasc(
        {
            "age_years": [64, 65, 75, 80],
            "sex": ["male", "female", "male", "female"],
            "heart_failure": [0, 1, 0, 1],
            "hypertension": [0, 1, 0, 1],
            "diabetes": [0, 1, 0, 1],
            "stroke_tia": [0, 1, 0, 1],
            "vascular_disease": [0, 1, 0, 1],
            "af": [1, 1, 1, 0],
        }
    )
    assert c.points[:3].tolist() == [0, 1 + 1 + 1 + 1 + 2 + 1 + 1, 2]
    assert np.isnan(c.points[3])
    assert "no atrial fibrillation" in c.reasons(3)[0]
    h = has_bled(
        {
            "age_years": [66, 60],
            "sbp_mm_hg": [161, 160],
            "abnormal_renal": [1, 0],
            "abnormal_liver": [1, 0],
            "stroke": [1, 0],
            "bleeding": [1, 0],
            "labile_inr": [1, np.nan],
            "antiplatelet_or_nsaid": [1, 0],
            "alcohol_excess": [1, np.nan],
        }
    )
    assert h.points[0] == 9
    assert np.isnan(h.points[1])
    assert any("alcohol" in m for m in h.reasons(1))
    assert any("labile INR not known" in m for m in h.reasons(1))


def test_bad_inputs_raise_specific_errors() -> None:
    with pytest.raises(ValidationError, match="'smoker'"):
        pooled_cohort({"age_years": [50], "sex": ["male"], "race": ["white"], "smoker": ["sometimes"]})
    with pytest.raises(ValidationError, match="outcome"):
        prevent(TABLE_S12, outcome="stroke")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown risk equation"):
        compute_all(TABLE_S12, ["framingham"])


def test_contributions_add_up_to_the_risk() -> None:
    rng = np.random.default_rng(3)
    n = 500
    inputs = {
        "age_years": rng.uniform(40, 79, n),
        "sex": rng.choice(["male", "female"], n),
        "race": rng.choice(["white", "black"], n),
        "total_chol_mg_dl": rng.uniform(130, 320, n),
        "hdl_mg_dl": rng.uniform(20, 100, n),
        "sbp_mm_hg": rng.uniform(90, 180, n),
        "bp_treated": rng.integers(0, 2, n),
        "smoker": rng.integers(0, 2, n),
        "diabetes": rng.integers(0, 2, n),
        "statin": rng.integers(0, 2, n),
        "egfr_ml_min_1_73m2": rng.uniform(15, 140, n),
        "bmi_kg_m2": rng.uniform(18.5, 39.9, n),
        "uacr_mg_g": rng.uniform(1, 300, n),
        "smoking_category": rng.integers(0, 5, n),
        "diabetes_type": rng.integers(0, 3, n),
        "af": rng.integers(0, 2, n),
    }
    for r in (pooled_cohort(inputs), prevent(inputs, outcome="hf"), prevent(inputs, variant="acr"), qrisk3(inputs)):
        ok = ~r.refused
        assert ok.sum() > 400
        lp_sum = r.reference_lp + sum(r.contributions.values())
        np.testing.assert_allclose(lp_sum[ok], r.lp[ok], atol=1e-9)
        risk_sum = r.reference_risk + sum(r.risk_contributions().values())
        np.testing.assert_allclose(risk_sum[ok], r.risk[ok], atol=1e-9)
