"""The dosing side of a virtual trial: virtual patients of a population-PK model under dosing strategies.

Population: each patient field (age, weight, SCr, sex, ...) is drawn from the spec's distribution, truncated to
its [min, max] by redrawing; the model's covariates are derived from the fields by the model's own rules
(:func:`medtwin.dosing.case.model_covariates`: Cockcroft-Gault with the model's weight, floors and caps); patients
whose covariates fall outside the model's validity ranges are excluded (``within_validity``); each patient's true
random effects are drawn from the model's Omega.

Strategies (per arm, vectorized; all regimens are IV infusions of ``scenario.infusion_h`` hours):

* ``nomogram``: ``mg_per_kg`` x total body weight, rounded to ``increment_mg`` and capped at ``max_dose_mg``,
  every ``interval_h``, or every interval of the patient's CrCL band (``crcl_intervals``, the model's CRCL).
* ``mipd``: a priori model-informed dosing: for each candidate interval the dose that puts the typical patient
  with these covariates (eta = 0) at the middle of the AUC24 target, rounded and capped; the interval whose
  rounded dose comes closest to the target (log scale) among those whose predicted trough stays at or below
  ``trough_max_mg_l`` (all intervals when none does).
* ``tdm`` (either strategy): after ``after_doses`` doses, levels are drawn 30 min before the next dose
  (``trough``) and 1 h after the end of the last infusion (``peak-trough`` adds it), with the model's residual
  error (values below 0.1 mg/L are reported as 0.1 mg/L); then ``map``: Bayesian MAP estimation of the etas
  (:func:`medtwin.dosing.map_estimate_cohort`) and the dose for the target mid-point with them at the same
  interval; or ``trough-ratio``: dose x target trough / measured trough (classic linear adjustment).

Outcomes are exact steady-state values of the final regimen with the patient's true etas: AUC24 (mg.h/L) and
trough (mg/L); attainment means AUC24 within ``target_auc24``, toxicity a trough above ``toxicity_trough_mg_l``.
Residual errors of patient *i* come from ``SeedSequence(seed, spawn_key=(stream, i))``, so chunks are independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np

from medtwin.dosing.case import model_covariates
from medtwin.dosing.model import PKModel
from medtwin.dosing.modelfile import load_model
from medtwin.dosing.optimize import round_dose, steady_state_metrics
from medtwin.dosing.population import CohortData, map_estimate_cohort
from medtwin.dosing.regimen import Dose, predict_concentrations
from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray
from medtwin.sim.runners import Runner, SequentialRunner
from medtwin.trials.cohort import FlowStep, IntArray, Screened, map_chunks
from medtwin.trials.protocol import CovariateDistribution, DosingArm, DosingScenario, TrialSpec
from medtwin.trials.specfile import SpecError

__all__ = ["DosingJob", "DosingSimulator", "PkPatients", "draw_fields", "run_dosing_job"]

_TROUGH_BEFORE_H = 0.5
_PEAK_AFTER_END_H = 1.0
_LOWEST_LEVEL_MG_L = 0.1
STREAM_TRIAL = 0
STREAM_TWIN = 16
_MAX_REPLICAS = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class PkPatients:
    """Model covariates ``{name: (n,)}``, total body weight, CrCL (when the model has one) and true etas."""

    covariates: dict[str, FloatArray]
    weight_kg: FloatArray
    eta: FloatArray

    def rows(self, r: IntArray) -> PkPatients:
        """The patients at *r*."""
        return PkPatients(
            covariates={k: v[r] for k, v in self.covariates.items()}, weight_kg=self.weight_kg[r], eta=self.eta[r]
        )


def _subset(payload: PkPatients, rows: IntArray) -> PkPatients:
    return payload.rows(rows)


def draw_fields(dists: tuple[CovariateDistribution, ...], n: int, rng: np.random.Generator) -> dict[str, Any]:
    """Patient fields ``{field: (n,)}`` drawn from *dists* (truncated by redrawing); sex as 'female'/'male'."""
    out: dict[str, Any] = {}
    for d in dists:
        if d.distribution == "fixed":
            out[d.field] = np.full(n, d.a)
            continue
        if d.distribution == "female":
            out[d.field] = np.where(rng.random(n) < d.a, "female", "male")
            continue
        values = np.empty(n)
        todo = np.arange(n)
        for _ in range(1000):
            if todo.size == 0:
                break
            if d.distribution == "normal":
                v = rng.normal(d.a, d.b, todo.size)
            elif d.distribution == "lognormal":
                v = d.a * np.exp(rng.normal(0.0, math.sqrt(math.log1p(d.b**2)), todo.size))
            else:
                v = rng.uniform(d.a, d.b, todo.size)
            values[todo] = v
            todo = todo[(v < d.low) | (v > d.high)]
        if todo.size:
            raise SpecError(f"population.covariates.{d.field}: the distribution almost never falls in [min, max]")
        out[d.field] = values
    return out


def _unit_ss(
    model: PKModel, pts: PkPatients, eta: FloatArray, tau: FloatArray, infusion_h: float
) -> dict[str, FloatArray]:
    """Steady-state AUC24 and trough per mg of dose for each patient's interval *tau*."""
    auc = np.empty(tau.size)
    trough = np.empty(tau.size)
    for t in np.unique(tau):
        rows = np.flatnonzero(tau == t)
        covs = {k: v[rows] for k, v in pts.covariates.items()}
        m = steady_state_metrics(
            model,
            covs,
            amount_mg=1.0,
            interval_h=float(t),
            duration_h=infusion_h,
            etas=eta[rows],
            metrics=("auc24_ss", "trough_ss"),
        )
        auc[rows], trough[rows] = m["auc24_ss"], m["trough_ss"]
    return {"auc24_ss": auc, "trough_ss": trough}


