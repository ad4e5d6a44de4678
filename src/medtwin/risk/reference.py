"""Per-person reference implementations: the same equations written plainly, one person at a time, in floats.

They read like the papers (and the QRISK3 C source) and share only the coefficient tables with the vectorised
code; a test holds the two to 1e-12 on random cohorts, and bench/risk.py uses them as the straightforward
baseline. Inputs are already valid (no range checks): this is arithmetic, not the API.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from medtwin.risk.pce import _coefficients as _pce_coefficients
from medtwin.risk.prevent import MG_DL_TO_MMOL_L, PREVENT_OUTCOMES, _table
from medtwin.risk.qrisk3 import _model

__all__ = ["cha2ds2_vasc_one", "findrisc_one", "has_bled_one", "pce_one", "prevent_one", "qrisk3_one"]


def pce_one(p: Mapping[str, float | str]) -> float:
    """10-year ASCVD risk of one person by the Pooled Cohort Equations."""
    black = p["race"] == "black"
    group = f"{'black' if black else 'white'}_{p['sex']}"
    b = _pce_coefficients()[group]
    la = math.log(float(p["age_years"]))
    lt, lh, ls = (
        math.log(float(p["total_chol_mg_dl"])),
        math.log(float(p["hdl_mg_dl"])),
        math.log(float(p["sbp_mm_hg"])),
    )
    if p["bp_treated"]:
        bp = (b["ln_treated_sbp"] + b["ln_age_x_ln_treated_sbp"] * la) * ls
    else:
        bp = (b["ln_untreated_sbp"] + b["ln_age_x_ln_untreated_sbp"] * la) * ls
    s = (
        b["ln_age"] * la
        + b["ln_age_sq"] * la * la
        + b["ln_tc"] * lt
        + b["ln_age_x_ln_tc"] * la * lt
        + b["ln_hdl"] * lh
        + b["ln_age_x_ln_hdl"] * la * lh
        + bp
        + (b["smoker"] + b["ln_age_x_smoker"] * la) * float(p["smoker"])
        + b["diabetes"] * float(p["diabetes"])
    )
    return float(1.0 - b["s0_10y"] ** math.exp(s - b["mean"]))


def prevent_one(p: Mapping[str, float | str], variant: str, years: int, outcome: str) -> float:
    """PREVENT risk of one person with one named variant (optional predictors may be NaN: missing terms)."""
    col = 2 * PREVENT_OUTCOMES.index(outcome) + (1 if p["sex"] == "male" else 0)
    c = {k: v[col] for k, v in _table(variant, years).items()}
    age, tc, hdl, sbp = (float(p[k]) for k in ("age_years", "total_chol_mg_dl", "hdl_mg_dl", "sbp_mm_hg"))
    bmi, egfr = float(p["bmi_kg_m2"]), float(p["egfr_ml_min_1_73m2"])
    dm, smoke, bpt, st = (float(p[k]) for k in ("diabetes", "smoker", "bp_treated", "statin"))
    a = (age - 55) / 10
    nh = (tc - hdl) * MG_DL_TO_MMOL_L - 3.5
    h = (hdl * MG_DL_TO_MMOL_L - 1.3) / 0.3
    sbp_lo, sbp_hi = (min(sbp, 110) - 110) / 20, (max(sbp, 110) - 130) / 20
    bmi_lo, bmi_hi = (min(bmi, 30) - 25) / 5, (max(bmi, 30) - 30) / 5
    egfr_lo, egfr_hi = (min(egfr, 60) - 60) / -15, (max(egfr, 60) - 90) / -15
    x = (
        c["const"]
        + c["age_per_10_years"] * a
        + c["age_per_10_years_squared"] * a * a
        + c["non_hdl_c_per_1_mmol_l"] * nh
        + c["hdl_c_per_0.3_mmol_l"] * h
        + c["sbp_lt110_per_20_mmhg"] * sbp_lo
        + c["sbp_gteq110_per_20_mmhg"] * sbp_hi
        + c["diabetes"] * dm
        + c["current_smoking"] * smoke
        + c["bmi_lt30_per_5_kg_m2"] * bmi_lo
        + c["bmi_gt30_per_5_kg_m2"] * bmi_hi
        + c["egfr_lt60_per_15_ml"] * egfr_lo
        + c["egfr_gteq60_per_15_ml"] * egfr_hi
        + c["anti_hypertensive_use"] * bpt
        + c["statin_use"] * st
        + c["treated_sbp_gteq110_mm_hg_per_20_mm_hg"] * bpt * sbp_hi
        + c["treated_non_hdl_c"] * st * nh
        + a
        * (
            c["age_per_10yr_x_non_hdl_c_per_1_mmol_l"] * nh
            + c["age_per_10yr_x_hdl_c_per_0.3_mml_l"] * h
            + c["age_per_10yr_x_sbp_gteq110_mm_hg_per_20_mmhg"] * sbp_hi
            + c["age_per_10yr_x_diabetes"] * dm
            + c["age_per_10yr_x_current_smoking"] * smoke
            + c["age_per_10yr_x_bmi_gteq30_per_5_kg_m2"] * bmi_hi
            + c["age_per_10yr_x_egfr_lt60_per_15_ml"] * egfr_lo
        )
    )
    acr, a1c, sdi = float(p["uacr_mg_g"]), float(p["hba1c_pct"]), float(p["sdi_decile"])
    if variant in ("acr", "full"):
        x += c["miss_ln_acr"] if math.isnan(acr) else c["ln_acr"] * math.log(acr)
    if variant in ("hba1c", "full"):
        if math.isnan(a1c):
            x += c["miss_hba1c"]
        else:
            x += (c["hba1c_minus_5.3_x_diabetes"] * dm + c["hba1c_minus_5.3_x_1_minus_diabetes"] * (1 - dm)) * (
                a1c - 5.3
            )
    if variant in ("sdi", "full"):
        if math.isnan(sdi):
            x += c["miss_sdi"]
        else:
            x += c["sdi_decile_between_4_and_6"] * (4 <= sdi <= 6) + c["sdi_decile_between_7_and_10"] * (sdi >= 7)
    return 1.0 / (1.0 + math.exp(-x))


_QRISK3_BOOLEAN = {
    "af": "b_AF",
    "atypical_antipsychotic": "b_atypicalantipsy",
    "corticosteroids": "b_corticosteroids",
    "erectile_dysfunction": "b_impotence2",
    "migraine": "b_migraine",
    "rheumatoid_arthritis": "b_ra",
    "ckd_3_5": "b_renal",
    "severe_mental_illness": "b_semi",
    "sle": "b_sle",
    "bp_treated": "b_treatedhyp",
    "family_history_chd": "fh_cvd",
}


def qrisk3_one(p: Mapping[str, float | str]) -> float:
    """QRISK3-2017 10-year risk of one person, in the shape of ClinRisk's ``cvd_*_raw`` functions."""
    male = p["sex"] == "male"
    m = _model()["male" if male else "female"]
    dage = float(p["age_years"]) / 10
    age_1 = (dage**-1 if male else dage**-2) - m["centre"]["age_1"]
    age_2 = (dage**3 if male else dage) - m["centre"]["age_2"]
    dbmi = float(p["bmi_kg_m2"]) / 10
    terms = {
        "age_1": age_1,
        "age_2": age_2,
        "bmi_1": dbmi**-2 - m["centre"]["bmi_1"],
        "bmi_2": dbmi**-2 * math.log(dbmi) - m["centre"]["bmi_2"],
        "rati": float(p["chol_hdl_ratio"]) - m["centre"]["rati"],
        "sbp": float(p["sbp_mm_hg"]) - m["centre"]["sbp"],
        "sbps5": float(p["sbp_sd_mm_hg"]) - m["centre"]["sbps5"],
        "town": float(p["townsend"]) - m["centre"]["town"],
    }
    smoke = int(p["smoking_category"])
    dtype = int(p["diabetes_type"])
    flags = {term: float(p.get(col, 0.0)) for col, term in _QRISK3_BOOLEAN.items()}
    if not male:
        flags["b_impotence2"] = 0.0
    flags["b_type1"], flags["b_type2"] = float(dtype == 1), float(dtype == 2)
    a = m["ethrisk"][int(p["ethnicity_qrisk"]) - 1] + m["smoke"][smoke]
    a += sum(m["continuous"][k] * v for k, v in terms.items())
    a += sum(m["boolean"][k] * v for k, v in flags.items())
    for age_term, table in ((age_1, m["age_1_x"]), (age_2, m["age_2_x"])):
        if smoke:
            a += age_term * table[f"smoke_{smoke}"]
        a += age_term * sum(table[k] * v for k, v in flags.items() if k in table)
        a += age_term * sum(table[k] * terms[k] for k in ("bmi_1", "bmi_2", "sbp", "town"))
    return float(1.0 - m["survivor_10y"] ** math.exp(a))


