"""Predicted-low alerts of the glucose component against simulated hypoglycaemia
(medtwin.twin.glucose_alert_validation): the scoring on hand-made cases, the screened alert horizon against every
particle run, a few virtual patients (fast) and the 30 (slow: the figures of docs/living-twin.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from medtwin.glucose.forecast import GlucoseForecaster
from medtwin.glucose.stream import population_posterior, update_many
from medtwin.twin.glucose_alert_validation import Episode, hypo_episodes, replay_virtual_patients, score_alerts

T0 = datetime(2026, 2, 1, 6, tzinfo=UTC)


def test_episodes_start_below_70_and_end_after_30_minutes_back_above() -> None:
    bg = np.full((300, 2), 120.0)
    bg[100:120, 0] = 60.0
    bg[130:140, 0] = 65.0  # back above for 10 min only: the same episode
    bg[250:260, 1] = 50.0
    assert hypo_episodes(bg) == [Episode(0, 100, 140), Episode(1, 250, 260)]


def test_lead_time_late_detection_and_false_alerts() -> None:
    episodes = [Episode(0, 100, 140), Episode(1, 250, 260)]
    # patient 0: alerts 35 and 20 min before (the earliest counts), one 2 h after (false);
    # patient 1: one 10 min into the episode (late), one 61 min before (outside the hour: false)
    score = score_alerts([[65.0, 80.0, 260.0], [189.0, 255.0]], episodes, days=1)
    assert score.lead_times_min == (35.0, -5.0)
    assert (score.detected, score.detected_before_onset, score.alerts, score.false_alerts) == (2, 1, 5, 2)
    assert score.false_alerts_per_patient_day == 1.0
    assert score.to_dict()["lead_time_min_median"] == 15.0


def falling(k: int) -> float:
    return max(45.0, 190.0 - 3.0 * k) if k < 60 else 120.0


@pytest.mark.parametrize("particles", [32, 128])
def test_screened_horizon_raises_what_every_particle_raises(particles: int) -> None:
    """One forecaster with the screen, one without, and the batched filter with the screen: the same alerts, on a
    fall to a low, a recovery and steady readings, with a bolus and a meal on the way."""
    posterior = population_posterior(body_weight_kg=70, basal_u_h=1.0, draws=128)
    screened = GlucoseForecaster(posterior, T0, particles=particles, seed=3)
    full = GlucoseForecaster(posterior, T0, particles=particles, seed=3, alert_screen=False)
    batched = GlucoseForecaster(posterior, T0, particles=particles, seed=3)
    for f in (screened, full, batched):
        f.add_bolus(T0 + timedelta(minutes=40), 6.0)
        f.add_carbs(T0 + timedelta(minutes=200), 50.0)
    kinds = []
    for k in range(90):
        at = T0 + timedelta(minutes=5 * k)
        a = screened.update(at, falling(k))
        b = full.update(at, falling(k))
        (c,) = update_many([(batched, at, falling(k))])
        assert [(e.status, e.severity) for e in a] == [(e.status, e.severity) for e in b], k
        assert [(e.status, e.severity) for e in c] == [(e.status, e.severity) for e in b], k
        kinds += [e.status for e in a]
    assert "active" in kinds  # the case does reach both decisions
    assert "resolved" in kinds


def test_sentinels_are_the_weighted_quantile_particles() -> None:
    posterior = population_posterior(body_weight_kg=70, basal_u_h=1.0, draws=64)
    f = GlucoseForecaster(posterior, T0, particles=8, seed=1)
    f.update(T0, 120.0)
    bg = np.array([50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0, 120.0])[::-1]
    f.x[:, 12] = bg * f.params[:, 30]
    f.weights = np.array([0.01, 0.01, 0.01, 0.01, 0.2, 0.2, 0.26, 0.3])  # the weight on the low particles
    # sorted ascending: 50 (w .3), 60 (.26), 70 (.2), 80 (.2), ...: quantiles .05, .2 -> 50, .35 -> 60, .5 -> 60
    assert f.sentinels().tolist() == [6, 7]


def test_a_few_virtual_patients_alerted_before_their_lows() -> None:
    """Three children (among the virtual patients with the most lows) for one day at the default particle count.
    Measured 2026-12-07: 8 episodes, 7 alerted (4 before onset), 5 of 17 alerts false; the guards leave room."""
    score = replay_virtual_patients(1, seed=2, names=["child#001", "child#004", "child#007"]).score
    assert score.episodes == 8  # the scenario is deterministic (seeded meals, sensor noise)
    assert score.detected >= 6
    assert score.detected_before_onset >= 3
    assert max(score.lead_times_min) >= 30  # at least one low foreseen half an hour ahead
    assert score.false_alerts <= 7


@pytest.mark.slow
def test_thirty_virtual_patients_lead_time_and_false_alerts() -> None:
    """docs/living-twin.md's figures: the 30 virtual patients, 3 days, seed 2 (the rule was chosen on seed 1).
    Measured 2026-12-07 (128 particles): 61 episodes, 57 alerted, 34 before onset, median lead 3 min, 0.97 false
    alerts per patient-day; the guards sit a little below."""
    score = replay_virtual_patients(3, seed=2).score
    assert score.episodes == 61
    assert score.detected >= 52
    assert score.detected_before_onset >= 30
    assert float(np.median(score.lead_times_min)) >= 0
    assert score.false_alerts_per_patient_day <= 1.1
