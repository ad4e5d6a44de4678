"""2013 ACC/AHA Pooled Cohort Equations: 10-year risk of a first hard ASCVD event.

Source: Goff DC Jr, Lloyd-Jones DM, Bennett G, et al. 2013 ACC/AHA guideline on the assessment of cardiovascular
risk. Circulation 2014;129(25 Suppl 2):S49-S73. doi:10.1161/01.cir.0000437741.48606.98 (Table A and the
supplement's worked example). Full-precision coefficients as in bcjaeger/PooledCohort ``R/predict_risk.R``
(MIT), shipped in ``data/pce_goff2013.csv``.

    risk = 1 - S0 ** exp(sum(beta * x) - mean)

with ``x`` = ln age, (ln age)^2, ln total cholesterol, ln HDL, ln treated or untreated systolic BP, current
smoker, diabetes and the age interactions of each race-and-sex equation (white women, African-American women,
white men, African-American men).

Conventions: cholesterol in mg/dL, SBP in mmHg; ``race`` is ``white``, ``black`` (African American) or another
value, for which the guideline says to use the white equations (flagged: they may over- or underestimate risk).
Validity: ages 40-79 (Goff 2014), total cholesterol 130-320 mg/dL, HDL 20-100 mg/dL, SBP 90-200 mmHg (the ranges
the ACC/AHA ASCVD Risk Estimator accepts, also enforced by PooledCohort); people with clinical ASCVD
(``prior_ascvd`` = 1) are refused: the equations are for primary prevention. Outside these ranges the result is
refused, never extrapolated. Reference person for explanations (the calculator's "optimal risk factors"): total
cholesterol 170 mg/dL, HDL 50 mg/dL, untreated SBP 110 mmHg, non-smoker, no diabetes, same age, sex and race.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

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
    text_codes,
)

__all__ = ["PCE_REFERENCE", "pooled_cohort"]

PCE_REFERENCE = {"total_chol_mg_dl": 170.0, "hdl_mg_dl": 50.0, "sbp_mm_hg": 110.0}
_GROUPS = ("white_female", "black_female", "white_male", "black_male")
_BLACK = {"black", "african american", "african-american", "aa", "black or african american"}
_WHITE = {"white", "caucasian"}


@cache
def _coefficients() -> dict[str, dict[str, float]]:
    text = resources.files("medtwin.risk").joinpath("data/pce_goff2013.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    return {g: {r["term"]: float(r[g]) for r in rows} for g in _GROUPS}


_RACE = {"white": 0.0, "caucasian": 0.0, **dict.fromkeys(_BLACK, 1.0)}


def _race_black(inputs: Inputs, n: int) -> tuple[FloatArray, FloatArray]:
    """(1.0 black / 0.0 white or other / NaN unknown, 1.0 where 'other' so the white equations stand in)."""
    if "race" not in inputs:
        return np.full(n, np.nan), np.zeros(n)
    black, other = text_codes(inputs["race"], n, _RACE, "race")
    black[other] = 0.0
    return black, other.astype(np.float64)


def pooled_cohort(inputs: Inputs) -> RiskResult:
    """10-year hard ASCVD risk by the Pooled Cohort Equations for every person in *inputs*.

    Parameters
    ----------
    inputs
        Columns ``age_years``, ``sex``, ``race``, ``total_chol_mg_dl``, ``hdl_mg_dl``, ``sbp_mm_hg``,
        ``bp_treated``, ``smoker`` (current), ``diabetes``; optional ``prior_ascvd``.
    """
    n = cohort_size(inputs)
    checks = Checks("PCE", n)
    age = column(inputs, "age_years", n)
    male = sex_column(inputs, n)
    black, other = _race_black(inputs, n)
    tc = column(inputs, "total_chol_mg_dl", n)
    hdl = column(inputs, "hdl_mg_dl", n)
    sbp = column(inputs, "sbp_mm_hg", n)
    treated = flag_column(inputs, "bp_treated", n)
    smoker = flag_column(inputs, "smoker", n)
    diabetes = flag_column(inputs, "diabetes", n)
    prior = flag_column(inputs, "prior_ascvd", n)

    checks.require("age_years", "age", age)
    checks.require("sex", "sex (male or female)", male, why="the equations are sex-specific")
    checks.require("race", "race", black, why="separate equations for African-American and white people")
    for name, label, values in (
        ("total_chol_mg_dl", "total cholesterol", tc),
        ("hdl_mg_dl", "HDL cholesterol", hdl),
        ("sbp_mm_hg", "systolic BP", sbp),
        ("bp_treated", "blood-pressure treatment status", treated),
        ("smoker", "smoking status", smoker),
        ("diabetes", "diabetes status", diabetes),
    ):
        checks.require(name, label, values)
    checks.within("age_years", "age", age, 40, 79, "years", source="Goff 2014")
    checks.within("total_chol_mg_dl", "total cholesterol", tc, 130, 320, "mg/dL", source="ASCVD Risk Estimator")
    checks.within("hdl_mg_dl", "HDL cholesterol", hdl, 20, 100, "mg/dL", source="ASCVD Risk Estimator")
    checks.within("sbp_mm_hg", "systolic BP", sbp, 90, 200, "mmHg", source="ASCVD Risk Estimator")
    checks.refuse(
        "prior_ascvd", prior == 1, "clinical ASCVD already recorded (the equations are for primary prevention)"
    )
    checks.flag(
        "race",
        other == 1,
        "race neither white nor African American: the white equations are used, as the guideline advises "
        "(they may over- or underestimate risk)",
    )

    coefs = _coefficients()
    group = np.where(male == 1, 2, 0) + np.where(black == 1, 1, 0)
    beta = {t: np.array([coefs[g][t] for g in _GROUPS])[group] for t in coefs[_GROUPS[0]]}
    with np.errstate(invalid="ignore", divide="ignore"):
        ln_age = np.log(age)
        t = nan_to_num(treated)

        def chol_part(x: FloatArray) -> FloatArray:
            out: FloatArray = (beta["ln_tc"] + beta["ln_age_x_ln_tc"] * ln_age) * np.log(x)
            return out

        def hdl_part(x: FloatArray) -> FloatArray:
            out: FloatArray = (beta["ln_hdl"] + beta["ln_age_x_ln_hdl"] * ln_age) * np.log(x)
            return out

        def bp_part(x: FloatArray, on_treatment: FloatArray) -> FloatArray:
            treated_b = beta["ln_treated_sbp"] + beta["ln_age_x_ln_treated_sbp"] * ln_age
            untreated_b = beta["ln_untreated_sbp"] + beta["ln_age_x_ln_untreated_sbp"] * ln_age
            out: FloatArray = np.where(on_treatment == 1, treated_b, untreated_b) * np.log(x)
            return out

        smoke_part = (beta["smoker"] + beta["ln_age_x_smoker"] * ln_age) * nan_to_num(smoker)
        dm_part = beta["diabetes"] * nan_to_num(diabetes)
        age_part = beta["ln_age"] * ln_age + beta["ln_age_sq"] * ln_age**2
        ref = PCE_REFERENCE
        ref_chol = chol_part(np.full(n, ref["total_chol_mg_dl"]))
        ref_hdl = hdl_part(np.full(n, ref["hdl_mg_dl"]))
        ref_bp = bp_part(np.full(n, ref["sbp_mm_hg"]), np.zeros(n))
        contributions = {
            "cholesterol": chol_part(tc) - ref_chol,
            "hdl": hdl_part(hdl) - ref_hdl,
            "bp": bp_part(sbp, t) - ref_bp,
            "smoking": smoke_part,
            "diabetes": dm_part,
        }
        reference_lp = age_part + ref_chol + ref_hdl + ref_bp
        lp = reference_lp + sum(contributions.values())
        s0 = beta["s0_10y"]
        risk = 1.0 - np.power(s0, np.exp(lp - beta["mean"]))
    risk = np.where(checks.refused, np.nan, risk)

    def race_word(i: int) -> str:
        return "African-American" if black[i] == 1 else "white"

    factors = (
        Factor("cholesterol", lambda i: f"total cholesterol {tc[i]:.0f} mg/dL"),
        Factor("hdl", lambda i: f"HDL cholesterol {hdl[i]:.0f} mg/dL"),
        Factor("bp", lambda i: f"systolic BP {sbp[i]:.0f} mmHg {'on' if treated[i] == 1 else 'without'} treatment"),
        Factor("smoking", lambda i: "current smoker" if smoker[i] == 1 else "non-smoker"),
        Factor("diabetes", lambda i: "diabetes" if diabetes[i] == 1 else "no diabetes"),
    )
    return RiskResult(
        model="pce",
        title="Pooled Cohort Equations (Goff 2013), 10-year hard ASCVD",
        outcome="ascvd",
        horizon_years=10,
        risk=risk,
        lp=lp,
        reference_lp=reference_lp,
        contributions=contributions,
        factors=factors,
        problems=tuple(checks.problems),
        link="cox",
        s0=s0,
        lp_mean=beta["mean"],
        reference_text=lambda i: (
            f"{age[i]:.0f}-year-old {race_word(i)} {'man' if male[i] == 1 else 'woman'} with total cholesterol "
            "170 mg/dL, HDL 50 mg/dL, untreated systolic BP 110 mmHg, non-smoker, no diabetes"
        ),
        inputs={
            "age_years": age,
            "sex": male,
            "total_chol_mg_dl": tc,
            "hdl_mg_dl": hdl,
            "sbp_mm_hg": sbp,
            "bp_treated": treated,
            "smoker": smoker,
            "diabetes": diabetes,
            "black": black,
        },
    )