def _rounded(amount: FloatArray, arm: DosingArm) -> FloatArray:
    return np.array(
        [
            round_dose(float(a), increment_mg=arm.increment_mg, min_mg=arm.increment_mg, max_mg=arm.max_dose_mg)
            for a in amount
        ]
    )


def _initial_regimen(
    model: PKModel, arm: DosingArm, sc: DosingScenario, pts: PkPatients
) -> tuple[FloatArray, FloatArray]:
    n = pts.weight_kg.size
    if arm.strategy == "nomogram":
        tau = np.full(n, arm.interval_h)
        if arm.crcl_intervals:
            if "CRCL" not in pts.covariates:
                raise ValidationError(f"arm {arm.name}: crcl_intervals need a model with a CRCL covariate")
            crcl = pts.covariates["CRCL"]
            for upper, interval in reversed(arm.crcl_intervals):
                tau = np.where(crcl <= upper, interval, tau)
        return _rounded(arm.mg_per_kg * pts.weight_kg, arm), tau
    target = float(np.mean(sc.target_auc24))
    typical = np.zeros_like(pts.eta)
    best_err = np.full(n, np.inf)
    best_ok = np.zeros(n, dtype=bool)
    amount, tau = np.zeros(n), np.zeros(n)
    for interval in arm.intervals_h:
        taus = np.full(n, interval)
        unit = _unit_ss(model, pts, typical, taus, sc.infusion_h)
        dose = _rounded(target / unit["auc24_ss"], arm)
        err = np.abs(np.log(dose * unit["auc24_ss"] / target))
        ok = dose * unit["trough_ss"] <= arm.trough_max_mg_l
        better = (ok & ~best_ok) | ((ok == best_ok) & (err < best_err))
        amount, tau = np.where(better, dose, amount), np.where(better, interval, tau)
        best_err, best_ok = np.where(better, err, best_err), best_ok | ok
    return amount, tau


