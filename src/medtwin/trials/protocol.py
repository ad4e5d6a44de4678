"""What a trial is, as data: population, allocation, scenario, arms, endpoints, analysis, power.

Frozen dataclasses filled by :func:`medtwin.trials.spec.parse_spec` from a spec file (docs/trials.md) and read by
every part of a trial; the endpoint catalogues name what each kind of trial can measure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from medtwin.glucose.envs import DEFAULT_MEALS

__all__ = [
    "ANALYSIS_METHODS",
    "DEFAULT_POWER_SIZES",
    "DOSING_ENDPOINTS",
    "DOSING_PROGNOSTIC",
    "GLUCOSE_ENDPOINTS",
    "GLUCOSE_PROGNOSTIC",
    "VARIABLE_KINDS",
    "AllocationSpec",
    "AnalysisSpec",
    "CovariateDistribution",
    "Criterion",
    "Design",
    "DosingArm",
    "DosingScenario",
    "GlucoseArm",
    "GlucoseScenario",
    "Kind",
    "PopulationSpec",
    "PowerSpec",
    "TdmSpec",
    "TrialSpec",
]

GLUCOSE_ENDPOINTS: dict[str, str] = {
    "tir_pct": "time in range 70-180 mg/dL (%)",
    "tbr70_pct": "time below 70 mg/dL (%)",
    "tbr54_pct": "time below 54 mg/dL (%)",
    "tar180_pct": "time above 180 mg/dL (%)",
    "tar250_pct": "time above 250 mg/dL (%)",
    "gmi_pct": "glucose management indicator (%)",
    "mean_mg_dl": "mean glucose (mg/dL)",
    "cv_pct": "coefficient of variation of glucose (%)",
    "lbgi": "low blood glucose index",
    "hbgi": "high blood glucose index",
}
DOSING_ENDPOINTS: dict[str, str] = {
    "auc24_target_attainment": "steady-state AUC24 within the target range (1 = yes)",
    "trough_above_threshold": "steady-state trough above the toxicity threshold (1 = yes)",
    "auc24_ss": "steady-state AUC24 (mg.h/L)",
    "trough_ss": "steady-state trough (mg/L)",
    "daily_dose_mg": "final maintenance dose per 24 h (mg)",
}
ANALYSIS_METHODS = ("difference", "ancova", "procova")
GLUCOSE_PROGNOSTIC = ("known-parameters", "matched", "none")
DOSING_PROGNOSTIC = ("covariates", "none")
VARIABLE_KINDS = ("parameter", "baseline", "covariate")

Kind = Literal["glucose", "dosing"]
Design = Literal["parallel", "crossover"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Criterion:
    """An inclusion (keep *low* <= value <= *high*) or exclusion (drop when in that range) criterion."""

    action: Literal["include", "exclude"]
    variable: str  # "parameter:BW", "baseline:tbr54_pct", "covariate:CRCL" or "group"
    low: float = -math.inf
    high: float = math.inf

    def describe(self) -> str:
        """Human-readable rule for the CONSORT flow."""
        name = self.variable
        if self.action == "include":
            return f"{name} outside [{self.low:g}, {self.high:g}]"
        if math.isinf(self.high):
            return f"{name} > {self.low:g}"
        if math.isinf(self.low):
            return f"{name} < {self.high:g}"
        return f"{name} in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True, slots=True, kw_only=True)
class CovariateDistribution:
    """How one patient field of a dosing population is drawn (``fixed`` value or a truncated distribution)."""

    field: str
    distribution: Literal["fixed", "normal", "lognormal", "uniform", "female"]
    a: float = 0.0  # fixed value, normal mean, lognormal median, uniform low, female probability
    b: float = 0.0  # normal SD, lognormal CV (fraction), uniform high
    low: float = -math.inf
    high: float = math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class PopulationSpec:
    """Who is screened: glucose (``fitted`` draws by group, or the ``original`` 30) or dosing (model + fields)."""

    source: Literal["fitted", "original", "pk-model"]
    size: int
    groups: Mapping[str, float] = field(default_factory=dict)
    therapy: Literal["titrated", "sampled"] = "titrated"
    patients: tuple[str, ...] = ()
    model: str = ""
    covariates: tuple[CovariateDistribution, ...] = ()
    within_validity: bool = True
    criteria: tuple[Criterion, ...] = ()
    variables: tuple[str, ...] = ()
    """Names a ``parameter:``/``baseline:``/``covariate:`` variable may take in criteria, strata and baselines."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationSpec:
    """Randomisation of a parallel trial: permuted blocks, overall or within strata."""

    method: Literal["randomised", "stratified"] = "randomised"
    ratio: tuple[int, ...] = ()
    block_size: int = 0  # 0: one block per stratum (complete randomisation with the exact ratio)
    strata: tuple[tuple[str, tuple[float, ...]], ...] = ()  # (variable, cuts)


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseScenario:
    """Duration, run-in, meal plan and its randomisation, devices, and which glucose the endpoints use."""

    days: int
    run_in_days: int = 0
    meals: tuple[tuple[float, float], ...] = DEFAULT_MEALS
    randomise_meals: bool = True
    time_sd_min: float = 30.0
    size_range: tuple[float, float] = (0.7, 1.3)
    skip_probability: float = 0.0
    sensor: str = "Dexcom"
    pump: str = "Insulet"
    sensor_noise: bool = True
    signal: Literal["bg", "cgm"] = "bg"


