"""The in-silico validation of the personal twin (docs/models/glucose_twin.md, "Validation").

The fast test runs the whole protocol on one patient; the slow one on all 30 (the batched fits alone take ~6 min of
CPU; forecasts and advice more than as much again) and holds the figures the documentation reports: the issue's
goals where the twin meets them, and the measured level (a regression guard, stated as such) where it does not.
"""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.glucose import all_patient_names
from medtwin.glucose.identify import FitSettings
from medtwin.glucose.insilico import simulate_therapy_a, true_glucose
from medtwin.glucose.therapy import Therapy, apply_therapy
from medtwin.glucose.twin_validation import _member, replay_tir_estimates, tir_before_zero, validate_twin


def test_replay_tir_estimates_tell_the_expectation_from_the_median_and_the_median_curve() -> None:
    # rows: minutes 0..4 (row 0, the start, is not counted), columns: 4 draws; each of the first three dips below 70
    # for one different minute (TIR 75 %), the fourth stays below (0 %)
    draws = np.array([[500.0, 500.0, 500.0, 500.0],
                      [60.0, 100.0, 100.0, 60.0],
                      [100.0, 60.0, 100.0, 60.0],
                      [100.0, 100.0, 60.0, 60.0],
                      [100.0, 100.0, 100.0, 60.0]])  # fmt: skip
    est = replay_tir_estimates(draws)
    assert est["mean"] == pytest.approx(56.25)  # (75 + 75 + 75 + 0) / 4
    assert est["median"] == pytest.approx(75.0)
    assert est["median_curve"] == pytest.approx(100.0)  # the pointwise median (80, 80, 80, 100) never dips


def test_expected_tir_is_the_time_average_of_the_probability_in_range() -> None:
    bg = np.random.default_rng(3).normal(90.0, 30.0, (289, 50))
    in_range = (bg[1:] >= 70) & (bg[1:] <= 180)
    assert replay_tir_estimates(bg)["mean"] == pytest.approx(100.0 * in_range.mean(axis=1).mean())
    with pytest.raises(ValueError, match="draws must be"):
        replay_tir_estimates(bg[:1])


def test_tir_before_zero_reads_both_up_to_the_first_minute_the_truth_reaches_zero() -> None:
    truth = np.array([120.0, 100.0, 60.0, 0.0, 0.0, 0.0])  # reaches 0 at minute 3, held there
    draws = np.array([[120.0, 120.0], [100.0, 100.0], [90.0, 60.0], [80.0, 50.0], [100.0, 40.0], [120.0, 90.0]])
    out = tir_before_zero(truth, draws)
    assert out["minutes_at_zero"] == 3.0
    assert out["tir_true_pct"] == pytest.approx(50.0)  # minutes 1-2: 100 in, 60 out
    assert out["tir_twin_pct"] == pytest.approx(75.0)  # draws' TIR over minutes 1-2: 100 % and 50 %, median 75
    never = tir_before_zero(truth + 200.0, draws)
    assert never["minutes_at_zero"] == 0.0
    assert never["tir_true_pct"] == 0.0  # all above 180
    assert never["tir_twin_pct"] == replay_tir_estimates(draws)["median"]
    with pytest.raises(ValueError, match="tir_before_zero"):
        tir_before_zero(truth, draws[:3])


def test_the_simulator_holds_a_glucose_that_reaches_zero_there() -> None:
    # what tir_before_zero is for: simglucose's clamp stops Gp below 0, so too much insulin leaves glucose at 0 for good
    sim = simulate_therapy_a(["child#003"], days=2, seed=1)
    flooded = apply_therapy(sim.data[0], Therapy(name="boluses x4", bolus_scale=4.0))
    bg = true_glucose(_member(sim.cohort, 0), [flooded])[:, 0]
    first = int(np.flatnonzero(bg <= 0.0)[0])
    assert first < bg.size - 60
    assert np.all(bg[first:] <= 0.0)  # meals after it do not raise it again
    assert np.any(sim.data[0].carbs_t_min > first)


def test_protocol_runs_end_to_end_on_one_patient() -> None:
    report = validate_twin(["adult#004"], seed=2, settings=FitSettings(require_convergence=False))
    s = report.summary()
    assert s["patients"] == 1
    for r in report.patients[0].replay.values():  # the twin's TIR is the draws' median, inside their interval
        assert r["tir_twin_lo95_pct"] <= r["tir_twin_pct"] <= r["tir_twin_hi95_pct"]
        assert r["tir_twin_lo95_pct"] <= r["tir_twin_mean_pct"] <= r["tir_twin_hi95_pct"]
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
    # 29/30 on seed 2 with 24 walkers (run R11 of docs/models/glucose_twin.md, 2026-12-08): a regression guard
    assert s["fit"]["converged"] >= 28
    for key in ("replay: boluses x1.3", "replay: boluses 20 min earlier"):
        assert s[key]["rmse_median_mg_dl"] <= 15.0  # goal
        assert s[key]["coverage_95_pooled"] >= 0.90  # goal
    assert s["replay: boluses 20 min earlier"]["share_abs_dtir_le_5"] >= 0.80  # goal
    # goal 0.80 NOT met for boluses x1.3 (0.70 on seed 2, run R11, the median of the draws' TIR): regression guard
    assert s["replay: boluses x1.3"]["share_abs_dtir_le_5"] >= 0.65
    fc = s["forecast"]
    for h in (30, 60):
        assert fc[f"gain_vs_persistence_{h}_pct"] >= 25.0
        assert fc[f"gain_vs_linear_{h}_pct"] >= 25.0
        assert fc[f"parkes_ab_pct_{h}"] >= 99.0
    assert fc["coverage_95_30"] >= 0.85
    adv = s["advice"]
    # goal: more time in range than the calculator without more time below 70 (the robust policy, the default:
    # 89.4 vs 86.9 % and 1.64 vs 2.16 % on seed 2, run R11; the calibrated policy missed the first half)
    assert adv["twin_tbr_pct"] <= adv["calculator_tbr_pct"]
    assert adv["twin_tir_pct"] > adv["calculator_tir_pct"]
