"""Treatment-effect estimates of a two-arm comparison, and power and sample size by formula.

Estimators (every one returns estimate, SE, confidence interval, p-value and degrees of freedom):

* ``difference``: difference in means with Welch's standard error and Welch-Satterthwaite degrees of freedom;
  for a crossover, the mean of the paired differences (paired t).
* ``ancova``: ordinary least squares of the outcome on an intercept, the treatment indicator and centred
  covariates (the baseline), common slope; model-based SE (``s^2 (X'X)^-1``, t with n - p degrees of freedom)
  or the HC3 heteroscedasticity-consistent SE (MacKinnon & White 1985) with ``robust=True``, as the FDA's 2023
  guidance on covariate adjustment (Adjusting for Covariates in Randomized Clinical Trials for Drugs and
  Biological Products, May 2023) allows for models that may be misspecified (binary outcomes, unequal variances).
* ``procova``: the same ANCOVA with the twin-predicted control outcome (the prognostic score) as covariate
  (Schuler A, Walsh D, Hall D, et al. Increasing the efficiency of randomized trial estimates via linear
  adjustment for a prognostic score. Int J Biostat 2021;18(2):329-356, doi:10.1515/ijb-2021-0072; EMA CHMP
  qualification opinion for PROCOVA, EMA/CHMP/SAWP/408941/2022, 2022).

Power by formula: the asymptotic variance of the common-slope ANCOVA estimator for allocation fractions
``pi_0, pi_1`` is ``V = sum_a (s_a^2 - 2 b*' C b_a + b*' C b*) / pi_a`` with ``b_a`` the within-arm slopes on the
covariates (covariance ``C``) and ``b* = pi_0 b_0 + pi_1 b_1``; ``Var(estimate) = V / n``. With equal SDs and
correlations and 1:1 allocation it is ``4 s^2 (1 - rho^2)``: adjusting for a covariate with correlation rho
cuts the sample size needed by the factor ``1 - rho^2`` (Schuler et al. 2021; equal to their efficient estimator's
variance under 1:1 allocation). Without covariates it is the two-sample variance. Power uses the noncentral t
with the analysis' degrees of freedom; the sample size is the smallest total n whose power reaches the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray

__all__ = [
    "ArmSummary",
    "Estimate",
    "analytic_power",
    "analytic_sample_size",
    "ancova",
    "ancova_variance",
    "arm_summary",
    "correlation",
    "difference_in_means",
    "paired_difference",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """A treatment-effect estimate (treated minus control) with its uncertainty."""

    method: str
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float
    n_treated: int
    n_control: int
    covariates: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON."""
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmSummary:
    """Distribution of an endpoint in one arm."""

    n: int
    mean: float
    sd: float
    median: float
    q1: float
    q3: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON."""
        return asdict(self)


def arm_summary(y: npt.ArrayLike) -> ArmSummary:
    """n, mean, SD (n - 1), median and quartiles of *y*."""
    v = np.asarray(y, dtype=np.float64)
    if v.size == 0:
        return ArmSummary(n=0, mean=math.nan, sd=math.nan, median=math.nan, q1=math.nan, q3=math.nan)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return ArmSummary(
        n=int(v.size),
        mean=float(v.mean()),
        sd=float(v.std(ddof=1)) if v.size > 1 else math.nan,
        median=float(med),
        q1=float(q1),
        q3=float(q3),
    )


def correlation(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Pearson correlation; NaN when either variable is constant (e.g. no time below range in any patient)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _finish(
    method: str, est: float, se: float, df: float, alpha: float, n1: int, n0: int, covariates: tuple[str, ...] = ()
) -> Estimate:
    est, se, df = float(est), float(se), float(df)
    if not se > 0 or not math.isfinite(se):
        # identical outcomes in both arms (a null trial of a deterministic model): no sampling variability
        p = 1.0 if est == 0 else 0.0
        return Estimate(
            method=method,
            estimate=est,
            se=0.0,
            ci_low=est,
            ci_high=est,
            p_value=p,
            df=df,
            n_treated=n1,
            n_control=n0,
            covariates=covariates,
        )
    # scipy.special's Student t functions: the same values as scipy.stats.t, without its per-call overhead
    q = float(special.stdtrit(df, 1.0 - alpha / 2.0))
    p = float(2.0 * special.stdtr(df, -abs(est) / se))
    return Estimate(
        method=method,
        estimate=est,
        se=se,
        ci_low=est - q * se,
        ci_high=est + q * se,
        p_value=p,
        df=df,
        n_treated=n1,
        n_control=n0,
        covariates=covariates,
    )


def _split(y: npt.ArrayLike, treated: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    v = np.asarray(y, dtype=np.float64)
    t = np.asarray(treated, dtype=bool)
    if v.shape != t.shape or v.ndim != 1:
        raise ValidationError(f"analysis: outcomes {v.shape} and treatment indicator {t.shape} must be equal 1-D")
    if t.sum() < 2 or (~t).sum() < 2:
        raise ValidationError(f"analysis: need at least 2 patients per arm, got {int(t.sum())} and {int((~t).sum())}")
    if not np.all(np.isfinite(v)):
        raise ValidationError("analysis: outcomes must be finite")
    return v, t


def difference_in_means(y: npt.ArrayLike, treated: npt.ArrayLike, *, alpha: float = 0.05) -> Estimate:
    """Treated minus control mean with Welch's SE and degrees of freedom."""
    v, t = _split(y, treated)
    a, b = v[t], v[~t]
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    den = va**2 / (a.size - 1) + vb**2 / (b.size - 1)
    df = (va + vb) ** 2 / den if den > 0 else float(a.size + b.size - 2)
    return _finish("difference", float(a.mean() - b.mean()), se, df, alpha, a.size, b.size)


