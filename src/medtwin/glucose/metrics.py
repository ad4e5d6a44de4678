"""CGM metrics of the international consensus, on real (gappy, irregular) or simulated glucose traces.

Sources
-------
- Battelino T, Danne T, Bergenstal RM, et al. Clinical targets for continuous glucose monitoring data
  interpretation: recommendations from the international consensus on time in range. Diabetes Care
  2019;42(8):1593-1603, doi:10.2337/dci19-0028 (ranges <54, 54-69, 70-180, 181-250, >250 mg/dL; CV; GMI).
- Danne T, Nimri R, Battelino T, et al. International consensus on use of continuous glucose monitoring.
  Diabetes Care 2017;40(12):1631-40, doi:10.2337/dc17-1600 (hypoglycaemia episode: >= 15 consecutive minutes
  below the threshold, ended by >= 15 consecutive minutes at or above it).
- Bergenstal RM, Beck RW, Close KL, et al. Glucose Management Indicator (GMI). Diabetes Care
  2018;41(11):2275-80, doi:10.2337/dc18-1581: GMI (%) = 3.31 + 0.02392 x mean glucose (mg/dL).
- Kovatchev BP, Cox DJ, Gonder-Frederick LA, Clarke W. Symmetrization of the blood glucose measurement scale
  and its applications. Diabetes Care 1997;20(11):1655-8, doi:10.2337/diacare.20.11.1655:
  f(BG) = 1.509 ((ln BG)^1.084 - 5.381), risk r = 10 f^2; LBGI = mean of r where f < 0, HBGI where f > 0
  (BG clipped to [20, 600] mg/dL first).

Conventions: every statistic is time-weighted; a reading stands for the time until the next one, capped at
*max_gap_min* (default 15 min, three missed 5-minute readings), so gaps neither inflate nor count as data and
regular data give the plain per-reading statistics. Readings are sorted, exact duplicate times keep the first,
non-finite values are dropped. SD is the weighted population SD. Ranges: < 54, [54, 70), [70, 180], (180, 250],
> 250 mg/dL. Episodes do not continue across a data gap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray

__all__ = ["CgmMetrics", "cgm_metrics", "count_episodes", "risk_components", "summary_metrics_batch"]


def risk_components(glucose_mg_dl: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Kovatchev low and high risk ``(rl, rh)`` of each glucose value (mg/dL).

    Values are clipped to [20, 600] mg/dL first, the range the transform was fitted on (simglucose does the
    same), so a simulated glucose at or below zero scores the maximum low risk (~100) instead of failing.
    """
    g = np.clip(np.asarray(glucose_mg_dl, dtype=np.float64), 20.0, 600.0)
    if np.any(np.isnan(g)):
        raise ValidationError("risk index: glucose values must not be NaN")
    f = 1.509 * (np.log(g) ** 1.084 - 5.381)
    r = 10.0 * f * f
    low = np.asarray(np.where(f < 0, r, 0.0), dtype=np.float64)
    high = np.asarray(np.where(f > 0, r, 0.0), dtype=np.float64)
    return low, high