@dataclass(frozen=True, slots=True, kw_only=True)
class TdmSpec:
    """Therapeutic drug monitoring in an arm: levels after *after_doses* doses, then a dose adjustment."""

    after_doses: int = 3
    samples: Literal["trough", "peak-trough"] = "trough"
    method: Literal["map", "trough-ratio"] = "map"
    trough_target_mg_l: float = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DosingScenario:
    """Target and thresholds of a dosing trial (steady state of the final regimen)."""

    target_auc24: tuple[float, float] = (400.0, 600.0)
    toxicity_trough_mg_l: float = 20.0
    infusion_h: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseArm:
    """An insulin controller and its settings (scales multiply each patient's own CR, CF, basal)."""

    name: str
    controller: str = "basal-bolus"
    target_mg_dl: float = 140.0
    correction_threshold_mg_dl: float = 150.0
    cr_scale: float = 1.0
    cf_scale: float = 1.0
    basal_scale: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DosingArm:
    """A dosing strategy: a weight-based ``nomogram`` or model-informed precision dosing (``mipd``)."""

    name: str
    strategy: Literal["nomogram", "mipd"]
    mg_per_kg: float = 15.0
    interval_h: float = 12.0
    crcl_intervals: tuple[tuple[float, float], ...] = ()  # (CrCL up to, mL/min; interval h)
    intervals_h: tuple[float, ...] = (8.0, 12.0, 24.0)
    max_dose_mg: float = 3000.0
    increment_mg: float = 250.0
    trough_max_mg_l: float = math.inf
    tdm: TdmSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisSpec:
    """How arms are compared: methods, the ANCOVA baseline and the prognostic (twin) model for PROCOVA."""

    alpha: float = 0.05
    methods: tuple[str, ...] = ANALYSIS_METHODS
    baseline: str = ""  # "run_in" or a variable "parameter:BW" / "covariate:CRCL"; "" = none
    robust_se: bool = False
    prognostic: str = "none"
    prognostic_replicates: int = 1
    library_size: int = 1000
    neighbours: int = 20


DEFAULT_POWER_SIZES = (40, 80, 120, 160, 200)


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerSpec:
    """Power by simulation (pool then draw) and by formula, over trial sizes."""

    sizes: tuple[int, ...] = DEFAULT_POWER_SIZES
    replicates: int = 1000
    pool: int = 1000
    target_power: float = 0.8
    full_simulation_check: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialSpec:
    """A validated trial spec (see docs/trials.md)."""

    name: str
    kind: Kind
    design: Design
    seed: int
    description: str
    population: PopulationSpec
    allocation: AllocationSpec
    scenario: GlucoseScenario | DosingScenario
    arms: tuple[GlucoseArm | DosingArm, ...]
    control: int
    primary: str
    secondary: tuple[str, ...]
    analysis: AnalysisSpec
    power: PowerSpec
    chunk_size: int
    source: str
    raw: Mapping[str, Any]
    text: str = ""
    """The spec file's own text (written beside reports so a run can be repeated)."""

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Primary first, then the secondary endpoints."""
        return (self.primary, *(e for e in self.secondary if e != self.primary))

    def arm_names(self) -> tuple[str, ...]:
        """Names of the arms in spec order."""
        return tuple(a.name for a in self.arms)
