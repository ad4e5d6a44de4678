"""Bayesian identification of a person's UVA/Padova parameters from CGM, insulin and carbohydrate records.

Model and prior: :mod:`medtwin.glucose.twin_model` (identified parameters in log space, log-normal population
prior, the rest fixed). One more unknown is the glucose at the first reading ``G0`` (the state before the data is
not recorded): prior log-normal around the median of the first 15 minutes of readings, log-SD 0.1.

Likelihood: CGM = model BG + e, with e an Ornstein-Uhlenbeck process (correlation time tau, SD sigma): sensor
noise and model error are strongly autocorrelated at CGM sampling rates (simglucose's Dexcom noise: 0.98 between
3-minute readings, 0.71 at 15 minutes), and treating 5-minute readings as independent would make the posterior
several times too narrow. sigma is integrated out analytically under its Jeffreys prior 1/sigma, leaving
log L = -(n/2) log Q with Q the whitened residual sum of squares; tau is set at the MAP (profile likelihood over
5-300 min) and held fixed while sampling. The model BG at the readings comes from the split kernel
(:mod:`medtwin.glucose._split_kernels`: exact insulin, glucose in steps of up to 3 minutes, within 0.06 mg/dL of the
minute-exact kernel for prior draws that stay above 10 mg/dL). Readings flagged by
:func:`~medtwin.glucose.data_quality.assess_quality` (compression lows, unexplained rises) are left out; sensor-limit
readings (a CGM's Low and High) are bounds (``FitSettings.sensor_limits_as_bounds``, the default): a Low says the
glucose was at or below the limit, so a model below it leaves no residual and a model above it the excess, as if the
limit had been read (a one-sided residual under the same whitening; left out, the hours a child spends below 40 mg/dL
told the fit nothing).

Algorithm: (1) MAP by Levenberg-Marquardt from several starts (the prior mean and prior draws), Jacobians by
forward differences, every start and every difference of one iteration simulated in one batch; (2) walkers drawn
around the MAP from the Laplace approximation (inflated 1.5x); (3) a population of independence Metropolis-Hastings
chains, one walker each, all evaluated in one batch per step (:mod:`medtwin.sim.ensemble`), whose multivariate-t
proposal is refitted to the walkers' draws in three warm-up rounds and then frozen (on these posteriors the adapted
proposal is accepted 25-50 % of the time, where the stretch and differential-evolution moves needed 5-10 times more
steps for the same R-hat); (4) convergence enforced: after the warm-up, blocks of steps
are added until every parameter has rank-normalised split R-hat <= *rhat_max* and bulk and tail ESS >=
*ess_min* over all draws after the warm-up, which are what is kept; past *max_steps* the fit raises
:class:`ConvergenceError` (or, with ``require_convergence=False``, returns a posterior marked not converged).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from medtwin.errors import MedtwinError, ValidationError
from medtwin.glucose._split_kernels import MAX_STEP_MIN, run_readings
from medtwin.glucose.data_quality import DataQuality, assess_quality
from medtwin.glucose.identifiability import ou_whiten
from medtwin.glucose.therapy_data import TherapyData
from medtwin.glucose.twin_model import PersonalModel, PopulationPrior, population_prior, to_natural
from medtwin.sim.ensemble import EnsembleRun, TProposal, ensemble_steps
from medtwin.sim.mcmc_diagnostics import summarize_chains
from medtwin.sim.model import FloatArray

__all__ = [
    "SENSOR_LIMIT_SPLIT_MG_DL", "ConvergenceError", "Diagnostics", "FitSettings", "Objective", "Posterior", "fit",
    "fit_cohort", "fit_map", "fit_map_cohort", "update",
]  # fmt: skip

_G0_LOG_SD = 0.1
SENSOR_LIMIT_SPLIT_MG_DL = 200.0
"""A sensor-limit (censored) reading below this is a Low (the glucose at or below it), at or above it a High."""
_MAX_PRIOR_Z = 6.0  # parameters beyond 6 prior SDs are refused (they also make the ODEs stiff for RK4)
_TAU_GRID_MIN = np.geomspace(5.0, 300.0, 40)
_DEFAULT_WALKERS = 24
_GIVE_UP_AFTER = 200
"""Kept steps (after the warm-up) before a fit with a fallback may be given up on its ESS trajectory."""
_GIVE_UP_MARGIN = 1.5
"""A fit with a fallback is given up when its extrapolated smallest ESS x this is below the ESS required (the
ESS of a short run is noisy: a fit that might still make it is not given up)."""


class ConvergenceError(MedtwinError):
    """The sampler did not reach the required R-hat / ESS within its step budget."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FitSettings:
    """Sampler settings. ``walkers=0`` picks 24 (the chains are independent, so any number >= 2 is valid; 12 and 16
    with a shorter warm-up converged fewer fits in silico for no saving of simulations, docs/models/glucose_twin.md).
    ``glucose_step_min``: the longest glucose step of the likelihood's simulations (insulin is stepped exactly,
    :mod:`medtwin.glucose._split_kernels`); 1 gives the minute-exact kernel's BG to ~1e-6 mg/dL, 3 (the default)
    within 0.5 mg/dL over prior draws at less than half the CPU."""

    walkers: int = 0
    burn_in: int = 90
    check_every: int = 25
    max_steps: int = 1500
    rhat_max: float = 1.05
    ess_min: float = 200.0
    require_convergence: bool = True
    starts: int = 4
    keep_draws: int = 400
    exclude_unexplained_rises: bool = True
    sensor_limits_as_bounds: bool = True
    seed: int = 1
    glucose_step_min: int = MAX_STEP_MIN
    de_weight: float = 0.0
    fallback: tuple[str, ...] = ()
    fallback_steps: int = 1000

    def __post_init__(self) -> None:
        if self.fallback and self.fallback_steps < self.burn_in + 2 * self.check_every:
            raise ValidationError(
                f"fallback_steps {self.fallback_steps} < burn_in + 2 x check_every = "
                f"{self.burn_in + 2 * self.check_every}"
            )
        if not 0.0 <= self.de_weight < 1.0:
            raise ValidationError(f"de_weight {self.de_weight}: the share of differential-evolution steps, 0 to < 1")
        if not 1 <= self.glucose_step_min <= MAX_STEP_MIN:
            raise ValidationError(f"glucose_step_min {self.glucose_step_min}: 1 to {MAX_STEP_MIN} minutes")
        if self.max_steps < self.burn_in + 2 * self.check_every:
            raise ValidationError(
                f"max_steps {self.max_steps} < burn_in + 2 x check_every = {self.burn_in + 2 * self.check_every} "
                "(convergence is judged on at least two blocks after the warm-up)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostics:
    """Convergence and cost of one fit."""

    rhat: dict[str, float]
    ess_bulk: dict[str, float]
    ess_tail: dict[str, float]
    converged: bool
    steps: int
    walkers: int
    kept_steps: int
    acceptance: float
    simulations: int
    seconds: float
    dropped: tuple[str, ...] = ()
    """Parameters of the prior's set left at their population values because the fit with them did not converge
    (:attr:`FitSettings.fallback`); ``simulations`` counts both fits."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = {k: getattr(self, k) for k in self.__slots__}
        out["dropped"] = list(self.dropped)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Diagnostics:
        """Inverse of :meth:`to_dict` (snapshots from before the fallback have no ``dropped``: none)."""
        return cls(**{**d, "dropped": tuple(d.get("dropped", ()))})


class Objective:
    """Log posterior of log parameters ``(B, dim + 1)`` (identified ones, then log G0) for one person's data."""

    def __init__(
        self,
        model: PersonalModel,
        data: TherapyData,
        quality: DataQuality,
        *,
        tau_min: float = 45.0,
        spacing_min: float = 15.0,
        glucose_step_min: int = MAX_STEP_MIN,
    ) -> None:
        self.model = model
        self.data = data
        mask = np.asarray(quality.fit_mask > 0) & _spaced(data.cgm_t_min, spacing_min)
        if np.count_nonzero(mask) < 10:
            raise ValidationError(f"{data.source or 'data'}: {np.count_nonzero(mask)} usable CGM readings, need 10")
        self.t = data.cgm_t_min[mask]
        self.y = data.cgm_mg_dl[mask]
        # sensor-limit readings kept in the fit are bounds: a Low says the glucose was at or below the limit, a High
        # at or above it, so a model on the right side of the limit leaves no residual there
        limit = data.cgm_censored[mask] > 0
        self.below = limit & (self.y < SENSOR_LIMIT_SPLIT_MG_DL)
        self.above = limit & (self.y >= SENSOR_LIMIT_SPLIT_MG_DL)
        self.index = np.rint(self.t).astype(np.int64)
        self.minutes = int(self.index[-1])
        early = data.cgm_mg_dl[(data.cgm_t_min <= 15.0) & (data.cgm_censored == 0)]
        self.g0_log_mean = float(np.log(np.median(early) if early.size else data.cgm_mg_dl[0]))
        self.tau_min = tau_min
        self.glucose_step_min = glucose_step_min
        self.simulations = 0
        prior = model.prior
        self.mean = np.concatenate([prior.mean, [self.g0_log_mean]])
        sd = np.sqrt(np.diag(prior.cov))
        self.sd = np.concatenate([sd, [_G0_LOG_SD]])
        self.prior_chol_inv = np.linalg.inv(np.linalg.cholesky(prior.cov))
        self._inputs: tuple[FloatArray, FloatArray] | None = None

    @property
    def dim(self) -> int:
        """Number of sampled parameters (identified + G0)."""
        return self.model.prior.dim + 1

    def predict(self, theta: FloatArray) -> FloatArray:
        """Model BG at the fitted readings ``(B, n)``."""
        return _drive([self._predict_steps(np.atleast_2d(theta))])[0]

    def whitened(self, theta: FloatArray) -> FloatArray:
        """Whitened residuals ``(B, n)`` (unit-free up to sigma)."""
        return _drive([self.whitened_steps(np.atleast_2d(theta))])[0]

    def __call__(self, theta: FloatArray) -> FloatArray:
        return _drive([self.log_prob_steps(np.atleast_2d(theta))])[0]

    def _predict_steps(self, theta: FloatArray) -> Steps[FloatArray]:
        bg: FloatArray = yield (self, theta)
        return bg

    def whitened_steps(self, theta: FloatArray) -> Steps[FloatArray]:
        """:meth:`whitened` as steps of :func:`_drive` (the simulation batched with other fits')."""
        bg = yield from self._predict_steps(theta)
        return np.asarray(ou_whiten(self.residuals(bg).T, self.t, self.tau_min).T, dtype=np.float64)

    def residuals(self, bg: FloatArray) -> FloatArray:
        """Readings minus model BG ``(B, n)``; at a sensor-limit reading only the part on the wrong side of it."""
        e: FloatArray = self.y - np.atleast_2d(bg)
        if np.any(self.below):
            e[:, self.below] = np.minimum(e[:, self.below], 0.0)
        if np.any(self.above):
            e[:, self.above] = np.maximum(e[:, self.above], 0.0)
        return e

    def prior_residuals(self, theta: FloatArray) -> FloatArray:
        """Standardised prior residuals ``(B, dim)`` (their squared sum is -2 log prior)."""
        theta = np.atleast_2d(theta)
        z = (theta[:, :-1] - self.mean[:-1]) @ self.prior_chol_inv.T
        return np.concatenate([z, ((theta[:, -1] - self.mean[-1]) / _G0_LOG_SD)[:, None]], axis=1)

    def log_prob_steps(self, theta: FloatArray) -> Steps[FloatArray]:
        """The log posterior of each row of *theta* as steps of :func:`_drive`."""
        theta = np.atleast_2d(theta)
        out = np.full(theta.shape[0], -np.inf)
        ok = np.all(np.abs(theta - self.mean) <= _MAX_PRIOR_Z * self.sd, axis=1)
        if np.any(ok):
            w = yield from self.whitened_steps(theta[ok])
            q = np.sum(w * w, axis=1)
            z = self.prior_residuals(theta[ok])
            value = -0.5 * self.t.size * np.log(q) - 0.5 * np.sum(z * z, axis=1)
            out[ok] = np.where(np.isfinite(value), value, -np.inf)
        return out

    def simulation_inputs(self) -> tuple[FloatArray, FloatArray]:
        """Per-minute carbohydrate (g) and insulin (U/min) up to the last fitted reading (computed once)."""
        if self._inputs is None:
            self._inputs = self.data.minute_inputs(self.minutes)
        return self._inputs

    def estimate_tau(self, theta: FloatArray) -> float:
        """Correlation time maximising the OU profile likelihood of the residuals at *theta*."""
        return _drive([self.estimate_tau_steps(theta)])[0]

    def estimate_tau_steps(self, theta: FloatArray) -> Steps[float]:
        """:meth:`estimate_tau` as steps of :func:`_drive`."""
        e = self.residuals((yield from self._predict_steps(np.atleast_2d(theta))))[0]
        dt = np.diff(self.t)
        best = (-np.inf, self.tau_min)
        for tau in _TAU_GRID_MIN:
            rho = np.exp(-dt / tau)
            w = (e[1:] - rho * e[:-1]) / np.sqrt(1.0 - rho**2)
            q = e[0] ** 2 + float(np.sum(w * w))
            ll = -0.5 * e.size * np.log(q / e.size) - 0.5 * float(np.sum(np.log(1.0 - rho**2)))
            best = max(best, (ll, float(tau)))
        return best[1]


T = TypeVar("T")
Request = tuple[Objective, FloatArray]
"""A fit's request: the rows of log parameters whose model BG at its fitted readings it needs next."""
Steps = Generator[Request, FloatArray, T]
"""A fit (or part of one) written as a generator: it yields requests and is sent the model BG ``(B, n)``."""


def _predict_batch(requests: Sequence[Request]) -> list[FloatArray]:
    """Model BG at each request's fitted readings, every request's rows simulated in one kernel call (each person
    with their own parameters, inputs and length; the split kernel, glucose steps of the finest
    ``glucose_step_min`` among the requests)."""
    ps, xs, stops, cols = [], [], [], []
    longest = max(obj.minutes for obj, _ in requests)
    meals = np.zeros((longest, len(requests)))
    insulin = np.zeros((longest, len(requests)))
    wanted = np.zeros((longest + 1, len(requests)), dtype=bool)
    for j, (obj, theta) in enumerate(requests):
        p, _ = obj.model.parameters(theta[:, :-1])
        ps.append(p)
        xs.append(obj.model.initial_state(p, np.exp(theta[:, -1])))
        m, i = obj.simulation_inputs()
        meals[: obj.minutes, j] = m
        insulin[: obj.minutes, j] = i
        wanted[obj.index, j] = True
        stops.append(np.full(theta.shape[0], obj.minutes, dtype=np.int64))
        cols.append(np.full(theta.shape[0], j, dtype=np.int64))
        obj.simulations += theta.shape[0]
    x_all = np.concatenate(xs)
    bg = run_readings(x_all, np.ascontiguousarray(np.concatenate(ps)), np.zeros((x_all.shape[0], 5)), meals, insulin,
                      wanted, col=np.concatenate(cols), stop=np.concatenate(stops),
                      max_step=min(obj.glucose_step_min for obj, _ in requests))  # fmt: skip
    out, lo = [], 0
    for obj, theta in requests:
        hi = lo + theta.shape[0]
        out.append(np.asarray(bg[obj.index, lo:hi].T, dtype=np.float64))
        lo = hi
    return out


def _drive(processes: Sequence[Steps[T]]) -> list[T]:
    """Run fits (generators) in lockstep: each round, the requests of all that are still running are simulated in
    one batch and the results sent back; returns each one's return value (an exception is raised as is)."""
    results: list[Any] = [None] * len(processes)
    pending: dict[int, Request] = {}
    for i, g in enumerate(processes):
        try:
            pending[i] = next(g)
        except StopIteration as done:
            results[i] = done.value
    while pending:
        keys = list(pending)
        answers = _predict_batch([pending[i] for i in keys])
        for i, answer in zip(keys, answers, strict=True):
            try:
                pending[i] = processes[i].send(answer)
            except StopIteration as done:
                results[i] = done.value
                del pending[i]
    return results


def _spaced(t_min: FloatArray, spacing_min: float) -> np.ndarray:
    """Mask keeping readings at least *spacing_min* apart (greedy from the first)."""
    keep = np.zeros(t_min.size, dtype=bool)
    last = -np.inf
    for i, t in enumerate(t_min):
        if t - last >= spacing_min - 1e-9:
            keep[i] = True
            last = t
    return keep


def _levenberg_marquardt(
    objective: Objective, starts: FloatArray, *, iterations: int = 40, step: float = 2e-3
) -> Steps[tuple[FloatArray, FloatArray]]:
    """Minimise -log posterior from every start at once; return the best point and its stacked Jacobian
    (whitened data rows / sigma, then prior rows) for the Laplace approximation."""
    s, d = starts.shape
    theta = starts.copy()
    lam = np.full(s, 1e-2)
    active = np.ones(s, dtype=bool)
    value = -(yield from objective.log_prob_steps(theta))
    n = objective.t.size
    jac = np.zeros((s, n + d, d))
    for _ in range(iterations):
        rows = np.flatnonzero(active & np.isfinite(value))
        if rows.size == 0:
            break
        batch = np.repeat(theta[rows], d + 1, axis=0)
        for j in range(d):
            batch[j + 1 :: d + 1, j] += step
        w = (yield from objective.whitened_steps(batch)).reshape(rows.size, d + 1, n)
        z = objective.prior_residuals(batch).reshape(rows.size, d + 1, d)
        sigma = np.sqrt(np.sum(w[:, 0] ** 2, axis=1) / n)
        resid = np.concatenate([w[:, 0] / sigma[:, None], z[:, 0]], axis=1)
        for r, row in enumerate(rows):
            dw = (w[r, 1:] - w[r, 0]).T / step / sigma[r]
            dz = (z[r, 1:] - z[r, 0]).T / step
            jac[row] = np.concatenate([dw, dz], axis=0)
        trials, owners = [], []
        for r, row in enumerate(rows):
            jtj = jac[row].T @ jac[row]
            grad = jac[row].T @ resid[r]
            for factor in (0.1, 1.0, 10.0):
                damped = jtj + lam[row] * factor * np.diag(np.diag(jtj) + 1e-9)
                trials.append(theta[row] - np.linalg.solve(damped, grad))
                owners.append((row, factor))
        trial_value = -(yield from objective.log_prob_steps(np.array(trials)))
        for row in rows:
            mine = [k for k, (o, _) in enumerate(owners) if o == row]
            k = min(mine, key=lambda i: trial_value[i])
            if trial_value[k] < value[row] - 1e-9:
                improvement = value[row] - trial_value[k]
                theta[row], value[row] = trials[k], trial_value[k]
                lam[row] = max(lam[row] * owners[k][1] / 3.0, 1e-7)
                active[row] = improvement > 1e-4
            else:
                lam[row] *= 30.0
                active[row] = lam[row] < 1e6
    best = int(np.nanargmin(np.where(np.isfinite(value), value, np.inf)))
    return theta[best], jac[best]


@dataclass(frozen=True, slots=True, kw_only=True)
class Posterior:
    """Posterior draws of a person's identified parameters (log space; last column log G0) and how they were got.

    ``residual_sd_mg_dl`` / ``residual_tau_min``: SD and correlation time of CGM minus the twin at the MAP, sensor
    error and model error together (the data cannot tell them apart); replays, forecasts and advice use them as the
    twin's own error.
    """

    prior: PopulationPrior
    draws: FloatArray
    map_theta: FloatArray
    body_weight_kg: float
    basal_u_h: float
    residual_tau_min: float
    residual_sd_mg_dl: float
    diagnostics: Diagnostics
    data_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """Column names of ``draws``."""
        return (*self.prior.names, "G0")

    def model(self) -> PersonalModel:
        """The personal model the draws parametrise."""
        return PersonalModel(self.prior, body_weight_kg=self.body_weight_kg, basal_u_h=self.basal_u_h)

    def summary(self) -> dict[str, dict[str, float]]:
        """Median and central 95 % interval of each parameter in its own units."""
        values = np.concatenate([to_natural(self.prior.names, self.draws[:, :-1]), np.exp(self.draws[:, -1:])], axis=1)
        lo, med, hi = np.percentile(values, [2.5, 50.0, 97.5], axis=0)
        return {n: {"median": float(med[j]), "lo95": float(lo[j]), "hi95": float(hi[j])}
                for j, n in enumerate(self.names)}  # fmt: skip

    def as_prior(self, *, sd_inflation: float = 1.0) -> PopulationPrior:
        """A log-normal approximation of this posterior (G0 left out), to fit later days starting from it."""
        person = self.draws[:, :-1]
        cov = np.cov(person, rowvar=False) * sd_inflation**2 + np.eye(person.shape[1]) * 1e-8
        return PopulationPrior(names=self.prior.names, mean=person.mean(axis=0), cov=cov, fixed=self.prior.fixed,
                               group=f"posterior({self.prior.group})", members=self.prior.members,
                               tied=self.prior.tied)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the twin's snapshot keeps it)."""
        return {
            "prior": self.prior.to_dict(), "draws": self.draws.tolist(), "map_theta": self.map_theta.tolist(),
            "body_weight_kg": self.body_weight_kg, "basal_u_h": self.basal_u_h,
            "residual_tau_min": self.residual_tau_min, "residual_sd_mg_dl": self.residual_sd_mg_dl,
            "diagnostics": self.diagnostics.to_dict(),
            "data_summary": self.data_summary,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Posterior:
        """Inverse of :meth:`to_dict`."""
        return cls(
            prior=PopulationPrior.from_dict(d["prior"]), draws=np.asarray(d["draws"], dtype=np.float64),
            map_theta=np.asarray(d["map_theta"], dtype=np.float64), body_weight_kg=float(d["body_weight_kg"]),
            basal_u_h=float(d["basal_u_h"]), residual_tau_min=float(d["residual_tau_min"]),
            residual_sd_mg_dl=float(d["residual_sd_mg_dl"]), diagnostics=Diagnostics.from_dict(d["diagnostics"]),
            data_summary=dict(d.get("data_summary", {})),
        )  # fmt: skip


def _residual_sd(model: PersonalModel, data: TherapyData, quality: DataQuality, theta: FloatArray) -> float:
    """SD (mg/dL) of CGM minus the model at *theta* over every reading the fit may use (sensor-limit ones aside)."""
    use = (quality.fit_mask > 0) & (data.cgm_censored == 0)
    bg = model.simulate(theta[None, :-1], data, initial_glucose_mg_dl=np.exp(theta[-1]))[:, 0]
    residual = data.cgm_mg_dl[use] - bg[np.rint(data.cgm_t_min[use]).astype(np.int64)]
    return float(np.sqrt(np.mean(residual**2)))


def _reference_basal(data: TherapyData) -> float:
    """Time-weighted mean basal rate over the data (U/h): the rate at which Gb is the steady state."""
    grid = np.arange(0.0, max(data.duration_min, 1.0), 1.0)
    rate = float(np.mean(data.basal_rate_at(grid)))
    if rate <= 0:
        raise ValidationError(f"{data.source or 'data'}: the basal rate is 0 U/h throughout; the model needs basal")
    return rate


def fit(data: TherapyData, prior: PopulationPrior | None = None, *, settings: FitSettings = FitSettings()) -> Posterior:
    """Identify the person's parameters from *data* starting from *prior* (the whole virtual population when
    omitted); see the module docstring. *data* must carry the body weight."""
    return _drive([_fit_steps(data, prior, settings, time.perf_counter())])[0]


def fit_cohort(
    datasets: Sequence[TherapyData],
    priors: Sequence[PopulationPrior | None] | None = None,
    *,
    settings: FitSettings = FitSettings(),
) -> list[Posterior]:
    """Identify many people at once: the same fit as :func:`fit` for each (same settings and seed, so the same
    posterior), advanced in lockstep so that every round simulates all people's candidate parameters in one batch
    of the compiled kernel (threads share a batch of hundreds of members better than one person's dozen, and the
    Python work of a round is paid once). ``Diagnostics.seconds`` of each is the wall time of the whole cohort.
    A person whose fit fails (bad data, or not converged when convergence is required) makes it raise, naming them.
    """
    if priors is None:
        priors = [None] * len(datasets)
    if len(priors) != len(datasets):
        raise ValidationError(f"fit_cohort: {len(datasets)} data sets but {len(priors)} priors")
    started = time.perf_counter()
    results = _drive([_guarded(_fit_steps(d, p, settings, started)) for d, p in zip(datasets, priors, strict=True)])
    failed = [(d, r) for d, r in zip(datasets, results, strict=True) if isinstance(r, MedtwinError)]
    if failed:
        what = "; ".join(f"{d.source or f'data set {k}'}: {r}" for k, (d, r) in enumerate(failed))
        raise failed[0][1].__class__(f"{len(failed)} of {len(datasets)} fits failed: {what}")
    seconds = time.perf_counter() - started
    return [
        replace(p, diagnostics=replace(p.diagnostics, seconds=seconds)) for p in results if isinstance(p, Posterior)
    ]


def _guarded(steps: Steps[T]) -> Steps[T | MedtwinError]:
    """*steps*, returning a medtwin error instead of raising it (one person's failure does not stop a cohort)."""
    try:
        return (yield from steps)
    except MedtwinError as exc:
        return exc


def _fit_steps(
    data: TherapyData, prior: PopulationPrior | None, settings: FitSettings, started: float
) -> Steps[Posterior]:
    """One person's fit; with *settings.fallback* naming parameters of the prior, first with them (at most
    *fallback_steps*, given up early when the ESS will not make it), then, if that did not converge, without them
    (the plain fit, which must converge or raise as any other)."""
    if data.body_weight_kg is None:
        raise ValidationError(f"{data.source or 'data'}: the body weight (kg) is needed to identify the model")
    prior = prior if prior is not None else population_prior("all")
    drop = tuple(n for n in settings.fallback if n in prior.names)
    if not drop or len(drop) == prior.dim:
        return (yield from _fit_once(data, prior, settings, started))
    rich = replace(settings, max_steps=min(settings.max_steps, settings.fallback_steps), require_convergence=False)
    first = yield from _fit_once(data, prior, rich, started, give_up_early=True)
    if first.diagnostics.converged:
        return first
    second = yield from _fit_once(data, prior.without(drop), settings, started)
    d = second.diagnostics
    total = d.simulations + first.diagnostics.simulations
    return replace(second, diagnostics=replace(d, dropped=drop, simulations=total))


def _fit_once(
    data: TherapyData, prior: PopulationPrior, settings: FitSettings, started: float, *, give_up_early: bool = False
) -> Steps[Posterior]:
    if data.body_weight_kg is None:
        raise ValidationError(f"{data.source or 'data'}: the body weight (kg) is needed to identify the model")
    quality = assess_quality(
        data,
        exclude_unexplained_rises=settings.exclude_unexplained_rises,
        fit_sensor_limits=settings.sensor_limits_as_bounds,
    )
    model = PersonalModel(prior, body_weight_kg=data.body_weight_kg, basal_u_h=_reference_basal(data))
    objective = Objective(model, data, quality, glucose_step_min=settings.glucose_step_min)
    rng = np.random.default_rng(settings.seed)
    d = objective.dim
    theta_map, jac = yield from _map(objective, settings, rng)
    sigma = _residual_sd(model, data, quality, theta_map)
    cov = np.asarray(np.linalg.inv(jac.T @ jac + 1e-9 * np.eye(d)), dtype=np.float64)
    walkers = _walkers(settings, d)
    sampled = yield from _sample(objective, theta_map, cov, walkers, settings, rng, give_up_early)
    kept, total, acceptance, rhat, ess_b, ess_t, converged = sampled
    names = (*prior.names, "G0")
    diagnostics = Diagnostics(
        rhat=dict(zip(names, rhat.tolist(), strict=True)), ess_bulk=dict(zip(names, ess_b.tolist(), strict=True)),
        ess_tail=dict(zip(names, ess_t.tolist(), strict=True)), converged=converged, steps=total, walkers=walkers,
        kept_steps=kept.shape[0], acceptance=acceptance, simulations=objective.simulations,
        seconds=time.perf_counter() - started,
    )  # fmt: skip
    if not converged and settings.require_convergence:
        worst = max(diagnostics.rhat, key=lambda k: diagnostics.rhat[k])
        raise ConvergenceError(
            f"{data.source or 'data'}: not converged after {total} steps x {walkers} walkers (worst R-hat "
            f"{diagnostics.rhat[worst]:.3f} for {worst}, min ESS {float(np.min(np.minimum(ess_b, ess_t))):.0f}; need "
            f"R-hat <= {settings.rhat_max} and ESS >= {settings.ess_min}); raise max_steps or accept with "
            "require_convergence=False"
        )
    flat = kept.reshape(-1, d)
    pick = rng.choice(flat.shape[0], size=min(settings.keep_draws, flat.shape[0]), replace=False)
    summary = {
        "start": data.start.isoformat(), "end": data.end.isoformat(), "readings": int(data.cgm_t_min.size),
        "fitted_readings": int(objective.t.size), "source": data.source, "quality": quality.to_dict(),
    }  # fmt: skip
    return Posterior(
        prior=prior, draws=flat[pick], map_theta=theta_map, body_weight_kg=float(data.body_weight_kg),
        basal_u_h=model.basal_u_h, residual_tau_min=objective.tau_min, residual_sd_mg_dl=sigma,
        diagnostics=diagnostics,
        data_summary=summary,
    )  # fmt: skip


def _map(objective: Objective, settings: FitSettings, rng: np.random.Generator) -> Steps[tuple[FloatArray, FloatArray]]:
    """MAP from the prior mean and prior draws, then again after the residual correlation time is estimated."""
    prior = objective.model.prior
    starts = np.tile(objective.mean, (max(1, settings.starts), 1))
    starts[1:, :-1] = prior.mean + (prior.sample(starts.shape[0] - 1, rng) - prior.mean) * 0.5
    theta, _ = yield from _levenberg_marquardt(objective, starts)
    objective.tau_min = yield from objective.estimate_tau_steps(theta)
    return (yield from _levenberg_marquardt(objective, theta[None, :], iterations=15))


def fit_map(
    data: TherapyData, prior: PopulationPrior, *, settings: FitSettings = FitSettings()
) -> tuple[FloatArray, PersonalModel]:
    """The MAP log parameters (identified ones, then log G0) and the model they parametrise, without sampling: for
    quick comparisons of priors or parameter sets (the twin itself is always the sampled posterior)."""
    return fit_map_cohort([data], [prior], settings=settings)[0]


def fit_map_cohort(
    datasets: Sequence[TherapyData], priors: Sequence[PopulationPrior], *, settings: FitSettings = FitSettings()
) -> list[tuple[FloatArray, PersonalModel]]:
    """:func:`fit_map` for many people, their simulations batched as in :func:`fit_cohort`."""
    objectives = []
    for data, prior in zip(datasets, priors, strict=True):
        if data.body_weight_kg is None:
            raise ValidationError(f"{data.source or 'data'}: the body weight (kg) is needed to identify the model")
        quality = assess_quality(
            data,
            exclude_unexplained_rises=settings.exclude_unexplained_rises,
            fit_sensor_limits=settings.sensor_limits_as_bounds,
        )
        model = PersonalModel(prior, body_weight_kg=data.body_weight_kg, basal_u_h=_reference_basal(data))
        objectives.append(Objective(model, data, quality, glucose_step_min=settings.glucose_step_min))
    found = _drive([_map(o, settings, np.random.default_rng(settings.seed)) for o in objectives])
    return [(theta, o.model) for (theta, _), o in zip(found, objectives, strict=True)]


def _sample(
    objective: Objective,
    center: FloatArray,
    cov: FloatArray,
    walkers: int,
    settings: FitSettings,
    rng: np.random.Generator,
    give_up_early: bool = False,
) -> Steps[tuple[FloatArray, int, float, FloatArray, FloatArray, FloatArray, bool]]:
    """Warm-up (proposal adapted twice), then blocks until converged; returns the kept draws
    ``(steps, walkers, d)``, steps run, acceptance, R-hat, bulk and tail ESS, and whether it converged. With
    *give_up_early*, it also stops (not converged) once the smallest ESS, extrapolated linearly in the kept steps
    to *max_steps*, falls short of *ess_min* by more than :data:`_GIVE_UP_MARGIN` (judged from
    :data:`_GIVE_UP_AFTER` kept steps on)."""
    d = center.size
    position = yield from _start_walkers(objective, center, cov, walkers, rng)
    position_lp = None
    proposal = TProposal(center, cov, scales=(1.0, 1.5))
    total = accepted = 0
    pooled: list[FloatArray] = []
    for steps in _warmup_rounds(settings.burn_in):
        run = yield from _ensemble(objective, position, steps, rng, position_lp, proposal, _moves(settings))
        position, position_lp = run.last
        total += steps
        accepted += run.accepted
        pooled = [*pooled[-1:], run.chain[steps // 3 :].reshape(-1, d)]
        warm = np.concatenate(pooled)
        proposal = TProposal(warm.mean(axis=0), np.cov(warm, rowvar=False) + 1e-10 * np.eye(d))
    blocks: list[FloatArray] = []
    while True:
        steps = max(1, min(settings.check_every, settings.max_steps - total))  # never past max_steps
        run = yield from _ensemble(objective, position, steps, rng, position_lp, proposal, _moves(settings))
        position, position_lp = run.last
        blocks.append(run.chain)
        total += steps
        accepted += run.accepted
        kept = np.concatenate(blocks)
        if kept.shape[0] < 2 * settings.check_every:
            continue
        rhat, ess_b, ess_t = summarize_chains(kept)
        converged = bool(np.all(rhat <= settings.rhat_max) and np.all(np.minimum(ess_b, ess_t) >= settings.ess_min))
        if give_up_early and kept.shape[0] >= _GIVE_UP_AFTER and not converged:
            ess_now = float(np.min(np.minimum(ess_b, ess_t)))
            projected = ess_now * (settings.max_steps - settings.burn_in) / kept.shape[0]
            if projected * _GIVE_UP_MARGIN < settings.ess_min:
                return kept, total, accepted / (total * walkers), rhat, ess_b, ess_t, False
        if converged or total >= settings.max_steps:
            return kept, total, accepted / (total * walkers), rhat, ess_b, ess_t, converged


def _walkers(settings: FitSettings, dim: int) -> int:
    """Walkers of a fit: *settings.walkers*, or 24; with differential-evolution steps at least 2 dim + 2 and even
    (the move updates one half of the walkers from the other)."""
    if settings.walkers:
        return settings.walkers
    return max(_DEFAULT_WALKERS, 2 * dim + 2) if settings.de_weight > 0 else _DEFAULT_WALKERS


def _moves(settings: FitSettings) -> tuple[tuple[str, float], ...]:
    if settings.de_weight > 0:
        return (("independence", 1.0 - settings.de_weight), ("de", settings.de_weight))
    return (("independence", 1.0),)


def _ensemble(
    objective: Objective,
    start: FloatArray,
    steps: int,
    rng: np.random.Generator,
    start_log_prob: FloatArray | None,
    proposal: TProposal,
    moves: tuple[tuple[str, float], ...],
) -> Steps[EnsembleRun]:
    """The ensemble sampler (:func:`medtwin.sim.ensemble.ensemble_steps`) on *objective*, as steps of :func:`_drive`."""
    run = ensemble_steps(start, steps, rng=rng, start_log_prob=start_log_prob, proposal=proposal, moves=moves)
    try:
        points = next(run)
        while True:
            points = run.send((yield from objective.log_prob_steps(points)))
    except StopIteration as done:
        result: EnsembleRun = done.value
        return result


def _warmup_rounds(steps: int) -> tuple[int, int, int]:
    """Three adaptation rounds of growing length (1/5, 1/3, the rest of *steps*)."""
    first, second = max(10, steps // 5), max(10, steps // 3)
    return first, second, max(10, steps - first - second)


def _start_walkers(
    objective: Objective, center: FloatArray, cov: FloatArray, walkers: int, rng: np.random.Generator
) -> Steps[FloatArray]:
    """Walkers from N(center, 1.5^2 cov), redrawn until each has a finite density."""
    out = np.empty((walkers, center.size))
    need = np.arange(walkers)
    for _ in range(20):
        out[need] = rng.multivariate_normal(center, 2.25 * cov, size=need.size)
        need = need[~np.isfinite((yield from objective.log_prob_steps(out[need])))]
        if need.size == 0:
            return out
    raise ValidationError("could not place the sampler's walkers where the posterior is positive")


def update(posterior: Posterior, data: TherapyData, *, settings: FitSettings = FitSettings()) -> Posterior:
    """Identify again on new days *data*, with the earlier posterior (log-normal approximation) as the prior."""
    if data.body_weight_kg is None:
        data = data.__class__(**{**{k: getattr(data, k) for k in data.__dataclass_fields__},
                                 "body_weight_kg": posterior.body_weight_kg})  # fmt: skip
    return fit(data, posterior.as_prior(), settings=settings)
