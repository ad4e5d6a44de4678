"""Using the twin: replay under other therapies, forecasting with alerts, bolus advice, snapshots, error grid."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose.advise import (
    ROBUST_DOSE_RANGE,
    ROBUST_HYPO_PROBABILITY,
    AdviceCalibration,
    advise_meal_bolus,
    calculator_bolus,
    calibrate_advice,
    insulin_on_board,
)
from medtwin.glucose.error_grid import parkes_zone_fractions, parkes_zones
from medtwin.glucose.forecast import GlucoseForecaster
from medtwin.glucose.identify import Posterior
from medtwin.glucose.insilico import true_glucose
from medtwin.glucose.personal_twin import BolusSettings, PersonalGlucoseTwin
from medtwin.glucose.therapy import Therapy, apply_therapy


def test_replay_tracks_the_truth_of_another_therapy(twin_days: Any, twin_posterior: Posterior) -> None:
    data = twin_days.data[0].window(0.0, 2880.0)
    twin = PersonalGlucoseTwin(data, twin_posterior)
    recorded, more, earlier, bigger_meals = twin.replay(
        [Therapy(), Therapy(name="x1.3", bolus_scale=1.3), Therapy(name="-20", bolus_shift_min=-20),
         Therapy(name="meals x1.3", meal_scale=1.3)], draws=100,
    )  # fmt: skip
    # the recorded days: the band (of true glucose, not of noisy readings) holds the virtual patient's glucose
    true_bg = twin_days.result.bg_mg_dl[: recorded.median_mg_dl.size, 0]
    inside = (true_bg >= recorded.lo95_mg_dl) & (true_bg <= recorded.hi95_mg_dl)
    assert inside.mean() > 0.8
    for result, therapy in ((more, Therapy(bolus_scale=1.3)), (earlier, Therapy(bolus_shift_min=-20)),
                            (bigger_meals, Therapy(meal_scale=1.3))):  # fmt: skip
        truth = true_glucose(twin_days.cohort, [apply_therapy(data, therapy)])[:, 0]
        n = min(truth.size, result.median_mg_dl.size)
        assert np.sqrt(np.mean((result.median_mg_dl[:n] - truth[:n]) ** 2)) < 15.0
    assert more.metrics["mean_mg_dl"][0] < recorded.metrics["mean_mg_dl"][0] - 5.0  # more insulin, lower glucose
    assert more.insulin_u[0] > recorded.insulin_u[0]
    assert bigger_meals.metrics["mean_mg_dl"][0] > recorded.metrics["mean_mg_dl"][0] + 5.0  # same insulin, more food
    assert bigger_meals.insulin_u[0] == pytest.approx(recorded.insulin_u[0])
    assert set(more.to_dict()["metrics"]) >= {"tir_pct", "tbr_level1_pct", "cv_pct", "lbgi"}


def test_closed_loop_replay_with_a_controller(twin_days: Any, twin_posterior: Posterior) -> None:
    data = twin_days.data[0].window(0.0, 1440.0)
    twin = PersonalGlucoseTwin(data, twin_posterior)
    basal_only, bb = twin.replay(
        [Therapy(name="basal only", controller="basal"),
         Therapy(name="bb", controller="basal-bolus", cr_g_per_u=10.0, cf_mg_dl_per_u=20.0)], draws=40,
    )  # fmt: skip
    assert basal_only.metrics["mean_mg_dl"][0] > bb.metrics["mean_mg_dl"][0] + 20  # no meal boluses: high glucose
    assert bb.insulin_u[0] > basal_only.insulin_u[0]
    (bb_bigger,) = twin.replay([Therapy(name="bb, meals x1.5", controller="basal-bolus", cr_g_per_u=10.0,
                                        cf_mg_dl_per_u=20.0, meal_scale=1.5)], draws=40)  # fmt: skip
    assert bb_bigger.insulin_u[0] > bb.insulin_u[0] * 1.1  # the controller is told the bigger meals and boluses more


def _forecaster(twin_days: Any, twin_posterior: Posterior) -> tuple[GlucoseForecaster, Any]:
    data = twin_days.data[0]
    f = GlucoseForecaster(twin_posterior, data.start, particles=128)
    f.basal = list(zip(data.basal_t_min.tolist(), data.basal_u_h.tolist(), strict=True))
    f.bolus = list(zip(data.bolus_t_min.tolist(), data.bolus_u.tolist(), strict=True))
    f.carbs = list(zip(data.carbs_t_min.tolist(), data.carbs_g.tolist(), strict=True))
    return f, data


def test_forecast_beats_persistence_on_an_unseen_day(twin_days: Any, twin_posterior: Posterior) -> None:
    f, data = _forecaster(twin_days, twin_posterior)
    errors: dict[str, list[float]] = {"twin": [], "persistence": []}
    inside = []
    for i, (t, g) in enumerate(zip(data.cgm_t_min, data.cgm_mg_dl, strict=True)):
        f.update(data.start + timedelta(minutes=float(t)), float(g))
        if t < 2880 or t + 30 > data.cgm_t_min[-1] or i % 4:
            continue
        fc = f.forecast((30,))
        future = data.cgm_mg_dl[np.searchsorted(data.cgm_t_min, t + 30)]
        errors["twin"].append(fc.median_mg_dl[0] - future)
        errors["persistence"].append(g - future)
        inside.append(fc.lo95_mg_dl[0] <= future <= fc.hi95_mg_dl[0])
    rmse = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errors.items()}
    assert rmse["twin"] < 0.85 * rmse["persistence"]
    assert np.mean(inside) > 0.75
    with pytest.raises(ValidationError, match="older than"):
        f.update(data.start, 120.0)
    with pytest.raises(ValidationError, match="outside 20-600"):
        f.update(data.end + timedelta(minutes=5), 900.0)


def test_low_glucose_alert_before_the_low(twin_days: Any, twin_posterior: Posterior) -> None:
    """A 25 U correction without food: the alert comes while glucose is still well above 70 mg/dL, once."""
    data = twin_days.data[0]
    f = GlucoseForecaster(twin_posterior, data.start, particles=128, basal_u_h=float(data.basal_u_h[0]))
    f.add_bolus(data.start + timedelta(minutes=60), 25.0)
    truth = true_glucose(twin_days.cohort, [replace(data, bolus_t_min=np.array([60.0]), bolus_u=np.array([25.0]),
                                                    carbs_t_min=np.zeros(0), carbs_g=np.zeros(0))])[:, 0]  # fmt: skip
    first_low = int(np.argmax(truth < 70.0))
    events = []
    for k in range(0, first_low + 30, 5):
        for e in f.update(data.start + timedelta(minutes=k), float(truth[k])):
            events.append((k, e))
    medium = [(k, e) for k, e in events if e.severity == "medium"]
    assert len(medium) == 1, events
    k, alert = medium[0]
    assert alert.code == "glucose-low-predicted"
    assert alert.kind == "alert"
    assert alert.status == "active"
    assert k < first_low - 20
    assert truth[k] > 90
    assert [e.severity for _, e in events] in (["medium"], ["medium", "high"])  # at most one escalation


def test_twin_snapshot_restores_the_filter_exactly(twin_days: Any, twin_posterior: Posterior) -> None:
    data = twin_days.data[0].window(0.0, 2880.0)
    twin = PersonalGlucoseTwin(data, twin_posterior, bolus_settings=BolusSettings(cr_g_per_u=10, cf_mg_dl_per_u=20))
    twin.forecaster  # noqa: B018 - assimilate the recorded days
    back = PersonalGlucoseTwin.restore(twin.snapshot())
    assert back.bolus_settings == twin.bolus_settings
    a, b = twin.forecast((30, 60)), back.forecast((30, 60))
    assert a.median_mg_dl == b.median_mg_dl
    assert a.hi95_mg_dl == b.hi95_mg_dl
    with pytest.raises(ValidationError, match="not a glucose twin"):
        PersonalGlucoseTwin.restore(b'{"kind": "something else"}')
    with pytest.raises(ValidationError, match="not a glucose twin"):
        PersonalGlucoseTwin.restore(b"\x00garbage")


def test_insulin_on_board_and_the_standard_calculator() -> None:
    assert insulin_on_board([0.0], [1.0], 0.0) == pytest.approx(1.0)
    assert insulin_on_board([0.0], [1.0], 360.0) == pytest.approx(0.0, abs=1e-12)
    curve = [insulin_on_board([0.0], [1.0], t) for t in range(0, 361, 15)]
    assert all(a >= b for a, b in itertools.pairwise(curve))
    assert 0.4 < insulin_on_board([0.0], [1.0], 120.0) < 0.7  # rapid-acting: about half left after 2 h
    assert calculator_bolus(60, 160, 1.0, cr_g_per_u=10, cf_mg_dl_per_u=50, target_mg_dl=110) == pytest.approx(6.0)
    assert calculator_bolus(10, 60, 2.0, cr_g_per_u=10, cf_mg_dl_per_u=50) == 0.0


def test_advice_keeps_hypoglycaemia_unlikely(twin_days: Any, twin_posterior: Posterior) -> None:
    f, data = _forecaster(twin_days, twin_posterior)
    for t, g in zip(data.cgm_t_min[:200], data.cgm_mg_dl[:200], strict=True):
        f.update(data.start + timedelta(minutes=float(t)), float(g))
    small = advise_meal_bolus(f, 30.0, cr_g_per_u=10.0, cf_mg_dl_per_u=20.0, candidates=21, policy="risk")
    big = advise_meal_bolus(f, 90.0, cr_g_per_u=10.0, cf_mg_dl_per_u=20.0, candidates=21, policy="risk")
    assert small.feasible
    assert big.feasible
    assert small.twin.hypo_probability <= 0.05
    assert big.twin.hypo_probability <= 0.05
    assert big.twin.bolus_u > small.twin.bolus_u
    # the constraint is on the low (5 %) quantile of the predicted nadir, model error included
    assert small.twin.low_nadir_mg_dl >= 70.0 - 0.01
    assert big.twin.low_nadir_mg_dl >= 70.0 - 0.01
    assert all(o.low_nadir_mg_dl <= o.median_nadir_mg_dl for o in big.candidates)
    riskier = [o for o in big.candidates if o.bolus_u > big.twin.bolus_u]
    assert all(o.low_nadir_mg_dl <= big.twin.low_nadir_mg_dl + 1e-6 for o in riskier)
    assert big.twin.risk_index <= big.calculator.risk_index + 1e-12  # the calculator's dose is one of the candidates
    assert abs(round(big.twin.bolus_u / 0.05) * 0.05 - big.twin.bolus_u) < 1e-9
    with pytest.raises(ValidationError):
        advise_meal_bolus(f, 0.0, cr_g_per_u=10.0, cf_mg_dl_per_u=20.0)
    with pytest.raises(ValidationError, match="policy"):
        advise_meal_bolus(f, 30.0, cr_g_per_u=10.0, cf_mg_dl_per_u=20.0, policy="boldest")


@pytest.mark.parametrize("cr_g_per_u", [10.0, 1.0])
def test_guard_advice_never_exceeds_the_calculator(
    twin_days: Any, twin_posterior: Posterior, cr_g_per_u: float
) -> None:
    """The guard policy: the calculator's dose when the twin finds it safe, else the largest dose below it that is
    (a CR of 1 g/U makes the calculator's dose for 90 g an overdose the twin must cut)."""
    f, data = _forecaster(twin_days, twin_posterior)
    for t, g in zip(data.cgm_t_min[:200], data.cgm_mg_dl[:200], strict=True):
        f.update(data.start + timedelta(minutes=float(t)), float(g))
    advice = advise_meal_bolus(f, 90.0, cr_g_per_u=cr_g_per_u, cf_mg_dl_per_u=20.0, candidates=21, policy="guard")
    calc = advice.calculator
    assert advice.twin.bolus_u <= calc.bolus_u + 1e-9
    if calc.hypo_probability <= 0.05:
        assert advice.twin.bolus_u == pytest.approx(calc.bolus_u)
    else:
        assert advice.twin.bolus_u < calc.bolus_u
        assert advice.twin.hypo_probability <= 0.05
        larger = [o for o in advice.candidates if advice.twin.bolus_u < o.bolus_u <= calc.bolus_u]
        assert larger
        assert all(o.hypo_probability > 0.05 for o in larger)
    if cr_g_per_u == 1.0:
        assert calc.hypo_probability > 0.05  # the case the parameter is there for


def test_advice_calibration_scores_the_unseen_day(twin_days: Any, twin_posterior: Posterior) -> None:
    """The twin's nadir errors on the meals of the day it was not fitted on, and their shrunk bias and SD."""
    data = twin_days.data[0]
    cal = calibrate_advice(GlucoseForecaster(twin_posterior, data.start, particles=64), data, 2880.0)
    day3 = [m for m in data.carbs_t_min if m >= 2880.0 and m + 300 <= data.cgm_t_min[-1]]
    assert cal.meals == len(day3) == len(cal.errors_mg_dl) >= 2
    e = np.array(cal.errors_mg_dl)
    assert np.all(np.abs(e) < 60.0)  # an identified twin predicts the post-meal nadir of an unseen day
    s = twin_posterior.residual_sd_mg_dl
    assert cal.bias_mg_dl == pytest.approx(e.sum() / (e.size + 3.0))
    assert cal.sd_mg_dl == pytest.approx(np.sqrt((np.sum((e - cal.bias_mg_dl) ** 2) + 3 * s * s) / (e.size + 3)))
    assert abs(cal.bias_mg_dl) < abs(e.mean()) + 1e-12  # shrunk towards no bias
    assert json.loads(json.dumps(cal.to_dict()))["meals"] == cal.meals
    started = GlucoseForecaster(twin_posterior, data.start, particles=16)
    started.update(data.start, 120.0)
    with pytest.raises(ValidationError, match="not assimilated"):
        calibrate_advice(started, data, 2880.0)
    none = calibrate_advice(GlucoseForecaster(twin_posterior, data.start, particles=16), data, 1e6)
    assert none.meals == 0
    assert none.bias_mg_dl == 0.0
    assert none.sd_mg_dl == pytest.approx(s)


def _cal(bias: float, sd: float) -> AdviceCalibration:
    return AdviceCalibration(meals=3, bias_mg_dl=bias, sd_mg_dl=sd, errors_mg_dl=(bias, bias, bias))


@pytest.mark.parametrize("cr_g_per_u", [10.0, 1.0])
def test_calibrated_advice_cuts_only_a_likely_low(twin_days: Any, twin_posterior: Posterior, cr_g_per_u: float) -> None:
    """The calibrated policy: never above the calculator (no raise allowed); the calculator's dose unless a low is
    more likely than *max_hypo_probability* under the calibrated error, then the largest dose below it that is not;
    a twin that over-predicted lows (positive bias) cuts less; a certain low (CR 1 g/U) is cut."""
    f, data = _forecaster(twin_days, twin_posterior)
    for t, g in zip(data.cgm_t_min[:200], data.cgm_mg_dl[:200], strict=True):
        f.update(data.start + timedelta(minutes=float(t)), float(g))
    kw: dict[str, Any] = {"cr_g_per_u": cr_g_per_u, "cf_mg_dl_per_u": 20.0, "candidates": 21, "policy": "calibrated"}
    for p in (0.05, 0.5):
        advice = advise_meal_bolus(f, 90.0, calibration=_cal(0.0, 10.0), max_hypo_probability=p, **kw)
        calc = advice.calculator
        assert advice.twin.bolus_u <= calc.bolus_u + 1e-9
        if calc.hypo_probability <= p:
            assert advice.twin.bolus_u == pytest.approx(calc.bolus_u)
        else:
            assert advice.twin.hypo_probability <= p
            larger = [o for o in advice.candidates if advice.twin.bolus_u < o.bolus_u <= calc.bolus_u]
            assert larger
            assert all(o.hypo_probability > p for o in larger)
        lifted = advise_meal_bolus(f, 90.0, calibration=_cal(40.0, 10.0), max_hypo_probability=p, **kw)
        assert lifted.twin.bolus_u >= advice.twin.bolus_u - 1e-9
        assert lifted.calculator.hypo_probability <= calc.hypo_probability + 1e-12
    if cr_g_per_u == 1.0:  # 90 U for 90 g: a low is certain, the dose is cut
        assert calc.hypo_probability > 0.99
        assert advice.twin.bolus_u < calc.bolus_u
        assert advice.twin.hypo_probability <= 0.5
    with pytest.raises(ValidationError, match="calibration"):
        advise_meal_bolus(f, 90.0, **kw)


def test_calibrated_advice_raises_only_within_its_limit(twin_days: Any, twin_posterior: Posterior) -> None:
    """With raise_limit r the calibrated policy may give up to (1 + r) x the calculator's dose, only a dose whose
    P(low) <= 1 % under the calibrated error, and only when it lowers the predicted risk index."""
    f, data = _forecaster(twin_days, twin_posterior)
    for t, g in zip(data.cgm_t_min[:200], data.cgm_mg_dl[:200], strict=True):
        f.update(data.start + timedelta(minutes=float(t)), float(g))
    kw: dict[str, Any] = {"cf_mg_dl_per_u": 20.0, "candidates": 41, "policy": "calibrated"}
    tight = advise_meal_bolus(f, 60.0, cr_g_per_u=30.0, calibration=_cal(0.0, 5.0), raise_limit=0.2, **kw)
    calc = tight.calculator
    assert calc.bolus_u <= tight.twin.bolus_u <= 1.2 * calc.bolus_u + 1e-9
    if tight.twin.bolus_u > calc.bolus_u:
        assert tight.twin.hypo_probability <= 0.01
        assert tight.twin.risk_index < calc.risk_index
    # an under-dosing calculator (CR 30 g/U) and a twin sure of no low: it raises
    assert tight.twin.bolus_u > calc.bolus_u
    unsure = advise_meal_bolus(f, 60.0, cr_g_per_u=30.0, calibration=_cal(-60.0, 40.0), raise_limit=0.2, **kw)
    assert unsure.twin.bolus_u <= unsure.calculator.bolus_u + 1e-9
    with pytest.raises(ValidationError, match="raise_limit"):
        advise_meal_bolus(f, 60.0, cr_g_per_u=30.0, calibration=_cal(0.0, 5.0), raise_limit=2.0, **kw)


@pytest.mark.parametrize("cr_g_per_u", [10.0, 30.0, 1.0])
def test_robust_advice_moves_off_the_calculator_only_when_every_scenario_agrees(
    twin_days: Any, twin_posterior: Posterior, cr_g_per_u: float
) -> None:
    """The robust policy: a dose within ROBUST_DOSE_RANGE x the calculator's; the calculator's unless another dose
    lowers the risk index in every dose-response scenario (so its nominal risk is lower too) and keeps P(low) within
    the constraint; an under-dosing calculator (CR 30 g/U) is raised by a sure twin and not by an unsure one, a
    certain overdose (CR 1 g/U: 90 U for 90 g) is cut."""
    f, data = _forecaster(twin_days, twin_posterior)
    for t, g in zip(data.cgm_t_min[:200], data.cgm_mg_dl[:200], strict=True):
        f.update(data.start + timedelta(minutes=float(t)), float(g))
    kw: dict[str, Any] = {"cr_g_per_u": cr_g_per_u, "cf_mg_dl_per_u": 20.0, "candidates": 30, "policy": "robust"}
    sure = advise_meal_bolus(f, 90.0, calibration=_cal(0.0, 5.0), **kw)
    calc, twin = sure.calculator, sure.twin
    lo, hi = ROBUST_DOSE_RANGE
    assert lo * calc.bolus_u - 0.05 <= twin.bolus_u <= hi * calc.bolus_u + 0.05
    if twin.bolus_u != pytest.approx(calc.bolus_u):
        assert twin.risk_index < calc.risk_index
    if twin.bolus_u > calc.bolus_u:
        assert twin.hypo_probability <= ROBUST_HYPO_PROBABILITY
    unsure = advise_meal_bolus(f, 90.0, calibration=_cal(-40.0, 40.0), **kw)
    if cr_g_per_u == 30.0:  # 3 U for 90 g: glucose stays high; the sure twin raises, the unsure one does not
        assert twin.bolus_u > calc.bolus_u
        assert unsure.twin.bolus_u <= unsure.calculator.bolus_u + 1e-9
    if cr_g_per_u == 1.0:
        assert calc.hypo_probability > 0.99
        assert twin.bolus_u < calc.bolus_u - 1.0
    without = advise_meal_bolus(f, 90.0, **kw)  # the fit's residual SD as the error
    assert lo * calc.bolus_u - 0.05 <= without.twin.bolus_u <= hi * calc.bolus_u + 0.05
    for p in (0.01, 1e-6):  # a stricter hypoglycaemia limit is honoured, not replaced by the policy's 5 %
        strict = advise_meal_bolus(f, 90.0, calibration=_cal(0.0, 5.0), max_hypo_probability=p, **kw)
        if strict.twin.bolus_u > strict.calculator.bolus_u:
            assert strict.twin.hypo_probability <= p


def test_parkes_grid_zones() -> None:
    ref = np.array([100.0, 100.0, 100.0, 100.0, 300.0, 20.0, 50.0, 300.0])
    est = np.array([100.0, 140.0, 200.0, 400.0, 150.0, 160.0, 200.0, 30.0])
    np.testing.assert_array_equal(parkes_zones(ref, est), [0, 1, 2, 3, 1, 4, 3, 3])
    frac = parkes_zone_fractions(ref, est)
    assert sum(frac.values()) == pytest.approx(100.0)
    assert frac["A"] == pytest.approx(12.5)
    with pytest.raises(ValidationError):
        parkes_zones([100.0], [-1.0])


def test_the_low_quantile_of_a_particle_mixture() -> None:
    from scipy.special import ndtr

    from medtwin.glucose.advise import _mixture_quantile

    centres = np.array([80.0, 100.0, 140.0])
    weights = np.array([0.2, 0.5, 0.3])
    q = _mixture_quantile(centres, weights, 10.0, 0.05)
    assert float(weights @ ndtr((q - centres) / 10.0)) == pytest.approx(0.05, abs=1e-9)
    assert _mixture_quantile(centres, weights, 0.0, 0.05) == 80.0  # no model error: the particles' own quantile
    assert _mixture_quantile(centres, weights, 0.0, 0.5) == 100.0


def test_replay_counts_the_draws_that_reach_zero_glucose(twin_days: Any, twin_posterior: Posterior) -> None:
    from medtwin.glucose.replay import _summarise

    bg = np.full((5, 4), 120.0)
    bg[2:, 1] = 0.0  # one draw reaches 0 at minute 2 and the model holds it there
    bg[0, 2] = 0.0  # minute 0 (the start) is not counted
    out = _summarise(Therapy(), bg, np.ones(4), 0.0, np.random.default_rng(1))
    assert out.zero_pct == pytest.approx(25.0)
    assert out.to_dict()["zero_pct"] == pytest.approx(25.0)
    data = twin_days.data[0].window(0.0, 1440.0)
    (flooded,) = PersonalGlucoseTwin(data, twin_posterior).replay([Therapy(name="x6", bolus_scale=6.0)], draws=40)
    assert flooded.zero_pct > 50.0  # six times the boluses: the twin's glucose reaches the floor


def test_a_cgm_low_reading_moves_the_filter_under_the_limit_and_raises_the_alert(
    twin_days: Any, twin_posterior: Posterior
) -> None:
    """A sensor that reads Low (below 40 mg/dL) while the twin expects ~100: the Low is evidence, not a gap."""
    data = twin_days.data[0]

    def filtered() -> GlucoseForecaster:
        f = GlucoseForecaster(twin_posterior, data.start, particles=128, basal_u_h=float(data.basal_u_h[0]))
        for k in range(0, 120, 5):
            assert f.update(data.start + timedelta(minutes=k), 110.0) == []
        return f

    skipped, bounded = filtered(), filtered()
    lows = [data.start + timedelta(minutes=k) for k in range(120, 150, 5)]
    events = [e for at in lows for e in bounded.update_limit(at, 40.0)]
    for at in lows:  # what the twin did before: Low readings not assimilated
        skipped._advance(skipped._minutes(at))
    now, later = bounded.forecast((1, 30)).median_mg_dl
    assert now < 45.0  # the CGM the twin expects a minute on sits at the limit (the sensor error carries it)
    assert later < skipped.forecast((30,)).median_mg_dl[0] - 20.0
    assert [e.code for e in events][:1] == ["glucose-low-predicted"]
    assert events[-1].severity == "high"  # below 54 mg/dL
    assert bounded.last_cgm_mg_dl == 40.0
    # a High reading is the bound the other way: the twin's glucose goes above it
    high = filtered()
    for k in range(120, 150, 5):
        high.update_limit(data.start + timedelta(minutes=k), 400.0, below=False)
    assert high.forecast((1,)).median_mg_dl[0] > 390.0
    with pytest.raises(ValidationError, match="outside 20-600"):
        high.update_limit(data.start + timedelta(minutes=200), 10.0)