def _tdm(
    model: PKModel,
    arm: DosingArm,
    sc: DosingScenario,
    pts: PkPatients,
    amount: FloatArray,
    tau: FloatArray,
    noise: FloatArray,
) -> FloatArray:
    """The adjusted dose after the arm's monitoring (see the module docstring)."""
    assert arm.tdm is not None
    k = arm.tdm.after_doses
    n = amount.size
    peak = arm.tdm.samples == "peak-trough"
    times = np.column_stack(
        ([(k - 1) * tau + sc.infusion_h + _PEAK_AFTER_END_H] if peak else []) + [k * tau - _TROUGH_BEFORE_H]
    )
    true = np.empty((n, times.shape[1]))
    for t in np.unique(tau):
        rows = np.flatnonzero(tau == t)
        unit = [Dose(time_h=0.0, amount_mg=1.0, duration_h=sc.infusion_h, interval_h=float(t), additional=k - 1)]
        covs = {name: v[rows] for name, v in pts.covariates.items()}
        conc = predict_concentrations(model, covs, unit, times[rows[0]], pts.eta[rows])
        true[rows] = conc * amount[rows, None]
    measured = np.maximum(true + model.error.sd(true) * noise[:, : times.shape[1]], _LOWEST_LEVEL_MG_L)
    if arm.tdm.method == "trough-ratio":
        return _rounded(amount * arm.tdm.trough_target_mg_l / measured[:, -1], arm)
    data = CohortData(
        covariates=pts.covariates,
        dose_time_h=np.arange(k)[None, :] * tau[:, None],
        dose_amount_mg=np.repeat(amount[:, None], k, axis=1),
        dose_duration_h=np.full(k, sc.infusion_h),
        level_time_h=times,
        level_mg_l=measured,
    )
    eta_map = map_estimate_cohort(model, data).eta
    unit_auc = _unit_ss(model, pts, eta_map, tau, sc.infusion_h)["auc24_ss"]
    return _rounded(float(np.mean(sc.target_auc24)) / unit_auc, arm)


@dataclass(frozen=True, slots=True, kw_only=True)
class DosingJob:
    """A chunk of patients under one arm (picklable): the regimen chosen, then its true steady state."""

    model_id: str
    patients: PkPatients
    indices: IntArray
    arm: DosingArm
    scenario: DosingScenario
    seed: int
    stream: int


@cache
def _model(model_id: str) -> PKModel:
    """A model loaded once per process (jobs of a trial all use the same one)."""
    return load_model(model_id)


def run_dosing_job(job: DosingJob) -> dict[str, FloatArray]:
    """Endpoint values ``{endpoint: (n,)}`` of the chunk."""
    model, sc, pts = _model(job.model_id), job.scenario, job.patients
    amount, tau = _initial_regimen(model, job.arm, sc, pts)
    if job.arm.tdm is not None:
        noise = np.stack(
            [
                np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(job.stream, int(i)))).standard_normal(
                    2
                )
                for i in job.indices
            ]
        )
        amount = _tdm(model, job.arm, sc, pts, amount, tau, noise)
    unit = _unit_ss(model, pts, pts.eta, tau, sc.infusion_h)
    auc, trough = amount * unit["auc24_ss"], amount * unit["trough_ss"]
    low, high = sc.target_auc24
    return {
        "auc24_target_attainment": ((auc >= low) & (auc <= high)).astype(np.float64),
        "trough_above_threshold": (trough > sc.toxicity_trough_mg_l).astype(np.float64),
        "auc24_ss": auc,
        "trough_ss": trough,
        "daily_dose_mg": amount * 24.0 / tau,
    }


