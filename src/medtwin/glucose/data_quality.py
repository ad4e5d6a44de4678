"""Data problems in a person's CGM/insulin/meal record, found before the twin is fitted, and what they mean.

- **Gaps** (readings more than *gap_min* apart): nothing is inferred inside; the model runs through them on the
  recorded insulin and meals, and the fit resumes at the next reading.
- **Sensor limits** (``Low``/``High``, readings at 40 / 400 mg/dL): censored values, fitted as bounds
  (``fit_sensor_limits``, what the identification asks for by default) or left out of the fit.
- **Compression lows**: a fall of >= 30 mg/dL at >= 2 mg/dL/min to a nadir below 70 mg/dL and a rise of >= 30
  mg/dL at the same speed within an hour, with no carbohydrate recorded in between. Interstitial glucose cannot
  fall and recover that fast without treatment (the model's plasma-to-interstitial exchange limits both), so it is
  the sensor being pressed (a known artefact of night-time CGM). Those readings are left out of the fit.
- **Unexplained rises** (possibly unrecorded meals): glucose rising >= 40 mg/dL within 60 minutes with no
  carbohydrate recorded from an hour before. The twin cannot infer the size or time of a meal nobody recorded; a
  fit that used these hours would explain the rise by lower insulin sensitivity or faster absorption of the
  recorded meals. By default the readings from 15 minutes before the rise to 4 hours after are left out of the fit,
  and replays over them will read low (the meal is missing there too).

The thresholds are ours (stated here); they flag, they do not change data: every excluded reading is listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from medtwin.glucose.therapy_data import TherapyData
from medtwin.sim.model import FloatArray

__all__ = ["DataIssue", "DataQuality", "assess_quality"]

IssueKind = Literal["gap", "sensor-limit", "compression-low", "unexplained-rise", "no-meals"]

_FAST_MG_DL_PER_MIN = 2.0
_COMPRESSION_DEPTH_MG_DL = 30.0
_HYPO_MG_DL = 70.0
_RISE_MG_DL = 40.0
_RISE_WINDOW_MIN = 60.0
_RISE_EXCLUDE_BEFORE_MIN = 15.0
_RISE_EXCLUDE_AFTER_MIN = 240.0


@dataclass(frozen=True, slots=True)
class DataIssue:
    """One problem: its kind, the minutes (from the data start) it spans, and what it means for the twin."""

    kind: IssueKind
    start_min: float
    end_min: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "start_min": self.start_min, "end_min": self.end_min, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class DataQuality:
    """The issues found and which CGM readings the fit uses (``fit_mask``, one entry per reading)."""

    issues: tuple[DataIssue, ...]
    fit_mask: FloatArray

    @property
    def n_excluded(self) -> int:
        """CGM readings left out of the fit."""
        return int(self.fit_mask.size - np.count_nonzero(self.fit_mask))

    def count(self, kind: IssueKind) -> int:
        """Number of issues of *kind*."""
        return sum(1 for i in self.issues if i.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"excluded_readings": self.n_excluded, "issues": [i.to_dict() for i in self.issues]}


def _carbs_between(data: TherapyData, t0: float, t1: float) -> bool:
    return bool(np.any((data.carbs_t_min >= t0) & (data.carbs_t_min <= t1)))


def _compression_lows(data: TherapyData, t: FloatArray, g: FloatArray) -> list[tuple[float, float, float]]:
    found: list[tuple[float, float, float]] = []
    for i in range(1, t.size - 1):
        if g[i] >= _HYPO_MG_DL or g[i] > g[i - 1] or g[i] > g[i + 1]:
            continue
        before = np.flatnonzero((t < t[i]) & (t >= t[i] - 45.0))
        after = np.flatnonzero((t > t[i]) & (t <= t[i] + 60.0))
        fall = [j for j in before if g[j] - g[i] >= _COMPRESSION_DEPTH_MG_DL
                and (g[j] - g[i]) / (t[i] - t[j]) >= _FAST_MG_DL_PER_MIN]  # fmt: skip
        rise = [k for k in after if g[k] - g[i] >= _COMPRESSION_DEPTH_MG_DL
                and (g[k] - g[i]) / (t[k] - t[i]) >= _FAST_MG_DL_PER_MIN]  # fmt: skip
        if fall and rise and not _carbs_between(data, t[max(fall)], t[min(rise)]):
            t0, t1 = float(t[max(fall)]), float(t[min(rise)])
            if not found or t0 > found[-1][1]:
                found.append((t0, t1, float(g[i])))
    return found


def _unexplained_rises(
    data: TherapyData, t: FloatArray, g: FloatArray, artefacts: list[tuple[float, float, float]]
) -> list[tuple[float, float, float]]:
    """Rises without carbohydrate; the rebound of a compression low is the artefact ending, not a rise."""
    found: list[tuple[float, float, float]] = []
    j = 0
    for k in range(t.size):
        while t[k] - t[j] > _RISE_WINDOW_MIN:
            j += 1
        base = j + int(np.argmin(g[j : k + 1]))
        rise = g[k] - g[base]
        if rise < _RISE_MG_DL or (found and t[base] <= found[-1][1]):
            continue
        if any(a0 <= t[base] <= a1 for a0, a1, _ in artefacts):
            continue
        if not _carbs_between(data, t[base] - 60.0, t[k]):
            found.append((float(t[base]), float(t[base]) + _RISE_EXCLUDE_AFTER_MIN, float(rise)))
    return found


def assess_quality(
    data: TherapyData, *, gap_min: float = 15.0, exclude_unexplained_rises: bool = True, fit_sensor_limits: bool = False
) -> DataQuality:
    """Find gaps, sensor-limit readings, compression lows and unexplained rises (see the module docstring). With
    *fit_sensor_limits* the sensor-limit readings stay in the fit as bounds (the likelihood of
    :mod:`medtwin.glucose.identify`) instead of being left out."""
    t, g = data.cgm_t_min, data.cgm_mg_dl
    mask = np.ones(t.size, dtype=bool)
    issues: list[DataIssue] = []
    for i in np.flatnonzero(np.diff(t) > gap_min):
        t0, t1 = float(t[i]), float(t[i + 1])
        inside = [f"{v:g} g at {m:.0f} min" for m, v in zip(data.carbs_t_min, data.carbs_g, strict=True) if t0 < m < t1]
        detail = f"no readings for {t1 - t0:.0f} min" + (
            f"; the response to {', '.join(inside)} is not observed" if inside else ""
        )
        issues.append(DataIssue("gap", t0, t1, detail))
    censored = data.cgm_censored > 0
    if np.any(censored):
        if not fit_sensor_limits:
            mask &= ~censored
        use = ("fitted as bounds: the glucose was at or beyond the limit" if fit_sensor_limits
               else "left out of the fit")  # fmt: skip
        issues.append(DataIssue("sensor-limit", float(t[censored][0]), float(t[censored][-1]),
                                f"{int(censored.sum())} Low/High readings (censored) {use}"))  # fmt: skip
    lows = _compression_lows(data, t, g)
    for t0, t1, nadir in lows:
        mask &= ~((t >= t0) & (t <= t1))
        issues.append(DataIssue("compression-low", t0, t1, f"fast fall to {nadir:.0f} mg/dL and rebound without "
                                "carbohydrate: sensor compression, readings left out of the fit"))  # fmt: skip
    for t0, t1, rise in _unexplained_rises(data, t, g, lows):
        if exclude_unexplained_rises:
            mask &= ~((t >= t0 - _RISE_EXCLUDE_BEFORE_MIN) & (t <= t1))
        issues.append(
            DataIssue(
                "unexplained-rise",
                t0,
                t1,
                f"rise of {rise:.0f} mg/dL with no carbohydrate "
                "recorded: possibly an unrecorded meal; the twin cannot infer its size or time"
                + ("; these hours are left out of the fit" if exclude_unexplained_rises else ""),
            )
        )
    days = int(np.ceil(data.duration_min / 1440.0))
    for d in range(days):
        if not _carbs_between(data, d * 1440.0, (d + 1) * 1440.0 - 1e-9) and data.duration_min - d * 1440.0 > 720:
            issues.append(DataIssue("no-meals", d * 1440.0, min((d + 1) * 1440.0, data.duration_min),
                                    f"no carbohydrate recorded on day {d + 1}: meal absorption is informed by the "
                                    "other days only"))  # fmt: skip
    issues.sort(key=lambda i: i.start_min)
    return DataQuality(tuple(issues), mask.astype(np.float64))
