"""Estimators and power formulas: reference values, and their validity over thousands of simulated trials.

The simulated trials use a cheap outcome generator with a known structure (standardized control outcome with a
prognostic score of correlation rho and a baseline of correlation 0.5), so >= 1,000 trials cost well under a
second; tests/trials/test_glucose_trial.py repeats the type I error check on glucose-simulated patients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medtwin.errors import ValidationError
from medtwin.trials.analysis import (
    analytic_power,
    analytic_sample_size,
    ancova,
    ancova_variance,
    arm_summary,
    difference_in_means,
    paired_difference,
)

RHO = 0.8
TRIALS = 2000
N = 100  # patients per trial, 1:1
MC_SE = math.sqrt(0.05 * 0.95 / TRIALS)


def _trials(effect: float, seed: int) -> dict[str, np.ndarray]:
    """Estimates, SEs, CIs and p-values of TRIALS simulated trials for each method."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[float, float, float, float, float]]] = {"difference": [], "ancova": [], "procova": []}
    for _ in range(TRIALS):
        score = rng.standard_normal(N)
        baseline = 0.5 * score / RHO + math.sqrt(1 - 0.25 / RHO**2) * rng.standard_normal(N)
        y0 = RHO * score + math.sqrt(1 - RHO**2) * rng.standard_normal(N)
        treated = rng.permutation(np.repeat([False, True], N // 2))
        y = y0 + effect * treated
        for e in (
            difference_in_means(y, treated),
            ancova(y, treated, baseline[:, None]),
            ancova(y, treated, score[:, None], method="procova"),
        ):
            out[e.method].append((e.estimate, e.se, e.ci_low, e.ci_high, e.p_value))
    return {m: np.array(v) for m, v in out.items()}


@pytest.fixture(scope="module")
def null_trials() -> dict[str, np.ndarray]:
    return _trials(0.0, seed=11)


@pytest.fixture(scope="module")
def effect_trials() -> dict[str, np.ndarray]:
    return _trials(0.3, seed=12)


@pytest.mark.parametrize("method", ["difference", "ancova", "procova"])
def test_type_i_error_is_five_percent_within_monte_carlo_error(null_trials: dict[str, np.ndarray], method: str) -> None:
    rate = float(np.mean(null_trials[method][:, 4] < 0.05))
    assert abs(rate - 0.05) < 3 * MC_SE, f"{method}: type I error {rate:.4f} over {TRIALS} null trials"


@pytest.mark.parametrize("method", ["difference", "ancova", "procova"])
def test_known_effect_unbiased_and_ci_covers_95_percent(effect_trials: dict[str, np.ndarray], method: str) -> None:
    est, se, lo, hi, _ = effect_trials[method].T
    assert abs(est.mean() - 0.3) < 4 * est.std() / math.sqrt(TRIALS)
    coverage = float(np.mean((lo <= 0.3) & (hi >= 0.3)))
    assert abs(coverage - 0.95) < 3 * math.sqrt(0.95 * 0.05 / TRIALS)
    # the reported SEs describe the estimates' spread
    assert se.mean() == pytest.approx(est.std(ddof=1), rel=0.06)


def test_procova_variance_reduction_agrees_with_one_minus_rho_squared(effect_trials: dict[str, np.ndarray]) -> None:
    ratio = effect_trials["procova"][:, 0].var() / effect_trials["difference"][:, 0].var()
    # the variance of a variance ratio over 2,000 trials: about 2 * sqrt(2 / 2000) relative
    assert ratio == pytest.approx(1 - RHO**2, rel=0.1)
    # and the ANCOVA on a baseline of correlation 0.5 gets 1 - 0.25
    ratio_ancova = effect_trials["ancova"][:, 0].var() / effect_trials["difference"][:, 0].var()
    assert ratio_ancova == pytest.approx(0.75, rel=0.1)


def test_procova_is_more_powerful_than_the_unadjusted_analysis(effect_trials: dict[str, np.ndarray]) -> None:
    power = {m: float(np.mean(v[:, 4] < 0.05)) for m, v in effect_trials.items()}
    assert power["procova"] > power["ancova"] > power["difference"]
    # and the formula predicts each within Monte Carlo error (n = 100, effect 0.3 SD)
    for method, r2 in (("difference", 0.0), ("ancova", 0.25), ("procova", RHO**2)):
        expected = analytic_power(0.3, 4 * (1 - r2), N, n_covariates=0 if r2 == 0 else 1)
        assert power[method] == pytest.approx(expected, abs=3 * math.sqrt(expected * (1 - expected) / TRIALS))


def test_difference_in_means_is_welch() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 30), rng.normal(0.0, 2.0, 45)
    y = np.concatenate([a, b])
    treated = np.arange(75) < 30
    e = difference_in_means(y, treated)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert e.estimate == pytest.approx(a.mean() - b.mean())
    assert e.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert e.estimate / e.se == pytest.approx(ref.statistic, rel=1e-12)


def test_paired_difference_is_the_paired_t_test() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=20)
    y = x + 0.4 + 0.3 * rng.normal(size=20)
    e = paired_difference(y, x)
    ref = stats.ttest_rel(y, x)
    assert e.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert e.df == 19