@dataclass(frozen=True, slots=True, kw_only=True)
class CgmMetrics:
    """Consensus CGM metrics of one trace (percentages are of the covered time)."""

    n_readings: int
    duration_h: float
    coverage_pct: float
    mean_mg_dl: float
    sd_mg_dl: float
    cv_pct: float
    gmi_pct: float
    tbr_level2_pct: float
    tbr_level1_pct: float
    tir_pct: float
    tar_level1_pct: float
    tar_level2_pct: float
    lbgi: float
    hbgi: float
    hypo_episodes_level1: int
    hypo_episodes_level2: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON."""
        return asdict(self)


def _clean(times_min: ArrayLike, glucose: ArrayLike) -> tuple[FloatArray, FloatArray]:
    t = np.asarray(times_min, dtype=np.float64)
    g = np.asarray(glucose, dtype=np.float64)
    if t.shape != g.shape or t.ndim != 1:
        raise ValidationError(f"CGM metrics: times {t.shape} and glucose {g.shape} must be equal-length 1-D arrays")
    ok = np.isfinite(t) & np.isfinite(g)
    t, g = t[ok], g[ok]
    order = np.argsort(t, kind="stable")
    t, g = t[order], g[order]
    keep = np.concatenate([[True], np.diff(t) > 0]) if t.size else np.zeros(0, dtype=bool)
    t, g = t[keep], g[keep]
    if t.size < 2:
        raise ValidationError(f"CGM metrics need at least 2 valid readings, got {t.size}")
    if np.any(g <= 0):
        raise ValidationError("CGM metrics: glucose values must be > 0 mg/dL")
    return t, g


def _weights(t: FloatArray, max_gap_min: float) -> FloatArray:
    dt = np.diff(t)
    last = float(np.median(dt))
    return np.asarray(np.minimum(np.concatenate([dt, [last]]), max_gap_min), dtype=np.float64)


def count_episodes(
    times_min: ArrayLike, glucose_mg_dl: ArrayLike, threshold_mg_dl: float, *, min_duration_min: float = 15.0,
    max_gap_min: float = 15.0,
) -> int:  # fmt: skip
    """Number of episodes below *threshold_mg_dl* lasting >= *min_duration_min* (consensus definition).

    A reading below the threshold covers the time until the next reading (at most *max_gap_min*); runs separated
    by less than *min_duration_min* at or above the threshold (without a data gap) are one episode.
    """
    t, g = _clean(times_min, glucose_mg_dl)
    w = _weights(t, max_gap_min)
    below = g < threshold_mg_dl
    episodes = 0
    start: float | None = None
    below_end = 0.0
    for i in range(t.size):
        if start is not None and i > 0 and t[i] - t[i - 1] > max_gap_min:
            episodes += below_end - start >= min_duration_min
            start = None
        if below[i]:
            if start is None:
                start = float(t[i])
            below_end = float(t[i] + w[i])
        elif start is not None and t[i] + w[i] - below_end >= min_duration_min:
            episodes += below_end - start >= min_duration_min
            start = None
    if start is not None:
        episodes += below_end - start >= min_duration_min
    return int(episodes)


def cgm_metrics(times_min: ArrayLike, glucose_mg_dl: ArrayLike, *, max_gap_min: float = 15.0) -> CgmMetrics:
    """Consensus metrics of one trace; *times_min* are minutes (any origin), *glucose_mg_dl* the readings."""
    t, g = _clean(times_min, glucose_mg_dl)
    w = _weights(t, max_gap_min)
    total = float(w.sum())
    span = float(t[-1] - t[0] + w[-1])
    mean = float(np.sum(w * g) / total)
    sd = float(np.sqrt(np.sum(w * (g - mean) ** 2) / total))

    def pct(mask: np.ndarray) -> float:
        return float(100.0 * np.sum(w[mask]) / total)

    rl, rh = risk_components(g)
    return CgmMetrics(
        n_readings=int(t.size),
        duration_h=span / 60.0,
        coverage_pct=100.0 * total / span,
        mean_mg_dl=mean,
        sd_mg_dl=sd,
        cv_pct=100.0 * sd / mean,
        gmi_pct=3.31 + 0.02392 * mean,
        tbr_level2_pct=pct(g < 54),
        tbr_level1_pct=pct((g >= 54) & (g < 70)),
        tir_pct=pct((g >= 70) & (g <= 180)),
        tar_level1_pct=pct((g > 180) & (g <= 250)),
        tar_level2_pct=pct(g > 250),
        lbgi=float(np.sum(w * rl) / total),
        hbgi=float(np.sum(w * rh) / total),
        hypo_episodes_level1=count_episodes(t, g, 70.0, max_gap_min=max_gap_min),
        hypo_episodes_level2=count_episodes(t, g, 54.0, max_gap_min=max_gap_min),
    )


def summary_metrics_batch(glucose_mg_dl: FloatArray) -> dict[str, FloatArray]:
    """Vectorized per-member metrics of regularly sampled traces ``(n_times, batch)`` (no episodes).

    Used for large simulated cohorts where only summaries are kept.
    """
    g = np.asarray(glucose_mg_dl, dtype=np.float64)
    mean = g.mean(axis=0)
    sd = g.std(axis=0)
    rl, rh = risk_components(g)
    return {
        "mean_mg_dl": mean,
        "sd_mg_dl": sd,
        "cv_pct": 100.0 * sd / mean,
        "gmi_pct": 3.31 + 0.02392 * mean,
        "tbr_level2_pct": 100.0 * np.mean(g < 54, axis=0),
        "tbr_level1_pct": 100.0 * np.mean((g >= 54) & (g < 70), axis=0),
        "tir_pct": 100.0 * np.mean((g >= 70) & (g <= 180), axis=0),
        "tar_level1_pct": 100.0 * np.mean((g > 180) & (g <= 250), axis=0),
        "tar_level2_pct": 100.0 * np.mean(g > 250, axis=0),
        "lbgi": rl.mean(axis=0),
        "hbgi": rh.mean(axis=0),
        "min_mg_dl": g.min(axis=0),
        "max_mg_dl": g.max(axis=0),
    }
