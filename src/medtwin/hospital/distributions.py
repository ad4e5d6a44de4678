"""Duration distributions of the hospital twin: sampling by inverse CDF, maximum-likelihood fit, fit checks.

Durations (lengths of stay, treatment times, patience before leaving the ED) are positive and right
skewed. Three families are offered: exponential (rate), lognormal (mu and sigma of the log) and gamma
(shape k, scale theta). Sampling goes through the inverse CDF of a uniform so that a scenario run with
the same uniforms gets comonotone durations (common random numbers).

Fits are maximum likelihood with the location fixed at zero (``scipy.stats.<family>.fit(floc=0)``),
the family is chosen by the Akaike information criterion, and goodness of fit is reported as the
Kolmogorov-Smirnov statistic and p-value. Because the parameters are estimated from the same data,
that p-value is conservative (Lilliefors 1967, doi:10.1080/01621459.1967.10482916): read it as a
screen, not as an exact test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from medtwin.errors import ValidationError

__all__ = [
    "DistributionFit",
    "Duration",
    "DurationError",
    "fit_duration",
]

Family = Literal["exponential", "lognormal", "gamma"]
FloatArray = npt.NDArray[np.float64]

_FAMILIES: tuple[Family, ...] = ("exponential", "lognormal", "gamma")


class DurationError(ValidationError):
    """A duration distribution with an unknown family or impossible parameters, or unfittable data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Duration:
    """A positive duration distribution in hours.

    *family* is ``"exponential"`` (params: rate per hour), ``"lognormal"`` (params: mu, sigma of
    the natural log of hours) or ``"gamma"`` (params: shape, scale in hours).
    """

    family: Family
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        expected = {"exponential": 1, "lognormal": 2, "gamma": 2}
        if self.family not in expected:
            raise DurationError(f"duration family {self.family!r} is unknown; expected one of {_FAMILIES}")
        if len(self.params) != expected[self.family]:
            raise DurationError(
                f"{self.family} duration needs {expected[self.family]} parameter(s), "
                f"got {len(self.params)}: {self.params}"
            )
        if not all(math.isfinite(p) for p in self.params):
            raise DurationError(f"{self.family} duration parameters must be finite: {self.params}")
        positive = self.params if self.family != "lognormal" else self.params[1:]
        if any(p <= 0 for p in positive):
            raise DurationError(
                f"{self.family} duration parameters must be positive (lognormal mu may be any real): {self.params}"
            )

    @classmethod
    def exponential(cls, mean_h: float) -> Duration:
        """Exponential duration with mean *mean_h* hours."""
        if not mean_h > 0:
            raise DurationError(f"exponential mean must be positive, got {mean_h} h")
        return cls(family="exponential", params=(1.0 / mean_h,))

    @classmethod
    def lognormal(cls, mean_h: float, cv: float) -> Duration:
        """Lognormal duration with mean *mean_h* hours and coefficient of variation *cv*."""
        if not (mean_h > 0 and cv > 0):
            raise DurationError(f"lognormal needs mean > 0 and cv > 0, got {mean_h} h, cv {cv}")
        sigma2 = math.log1p(cv * cv)
        return cls(family="lognormal", params=(math.log(mean_h) - sigma2 / 2, math.sqrt(sigma2)))

    @classmethod
    def gamma(cls, mean_h: float, cv: float) -> Duration:
        """Gamma duration with mean *mean_h* hours and coefficient of variation *cv*."""
        if not (mean_h > 0 and cv > 0):
            raise DurationError(f"gamma needs mean > 0 and cv > 0, got {mean_h} h, cv {cv}")
        shape = 1.0 / (cv * cv)
        return cls(family="gamma", params=(shape, mean_h / shape))

    @property
    def mean_h(self) -> float:
        """Mean duration in hours."""
        if self.family == "exponential":
            return 1.0 / self.params[0]
        if self.family == "lognormal":
            mu, sigma = self.params
            return math.exp(mu + sigma * sigma / 2)
        shape, scale = self.params
        return shape * scale

    def ppf(self, u: FloatArray) -> FloatArray:
        """Inverse CDF: the durations (hours) whose CDF equals the uniforms *u* in [0, 1)."""
        u = np.asarray(u, dtype=np.float64)
        if self.family == "exponential":
            return np.asarray(-np.log1p(-u) / self.params[0], dtype=np.float64)
        if self.family == "lognormal":
            mu, sigma = self.params
            return np.asarray(np.exp(mu + sigma * special.ndtri(u)), dtype=np.float64)
        shape, scale = self.params
        return np.asarray(special.gammaincinv(shape, u) * scale, dtype=np.float64)

    def ppf_scalar(self, u: float) -> float:
        """Inverse CDF of one uniform *u* (the per-event form of :meth:`ppf`)."""
        if self.family == "exponential":
            return -math.log1p(-u) / self.params[0]
        if self.family == "lognormal":
            mu, sigma = self.params
            return math.exp(mu + sigma * float(special.ndtri(u)))
        shape, scale = self.params
        return float(special.gammaincinv(shape, u)) * scale

    def cdf(self, x_h: FloatArray) -> FloatArray:
        """CDF at durations *x_h* (hours)."""
        x = np.maximum(np.asarray(x_h, dtype=np.float64), 0.0)
        if self.family == "exponential":
            return np.asarray(-np.expm1(-self.params[0] * x), dtype=np.float64)
        if self.family == "lognormal":
            mu, sigma = self.params
            with np.errstate(divide="ignore"):
                z = (np.log(x) - mu) / sigma
            return np.asarray(special.ndtr(z), dtype=np.float64)
        shape, scale = self.params
        return np.asarray(special.gammainc(shape, x / scale), dtype=np.float64)

    def residual_ppf(self, u: FloatArray, elapsed_h: FloatArray) -> FloatArray:
        """Remaining durations for stays already *elapsed_h* long: inverse CDF of L - e given L > e."""
        elapsed = np.asarray(elapsed_h, dtype=np.float64)
        f_e = self.cdf(elapsed)
        total = self.ppf(f_e + np.asarray(u, dtype=np.float64) * (1.0 - f_e))
        return np.asarray(np.maximum(total - elapsed, 0.0), dtype=np.float64)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"family": self.family, "params": list(self.params), "mean_h": self.mean_h}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Duration:
        """Inverse of :meth:`to_dict`."""
        family = data.get("family")
        params = data.get("params")
        if not isinstance(family, str) or not isinstance(params, list):
            raise DurationError(f"duration needs 'family' (str) and 'params' (list), got {data!r}")
        if family not in _FAMILIES:
            raise DurationError(f"duration family {family!r} is unknown; expected {_FAMILIES}")
        fam: Family = family  # type: ignore[assignment]
        return cls(family=fam, params=tuple(float(p) for p in params))