def paired_difference(y_treated: npt.ArrayLike, y_control: npt.ArrayLike, *, alpha: float = 0.05) -> Estimate:
    """Mean of the within-patient differences (crossover), paired t."""
    d = np.asarray(y_treated, dtype=np.float64) - np.asarray(y_control, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValidationError("paired analysis: need at least 2 patients with both outcomes")
    return _finish(
        "difference", float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)), d.size - 1.0, alpha, d.size, d.size
    )


def ancova(
    y: npt.ArrayLike,
    treated: npt.ArrayLike,
    covariates: FloatArray,
    *,
    names: Sequence[str] = (),
    method: str = "ancova",
    alpha: float = 0.05,
    robust: bool = False,
) -> Estimate:
    """OLS of *y* on intercept, treatment and centred *covariates* ``(n, k)``; the treatment coefficient."""
    v, t = _split(y, treated)
    x = np.asarray(covariates, dtype=np.float64).reshape(v.size, -1)
    if not np.all(np.isfinite(x)):
        raise ValidationError(f"{method}: covariates must be finite")
    x = x[:, np.ptp(x, axis=0) > 0]  # a covariate constant in this sample (a stratum not drawn) carries nothing
    X = np.column_stack([np.ones(v.size), t.astype(np.float64), x - x.mean(axis=0)])
    n, p = X.shape
    if n <= p:
        raise ValidationError(f"{method}: {n} patients cannot fit {p} coefficients")
    xtx_inv = np.linalg.pinv(X.T @ X)
    beta = xtx_inv @ (X.T @ v)
    resid = v - X @ beta
    df = float(n - p)
    if robust:
        h = np.einsum("ij,jk,ik->i", X, xtx_inv, X)
        w = resid**2 / np.maximum(1.0 - h, 1e-12) ** 2
        cov = xtx_inv @ (X.T * w) @ X @ xtx_inv
    else:
        cov = xtx_inv * float(resid @ resid) / df
    return _finish(
        method,
        float(beta[1]),
        math.sqrt(max(float(cov[1, 1]), 0.0)),
        df,
        alpha,
        int(t.sum()),
        int((~t).sum()),
        tuple(names),
    )


def ancova_variance(
    y0: FloatArray, y1: FloatArray, x0: FloatArray | None, x1: FloatArray | None, *, p1: float = 0.5
) -> float:
    """Asymptotic ``n Var(estimate)`` of common-slope ANCOVA (module docstring) from control and treated samples.

    *y0*, *y1* are outcomes under control and treatment, *x0*, *x1* the covariates ``(n_a, k)`` of those patients
    (``None``: no covariates, the two-sample variance). *p1* is the fraction allocated to treatment.
    """
    p0 = 1.0 - p1
    s0, s1 = float(np.var(y0, ddof=1)), float(np.var(y1, ddof=1))
    if x0 is None or x1 is None:
        return s0 / p0 + s1 / p1
    a0 = np.asarray(x0, dtype=np.float64).reshape(len(y0), -1)
    a1 = np.asarray(x1, dtype=np.float64).reshape(len(y1), -1)
    c = np.atleast_2d(np.cov(np.vstack([a0, a1]).T))
    c_inv = np.linalg.pinv(c)
    b0 = c_inv @ _cross_cov(a0, y0)
    b1 = c_inv @ _cross_cov(a1, y1)
    b = p0 * b0 + p1 * b1
    v0 = s0 - 2.0 * b @ c @ b0 + b @ c @ b
    v1 = s1 - 2.0 * b @ c @ b1 + b @ c @ b
    return float(v0 / p0 + v1 / p1)


def _cross_cov(x: FloatArray, y: FloatArray) -> FloatArray:
    xc = x - x.mean(axis=0)
    return np.asarray(xc.T @ (np.asarray(y) - np.mean(y)) / (len(y) - 1), dtype=np.float64)


def analytic_power(delta: float, variance: float, n_total: int, *, alpha: float = 0.05, n_covariates: int = 0) -> float:
    """Two-sided power of a trial of *n_total* patients: noncentral t, ``se = sqrt(variance / n)``."""
    df = n_total - 2 - n_covariates
    if df < 1 or variance <= 0:
        return math.nan
    ncp = abs(delta) / math.sqrt(variance / n_total)
    crit = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    power = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    if not math.isfinite(power):  # scipy's noncentral t fails far in the tail (ncp of ~40 and more): power ~ 1
        power = float(stats.norm.sf(crit - ncp) + stats.norm.cdf(-crit - ncp))
    return min(power, 1.0)


def analytic_sample_size(
    delta: float,
    variance: float,
    *,
    power: float = 0.8,
    alpha: float = 0.05,
    n_covariates: int = 0,
    multiple: int = 2,
    limit: int = 10_000_000,
) -> int | None:
    """Smallest total n (a multiple of *multiple*, the allocation block) with :func:`analytic_power` >= *power*.

    ``None`` when the effect is zero or the size would exceed *limit*.
    """
    if delta == 0 or variance <= 0:
        return None
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    guess = max(multiple, int(z * z * variance / delta**2))
    n = max(multiple, (guess // multiple - 2) * multiple)
    while n <= limit:
        if analytic_power(delta, variance, n, alpha=alpha, n_covariates=n_covariates) >= power:
            return n
        n += multiple
    return None
