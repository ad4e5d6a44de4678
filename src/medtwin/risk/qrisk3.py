"""QRISK3-2017: 10-year risk of cardiovascular disease (UK primary care).

Source: Hippisley-Cox J, Coupland C, Brindle P. Development and validation of QRISK3 risk prediction algorithms
to estimate future risk of cardiovascular disease: prospective cohort study. BMJ 2017;357:j2099.
doi:10.1136/bmj.j2099. Implemented from the published algorithm, the QRISK3-2017 open-source release
(``cvd_female_raw`` / ``cvd_male_raw``, Copyright 2017 ClinRisk Ltd., LGPL-3.0-or-later, https://qrisk.org), whose
coefficients are shipped as data in ``data/qrisk3_2017.json``. Checked against the scores of ClinRisk's original
C code in the test data of the peer-reviewed QRISK3 R package (Li, F1000Research 2019).

    risk = 1 - S0(10) ** exp(a)

*a* sums the ethnicity and smoking-category terms, fractional-polynomial terms of age and BMI (women: age^-2 and
age; men: age^-1 and age^3; both sexes BMI^-2 and BMI^-2 ln BMI, all on value/10 and centred), cholesterol/HDL
ratio, SBP, the SD of recent SBP readings, Townsend deprivation, twelve yes/no conditions and their interactions
with the two age terms.

Disclaimer required by the QRISK3 licence: this implementation is medtwin's; ClinRisk Ltd. stress that it is the
end user's responsibility to check it gives the same results as the original code at https://qrisk.org.

Conventions (inputs): ``ethnicity_qrisk`` uses QRISK3's coding 1 white or not stated, 2 Indian, 3 Pakistani,
4 Bangladeshi, 5 other Asian, 6 Black Caribbean, 7 Black African, 8 Chinese, 9 other; ``smoking_category`` 0 non,
1 ex, 2 light (<10/day), 3 moderate (10-19), 4 heavy (20+); ``diabetes_type`` 0/1/2. Validity: ages 25-84 without
prior CVD (refused otherwise). Like ClinRisk's own calculator engine, values outside BMI 20-40 kg/m2, ratio 1-12,
SBP 70-210 mmHg and Townsend -8 to 12 are computed at the nearest bound, and an unknown SBP SD or Townsend score
counts as 0 and an unknown ethnicity as "white or not stated": each is flagged with its reason. Missing BMI,
cholesterol ratio, SBP or smoking is refused (ClinRisk imputes them with unpublished predictors). Reference person
for explanations: same age, sex and ethnicity, non-smoker, BMI 25, ratio 4.0, SBP 125 mmHg, SBP SD 0, Townsend 0,
none of the conditions.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from medtwin.risk.core import (
    Checks,
    Factor,
    FloatArray,
    Inputs,
    RiskResult,
    cohort_size,
    column,
    flag_column,
    nan_to_num,
    sex_column,
)

__all__ = ["QRISK3_CONDITIONS", "QRISK3_ETHNICITY", "QRISK3_SMOKING", "qrisk3"]

QRISK3_ETHNICITY = (
    "white or not stated",
    "Indian",
    "Pakistani",
    "Bangladeshi",
    "other Asian",
    "Black Caribbean",
    "Black African",
    "Chinese",
    "other ethnic group",
)
QRISK3_SMOKING = (
    "non-smoker",
    "ex-smoker",
    "light smoker (<10/day)",
    "moderate smoker (10-19/day)",
    "heavy smoker (20+/day)",
)
# input column -> (QRISK3 term, clinical words)
QRISK3_CONDITIONS: dict[str, tuple[str, str]] = {
    "af": ("b_AF", "atrial fibrillation"),
    "atypical_antipsychotic": ("b_atypicalantipsy", "on an atypical antipsychotic"),
    "corticosteroids": ("b_corticosteroids", "on regular oral corticosteroids"),
    "erectile_dysfunction": ("b_impotence2", "erectile dysfunction"),
    "migraine": ("b_migraine", "migraine"),
    "rheumatoid_arthritis": ("b_ra", "rheumatoid arthritis"),
    "ckd_3_5": ("b_renal", "chronic kidney disease stage 3-5"),
    "severe_mental_illness": ("b_semi", "severe mental illness"),
    "sle": ("b_sle", "systemic lupus erythematosus"),
    "bp_treated": ("b_treatedhyp", "on blood-pressure treatment"),
    "family_history_chd": ("fh_cvd", "angina or heart attack in a first-degree relative under 60"),
}
_REF = {"bmi": 25.0, "rati": 4.0, "sbp": 125.0, "sbps5": 0.0, "town": 0.0}


@cache
def _model() -> dict[str, Any]:
    text = resources.files("medtwin.risk").joinpath("data/qrisk3_2017.json").read_text(encoding="utf-8")
    model: dict[str, Any] = json.loads(text)
    return model


def _value(sex: str, path: tuple[str, ...]) -> float:
    node: Any = _model()[sex]
    for p in path:
        node = node[p]
    return float(node)


def _linear_predictor(sex: str, x: dict[str, np.ndarray]) -> tuple[FloatArray, FloatArray, dict[str, FloatArray]]:
    """(linear predictor, reference person's, factor contributions) of people of one *sex* (scalar coefficients)."""
    model = _model()[sex]
    centre, x1, x2 = model["centre"], model["age_1_x"], model["age_2_x"]
    n = len(x["age"])
    with np.errstate(invalid="ignore", divide="ignore"):
        dage = x["age"] / 10
        age_1 = (dage**-1.0 if sex == "male" else dage**-2.0) - centre["age_1"]
        age_2 = (dage**3.0 if sex == "male" else dage) - centre["age_2"]

        effects: dict[str, FloatArray] = {}

        def eff(term: str) -> FloatArray:
            """Coefficient of *term* at each person's age (main effect plus both age interactions), once per term."""
            if term not in effects:
                main = model["continuous"].get(term, model["boolean"].get(term))
                effects[term] = main + x1.get(term, 0.0) * age_1 + x2.get(term, 0.0) * age_2
            return effects[term]

        def bmi_part(b: FloatArray | float) -> FloatArray:
            d = np.asarray(b) / 10
            d_2 = d**-2.0
            out: FloatArray = eff("bmi_1") * (d_2 - centre["bmi_1"]) + eff("bmi_2") * (
                d_2 * np.log(d) - centre["bmi_2"]
            )
            return out

        def centred(term: str, value: FloatArray | float) -> FloatArray:
            out: FloatArray = eff(term) * (value - centre[term])
            return out

        # the reference person's parts, used twice (contributions and the reference linear predictor)
        ref_bmi = bmi_part(_REF["bmi"])
        ref = {term: centred(term, _REF[term]) for term in ("rati", "sbp", "sbps5", "town")}
        smoke_main = np.asarray(model["smoke"])[x["smoke"]]
        smoke_x1 = np.array([0.0] + [x1[f"smoke_{k}"] for k in range(1, 5)])[x["smoke"]]
        smoke_x2 = np.array([0.0] + [x2[f"smoke_{k}"] for k in range(1, 5)])[x["smoke"]]
        contributions = {
            "smoking": smoke_main + smoke_x1 * age_1 + smoke_x2 * age_2,
            "bmi": bmi_part(x["bmi"]) - ref_bmi,
            "ratio": centred("rati", x["rati"]) - ref["rati"],
            "sbp": centred("sbp", x["sbp"]) - ref["sbp"],
            "sbp_sd": centred("sbps5", x["sbps5"]) - ref["sbps5"],
            "townsend": centred("town", x["town"]) - ref["town"],
            "diabetes": eff("b_type1") * x["b_type1"] + eff("b_type2") * x["b_type2"],
        }
        for col, (term, _) in QRISK3_CONDITIONS.items():
            contributions[col] = eff(term) * x[term]
        reference_lp = (
            np.asarray(model["ethrisk"])[x["eth"]]
            + model["continuous"]["age_1"] * age_1
            + model["continuous"]["age_2"] * age_2
            + ref_bmi
            + ref["rati"]
            + ref["sbp"]
            + ref["sbps5"]
            + ref["town"]
        ) * np.ones(n)
        lp = reference_lp + sum(contributions.values())
    return lp, reference_lp, contributions


def qrisk3(inputs: Inputs) -> RiskResult:
    """QRISK3-2017 10-year CVD risk for every person in *inputs*.

    Parameters
    ----------
    inputs
        Columns ``age_years``, ``sex``, ``bmi_kg_m2``, ``chol_hdl_ratio`` (or ``total_chol_mg_dl`` and
        ``hdl_mg_dl``), ``sbp_mm_hg``, ``smoking_category`` (or ``smoker``, flagged), ``diabetes_type`` (or
        ``diabetes``, flagged as type 2); optional ``ethnicity_qrisk``, ``sbp_sd_mm_hg``, ``townsend``,
        ``prior_cvd`` and the yes/no columns of :data:`QRISK3_CONDITIONS`.
    """
    n = cohort_size(inputs)
    checks = Checks("QRISK3", n)
    age = column(inputs, "age_years", n)
    male = sex_column(inputs, n)
    bmi = column(inputs, "bmi_kg_m2", n)
    rati = column(inputs, "chol_hdl_ratio", n)
    if "chol_hdl_ratio" not in inputs:
        with np.errstate(invalid="ignore", divide="ignore"):
            rati = column(inputs, "total_chol_mg_dl", n) / column(inputs, "hdl_mg_dl", n)
    sbp = column(inputs, "sbp_mm_hg", n)
    sbps5 = column(inputs, "sbp_sd_mm_hg", n)
    town = column(inputs, "townsend", n)
    eth = column(inputs, "ethnicity_qrisk", n)
    smoke = column(inputs, "smoking_category", n)
    if "smoking_category" not in inputs and "smoker" in inputs:
        current = flag_column(inputs, "smoker", n)
        smoke = np.where(current == 1, 3.0, np.where(current == 0, 0.0, np.nan))
        checks.flag("smoker", current == 1, "current smoker, amount not recorded: counted as moderate (10-19/day)")
        checks.flag("smoker", current == 0, "not a current smoker, ex-smoking not recorded: counted as non-smoker")
    dtype = column(inputs, "diabetes_type", n)
    if "diabetes_type" not in inputs and "diabetes" in inputs:
        dm = flag_column(inputs, "diabetes", n)
        dtype = np.where(dm == 1, 2.0, dm)
        checks.flag("diabetes", dm == 1, "diabetes type not recorded: counted as type 2")

    checks.require("age_years", "age", age)
    checks.require("sex", "sex (male or female)", male, why="the equations are sex-specific")
    checks.require("bmi_kg_m2", "BMI", bmi)
    checks.require("chol_hdl_ratio", "cholesterol/HDL ratio", rati)
    checks.require("sbp_mm_hg", "systolic BP", sbp)
    checks.require("smoking_category", "smoking status", smoke)
    checks.require("diabetes_type", "diabetes status", dtype)
    checks.within("age_years", "age", age, 25, 84, "years", source="QRISK3")
    checks.refuse("prior_cvd", flag_column(inputs, "prior_cvd", n) == 1, "CVD already recorded (primary prevention)")
    bad_cat = (~np.isnan(smoke) & ~np.isin(smoke, (0, 1, 2, 3, 4))) | (~np.isnan(dtype) & ~np.isin(dtype, (0, 1, 2)))
    bad_cat |= ~np.isnan(eth) & ~np.isin(eth, np.arange(1, 10))
    checks.refuse("category", bad_cat, "smoking category must be 0-4, diabetes type 0-2, ethnicity 1-9")
    bmi_u = checks.within("bmi_kg_m2", "BMI", bmi, 20, 40, "kg/m2", clamp=True, source="QRISK3 calculator")
    rati_u = checks.within(
        "chol_hdl_ratio", "cholesterol/HDL ratio", rati, 1, 12, "", clamp=True, source="QRISK3 calculator"
    )
    sbp_u = checks.within("sbp_mm_hg", "systolic BP", sbp, 70, 210, "mmHg", clamp=True, source="QRISK3 calculator")
    town_u = checks.within("townsend", "Townsend score", town, -8, 12, "", clamp=True, source="QRISK3 calculator")
    checks.flag("sbp_sd_mm_hg", np.isnan(sbps5), "SD of recent systolic BPs not known: 0 used, as QRISK3's engine does")
    checks.flag("townsend", np.isnan(town), "Townsend deprivation score not known: 0 used, as QRISK3's engine does")
    checks.flag("ethnicity_qrisk", np.isnan(eth), "ethnicity not recorded: 'white or not stated' used, as QRISK3 does")
    sbps5_u = nan_to_num(sbps5)
    town_u = nan_to_num(town_u)
    eth_i = np.nan_to_num(eth, nan=1.0).clip(1, 9).astype(int) - 1
    smoke_i = nan_to_num(smoke).clip(0, 4).astype(int)
    dtype_i = nan_to_num(dtype).clip(0, 2).astype(int)

    flags = {}
    for col, (term, label) in QRISK3_CONDITIONS.items():
        values = flag_column(inputs, col, n)
        if col == "erectile_dysfunction":
            values = np.where(male == 1, values, 0.0)
        checks.flag(col, np.isnan(values), f"{label}: not recorded, counted as absent")
        flags[term] = nan_to_num(values)
    flags["b_type1"] = (dtype_i == 1).astype(float)
    flags["b_type2"] = (dtype_i == 2).astype(float)

    x = {
        "age": age,
        "bmi": bmi_u,
        "rati": rati_u,
        "sbp": sbp_u,
        "sbps5": sbps5_u,
        "town": town_u,
        "smoke": smoke_i,
        "eth": eth_i,
        **flags,
    }
    lp, reference_lp, s0 = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    contributions: dict[str, FloatArray] = {}
    for sex in ("female", "male"):
        rows = np.flatnonzero(male == (1 if sex == "male" else 0))
        part_lp, part_ref, part_terms = _linear_predictor(sex, {k: v[rows] for k, v in x.items()})
        lp[rows], reference_lp[rows], s0[rows] = part_lp, part_ref, _value(sex, ("survivor_10y",))
        for k, v in part_terms.items():
            contributions.setdefault(k, np.zeros(n))[rows] = v
    with np.errstate(invalid="ignore", over="ignore"):
        risk = 1.0 - np.power(s0, np.exp(lp))
    risk = np.where(checks.refused, np.nan, risk)

    words = {
        "smoking": lambda i: QRISK3_SMOKING[smoke_i[i]],
        "bmi": lambda i: f"BMI {bmi[i]:.1f} kg/m2",
        "ratio": lambda i: f"cholesterol/HDL ratio {rati[i]:.1f}",
        "sbp": lambda i: f"systolic BP {sbp[i]:.0f} mmHg",
        "sbp_sd": lambda i: (
            "SBP variability not known" if np.isnan(sbps5[i]) else f"SBP variability (SD) {sbps5[i]:.0f} mmHg"
        ),
        "townsend": lambda i: "Townsend score not known" if np.isnan(town[i]) else f"Townsend score {town[i]:+.1f}",
        "diabetes": lambda i: ("no diabetes", "type 1 diabetes", "type 2 diabetes")[dtype_i[i]],
    }

    def condition_words(col: str, label: str) -> Factor:
        return Factor(col, lambda i: label if flags[QRISK3_CONDITIONS[col][0]][i] == 1 else f"no {label}")

    factors = tuple(Factor(k, f) for k, f in words.items()) + tuple(
        condition_words(col, label) for col, (_, label) in QRISK3_CONDITIONS.items()
    )
    return RiskResult(
        model="qrisk3",
        title="QRISK3-2017 (Hippisley-Cox 2017), 10-year CVD",
        outcome="cvd",
        horizon_years=10,
        risk=risk,
        lp=lp,
        reference_lp=reference_lp,
        contributions=contributions,
        factors=factors,
        problems=tuple(checks.problems),
        link="cox",
        s0=s0,
        lp_mean=np.zeros(n),
        reference_text=lambda i: (
            f"{age[i]:.0f}-year-old {'man' if male[i] == 1 else 'woman'} ({QRISK3_ETHNICITY[eth_i[i]]}), "
            "non-smoker, BMI 25, cholesterol/HDL ratio 4.0, SBP 125 mmHg, none of the QRISK3 conditions"
        ),
        inputs={
            "age_years": age,
            "sex": male,
            "sbp_mm_hg": sbp,
            "smoking_category": smoke,
            "bp_treated": flags["b_treatedhyp"],
        },
    )
