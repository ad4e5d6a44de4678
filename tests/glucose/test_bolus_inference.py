"""Bolus-calculator settings read back from a person's records."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose.bolus_inference import infer_bolus_settings
from medtwin.glucose.therapy_data import TherapyData


def _records(cr: float, cf: float, meals: list[tuple[float, float, float]], *, target: float = 140.0,
             threshold: float = 150.0) -> TherapyData:  # fmt: skip
    """Records whose boluses follow the calculator exactly: each meal (minute, grams, CGM before it) boluses at the
    next reading; CGM is flat at the given value from 30 min before the meal to the bolus, 120 mg/dL elsewhere."""
    from medtwin.glucose.insilico import START

    t = np.arange(0.0, 1440.0 + 1, 5.0)
    g = np.full(t.size, 120.0)
    bolus_t, bolus_u = [], []
    for minute, grams, glucose in meals:
        g[(t >= minute - 30) & (t <= minute + 5)] = glucose
        bolus_t.append(minute + 5)
        bolus_u.append(grams / cr + ((glucose - target) / cf if glucose > threshold else 0.0))
    return TherapyData(start=START, cgm_t_min=t, cgm_mg_dl=g, cgm_censored=np.zeros(t.size),
                       bolus_t_min=np.array(bolus_t), bolus_u=np.array(bolus_u), basal_t_min=np.zeros(1),
                       basal_u_h=np.array([1.0]), carbs_t_min=np.array([m for m, _, _ in meals]),
                       carbs_g=np.array([c for _, c, _ in meals]), body_weight_kg=70.0)  # fmt: skip


def _infer(data: TherapyData, **kw: Any) -> Any:
    return infer_bolus_settings(data, target_mg_dl=140.0, correction_threshold_mg_dl=150.0, **kw)


def test_cr_and_cf_are_recovered_from_meal_boluses_with_one_correction() -> None:
    data = _records(12.0, 40.0, [(420.0, 50.0, 120.0), (720.0, 70.0, 230.0), (1080.0, 60.0, 140.0)])
    s = _infer(data)
    assert s.cr_g_per_u == pytest.approx(12.0, rel=1e-9)
    assert s.cf_mg_dl_per_u == pytest.approx(40.0, rel=1e-9)
    assert (s.meal_boluses, s.corrections) == (3, 1)
    assert s.rms_misfit_u < 1e-9
    assert s.total_daily_insulin_u == pytest.approx(24.0 + float(np.sum(data.bolus_u)), rel=1e-3)


def test_without_a_correction_cf_is_not_identified_but_cr_is() -> None:
    s = _infer(_records(8.0, 30.0, [(420.0, 40.0, 110.0), (720.0, 80.0, 145.0)]))
    assert s.cr_g_per_u == pytest.approx(8.0, rel=1e-9)
    assert s.cf_mg_dl_per_u is None
    assert s.corrections == 0


def test_a_wrong_target_shows_as_misfit() -> None:
    data = _records(12.0, 40.0, [(420.0, 50.0, 120.0), (720.0, 70.0, 230.0), (900.0, 30.0, 200.0),
                                 (1080.0, 60.0, 140.0)])  # fmt: skip
    assert _infer(data).rms_misfit_u < 1e-9
    off = infer_bolus_settings(data, target_mg_dl=100.0, correction_threshold_mg_dl=150.0)
    assert off.rms_misfit_u > 0.01


def test_the_period_mean_is_the_glucose_simglucoses_controller_saw(twin_days: Any) -> None:
    """In silico (the controller averages its held 3-minute reading over the control period): exact recovery."""
    data = twin_days.data[0]
    s = infer_bolus_settings(data, target_mg_dl=140.0, correction_threshold_mg_dl=150.0, sample_period_min=3.0)
    assert s.cr_g_per_u == pytest.approx(float(twin_days.cohort.cr_g_per_u[0]), rel=1e-4)
    if s.cf_mg_dl_per_u is not None:
        assert s.cf_mg_dl_per_u == pytest.approx(float(twin_days.cohort.cf_mg_dl_per_u[0]), rel=1e-3)


def test_records_without_meal_boluses_are_refused() -> None:
    data = _records(12.0, 40.0, [(420.0, 50.0, 120.0)])
    with pytest.raises(ValidationError, match="no bolus with carbohydrate"):
        _infer(replace(data, carbs_t_min=np.array([900.0])))
    with pytest.raises(ValidationError, match="threshold"):
        infer_bolus_settings(data, target_mg_dl=160.0, correction_threshold_mg_dl=150.0)