def findrisc_one(p: Mapping[str, float | str]) -> int:
    """FINDRISC points of one person."""
    age, bmi, waist = float(p["age_years"]), float(p["bmi_kg_m2"]), float(p["waist_cm"])
    low, high = (94, 102) if p["sex"] == "male" else (80, 88)
    points = 0 if age < 45 else 2 if age < 55 else 3 if age < 65 else 4
    points += 0 if bmi < 25 else 1 if bmi <= 30 else 3
    points += 0 if waist < low else 3 if waist <= high else 4
    points += 2 * (not p["physically_active"]) + (not p["daily_fruit_veg"])
    points += 2 * bool(p["bp_medication_ever"]) + 5 * bool(p["high_glucose_ever"])
    return points + (0, 3, 5)[int(p["family_history_diabetes"])]


def cha2ds2_vasc_one(p: Mapping[str, float | str]) -> int:
    """CHA2DS2-VASc points of one person."""
    age = float(p["age_years"])
    return int(
        bool(p["heart_failure"])
        + bool(p["hypertension"])
        + (2 if age >= 75 else 1 if age >= 65 else 0)
        + bool(p["diabetes"])
        + 2 * bool(p["stroke_tia"])
        + bool(p["vascular_disease"])
        + (p["sex"] == "female")
    )


def has_bled_one(p: Mapping[str, float | str]) -> int:
    """HAS-BLED points of one person."""
    items = (
        "abnormal_renal",
        "abnormal_liver",
        "stroke",
        "bleeding",
        "labile_inr",
        "antiplatelet_or_nsaid",
        "alcohol_excess",
    )
    return int((float(p["sbp_mm_hg"]) > 160) + (float(p["age_years"]) > 65) + sum(bool(p[k]) for k in items))
