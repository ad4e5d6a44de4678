"""AHA PREVENT equations: 10- and 30-year risk of total CVD, ASCVD and heart failure.

Source: Khan SS, Matsushita K, Sang Y, et al. Development and validation of the American Heart Association's
PREDICTING RISK OF CVD EVENTS (PREVENT) equations. Circulation 2024;149(6):430-449.
doi:10.1161/CIRCULATIONAHA.123.067626. Coefficients from the paper's supplement as tabulated in
bcjaeger/PooledCohort ``data-raw/coefs_prevent.xlsx`` (shipped as ``data/prevent_<variant>_<years>.csv``); the
worked examples of supplement Table S12 are reproduced in the tests.

    risk = 1 / (1 + exp(-x)),  x = const + sum(beta * term)

Terms (cholesterol converted with the paper's factor 0.02586 mmol/L per mg/dL): age ``(age-55)/10`` (and its
square in the 30-year models); non-HDL ``(TC-HDL)*0.02586 - 3.5``; HDL ``(HDL*0.02586 - 1.3)/0.3``; SBP below
110 ``(min(SBP,110)-110)/20`` and from 110 ``(max(SBP,110)-130)/20``; diabetes; current smoking; BMI below 30
``(min(BMI,30)-25)/5`` and from 30 ``(max(BMI,30)-30)/5`` (heart failure only); eGFR below 60
``(min(eGFR,60)-60)/-15`` and from 60 ``(max(eGFR,60)-90)/-15``; antihypertensive use; statin use; treatment
interactions (BP treatment x SBP from 110, statin x non-HDL) and age interactions. Variants add ``ln(UACR)``
(``acr``), ``HbA1c - 5.3`` split by diabetes (``hba1c``), social deprivation index deciles 4-6 and 7-10
(``sdi``), or all three (``full``); each optional predictor has the model's own "missing" term, which medtwin
uses only when the person's value is absent, and says so.

Variant choice ``auto`` follows the AHA calculator: the base model when no optional predictor is known, the
add-on model when exactly one is, the full model when two or more are.

Validity (the AHA calculator's accepted ranges): age 30-79 (30-year risk: 30-59), total cholesterol 130-320 mg/dL,
HDL 20-100 mg/dL, SBP 90-180 mmHg, BMI 18.5-39.9 kg/m2, eGFR 15-140 mL/min/1.73 m2, UACR 0.1-25000 mg/g,
HbA1c 4.5-15 %, SDI decile 1-10. A predictor an outcome does not use (cholesterol for heart failure, BMI for
CVD and ASCVD) is not required for that outcome. Outside a range the result is refused. Reference person for
explanations: same age and sex, total cholesterol 170 mg/dL, HDL 50 mg/dL, untreated SBP 110 mmHg, no diabetes,
non-smoker, BMI 25, eGFR 90, no statin, UACR 10 mg/g, HbA1c 5.3 %, SDI decile 1-3.

Not reproduced: the AHA online calculator treats a missing SDI as decile 1-3 for women's ASCVD (noted in
PooledCohort's source); medtwin applies the published missing-SDI term for everyone.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np
import numpy.typing as npt

from medtwin.errors import ValidationError
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

__all__ = ["PREVENT_OUTCOMES", "PREVENT_VARIANTS", "prevent", "prevent_cohort"]

Variant = Literal["base", "acr", "hba1c", "sdi", "full"]
PREVENT_VARIANTS: tuple[Variant, ...] = ("base", "acr", "hba1c", "sdi", "full")
PREVENT_OUTCOMES = ("cvd", "ascvd", "hf")
_OUTCOME_TITLE = {"cvd": "total CVD", "ascvd": "ASCVD", "hf": "heart failure"}
MG_DL_TO_MMOL_L = 0.02586  # the paper's cholesterol conversion
_REFERENCE = {"tc": 170.0, "hdl": 50.0, "sbp": 110.0, "bmi": 25.0, "egfr": 90.0, "acr": 10.0, "hba1c": 5.3}


@cache
def _table(variant: str, years: int) -> dict[str, tuple[float, ...]]:
    """Coefficient name -> values in the CSV's column order (women_cvd, men_cvd, women_ascvd, ...)."""
    text = resources.files("medtwin.risk").joinpath(f"data/prevent_{variant}_{years}.csv").read_text("utf-8")
    rows = list(csv.reader(text.splitlines()))
    header = rows[0][1:]
    assert header[:6] == ["women_cvd", "men_cvd", "women_ascvd", "men_ascvd", "women_hf", "men_hf"], header
    return {r[0].removeprefix("coef_"): tuple(float(v) for v in r[1:]) for r in rows[1:]}


