"""The batched ensemble sampler and the convergence diagnostics (Vehtari et al. 2021)."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.sim.ensemble import TProposal, run_ensemble
from medtwin.sim.mcmc_diagnostics import bulk_ess, rank_normalized_rhat, summarize_chains, tail_ess

COV = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 2.0]])
MEAN = np.array([1.0, -2.0, 0.5])
PREC = np.linalg.inv(COV)


def _log_prob(x: np.ndarray) -> np.ndarray:
    d = x - MEAN
    out = -0.5 * np.sum(d @ PREC * d, axis=1)
    return np.where(x[:, 2] > 8.0, -np.inf, out)  # a hard wall far in the tail: -inf must be handled


@pytest.mark.parametrize(
    "moves",
    [(("stretch", 1.0),), (("de", 1.0),), (("independence", 1.0),), (("walk", 1.0),),
     (("independence", 0.5), ("de", 0.3), ("stretch", 0.2))],
)  # fmt: skip
def test_every_move_samples_a_correlated_gaussian(moves: tuple[tuple[str, float], ...]) -> None:
    rng = np.random.default_rng(1)
    start = rng.normal(size=(16, 3)) * 0.1
    proposal = TProposal(MEAN + 0.2, COV * 1.3)
    calls: list[int] = []

    def counted(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        return _log_prob(x)

    run = run_ensemble(counted, start, 700, rng=rng, moves=moves, proposal=proposal)
    draws = run.chain[200:].reshape(-1, 3)
    np.testing.assert_allclose(draws.mean(axis=0), MEAN, atol=0.12)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), COV, atol=0.2)
    independent = all(m in ("independence", "walk") for m, _ in moves)
    # moves using the other walkers evaluate one half of them per batch; independent chains all of them at once
    assert set(calls[1:]) == ({16} if independent else {8})
    assert run.evaluations == sum(calls)
    assert 0.05 < run.acceptance < 0.95


def test_ensemble_refuses_bad_setups() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValidationError, match="even number"):
        run_ensemble(_log_prob, np.zeros((5, 3)), 1, rng=rng)
    with pytest.raises(ValidationError, match=">= 2 walkers"):
        run_ensemble(_log_prob, np.zeros((1, 3)), 1, rng=rng, moves=(("walk", 1.0),), proposal=TProposal(MEAN, COV))
    with pytest.raises(ValidationError, match="unknown moves"):
        run_ensemble(_log_prob, np.zeros((8, 3)), 1, rng=rng, moves=(("leap", 1.0),))
    with pytest.raises(ValidationError, match="need a proposal"):
        run_ensemble(_log_prob, np.zeros((8, 3)), 1, rng=rng, moves=(("independence", 1.0),))
    with pytest.raises(ValidationError, match="zero density"):
        run_ensemble(_log_prob, np.full((8, 3), 9.0), 1, rng=rng, moves=(("stretch", 1.0),))


def test_independent_chains_need_fewer_walkers_than_the_ensemble_moves() -> None:
    rng = np.random.default_rng(3)
    start = rng.normal(size=(4, 3)) * 0.1  # 4 < 2 d + 2: allowed for chains that do not use each other
    run = run_ensemble(_log_prob, start, 1500, rng=rng, moves=(("independence", 0.8), ("walk", 0.2)),
                       proposal=TProposal(MEAN, COV * 1.2))  # fmt: skip
    draws = run.chain[300:].reshape(-1, 3)
    np.testing.assert_allclose(draws.mean(axis=0), MEAN, atol=0.15)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), COV, atol=0.25)


def test_t_proposal_density_is_normalised_consistently() -> None:
    """Importance weights p/q of draws from q must average to the ratio of normalising constants (here 1)."""
    rng = np.random.default_rng(2)
    q = TProposal(np.zeros(2), np.eye(2), scales=(1.0, 2.0))
    x = q.draw(200_000, rng)
    # a 2-d t with 4 degrees of freedom and identity scale has density Gamma(3) / (Gamma(2) 4 pi) = 1 / (2 pi) at 0;
    # the mixture weighs each of its two components 1/2
    logq = q.logpdf(x) - np.log(2.0) - np.log(2 * np.pi)
    target = -0.5 * np.sum(x**2, axis=1) - np.log(2 * np.pi)
    assert np.mean(np.exp(target - logq)) == pytest.approx(1.0, rel=0.02)


def _ar1(phi: float, n: int, chains: int, rng: np.random.Generator) -> np.ndarray:
    x = np.empty((n, chains))
    x[0] = rng.standard_normal(chains) / np.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + rng.standard_normal(chains)
    return x


def test_ess_matches_the_ar1_formula_and_rhat_flags_disagreeing_chains() -> None:
    rng = np.random.default_rng(4)
    phi = 0.8
    x = _ar1(phi, 4000, 8, rng)
    expected = x.size * (1 - phi) / (1 + phi)
    assert bulk_ess(x) == pytest.approx(expected, rel=0.15)
    # indicators of the 5 % / 95 % quantiles are less autocorrelated than the process itself
    assert 0.9 * expected < tail_ess(x) < x.size
    assert rank_normalized_rhat(x) < 1.01
    shifted = x + np.arange(8) * 0.5
    assert rank_normalized_rhat(shifted) > 1.1
    iid = rng.standard_normal((1000, 4))
    assert bulk_ess(iid) == pytest.approx(4000, rel=0.15)
    rhat, bulk, tail = summarize_chains(np.stack([x, 2 * x + 1], axis=2))
    assert rhat.shape == bulk.shape == tail.shape == (2,)
    with pytest.raises(ValidationError, match="at least 8 draws"):
        rank_normalized_rhat(np.zeros((6, 2)))
