"""Ensemble MCMC whose walkers are one batch: every step evaluates the log density of half the walkers at once.

Moves (each leaves the posterior invariant; a step picks one at random by *weights*):

- ``stretch``: the affine-invariant stretch move of Goodman J, Weare J. Ensemble samplers with affine invariance.
  Commun Appl Math Comput Sci 2010;5(1):65-80, doi:10.2140/camcos.2010.5.65 (emcee's default):
  y = x_j + z (x_k - x_j), z ~ g(z) ~ 1/sqrt(z) on [1/a, a], accepted with min(1, z^(d-1) p(y) / p(x_k)).
- ``de``: differential evolution, ter Braak CJF. A Markov chain Monte Carlo version of the genetic algorithm
  Differential Evolution. Stat Comput 2006;16:239-49, doi:10.1007/s11222-006-8769-1:
  y = x_k + gamma (x_j1 - x_j2) + e, gamma = 2.38 / sqrt(2 d) (1.0 every tenth step to jump between modes).
- ``independence``: independence Metropolis-Hastings from a fixed multivariate t proposal (4 degrees of freedom,
  heavier-tailed than the posterior it approximates), accepted with min(1, p(y) q(x) / (p(x) q(y))); with a good
  approximation (a Laplace fit, or an earlier run's moments) it decorrelates walkers in a few steps where the local
  moves need dozens (Tierney L. Markov chains for exploring posterior distributions. Ann Stat 1994;22(4):1701-28).

For the moves that use other walkers (stretch, de) the walkers are split in two halves and each half moves using the
other (Foreman-Mackey D, et al. emcee: the MCMC hammer. PASP 2013;125:306-12, doi:10.1086/670067), which keeps
detailed balance with a batched density; with only moves that do not (independence, walk) the walkers are
independent chains, all moved in one batch per step, and any number >= 2 will do. The
sampler is written once over any ``log_prob(theta (B, d)) -> (B,)``; -inf marks impossible parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray

__all__ = ["EnsembleRun", "LogProb", "TProposal", "ensemble_steps", "run_ensemble"]

LogProb = Callable[[FloatArray], FloatArray]
_STRETCH_A = 2.0
_DE_JITTER = 1e-5
_T_DF = 4.0


@dataclass(frozen=True, slots=True)
class TProposal:
    """An equal mixture of multivariate t densities (4 degrees of freedom) with location *mean* and scale matrices
    ``cov * s**2`` for s in *scales* (a wider component covers the tails of a rough first approximation)."""

    mean: FloatArray
    cov: FloatArray
    scales: tuple[float, ...] = (1.0,)

    def draw(self, n: int, rng: np.random.Generator) -> FloatArray:
        """*n* draws ``(n, d)``."""
        chol = np.linalg.cholesky(self.cov)
        scale = np.asarray(self.scales)[rng.integers(0, len(self.scales), n)]
        z = rng.standard_normal((n, self.mean.size)) @ chol.T
        w = np.sqrt(_T_DF / rng.chisquare(_T_DF, n)) * scale
        return np.asarray(self.mean + z * w[:, None], dtype=np.float64)

    def logpdf(self, x: FloatArray) -> FloatArray:
        """Log density up to a constant of each row of *x*."""
        diff = x - self.mean
        m = np.sum(diff * np.linalg.solve(self.cov, diff.T).T, axis=1)
        d = self.mean.size
        parts = [-d * np.log(s) - 0.5 * (_T_DF + d) * np.log1p(m / (s * s) / _T_DF) for s in self.scales]
        return np.asarray(np.logaddexp.reduce(parts, axis=0), dtype=np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnsembleRun:
    """Positions ``(steps, walkers, d)``, log densities ``(steps, walkers)``, and the final state."""

    chain: FloatArray
    log_prob: FloatArray
    accepted: int
    proposed: int
    evaluations: int

    @property
    def acceptance(self) -> float:
        """Fraction of proposals accepted."""
        return self.accepted / max(1, self.proposed)

    @property
    def last(self) -> tuple[FloatArray, FloatArray]:
        """Final positions and their log densities (to continue the run)."""
        return self.chain[-1].copy(), self.log_prob[-1].copy()


def _propose(
    move: str, x: FloatArray, others: FloatArray, rng: np.random.Generator, step: int, proposal: TProposal | None
) -> tuple[FloatArray, FloatArray]:
    """Proposals for the walkers *x* from the complementary walkers *others*; returns (y, log Hastings factor)."""
    n, d = x.shape
    if move == "independence" and proposal is not None:
        y = proposal.draw(n, rng)
        return y, proposal.logpdf(x) - proposal.logpdf(y)
    if move == "walk" and proposal is not None:
        chol = np.linalg.cholesky(proposal.cov) * (2.38 / np.sqrt(d))
        return x + rng.standard_normal((n, d)) @ chol.T, np.zeros(n)
    if move == "stretch":
        z = np.asarray(((_STRETCH_A - 1.0) * rng.random(n) + 1.0) ** 2 / _STRETCH_A, dtype=np.float64)
        partner = others[rng.integers(0, others.shape[0], n)]
        return partner + z[:, None] * (x - partner), (d - 1.0) * np.log(z)
    gamma = 1.0 if step % 10 == 9 else 2.38 / np.sqrt(2.0 * d)
    i1 = rng.integers(0, others.shape[0], n)
    i2 = (i1 + rng.integers(1, others.shape[0], n)) % others.shape[0]
    y = x + gamma * (others[i1] - others[i2]) + _DE_JITTER * rng.standard_normal((n, d))
    return y, np.zeros(n)


def ensemble_steps(
    start: FloatArray,
    steps: int,
    *,
    rng: np.random.Generator,
    start_log_prob: FloatArray | None = None,
    moves: tuple[tuple[str, float], ...] = (("de", 0.8), ("stretch", 0.2)),
    proposal: TProposal | None = None,
) -> Generator[FloatArray, FloatArray, EnsembleRun]:
    """:func:`run_ensemble` as a generator: it yields each batch of points ``(n, d)`` whose log densities it needs and
    is sent them back ``(n,)``; its return value is the run. A caller can so advance many runs in lockstep and
    evaluate all their batches at once (``medtwin.glucose.identify.fit_cohort``)."""
    walkers, d = start.shape
    names = [m for m, _ in moves]
    if any(m not in ("stretch", "de", "independence", "walk") for m in names):
        raise ValidationError(f"ensemble: unknown moves {names} (stretch, de, independence, walk)")
    independent = all(m in ("independence", "walk") for m in names)
    if independent and walkers < 2:
        raise ValidationError(f"ensemble: need >= 2 walkers, got {walkers}")
    if not independent and (walkers < 2 * d + 2 or walkers % 2):
        raise ValidationError(f"ensemble: need an even number of walkers >= 2 d + 2 = {2 * d + 2}, got {walkers}")
    if ("independence" in names or "walk" in names) and proposal is None:
        raise ValidationError("ensemble: the independence and walk moves need a proposal")
    weights = np.array([w for _, w in moves], dtype=np.float64)
    x = np.array(start, dtype=np.float64)
    if start_log_prob is None:
        lp = np.array((yield x.copy()), dtype=np.float64)
    else:
        lp = np.array(start_log_prob, dtype=np.float64)
    evaluations = 0 if start_log_prob is not None else walkers
    if not np.all(np.isfinite(lp)):
        raise ValidationError(f"ensemble: {int(np.sum(~np.isfinite(lp)))} starting walkers have zero density")
    chain = np.empty((steps, walkers, d))
    chain_lp = np.empty((steps, walkers))
    # moves that use the other walkers update one half from the other; moves that do not (independence, walk) update
    # every walker at once: independent chains, one batch per step
    half = walkers // 2
    halves = (np.arange(walkers),) if independent else (np.arange(half), np.arange(half, walkers))
    accepted = 0
    for s in range(steps):
        move = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        for which in range(len(halves)):
            own, other = halves[which], halves[-1 - which]
            y, log_factor = _propose(move, x[own], x[other], rng, s, proposal)
            lp_y = np.asarray((yield y), dtype=np.float64)
            evaluations += own.size
            ok = np.log(rng.random(own.size)) < lp_y - lp[own] + log_factor
            ok &= np.isfinite(lp_y)
            x[own[ok]] = y[ok]
            lp[own[ok]] = lp_y[ok]
            accepted += int(ok.sum())
        chain[s] = x
        chain_lp[s] = lp
    return EnsembleRun(
        chain=chain, log_prob=chain_lp, accepted=accepted, proposed=steps * walkers, evaluations=evaluations
    )


def run_ensemble(
    log_prob: LogProb,
    start: FloatArray,
    steps: int,
    *,
    rng: np.random.Generator,
    start_log_prob: FloatArray | None = None,
    moves: tuple[tuple[str, float], ...] = (("de", 0.8), ("stretch", 0.2)),
    proposal: TProposal | None = None,
) -> EnsembleRun:
    """Run the ensemble from *start* ``(walkers, d)`` for *steps* steps (see the module docstring); the
    ``independence`` move needs *proposal*."""
    run = ensemble_steps(start, steps, rng=rng, start_log_prob=start_log_prob, moves=moves, proposal=proposal)
    try:
        points = next(run)
        while True:
            points = run.send(log_prob(points))
    except StopIteration as done:
        result: EnsembleRun = done.value
        return result