def _coefs(variant: str, years: int, outcome: str, male: FloatArray) -> dict[str, FloatArray]:
    col = 2 * PREVENT_OUTCOMES.index(outcome)
    return {k: np.where(male == 1, v[col + 1], v[col]) for k, v in _table(variant, years).items()}


def _auto_variant(acr: FloatArray, hba1c: FloatArray, sdi: FloatArray) -> np.ndarray:
    known = np.stack([~np.isnan(acr), ~np.isnan(hba1c), ~np.isnan(sdi)])
    count = known.sum(axis=0)
    single = np.select([known[0], known[1], known[2]], ["acr", "hba1c", "sdi"], "base")
    return np.where(count >= 2, "full", np.where(count == 1, single, "base"))


_NUMBERS = (
    "age_years",
    "total_chol_mg_dl",
    "hdl_mg_dl",
    "sbp_mm_hg",
    "egfr_ml_min_1_73m2",
    "bmi_kg_m2",
    "uacr_mg_g",
    "hba1c_pct",
    "sdi_decile",
)
_FLAGS = ("bp_treated", "statin", "diabetes", "smoker")


def _columns(inputs: Inputs, n: int) -> dict[str, FloatArray]:
    cols = {k: column(inputs, k, n) for k in _NUMBERS} | {k: flag_column(inputs, k, n) for k in _FLAGS}
    cols["sex"] = sex_column(inputs, n)
    return cols


_LABELS = {
    "age_years": "age",
    "sbp_mm_hg": "systolic BP",
    "bp_treated": "blood-pressure treatment status",
    "diabetes": "diabetes status",
    "smoker": "smoking status",
    "egfr_ml_min_1_73m2": "eGFR",
    "total_chol_mg_dl": "total cholesterol",
    "hdl_mg_dl": "HDL cholesterol",
    "statin": "statin use",
    "bmi_kg_m2": "BMI",
    "uacr_mg_g": "urine albumin-creatinine ratio",
    "hba1c_pct": "HbA1c",
    "sdi_decile": "social deprivation index decile",
}
_CALCULATOR = "AHA PREVENT calculator"


def _validate(inputs: Inputs, n: int, outcome: str, years: int, cols: dict[str, FloatArray] | None = None) -> Checks:
    """The validity checks of one PREVENT outcome and horizon (see the module docstring)."""
    checks = Checks(f"PREVENT {years}-year {_OUTCOME_TITLE[outcome]}", n)
    c = _columns(inputs, n) if cols is None else cols
    checks.require("sex", "sex (male or female)", c["sex"], why="the equations are sex-specific")
    lipids = outcome != "hf"
    required = ["age_years", "sbp_mm_hg", "bp_treated", "diabetes", "smoker", "egfr_ml_min_1_73m2"]
    required += ["total_chol_mg_dl", "hdl_mg_dl", "statin"] if lipids else ["bmi_kg_m2"]
    for key in required:
        checks.require(key, _LABELS[key], c[key])
    ranges = [
        ("age_years", 30, 59 if years == 30 else 79, "years", f"PREVENT {years}-year validity"),
        ("sbp_mm_hg", 90, 180, "mmHg", _CALCULATOR),
        ("egfr_ml_min_1_73m2", 15, 140, "mL/min/1.73m2", _CALCULATOR),
        *(
            [("total_chol_mg_dl", 130, 320, "mg/dL", _CALCULATOR), ("hdl_mg_dl", 20, 100, "mg/dL", _CALCULATOR)]
            if lipids
            else [("bmi_kg_m2", 18.5, 39.9, "kg/m2", _CALCULATOR)]
        ),
        ("uacr_mg_g", 0.1, 25000, "mg/g", _CALCULATOR),
        ("hba1c_pct", 4.5, 15, "%", _CALCULATOR),
        ("sdi_decile", 1, 10, "", "SDI deciles"),
    ]
    for key, low, high, unit, source in ranges:
        checks.within(key, _LABELS[key], c[key], low, high, unit, source=source)
    checks.refuse("prior_cvd", flag_column(inputs, "prior_cvd", n) == 1, "CVD already recorded (primary prevention)")
    return checks


