"""Covariate formulas against hand-computed reference values and their failure modes."""

from __future__ import annotations

import pytest

from medtwin.dosing import (
    CovariateSeries,
    adjusted_body_weight_kg,
    bsa_dubois_m2,
    bsa_mosteller_m2,
    cockcroft_gault_ml_min,
    creatinine_mg_dl,
    ideal_body_weight_kg,
)
from medtwin.errors import ValidationError


def test_cockcroft_gault_reference_values() -> None:
    # (140 - 60) * 72 / (72 * 1.0) = 80 mL/min; women x 0.85
    assert cockcroft_gault_ml_min(age_y=60, weight_kg=72, scr_mg_dl=1.0, female=False) == 80.0
    assert cockcroft_gault_ml_min(age_y=60, weight_kg=72, scr_mg_dl=1.0, female=True) == 68.0


def test_cockcroft_gault_goti_erratum_floor_and_cap() -> None:
    kw = {"scr_floor_mg_dl": 1.0, "scr_floor_min_age_y": 65.0, "max_ml_min": 150.0}
    # age 70, SCr 0.5 -> SCr raised to 1.0: (70 * 70) / 72 = 68.06
    assert cockcroft_gault_ml_min(age_y=70, weight_kg=70, scr_mg_dl=0.5, female=False, **kw) == (
        pytest.approx(70 * 70 / 72)
    )
    # age 65 is not > 65: no floor; 75*70/(72*0.5) = 145.8
    assert cockcroft_gault_ml_min(age_y=65, weight_kg=70, scr_mg_dl=0.5, female=False, **kw) == (
        pytest.approx(75 * 70 / 36)
    )
    # young, low SCr: capped at 150
    assert cockcroft_gault_ml_min(age_y=20, weight_kg=90, scr_mg_dl=0.5, female=False, **kw) == 150.0


def test_creatinine_unit_conversion() -> None:
    assert creatinine_mg_dl(88.4, "umol/L") == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValidationError):
        creatinine_mg_dl(1.0, "mL/min")


def test_body_size_descriptors() -> None:
    # 6 ft = 182.88 cm: male IBW 50 + 2.3*12 = 77.6 kg
    assert ideal_body_weight_kg(height_cm=182.88, female=False) == pytest.approx(77.6)
    assert ideal_body_weight_kg(height_cm=182.88, female=True) == pytest.approx(73.1)
    assert adjusted_body_weight_kg(weight_kg=120, height_cm=182.88, female=False) == (
        pytest.approx(77.6 + 0.4 * (120 - 77.6))
    )
    assert adjusted_body_weight_kg(weight_kg=60, height_cm=182.88, female=False) == 60
    assert bsa_mosteller_m2(weight_kg=70, height_cm=170) == pytest.approx((170 * 70 / 3600) ** 0.5)
    assert bsa_dubois_m2(weight_kg=70, height_cm=170) == pytest.approx(1.8097, abs=1e-4)
    with pytest.raises(ValidationError, match="below 5 ft"):
        ideal_body_weight_kg(height_cm=140, female=True)
    with pytest.raises(ValidationError, match="> 0"):
        bsa_mosteller_m2(weight_kg=-1, height_cm=170)


def test_covariate_series_interpolation() -> None:
    s = CovariateSeries.build("SCR", [24.0, 0.0, 48.0], [1.2, 1.0, 1.5])
    assert [s.at(t) for t in (-5.0, 0.0, 23.9, 24.0, 100.0)] == [1.0, 1.0, 1.0, 1.2, 1.5]
    nocb = CovariateSeries.build("SCR", [0.0, 24.0], [1.0, 1.2], interpolation="nocb")
    assert nocb.at(12.0) == 1.2
    lin = CovariateSeries.build("SCR", [0.0, 24.0], [1.0, 1.2], interpolation="linear")
    assert lin.at(12.0) == pytest.approx(1.1)
    with pytest.raises(ValidationError):
        CovariateSeries.build("SCR", [0.0], [])
