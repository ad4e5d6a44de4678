"""NONMEM-style dosing records and their exact PK predictions.

A :class:`Dose` is one dosing record: time (h), amount (mg), a bolus or an infusion given by its
duration or its rate, optional repeats (``interval_h`` = II, ``additional`` = ADDL) and steady state
(``steady_state=True`` = SS=1: the system is at steady state with this dose every ``interval_h``
before ``time_h``).  :func:`predict_concentrations` and :func:`predict_auc` evaluate a model for a
batch of random effects with the exact solutions of :mod:`medtwin.sim.linear`.

Lag time and bioavailability (model parameters) apply to doses into the depot (oral/first-order
absorption) only; for infusions, F scales the amount and the duration is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from medtwin.dosing.covariates import CovariateSeries
from medtwin.dosing.model import PKModel, PKSystem
from medtwin.errors import ValidationError
from medtwin.sim.linear import InputSchedule, output_integral, output_piecewise, output_values

__all__ = [
    "Covariates",
    "Dose",
    "DoseError",
    "ExpandedDoses",
    "Route",
    "covariate_segments",
    "covariates_at",
    "expand_doses",
    "is_time_varying",
    "predict_auc",
    "predict_concentrations",
    "predict_system",
    "schedule_for",
]

FloatArray = npt.NDArray[np.float64]
Route = Literal["iv", "oral"]
ExpandedDoses = tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_], FloatArray]


class DoseError(ValidationError):
    """A dosing record that cannot be given (negative amount, bad duration, ...)."""


def _finite(value: float, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DoseError(f"{where}: {name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Dose:
    """One dosing record (times in hours from the case origin, amounts in mg)."""

    time_h: float
    amount_mg: float
    duration_h: float = 0.0
    rate_mg_h: float | None = None
    interval_h: float = 0.0
    additional: int = 0
    steady_state: bool = False
    route: Route = "iv"

    def __post_init__(self) -> None:
        where = f"dose at t={self.time_h} h"
        _finite(self.time_h, "time_h", where)
        amount = _finite(self.amount_mg, "amount_mg", where)
        if amount < 0:
            raise DoseError(f"{where}: amount_mg must be >= 0, got {amount}")
        if _finite(self.duration_h, "duration_h", where) < 0:
            raise DoseError(f"{where}: duration_h must be >= 0, got {self.duration_h}")
        if self.rate_mg_h is not None:
            rate = _finite(self.rate_mg_h, "rate_mg_h", where)
            if rate <= 0:
                raise DoseError(f"{where}: rate_mg_h must be > 0, got {rate}")
            if self.duration_h not in (0.0, 0):
                raise DoseError(f"{where}: give either duration_h or rate_mg_h, not both")
        if _finite(self.interval_h, "interval_h", where) < 0:
            raise DoseError(f"{where}: interval_h must be >= 0")
        if not isinstance(self.additional, int) or self.additional < 0:
            raise DoseError(f"{where}: additional must be a non-negative integer")
        if (self.additional > 0 or self.steady_state) and self.interval_h <= 0:
            raise DoseError(f"{where}: additional doses and steady state need interval_h > 0")
        if self.route not in ("iv", "oral"):
            raise DoseError(f"{where}: route must be 'iv' or 'oral', got {self.route!r}")
        if self.steady_state and self.infusion_duration_h > self.interval_h:
            raise DoseError(f"{where}: infusion longer than the dosing interval at steady state")

    @property
    def infusion_duration_h(self) -> float:
        """Infusion duration (0 for a bolus)."""
        if self.rate_mg_h is not None:
            return self.amount_mg / self.rate_mg_h
        return float(self.duration_h)

    @property
    def times_h(self) -> tuple[float, ...]:
        """Start times of this record and its additional doses."""
        return tuple(self.time_h + k * self.interval_h for k in range(self.additional + 1))


def expand_doses(doses: Sequence[Dose]) -> ExpandedDoses:
    """Expand records into per-dose arrays: time, amount, duration, into-depot flag, SS interval."""
    t: list[float] = []
    a: list[float] = []
    d: list[float] = []
    depot: list[bool] = []
    ss: list[float] = []
    for dose in doses:
        for k, start in enumerate(dose.times_h):
            t.append(start)
            a.append(dose.amount_mg)
            d.append(dose.infusion_duration_h)
            depot.append(dose.route == "oral")
            ss.append(dose.interval_h if (dose.steady_state and k == 0) else 0.0)
    return (
        np.asarray(t, dtype=np.float64),
        np.asarray(a, dtype=np.float64),
        np.asarray(d, dtype=np.float64),
        np.asarray(depot, dtype=np.bool_),
        np.asarray(ss, dtype=np.float64),
    )


def _inputs(system: PKSystem, doses: Sequence[Dose]) -> InputSchedule:
    return schedule_for(system, expand_doses(doses))


def schedule_for(system: PKSystem, expanded: ExpandedDoses) -> InputSchedule:
    """The input schedule of expanded doses for *system* (lag and F applied to depot doses)."""
    t, a, d, into_depot, ss = expanded
    if into_depot.any() and system.depot is None:
        raise DoseError("an oral dose was given but the model has no absorption (ka)")
    comp = np.where(into_depot, system.depot if system.depot is not None else 0, system.central)
    if into_depot.any():
        times: FloatArray = t[None, :] + system.lag_h[:, None] * into_depot[None, :]
        amounts: FloatArray = a[None, :] * np.where(into_depot[None, :], system.bioavailability[:, None], 1.0)
    else:  # no depot dose: the schedule is the same for every batch member
        times, amounts = t, a
    return InputSchedule.build(
        times,
        amounts,
        duration=d,
        compartment=comp.astype(np.int64),
        ss_interval=ss,
    )


Covariates = Mapping[str, Any]
"""Covariate values by model name: floats, ``(B,)`` arrays, or :class:`CovariateSeries`."""


def is_time_varying(covariates: Covariates) -> bool:
    """True when some covariate is a :class:`CovariateSeries` with more than one value."""
    return any(isinstance(v, CovariateSeries) and len(v.values) > 1 for v in covariates.values())


def covariates_at(covariates: Covariates, time_h: float) -> dict[str, Any]:
    """Covariate values at *time_h* (series evaluated with their interpolation rule)."""
    return {k: v.at(time_h) if isinstance(v, CovariateSeries) else v for k, v in covariates.items()}


def covariate_segments(covariates: Covariates) -> tuple[FloatArray, list[dict[str, Any]]]:
    """Change times of time-varying covariates and the covariate values on each segment.

    Each segment holds the values at its start (the first segment: at the first change time's
    left, i.e. the first value of each series); linear interpolation is sampled at segment starts.
    """
    changes = sorted({t for v in covariates.values() if isinstance(v, CovariateSeries) for t in v.change_times_h()})
    first = {k: v.values[0] if isinstance(v, CovariateSeries) else v for k, v in covariates.items()}
    return np.asarray(changes, dtype=np.float64), [first] + [covariates_at(covariates, t) for t in changes]


def _piecewise(
    model: PKModel,
    covariates: Covariates,
    doses: Sequence[Dose],
    times: FloatArray,
    etas: npt.ArrayLike,
    cumulative: bool,
) -> FloatArray:
    eta = np.atleast_2d(np.asarray(etas, dtype=np.float64))
    bounds, segs = covariate_segments(covariates)
    systems = [model.system(c, eta) for c in segs]
    if model.lag is not None or model.bioavailability is not None:
        raise DoseError("time-varying covariates with a lag time or bioavailability are not supported")
    inputs = schedule_for(systems[0], expand_doses(doses))
    return output_piecewise(
        [s.matrix for s in systems],
        [s.weights for s in systems],
        bounds,
        inputs,
        times,
        cumulative=cumulative,
    )


def predict_system(model: PKModel, covariates: Covariates, etas: npt.ArrayLike) -> PKSystem:
    """The linear system of *model* for constant *covariates* and a batch of *etas* ``(B, n_eta)``."""
    if is_time_varying(covariates):
        raise DoseError("predict_system: covariates vary in time; evaluate them with covariates_at")
    return model.system(covariates_at(covariates, 0.0), np.atleast_2d(np.asarray(etas, dtype=np.float64)))


def predict_concentrations(
    model: PKModel,
    covariates: Covariates,
    doses: Sequence[Dose],
    times_h: npt.ArrayLike,
    etas: npt.ArrayLike,
    *,
    system: PKSystem | None = None,
) -> FloatArray:
    """Central concentrations (mg/L) at *times_h* for a batch of etas, shape ``(B, T)``.

    Time-varying covariates (:class:`CovariateSeries`) change the parameters at their
    observation times; the state is carried exactly across each change.
    """
    times = np.atleast_1d(np.asarray(times_h, dtype=np.float64))
    if system is None and is_time_varying(covariates):
        if not doses:
            return np.zeros((np.atleast_2d(np.asarray(etas)).shape[0], times.size))
        return _piecewise(model, covariates, doses, times, etas, cumulative=False)
    sys_ = system if system is not None else predict_system(model, covariates, etas)
    if not doses:
        return np.zeros((sys_.matrix.shape[0], times.size))
    return output_values(sys_.modal, _inputs(sys_, doses), sys_.weights, times)


def predict_auc(
    model: PKModel,
    covariates: Covariates,
    doses: Sequence[Dose],
    start_h: npt.ArrayLike,
    end_h: npt.ArrayLike,
    etas: npt.ArrayLike,
    *,
    system: PKSystem | None = None,
) -> FloatArray:
    """AUC (mg.h/L) over windows ``[start_h, end_h]`` for a batch of etas, shape ``(B, W)``."""
    start = np.atleast_1d(np.asarray(start_h, dtype=np.float64))
    end = np.atleast_1d(np.asarray(end_h, dtype=np.float64))
    if system is None and is_time_varying(covariates):
        if not doses:
            return np.zeros((np.atleast_2d(np.asarray(etas)).shape[0], start.size))
        both = _piecewise(model, covariates, doses, np.concatenate([start, end]), etas, True)
        return both[:, start.size :] - both[:, : start.size]
    sys_ = system if system is not None else predict_system(model, covariates, etas)
    if not doses:
        return np.zeros((sys_.matrix.shape[0], start.size))
    return output_integral(sys_.modal, _inputs(sys_, doses), sys_.weights, start, end)
