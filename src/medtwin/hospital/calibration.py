"""Calibration of a hospital flow model from an admission history (encounters or ADT events).

What the history identifies, and how it is estimated:

- ED arrival profile: arrivals (first stay in the ED) counted per hour of the week, divided by the
  number of times that hour occurs in the observed window (the Poisson maximum-likelihood rate).
- ED treatment time: duration of ED stays that ended in a discharge home (LWBS excluded). This
  includes any wait for a space, so it is unbiased only where the ED rarely queued.
- Admission and transfer probabilities: the fractions of completed stays in a unit (ED: seen
  patients) that went on to each other unit (multinomial maximum likelihood).
- Length of stay per unit: completed stays, fitted by maximum likelihood to exponential, lognormal
  and gamma, the family chosen by AIC, with a Kolmogorov-Smirnov check (see
  :mod:`medtwin.hospital.distributions`). Stays still open are excluded (right censoring: this
  shortens the estimated mean when the window is not much longer than the stays).
- Elective schedule: first stays of non-ED encounters counted per unit, weekday and hour, divided
  by the number of weeks that slot occurs, rounded to whole patients.

What it does not identify, and is taken from a base configuration (the bundled example unless one
is given): beds (unless given; else the largest occupancy observed), staffing, ED spaces, patience,
ambulance fraction and diversion threshold, costs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from medtwin.errors import ValidationError
from medtwin.hospital.config import (
    HOURS_PER_WEEK,
    ArrivalProfile,
    ElectiveSlot,
    HospitalConfig,
    UnitConfig,
)
from medtwin.hospital.distributions import DistributionFit, fit_duration
from medtwin.hospital.example import example_hospital
from medtwin.hospital.forecast import hour_of_week
from medtwin.hospital.history import AdmissionHistory

__all__ = ["CalibrationError", "CalibrationResult", "calibrate", "max_occupancy"]


class CalibrationError(ValidationError):
    """A history that cannot calibrate a model (no ED arrivals, too few stays in a unit, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationResult:
    """The calibrated configuration and the evidence behind it."""

    config: HospitalConfig
    window: tuple[datetime, datetime]
    n_encounters: int
    ed_arrivals: int
    lwbs_fraction: float
    treatment_fit: DistributionFit
    los_fits: Mapping[str, DistributionFit]
    admit_counts: Mapping[str, int]
    transfer_counts: Mapping[str, Mapping[str, int]]
    max_occupancy: Mapping[str, int]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (the configuration itself is in ``config.to_dict()``)."""
        return {
            "window": [self.window[0].isoformat(), self.window[1].isoformat()],
            "n_encounters": self.n_encounters,
            "ed_arrivals": self.ed_arrivals,
            "ed_arrivals_per_day": self.config.arrivals.mean_rate_per_h * 24,
            "lwbs_fraction": self.lwbs_fraction,
            "ed_treatment_fit": self.treatment_fit.to_dict(),
            "los_fits": {k: v.to_dict() for k, v in self.los_fits.items()},
            "admit_probabilities": dict(self.config.ed.admit),
            "transfer_probabilities": {u.name: dict(u.transfers) for u in self.config.units},
            "max_occupancy": dict(self.max_occupancy),
            "beds": {u.name: u.beds for u in self.config.units},
            "notes": list(self.notes),
        }


def max_occupancy(history: AdmissionHistory) -> dict[str, int]:
    """Largest number of patients present at once in each unit over the history."""
    end = history.window[1]
    events: dict[str, list[tuple[datetime, int]]] = {}
    for s in history.stays:
        ev = events.setdefault(s.unit, [])
        ev.append((s.start, 1))
        ev.append((s.end if s.end is not None else end + timedelta(seconds=1), -1))
    out = {}
    for unit, ev in events.items():
        ev.sort(key=lambda e: (e[0], e[1]))
        level = peak = 0
        for _, d in ev:
            level += d
            peak = max(peak, level)
        out[unit] = peak
    return out


def _hour_exposure(first: datetime, last: datetime) -> np.ndarray:
    """How many whole or partial hours of each hour-of-week lie in [first, last]."""
    exposure = np.zeros(HOURS_PER_WEEK)
    span_h = (last - first) / timedelta(hours=1)
    how0 = hour_of_week(first)
    # walk hour boundaries: the piece of each clock hour inside the window
    t = 0.0
    while t < span_h:
        how = (how0 + t) % HOURS_PER_WEEK
        slot = int(how)
        step = min(math.floor(how) + 1 - how, span_h - t)
        exposure[slot] += step
        t += step
    return exposure


def calibrate(
    history: AdmissionHistory,
    *,
    base: HospitalConfig | None = None,
    beds: Mapping[str, int] | None = None,
    ed_name: str | None = None,
) -> CalibrationResult:
    """Fit arrivals, ED treatment, LoS, admission/transfer probabilities and electives to *history*.

    *base* supplies what the history cannot (see the module docstring); *beds* overrides bed
    counts per unit; *ed_name* is the ED's unit name in the history (default: the base's).
    """
    base = example_hospital() if base is None else base
    ed = base.ed.name if ed_name is None else ed_name
    if not history.stays:
        raise CalibrationError("cannot calibrate from an empty admission history")
    first, last = history.window
    by_enc: dict[str, list[int]] = {}
    for i, s in enumerate(history.stays):
        by_enc.setdefault(s.encounter_id, []).append(i)
    stays = history.stays
    # ED arrivals and electives from each encounter's first stay
    arrivals = np.zeros(HOURS_PER_WEEK)
    elective_counts: Counter[tuple[str, int, int]] = Counter()
    for idx in by_enc.values():
        head = stays[idx[0]]
        how = hour_of_week(head.start)
        if head.unit == ed:
            arrivals[int(how)] += 1
        else:
            elective_counts[(head.unit, int(how // 24), int(how % 24))] += 1
    n_ed = int(arrivals.sum())
    if n_ed == 0:
        raise CalibrationError(f"history has no encounter starting in the ED unit {ed!r}")
    exposure = _hour_exposure(first, last)
    if np.any(exposure <= 0):
        raise CalibrationError(
            f"history window {first.isoformat()} .. {last.isoformat()} is shorter than a week: "
            "every hour of the week must be observed to fit an hour-of-week arrival profile"
        )
    profile = ArrivalProfile(rates_per_h=tuple(float(x) for x in arrivals / exposure))
    # transitions and durations
    unit_names = sorted({s.unit for s in stays} - {ed})
    order = [u.name for u in base.units if u.name in unit_names] + [
        u for u in unit_names if u not in {b.name for b in base.units}
    ]
    completed_ed = [s for s in stays if s.unit == ed and s.end is not None]
    lwbs = sum(1 for s in completed_ed if s.lwbs)
    seen = [s for s in completed_ed if not s.lwbs]
    if not seen:
        raise CalibrationError(f"no completed ED stay in unit {ed!r} to calibrate from")
    admit_counts = Counter(s.next_unit for s in seen if s.next_unit is not None)
    treat = [s.duration_h for s in seen if s.next_unit is None]
    treatment_fit = fit_duration([d for d in treat if d is not None], where=f"ED treatment time ({ed})")
    los_fits: dict[str, DistributionFit] = {}
    transfer_counts: dict[str, dict[str, int]] = {}
    transfers: dict[str, dict[str, float]] = {}
    for name in order:
        done = [s for s in stays if s.unit == name and s.end is not None]
        los_fits[name] = fit_duration(
            [s.duration_h for s in done if s.duration_h is not None],
            where=f"length of stay in {name}",
        )
        counts = Counter(s.next_unit for s in done if s.next_unit is not None)
        transfer_counts[name] = {k: v for k, v in counts.items() if k is not None}
        transfers[name] = {k: v / len(done) for k, v in transfer_counts[name].items() if k != ed}
    peaks = max_occupancy(history)
    notes: list[str] = []
    units = []
    base_units = {u.name: u for u in base.units}
    for name in order:
        if beds is not None and name in beds:
            n_beds = int(beds[name])
        elif name in base_units:
            n_beds = base_units[name].beds
        else:
            n_beds = peaks.get(name, 0)
            notes.append(f"beds of {name} set to the largest observed occupancy ({n_beds})")
        prior = base_units.get(name)
        units.append(
            UnitConfig(
                name=name,
                beds=n_beds,
                los=los_fits[name].duration,
                transfers=transfers[name],
                staffing=None if prior is None else prior.staffing,
            )
        )
    weeks_seen = exposure.reshape(7, 24)
    electives = tuple(
        ElectiveSlot(unit=u, weekday=d, hour=float(h), count=round(c / weeks_seen[d, h]))
        for (u, d, h), c in sorted(elective_counts.items())
        if round(c / weeks_seen[d, h]) >= 1 and u in order
    )
    ed_cfg = replace(
        base.ed,
        name=ed,
        treatment=treatment_fit.duration,
        admit={k: v / len(seen) for k, v in admit_counts.items() if k in order},
    )
    notes.append(
        "staffing, ED spaces, patience, ambulance fraction, diversion threshold and costs "
        "come from the base configuration (not identifiable from ADT events)"
    )
    config = HospitalConfig(
        name=f"{base.name} (calibrated {first.astimezone(UTC).date()}..{last.date()})",
        ed=ed_cfg,
        units=tuple(units),
        arrivals=profile,
        electives=electives,
        elective_grace_h=base.elective_grace_h,
        costs=base.costs,
        max_stays=base.max_stays,
    )
    return CalibrationResult(
        config=config,
        window=(first, last),
        n_encounters=len(by_enc),
        ed_arrivals=n_ed,
        lwbs_fraction=lwbs / len(completed_ed),
        treatment_fit=treatment_fit,
        los_fits=los_fits,
        admit_counts=dict(admit_counts),
        transfer_counts=transfer_counts,
        max_occupancy=peaks,
        notes=tuple(notes),
    )
