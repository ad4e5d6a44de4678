"""Held parameters that follow the identified ones of their subsystem (the population's conditional mean)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose import all_patient_names
from medtwin.glucose._kernels import PARAM_ORDER
from medtwin.glucose.twin_model import (
    PersonalModel,
    PopulationPrior,
    coupled_prior,
    population_prior,
    population_values,
    to_unconstrained,
)

_AT = {n: PARAM_ORDER.index(n) for n in PARAM_ORDER}


def _held(prior: PopulationPrior, theta: np.ndarray) -> np.ndarray:
    p, _ = PersonalModel(prior, body_weight_kg=60.0, basal_u_h=1.0).parameters(theta)
    return p


def test_at_the_group_mean_the_held_values_are_the_plain_priors() -> None:
    base = population_prior("adult", exclude=["adult#002"])
    coupled = coupled_prior(base, exclude=["adult#002"])
    assert coupled.coupling  # something is coupled
    np.testing.assert_allclose(_held(coupled, base.mean[None, :]), _held(base, base.mean[None, :]), rtol=1e-12)


def test_m2_follows_m4_as_the_published_tie_does() -> None:
    """m2 = 2.5 m4 in every virtual patient: the regression finds the tie (slope 1 on log m4)."""
    base = population_prior("child", exclude=["child#004"])
    coupled = coupled_prior(base, exclude=["child#004"])
    theta = np.tile(base.mean, (3, 1))
    theta[:, base.names.index("m4")] += [-0.5, 0.0, 0.7]
    p = _held(coupled, theta)
    np.testing.assert_allclose(p[:, _AT["m2"]] / p[:, _AT["m4"]], 2.5, rtol=2e-3)
    assert np.ptp(_held(base, theta)[:, _AT["m2"]]) == 0.0  # uncoupled: held


def test_leave_one_out_the_identified_values_predict_held_ones_better_than_the_group_mean() -> None:
    names = all_patient_names()
    values = population_values(names)
    held = ("Vm0", "kabs", "Vi")
    err_plain, err_coupled = np.zeros(3), np.zeros(3)
    for b, n in enumerate(names):
        base = population_prior(n.split("#")[0], exclude=[n])
        theta = to_unconstrained(base.names, np.array([values[k][b] for k in base.names]))[None, :]
        truth = np.log([values[k][b] for k in held])
        idx = [_AT[k] for k in held]
        err_plain += (np.log(_held(base, theta)[0, idx]) - truth) ** 2
        err_coupled += (np.log(_held(coupled_prior(base, exclude=[n]), theta)[0, idx]) - truth) ** 2
    np.testing.assert_array_less(err_coupled, err_plain * 0.75)


def test_the_coupling_survives_serialisation_and_dropping_a_parameter() -> None:
    coupled = coupled_prior(population_prior("adolescent", exclude=["adolescent#001"]), exclude=["adolescent#001"])
    again = PopulationPrior.from_dict(coupled.to_dict())
    assert again.coupling == coupled.coupling
    assert again.coupling_center == pytest.approx(coupled.coupling_center)
    smaller = coupled.without(["kmax"])
    assert all(len(v) == smaller.dim for v in smaller.coupling.values())
    old = {k: v for k, v in population_prior("adult").to_dict().items() if k not in ("coupling", "coupling_center")}
    assert PopulationPrior.from_dict(old).coupling == {}  # saved before the coupling: none


def test_a_coupling_of_an_identified_parameter_is_refused() -> None:
    base = population_prior("adult")
    with pytest.raises(ValidationError, match="coupling"):
        replace(base, coupling={"Vmx": tuple([0.0] * base.dim)}, coupling_center=tuple(base.mean.tolist()))
    with pytest.raises(ValidationError, match="coupling"):
        replace(base, coupling={"Vm0": (1.0,)}, coupling_center=tuple(base.mean.tolist()))


def test_a_posterior_as_prior_keeps_the_coupling() -> None:
    from medtwin.glucose.identify import Diagnostics, Posterior

    coupled = coupled_prior(population_prior("adult", exclude=["adult#005"]), exclude=["adult#005"])
    draws = np.random.default_rng(0).normal(np.append(coupled.mean, np.log(120.0)), 0.05, (50, coupled.dim + 1))
    d = Diagnostics(rhat={}, ess_bulk={}, ess_tail={}, converged=True, steps=1, walkers=1, kept_steps=1,
                    acceptance=0.5, simulations=1, seconds=0.0)  # fmt: skip
    post = Posterior(prior=coupled, draws=draws, map_theta=draws[0], body_weight_kg=70.0, basal_u_h=1.0,
                     residual_tau_min=45.0, residual_sd_mg_dl=10.0, diagnostics=d)  # fmt: skip
    again = post.as_prior()
    assert again.coupling == coupled.coupling
    assert again.coupling_center == coupled.coupling_center
