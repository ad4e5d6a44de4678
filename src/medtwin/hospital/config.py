"""Configuration of a hospital flow model: ED, inpatient units, arrivals, electives, staffing, costs.

A :class:`HospitalConfig` is plain data (frozen dataclasses) that the simulation reads, the
calibration writes and the CLI stores as JSON. Time is in hours; the hour-of-week index 0 is Monday
00:00-01:00 UTC. Probabilities that leave a remainder (ED admission, transfers) send the remainder
home (discharge).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from medtwin.errors import ValidationError
from medtwin.hospital.distributions import Duration

__all__ = [
    "HOURS_PER_WEEK",
    "ArrivalProfile",
    "Costs",
    "EDConfig",
    "ElectiveSlot",
    "HospitalConfig",
    "HospitalConfigError",
    "Staffing",
    "UnitConfig",
]

HOURS_PER_WEEK = 168


class HospitalConfigError(ValidationError):
    """A hospital configuration that is inconsistent (unknown unit, probabilities > 1, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrivalProfile:
    """Non-stationary Poisson arrivals: a rate per hour for each of the 168 hours of the week (UTC)."""

    rates_per_h: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.rates_per_h) != HOURS_PER_WEEK:
            raise HospitalConfigError(
                f"arrival profile needs {HOURS_PER_WEEK} hourly rates, got {len(self.rates_per_h)}"
            )
        bad = [i for i, r in enumerate(self.rates_per_h) if not (math.isfinite(r) and r >= 0)]
        if bad:
            raise HospitalConfigError(
                f"arrival rates must be finite and >= 0; hour-of-week {bad[0]} has {self.rates_per_h[bad[0]]}"
            )

    @classmethod
    def constant(cls, rate_per_h: float) -> ArrivalProfile:
        """The same rate in every hour (a homogeneous Poisson process)."""
        return cls(rates_per_h=(float(rate_per_h),) * HOURS_PER_WEEK)

    @property
    def mean_rate_per_h(self) -> float:
        """Average arrivals per hour over the week."""
        return float(np.mean(self.rates_per_h))

    def scaled(self, factor: float) -> ArrivalProfile:
        """The profile with every rate multiplied by *factor* (a surge or a lull)."""
        if not factor >= 0:
            raise HospitalConfigError(f"arrival scale factor must be >= 0, got {factor}")
        return ArrivalProfile(rates_per_h=tuple(r * factor for r in self.rates_per_h))

    def _cumulative(
        self, start_how_h: float, horizon_h: float
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Knots (hours from the start, cumulative intensity) with the intensity 0 at time 0."""
        edges = np.arange(math.floor(start_how_h), math.ceil(start_how_h + horizon_h) + 1.0)
        rates = np.asarray(self.rates_per_h)[edges[:-1].astype(np.int64) % HOURS_PER_WEEK]
        cum = np.concatenate(([0.0], np.cumsum(rates)))
        times = edges - start_how_h
        return times, cum - float(np.interp(0.0, times, cum))

    def expected_arrivals(self, start_how_h: float, horizon_h: float) -> float:
        """Expected number of arrivals in [0, *horizon_h*) from hour-of-week *start_how_h*."""
        times, cum = self._cumulative(start_how_h, horizon_h)
        return float(np.interp(horizon_h, times, cum))

    def arrival_times(
        self, unit_points: npt.NDArray[np.float64], start_how_h: float, horizon_h: float
    ) -> npt.NDArray[np.float64]:
        """Arrival times in [0, *horizon_h*) from the increasing points of a unit-rate process.

        Inverts the cumulative intensity (piecewise linear over whole hours of the week, starting at
        hour-of-week *start_how_h*): the same unit-rate points under a scaled profile give common
        random numbers for surge scenarios.
        """
        times, cum = self._cumulative(start_how_h, horizon_h)
        end_cum = float(np.interp(horizon_h, times, cum))
        pts = unit_points[(unit_points > 0) & (unit_points < end_cum)]
        # the knot segment holding each point: cum[j - 1] < p <= cum[j], so that segment has a
        # positive rate and flat stretches (rate 0) receive no arrival
        j = np.searchsorted(cum, pts, side="left")
        lo = cum[j - 1]
        out = times[j - 1] + (pts - lo) / (cum[j] - lo)
        return np.asarray(np.clip(out, 0.0, horizon_h), dtype=np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class Staffing:
    """Nurses on each shift of the day and the nurse-to-patient ratio of a unit.

    The day is split into ``len(nurses_per_shift)`` equal shifts, the first starting at
    *first_shift_start_h* (UTC). Staffed beds = min(beds, nurses x *patients_per_nurse*).
    """

    nurses_per_shift: tuple[int, ...]
    patients_per_nurse: float
    first_shift_start_h: float = 7.0

    def __post_init__(self) -> None:
        if not self.nurses_per_shift or 24 % len(self.nurses_per_shift):
            raise HospitalConfigError(
                f"staffing needs 1, 2, 3, 4, 6, 8, 12 or 24 shifts a day, got {len(self.nurses_per_shift)}"
            )
        if any(n < 0 for n in self.nurses_per_shift) or not self.patients_per_nurse > 0:
            raise HospitalConfigError(
                f"staffing needs nurses >= 0 and patients per nurse > 0, got "
                f"{self.nurses_per_shift} and {self.patients_per_nurse}"
            )

    @property
    def shift_h(self) -> float:
        """Length of one shift in hours."""
        return 24.0 / len(self.nurses_per_shift)

    def nurses_at(self, hour_of_day: float) -> int:
        """Nurses on duty at *hour_of_day* (UTC)."""
        idx = int(((hour_of_day - self.first_shift_start_h) % 24.0) // self.shift_h)
        return self.nurses_per_shift[idx]

    def scaled(self, factor: float) -> Staffing:
        """The staffing with every shift's nurses multiplied by *factor* (rounded)."""
        return replace(self, nurses_per_shift=tuple(round(n * factor) for n in self.nurses_per_shift))


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitConfig:
    """An inpatient unit (ward, ICU, ...): beds, length of stay, transfers onward, staffing."""

    name: str
    beds: int
    los: Duration
    transfers: Mapping[str, float] = field(default_factory=dict)
    staffing: Staffing | None = None

    def __post_init__(self) -> None:
        if self.beds < 0:
            raise HospitalConfigError(f"unit {self.name!r}: beds must be >= 0, got {self.beds}")
        _check_probabilities(self.transfers, f"unit {self.name!r} transfers")
        if self.name in self.transfers:
            raise HospitalConfigError(f"unit {self.name!r} cannot transfer to itself")


@dataclass(frozen=True, slots=True, kw_only=True)
class EDConfig:
    """The emergency department: treatment spaces, treatment time, admissions, LWBS, diversion.

    *admit* maps an inpatient unit to the probability that an ED patient is admitted there.
    *triage_mix* gives the share of each triage category, most urgent first; waiting patients are
    seen by category, then in arrival order (one category: first come first served).
    *patience* is the time a waiting patient tolerates before leaving without being seen (None:
    nobody leaves). While the patients waiting for a space plus those boarding reach
    *divert_threshold*, ambulances (a fraction *ambulance_fraction* of arrivals) are diverted.
    """

    name: str = "ED"
    spaces: int
    treatment: Duration
    admit: Mapping[str, float]
    patience: Duration | None = None
    ambulance_fraction: float = 0.0
    divert_threshold: int | None = None
    triage_mix: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.spaces < 1:
            raise HospitalConfigError(f"ED needs at least one treatment space, got {self.spaces}")
        mix = self.triage_mix
        if not mix or any(not (math.isfinite(p) and p >= 0) for p in mix) or abs(sum(mix) - 1.0) > 1e-6:
            raise HospitalConfigError(f"ED triage_mix must be shares >= 0 summing to 1, got {mix}")
        _check_probabilities(self.admit, "ED admit")
        if not 0.0 <= self.ambulance_fraction <= 1.0:
            raise HospitalConfigError(f"ED ambulance_fraction must be in [0, 1], got {self.ambulance_fraction}")
        if self.divert_threshold is not None and self.divert_threshold < 1:
            raise HospitalConfigError(f"ED divert_threshold must be >= 1 or None, got {self.divert_threshold}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ElectiveSlot:
    """*count* elective admissions to *unit* every week on *weekday* (0 = Monday) at *hour* UTC."""

    unit: str
    weekday: int
    hour: float
    count: int

    def __post_init__(self) -> None:
        if not (0 <= self.weekday <= 6 and 0.0 <= self.hour < 24.0 and self.count >= 0):
            raise HospitalConfigError(
                f"elective slot needs weekday 0-6, hour in [0, 24), count >= 0; got "
                f"weekday {self.weekday}, hour {self.hour}, count {self.count}"
            )


def _costs(data: dict[str, Any]) -> Costs:
    """:class:`Costs` from a model's ``costs`` mapping (missing keys take the defaults)."""
    defaults = Costs()
    return Costs(
        bed_day=float(data.get("bed_day", defaults.bed_day)),
        staff_hour=float(data.get("staff_hour", defaults.staff_hour)),
        currency=str(data.get("currency", defaults.currency)),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Costs:
    """Unit costs used by what-if comparisons, in *currency* (ISO 4217): per staffed bed-day, per nurse-hour."""

    bed_day: float = 500.0
    staff_hour: float = 45.0
    currency: str = "EUR"


@dataclass(frozen=True, slots=True, kw_only=True)
class HospitalConfig:
    """A whole hospital flow model: one ED, inpatient units, arrivals and an elective schedule.

    *max_stays* bounds the number of inpatient unit stays of one patient (the last one discharges);
    *elective_grace_h* is how long an elective admission waits for a bed before it is cancelled.
    """

    name: str
    ed: EDConfig
    units: tuple[UnitConfig, ...]
    arrivals: ArrivalProfile
    electives: tuple[ElectiveSlot, ...] = ()
    elective_grace_h: float = 4.0
    costs: Costs = Costs()
    max_stays: int = 4

    def __post_init__(self) -> None:
        names = [u.name for u in self.units]
        if len(set(names)) != len(names) or self.ed.name in names:
            raise HospitalConfigError(f"unit names must be unique and differ from the ED: {names}")
        known = set(names)
        for where, targets in [("ED admit", self.ed.admit)] + [
            (f"unit {u.name!r} transfers", u.transfers) for u in self.units
        ]:
            unknown = sorted(set(targets) - known)
            if unknown:
                raise HospitalConfigError(f"{where} names unknown unit(s) {unknown}; known {names}")
        for slot in self.electives:
            if slot.unit not in known:
                raise HospitalConfigError(f"elective slot names unknown unit {slot.unit!r}; known {names}")
        if self.max_stays < 1 or self.elective_grace_h < 0:
            raise HospitalConfigError(
                f"max_stays must be >= 1 and elective_grace_h >= 0, got {self.max_stays}, {self.elective_grace_h}"
            )

    @property
    def unit_names(self) -> tuple[str, ...]:
        """Names of the ED (first) and the inpatient units, in simulation order."""
        return (self.ed.name, *(u.name for u in self.units))

    def unit(self, name: str) -> UnitConfig:
        """The inpatient unit called *name*."""
        for u in self.units:
            if u.name == name:
                return u
        raise HospitalConfigError(f"no inpatient unit {name!r}; known {self.unit_names[1:]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (round-trips through :meth:`from_dict`)."""
        return {
            "name": self.name,
            "ed": {
                "name": self.ed.name,
                "spaces": self.ed.spaces,
                "treatment": self.ed.treatment.to_dict(),
                "admit": dict(self.ed.admit),
                "patience": None if self.ed.patience is None else self.ed.patience.to_dict(),
                "ambulance_fraction": self.ed.ambulance_fraction,
                "divert_threshold": self.ed.divert_threshold,
                "triage_mix": list(self.ed.triage_mix),
            },
            "units": [
                {
                    "name": u.name,
                    "beds": u.beds,
                    "los": u.los.to_dict(),
                    "transfers": dict(u.transfers),
                    "staffing": None
                    if u.staffing is None
                    else {
                        "nurses_per_shift": list(u.staffing.nurses_per_shift),
                        "patients_per_nurse": u.staffing.patients_per_nurse,
                        "first_shift_start_h": u.staffing.first_shift_start_h,
                    },
                }
                for u in self.units
            ],
            "arrivals_per_h": list(self.arrivals.rates_per_h),
            "electives": [
                {"unit": s.unit, "weekday": s.weekday, "hour": s.hour, "count": s.count} for s in self.electives
            ],
            "elective_grace_h": self.elective_grace_h,
            "costs": {
                "bed_day": self.costs.bed_day,
                "staff_hour": self.costs.staff_hour,
                "currency": self.costs.currency,
            },
            "max_stays": self.max_stays,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HospitalConfig:
        """Build a configuration from :meth:`to_dict` output (e.g. a model JSON file)."""
        try:
            ed = data["ed"]
            units = tuple(
                UnitConfig(
                    name=str(u["name"]),
                    beds=int(u["beds"]),
                    los=Duration.from_dict(u["los"]),
                    transfers={str(k): float(v) for k, v in u.get("transfers", {}).items()},
                    staffing=None
                    if u.get("staffing") is None
                    else Staffing(
                        nurses_per_shift=tuple(int(n) for n in u["staffing"]["nurses_per_shift"]),
                        patients_per_nurse=float(u["staffing"]["patients_per_nurse"]),
                        first_shift_start_h=float(u["staffing"].get("first_shift_start_h", 7.0)),
                    ),
                )
                for u in data["units"]
            )
            return cls(
                name=str(data["name"]),
                ed=EDConfig(
                    name=str(ed.get("name", "ED")),
                    spaces=int(ed["spaces"]),
                    treatment=Duration.from_dict(ed["treatment"]),
                    admit={str(k): float(v) for k, v in ed["admit"].items()},
                    patience=None if ed.get("patience") is None else Duration.from_dict(ed["patience"]),
                    ambulance_fraction=float(ed.get("ambulance_fraction", 0.0)),
                    divert_threshold=None if ed.get("divert_threshold") is None else int(ed["divert_threshold"]),
                    triage_mix=tuple(float(p) for p in ed.get("triage_mix", [1.0])),
                ),
                units=units,
                arrivals=ArrivalProfile(rates_per_h=tuple(float(r) for r in data["arrivals_per_h"])),
                electives=tuple(
                    ElectiveSlot(
                        unit=str(s["unit"]),
                        weekday=int(s["weekday"]),
                        hour=float(s["hour"]),
                        count=int(s["count"]),
                    )
                    for s in data.get("electives", [])
                ),
                elective_grace_h=float(data.get("elective_grace_h", 4.0)),
                costs=_costs(data.get("costs", {})),
                max_stays=int(data.get("max_stays", 4)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise HospitalConfigError(f"hospital model data is missing or has a malformed field: {exc!r}") from exc


def _check_probabilities(probs: Mapping[str, float], where: str) -> None:
    bad = {k: p for k, p in probs.items() if not (math.isfinite(p) and 0.0 <= p <= 1.0)}
    if bad:
        raise HospitalConfigError(f"{where}: probabilities must be in [0, 1], got {bad}")
    total = sum(probs.values())
    if total > 1.0 + 1e-9:
        raise HospitalConfigError(f"{where}: probabilities sum to {total:.6f} > 1")
