"""Which UVA/Padova parameters a person's CGM, insulin and meal records can identify, decided over the 30 virtual
patients.

For each virtual patient the analysis simulates the records of therapy A (:mod:`medtwin.glucose.insilico`) and
computes, at the true parameters, the sensitivity of CGM to every candidate parameter (central differences in log
space; logit for b, :data:`~medtwin.glucose.twin_model.LOGIT_PARAMETERS`). With the CGM error as an
Ornstein-Uhlenbeck process (SD *sigma*, correlation time *tau*: simglucose's Dexcom noise has SD 11 mg/dL and a
15-minute autocorrelation of 0.71, i.e. tau ~ 44 min) the whitened sensitivities
give the Fisher information. For a set K of identified parameters, the others fixed at the population values,
the linearised Bayesian estimate has error

    delta_K = (A_KK + P_K)^-1 [P_K (mu_K - theta_K) - A_KF (mu_F - theta_F)] + noise, cov (A_KK + P_K)^-1

(A the Fisher information, P_K the prior precision, mu the population means), and the replay of therapy B
(sensitivities S_B at the truth) errs by S_B,K delta_K + S_B,F (mu_F - theta_F). Parameters are added greedily,
each time the one that lowers the median expected replay RMSE over the patients most, while it gains at least
0.5 mg/dL and keeps the collinearity index of the set at most 20; the report also gives each parameter's
sensitivity, prior and posterior SD (shrinkage) and the collinearity index of the chosen set (Brun R, Reichert P,
Kuensch HR. Practical identifiability analysis of large environmental simulation models. Water Resour Res
2001;37(4):1015-30, doi:10.1029/2000WR900350: gamma = 1 / sqrt(min eigenvalue of the normalised S^T S); gamma
below 10-15 means the set is identifiable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtwin.glucose.insilico import simulate_therapy_a
from medtwin.glucose.therapy import Therapy, apply_therapy
from medtwin.glucose.therapy_data import TherapyData
from medtwin.glucose.twin_model import (
    CANDIDATE_PARAMETERS,
    PersonalModel,
    population_prior,
    population_values,
    to_unconstrained,
)
from medtwin.sim.model import FloatArray

__all__ = ["IdentifiabilityReport", "analyse_identifiability", "collinearity_index", "ou_whiten", "sensitivities"]


def sensitivities(
    model: PersonalModel, data: TherapyData, theta: FloatArray, t_min: FloatArray, *, step: float = 0.02
) -> tuple[FloatArray, FloatArray]:
    """BG at times *t_min* for log parameters *theta* and its derivatives ``(len(t_min), dim)`` (central
    differences of size *step* in log space, all simulated in one batch), from the basal steady state."""
    d = theta.size
    batch = np.repeat(theta[None, :], 2 * d + 1, axis=0)
    for j in range(d):
        batch[1 + 2 * j, j] += step
        batch[2 + 2 * j, j] -= step
    _, gb = model.parameters(batch)
    bg = model.simulate(batch, data, initial_glucose_mg_dl=gb, minutes=int(np.ceil(t_min.max())))
    at = bg[np.rint(t_min).astype(np.int64)]
    return at[:, 0], (at[:, 1::2] - at[:, 2::2]) / (2.0 * step)


def ou_whiten(values: FloatArray, t_min: FloatArray, tau_min: float) -> FloatArray:
    """Rows of *values* made independent under Ornstein-Uhlenbeck noise of correlation time *tau_min*:
    ``(v_i - rho_i v_(i-1)) / sqrt(1 - rho_i^2)`` with ``rho_i = exp(-(t_i - t_(i-1)) / tau)``."""
    rho = np.exp(-np.diff(t_min) / tau_min)
    scale = 1.0 / np.sqrt(1.0 - rho**2)
    v = np.asarray(values, dtype=np.float64)
    shape = (-1,) + (1,) * (v.ndim - 1)
    out = np.empty_like(v)
    out[0] = v[0]
    out[1:] = (v[1:] - rho.reshape(shape) * v[:-1]) * scale.reshape(shape)
    return out


def collinearity_index(s: FloatArray) -> float:
    """Brun et al. (2001) collinearity index of the columns of the sensitivity matrix *s*."""
    norms = np.linalg.norm(s, axis=0)
    normalised = s / np.where(norms > 0, norms, 1.0)
    lam = np.linalg.eigvalsh(normalised.T @ normalised)
    return float(1.0 / np.sqrt(max(lam[0], 1e-300)))


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifiabilityReport:
    """Per-parameter statistics (medians over patients) and the greedy selection path."""

    candidates: tuple[str, ...]
    sensitivity_mg_dl: dict[str, float]
    prior_sd: dict[str, float]
    posterior_sd_alone: dict[str, float]
    path: tuple[tuple[str, float, float], ...]
    """(parameter added, median expected replay RMSE of therapy B in mg/dL, median collinearity index)."""
    selected: tuple[str, ...]
    patients: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "candidates": list(self.candidates), "sensitivity_mg_dl": self.sensitivity_mg_dl,
            "prior_sd": self.prior_sd, "posterior_sd_alone": self.posterior_sd_alone,
            "path": [list(p) for p in self.path], "selected": list(self.selected), "patients": self.patients,
            "settings": self.settings,
        }  # fmt: skip


def _replay_error(
    k: list[int], a: FloatArray, s_b: FloatArray, prior_cov: FloatArray, delta_prior: FloatArray
) -> float:
    """Expected replay RMSE (linearised) when the parameters *k* are estimated and the others fixed."""
    f = [j for j in range(a.shape[0]) if j not in k]
    p_k = np.linalg.inv(prior_cov[np.ix_(k, k)])
    h = a[np.ix_(k, k)] + p_k
    cov = np.linalg.inv(h)
    rhs = p_k @ delta_prior[k] - a[np.ix_(k, f)] @ delta_prior[f]
    delta_k = cov @ rhs
    mean = s_b[:, k] @ delta_k + s_b[:, f] @ delta_prior[f]
    var = np.einsum("ij,jk,ik->i", s_b[:, k], cov, s_b[:, k])
    return float(np.sqrt(np.mean(mean**2 + var)))


def analyse_identifiability(
    names: Sequence[str],
    *,
    therapy_b: Therapy = Therapy(name="boluses x1.3", bolus_scale=1.3),
    candidates: Sequence[str] = CANDIDATE_PARAMETERS,
    days: int = 2,
    seed: int = 1,
    sigma_mg_dl: float = 11.0,
    tau_min: float = 44.0,
    max_parameters: int = 12,
    min_gain_mg_dl: float = 0.5,
    max_collinearity: float = 20.0,
) -> IdentifiabilityReport:
    """Run the analysis of the module docstring over the virtual patients *names* (leave-one-out priors).

    ``selected`` is the path up to the first step that lowers the expected replay RMSE by less than *min_gain_mg_dl*
    or makes the set's collinearity index exceed *max_collinearity*.
    """
    sim = simulate_therapy_a(names, days=days, seed=seed)
    truth = population_values(sim.cohort.names)
    per_patient = []
    for b, name in enumerate(sim.cohort.names):
        group = name.split("#")[0]
        prior = population_prior(group, identified=candidates, exclude=[name])
        data = sim.data[b]
        model = PersonalModel(prior, body_weight_kg=float(truth["BW"][b]), basal_u_h=float(data.basal_u_h[0]))
        theta = to_unconstrained(candidates, np.array([truth[c][b] for c in candidates]))
        _, s_a = sensitivities(model, data, theta, data.cgm_t_min)
        _, s_b = sensitivities(model, apply_therapy(data, therapy_b), theta, np.arange(0.0, data.duration_min, 5.0))
        w = ou_whiten(s_a, data.cgm_t_min, tau_min) / sigma_mg_dl
        per_patient.append((w.T @ w, s_a, s_b, prior.cov, prior.mean - theta))
    d = len(candidates)
    sens = {c: float(np.median([np.sqrt(np.mean(pp[1][:, j] ** 2)) for pp in per_patient])) for j, c in
            enumerate(candidates)}  # fmt: skip
    prior_sd = {c: float(np.median([np.sqrt(pp[3][j, j]) for pp in per_patient])) for j, c in enumerate(candidates)}
    alone = {c: float(np.median([1.0 / np.sqrt(pp[0][j, j] + 1.0 / pp[3][j, j]) for pp in per_patient]))
             for j, c in enumerate(candidates)}  # fmt: skip
    chosen: list[int] = [list(candidates).index("Gb")] if "Gb" in candidates else []
    path: list[tuple[str, float, float]] = []
    if chosen:
        err = float(np.median([_replay_error(chosen, pp[0], pp[2], pp[3], pp[4]) for pp in per_patient]))
        path.append(("Gb", err, 1.0))
    while len(chosen) < min(max_parameters, d):
        best: tuple[float, int] | None = None
        for j in range(d):
            if j in chosen:
                continue
            err = float(np.median([_replay_error([*chosen, j], pp[0], pp[2], pp[3], pp[4]) for pp in per_patient]))
            if best is None or err < best[0]:
                best = (err, j)
        assert best is not None
        chosen.append(best[1])
        gamma = float(np.median([collinearity_index(pp[1][:, chosen]) for pp in per_patient]))
        path.append((candidates[best[1]], best[0], gamma))
    stop = len(path)
    for k in range(1, len(path)):
        if path[k - 1][1] - path[k][1] < min_gain_mg_dl or path[k][2] > max_collinearity:
            stop = k
            break
    return IdentifiabilityReport(
        candidates=tuple(candidates), sensitivity_mg_dl=sens, prior_sd=prior_sd, posterior_sd_alone=alone,
        path=tuple(path), selected=tuple(p[0] for p in path[:stop]), patients=len(per_patient),
        settings={"therapy_b": therapy_b.to_dict(), "days": days, "seed": seed, "sigma_mg_dl": sigma_mg_dl,
                  "tau_min": tau_min, "min_gain_mg_dl": min_gain_mg_dl, "max_collinearity": max_collinearity},
    )  # fmt: skip
