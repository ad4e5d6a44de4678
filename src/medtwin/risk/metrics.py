"""Performance of a risk prediction on observed outcomes: discrimination, calibration, accuracy, clinical use.

Two kinds of outcome. **Binary** (the outcome is known for everyone at the horizon): ``y`` 0/1. **Censored**
time to event: ``time`` (years from prediction) and ``event`` (1 event, 0 censored), assessed at ``horizon``
(years); follow-up past the horizon is cut at it. Functions whose name ends in ``_censored`` take the latter.

* C-statistic: binary -- area under the ROC curve with DeLong's CI (DeLong et al., Biometrics 1988;44:837; the
  fast midrank algorithm of Sun & Xu, IEEE Signal Process Lett 2014;21:1389). Censored -- Harrell's C (Harrell et
  al., JAMA 1982;247:2543): pairs are comparable when the shorter time is an event (or equal times with the other
  censored); tied predictions count one half; percentile bootstrap CI.
* Observed/expected and calibration in the large: binary -- O/E = sum(y)/sum(p) (CI from a Poisson count) and the
  intercept of a logistic model with offset logit(p) (0 is perfect). Censored -- Kaplan-Meier risk at the horizon
  over the mean predicted risk (CI from Greenwood's variance).
* Calibration slope: binary -- slope of logit(p) in a logistic model; censored -- Cox regression (Breslow ties)
  of the time to event on cloglog(p) = log(-log(1 - p)), which is the linear predictor up to a constant for a
  proportional-hazards model; 1 is perfect, below 1 predictions are too extreme.
* Brier score: binary -- mean (y - p)^2; censored -- inverse-probability-of-censoring weighted at the horizon
  (Graf et al., Stat Med 1999;18:2529).
* Net benefit (decision curves; Vickers & Elkin, Med Decis Making 2006;26:565; censored data by Kaplan-Meier,
  Vickers et al., BMC Med Inform Decis Mak 2008;8:53): TP/n - FP/n * pt/(1-pt) at threshold pt, beside
  treat-all.

Binary functions take ``(y_true, y_pred)`` first, so they can be handed to fairlearn's ``MetricFrame``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from scipy import stats

from medtwin.errors import ValidationError
from medtwin.risk.core import FloatArray

__all__ = [
    "Estimate",
    "brier_score",
    "brier_score_censored",
    "c_statistic",
    "c_statistic_censored",
    "calibration_in_the_large",
    "calibration_slope",
    "calibration_slope_censored",
    "kaplan_meier_risk",
    "net_benefit",
    "net_benefit_censored",
    "observed_expected",
    "observed_expected_censored",
]

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Estimate:
    """A value with its 95 % confidence interval (``nan`` bounds where none is defined)."""

    value: float
    low: float = float("nan")
    high: float = float("nan")

    def covers(self, x: float) -> bool:
        """Whether the interval contains *x*."""
        return bool(self.low <= x <= self.high)

    def as_dict(self) -> dict[str, float]:
        return {"value": float(self.value), "low": float(self.low), "high": float(self.high)}


def _arrays(y: object, p: object) -> tuple[FloatArray, FloatArray]:
    yy = np.asarray(y, dtype=np.float64)
    pp = np.asarray(p, dtype=np.float64)
    if yy.shape != pp.shape or yy.ndim != 1:
        raise ValidationError(f"outcomes and predictions must be 1-D arrays of one length, got {yy.shape} {pp.shape}")
    if np.isnan(pp).any() or np.isnan(yy).any():
        raise ValidationError("outcomes and predictions must not contain NaN (drop refused predictions first)")
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValidationError("binary outcomes must be 0 or 1")
    return yy, pp


def _check_probabilities(p: FloatArray) -> None:
    if ((p <= 0) | (p >= 1)).any():
        raise ValidationError("predicted risks must lie strictly between 0 and 1 for calibration on the logit scale")


def c_statistic(y_true: object, y_pred: object) -> Estimate:
    """Area under the ROC curve with DeLong's 95 % CI."""
    y, p = _arrays(y_true, y_pred)
    pos, neg = p[y == 1], p[y == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return Estimate(float("nan"))
    tx = stats.rankdata(pos)
    ty = stats.rankdata(neg)
    tz = stats.rankdata(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    var = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (np.var(v01, ddof=1) / n if n > 1 else 0.0)
    se = float(np.sqrt(var))
    return Estimate(float(auc), max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se))


def _censor_at(time: object, event: object, horizon: float) -> tuple[FloatArray, FloatArray]:
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    if t.shape != e.shape or t.ndim != 1:
        raise ValidationError("time and event must be 1-D arrays of one length")
    if np.isnan(t).any() or (t < 0).any():
        raise ValidationError("follow-up times must be non-negative numbers")
    if not np.isin(e, (0.0, 1.0)).all():
        raise ValidationError("event must be 1 (event) or 0 (censored)")
    if not horizon > 0:
        raise ValidationError(f"horizon must be positive, got {horizon}")
    past = t > horizon
    return np.where(past, horizon, t), np.where(past, 0.0, e)


@numba.njit(cache=True)
def _harrell_counts(
    order: np.ndarray, time: np.ndarray, event: np.ndarray, rank: np.ndarray, n_ranks: int
) -> tuple[float, float, float]:
    tree = np.zeros(n_ranks + 1)
    concordant = 0.0
    tied = 0.0
    comparable = 0.0
    inserted = 0.0
    n = len(order)
    k = 0
    while k < n:  # groups of equal time, longest first
        j = k
        while j + 1 < n and time[order[j + 1]] == time[order[k]]:
            j += 1
        for m in range(k, j + 1):  # censored at this time are comparable to events at this time
            i = order[m]
            if event[i] == 0:
                r = rank[i]
                while r <= n_ranks:
                    tree[r] += 1.0
                    r += r & -r
                inserted += 1.0
        for m in range(k, j + 1):
            i = order[m]
            if event[i] == 1:
                below = 0.0
                r = rank[i] - 1
                while r > 0:
                    below += tree[r]
                    r -= r & -r
                upto = 0.0
                r = rank[i]
                while r > 0:
                    upto += tree[r]
                    r -= r & -r
                concordant += below
                tied += upto - below
                comparable += inserted
        for m in range(k, j + 1):
            i = order[m]
            if event[i] == 1:
                r = rank[i]
                while r <= n_ranks:
                    tree[r] += 1.0
                    r += r & -r
                inserted += 1.0
        k = j + 1
    return concordant, tied, comparable


def _harrell(time: FloatArray, event: FloatArray, p: FloatArray) -> float:
    order = np.argsort(-time, kind="stable")
    uniq, rank = np.unique(p, return_inverse=True)
    c, t, total = _harrell_counts(order, time, event, rank.astype(np.int64) + 1, len(uniq))
    return float((c + 0.5 * t) / total) if total > 0 else float("nan")


def c_statistic_censored(
    time: object, event: object, y_pred: object, *, horizon: float, n_boot: int = 200, seed: int = 0
) -> Estimate:
    """Harrell's C at *horizon* with a percentile bootstrap 95 % CI (*n_boot* resamples, seeded)."""
    t, e = _censor_at(time, event, horizon)
    p = np.asarray(y_pred, dtype=np.float64)
    if p.shape != t.shape or np.isnan(p).any():
        raise ValidationError("predictions must be one number per person, without NaN")
    value = _harrell(t, e, p)
    if n_boot <= 0 or len(t) < 2:
        return Estimate(value)
    rng = np.random.default_rng(seed)
    boots = [_harrell(t[idx], e[idx], p[idx]) for idx in rng.integers(0, len(t), (n_boot, len(t)))]
    low, high = np.nanpercentile(boots, [2.5, 97.5])
    return Estimate(value, float(low), float(high))


def kaplan_meier_risk(time: object, event: object, horizon: float) -> Estimate:
    """Kaplan-Meier cumulative incidence ``1 - S(horizon)`` with Greenwood's 95 % CI."""
    t, e = _censor_at(time, event, horizon)
    if len(t) == 0:
        return Estimate(float("nan"))
    times, inverse = np.unique(t, return_inverse=True)
    deaths = np.bincount(inverse, weights=e, minlength=len(times))
    leaving = np.bincount(inverse, minlength=len(times)).astype(np.float64)
    at_risk = len(t) - np.concatenate([[0.0], np.cumsum(leaving)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(deaths > 0, 1.0 - deaths / at_risk, 1.0)
        surv = float(np.prod(factor))
        green = np.nansum(np.where(deaths > 0, deaths / (at_risk * (at_risk - deaths)), 0.0))
    se = surv * np.sqrt(green) if np.isfinite(green) else float("nan")
    risk = 1.0 - surv
    return Estimate(risk, max(0.0, risk - Z95 * se), min(1.0, risk + Z95 * se))


def observed_expected(y_true: object, y_pred: object) -> Estimate:
    """Observed over expected events, ``sum(y)/sum(p)``, with a Poisson 95 % CI on the observed count."""
    y, p = _arrays(y_true, y_pred)
    o, e = float(y.sum()), float(p.sum())
    if e <= 0:
        return Estimate(float("nan"))
    if o == 0:
        return Estimate(0.0, 0.0, float(stats.chi2.ppf(0.975, 2) / 2 / e))
    low = stats.chi2.ppf(0.025, 2 * o) / 2 / e
    high = stats.chi2.ppf(0.975, 2 * (o + 1)) / 2 / e
    return Estimate(o / e, float(low), float(high))


def observed_expected_censored(time: object, event: object, y_pred: object, *, horizon: float) -> Estimate:
    """Kaplan-Meier risk at *horizon* over the mean predicted risk, with Greenwood's CI."""
    km = kaplan_meier_risk(time, event, horizon)
    e = float(np.mean(np.asarray(y_pred, dtype=np.float64)))
    if e <= 0:
        return Estimate(float("nan"))
    return Estimate(km.value / e, km.low / e, km.high / e)


def _logit(p: FloatArray) -> FloatArray:
    out: FloatArray = np.log(p / (1.0 - p))
    return out


def _newton_logistic(y: FloatArray, x: FloatArray | None, offset: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Maximum-likelihood (intercept[, slope]) of ``logit P(y) = offset + a [+ b x]`` and their standard errors."""
    design = np.ones((len(y), 1)) if x is None else np.column_stack([np.ones(len(y)), x])
    beta = np.zeros(design.shape[1])
    info = np.eye(design.shape[1])
    for _ in range(50):
        eta = offset + design @ beta
        mu = 1.0 / (1.0 + np.exp(-eta))
        w = mu * (1 - mu)
        info = design.T @ (design * w[:, None])
        step = np.linalg.solve(info, design.T @ (y - mu))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta, np.sqrt(np.diag(np.linalg.inv(info)))


def calibration_in_the_large(y_true: object, y_pred: object) -> Estimate:
    """Intercept of ``logit P(y) = logit(p) + a`` with its 95 % CI (0: mean risk right)."""
    y, p = _arrays(y_true, y_pred)
    _check_probabilities(p)
    if y.min() == y.max():
        return Estimate(float("nan"))
    beta, se = _newton_logistic(y, None, _logit(p))
    return Estimate(float(beta[0]), float(beta[0] - Z95 * se[0]), float(beta[0] + Z95 * se[0]))


def calibration_slope(y_true: object, y_pred: object) -> Estimate:
    """Slope *b* of ``logit P(y) = a + b logit(p)`` with its 95 % CI (1: spread right)."""
    y, p = _arrays(y_true, y_pred)
    _check_probabilities(p)
    if y.min() == y.max():
        return Estimate(float("nan"))
    beta, se = _newton_logistic(y, _logit(p), np.zeros(len(y)))
    return Estimate(float(beta[1]), float(beta[1] - Z95 * se[1]), float(beta[1] + Z95 * se[1]))


def _cloglog(p: FloatArray) -> FloatArray:
    out: FloatArray = np.log(-np.log1p(-p))
    return out


def _cox_slope(t: FloatArray, e: FloatArray, x: FloatArray) -> tuple[float, float]:
    """One-covariate Cox regression (Breslow ties) by Newton's method: (coefficient, standard error)."""
    order = np.argsort(-t, kind="stable")
    ts, es, xs = t[order], e[order], x[order]
    # the risk set of a time is everyone with that time or longer: cumulative sums up to the tie group's end
    _, first = np.unique(-ts, return_index=True)
    group_end = np.append(first[1:], len(ts)) - 1
    end_of = np.repeat(group_end, np.diff(np.append(first, len(ts))))
    xs = xs - xs.mean()
    b, info = 0.0, 1.0
    for _ in range(50):
        w = np.exp(b * xs)
        s0 = np.cumsum(w)[end_of]
        s1 = np.cumsum(w * xs)[end_of]
        s2 = np.cumsum(w * xs * xs)[end_of]
        ev = es == 1
        mean = s1[ev] / s0[ev]
        score = float(np.sum(xs[ev] - mean))
        info = float(np.sum(s2[ev] / s0[ev] - mean**2))
        if info <= 0:
            return float("nan"), float("nan")
        step = score / info
        b += step
        if abs(step) < 1e-10:
            break
    return b, 1.0 / np.sqrt(info)


def calibration_slope_censored(time: object, event: object, y_pred: object, *, horizon: float) -> Estimate:
    """Cox-regression slope of cloglog(p) at *horizon* with its 95 % CI (1: spread right)."""
    t, e = _censor_at(time, event, horizon)
    p = np.asarray(y_pred, dtype=np.float64)
    _check_probabilities(p)
    if e.sum() == 0:
        return Estimate(float("nan"))
    b, se = _cox_slope(t, e, _cloglog(p))
    return Estimate(b, b - Z95 * se, b + Z95 * se)


def brier_score(y_true: object, y_pred: object) -> float:
    """Mean squared difference between outcome and predicted risk."""
    y, p = _arrays(y_true, y_pred)
    return float(np.mean((y - p) ** 2))


def _censoring_survival(t: FloatArray, e: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Kaplan-Meier of the censoring distribution: (times, G just after each time)."""
    times, inverse = np.unique(t, return_inverse=True)
    cens = np.bincount(inverse, weights=1 - e, minlength=len(times))
    leaving = np.bincount(inverse, minlength=len(times)).astype(np.float64)
    at_risk = len(t) - np.concatenate([[0.0], np.cumsum(leaving)[:-1]])
    return times, np.cumprod(1.0 - cens / at_risk)


def brier_score_censored(time: object, event: object, y_pred: object, *, horizon: float) -> float:
    """IPCW Brier score at *horizon* (Graf 1999): events weighted by 1/G(t-), survivors by 1/G(horizon)."""
    t, e = _censor_at(time, event, horizon)
    p = np.asarray(y_pred, dtype=np.float64)
    times, g = _censoring_survival(t, e)
    before = np.searchsorted(times, t, side="left") - 1  # G just before each own time
    g_minus = np.where(before >= 0, g[np.clip(before, 0, None)], 1.0)
    # survivors are weighted by G just before the horizon: follow-up cut at the horizon is not censoring
    k = np.searchsorted(times, horizon, side="left") - 1
    g_horizon = g[k] if k >= 0 else 1.0
    event_by = (e == 1) & (t <= horizon)
    survived = t >= horizon
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(event_by, (1 - p) ** 2 / g_minus, np.where(survived, p**2 / g_horizon, 0.0))
    return float(np.mean(terms))


def net_benefit(y_true: object, y_pred: object, thresholds: object) -> dict[str, FloatArray]:
    """Net benefit of the model and of treating everyone at each threshold probability."""
    y, p = _arrays(y_true, y_pred)
    pt = np.asarray(thresholds, dtype=np.float64)
    n = len(y)
    odds = pt / (1 - pt)
    treated = p[None, :] >= pt[:, None]
    tp = (treated & (y[None, :] == 1)).sum(axis=1) / n
    fp = (treated & (y[None, :] == 0)).sum(axis=1) / n
    prevalence = y.mean()
    return {"threshold": pt, "model": tp - fp * odds, "treat_all": prevalence - (1 - prevalence) * odds}


def net_benefit_censored(
    time: object, event: object, y_pred: object, thresholds: object, *, horizon: float
) -> dict[str, FloatArray]:
    """Net benefit at *horizon* with Kaplan-Meier risks among those the model would treat (Vickers 2008)."""
    t, e = _censor_at(time, event, horizon)
    p = np.asarray(y_pred, dtype=np.float64)
    pt = np.asarray(thresholds, dtype=np.float64)
    odds = pt / (1 - pt)
    model = np.zeros(len(pt))
    for k, cut in enumerate(pt):
        treated = p >= cut
        share = treated.mean()
        if share == 0:
            continue
        risk = kaplan_meier_risk(t[treated], e[treated], horizon).value
        model[k] = risk * share - (1 - risk) * share * odds[k]
    overall = kaplan_meier_risk(t, e, horizon).value
    return {"threshold": pt, "model": model, "treat_all": overall - (1 - overall) * odds}