def test_ancova_matches_least_squares_by_hand() -> None:
    rng = np.random.default_rng(5)
    n = 40
    x = rng.normal(size=n)
    t = np.arange(n) % 2 == 0
    y = 2.0 + 1.5 * t + 0.8 * x + 0.5 * rng.normal(size=n)
    e = ancova(y, t, x[:, None])
    X = np.column_stack([np.ones(n), t, x])
    beta, res, *_ = np.linalg.lstsq(X, y, rcond=None)
    cov = np.linalg.inv(X.T @ X) * res[0] / (n - 3)
    assert e.estimate == pytest.approx(beta[1], rel=1e-12)
    assert e.se == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-10)
    assert e.df == n - 3
    robust = ancova(y, t, x[:, None], robust=True)
    assert robust.estimate == pytest.approx(e.estimate)
    assert robust.se != e.se


def test_textbook_sample_size_two_sample_t() -> None:
    # half an SD with 80 % power at two-sided 5 %: 64 per group by the t distribution (e.g. Cohen 1988, table 2.4.1)
    assert analytic_sample_size(0.5, 4.0, power=0.8) == 128
    # PROCOVA with rho 0.6 needs (1 - 0.36) of that, to within the t correction and the rounding to pairs
    n = analytic_sample_size(0.5, 4.0 * (1 - 0.36), power=0.8, n_covariates=1)
    assert n is not None
    assert abs(n - 0.64 * 128) <= 4
    assert analytic_sample_size(0.0, 4.0) is None
    # an effect of 60 SEs: scipy's noncentral t gives NaN there; the power is 1
    assert analytic_power(66.6, 4.0, 10) == pytest.approx(1.0)


def test_ancova_variance_formula() -> None:
    rng = np.random.default_rng(6)
    n = 200_000
    x = rng.normal(size=n)
    y0 = 0.6 * x + 0.8 * rng.normal(size=n)
    y1 = y0 + 1.0
    # equal SDs and slopes, 1:1: 4 s^2 (1 - rho^2) with s = 1, rho = 0.6
    assert ancova_variance(y0, y1, x[:, None], x[:, None]) == pytest.approx(4 * 0.64, rel=0.02)
    assert ancova_variance(y0, y1, None, None) == pytest.approx(4.0, rel=0.02)
    # 2:1 allocation without covariates: s0^2 / (1/3) + s1^2 / (2/3)
    assert ancova_variance(y0, 2 * y1, None, None, p1=2 / 3) == pytest.approx(3 + 4 * 1.5, rel=0.02)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValidationError, match="at least 2 patients per arm"):
        difference_in_means([1.0, 2.0, 3.0], [True, False, False])
    with pytest.raises(ValidationError, match="finite"):
        difference_in_means([1.0, np.nan, 3.0, 4.0], [True, True, False, False])
    with pytest.raises(ValidationError, match="cannot fit"):
        ancova([1.0, 2.0, 3.0, 4.0], [True, True, False, False], np.eye(4)[:, :3])
    summary = arm_summary([])
    assert summary.n == 0
    assert math.isnan(summary.mean)
