"""Bayesian identification of a person's UVA/Padova parameters from CGM, insulin and carbohydrate records.

Model and prior: :mod:`medtwin.glucose.twin_model` (identified parameters in log space, log-normal population
prior, the rest fixed). One more unknown is the glucose at the first reading ``G0`` (the state before the data is
not recorded): prior log-normal around the median of the first 15 minutes of readings, log-SD 0.1.

Likelihood: CGM = model BG + e, with e an Ornstein-Uhlenbeck process (correlation time tau, SD sigma): sensor
noise and model error are strongly autocorrelated at CGM sampling rates (simglucose's Dexcom noise: 0.98 between
3-minute readings, 0.71 at 15 minutes), and treating 5-minute readings as independent would make the posterior
several times too narrow. sigma is integrated out analytically under its Jeffreys prior 1/sigma, leaving
log L = -(n/2) log Q with Q the whitened residual sum of squares; tau is set at the MAP (profile likelihood over
5-300 min) and held fixed while sampling. Readings flagged by :func:`~medtwin.glucose.data_quality.assess_quality`
(sensor limits, compression lows, unexplained rises) are left out.

Algorithm: (1) MAP by Levenberg-Marquardt from several starts (the prior mean and prior draws), Jacobians by
forward differences, every start and every difference of one iteration simulated in one batch; (2) walkers drawn
around the MAP from the Laplace approximation (inflated 1.5x); (3) a population of independence Metropolis-Hastings
chains, one walker each, all evaluated in one batch per step (:mod:`medtwin.sim.ensemble`), whose multivariate-t
proposal is refitted to the walkers' draws in three warm-up rounds and then frozen (on these posteriors the
adapted proposal is accepted 40-50 % of the time, where the stretch and differential-evolution moves needed
5-10 times more steps for the same R-hat); (4) convergence enforced: after the warm-up, blocks of
steps are added until every parameter has rank-normalised split R-hat <= *rhat_max* and bulk and tail ESS >=
*ess_min* over all draws after the warm-up, which are what is kept; past *max_steps* the fit raises
:class:`ConvergenceError` (or, with ``require_convergence=False``, returns a posterior marked not converged).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtwin.errors import MedtwinError, ValidationError
from medtwin.glucose.data_quality import DataQuality, assess_quality
from medtwin.glucose.identifiability import ou_whiten
from medtwin.glucose.therapy_data import TherapyData
from medtwin.glucose.twin_model import PersonalModel, PopulationPrior, population_prior
from medtwin.sim.ensemble import TProposal, run_ensemble
from medtwin.sim.mcmc_diagnostics import summarize_chains
from medtwin.sim.model import FloatArray

__all__ = ["ConvergenceError", "Diagnostics", "FitSettings", "Objective", "Posterior", "fit", "fit_map", "update"]

_G0_LOG_SD = 0.1
_MAX_PRIOR_Z = 6.0  # parameters beyond 6 prior SDs are refused (they also make the ODEs stiff for RK4)
_TAU_GRID_MIN = np.geomspace(5.0, 300.0, 40)
_MOVES = (("independence", 1.0),)


class ConvergenceError(MedtwinError):
    """The sampler did not reach the required R-hat / ESS within its step budget."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FitSettings:
    """Sampler settings. ``walkers=0`` picks an even number >= 2 (d + 1) + 2 and >= 24."""

    walkers: int = 0
    burn_in: int = 150
    check_every: int = 50
    max_steps: int = 1500
    rhat_max: float = 1.05
    ess_min: float = 200.0
    require_convergence: bool = True
    starts: int = 4
    keep_draws: int = 400
    exclude_unexplained_rises: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: getattr(self, k) for k in self.__slots__}


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
    ) -> None:
        self.model = model
        self.data = data
        mask = np.asarray(quality.fit_mask > 0) & _spaced(data.cgm_t_min, spacing_min)
        if np.count_nonzero(mask) < 10:
            raise ValidationError(f"{data.source or 'data'}: {np.count_nonzero(mask)} usable CGM readings, need 10")
        self.t = data.cgm_t_min[mask]
        self.y = data.cgm_mg_dl[mask]
        self.index = np.rint(self.t).astype(np.int64)
        self.minutes = int(self.index[-1])
        early = data.cgm_mg_dl[(data.cgm_t_min <= 15.0) & (data.cgm_censored == 0)]
        self.g0_log_mean = float(np.log(np.median(early) if early.size else data.cgm_mg_dl[0]))
        self.tau_min = tau_min
        self.simulations = 0
        prior = model.prior
        self.mean = np.concatenate([prior.mean, [self.g0_log_mean]])
        sd = np.sqrt(np.diag(prior.cov))
        self.sd = np.concatenate([sd, [_G0_LOG_SD]])
        self.prior_chol_inv = np.linalg.inv(np.linalg.cholesky(prior.cov))

    @property
    def dim(self) -> int:
        """Number of sampled parameters (identified + G0)."""
        return self.model.prior.dim + 1

    def predict(self, theta: FloatArray) -> FloatArray:
        """Model BG at the fitted readings ``(B, n)``."""
        theta = np.atleast_2d(theta)
        self.simulations += theta.shape[0]
        bg = self.model.simulate(theta[:, :-1], self.data, initial_glucose_mg_dl=np.exp(theta[:, -1]),
                                 minutes=self.minutes)  # fmt: skip
        return np.asarray(bg[self.index].T, dtype=np.float64)

    def whitened(self, theta: FloatArray) -> FloatArray:
        """Whitened residuals ``(B, n)`` (unit-free up to sigma)."""
        return np.asarray(ou_whiten((self.y - self.predict(theta)).T, self.t, self.tau_min).T, dtype=np.float64)

    def prior_residuals(self, theta: FloatArray) -> FloatArray:
        """Standardised prior residuals ``(B, dim)`` (their squared sum is -2 log prior)."""
        theta = np.atleast_2d(theta)
        z = (theta[:, :-1] - self.mean[:-1]) @ self.prior_chol_inv.T
        return np.concatenate([z, ((theta[:, -1] - self.mean[-1]) / _G0_LOG_SD)[:, None]], axis=1)

    def __call__(self, theta: FloatArray) -> FloatArray:
        theta = np.atleast_2d(theta)
        out = np.full(theta.shape[0], -np.inf)
        ok = np.all(np.abs(theta - self.mean) <= _MAX_PRIOR_Z * self.sd, axis=1)
        if np.any(ok):
            w = self.whitened(theta[ok])
            q = np.sum(w * w, axis=1)
            z = self.prior_residuals(theta[ok])
            value = -0.5 * self.t.size * np.log(q) - 0.5 * np.sum(z * z, axis=1)
            out[ok] = np.where(np.isfinite(value), value, -np.inf)
        return out

    def estimate_tau(self, theta: FloatArray) -> float:
        """Correlation time maximising the OU profile likelihood of the residuals at *theta*."""
        e = self.y - self.predict(theta)[0]
        dt = np.diff(self.t)
        best = (-np.inf, self.tau_min)
        for tau in _TAU_GRID_MIN:
            rho = np.exp(-dt / tau)
            w = (e[1:] - rho * e[:-1]) / np.sqrt(1.0 - rho**2)
            q = e[0] ** 2 + float(np.sum(w * w))
            ll = -0.5 * e.size * np.log(q / e.size) - 0.5 * float(np.sum(np.log(1.0 - rho**2)))
            best = max(best, (ll, float(tau)))
        return best[1]


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
) -> tuple[FloatArray, FloatArray]:
    """Minimise -log posterior from every start at once; return the best point and its stacked Jacobian
    (whitened data rows / sigma, then prior rows) for the Laplace approximation."""
    s, d = starts.shape
    theta = starts.copy()
    lam = np.full(s, 1e-2)
    active = np.ones(s, dtype=bool)
    value = -objective(theta)
    n = objective.t.size
    jac = np.zeros((s, n + d, d))
    for _ in range(iterations):
        rows = np.flatnonzero(active & np.isfinite(value))
        if rows.size == 0:
            break
        batch = np.repeat(theta[rows], d + 1, axis=0)
        for j in range(d):
            batch[j + 1 :: d + 1, j] += step
        w = objective.whitened(batch).reshape(rows.size, d + 1, n)
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
        trial_value = -objective(np.array(trials))
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
        values = np.exp(self.draws)
        lo, med, hi = np.percentile(values, [2.5, 50.0, 97.5], axis=0)
        return {n: {"median": float(med[j]), "lo95": float(lo[j]), "hi95": float(hi[j])}
                for j, n in enumerate(self.names)}  # fmt: skip

    def as_prior(self, *, sd_inflation: float = 1.0) -> PopulationPrior:
        """A log-normal approximation of this posterior (G0 left out), to fit later days starting from it."""
        person = self.draws[:, :-1]
        cov = np.cov(person, rowvar=False) * sd_inflation**2 + np.eye(person.shape[1]) * 1e-8
        return PopulationPrior(names=self.prior.names, mean=person.mean(axis=0), cov=cov, fixed=self.prior.fixed,
                               group=f"posterior({self.prior.group})", members=self.prior.members)  # fmt: skip

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
            residual_sd_mg_dl=float(d["residual_sd_mg_dl"]), diagnostics=Diagnostics(**d["diagnostics"]),
            data_summary=dict(d.get("data_summary", {})),
        )  # fmt: skip


