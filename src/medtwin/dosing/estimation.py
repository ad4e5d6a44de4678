"""Bayesian personalization: MAP estimation, Laplace approximation and sampling-importance-resampling.

The MAP objective is posologyr's (Leven et al., Pharmaceutics 2022;14:442, doi:10.3390/pharmaceutics14020442):

    OFV(eta) = sum_j [((y_j - f_j) / g_j)^2 + ln(g_j^2)] + eta' Omega^-1 eta

with ``g_j`` the residual SD at prediction ``f_j`` (error-model convention declared per model).
``OFV = -2 ln p(eta | y) + const``, so the Laplace posterior covariance is ``2 H^-1`` with ``H``
the Hessian of OFV at the mode.  SIR follows Dosne et al. (J Pharmacokinet Pharmacodyn
2016;43:583-596, doi:10.1007/s10928-016-9487-8): proposals from a multivariate t centred on the
mode with the Laplace covariance, importance weights ``exp(-OFV/2) / q``, resampling without
replacement.

Optimization is multi-start: OFV is evaluated on a batch of candidate points (the prior mean,
+/-1 SD along each eta, seeded prior draws) in one vectorized call, then damped Newton runs
(:func:`medtwin.dosing.population.newton_minimize`) from the prior mean and the best candidates
at once, with gradient and Hessian from one batched finite-difference stencil per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from medtwin.dosing.model import PKModel
from medtwin.dosing.population import (
    fd_gradient_hessian,
    fd_stencil,
    laplace_from_hessian,
    newton_minimize,
    screen_candidates,
)
from medtwin.dosing.regimen import (
    Covariates,
    Dose,
    covariates_at,
    expand_doses,
    is_time_varying,
    predict_concentrations,
    predict_system,
    schedule_for,
)
from medtwin.errors import ValidationError
from medtwin.sim.linear import InputSchedule, output_values

__all__ = [
    "Level",
    "MapResult",
    "SirResult",
    "laplace_covariance",
    "map_estimate",
    "objective",
    "sir_sample",
]

FloatArray = npt.NDArray[np.float64]
_HESS_STEP = 1e-3


@dataclass(frozen=True, slots=True)
class Level:
    """A measured drug concentration (mg/L) at *time_h* hours from the case origin."""

    time_h: float
    value_mg_l: float
    observation_id: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_h) and math.isfinite(self.value_mg_l)):
            raise ValidationError(f"level at t={self.time_h} h: time and value must be finite")
        if self.value_mg_l < 0:
            raise ValidationError(f"level at t={self.time_h} h: negative concentration")


@dataclass(frozen=True, slots=True)
class MapResult:
    """MAP estimate: *eta*, *ofv*, Laplace *covariance* of eta and diagnostics."""

    eta: FloatArray
    ofv: float
    covariance: FloatArray
    parameters: Mapping[str, float]
    predictions_mg_l: FloatArray
    converged: bool
    n_starts: int
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class SirResult:
    """Posterior samples of eta from SIR, with the effective sample size of the weights."""

    samples: FloatArray
    effective_sample_size: float
    n_proposals: int


def _check_levels(doses: Sequence[Dose], levels: Sequence[Level]) -> None:
    if not levels:
        return
    if not doses:
        raise ValidationError("levels were given but no dose: cannot fit a PK model")
    first = min(d.time_h for d in doses)
    for lv in levels:
        if lv.time_h < first:
            raise ValidationError(
                f"level {lv.value_mg_l} mg/L at t={lv.time_h} h is before the first dose "
                f"(t={first} h); check the times (pre-dose levels must be 0 for this model)"
            )


def objective(
    model: PKModel,
    covariates: Covariates,
    doses: Sequence[Dose],
    levels: Sequence[Level],
    etas: npt.ArrayLike,
) -> FloatArray:
    """posologyr MAP objective for a batch of etas ``(B, n_eta)``, shape ``(B,)``."""
    eta = np.atleast_2d(np.asarray(etas, dtype=np.float64))
    prior = np.einsum("bi,ij,bj->b", eta, np.linalg.inv(model.omega), eta)
    if not levels:
        return np.asarray(prior, dtype=np.float64)
    times = np.array([lv.time_h for lv in levels])
    y = np.array([lv.value_mg_l for lv in levels])
    f = predict_concentrations(model, covariates, doses, times, eta)
    g = np.maximum(model.error.sd(f), 1e-12)
    return np.asarray(np.sum(((y - f) / g) ** 2 + np.log(g**2), axis=1) + prior, dtype=np.float64)


class _Batched:
    """OFV closure over one patient's data, evaluated on a batch of etas."""

    def __init__(
        self,
        model: PKModel,
        covariates: Covariates,
        doses: Sequence[Dose],
        levels: Sequence[Level],
    ) -> None:
        self.model, self.covariates, self.doses, self.levels = model, covariates, doses, levels
        self.omega_inv = np.linalg.inv(model.omega)
        self.times = np.array([lv.time_h for lv in levels])
        self.y = np.array([lv.value_mg_l for lv in levels])
        self.expanded = expand_doses(doses)
        # without lag or bioavailability the input schedule does not depend on eta: build it once
        self.fixed_inputs = model.lag is None and model.bioavailability is None
        self.inputs: InputSchedule | None = None
        self.time_varying = is_time_varying(covariates)

    def predict(self, eta: FloatArray) -> FloatArray:
        if self.time_varying:
            return predict_concentrations(self.model, self.covariates, self.doses, self.times, eta)
        system = self.model.system(self.covariates, eta)
        inputs = self.inputs
        if inputs is None:
            inputs = schedule_for(system, self.expanded)
            if self.fixed_inputs:
                self.inputs = inputs
        return output_values(system.modal, inputs, system.weights, self.times)

    def __call__(self, eta: FloatArray) -> FloatArray:
        prior = np.einsum("bi,ij,bj->b", eta, self.omega_inv, eta)
        if self.y.size == 0:
            return np.asarray(prior, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            f = self.predict(eta)
            g = np.maximum(self.model.error.sd(f), 1e-12)
            out = np.sum(((self.y - f) / g) ** 2 + np.log(g**2), axis=1) + prior
        return np.where(np.isfinite(out), out, np.inf)


def laplace_covariance(
    model: PKModel,
    covariates: Covariates,
    doses: Sequence[Dose],
    levels: Sequence[Level],
    eta: npt.ArrayLike,
    *,
    h: float = _HESS_STEP,
) -> FloatArray:
    """Laplace posterior covariance ``2 H^-1`` of eta, H the finite-difference Hessian of OFV at *eta*."""
    fun = _Batched(model, covariates, doses, levels)
    x = np.asarray(eta, dtype=np.float64)
    k = x.size
    stencil, pairs = fd_stencil(k, h)
    vals = fun(x[None, :] + stencil)[None, :]
    _, H = fd_gradient_hessian(vals, k, pairs, h)
    return np.asarray(laplace_from_hessian(H)[0], dtype=np.float64)


def map_estimate(
    model: PKModel,
    covariates: Covariates,
    doses: Sequence[Dose],
    levels: Sequence[Level],
    *,
    n_starts: int = 2,
    n_candidates: int = 16,
    seed: int = 0,
) -> MapResult:
    """Maximum a posteriori etas for one patient (multi-start damped Newton on the posologyr OFV).

    Parameters
    ----------
    n_starts
        Number of Newton runs, from the best candidate points (the prior mean is always one).
    n_candidates
        Seeded prior draws added to the candidate set (besides 0 and +/-1 SD per axis).
    """
    _check_levels(doses, levels)
    fun = _Batched(model, covariates, doses, levels)
    k = len(model.eta_names)

    def fun_rows(rows: npt.NDArray[np.intp], points: FloatArray) -> FloatArray:
        return fun(points.reshape(-1, k)).reshape(points.shape[:2])

    cand, values = screen_candidates(fun_rows, 1, model.omega, n_candidates, seed)
    order = [0] + [int(i) for i in np.argsort(values[0]) if i != 0]
    starts = cand[order[: max(n_starts, 1)]]
    etas, ofvs, hess, conv, _ = newton_minimize(fun_rows, starts)
    best = int(np.argmin(ofvs))
    eta, ofv, converged = etas[best], float(ofvs[best]), bool(conv[best])
    warnings: list[str] = []
    if not converged:
        warnings.append("MAP optimizer did not converge; estimates may be imprecise")
    for val, x in zip(ofvs, etas, strict=True):
        if np.max(np.abs(x - eta)) > 1e-2 and val - ofv < 2.0:
            warnings.append(
                "the posterior has more than one mode (another start ended at "
                f"eta={np.round(x, 4).tolist()}, OFV {val:.3f} vs {ofv:.3f})"
            )
            break
    cov = laplace_from_hessian(hess[best : best + 1])[0]
    last_t = max([lv.time_h for lv in levels] + [d.time_h for d in doses])
    system = predict_system(model, covariates_at(covariates, last_t), eta[None, :])
    params = {name: float(v[0]) for name, v in system.parameters.items()}
    preds = (
        predict_concentrations(model, covariates, doses, [lv.time_h for lv in levels], eta[None, :])[0]
        if levels
        else np.zeros(0)
    )
    return MapResult(
        eta=eta,
        ofv=ofv,
        covariance=cov,
        parameters=params,
        predictions_mg_l=preds,
        converged=converged,
        n_starts=len(starts),
        warnings=tuple(warnings),
    )


def sir_sample(
    model: PKModel,
    covariates: Covariates,
    doses: Sequence[Dose],
    levels: Sequence[Level],
    fit: MapResult,
    *,
    n_proposals: int = 4000,
    n_samples: int = 1000,
    df: float = 5.0,
    seed: int = 0,
) -> SirResult:
    """Posterior samples of eta by sampling-importance-resampling around the MAP estimate."""
    if n_samples > n_proposals:
        raise ValidationError("sir_sample: n_samples must not exceed n_proposals")
    fun = _Batched(model, covariates, doses, levels)
    k = fit.eta.size
    rng = np.random.default_rng(seed)
    scale = fit.covariance
    L = np.linalg.cholesky(scale)
    z = rng.standard_normal((n_proposals, k))
    chi = rng.chisquare(df, size=(n_proposals, 1))
    props = fit.eta + (z @ L.T) * np.sqrt(df / chi)
    dev = np.linalg.solve(L, (props - fit.eta).T).T
    log_q = -0.5 * (df + k) * np.log1p(np.sum(dev**2, axis=1) / df)
    log_p = -0.5 * fun(props)
    log_w = log_p - log_q
    log_w -= np.max(log_w[np.isfinite(log_w)])
    w = np.where(np.isfinite(log_w), np.exp(log_w), 0.0)
    w /= w.sum()
    ess = float(1.0 / np.sum(w**2))
    n_pos = int(np.count_nonzero(w))
    idx = rng.choice(n_proposals, size=min(n_samples, n_pos), replace=False, p=w)
    return SirResult(samples=props[idx], effective_sample_size=ess, n_proposals=n_proposals)