def prevent(
    inputs: Inputs,
    *,
    outcome: Literal["cvd", "ascvd", "hf"] = "cvd",
    years: Literal[10, 30] = 10,
    variant: Literal["auto", "base", "acr", "hba1c", "sdi", "full"] = "auto",
) -> RiskResult:
    """PREVENT risk of *outcome* within *years* for every person in *inputs*.

    Parameters
    ----------
    inputs
        Columns ``age_years``, ``sex``, ``total_chol_mg_dl``, ``hdl_mg_dl``, ``sbp_mm_hg``, ``bp_treated``,
        ``statin``, ``diabetes``, ``smoker``, ``egfr_ml_min_1_73m2``, ``bmi_kg_m2`` (heart failure); optional
        ``uacr_mg_g``, ``hba1c_pct``, ``sdi_decile``, ``prior_cvd``.
    variant
        ``auto`` picks per person as the AHA calculator does; a named variant is used for everyone.
    """
    if outcome not in PREVENT_OUTCOMES:
        raise ValidationError(f"prevent: outcome must be one of {PREVENT_OUTCOMES}, got {outcome!r}")
    if years not in (10, 30):
        raise ValidationError(f"prevent: years must be 10 or 30, got {years!r}")
    if variant != "auto" and variant not in PREVENT_VARIANTS:
        raise ValidationError(f"prevent: variant must be 'auto' or one of {PREVENT_VARIANTS}, got {variant!r}")
    n = cohort_size(inputs)
    cols = _columns(inputs, n)
    checks = _validate(inputs, n, outcome, years, cols)
    c = cols
    age, male, tc, hdl, sbp = c["age_years"], c["sex"], c["total_chol_mg_dl"], c["hdl_mg_dl"], c["sbp_mm_hg"]
    treated, statin, diabetes, smoker = c["bp_treated"], c["statin"], c["diabetes"], c["smoker"]
    egfr, bmi, acr, hba1c, sdi = (
        c["egfr_ml_min_1_73m2"],
        c["bmi_kg_m2"],
        c["uacr_mg_g"],
        c["hba1c_pct"],
        c["sdi_decile"],
    )
    uses_lipids = outcome != "hf"

    chosen = _auto_variant(acr, hba1c, sdi) if variant == "auto" else np.full(n, variant)
    uses_acr = np.isin(chosen, ("acr", "full"))
    uses_a1c = np.isin(chosen, ("hba1c", "full"))
    uses_sdi = np.isin(chosen, ("sdi", "full"))
    for mask, values, label in (
        (uses_acr, acr, "urine albumin-creatinine ratio"),
        (uses_a1c, hba1c, "HbA1c"),
        (uses_sdi, sdi, "social deprivation index"),
    ):
        checks.flag(
            label,
            mask & np.isnan(values),
            f"{label} not recorded: the model's published 'missing {label}' term is used (not an imputed value)",
        )

    a = (age - 55) / 10
    d = nan_to_num(diabetes)
    s = nan_to_num(smoker)
    bpt = nan_to_num(treated)
    st = nan_to_num(statin)

    def non_hdl(t: FloatArray, h: FloatArray) -> FloatArray:
        out: FloatArray = (t - h) * MG_DL_TO_MMOL_L - 3.5
        return out

    def hdl_term(h: FloatArray) -> FloatArray:
        out: FloatArray = (h * MG_DL_TO_MMOL_L - 1.3) / 0.3
        return out

    lp = np.full(n, np.nan)
    reference_lp = np.full(n, np.nan)
    keys = ("cholesterol", "hdl", "bp", "diabetes", "hba1c", "smoking", "bmi", "egfr", "acr", "sdi")
    contributions = {k: np.zeros(n) for k in keys}
    for v in PREVENT_VARIANTS:
        rows = chosen == v
        if not rows.any():
            continue
        c = _coefs(v, years, outcome, male)

        def parts(
            tc_: FloatArray,
            hdl_: FloatArray,
            sbp_: FloatArray,
            treated_: FloatArray,
            statin_: FloatArray,
            dm: FloatArray,
            smoke: FloatArray,
            bmi_: FloatArray,
            egfr_: FloatArray,
            acr_: FloatArray,
            a1c: FloatArray,
            sdi_: FloatArray,
            c: dict[str, FloatArray] = c,
            v: str = v,
        ) -> dict[str, FloatArray]:
            nh = nan_to_num(non_hdl(tc_, hdl_))
            ht = nan_to_num(hdl_term(hdl_))
            sbp_hi = (np.maximum(sbp_, 110) - 130) / 20
            bmi_hi = nan_to_num((np.maximum(bmi_, 30) - 30) / 5)
            egfr_lo = (np.minimum(egfr_, 60) - 60) / -15
            out = {
                "cholesterol": c["non_hdl_c_per_1_mmol_l"] * nh
                + c["statin_use"] * statin_
                + c["treated_non_hdl_c"] * nh * statin_
                + c["age_per_10yr_x_non_hdl_c_per_1_mmol_l"] * a * nh,
                "hdl": c["hdl_c_per_0.3_mmol_l"] * ht + c["age_per_10yr_x_hdl_c_per_0.3_mml_l"] * a * ht,
                "bp": c["sbp_lt110_per_20_mmhg"] * (np.minimum(sbp_, 110) - 110) / 20
                + c["sbp_gteq110_per_20_mmhg"] * sbp_hi
                + c["anti_hypertensive_use"] * treated_
                + c["treated_sbp_gteq110_mm_hg_per_20_mm_hg"] * sbp_hi * treated_
                + c["age_per_10yr_x_sbp_gteq110_mm_hg_per_20_mmhg"] * a * sbp_hi,
                "diabetes": c["diabetes"] * dm + c["age_per_10yr_x_diabetes"] * a * dm,
                "smoking": c["current_smoking"] * smoke + c["age_per_10yr_x_current_smoking"] * a * smoke,
                "bmi": c["bmi_lt30_per_5_kg_m2"] * nan_to_num((np.minimum(bmi_, 30) - 25) / 5)
                + c["bmi_gt30_per_5_kg_m2"] * bmi_hi
                + c["age_per_10yr_x_bmi_gteq30_per_5_kg_m2"] * a * bmi_hi,
                "egfr": c["egfr_lt60_per_15_ml"] * egfr_lo
                + c["egfr_gteq60_per_15_ml"] * (np.maximum(egfr_, 60) - 90) / -15
                + c["age_per_10yr_x_egfr_lt60_per_15_ml"] * a * egfr_lo,
                "acr": np.zeros(n),
                "hba1c": np.zeros(n),
                "sdi": np.zeros(n),
            }
            if v in ("acr", "full"):
                out["acr"] = np.where(
                    np.isnan(acr_), c["miss_ln_acr"], c["ln_acr"] * np.log(np.where(np.isnan(acr_), 1.0, acr_))
                )
            if v in ("hba1c", "full"):
                shift = nan_to_num(a1c - 5.3)
                out["hba1c"] = np.where(
                    np.isnan(a1c),
                    c["miss_hba1c"],
                    c["hba1c_minus_5.3_x_diabetes"] * shift * dm
                    + c["hba1c_minus_5.3_x_1_minus_diabetes"] * shift * (1 - dm),
                )
            if v in ("sdi", "full"):
                out["sdi"] = np.where(
                    np.isnan(sdi_),
                    c["miss_sdi"],
                    c["sdi_decile_between_4_and_6"] * ((sdi_ >= 4) & (sdi_ <= 6))
                    + c["sdi_decile_between_7_and_10"] * (sdi_ >= 7),
                )
            return out

        with np.errstate(invalid="ignore", divide="ignore"):
            actual = parts(tc, hdl, sbp, bpt, st, d, s, bmi, egfr, acr, hba1c, sdi)
            ref = {k: np.full(n, val) for k, val in _REFERENCE.items()}
            zero = np.zeros(n)
            reference = parts(
                ref["tc"],
                ref["hdl"],
                ref["sbp"],
                zero,
                zero,
                zero,
                zero,
                ref["bmi"],
                ref["egfr"],
                ref["acr"],
                ref["hba1c"],
                np.ones(n),
            )
            base = c["const"] + c["age_per_10_years"] * a + c["age_per_10_years_squared"] * a * a
            ref_total = base + sum(reference.values())
            for k in keys:
                contributions[k][rows] = (actual[k] - reference[k])[rows]
            reference_lp[rows] = ref_total[rows]
    with np.errstate(invalid="ignore"):
        lp = reference_lp + sum(contributions.values())
        risk = 1.0 / (1.0 + np.exp(-lp))
    risk = np.where(checks.refused, np.nan, risk)

    factors = (
        Factor(
            "cholesterol",
            lambda i: f"non-HDL cholesterol {tc[i] - hdl[i]:.0f} mg/dL" + (", on a statin" if statin[i] == 1 else ""),
        ),
        Factor("hdl", lambda i: f"HDL cholesterol {hdl[i]:.0f} mg/dL"),
        Factor("bp", lambda i: f"systolic BP {sbp[i]:.0f} mmHg {'on' if treated[i] == 1 else 'without'} treatment"),
        Factor("diabetes", lambda i: "diabetes" if diabetes[i] == 1 else "no diabetes"),
        Factor("hba1c", lambda i: "HbA1c not recorded" if np.isnan(hba1c[i]) else f"HbA1c {hba1c[i]:.1f} %"),
        Factor("smoking", lambda i: "current smoker" if smoker[i] == 1 else "non-smoker"),
        Factor("bmi", lambda i: f"BMI {bmi[i]:.1f} kg/m2"),
        Factor("egfr", lambda i: f"eGFR {egfr[i]:.0f} mL/min/1.73m2"),
        Factor("acr", lambda i: "urine ACR not recorded" if np.isnan(acr[i]) else f"urine ACR {acr[i]:g} mg/g"),
        Factor("sdi", lambda i: "deprivation (SDI) not recorded" if np.isnan(sdi[i]) else f"SDI decile {sdi[i]:.0f}"),
    )
    used = (
        {"cholesterol", "hdl", "bp", "diabetes", "smoking", "egfr"}
        if uses_lipids
        else {"bp", "diabetes", "smoking", "bmi", "egfr"}
    )
    used |= {k for k, m in (("acr", uses_acr), ("hba1c", uses_a1c), ("sdi", uses_sdi)) if m.any()}
    return RiskResult(
        model=f"prevent-{outcome}-{years}y",
        title=f"PREVENT (Khan 2023), {years}-year {_OUTCOME_TITLE[outcome]}",
        outcome=outcome,
        horizon_years=years,
        risk=risk,
        lp=lp,
        reference_lp=reference_lp,
        contributions={k: v for k, v in contributions.items() if k in used},
        factors=tuple(f for f in factors if f.key in used),
        problems=tuple(checks.problems),
        link="logistic",
        reference_text=lambda i: (
            f"{age[i]:.0f}-year-old {'man' if male[i] == 1 else 'woman'} with total cholesterol 170 mg/dL, HDL "
            "50 mg/dL, untreated systolic BP 110 mmHg, no diabetes, non-smoker, BMI 25, eGFR 90, no statin"
        ),
        inputs={
            "age_years": age,
            "sex": male,
            "sbp_mm_hg": sbp,
            "bp_treated": treated,
            "smoker": smoker,
            "statin": statin,
            "total_chol_mg_dl": tc,
            "hdl_mg_dl": hdl,
            "variant": chosen,
        },  # type: ignore[dict-item]
    )