@dataclass(frozen=True, slots=True, kw_only=True)
class DistributionFit:
    """A fitted duration with its log-likelihood, AIC and Kolmogorov-Smirnov check."""

    duration: Duration
    n: int
    log_likelihood: float
    aic: float
    ks_statistic: float
    ks_pvalue: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "duration": self.duration.to_dict(),
            "n": self.n,
            "log_likelihood": self.log_likelihood,
            "aic": self.aic,
            "ks_statistic": self.ks_statistic,
            "ks_pvalue": self.ks_pvalue,
        }


def _fit_one(family: Family, x: FloatArray) -> tuple[Duration, float]:
    if family == "exponential":
        rate = 1.0 / float(np.mean(x))
        d = Duration(family="exponential", params=(rate,))
        ll = float(np.sum(stats.expon.logpdf(x, scale=1.0 / rate)))
    elif family == "lognormal":
        logs = np.log(x)
        mu, sigma = float(np.mean(logs)), float(np.std(logs))
        if sigma <= 0:
            raise DurationError("lognormal fit needs durations that are not all equal")
        d = Duration(family="lognormal", params=(mu, sigma))
        ll = float(np.sum(stats.lognorm.logpdf(x, sigma, scale=math.exp(mu))))
    else:
        shape, _, scale = stats.gamma.fit(x, floc=0)
        d = Duration(family="gamma", params=(float(shape), float(scale)))
        ll = float(np.sum(stats.gamma.logpdf(x, shape, scale=scale)))
    return d, ll


def fit_duration(
    durations_h: npt.ArrayLike,
    *,
    families: tuple[Family, ...] = _FAMILIES,
    where: str = "durations",
) -> DistributionFit:
    """Fit *durations_h* (hours, all positive) by maximum likelihood; keep the family with least AIC.

    *where* names the data in error messages (e.g. ``"length of stay in ICU"``).
    """
    x = np.asarray(durations_h, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 10:
        raise DurationError(f"{where}: need at least 10 finite durations to fit, got {x.size}")
    if np.any(x <= 0):
        raise DurationError(f"{where}: durations must be positive, found {int(np.sum(x <= 0))} <= 0 h")
    best: DistributionFit | None = None
    for family in families:
        if family not in _FAMILIES:
            raise DurationError(f"{where}: family {family!r} unknown; expected {_FAMILIES}")
        d, ll = _fit_one(family, x)
        aic = 2 * len(d.params) - 2 * ll
        ks = stats.kstest(x, lambda v, d=d: d.cdf(v))
        cand = DistributionFit(
            duration=d,
            n=int(x.size),
            log_likelihood=ll,
            aic=aic,
            ks_statistic=float(ks.statistic),
            ks_pvalue=float(ks.pvalue),
        )
        if best is None or cand.aic < best.aic:
            best = cand
    assert best is not None
    return best