class DosingSimulator:
    """Screens and treats virtual PK patients for one spec on one runner."""

    def __init__(self, spec: TrialSpec, runner: Runner | None = None) -> None:
        if not isinstance(spec.scenario, DosingScenario):
            raise ValidationError("DosingSimulator: the spec is not a dosing trial")
        self.spec = spec
        self.scenario: DosingScenario = spec.scenario
        self.model = _model(spec.population.model)
        self.runner: Runner = runner or SequentialRunner()

    def screen(self, size: int, *, stream: int, offset: int) -> tuple[Screened, list[FlowStep]]:
        """*size* patients drawn from the spec's fields and the model's Omega; validity exclusions as flow steps."""
        pop = self.spec.population
        if "weight_kg" not in {d.field for d in pop.covariates}:
            raise SpecError(f"{self.spec.source}: population.covariates needs weight_kg (nomogram doses are per kg)")
        rng = np.random.default_rng(np.random.SeedSequence(self.spec.seed, spawn_key=(stream,)))
        fields = draw_fields(pop.covariates, size, rng)
        eta = rng.multivariate_normal(np.zeros(len(self.model.eta_names)), self.model.omega, size=size)
        rows: list[dict[str, float]] = []
        valid = np.ones(size, dtype=bool)
        for i in range(size):
            raw = {k: (str(v[i]) if k == "sex" else float(v[i])) for k, v in fields.items()}
            try:
                covs, warnings = model_covariates(self.model, raw, where="population.covariates")
            except ValidationError as exc:
                raise SpecError(f"{self.spec.source}: population for {self.model.id}: {exc}") from exc
            rows.append(covs)
            valid[i] = not warnings
        covariates = {c.name: np.array([r[c.name] for r in rows]) for c in self.model.covariates}
        variables = {f"covariate:{k}": v for k, v in covariates.items()}
        for k, v in fields.items():
            variables[f"covariate:{k}"] = (v == "female").astype(np.float64) if k == "sex" else np.asarray(v, float)
        payload = PkPatients(covariates=covariates, weight_kg=np.asarray(fields["weight_kg"], float), eta=eta)
        ids = tuple(f"pk{offset >> 22}-{i:06d}" for i in range(size))
        cohort = Screened(
            ids=ids,
            index=offset + np.arange(size, dtype=np.int64),
            groups=("all",) * size,
            variables=variables,
            payload=payload,
            subset_payload=_subset,
        )
        flow: list[FlowStep] = []
        if pop.within_validity:
            cohort = cohort.take(np.flatnonzero(valid))
            flow.append(
                FlowStep(
                    stage=f"within the validity ranges of {self.model.id}",
                    remaining=cohort.size,
                    removed=int((~valid).sum()),
                    reason="covariates outside the model's validity ranges",
                )
            )
        return cohort, flow

    def baseline(self, patients: Screened) -> dict[str, FloatArray]:
        """Dosing trials have no run-in period."""
        return {}

    def _run(self, patients: Screened, arm_index: int, stream: int) -> dict[str, FloatArray]:
        arm = self.spec.arms[arm_index]
        assert isinstance(arm, DosingArm)

        def job(rows: IntArray) -> DosingJob:
            return DosingJob(
                model_id=self.spec.population.model,
                patients=patients.payload.rows(rows),
                indices=patients.index[rows],
                arm=arm,
                scenario=self.scenario,
                seed=self.spec.seed,
                stream=stream,
            )

        return map_chunks(self.runner, run_dosing_job, patients.size, self.spec.chunk_size, job)

    def outcomes(self, patients: Screened, arm_index: int) -> dict[str, FloatArray]:
        """Endpoints of *patients* under arm *arm_index*."""
        return self._run(patients, arm_index, STREAM_TRIAL)

    def prognostic(self, patients: Screened) -> dict[str, FloatArray]:
        """A priori twins: the control strategy on replicas with the patient's covariates and fresh etas."""
        a = self.spec.analysis
        if a.prognostic == "none" or patients.size == 0:
            return {}
        k = a.prognostic_replicates
        rows = np.repeat(np.arange(patients.size), k)
        replicas = patients.take(rows)
        # replica r of patient i: its covariates, etas from the patient's own twin stream (chunk-independent)
        zeros = np.zeros(len(self.model.eta_names))
        eta = np.concatenate(
            [
                np.random.default_rng(
                    np.random.SeedSequence(self.spec.seed, spawn_key=(STREAM_TWIN, int(i)))
                ).multivariate_normal(zeros, self.model.omega, size=k)
                for i in patients.index
            ]
        )
        replicas = replace(
            replicas,
            payload=replace(replicas.payload, eta=eta),
            index=replicas.index * _MAX_REPLICAS + np.tile(np.arange(k), patients.size),
        )
        out = self._run(replicas, self.spec.control, STREAM_TWIN)
        return {e: v.reshape(patients.size, k).mean(axis=1) for e, v in out.items()}
