"""The in-silico validation of the personal twin (docs/models/glucose_twin.md, "Validation").

The fast test runs the whole protocol on one patient; the slow one on all 30 (the batched fits alone take ~6 min of
CPU; forecasts and advice more than as much again) and holds the figures the documentation reports: the issue's
goals where the twin meets them, and the measured level (a regression guard, stated as such) where it does not.
"""

from __future__ import annotations

import pytest

from medtwin.glucose import all_patient_names
from medtwin.glucose.identify import FitSettings
from medtwin.glucose.twin_validation import validate_twin


def test_protocol_runs_end_to_end_on_one_patient() -> None:
    report = validate_twin(["adult#004"], seed=2, settings=FitSettings(require_convergence=False))
    s = report.summary()
    assert s["patients"] == 1
    for key in ("replay: boluses x1.3", "replay: boluses 20 min earlier"):
        assert s[key]["rmse_median_mg_dl"] < 15.0
    fc = s["forecast"]
    assert fc["gain_vs_persistence_30_pct"] > 25.0
    assert fc["gain_vs_linear_30_pct"] > 25.0
    assert fc["parkes_ab_pct_30"] > 95.0
    assert set(s["advice"]) == {"calculator_tir_pct", "calculator_tbr_pct", "calculator_insulin_u", "twin_tir_pct",
                                "twin_tbr_pct", "twin_insulin_u", "calibration_bias_mg_dl",
                                "calibration_sd_mg_dl"}  # fmt: skip


@pytest.mark.slow
def test_thirty_patients_meet_the_documented_figures() -> None:
    s = validate_twin(all_patient_names(), seed=2).summary()
    # 28/30 (second session) and 29/30 (third) on seed 2 with 24 walkers: a regression guard, not a goal
    assert s["fit"]["converged"] >= 28
    for key in ("replay: boluses x1.3", "replay: boluses 20 min earlier"):
        assert s[key]["rmse_median_mg_dl"] <= 15.0  # goal
        assert s[key]["coverage_95_pooled"] >= 0.90  # goal
    assert s["replay: boluses 20 min earlier"]["share_abs_dtir_le_5"] >= 0.80  # goal
    # goal 0.80 NOT met for boluses x1.3 (0.70 on seed 2 with the age-group prior; 0.60 before): regression guard
    assert s["replay: boluses x1.3"]["share_abs_dtir_le_5"] >= 0.65
    fc = s["forecast"]
    for h in (30, 60):
        assert fc[f"gain_vs_persistence_{h}_pct"] >= 25.0
        assert fc[f"gain_vs_linear_{h}_pct"] >= 25.0
        assert fc[f"parkes_ab_pct_{h}"] >= 99.0
    assert fc["coverage_95_30"] >= 0.85
    adv = s["advice"]
    # goal: more time in range than the calculator without more time below 70 (the robust policy, the default since
    # the fifth session: 89.4 vs 86.9 % and 1.62 vs 2.16 % on seed 2; the calibrated policy missed the first half)
    assert adv["twin_tbr_pct"] <= adv["calculator_tbr_pct"]
    assert adv["twin_tir_pct"] > adv["calculator_tir_pct"]