def _design(c: dict[str, FloatArray], n: int, out: FloatArray | None = None) -> tuple[list[str], FloatArray]:
    """The PREVENT terms of every person as one matrix, terms x people (rows named as the coefficient tables'),
    written into the first *n* columns of *out* when given (a buffer reused from chunk to chunk)."""
    age, tc, hdl, sbp = c["age_years"], c["total_chol_mg_dl"], c["hdl_mg_dl"], c["sbp_mm_hg"]
    bmi, egfr, acr, a1c, sdi = c["bmi_kg_m2"], c["egfr_ml_min_1_73m2"], c["uacr_mg_g"], c["hba1c_pct"], c["sdi_decile"]
    dm, smoke, bpt, st = (nan_to_num(c[k]) for k in ("diabetes", "smoker", "bp_treated", "statin"))
    a = (age - 55) / 10
    with np.errstate(invalid="ignore", divide="ignore"):
        nh = nan_to_num((tc - hdl) * MG_DL_TO_MMOL_L - 3.5)
        ht = nan_to_num((hdl * MG_DL_TO_MMOL_L - 1.3) / 0.3)
        sbp_hi = (np.maximum(sbp, 110) - 130) / 20
        bmi_hi = nan_to_num((np.maximum(bmi, 30) - 30) / 5)
        egfr_lo = (np.minimum(egfr, 60) - 60) / -15
        shift = nan_to_num(a1c - 5.3)
        terms = {
            "age_per_10_years": a,
            "age_per_10_years_squared": a * a,
            "non_hdl_c_per_1_mmol_l": nh,
            "hdl_c_per_0.3_mmol_l": ht,
            "sbp_lt110_per_20_mmhg": (np.minimum(sbp, 110) - 110) / 20,
            "sbp_gteq110_per_20_mmhg": sbp_hi,
            "diabetes": dm,
            "current_smoking": smoke,
            "bmi_lt30_per_5_kg_m2": nan_to_num((np.minimum(bmi, 30) - 25) / 5),
            "bmi_gt30_per_5_kg_m2": bmi_hi,
            "egfr_lt60_per_15_ml": egfr_lo,
            "egfr_gteq60_per_15_ml": (np.maximum(egfr, 60) - 90) / -15,
            "anti_hypertensive_use": bpt,
            "statin_use": st,
            "treated_sbp_gteq110_mm_hg_per_20_mm_hg": sbp_hi * bpt,
            "treated_non_hdl_c": nh * st,
            "age_per_10yr_x_non_hdl_c_per_1_mmol_l": a * nh,
            "age_per_10yr_x_hdl_c_per_0.3_mml_l": a * ht,
            "age_per_10yr_x_sbp_gteq110_mm_hg_per_20_mmhg": a * sbp_hi,
            "age_per_10yr_x_diabetes": a * dm,
            "age_per_10yr_x_current_smoking": a * smoke,
            "age_per_10yr_x_bmi_gteq30_per_5_kg_m2": a * bmi_hi,
            "age_per_10yr_x_egfr_lt60_per_15_ml": a * egfr_lo,
            "sdi_decile_between_4_and_6": ((sdi >= 4) & (sdi <= 6)).astype(float),
            "sdi_decile_between_7_and_10": (sdi >= 7).astype(float),
            "miss_sdi": np.isnan(sdi).astype(float),
            "ln_acr": nan_to_num(np.log(acr)),
            "miss_ln_acr": np.isnan(acr).astype(float),
            "hba1c_minus_5.3_x_diabetes": shift * dm,
            "hba1c_minus_5.3_x_1_minus_diabetes": shift * (1 - dm),
            "miss_hba1c": np.isnan(a1c).astype(float),
            "const": np.ones(n),
        }
    names = list(terms)
    if out is None:
        return names, np.stack([terms[k] for k in names])
    for i, k in enumerate(names):
        out[i, :n] = terms[k]
    return names, out[: len(names), :n]


