"""Configuration validation, JSON round trip, arrival process, duration distributions."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from medtwin.errors import ValidationError
from medtwin.hospital import (
    ArrivalProfile,
    Duration,
    DurationError,
    EDConfig,
    ElectiveSlot,
    HospitalConfig,
    HospitalConfigError,
    Staffing,
    UnitConfig,
    example_hospital,
    fit_duration,
    hour_of_week,
)


def test_example_json_round_trip() -> None:
    cfg = example_hospital()
    again = HospitalConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_example_profile_has_the_documented_volume_and_shape() -> None:
    cfg = example_hospital()
    rates = np.asarray(cfg.arrivals.rates_per_h).reshape(7, 24)
    assert rates.sum() / 7 == pytest.approx(204.0)
    by_hour = rates.mean(axis=0)
    assert by_hour.argmin() in (4, 5)
    assert by_hour.min() / by_hour.mean() == pytest.approx(1 / 3, abs=0.02)  # trough a third of the mean
    assert rates.sum(axis=1).argmax() == 0  # Monday busiest
    assert sum(u.beds for u in cfg.units) == 434


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda c: replace(c, ed=replace(c.ed, admit={"Nowhere": 0.1})), "unknown unit"),
        (lambda c: replace(c, ed=replace(c.ed, admit={"Medicine": 0.7, "ICU": 0.4})), "sum to"),
        (lambda c: replace(c, electives=(ElectiveSlot(unit="X", weekday=0, hour=7, count=1),)), "unknown unit"),
        (lambda c: replace(c, units=(*c.units, c.units[0])), "unique"),
        (lambda c: replace(c, max_stays=0), "max_stays"),
    ],
)
def test_inconsistent_configs_are_refused(build, match: str) -> None:
    with pytest.raises(HospitalConfigError, match=match):
        build(example_hospital())


def test_component_validation() -> None:
    with pytest.raises(HospitalConfigError, match="168"):
        ArrivalProfile(rates_per_h=(1.0,) * 24)
    with pytest.raises(HospitalConfigError, match="hour-of-week 3"):
        ArrivalProfile(rates_per_h=(1.0,) * 3 + (-1.0,) + (1.0,) * 164)
    with pytest.raises(HospitalConfigError, match="itself"):
        UnitConfig(name="A", beds=1, los=Duration.exponential(1.0), transfers={"A": 0.1})
    with pytest.raises(HospitalConfigError, match="shifts"):
        Staffing(nurses_per_shift=(1, 1, 1, 1, 1), patients_per_nurse=4)
    with pytest.raises(HospitalConfigError, match="treatment space"):
        EDConfig(spaces=0, treatment=Duration.exponential(1.0), admit={})
    with pytest.raises(HospitalConfigError, match="weekday"):
        ElectiveSlot(unit="A", weekday=7, hour=1, count=1)
    with pytest.raises(HospitalConfigError, match="malformed"):
        HospitalConfig.from_dict({"name": "x"})
    assert issubclass(HospitalConfigError, ValidationError)


def test_arrival_times_follow_the_profile() -> None:
    rates = np.zeros(HOURS := 168)
    rates[8:20] = 10.0  # Monday 08-20 only
    profile = ArrivalProfile(rates_per_h=tuple(rates))
    rng = np.random.default_rng(0)
    horizon = 52 * HOURS
    pts = np.cumsum(rng.exponential(1.0, int(profile.expected_arrivals(0.0, horizon) * 1.2)))
    t = profile.arrival_times(pts, 0.0, horizon)
    assert np.all(np.diff(t) >= 0)
    how = np.floor(t % HOURS).astype(int)
    assert set(np.unique(how)) <= set(range(8, 20))
    counts = np.bincount(how, minlength=HOURS)[8:20]
    # Poisson counts over 52 weeks: mean 520 per hour slot, chi-square test of equal rates
    assert stats.chisquare(counts).pvalue > 0.001
    assert t.size == pytest.approx(52 * 120, rel=0.03)


def test_arrival_times_with_fractional_start_hour() -> None:
    profile = ArrivalProfile(rates_per_h=tuple([0.0] * 10 + [5.0] + [0.0] * 157))
    pts = np.arange(1, 100) * 0.05  # points 0.05 .. 4.95: all within the 5 expected arrivals
    t = profile.arrival_times(pts, 9.5, 2.0)  # window Monday 09:30-11:30: arrivals only 10-11
    assert t.size == pts.size
    assert t.min() >= 0.5
    assert t.max() <= 1.5
    assert profile.expected_arrivals(9.5, 2.0) == pytest.approx(5.0)


def test_hour_of_week() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    assert hour_of_week(datetime(2026, 11, 30, 0, tzinfo=UTC)) == 0.0  # a Monday
    assert hour_of_week(datetime(2026, 11, 29, 23, 30, tzinfo=UTC)) == 167.5
    assert hour_of_week(datetime(2026, 11, 30, 2, tzinfo=timezone(timedelta(hours=2)))) == 0.0
    with pytest.raises(ValidationError, match="naive"):
        hour_of_week(datetime(2026, 11, 30))


@pytest.mark.parametrize(
    "dur",
    [Duration.exponential(5.0), Duration.lognormal(5.0, 0.8), Duration.gamma(5.0, 0.5)],
)
def test_duration_mean_ppf_cdf(dur: Duration) -> None:
    assert dur.mean_h == pytest.approx(5.0, rel=1e-12)
    u = np.linspace(0.01, 0.99, 25)
    np.testing.assert_allclose(dur.cdf(dur.ppf(u)), u, rtol=1e-9)
    sample = dur.ppf(np.random.default_rng(1).random(200_000))
    assert sample.mean() == pytest.approx(5.0, rel=0.02)


def test_duration_matches_scipy() -> None:
    d = Duration.lognormal(10.0, 1.0)
    mu, sigma = d.params
    x = np.array([0.5, 3.0, 10.0, 40.0])
    np.testing.assert_allclose(d.cdf(x), stats.lognorm.cdf(x, sigma, scale=math.exp(mu)), rtol=1e-12)
    g = Duration.gamma(10.0, 0.5)
    np.testing.assert_allclose(g.cdf(x), stats.gamma.cdf(x, 4.0, scale=2.5), rtol=1e-12)


def test_residual_life_is_memoryless_for_exponential_and_longer_for_lognormal() -> None:
    u = np.random.default_rng(2).random(100_000)
    expo = Duration.exponential(10.0)
    assert expo.residual_ppf(u, np.full(u.size, 30.0)).mean() == pytest.approx(10.0, rel=0.02)
    logn = Duration.lognormal(10.0, 1.5)
    rem = logn.residual_ppf(u, np.full(u.size, 30.0))
    assert np.all(rem >= 0)
    assert rem.mean() > 10.0  # decreasing hazard: long stayers stay longer


def test_fit_duration_recovers_gamma_and_refuses_bad_data() -> None:
    true = Duration.gamma(20.0, 0.6)
    x = true.ppf(np.random.default_rng(3).random(20_000))
    fit = fit_duration(x)
    assert fit.duration.family == "gamma"
    np.testing.assert_allclose(fit.duration.params, true.params, rtol=0.05)
    assert fit.ks_pvalue > 0.01
    with pytest.raises(DurationError, match="at least 10"):
        fit_duration([1.0, 2.0], where="LoS in X")
    with pytest.raises(DurationError, match="LoS in X: durations must be positive"):
        fit_duration([1.0] * 10 + [0.0], where="LoS in X")
    with pytest.raises(DurationError, match="unknown"):
        Duration(family="weibull", params=(1.0,))  # type: ignore[arg-type]
    with pytest.raises(DurationError, match="positive"):
        Duration(family="gamma", params=(1.0, -1.0))
