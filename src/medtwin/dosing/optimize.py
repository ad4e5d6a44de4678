"""Regimen optimization: doses, intervals and times that meet an exposure target.

Concentrations of a linear PK model are linear in the dose amounts, so the dose that meets an
AUC or concentration target is solved exactly: ``metric(d) = m0 + d * m1`` where ``m0`` comes from
the doses already given and ``m1`` from the proposed regimen with 1 mg doses.  Intervals are found
by root bracketing (``brentq``), threshold times on a grid.  Exposure metrics:

* ``auc``: AUC over ``[start_h, end_h]`` (mg.h/L);
* ``concentration``: C at ``time_h`` (mg/L);
* ``auc24_ss``, ``trough_ss``, ``peak_ss``: at steady state of a maintenance regimen
  (``AUC24 = AUC_tau * 24 / tau``; trough at the end of the interval; peak at the end of the
  infusion, or the maximum on a 0.05 h grid for oral doses);
* ``time_to_threshold_ss``: at steady state, the time (h, from the start of a dose) at which the
  concentration has fallen to ``threshold_mg_l`` after the end of the infusion (e.g. the
  aminoglycoside "drug-free" time, or when a vancomycin level reaches 10 mg/L).  Found on a
  0.05 h grid with linear interpolation between grid points; ``inf`` when the concentration does
  not fall to the threshold within the interval (the trough is above it), and the infusion
  end time when it is already below the threshold there.  Because concentrations are linear in
  the dose, the dose that puts the crossing at time ``T`` is exact: ``threshold / C_1mg(T)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq

from medtwin.dosing.model import PKModel, PKSystem
from medtwin.dosing.regimen import (
    Covariates,
    Dose,
    covariates_at,
    predict_auc,
    predict_concentrations,
    predict_system,
)
from medtwin.errors import ValidationError

__all__ = [
    "STEADY_STATE_METRICS",
    "Metric",
    "Target",
    "dose_for_target",
    "interval_for_concentration",
    "maintenance_doses",
    "round_dose",
    "steady_state_metrics",
    "time_to_threshold",
]

FloatArray = npt.NDArray[np.float64]
Metric = Literal["auc", "concentration", "auc24_ss", "trough_ss", "peak_ss", "time_to_threshold_ss"]
STEADY_STATE_METRICS = ("auc24_ss", "trough_ss", "peak_ss", "time_to_threshold_ss")
_THRESHOLD_GRID_STEP_H = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """An exposure target: *metric*, *value* and where it is measured (window or time)."""

    metric: Metric
    value: float
    start_h: float | None = None
    end_h: float | None = None
    time_h: float | None = None
    threshold_mg_l: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.value) or self.value <= 0:
            raise ValidationError(f"target {self.metric}: value must be > 0, got {self.value}")
        if self.metric == "auc" and (self.start_h is None or self.end_h is None):
            raise ValidationError("target auc: start_h and end_h are required")
        if self.metric == "auc" and self.end_h <= self.start_h:  # type: ignore[operator]
            raise ValidationError("target auc: end_h must be after start_h")
        if self.metric == "concentration" and self.time_h is None:
            raise ValidationError("target concentration: time_h is required")
        if self.metric == "time_to_threshold_ss" and (
            self.threshold_mg_l is None or not math.isfinite(self.threshold_mg_l) or self.threshold_mg_l <= 0
        ):
            raise ValidationError("target time_to_threshold_ss: threshold_mg_l > 0 is required")


def maintenance_doses(
    *, start_h: float, amount_mg: float, interval_h: float, n_doses: int, duration_h: float
) -> list[Dose]:
    """``n_doses`` identical infusions (bolus if *duration_h* is 0) every *interval_h* hours."""
    if n_doses < 1:
        raise ValidationError("maintenance_doses: n_doses must be >= 1")
    return [
        Dose(
            time_h=start_h,
            amount_mg=amount_mg,
            duration_h=duration_h,
            interval_h=interval_h,
            additional=n_doses - 1,
        )
    ]


def _scaled(doses: Sequence[Dose], amount: float) -> list[Dose]:
    return [replace(d, amount_mg=amount) for d in doses]


def steady_state_metrics(
    model: PKModel,
    covariates: Covariates,
    *,
    amount_mg: float,
    interval_h: float,
    duration_h: float,
    etas: npt.ArrayLike,
    route: Literal["iv", "oral"] = "iv",
    metrics: tuple[str, ...] = ("auc24_ss", "trough_ss", "peak_ss"),
    system: PKSystem | None = None,
    threshold_mg_l: float | None = None,
) -> dict[str, FloatArray]:
    """Steady-state AUC24, trough and peak of a maintenance regimen, each of shape ``(B,)``.

    With time-varying covariates, steady state is computed with their last values.  *metrics*
    selects what is computed (``time_to_threshold_ss`` needs *threshold_mg_l*); *system* reuses
    a system already built for these etas.
    """
    covariates = covariates_at(covariates, math.inf)
    dose = [
        Dose(
            time_h=0.0,
            amount_mg=amount_mg,
            duration_h=duration_h,
            interval_h=interval_h,
            steady_state=True,
            route=route,
        )
    ]
    if system is None:
        system = predict_system(model, covariates, etas)
    out: dict[str, FloatArray] = {}
    if "auc24_ss" in metrics:
        auc_tau = predict_auc(model, covariates, dose, [0.0], [interval_h], etas, system=system)
        out["auc24_ss"] = auc_tau[:, 0] * 24.0 / interval_h
    if "time_to_threshold_ss" in metrics:
        if threshold_mg_l is None or threshold_mg_l <= 0:
            raise ValidationError("time_to_threshold_ss: threshold_mg_l > 0 is required")
        if route != "iv":
            raise ValidationError("time_to_threshold_ss: defined for IV doses only (oral levels rise first)")
        out["time_to_threshold_ss"] = _crossing_time(
            model, covariates, dose, etas, system, threshold_mg_l, duration_h, interval_h
        )
    if "trough_ss" not in metrics and "peak_ss" not in metrics:
        return out
    if route == "oral":
        grid = np.arange(0.0, interval_h + 1e-9, 0.05)
        conc = predict_concentrations(model, covariates, dose, grid, etas, system=system)
        peak, trough = conc.max(axis=1), conc[:, -1]
    else:
        conc = predict_concentrations(model, covariates, dose, [duration_h, interval_h], etas, system=system)
        peak, trough = conc[:, 0], conc[:, 1]
    out["trough_ss"], out["peak_ss"] = trough, peak
    return out


def _crossing_time(
    model: PKModel,
    covariates: Covariates,
    dose: Sequence[Dose],
    etas: npt.ArrayLike,
    system: PKSystem,
    threshold_mg_l: float,
    start_h: float,
    end_h: float,
) -> FloatArray:
    """First time in ``[start_h, end_h]`` with C <= threshold (linear interpolation), inf if none."""
    n = max(2, math.ceil((end_h - start_h) / _THRESHOLD_GRID_STEP_H) + 1)
    grid = np.linspace(start_h, end_h, n)
    conc = predict_concentrations(model, covariates, dose, grid, etas, system=system)
    below = conc <= threshold_mg_l
    first = np.argmax(below, axis=1)
    reached = below[np.arange(len(conc)), first]
    out = np.full(len(conc), math.inf)
    at_start = reached & (first == 0)
    out[at_start] = grid[0]
    inner = reached & (first > 0)
    i = first[inner]
    rows = np.flatnonzero(inner)
    c0, c1 = conc[rows, i - 1], conc[rows, i]
    frac = (c0 - threshold_mg_l) / np.where(c0 > c1, c0 - c1, 1.0)
    out[inner] = grid[i - 1] + frac * (grid[i] - grid[i - 1])
    return out


def _metric(
    model: PKModel,
    covariates: Covariates,
    doses: Sequence[Dose],
    target: Target,
    etas: FloatArray,
) -> FloatArray:
    if target.metric == "auc" and target.start_h is not None and target.end_h is not None:
        return predict_auc(model, covariates, doses, [target.start_h], [target.end_h], etas)[:, 0]
    if target.metric == "concentration" and target.time_h is not None:
        return predict_concentrations(model, covariates, doses, [target.time_h], etas)[:, 0]
    raise ValidationError(f"metric {target.metric!r} is a steady-state metric: use steady_state_metrics")


def dose_for_target(
    model: PKModel,
    covariates: Covariates,
    given: Sequence[Dose],
    proposed: Sequence[Dose],
    target: Target,
    etas: npt.ArrayLike,
) -> FloatArray:
    """Amount (mg) of every proposed dose so that *target* is met exactly, shape ``(B,)``.

    *given* are the doses already administered (kept); *proposed* are dose records whose amount
    is solved for (their ``amount_mg`` is ignored).  Steady-state metrics use the first proposed
    record's interval and duration.  Raises when the target is already exceeded by *given* alone.
    """
    eta = np.atleast_2d(np.asarray(etas, dtype=np.float64))
    if not proposed:
        raise ValidationError("dose_for_target: no proposed dose to solve for")
    if target.metric == "time_to_threshold_ss":
        p = proposed[0]
        t_h, thr = target.value, float(target.threshold_mg_l or 0.0)
        if p.route != "iv":
            raise ValidationError("target time_to_threshold_ss: defined for IV doses only (oral levels rise first)")
        end_inf = p.infusion_duration_h
        if not end_inf < t_h <= p.interval_h:
            raise ValidationError(
                f"target time_to_threshold_ss = {t_h:g} h must lie after the end of the infusion "
                f"({end_inf:g} h) and within the dosing interval ({p.interval_h:g} h)"
            )
        ss_dose = [
            Dose(
                time_h=0.0,
                amount_mg=1.0,
                duration_h=p.infusion_duration_h,
                interval_h=p.interval_h,
                steady_state=True,
                route=p.route,
            )
        ]
        c_unit = predict_concentrations(model, covariates_at(covariates, math.inf), ss_dose, [t_h], eta)[:, 0]
        return np.asarray(thr / c_unit, dtype=np.float64)
    if target.metric in ("auc24_ss", "trough_ss", "peak_ss"):
        p = proposed[0]
        unit = steady_state_metrics(
            model,
            covariates,
            amount_mg=1.0,
            interval_h=p.interval_h,
            duration_h=p.infusion_duration_h,
            etas=eta,
            route=p.route,
            metrics=(target.metric,),
        )[target.metric]
        return target.value / unit
    base = _metric(model, covariates, list(given), target, eta) if given else np.zeros(len(eta))
    with_unit = _metric(model, covariates, [*given, *_scaled(proposed, 1.0)], target, eta)
    slope = with_unit - base
    if np.any(slope <= 0):
        raise ValidationError(
            f"target {target.metric}: the proposed doses do not contribute to it "
            "(is the window before the proposed doses?)"
        )
    amount = (target.value - base) / slope
    if np.any(amount < 0):
        raise ValidationError(
            f"target {target.metric} = {target.value} is already exceeded by the doses given "
            f"(predicted {float(np.max(base)):.4g} without further doses): hold the next dose"
        )
    return np.asarray(amount, dtype=np.float64)


def interval_for_concentration(
    model: PKModel,
    covariates: Covariates,
    *,
    amount_mg: float,
    duration_h: float,
    n_doses_before: int,
    target_mg_l: float,
    before_h: float,
    eta: npt.ArrayLike,
    bracket_h: tuple[float, float] = (1.0, 240.0),
) -> float:
    """Dosing interval so that C is *target_mg_l* *before_h* hours before dose ``n + 1``."""
    e = np.atleast_2d(np.asarray(eta, dtype=np.float64))

    def gap(tau: float) -> float:
        doses = maintenance_doses(
            start_h=0.0,
            amount_mg=amount_mg,
            interval_h=tau,
            n_doses=n_doses_before,
            duration_h=duration_h,
        )
        t = n_doses_before * tau - before_h
        return float(predict_concentrations(model, covariates, doses, [t], e)[0, 0]) - target_mg_l

    lo, hi = bracket_h
    if gap(lo) * gap(hi) > 0:
        raise ValidationError(f"no interval in {bracket_h} h gives {target_mg_l} mg/L before dose {n_doses_before + 1}")
    return float(brentq(gap, lo, hi, xtol=1e-8))


def time_to_threshold(
    model: PKModel,
    covariates: Covariates,
    doses: Sequence[Dose],
    *,
    threshold_mg_l: float,
    eta: npt.ArrayLike,
    start_h: float,
    end_h: float,
    step_h: float = 0.1,
) -> float | None:
    """First time on a grid from *start_h* (step *step_h*) with C <= *threshold_mg_l*, or None."""
    n = round((end_h - start_h) / step_h) + 1
    grid = start_h + step_h * np.arange(n)
    conc = predict_concentrations(model, covariates, doses, grid, eta)[0]
    hit = np.flatnonzero(conc <= threshold_mg_l + 1e-12)
    return None if hit.size == 0 else float(np.round(grid[hit[0]], 10))


def round_dose(amount_mg: float, *, increment_mg: float, min_mg: float = 0.0, max_mg: float = math.inf) -> float:
    """Round to the nearest available strength (multiple of *increment_mg*), within limits."""
    if increment_mg <= 0:
        raise ValidationError("round_dose: increment_mg must be > 0")
    rounded = round(amount_mg / increment_mg) * increment_mg
    return float(min(max(rounded, min_mg), max_mg))
