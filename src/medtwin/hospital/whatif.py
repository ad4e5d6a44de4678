"""What-if scenarios compared on common random numbers, with KPIs side by side.

A :class:`Scenario` changes a base configuration: beds added or removed per unit, ED treatment
spaces, nurse staffing (scale factor), elective schedule (scale factor), arrivals (surge factor).
:func:`compare_scenarios` runs every scenario with the *same* replication seeds, so replication *r*
of each scenario sees the same patients; differences against the baseline are therefore paired, and
their confidence intervals are the paired-t intervals (Law, "Simulation Modeling and Analysis",
5th ed., section 10.2), much narrower than the unpaired ones.

KPIs per replication (over the measured window, after warm-up): mean occupancy (% of beds) per
unit, mean ED wait for a treatment space (h), mean boarding time from admission decision to bed
(h), LWBS (% of ED arrivals), diversion hours, elective cancellations, and cost per week =
(staffed bed-days x bed-day cost + rostered nurse-hours x staff-hour cost) x 168 h / measured hours, in the
model's currency. The KPI keys are snake_case (``cost_per_week``); :func:`kpi_label` gives the words a report
shows ("Cost per week (EUR)").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from medtwin.errors import ValidationError
from medtwin.hospital.config import ElectiveSlot, HospitalConfig
from medtwin.hospital.replications import ReplicationJob, Runner, SequentialRunner, make_jobs
from medtwin.hospital.simulation import Engine, ReplicationResult

__all__ = [
    "Comparison",
    "Scenario",
    "ScenarioError",
    "compare_scenarios",
    "kpi_label",
    "replication_kpis",
]

FloatArray = npt.NDArray[np.float64]


class ScenarioError(ValidationError):
    """A scenario that cannot apply to the configuration (unknown unit, negative beds, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A change to a hospital.

    *beds* maps a unit to beds added (negative: removed); *nurses* replaces a unit's nurses per
    shift (the ratio and shift times stay); *nurse_scale* then multiplies every unit's roster;
    *electives* replaces the weekly elective schedule (None keeps it) and *elective_scale*
    multiplies its counts; *arrival_scale* multiplies ED arrival rates (a surge above 1).
    """

    name: str
    beds: Mapping[str, int] = field(default_factory=dict)
    ed_spaces: int = 0
    nurses: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    nurse_scale: float = 1.0
    electives: tuple[ElectiveSlot, ...] | None = None
    elective_scale: float = 1.0
    arrival_scale: float = 1.0

    def apply(self, config: HospitalConfig) -> HospitalConfig:
        """The configuration *config* changed by this scenario."""
        known = config.unit_names[1:]
        for what, targets in (("beds", self.beds), ("nurses", self.nurses)):
            for unit in targets:
                if unit not in known:
                    raise ScenarioError(
                        f"scenario {self.name!r} changes {what} of unknown unit {unit!r}; known {known}"
                    )
        for unit in self.nurses:
            if config.unit(unit).staffing is None:
                raise ScenarioError(f"scenario {self.name!r} sets nurses of unit {unit!r}, which has no staffing")
        if min(self.nurse_scale, self.elective_scale, self.arrival_scale) < 0:
            raise ScenarioError(f"scenario {self.name!r}: scale factors must be >= 0")
        units = []
        for u in config.units:
            beds = u.beds + self.beds.get(u.name, 0)
            if beds < 0:
                raise ScenarioError(f"scenario {self.name!r} leaves unit {u.name!r} with {beds} beds")
            staffing = u.staffing
            if staffing is not None and u.name in self.nurses:
                staffing = replace(staffing, nurses_per_shift=tuple(self.nurses[u.name]))
            staffing = None if staffing is None else staffing.scaled(self.nurse_scale)
            units.append(replace(u, beds=beds, staffing=staffing))
        spaces = config.ed.spaces + self.ed_spaces
        if spaces < 1:
            raise ScenarioError(f"scenario {self.name!r} leaves the ED with {spaces} spaces")
        electives = tuple(
            ElectiveSlot(
                unit=s.unit,
                weekday=s.weekday,
                hour=s.hour,
                count=round(s.count * self.elective_scale),
            )
            for s in (config.electives if self.electives is None else self.electives)
        )
        try:
            changed = replace(
                config,
                ed=replace(config.ed, spaces=spaces),
                units=tuple(units),
                arrivals=config.arrivals.scaled(self.arrival_scale),
                electives=electives,
            )
        except ValidationError as exc:
            raise ScenarioError(f"scenario {self.name!r} gives an invalid hospital: {exc}") from exc
        return changed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "beds": dict(self.beds),
            "ed_spaces": self.ed_spaces,
            "nurses": {k: list(v) for k, v in self.nurses.items()},
            "nurse_scale": self.nurse_scale,
            "electives": None
            if self.electives is None
            else [{"unit": e.unit, "weekday": e.weekday, "hour": e.hour, "count": e.count} for e in self.electives],
            "elective_scale": self.elective_scale,
            "arrival_scale": self.arrival_scale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        """Build a scenario from a mapping (e.g. one entry of a scenario JSON file)."""
        allowed = {
            "name",
            "beds",
            "ed_spaces",
            "nurses",
            "nurse_scale",
            "electives",
            "elective_scale",
            "arrival_scale",
        }
        unknown = sorted(set(data) - allowed)
        if unknown or "name" not in data:
            raise ScenarioError(f"scenario needs 'name' and only the keys {sorted(allowed)}; got unknown {unknown}")
        try:
            return cls(
                name=str(data["name"]),
                beds={str(k): int(v) for k, v in dict(data.get("beds", {})).items()},
                ed_spaces=int(data.get("ed_spaces", 0)),
                nurses={str(k): tuple(int(n) for n in v) for k, v in dict(data.get("nurses", {})).items()},
                nurse_scale=float(data.get("nurse_scale", 1.0)),
                electives=None
                if data.get("electives") is None
                else tuple(
                    ElectiveSlot(
                        unit=str(e["unit"]), weekday=int(e["weekday"]), hour=float(e["hour"]), count=int(e["count"])
                    )
                    for e in data["electives"]
                ),
                elective_scale=float(data.get("elective_scale", 1.0)),
                arrival_scale=float(data.get("arrival_scale", 1.0)),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ScenarioError(f"scenario {data.get('name')!r}: bad value: {exc!r}") from exc


def replication_kpis(config: HospitalConfig, result: ReplicationResult) -> dict[str, float]:
    """The KPIs of one replication of *config* (see the module docstring)."""
    horizon = result.horizon_h
    kpis: dict[str, float] = {}
    for u, unit in enumerate(config.units, start=1):
        mean_occ = result.area_h[u] / horizon
        kpis[f"occupancy_pct_{unit.name}"] = 100.0 * mean_occ / unit.beds if unit.beds else 0.0
    waits = result.ed_waits_h
    kpis["ed_wait_mean_h"] = float(waits.mean()) if waits.size else 0.0
    kpis["ed_wait_p90_h"] = float(np.percentile(waits, 90)) if waits.size else 0.0
    kpis["boarding_mean_h"] = float(result.boarding_h.mean()) if result.boarding_h.size else 0.0
    kpis["lwbs_pct"] = 100.0 * result.lwbs / result.ed_arrivals if result.ed_arrivals else 0.0
    kpis["diversion_h"] = result.diversion_h
    kpis["elective_cancellations"] = float(result.electives_cancelled)
    bed_days = sum(u.beds for u in config.units) * horizon / 24.0
    cost = bed_days * config.costs.bed_day + result.staff_hours * config.costs.staff_hour
    kpis["cost_per_week"] = cost * _HOURS_PER_WEEK / horizon if horizon else 0.0
    return kpis


_HOURS_PER_WEEK = 168.0
_KPI_LABELS = {
    "ed_wait_mean_h": "ED wait for a treatment space, mean (h)",
    "ed_wait_p90_h": "ED wait for a treatment space, 90th percentile (h)",
    "boarding_mean_h": "Boarding, admission decision to bed, mean (h)",
    "lwbs_pct": "Left without being seen (% of ED arrivals)",
    "diversion_h": "Ambulance diversion (h)",
    "elective_cancellations": "Elective admissions cancelled",
}


def kpi_label(name: str, currency: str = "EUR") -> str:
    """The words for KPI *name* in a report: ``occupancy_pct_ICU`` -> ``Occupancy ICU (% of beds)``."""
    if name.startswith("occupancy_pct_"):
        return f"Occupancy {name.removeprefix('occupancy_pct_')} (% of beds)"
    if name == "cost_per_week":
        return f"Cost per week ({currency}: staffed beds + nurse hours)"
    return _KPI_LABELS.get(name, name)


def _kpi_job(job: ReplicationJob) -> tuple[dict[str, float], npt.NDArray[np.int64]]:
    result = job.run()
    return replication_kpis(job.config, result), result.occupancy


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """KPIs of several scenarios on common random numbers.

    ``values[s, r, k]`` is KPI *k* of replication *r* under scenario *s*; scenario 0 is the baseline.
    ``occupancy_bands[s, q, u, h]`` is the P10 (q=0), P50 and P90 across replications of unit
    *u*'s occupancy at hour *h* (``unit_names`` order).
    """

    scenario_names: tuple[str, ...]
    kpi_names: tuple[str, ...]
    unit_names: tuple[str, ...]
    values: FloatArray
    occupancy_bands: FloatArray
    seed: int
    horizon_h: float
    warmup_h: float
    currency: str = "EUR"

    def mean(self) -> FloatArray:
        """Mean over replications, shape (scenarios, KPIs)."""
        return np.asarray(self.values.mean(axis=1), dtype=np.float64)

    def half_width(self, level: float = 0.95) -> FloatArray:
        """Half-width of the t confidence interval of each mean, shape (scenarios, KPIs)."""
        return _t_half_width(self.values, level)

    def difference_half_width(self, level: float = 0.95) -> FloatArray:
        """Half-width of the paired-t interval of (scenario - baseline), shape (scenarios, KPIs)."""
        return _t_half_width(self.values - self.values[:1], level)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: mean and 95 % half-widths per scenario and KPI."""
        mean, hw, dhw = self.mean(), self.half_width(), self.difference_half_width()
        return {
            "seed": self.seed,
            "horizon_h": self.horizon_h,
            "warmup_h": self.warmup_h,
            "replications": int(self.values.shape[1]),
            "labels": {kpi: kpi_label(kpi, self.currency) for kpi in self.kpi_names},
            "scenarios": {
                name: {
                    kpi: {
                        "mean": float(mean[s, k]),
                        "ci95_half_width": float(hw[s, k]),
                        "diff_vs_baseline": float(mean[s, k] - mean[0, k]),
                        "diff_ci95_half_width": float(dhw[s, k]),
                    }
                    for k, kpi in enumerate(self.kpi_names)
                }
                for s, name in enumerate(self.scenario_names)
            },
        }


def _t_half_width(values: FloatArray, level: float) -> FloatArray:
    n = values.shape[1]
    if n < 2:
        return np.full((values.shape[0], values.shape[2]), np.nan)
    sd = values.std(axis=1, ddof=1)
    return np.asarray(stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n), dtype=np.float64)


