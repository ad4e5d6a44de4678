"""MAP estimation for many patients at once (cohorts, virtual trials, benchmarks).

Same objective as :func:`medtwin.dosing.map_estimate` (posologyr's OFV), but every patient of a
cohort is optimized simultaneously: each Newton iteration evaluates, in one vectorized call of
the exact solver, the OFV of every patient on a finite-difference stencil (gradient and Hessian),
takes a damped Newton step (Hessian eigenvalues floored so the step always descends) with a
batched backtracking line search.  Start points come from a batched screen of candidate etas
(the prior mean, +/-1 SD per axis and seeded prior draws), as in the single-patient fit.

Patients share the dose structure (same number of IV doses and infusion durations); dose times,
amounts, covariates, level times and values are per patient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medtwin.dosing.model import PKModel
from medtwin.errors import ValidationError
from medtwin.sim.linear import InputSchedule, output_values

__all__ = [
    "CohortData",
    "CohortMapResult",
    "RowObjective",
    "fd_gradient_hessian",
    "fd_stencil",
    "laplace_from_hessian",
    "map_estimate_cohort",
    "newton_minimize",
    "screen_candidates",
]

FloatArray = npt.NDArray[np.float64]
_STEP = 1e-4
_ALPHAS = np.array([1.0, 0.5, 0.25, 0.1, 0.02])


@dataclass(frozen=True, slots=True)
class CohortData:
    """Data of *P* patients: covariates ``(P,)``, doses ``(P, D)``, levels ``(P, J)``."""

    covariates: Mapping[str, FloatArray]
    dose_time_h: FloatArray
    dose_amount_mg: FloatArray
    dose_duration_h: FloatArray
    level_time_h: FloatArray
    level_mg_l: FloatArray

    def __post_init__(self) -> None:
        P = self.dose_time_h.shape[0]
        if self.dose_amount_mg.shape != self.dose_time_h.shape:
            raise ValidationError("CohortData: dose_amount_mg must have the shape of dose_time_h")
        if self.level_time_h.shape != self.level_mg_l.shape or self.level_time_h.shape[0] != P:
            raise ValidationError("CohortData: level arrays must be (P, J) like each other")
        for name, v in self.covariates.items():
            if np.shape(v) != (P,):
                raise ValidationError(f"CohortData: covariate {name} must have shape ({P},)")
        if np.any(self.level_time_h < self.dose_time_h.min(axis=1, keepdims=True)):
            raise ValidationError("CohortData: a level is before the patient's first dose")
        if np.any(self.dose_amount_mg < 0):
            raise ValidationError("CohortData: negative dose amount")

    @property
    def n_patients(self) -> int:
        """Number of patients P."""
        return int(self.dose_time_h.shape[0])


@dataclass(frozen=True, slots=True)
class CohortMapResult:
    """MAP etas ``(P, k)``, OFVs ``(P,)``, Laplace covariances ``(P, k, k)`` and convergence."""

    eta: FloatArray
    ofv: FloatArray
    covariance: FloatArray
    converged: npt.NDArray[np.bool_]
    iterations: int


def _ofv(model: PKModel, data: CohortData, eta: FloatArray, omega_inv: FloatArray) -> FloatArray:
    """OFV of every patient at M points each: *eta* ``(P, M, k)`` -> ``(P, M)``."""
    P, M, k = eta.shape
    flat = eta.reshape(P * M, k)
    cov = {name: np.repeat(v, M) for name, v in data.covariates.items()}
    system = model.system(cov, flat)
    inputs = InputSchedule(
        time=np.repeat(data.dose_time_h, M, axis=0),
        amount=np.repeat(data.dose_amount_mg, M, axis=0),
        duration=data.dose_duration_h,
        compartment=np.full(data.dose_duration_h.shape, system.central, dtype=np.int64),
        ss_interval=np.zeros(data.dose_duration_h.shape),
    )
    with np.errstate(over="ignore", invalid="ignore"):
        f = output_values(system.modal, inputs, system.weights, np.repeat(data.level_time_h, M, 0))
        g = np.maximum(model.error.sd(f), 1e-12)
        y = np.repeat(data.level_mg_l, M, axis=0)
        res = np.sum(((y - f) / g) ** 2 + np.log(g**2), axis=1)
    prior = np.einsum("bi,ij,bj->b", flat, omega_inv, flat)
    out = (res + prior).reshape(P, M)
    return np.where(np.isfinite(out), out, np.inf)


def fd_stencil(k: int, h: float) -> tuple[FloatArray, list[tuple[int, int]]]:
    """Offsets of the central finite-difference stencil for gradient and Hessian in *k* dims."""
    pts = [np.zeros(k)]
    for i in range(k):
        for s in (1.0, -1.0):
            p = np.zeros(k)
            p[i] = s * h
            pts.append(p)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    for i, j in pairs:
        for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            p = np.zeros(k)
            p[i], p[j] = si * h, sj * h
            pts.append(p)
    return np.asarray(pts), pairs


def fd_gradient_hessian(v: FloatArray, k: int, pairs: list[tuple[int, int]], h: float) -> tuple[FloatArray, FloatArray]:
    """Gradients ``(P, k)`` and Hessians ``(P, k, k)`` from values *v* on :func:`fd_stencil`."""
    P = v.shape[0]
    f0 = v[:, 0]
    plus, minus = v[:, 1 : 2 * k + 1 : 2], v[:, 2 : 2 * k + 2 : 2]
    grad = (plus - minus) / (2 * h)
    H = np.zeros((P, k, k))
    idx = np.arange(k)
    H[:, idx, idx] = (plus - 2 * f0[:, None] + minus) / h**2
    base = 1 + 2 * k
    for n, (i, j) in enumerate(pairs):
        fpp, fpm, fmp, fmm = (v[:, base + 4 * n + q] for q in range(4))
        H[:, i, j] = H[:, j, i] = (fpp - fpm - fmp + fmm) / (4 * h**2)
    return grad, H


RowObjective = Callable[[npt.NDArray[np.intp], FloatArray], FloatArray]


def newton_minimize(
    fun_rows: RowObjective,
    starts: FloatArray,
    *,
    max_iter: int = 60,
    gtol: float = 1e-5,
    h: float = _STEP,
) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_], int]:
    """Minimize P independent smooth objectives from *starts* ``(P, k)`` by damped Newton steps.

    ``fun_rows(rows, points)`` evaluates the objectives of problems *rows* at *points*
    ``(len(rows), M, k)`` and returns ``(len(rows), M)``.  Gradient and Hessian come from a central
    finite-difference stencil (step *h*) evaluated in one call; Hessian eigenvalues are floored at
    a small positive value so each step descends; a batched backtracking line search picks the step
    length.  Returns (argmin, minimum, Hessian there, converged, iterations).
    """
    P, k = starts.shape
    eta = starts.astype(np.float64).copy()
    stencil, pairs = fd_stencil(k, h)
    finished = np.zeros(P, dtype=bool)
    converged = np.zeros(P, dtype=bool)
    ofv = np.full(P, np.inf)
    H = np.zeros((P, k, k))
    n_alpha = _ALPHAS.size
    # stencil values around the current point; refreshed by a separate call only for rows whose
    # line search did not take the full Newton step (its stencil is evaluated with the trials)
    cached = np.full((P, stencil.shape[0]), np.nan)
    iterations = 0
    for it in range(1, max_iter + 1):
        idx = np.flatnonzero(~finished)
        if idx.size == 0:
            break
        iterations = it
        stale = idx[np.isnan(cached[idx, 0])]
        if stale.size:
            cached[stale] = fun_rows(stale, eta[stale][:, None, :] + stencil[None])
        vals = cached[idx]
        grad, hess = fd_gradient_hessian(vals, k, pairs, h)
        H[idx] = hess
        ofv[idx] = vals[:, 0]
        gmax = np.max(np.abs(grad), axis=1)
        done = gmax < gtol
        w, V = np.linalg.eigh(hess)
        w = np.maximum(np.abs(w), 1e-6 * np.maximum(np.abs(w).max(axis=1, keepdims=True), 1.0))
        step = -np.einsum("pij,pj,pkj,pk->pi", V, 1.0 / w, V, grad)
        trial = eta[idx][:, None, :] + _ALPHAS[None, :, None] * step[:, None, :]
        ahead = (eta[idx] + step)[:, None, :] + stencil[None]
        tv_all = fun_rows(idx, np.concatenate([trial, ahead], axis=1))
        tv = tv_all[:, :n_alpha]
        rows = np.arange(idx.size)
        best = np.argmin(tv, axis=1)
        best_v = tv[rows, best]
        improve = (best_v < vals[:, 0]) & ~done
        new_eta = eta[idx].copy()
        new_eta[improve] = trial[rows, best][improve]
        ofv[idx] = np.where(improve, best_v, vals[:, 0])
        stalled = ~improve | (np.max(np.abs(new_eta - eta[idx]), axis=1) < 1e-10)
        eta[idx] = new_eta
        full_step = improve & (best == 0)
        cached[idx[full_step]] = tv_all[full_step, n_alpha:]
        cached[idx[improve & ~full_step]] = np.nan
        finished[idx[done | stalled]] = True
        converged[idx[done | (stalled & (gmax < 1e-3))]] = True
    return eta, ofv, H, converged, iterations


def laplace_from_hessian(H: FloatArray) -> FloatArray:
    """Posterior covariances ``2 H^-1`` (eigenvalues floored), for Hessians ``(P, k, k)`` of OFV."""
    w, V = np.linalg.eigh((H + np.swapaxes(H, 1, 2)) / 2)
    w = np.maximum(w, 1e-8)
    return np.asarray(np.einsum("pij,pj,pkj->pik", V, 2.0 / w, V), dtype=np.float64)


def screen_candidates(
    fun_rows: RowObjective, n_problems: int, omega: FloatArray, n_candidates: int, seed: int
) -> tuple[FloatArray, FloatArray]:
    """Candidate etas (0, +/-1 SD per axis, seeded prior draws) and their values ``(P, C)``."""
    k = omega.shape[0]
    sd = np.sqrt(np.diag(omega))
    rng = np.random.default_rng(seed)
    cands = [np.zeros(k)]
    for i in range(k):
        for s in (1.0, -1.0):
            c = np.zeros(k)
            c[i] = s * sd[i]
            cands.append(c)
    cand = np.vstack([cands, rng.multivariate_normal(np.zeros(k), omega, size=n_candidates)])
    pts = np.broadcast_to(cand, (n_problems, *cand.shape)).copy()
    return cand, fun_rows(np.arange(n_problems), pts)


def map_estimate_cohort(
    model: PKModel,
    data: CohortData,
    *,
    n_candidates: int = 8,
    max_iter: int = 60,
    gtol: float = 1e-5,
    seed: int = 0,
) -> CohortMapResult:
    """MAP etas of every patient in *data* (vectorized damped Newton, see the module docstring)."""
    omega_inv = np.asarray(np.linalg.inv(model.omega), dtype=np.float64)

    def fun_rows(rows: npt.NDArray[np.intp], points: FloatArray) -> FloatArray:
        return _ofv(model, _subset(data, rows), np.asarray(points, dtype=np.float64), omega_inv)

    cand, values = screen_candidates(fun_rows, data.n_patients, model.omega, n_candidates, seed)
    starts = cand[np.argmin(values, axis=1)]
    eta, ofv, H, converged, it = newton_minimize(fun_rows, starts, max_iter=max_iter, gtol=gtol)
    return CohortMapResult(eta=eta, ofv=ofv, covariance=laplace_from_hessian(H), converged=converged, iterations=it)


def _subset(data: CohortData, rows: npt.NDArray[np.intp]) -> CohortData:
    if rows.size == data.n_patients:
        return data
    mask = rows
    return CohortData(
        covariates={k: v[mask] for k, v in data.covariates.items()},
        dose_time_h=data.dose_time_h[mask],
        dose_amount_mg=data.dose_amount_mg[mask],
        dose_duration_h=data.dose_duration_h,
        level_time_h=data.level_time_h[mask],
        level_mg_l=data.level_mg_l[mask],
    )
