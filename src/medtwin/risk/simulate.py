"""Simulated cohorts where the truth is known: to test the validation toolkit and to benchmark the equations.

``synthetic_cohort`` draws plausible primary-care inputs for every equation (independent draws within each
equation's validity range; not a population model). ``simulate_censored`` draws event times whose risk by the
horizon is exactly the given risk (exponential times with cumulative hazard ``-ln(1 - risk)`` at the horizon,
multiplied by *hazard_ratio* where a deliberate miscalibration is wanted) and uniform administrative censoring;
``simulate_binary`` draws Bernoulli outcomes. A calibrated model's slope is then 1 in expectation, and a group
whose hazards were multiplied has O/E near the multiplier's effect.
"""

from __future__ import annotations

import numpy as np

from medtwin.risk.core import FloatArray
from medtwin.risk.validation import Outcome

__all__ = ["simulate_binary", "simulate_censored", "synthetic_cohort"]


def synthetic_cohort(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """*n* people with every input column the equations read (see the module docstring)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(40, 79, n).round(0)
    male = rng.random(n) < 0.5
    tc = rng.normal(200, 30, n).clip(130, 320).round(0)
    hdl = rng.normal(np.where(male, 45, 55), 12, n).clip(20, 100).round(0)
    sbp = rng.normal(132, 16, n).clip(90, 180).round(0)
    diabetes = (rng.random(n) < 0.12).astype(float)
    smoker = (rng.random(n) < 0.15).astype(float)
    treated = (rng.random(n) < 0.3).astype(float)
    bmi = rng.normal(28, 4.5, n).clip(18.5, 39.9).round(1)
    return {
        "age_years": age,
        "sex": np.where(male, "male", "female"),
        "race": rng.choice(np.array(["white", "black", "other"]), n, p=[0.75, 0.15, 0.10]),
        "ethnicity_qrisk": rng.choice(np.arange(1, 10), n, p=[0.8, 0.04, 0.03, 0.02, 0.02, 0.03, 0.03, 0.01, 0.02]),
        "total_chol_mg_dl": tc,
        "hdl_mg_dl": hdl,
        "chol_hdl_ratio": tc / hdl,
        "sbp_mm_hg": sbp,
        "sbp_sd_mm_hg": rng.gamma(4, 2.5, n).round(1),
        "bp_treated": treated,
        "statin": (rng.random(n) < 0.2).astype(float),
        "diabetes": diabetes,
        "diabetes_type": np.where(diabetes == 1, np.where(rng.random(n) < 0.1, 1.0, 2.0), 0.0),
        "smoker": smoker,
        "smoking_category": np.where(smoker == 1, rng.integers(2, 5, n), np.where(rng.random(n) < 0.25, 1, 0)),
        "bmi_kg_m2": bmi,
        "waist_cm": (bmi * np.where(male, 3.4, 3.2) + rng.normal(0, 5, n)).round(0),
        "egfr_ml_min_1_73m2": rng.normal(85, 18, n).clip(15, 140).round(0),
        "uacr_mg_g": np.where(rng.random(n) < 0.4, np.exp(rng.normal(2.3, 1.2, n)).clip(0.1, 25000), np.nan),
        "hba1c_pct": np.where(
            rng.random(n) < 0.5, rng.normal(np.where(diabetes == 1, 7.4, 5.5), 0.6).clip(4.5, 15), np.nan
        ),
        "sdi_decile": np.where(rng.random(n) < 0.6, rng.integers(1, 11, n), np.nan),
        "townsend": rng.normal(0, 3, n).clip(-8, 12).round(1),
        "af": (rng.random(n) < 0.05).astype(float),
        "heart_failure": (rng.random(n) < 0.02).astype(float),
        "hypertension": np.maximum(treated, (sbp >= 140).astype(float)),
        "stroke_tia": (rng.random(n) < 0.03).astype(float),
        "vascular_disease": (rng.random(n) < 0.04).astype(float),
        "ckd_3_5": (rng.random(n) < 0.05).astype(float),
        "rheumatoid_arthritis": (rng.random(n) < 0.01).astype(float),
        "migraine": (rng.random(n) < 0.05).astype(float),
        "family_history_chd": (rng.random(n) < 0.1).astype(float),
        "physically_active": (rng.random(n) < 0.6).astype(float),
        "daily_fruit_veg": (rng.random(n) < 0.7).astype(float),
        "bp_medication_ever": treated,
        "high_glucose_ever": (rng.random(n) < 0.05).astype(float),
        "family_history_diabetes": rng.choice(np.arange(3), n, p=[0.7, 0.15, 0.15]).astype(float),
        "abnormal_renal": (rng.random(n) < 0.02).astype(float),
        "abnormal_liver": (rng.random(n) < 0.01).astype(float),
        "stroke": (rng.random(n) < 0.03).astype(float),
        "bleeding": (rng.random(n) < 0.03).astype(float),
        "labile_inr": np.zeros(n),
        "antiplatelet_or_nsaid": (rng.random(n) < 0.15).astype(float),
        "alcohol_excess": (rng.random(n) < 0.05).astype(float),
    }


def simulate_censored(
    risk: FloatArray,
    *,
    horizon: float,
    seed: int = 0,
    hazard_ratio: FloatArray | float = 1.0,
    censor_between: tuple[float, float] | None = None,
) -> Outcome:
    """Event times with ``P(T <= horizon) = 1 - (1 - risk) ** hazard_ratio``; censoring uniform on
    *censor_between* (default half to one and a half horizons)."""
    rng = np.random.default_rng(seed)
    p = np.asarray(risk, dtype=np.float64)
    rate = -np.log1p(-p) * hazard_ratio / horizon
    times = rng.exponential(1.0, len(p)) / rate
    lo, hi = censor_between if censor_between is not None else (0.5 * horizon, 1.5 * horizon)
    censor = rng.uniform(lo, hi, len(p))
    return Outcome.censored(np.minimum(times, censor), (times <= censor).astype(float), horizon)


def simulate_binary(risk: FloatArray, *, seed: int = 0, odds_ratio: FloatArray | float = 1.0) -> Outcome:
    """0/1 outcomes with probability *risk* (odds multiplied by *odds_ratio*)."""
    rng = np.random.default_rng(seed)
    p = np.asarray(risk, dtype=np.float64)
    odds = p / (1 - p) * odds_ratio
    return Outcome.binary((rng.random(len(p)) < odds / (1 + odds)).astype(float))