def _residual_sd(model: PersonalModel, data: TherapyData, quality: DataQuality, theta: FloatArray) -> float:
    """SD (mg/dL) of CGM minus the model at *theta* over every reading the fit may use."""
    use = quality.fit_mask > 0
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
    started = time.perf_counter()
    if data.body_weight_kg is None:
        raise ValidationError(f"{data.source or 'data'}: the body weight (kg) is needed to identify the model")
    prior = prior if prior is not None else population_prior("all")
    quality = assess_quality(data, exclude_unexplained_rises=settings.exclude_unexplained_rises)
    model = PersonalModel(prior, body_weight_kg=data.body_weight_kg, basal_u_h=_reference_basal(data))
    objective = Objective(model, data, quality)
    rng = np.random.default_rng(settings.seed)
    d = objective.dim
    theta_map, jac = _map(objective, settings, rng)
    sigma = _residual_sd(model, data, quality, theta_map)
    cov = np.asarray(np.linalg.inv(jac.T @ jac + 1e-9 * np.eye(d)), dtype=np.float64)
    walkers = settings.walkers or max(24, 2 * d + 2 + (2 * d + 2) % 2)
    kept, total, acceptance, rhat, ess_b, ess_t, converged = _sample(objective, theta_map, cov, walkers, settings, rng)
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


