"""Convergence diagnostics of MCMC chains: rank-normalised split R-hat and bulk/tail effective sample size.

Source: Vehtari A, Gelman A, Simpson D, Carpenter B, Buerkner P-C. Rank-normalization, folding, and
localization: an improved R-hat for assessing convergence of MCMC. Bayesian Anal 2021;16(2):667-718,
doi:10.1214/20-BA1221 (the definitions Stan and ArviZ use): chains are split in halves; R-hat is the larger of the
rank-normalised and the folded rank-normalised split R-hat; ESS uses the multi-chain autocorrelation with Geyer's
initial monotone sequence. Chains are ``(draws, chains)`` per parameter (for an ensemble: one chain per walker).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray

__all__ = ["bulk_ess", "rank_normalized_rhat", "summarize_chains", "tail_ess"]


def _split(x: FloatArray) -> FloatArray:
    n = x.shape[0] // 2
    if n < 4:
        raise ValidationError(f"diagnostics need at least 8 draws per chain, got {x.shape[0]}")
    return np.concatenate([x[:n], x[-n:]], axis=1)


def _z_scale(x: FloatArray) -> FloatArray:
    """Rank-normalise all draws jointly (fractional offset 3/8, Blom)."""
    flat = x.ravel()
    order = np.argsort(flat, kind="mergesort")
    ranks = np.empty(flat.size)
    ranks[order] = np.arange(1, flat.size + 1)
    # average ranks of ties
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if np.any(counts > 1):
        sums = np.bincount(inverse, weights=ranks)
        ranks = sums[inverse] / counts[inverse]
    return np.asarray(ndtri((ranks - 0.375) / (flat.size + 0.25)).reshape(x.shape), dtype=np.float64)


def _rhat(x: FloatArray) -> float:
    n = x.shape[0]
    means = x.mean(axis=0)
    w = x.var(axis=0, ddof=1).mean()
    b = n * means.var(ddof=1)
    if w <= 0:
        return float("nan")
    return float(np.sqrt(((n - 1) / n * w + b / n) / w))


def rank_normalized_rhat(x: FloatArray) -> float:
    """max(bulk, folded) rank-normalised split R-hat of one parameter's draws ``(draws, chains)``."""
    s = _split(np.asarray(x, dtype=np.float64))
    bulk = _rhat(_z_scale(s))
    folded = _rhat(_z_scale(np.abs(s - np.median(s))))
    return max(bulk, folded)


def _autocov(x: FloatArray) -> FloatArray:
    """Autocovariance per chain via FFT, ``(draws, chains)``."""
    n = x.shape[0]
    c = x - x.mean(axis=0)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(c, n=size, axis=0)
    acov = np.fft.irfft(f * np.conjugate(f), n=size, axis=0)[:n]
    return np.asarray(acov / n, dtype=np.float64)


def _ess(x: FloatArray) -> float:
    n, m = x.shape
    acov = _autocov(x)
    chain_var = acov[0] * n / (n - 1.0)
    mean_var = chain_var.mean()
    var_plus = mean_var * (n - 1.0) / n + (x.mean(axis=0).var(ddof=1) if m > 1 else 0.0)
    if var_plus <= 0:
        return float("nan")
    rho = 1.0 - (mean_var - acov.mean(axis=1)) / var_plus
    rho[0] = 1.0
    # Geyer: sums of adjacent pairs, positive and monotone
    pairs = rho[: 2 * (n // 2)].reshape(-1, 2).sum(axis=1)
    first_negative = np.flatnonzero(pairs <= 0)
    k = first_negative[0] if first_negative.size else pairs.size
    pairs = np.minimum.accumulate(pairs[:k])
    tau = -1.0 + 2.0 * float(pairs.sum())
    return float(n * m / max(tau, 1.0 / np.log10(n * m)))


def bulk_ess(x: FloatArray) -> float:
    """Bulk effective sample size of one parameter's draws ``(draws, chains)`` (split, rank-normalised)."""
    return _ess(_z_scale(_split(np.asarray(x, dtype=np.float64))))


def tail_ess(x: FloatArray) -> float:
    """Tail ESS: the smaller ESS of the indicators of the 5 % and 95 % quantiles."""
    s = _split(np.asarray(x, dtype=np.float64))
    lo, hi = np.quantile(s, [0.05, 0.95])
    return min(_ess((s <= lo).astype(np.float64)), _ess((s <= hi).astype(np.float64)))


def summarize_chains(chain: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """R-hat, bulk ESS and tail ESS per parameter of *chain* ``(draws, chains, d)``."""
    d = chain.shape[2]
    rhat = np.array([rank_normalized_rhat(chain[:, :, j]) for j in range(d)])
    bulk = np.array([bulk_ess(chain[:, :, j]) for j in range(d)])
    tail = np.array([tail_ess(chain[:, :, j]) for j in range(d)])
    return rhat, bulk, tail