def compare_scenarios(
    config: HospitalConfig,
    scenarios: Sequence[Scenario],
    *,
    n_reps: int = 20,
    seed: int = 0,
    horizon_h: float = 24 * 7 * 8,
    warmup_h: float = 24 * 7 * 4,
    start_how_h: float = 0.0,
    runner: Runner | None = None,
    engine: Engine = "calendar",
) -> Comparison:
    """Run the baseline (*config*) and each scenario on the same seeds and *engine* (``"calendar"``,
    default, or ``"simpy"``: identical results); KPIs side by side."""
    if n_reps < 2:
        raise ScenarioError(f"a comparison needs at least 2 replications, got {n_reps}")
    names = ["baseline", *(s.name for s in scenarios)]
    if len(set(names)) != len(names):
        raise ScenarioError(f"scenario names must be unique and not 'baseline': {names}")
    configs = [config, *(s.apply(config) for s in scenarios)]
    jobs = [
        job
        for cfg in configs
        for job in make_jobs(
            cfg,
            n_reps=n_reps,
            seed=seed,
            horizon_h=horizon_h,
            warmup_h=warmup_h,
            start_how_h=start_how_h,
            engine=engine,
        )
    ]
    out = (runner or SequentialRunner()).map(_kpi_job, jobs)
    kpi_names = tuple(out[0][0])
    values = np.asarray([[k[name] for name in kpi_names] for k, _ in out], dtype=np.float64)
    occ = np.stack([o for _, o in out]).astype(np.float64)
    occ = occ.reshape(len(configs), n_reps, *occ.shape[1:])
    return Comparison(
        scenario_names=tuple(names),
        kpi_names=kpi_names,
        unit_names=config.unit_names,
        values=values.reshape(len(configs), n_reps, len(kpi_names)),
        occupancy_bands=np.moveaxis(np.percentile(occ, [10, 50, 90], axis=1), 0, 1),
        seed=seed,
        horizon_h=horizon_h,
        warmup_h=warmup_h,
        currency=config.costs.currency,
    )