def _map(objective: Objective, settings: FitSettings, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """MAP from the prior mean and prior draws, then again after the residual correlation time is estimated."""
    prior = objective.model.prior
    starts = np.tile(objective.mean, (max(1, settings.starts), 1))
    starts[1:, :-1] = prior.mean + (prior.sample(starts.shape[0] - 1, rng) - prior.mean) * 0.5
    theta, _ = _levenberg_marquardt(objective, starts)
    objective.tau_min = objective.estimate_tau(theta)
    return _levenberg_marquardt(objective, theta[None, :], iterations=15)


def fit_map(
    data: TherapyData, prior: PopulationPrior, *, settings: FitSettings = FitSettings()
) -> tuple[FloatArray, PersonalModel]:
    """The MAP log parameters (identified ones, then log G0) and the model they parametrise, without sampling: for
    quick comparisons of priors or parameter sets (the twin itself is always the sampled posterior)."""
    if data.body_weight_kg is None:
        raise ValidationError(f"{data.source or 'data'}: the body weight (kg) is needed to identify the model")
    quality = assess_quality(data, exclude_unexplained_rises=settings.exclude_unexplained_rises)
    model = PersonalModel(prior, body_weight_kg=data.body_weight_kg, basal_u_h=_reference_basal(data))
    theta, _ = _map(Objective(model, data, quality), settings, np.random.default_rng(settings.seed))
    return theta, model


def _sample(
    objective: Objective,
    center: FloatArray,
    cov: FloatArray,
    walkers: int,
    settings: FitSettings,
    rng: np.random.Generator,
) -> tuple[FloatArray, int, float, FloatArray, FloatArray, FloatArray, bool]:
    """Warm-up (proposal adapted twice), then blocks until converged; returns the kept draws
    ``(steps, walkers, d)``, steps run, acceptance, R-hat, bulk and tail ESS, and whether it converged."""
    d = center.size
    position = _start_walkers(objective, center, cov, walkers, rng)
    position_lp = None
    proposal = TProposal(center, cov, scales=(1.0, 1.5))
    total = accepted = 0
    pooled: list[FloatArray] = []
    for steps in _warmup_rounds(settings.burn_in):
        run = run_ensemble(objective, position, steps, rng=rng, start_log_prob=position_lp, proposal=proposal,
                           moves=_MOVES)  # fmt: skip
        position, position_lp = run.last
        total += steps
        accepted += run.accepted
        pooled = [*pooled[-1:], run.chain[steps // 3 :].reshape(-1, d)]
        warm = np.concatenate(pooled)
        proposal = TProposal(warm.mean(axis=0), np.cov(warm, rowvar=False) + 1e-10 * np.eye(d))
    blocks: list[FloatArray] = []
    while True:
        run = run_ensemble(objective, position, settings.check_every, rng=rng, start_log_prob=position_lp,
                           proposal=proposal, moves=_MOVES)  # fmt: skip
        position, position_lp = run.last
        blocks.append(run.chain)
        total += settings.check_every
        accepted += run.accepted
        kept = np.concatenate(blocks)
        if kept.shape[0] < 2 * settings.check_every:
            continue
        rhat, ess_b, ess_t = summarize_chains(kept)
        converged = bool(np.all(rhat <= settings.rhat_max) and np.all(np.minimum(ess_b, ess_t) >= settings.ess_min))
        if converged or total >= settings.max_steps:
            return kept, total, accepted / (total * walkers), rhat, ess_b, ess_t, converged


def _warmup_rounds(steps: int) -> tuple[int, int, int]:
    """Three adaptation rounds of growing length (1/5, 1/3, the rest of *steps*)."""
    first, second = max(10, steps // 5), max(10, steps // 3)
    return first, second, max(10, steps - first - second)


def _start_walkers(
    objective: Objective, center: FloatArray, cov: FloatArray, walkers: int, rng: np.random.Generator
) -> FloatArray:
    """Walkers from N(center, 1.5^2 cov), redrawn until each has a finite density."""
    out = np.empty((walkers, center.size))
    need = np.arange(walkers)
    for _ in range(20):
        out[need] = rng.multivariate_normal(center, 2.25 * cov, size=need.size)
        need = need[~np.isfinite(objective(out[need]))]
        if need.size == 0:
            return out
    raise ValidationError("could not place the sampler's walkers where the posterior is positive")


def update(posterior: Posterior, data: TherapyData, *, settings: FitSettings = FitSettings()) -> Posterior:
    """Identify again on new days *data*, with the earlier posterior (log-normal approximation) as the prior."""
    if data.body_weight_kg is None:
        data = data.__class__(**{**{k: getattr(data, k) for k in data.__dataclass_fields__},
                                 "body_weight_kg": posterior.body_weight_kg})  # fmt: skip
    return fit(data, posterior.as_prior(), settings=settings)
