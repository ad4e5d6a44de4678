"""M/M/c validation: Erlang C closed forms, and the simulation's CIs covering them."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from medtwin.hospital import (
    ArrivalProfile,
    Duration,
    EDConfig,
    HospitalConfig,
    erlang_c,
    mmc_mean_wait,
    run_replications,
    simulate,
)
from medtwin.hospital.queueing import QueueingError


def _erlang_c_factorial(lam: float, mu: float, c: int) -> float:
    """Erlang C written with factorials, independently of the iterative implementation."""
    a = lam / mu
    tail = a**c / math.factorial(c) * c / (c - a)
    return tail / (sum(a**k / math.factorial(k) for k in range(c)) + tail)


def mmc(lam: float, mu: float, c: int) -> HospitalConfig:
    """An ED-only hospital that is an M/M/c queue: Poisson arrivals, exponential service, no admits."""
    return HospitalConfig(
        name=f"M/M/{c}",
        ed=EDConfig(spaces=c, treatment=Duration.exponential(1.0 / mu), admit={}),
        units=(),
        arrivals=ArrivalProfile.constant(lam),
    )


def test_erlang_c_closed_forms() -> None:
    # c = 1: P(wait) = rho and Wq = rho / (mu - lambda) (M/M/1)
    assert erlang_c(0.6, 1.0, 1) == pytest.approx(0.6, rel=1e-12)
    assert mmc_mean_wait(0.6, 1.0, 1) == pytest.approx(0.6 / 0.4, rel=1e-12)
    # c = 2, a = 1: C = 1/3 (Gross et al. 2008, eq. 2.32 by hand)
    assert erlang_c(1.0, 1.0, 2) == pytest.approx(1.0 / 3.0, rel=1e-12)
    # c = 3, a = 2: C = 4/9, Wq = 4/9 h
    assert erlang_c(2.0, 1.0, 3) == pytest.approx(4.0 / 9.0, rel=1e-12)
    assert mmc_mean_wait(2.0, 1.0, 3) == pytest.approx(4.0 / 9.0, rel=1e-12)


@pytest.mark.parametrize(("lam", "mu", "c"), [(3.0, 0.5, 8), (45.0, 1.0, 50), (9.5, 0.1, 100)])
def test_erlang_c_matches_factorial_form(lam: float, mu: float, c: int) -> None:
    assert erlang_c(lam, mu, c) == pytest.approx(_erlang_c_factorial(lam, mu, c), rel=1e-10)


def test_erlang_c_large_c_does_not_overflow() -> None:
    value = erlang_c(950.0, 1.0, 1000)
    assert 0.0 < value < 1.0


@pytest.mark.parametrize(("lam", "mu", "c"), [(2.0, 1.0, 2), (1.0, 0.0, 1), (0.0, 1.0, 1)])
def test_erlang_c_rejects_unstable_or_invalid(lam: float, mu: float, c: int) -> None:
    with pytest.raises(QueueingError, match="M/M/c"):
        erlang_c(lam, mu, c)


@pytest.mark.parametrize(("lam", "mu", "c"), [(2.0, 1.0, 3), (4.0, 1.0, 5), (1.2, 0.5, 3)])
def test_simulated_mmc_confidence_intervals_cover_erlang_c(lam: float, mu: float, c: int) -> None:
    """20 replications x 2000 h after 200 h warm-up: 95 % t-CIs cover P(wait) and Wq."""
    results = run_replications(mmc(lam, mu, c), n_reps=20, seed=2026, horizon_h=2000, warmup_h=200)
    p_wait = np.asarray([np.mean(r.ed_waits_h > 0) for r in results])
    wq = np.asarray([np.mean(r.ed_waits_h) for r in results])
    t = stats.t.ppf(0.975, len(results) - 1)
    for est, exact in ((p_wait, erlang_c(lam, mu, c)), (wq, mmc_mean_wait(lam, mu, c))):
        half = t * est.std(ddof=1) / math.sqrt(est.size)
        assert abs(est.mean() - exact) <= half, (est.mean(), half, exact)
        # and the interval is informative (not trivially wide)
        assert half < 0.25 * exact


def test_more_servers_never_increase_any_wait_under_common_random_numbers() -> None:
    """FCFS with service times attached to customers: waits are pathwise non-increasing in c."""
    waits = [simulate(mmc(1.8, 1.0, c), seed=11, horizon_h=500).ed_waits_h for c in (2, 3, 4, 6)]
    for fewer, more in itertools.pairwise(waits):
        # FCFS: waits are in arrival order; compare the customers served in both runs
        n = min(fewer.size, more.size)
        assert n > 800
        assert np.all(more[:n] <= fewer[:n] + 1e-12)
        assert more.mean() < fewer.mean()
