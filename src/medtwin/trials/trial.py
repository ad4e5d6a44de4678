"""Running a virtual trial: screen, run in, enrol, allocate, treat, twin, and compare the arms.

:func:`simulate_trial` follows the protocol of a spec and keeps, per enrolled patient, the arm and the endpoint
values (a matrix ``(arms, patients)``, NaN where an arm was not given), the baseline variables and the twins'
prognostic scores. With ``potential=True`` every patient gets every arm (a crossover, and the pool that power
simulations draw trials from). :func:`analyse` compares each arm with the control on every endpoint by the
spec's methods (:mod:`medtwin.trials.analysis`).

Seeds: the screened population of a trial comes from ``SeedSequence(seed, spawn_key=(population stream,))``,
the allocation from ``spawn_key=(ALLOCATION,)``, and everything random about patient *i* from its own streams
(see :mod:`medtwin.trials.glucose_arms` and :mod:`medtwin.trials.dosing_trial`), so a spec and its seed
determine every number, whatever runner does the work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray
from medtwin.sim.runners import Runner
from medtwin.trials.analysis import (
    ArmSummary,
    Estimate,
    ancova,
    ancova_variance,
    arm_summary,
    correlation,
    difference_in_means,
    paired_difference,
)
from medtwin.trials.cohort import FlowStep, IntArray, Screened, allocate, apply_criteria, strata_labels
from medtwin.trials.protocol import TrialSpec

__all__ = [
    "ALLOCATION",
    "Comparison",
    "Simulator",
    "TrialData",
    "analyse",
    "compare",
    "method_covariates",
    "simulate_trial",
    "simulator_for",
]

POPULATION = 100
ALLOCATION = 200
_CRITERIA_NEED_BASELINE = "baseline:"


class Simulator(Protocol):
    """The domain side of a trial (glucose or dosing)."""

    def screen(self, size: int, *, stream: int, offset: int) -> tuple[Screened, list[FlowStep]]:
        """*size* screened patients and the flow steps of sampling."""
        ...

    def baseline(self, patients: Screened) -> dict[str, FloatArray]:
        """Baseline (run-in) variables ``{"baseline:<endpoint>": (n,)}``."""
        ...

    def outcomes(self, patients: Screened, arm_index: int) -> dict[str, FloatArray]:
        """Endpoint values ``{endpoint: (n,)}`` under an arm."""
        ...

    def prognostic(self, patients: Screened) -> dict[str, FloatArray]:
        """Twin-predicted control outcomes ``{endpoint: (n,)}``."""
        ...


def simulator_for(spec: TrialSpec, runner: Runner | None = None) -> Simulator:
    """The glucose or dosing simulator of *spec*."""
    if spec.kind == "glucose":
        from medtwin.trials.glucose_trial import GlucoseSimulator

        return GlucoseSimulator(spec, runner)
    from medtwin.trials.dosing_trial import DosingSimulator

    return DosingSimulator(spec, runner)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialData:
    """Enrolled patients, their arms and outcomes ``{endpoint: (arms, n)}`` (NaN where not given)."""

    spec: TrialSpec
    cohort: Screened
    arm: IntArray | None  # None: every patient took every arm
    outcomes: dict[str, FloatArray]
    prognostic: dict[str, FloatArray]
    flow: list[FlowStep] = field(default_factory=list)

    def observed(self, endpoint: str) -> FloatArray:
        """Each patient's outcome in the arm allocated (parallel design only)."""
        if self.arm is None:
            raise ValidationError("observed outcomes: every patient took every arm (crossover or pool)")
        return self.outcomes[endpoint][self.arm, np.arange(self.cohort.size)]


