"""Identification of a person's twin: convergence enforced, posterior persisted and updated, bad data refused."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose.identify import (
    ConvergenceError,
    FitSettings,
    Posterior,
    fit,
    fit_cohort,
    fit_map,
    fit_map_cohort,
    fit_map_evidence_cohort,
    update,
)
from medtwin.glucose.twin_model import population_prior, population_values


def test_fit_converges_and_brackets_the_truth(twin_posterior: Posterior) -> None:
    d = twin_posterior.diagnostics
    assert d.converged
    assert max(d.rhat.values()) <= 1.05
    assert min(min(d.ess_bulk.values()), min(d.ess_tail.values())) >= 200
    assert d.simulations < 15_000
    summary = twin_posterior.summary()
    truth = population_values(["adult#001"])
    # basal glucose and insulin sensitivity: the truth lies inside the 95 % interval
    for name in ("Gb", "Vmx"):
        assert summary[name]["lo95"] < truth[name][0] < summary[name]["hi95"], name
    assert 5.0 < twin_posterior.residual_sd_mg_dl < 20.0  # the Dexcom noise of the simulator has an SD of ~11 mg/dL
    assert twin_posterior.data_summary["fitted_readings"] < twin_posterior.data_summary["readings"]


def test_posterior_round_trips_through_json(twin_posterior: Posterior) -> None:
    back = Posterior.from_dict(json.loads(json.dumps(twin_posterior.to_dict())))
    np.testing.assert_array_equal(back.draws, twin_posterior.draws)
    assert back.diagnostics == twin_posterior.diagnostics
    assert back.prior.to_dict() == twin_posterior.prior.to_dict()


def test_unconverged_runs_are_refused_unless_allowed(twin_days: Any) -> None:
    data = twin_days.data[0].window(0.0, 720.0)
    strict = FitSettings(burn_in=30, check_every=10, max_steps=50, ess_min=1e6, walkers=24)
    with pytest.raises(ConvergenceError, match="not converged after 50 steps"):
        fit(data, population_prior("adult", exclude=["adult#001"]), settings=strict)
    prior = population_prior("adult", exclude=["adult#001"])
    post = fit(data, prior, settings=replace(strict, require_convergence=False))
    assert not post.diagnostics.converged
    assert post.draws.shape[1] == post.prior.dim + 1


def test_update_with_new_days_narrows_the_posterior(twin_days: Any, twin_posterior: Posterior) -> None:
    day3 = twin_days.data[0].window(2880.0, 4320.0)
    later = update(twin_posterior, replace(day3, body_weight_kg=None))
    assert later.prior.group.startswith("posterior(")
    assert later.body_weight_kg == twin_posterior.body_weight_kg
    # the volume of the posterior (determinant of the covariance of the person's log parameters) shrinks; one more day
    # narrows each marginal only a little (median SD ratio 0.99-1.02 with 16-24 walkers), the joint by ~4 % per axis
    logdet_before = np.linalg.slogdet(np.cov(twin_posterior.draws[:, :-1], rowvar=False))[1]
    logdet_after = np.linalg.slogdet(np.cov(later.draws[:, :-1], rowvar=False))[1]
    assert logdet_after < logdet_before


def test_differential_evolution_steps_use_enough_walkers_and_keep_the_fit_valid(twin_days: Any) -> None:
    """With a share of differential-evolution steps (ter Braak 2006) the walkers are at least 2 d + 2 (one half moves
    from the other's differences), and the fit runs and gives finite draws in the prior's support."""
    with pytest.raises(ValidationError, match="de_weight"):
        FitSettings(de_weight=1.0)
    names = ("Gb", "Vmx", "kp3", "k1", "m4", "kmax", "kmin", "d", "ki", "b", "k2")
    prior = population_prior("adult", identified=names, exclude=["adult#001"])
    settings = FitSettings(burn_in=30, check_every=10, max_steps=60, require_convergence=False, de_weight=0.3)
    post = fit(twin_days.data[0].window(0.0, 720.0), prior, settings=settings)
    assert post.diagnostics.walkers == 2 * (len(names) + 1) + 2
    assert np.all(np.isfinite(post.draws))
    b = post.summary()["b"]
    assert 0.0 < b["lo95"] < b["median"] < b["hi95"] < 1.0  # on the logit scale b stays a fraction
    assert FitSettings(walkers=30, de_weight=0.3).walkers == 30


def test_fit_refuses_data_it_cannot_use(twin_days: Any) -> None:
    data = twin_days.data[0].window(0.0, 720.0)
    with pytest.raises(ValidationError, match="body weight"):
        fit(replace(data, body_weight_kg=None))
    few = data.window(0.0, 20.0)
    with pytest.raises(ValidationError, match="usable CGM readings"):
        fit(few)
    no_basal = replace(data, basal_t_min=np.zeros(1), basal_u_h=np.zeros(1))
    with pytest.raises(ValidationError, match="basal rate is 0"):
        fit(no_basal)


def test_a_batched_cohort_fit_gives_each_person_their_own_fit(twin_days: Any) -> None:
    """fit_cohort advances several fits in lockstep with one kernel call per round: each posterior is the one that
    fitting that person alone gives (same draws), people of different lengths and priors together."""
    data = twin_days.data[0]
    people = [data.window(0.0, 600.0), data.window(1440.0, 1440.0 + 480.0)]
    priors = [population_prior("adult", exclude=["adult#001"]), population_prior("all", exclude=["adult#001"])]
    settings = FitSettings(burn_in=30, check_every=10, max_steps=60, require_convergence=False, walkers=24)
    together = fit_cohort(people, priors, settings=settings)
    for person, prior, batched in zip(people, priors, together, strict=True):
        alone = fit(person, prior, settings=settings)
        np.testing.assert_array_equal(batched.draws, alone.draws)
        np.testing.assert_array_equal(batched.map_theta, alone.map_theta)
        assert batched.diagnostics.simulations == alone.diagnostics.simulations
    maps = fit_map_cohort(people, priors, settings=settings)
    np.testing.assert_array_equal(maps[1][0], fit_map(people[1], priors[1], settings=settings)[0])


def test_the_evidence_of_held_values_prefers_the_persons_own(twin_days: Any) -> None:
    """fit_map_evidence_cohort: the same MAP as fit_map_cohort, and a Laplace evidence that ranks the person's own
    held values above the group's mean, and the group's mean above held values no patient has (Vm0 and kp2 x 3)."""
    data = twin_days.data[0].window(0.0, 2880.0)
    prior = population_prior("adult", exclude=["adult#001"])
    truth = population_values(["adult#001"])
    own = replace(prior, fixed={n: (float(truth[n][0]) if n in truth else v) for n, v in prior.fixed.items()})
    wrong = replace(own, fixed={**own.fixed, "Vm0": 3.0 * own.fixed["Vm0"], "kp2": 3.0 * own.fixed["kp2"]})
    fits = fit_map_evidence_cohort([data] * 3, [prior, own, wrong])
    np.testing.assert_array_equal(fits[0].theta, fit_map_cohort([data], [prior])[0][0])
    evidence = [f.log_evidence for f in fits]
    assert evidence[1] > evidence[0] + 3.0, evidence  # 2 days: -801 (own), -807 (group mean), -815 (x 3)
    assert evidence[0] > evidence[2] + 3.0, evidence
    assert all(np.isfinite(f.log_evidence) for f in fits)
    assert all(5.0 <= f.tau_min <= 300.0 for f in fits)


def test_a_cohort_fit_names_the_person_whose_fit_failed(twin_days: Any) -> None:
    data = twin_days.data[0]
    good = data.window(0.0, 600.0)
    bad = replace(data.window(0.0, 20.0), source="person B")
    with pytest.raises(ValidationError, match=r"1 of 2 fits failed: person B: .*usable CGM readings"):
        fit_cohort([good, bad], settings=FitSettings(burn_in=30, check_every=10, max_steps=60,
                                                      require_convergence=False))  # fmt: skip


RICH = ("Gb", "Vmx", "kp3", "k1", "m4", "kmax", "kmin", "d", "ki", "b", "k2")


def test_dropping_parameters_gives_the_smaller_sets_own_prior() -> None:
    rich = population_prior("adult", identified=RICH, exclude=["adult#001"])
    small = population_prior("adult", identified=RICH[:-2], exclude=["adult#001"])
    dropped = rich.without(("b", "k2"))
    assert dropped.names == small.names
    np.testing.assert_allclose(dropped.mean, small.mean, rtol=1e-12)
    np.testing.assert_allclose(dropped.cov, small.cov, rtol=1e-12)
    assert dropped.fixed == small.fixed
    with pytest.raises(ValidationError, match="cannot drop"):
        rich.without(("p2u",))


def test_a_fit_that_does_not_converge_with_the_fallback_parameters_drops_them_and_says_so(twin_days: Any) -> None:
    data = twin_days.data[0].window(0.0, 720.0)
    prior = population_prior("adult", identified=RICH, exclude=["adult#001"])
    # no fit reaches ESS 1e6: the rich one gives up at its cap, the smaller one is then the fit
    settings = FitSettings(burn_in=30, check_every=10, max_steps=60, fallback_steps=50, ess_min=1e6, walkers=24,
                           require_convergence=False, fallback=("b", "k2"))  # fmt: skip
    post = fit(data, prior, settings=settings)
    assert post.diagnostics.dropped == ("b", "k2")
    assert post.prior.names == RICH[:-2]
    assert post.draws.shape[1] == len(RICH) - 2 + 1
    assert post.diagnostics.steps == 60  # the smaller fit ran to its own cap, not the rich one's
    alone = fit(data, prior.without(("b", "k2")), settings=replace(settings, fallback=()))
    assert post.diagnostics.simulations > alone.diagnostics.simulations  # both fits are counted
    back = Posterior.from_dict(json.loads(json.dumps(post.to_dict())))
    assert back.diagnostics == post.diagnostics
    # the fallback fit must converge or raise like any other
    with pytest.raises(ConvergenceError, match="not converged after 60 steps"):
        fit(data, prior, settings=replace(settings, require_convergence=True))


def test_a_fallback_naming_no_identified_parameter_changes_nothing(twin_days: Any) -> None:
    data = twin_days.data[0].window(0.0, 720.0)
    prior = population_prior("adult", exclude=["adult#001"])
    settings = FitSettings(burn_in=30, check_every=10, max_steps=60, require_convergence=False, walkers=24)
    plain = fit(data, prior, settings=settings)
    with_fallback = fit(data, prior, settings=replace(settings, fallback=("b", "k2"), fallback_steps=50))
    np.testing.assert_array_equal(plain.draws, with_fallback.draws)
    assert with_fallback.diagnostics.dropped == ()
