"""A person's bolus-calculator settings read back from their records: the carbohydrate ratio CR (g/U) and the
correction factor CF (mg/dL/U) that explain the meal boluses given.

The rule inverted is the standard calculator (and simglucose's basal-bolus controller,
:class:`~medtwin.glucose.controllers.BasalBolusController`): a meal bolus is

    bolus = carbs / CR + max(0, G - target) / CF   if G > threshold, else carbs / CR

with G the glucose the calculator saw. Each bolus that has carbohydrate recorded within *pairing_window_min* of it
is one equation, linear in 1 / CR and 1 / CF; they are solved by least squares (1 / CF only when at least
:data:`MIN_CORRECTIONS` bolus carried a correction and the equations separate the two; otherwise CF is not
identified and is ``None``). G is the CGM the calculator saw: the mean of the sensor's held reading over the
*sample_period_min* before the bolus (simglucose's controller averages the held reading over its control period;
with ``sample_period_min=0`` the last reading at or before the bolus). Also the observed total daily insulin
(basal and bolus), a covariate that needs no calculator at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medtwin.errors import ValidationError
from medtwin.glucose.therapy_data import TherapyData

__all__ = ["MIN_CORRECTIONS", "InferredBolusSettings", "infer_bolus_settings"]

MIN_CORRECTIONS = 1
"""Boluses with a correction part needed before CF is estimated (with at least one bolus without a correction to
fix CR, or two with corrections)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InferredBolusSettings:
    """CR and CF (``None`` when not identified) recovered from the records, the number of meal boluses and of those
    with a correction part, the RMS misfit of the rule (U), and the observed total daily insulin (U/day)."""

    cr_g_per_u: float
    cf_mg_dl_per_u: float | None
    meal_boluses: int
    corrections: int
    rms_misfit_u: float
    total_daily_insulin_u: float


def _seen_glucose(data: TherapyData, t_min: float, period_min: float) -> float:
    """CGM the calculator saw at *t_min*: the held reading averaged over ``(t_min - period_min, t_min]`` (minute
    grid), or the last reading at or before *t_min* when *period_min* is 0."""
    ok = data.cgm_censored == 0
    t, g = data.cgm_t_min[ok], data.cgm_mg_dl[ok]
    minutes = np.array([t_min]) if period_min <= 0 else t_min - np.arange(round(period_min))
    idx = np.searchsorted(t, minutes, side="right") - 1
    return float(np.mean(g[np.maximum(idx, 0)]))


def infer_bolus_settings(
    data: TherapyData,
    *,
    target_mg_dl: float,
    correction_threshold_mg_dl: float,
    sample_period_min: float = 0.0,
    pairing_window_min: float = 10.0,
) -> InferredBolusSettings:
    """The CR and CF that the meal boluses in *data* were computed with (see the module docstring).

    Parameters
    ----------
    data
        The person's records (boluses, carbohydrate, CGM, basal).
    target_mg_dl, correction_threshold_mg_dl
        The calculator's correction target and the glucose above which it corrects (simglucose's controller: 140
        and 150 mg/dL).
    sample_period_min
        The period over which the calculator averaged the held CGM reading before the bolus (simglucose: the
        sensor's sample time); 0: the last reading.
    pairing_window_min
        A bolus is a meal bolus when carbohydrate is recorded within this many minutes of it (before or after).

    Raises
    ------
    ValidationError
        No bolus has carbohydrate recorded near it, or the fitted ratio is not positive.
    """
    if correction_threshold_mg_dl < target_mg_dl:
        raise ValidationError(
            f"correction threshold {correction_threshold_mg_dl} mg/dL below the target {target_mg_dl} mg/dL"
        )
    carbs, excess, units = [], [], []
    for t_b, u in zip(data.bolus_t_min, data.bolus_u, strict=True):
        near = np.abs(data.carbs_t_min - t_b) <= pairing_window_min
        if not np.any(near) or u <= 0:
            continue
        g = _seen_glucose(data, float(t_b), sample_period_min)
        carbs.append(float(np.sum(data.carbs_g[near])))
        excess.append(g - target_mg_dl if g > correction_threshold_mg_dl else 0.0)
        units.append(float(u))
    if not carbs:
        raise ValidationError(f"{data.source or 'data'}: no bolus with carbohydrate recorded within "
                              f"{pairing_window_min:g} min: the carbohydrate ratio cannot be inferred")  # fmt: skip
    c, e, y = np.array(carbs), np.array(excess), np.array(units)
    corrections = int(np.count_nonzero(e > 0))
    design = np.column_stack([c, e])
    if corrections >= MIN_CORRECTIONS and np.linalg.matrix_rank(design) == 2:
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        inv_cr, inv_cf = float(coef[0]), float(coef[1])
        misfit = y - c * inv_cr - e * inv_cf
    else:
        plain = e == 0
        if not np.any(plain):
            raise ValidationError(f"{data.source or 'data'}: every meal bolus carries a correction and the "
                                  "equations do not separate CR from CF")  # fmt: skip
        inv_cr = float(np.sum(c[plain] * y[plain]) / np.sum(c[plain] ** 2))
        inv_cf = float("nan")
        misfit = y[plain] - c[plain] * inv_cr
    if inv_cr <= 0:
        raise ValidationError(f"{data.source or 'data'}: the meal boluses fit a carbohydrate ratio <= 0")
    days = max(data.duration_min, 1.0) / 1440.0
    grid = np.arange(0.0, max(data.duration_min, 1.0), 1.0)
    tdi = (float(np.sum(data.bolus_u)) + float(np.sum(data.basal_rate_at(grid))) / 60.0) / days
    return InferredBolusSettings(
        cr_g_per_u=1.0 / inv_cr, cf_mg_dl_per_u=(1.0 / inv_cf if np.isfinite(inv_cf) and inv_cf > 0 else None),
        meal_boluses=int(c.size), corrections=corrections, rms_misfit_u=float(np.sqrt(np.mean(misfit**2))),
        total_daily_insulin_u=tdi,
    )  # fmt: skip