def prevent_cohort(inputs: Inputs, *, chunk: int = 100_000) -> dict[tuple[str, int, str], FloatArray]:
    """All 30 PREVENT models (5 variants x 10/30 years x 3 outcomes) for a cohort at once, keyed by
    ``(variant, years, outcome)``: one design matrix times one coefficient matrix (BLAS), for cohort runs where
    no explanation is wanted. Refusals are those of :func:`prevent` (the same checks); a test holds the two
    equal."""
    n = cohort_size(inputs)
    cols = _columns(inputs, n)
    male = cols["sex"] == 1
    keys = [(v, y, o) for v in PREVENT_VARIANTS for y in (10, 30) for o in PREVENT_OUTCOMES]
    coefs: list[FloatArray] = []
    risk = np.empty((len(keys), n))
    buffer: FloatArray | None = None  # the first (largest) chunk's design matrix, refilled by the next chunks
    for start in range(0, n, chunk):  # a chunk's design stays in cache; the whole cohort's would not
        stop = min(n, start + chunk)
        names, design = _design({k: v[start:stop] for k, v in cols.items()}, stop - start, buffer)
        if buffer is None:
            buffer = design
        if not coefs:  # per sex: models x terms
            coefs = [
                np.array([[_table(v, y)[t][2 * PREVENT_OUTCOMES.index(o) + s] for t in names] for v, y, o in keys])
                for s in (0, 1)
            ]
        # both sexes' coefficients for everyone, then each person's own: cheaper than gathering and scattering
        lp = coefs[1] @ design
        np.copyto(lp, coefs[0] @ design, where=~male[start:stop])
        np.negative(lp, out=lp)
        np.exp(lp, out=lp)
        lp += 1.0
        np.reciprocal(lp, out=risk[:, start:stop])
    refusals: dict[tuple[int, bool], npt.NDArray[np.bool_]] = {}
    for j, (_, y, o) in enumerate(keys):
        lipids = o != "hf"  # total CVD and ASCVD read the same inputs with the same ranges: one check serves both
        if (y, lipids) not in refusals:
            refusals[y, lipids] = _validate(inputs, n, o, y, cols).refused
        risk[j, refusals[y, lipids]] = np.nan
    return {k: risk[j] for j, k in enumerate(keys)}
