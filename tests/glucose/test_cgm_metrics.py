"""Consensus CGM metrics: hand-computed cases, real Dexcom data with gaps, failure modes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.errors import ValidationError
from medtwin.glucose import cgm_metrics, count_episodes, risk_components, summary_metrics_batch


def test_hand_computed_small_case() -> None:
    t = np.arange(10) * 5.0
    g = np.array([50.0, 60.0, 100.0, 100.0, 150.0, 200.0, 200.0, 260.0, 300.0, 180.0])
    m = cgm_metrics(t, g)
    assert m.mean_mg_dl == pytest.approx(160.0)
    assert m.sd_mg_dl == pytest.approx(math.sqrt(np.mean((g - 160.0) ** 2)))
    assert m.cv_pct == pytest.approx(100 * m.sd_mg_dl / 160.0)
    assert m.gmi_pct == pytest.approx(3.31 + 0.02392 * 160.0)
    assert (m.tbr_level2_pct, m.tbr_level1_pct, m.tir_pct, m.tar_level1_pct, m.tar_level2_pct) == pytest.approx(
        (10.0, 10.0, 40.0, 20.0, 20.0)
    )
    assert m.coverage_pct == pytest.approx(100.0)
    assert m.duration_h == pytest.approx(50 / 60)


def test_kovatchev_risk_values() -> None:
    # f(112.5) ~ 0 (the symmetric centre); f(20) ~ -3.3 -> risk ~ 100 (LBGI scale maximum)
    rl, rh = risk_components(np.array([112.5, 20.0, 600.0]))
    assert rl[0] + rh[0] < 0.01
    assert rl[1] == pytest.approx(10 * (1.509 * (math.log(20.0) ** 1.084 - 5.381)) ** 2)
    assert rl[1] > 90
    assert rh[1] == 0.0
    assert rh[2] > 90
    # simglucose's logged HBGI for 138.56 mg/dL (reference batch file, first row)
    assert risk_components(np.array([138.56]))[1][0] == pytest.approx(1.5109019799034997, rel=1e-12)


def test_episodes_consensus_definition() -> None:
    t = np.arange(24) * 5.0
    g = np.full(24, 100.0)
    g[2:5] = 65.0  # 15 min below 70: one level-1 episode
    g[6:8] = 65.0  # 10 min below 70, after only 5 min above: same episode continues
    g[14:16] = 50.0  # 10 min below 54 (and 70): too short for an episode of either level
    assert count_episodes(t, g, 70.0) == 1
    assert count_episodes(t, g, 54.0) == 0
    g[16] = 50.0  # now 15 min
    assert count_episodes(t, g, 70.0) == 2
    assert count_episodes(t, g, 54.0) == 1


def test_gaps_are_not_counted_as_data() -> None:
    t = np.concatenate([np.arange(12) * 5.0, 600.0 + np.arange(12) * 5.0])
    g = np.concatenate([np.full(12, 60.0), np.full(12, 200.0)])
    m = cgm_metrics(t, g)
    # the reading before the 9-hour gap stands for 15 minutes at most: (55 + 15) min at 60 vs 60 min at 200
    assert m.tbr_level1_pct == pytest.approx(100 * 70 / 130)
    assert m.coverage_pct < 30.0
    # an episode does not continue across the gap
    g2 = np.full(24, 60.0)
    assert count_episodes(t, g2, 70.0) == 2


def test_irregular_unsorted_duplicated_and_missing_readings() -> None:
    t = np.array([10.0, 0.0, 5.0, 5.0, 15.0, 20.0])
    g = np.array([120.0, 100.0, 110.0, 999.0, np.nan, 130.0])
    m = cgm_metrics(t, g)
    assert m.n_readings == 4
    # weights 5, 5, 10 (gap 10 <= 15 kept), 5 (median interval for the last)
    assert m.mean_mg_dl == pytest.approx((100 * 5 + 110 * 5 + 120 * 10 + 130 * 5) / 25)


def test_real_dexcom_data(hall_subject1: pd.DataFrame) -> None:
    """Hall 2018 subject 1: regular 5-min readings with gaps; time-weighting stays close to plain statistics."""
    t_min = (hall_subject1.time - hall_subject1.time.iloc[0]).dt.total_seconds().to_numpy() / 60.0
    g = hall_subject1.gl.to_numpy(dtype=float)
    m = cgm_metrics(t_min, g)
    assert m.n_readings == len(hall_subject1)
    assert m.mean_mg_dl == pytest.approx(g.mean(), rel=0.01)
    assert m.sd_mg_dl == pytest.approx(g.std(), rel=0.02)
    total = m.tbr_level2_pct + m.tbr_level1_pct + m.tir_pct + m.tar_level1_pct + m.tar_level2_pct
    assert total == pytest.approx(100.0)
    plain_tir = 100 * np.mean((g >= 70) & (g <= 180))
    assert m.tir_pct == pytest.approx(plain_tir, abs=1.0)
    assert 80.0 < m.coverage_pct < 100.0  # the recording has gaps of up to ~7 h
    assert m.hypo_episodes_level2 == 0
    assert m.duration_h == pytest.approx(304.2, abs=0.2)


def test_batch_summary_matches_single_trace() -> None:
    rng = np.random.default_rng(0)
    g = rng.uniform(40, 350, size=(288, 4))
    batch = summary_metrics_batch(g)
    for i in range(4):
        single = cgm_metrics(np.arange(288) * 5.0, g[:, i])
        assert batch["mean_mg_dl"][i] == pytest.approx(single.mean_mg_dl)
        assert batch["tir_pct"][i] == pytest.approx(single.tir_pct)
        assert batch["lbgi"][i] == pytest.approx(single.lbgi)


@pytest.mark.parametrize(
    ("t", "g", "match"),
    [
        ([0.0], [100.0], "at least 2"),
        ([0.0, 5.0], [100.0, -1.0], "> 0"),
        ([0.0, 5.0, 10.0], [100.0, 110.0], "equal-length"),
    ],
)
def test_metrics_failure_modes(t: list[float], g: list[float], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        cgm_metrics(t, g)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=30.0, max_value=450.0), min_size=3, max_size=60),
    st.floats(min_value=1.0, max_value=15.0),
)
def test_metric_invariants(values: list[float], step_min: float) -> None:
    """Ranges partition the time; mean lies within the data; regular sampling gives plain statistics."""
    g = np.array(values)
    m = cgm_metrics(np.arange(g.size) * step_min, g)
    parts = m.tbr_level2_pct + m.tbr_level1_pct + m.tir_pct + m.tar_level1_pct + m.tar_level2_pct
    assert parts == pytest.approx(100.0)
    assert g.min() - 1e-9 <= m.mean_mg_dl <= g.max() + 1e-9
    assert m.mean_mg_dl == pytest.approx(g.mean())
    assert m.sd_mg_dl == pytest.approx(g.std(), abs=1e-6)
    assert m.lbgi >= 0.0
    assert m.hbgi >= 0.0