def simulate_trial(
    spec: TrialSpec,
    runner: Runner | None = None,
    *,
    size: int | None = None,
    enrol: int | None = None,
    stream: int = POPULATION,
    offset: int = 0,
    potential: bool = False,
    simulator: Simulator | None = None,
) -> TrialData:
    """Run the protocol of *spec* (see the module docstring).

    *size* overrides the number screened; *enrol* keeps only the first that many eligible patients (screening
    order) and fails when fewer are eligible.
    """
    sim = simulator or simulator_for(spec, runner)
    n = size if size is not None else spec.population.size
    screened, steps = sim.screen(n, stream=stream, offset=offset)
    flow = [FlowStep(stage="screened", remaining=n), *steps]
    criteria = spec.population.criteria
    cohort = apply_criteria(screened, criteria, flow, baseline=False)
    needs_baseline = any(c.variable.startswith(_CRITERIA_NEED_BASELINE) for c in criteria) or bool(
        spec.analysis.baseline == "run_in" or spec.analysis.prognostic == "matched"
    )
    if needs_baseline:
        cohort = cohort.with_variables(sim.baseline(cohort))
        cohort = apply_criteria(cohort, criteria, flow, baseline=True)
    if enrol is not None:
        if cohort.size < enrol:
            raise ValidationError(f"{spec.source}: {cohort.size} eligible of {n} screened, fewer than {enrol}")
        flow.append(
            FlowStep(
                stage="enrolment closed",
                remaining=enrol,
                removed=cohort.size - enrol,
                reason="eligible after the target enrolment",
            )
        )
        cohort = cohort.take(np.arange(enrol))
    flow.append(FlowStep(stage="enrolled", remaining=cohort.size))
    if cohort.size < 2:
        raise ValidationError(f"{spec.source}: only {cohort.size} patients remain after the criteria")
    arms = len(spec.arms)
    outcomes: dict[str, FloatArray] = {}
    arm: IntArray | None = None
    if spec.design == "crossover" or potential:
        given = [np.arange(cohort.size)] * arms
    else:
        rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(ALLOCATION, stream)))
        arm = allocate(strata_labels(cohort, spec.allocation.strata), spec.allocation, rng)
        given = [np.flatnonzero(arm == a) for a in range(arms)]
        for a, rows in enumerate(given):
            flow.append(FlowStep(stage=f"allocated to {spec.arms[a].name}", remaining=int(rows.size)))
    for a, rows in enumerate(given):
        values = sim.outcomes(cohort.take(rows), a)
        for endpoint, v in values.items():
            outcomes.setdefault(endpoint, np.full((arms, cohort.size), np.nan))[a, rows] = v
    prognostic = sim.prognostic(cohort) if "procova" in spec.analysis.methods else {}
    flow.append(FlowStep(stage="analysed", remaining=cohort.size))
    return TrialData(spec=spec, cohort=cohort, arm=arm, outcomes=outcomes, prognostic=prognostic, flow=flow)


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """One arm against the control on one endpoint: summaries, estimates, and the prognostic model's quality."""

    endpoint: str
    arm: str
    control: str
    treated_summary: ArmSummary
    control_summary: ArmSummary
    estimates: tuple[Estimate, ...]
    prognostic_rho: float = math.nan  # correlation of prognostic score and outcome in the control arm
    prognostic_r2: float = math.nan  # R^2 of the outcome on the PROCOVA covariates in the control arm
    expected_ratio: float = math.nan  # Var(PROCOVA) / Var(difference) by the asymptotic formula on this trial's data

    def estimate(self, method: str) -> Estimate:
        """The estimate by *method*."""
        for e in self.estimates:
            if e.method == method:
                return e
        raise KeyError(method)

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON."""
        out: dict[str, object] = {
            "endpoint": self.endpoint,
            "arm": self.arm,
            "control": self.control,
            "treated": self.treated_summary.to_dict(),
            "control_arm": self.control_summary.to_dict(),
            "estimates": [e.to_dict() for e in self.estimates],
        }
        if not math.isnan(self.prognostic_rho):
            out["prognostic_rho_control"] = self.prognostic_rho
            out["procova_r2_control"] = self.prognostic_r2
            out["expected_variance_ratio_procova"] = self.expected_ratio
            unadjusted = self.estimate("difference").se if any(e.method == "difference" for e in self.estimates) else 0
            procova = [e for e in self.estimates if e.method == "procova"]
            if unadjusted > 0 and procova:
                out["measured_variance_ratio_procova"] = (procova[0].se / unadjusted) ** 2
        return out


def method_covariates(
    spec: TrialSpec, method: str, endpoint: str, cohort: Screened, prognostic: dict[str, FloatArray]
) -> tuple[FloatArray | None, tuple[str, ...]]:
    """Covariates ``(n, k)`` and their names that *method* adjusts for (None for the unadjusted difference).

    ANCOVA adjusts for the baseline (the run-in value of the same endpoint, or the named variable); PROCOVA for the
    twin-predicted control outcome and, when the spec has one, the same baseline. After stratified allocation both
    also adjust for the strata (indicators), as the FDA's 2023 guidance recommends: the unadjusted difference
    ignores the balance stratification buys and is conservative.
    """
    if method == "difference":
        return None, ()
    base = spec.analysis.baseline
    columns: list[FloatArray] = []
    names: list[str] = []
    if method == "procova":
        columns.append(prognostic[endpoint])
        names.append(f"prognostic:{endpoint}")
    if base:
        variable = f"baseline:{endpoint}" if base == "run_in" else base
        columns.append(cohort.value(variable))
        names.append(variable)
    if spec.allocation.method == "stratified":
        labels = strata_labels(cohort, spec.allocation.strata)
        for stratum in np.unique(labels)[1:]:
            columns.append((labels == stratum).astype(np.float64))
            names.append(f"stratum:{stratum}")
    return np.column_stack(columns), tuple(names)


def compare(
    spec: TrialSpec,
    y: FloatArray,
    treated: np.ndarray,
    covariates: dict[str, tuple[FloatArray | None, tuple[str, ...]]],
) -> list[Estimate]:
    """Estimates by each method of the spec for outcomes *y* of one parallel comparison."""
    a = spec.analysis
    out: list[Estimate] = []
    for method in a.methods:
        x, names = covariates[method]
        if x is None:
            out.append(difference_in_means(y, treated, alpha=a.alpha))
        else:
            out.append(ancova(y, treated, x, names=names, method=method, alpha=a.alpha, robust=a.robust_se))
    return out


def analyse(data: TrialData) -> list[Comparison]:
    """Every non-control arm against the control, on every endpoint (primary first)."""
    spec = data.spec
    c = spec.control
    out: list[Comparison] = []
    for endpoint in spec.endpoints:
        values = data.outcomes[endpoint]
        for a, arm in enumerate(spec.arms):
            if a == c:
                continue
            if data.arm is None:
                treated_y, control_y = values[a], values[c]
                estimates = [paired_difference(treated_y, control_y, alpha=spec.analysis.alpha)]
                rho = r2 = ratio = math.nan
            else:
                rows = np.flatnonzero((data.arm == a) | (data.arm == c))
                y = values[data.arm[rows], rows]
                treated = data.arm[rows] == a
                prog = {k: v[rows] for k, v in data.prognostic.items()}
                sub = data.cohort.take(rows)
                covs = {m: method_covariates(spec, m, endpoint, sub, prog) for m in spec.analysis.methods}
                estimates = compare(spec, y, treated, covs)
                treated_y, control_y = y[treated], y[~treated]
                rho, r2, ratio = _prognostic_quality(covs, y, treated)
            out.append(
                Comparison(
                    endpoint=endpoint,
                    arm=arm.name,
                    control=spec.arms[c].name,
                    treated_summary=arm_summary(treated_y),
                    control_summary=arm_summary(control_y),
                    estimates=tuple(estimates),
                    prognostic_rho=rho,
                    prognostic_r2=r2,
                    expected_ratio=ratio,
                )
            )
    return out


def _prognostic_quality(
    covs: dict[str, tuple[FloatArray | None, tuple[str, ...]]], y: FloatArray, treated: np.ndarray
) -> tuple[float, float, float]:
    """PROCOVA's prognostic score against the control outcome: correlation, R^2 of its covariates, and the variance
    ratio to the unadjusted difference that the asymptotic formula expects from both arms' data."""
    if "procova" not in covs:
        return math.nan, math.nan, math.nan
    x = covs["procova"][0]
    assert x is not None
    ctrl = ~treated
    y0, y1, x0, x1 = y[ctrl], y[treated], x[ctrl], x[treated]
    p1 = float(treated.mean())
    unadjusted = ancova_variance(y0, y1, None, None, p1=p1)
    ratio = ancova_variance(y0, y1, x0, x1, p1=p1) / unadjusted if unadjusted > 0 else math.nan
    return correlation(x0[:, 0], y0), _r_squared(y0, x0), ratio


def _r_squared(y: FloatArray, x: FloatArray) -> float:
    X = np.column_stack([np.ones(len(y)), x])
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    ss = float(np.sum((y - y.mean()) ** 2))
    return float(1.0 - np.sum((y - X @ beta) ** 2) / ss) if ss > 0 else math.nan
