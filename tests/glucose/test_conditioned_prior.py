"""The population prior conditioned on a person's therapy settings (CR, CF)."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose import load_cohort
from medtwin.glucose.twin_model import (
    DEFAULT_IDENTIFIED,
    conditioned_prior,
    population_prior,
    population_values,
    to_unconstrained,
)


def _group_mean_settings(group: str, exclude: str) -> dict[str, float]:
    c = load_cohort("all")
    pick = np.array([n.startswith(group + "#") and n != exclude for n in c.names])
    return {"cr_g_per_u": float(np.exp(np.mean(np.log(c.cr_g_per_u[pick])))),
            "cf_mg_dl_per_u": float(np.exp(np.mean(np.log(c.cf_mg_dl_per_u[pick]))))}  # fmt: skip


def test_at_the_groups_mean_settings_the_prior_mean_is_the_group_mean() -> None:
    base = population_prior("adult", exclude=["adult#003"])
    cond = conditioned_prior("adult", _group_mean_settings("adult", "adult#003"), exclude=["adult#003"])
    np.testing.assert_allclose(cond.mean, base.mean, atol=1e-12)
    assert cond.fixed["Vm0"] == pytest.approx(base.fixed["Vm0"], rel=1e-12)
    assert cond.names == base.names
    assert cond.members == base.members


def test_leave_one_out_the_settings_predict_insulin_sensitivity_better_than_the_group_mean() -> None:
    """Over the 30 virtual patients, each left out in turn: smaller squared error of log Vmx, k1, kp3 and of the
    held Vm0 (the lead's LOO R^2: 0.51, 0.53, 0.40, 0.26)."""
    c = load_cohort("all")
    values = population_values(c.names)
    names = ("Vmx", "k1", "kp3")
    err_base, err_cond = np.zeros(4), np.zeros(4)
    for b, n in enumerate(c.names):
        g = n.split("#")[0]
        base = population_prior(g, exclude=[n])
        cond = conditioned_prior(g, {"cr_g_per_u": float(c.cr_g_per_u[b]),
                                     "cf_mg_dl_per_u": float(c.cf_mg_dl_per_u[b])}, exclude=[n])  # fmt: skip
        j = [DEFAULT_IDENTIFIED.index(k) for k in names]
        truth = np.append(to_unconstrained(names, np.array([values[k][b] for k in names])), np.log(values["Vm0"][b]))
        err_base += (truth - np.append(base.mean[j], np.log(base.fixed["Vm0"]))) ** 2
        err_cond += (truth - np.append(cond.mean[j], np.log(cond.fixed["Vm0"]))) ** 2
    r2 = 1.0 - err_cond / err_base
    np.testing.assert_allclose(r2, [0.51, 0.53, 0.40, 0.26], atol=0.01)


def test_settings_error_attenuates_the_shift_and_widens_the_prior() -> None:
    base = population_prior("child", exclude=["child#002"])
    s = {"cr_g_per_u": 40.0, "cf_mg_dl_per_u": 120.0}
    exact = conditioned_prior("child", s, exclude=["child#002"])
    noisy = conditioned_prior("child", s, exclude=["child#002"], settings_log_sd=0.5)
    vague = conditioned_prior("child", s, exclude=["child#002"], settings_log_sd=1e3)
    j = DEFAULT_IDENTIFIED.index("Vmx")
    assert abs(noisy.mean[j] - base.mean[j]) < abs(exact.mean[j] - base.mean[j])
    assert exact.cov[j, j] < noisy.cov[j, j]
    np.testing.assert_allclose(vague.mean, base.mean, atol=1e-4)


def test_only_the_conditioned_parameters_move_and_selection_keeps_the_predictive_ones() -> None:
    s = {"cr_g_per_u": 5.0}
    base = population_prior("adult", exclude=["adult#001"])
    only = conditioned_prior("adult", s, exclude=["adult#001"], conditioned=("Vmx",))
    moved = np.flatnonzero(np.abs(only.mean - base.mean) > 1e-12)
    assert [only.names[j] for j in moved] == ["Vmx"]
    assert only.fixed["Vm0"] == base.fixed["Vm0"]
    picked = conditioned_prior("adult", s, exclude=["adult#001"], select_by_loo=True)
    full = conditioned_prior("adult", s, exclude=["adult#001"])
    k = DEFAULT_IDENTIFIED.index("kmax")  # kmax: LOO R^2 < 0 on CR: left at the group mean when selecting
    assert picked.mean[k] == pytest.approx(base.mean[k], abs=1e-12)
    assert full.mean[k] != pytest.approx(base.mean[k])


def test_refusals() -> None:
    with pytest.raises(ValidationError, match="settings"):
        conditioned_prior("adult", {"tdi": 40.0})
    with pytest.raises(ValidationError, match="settings"):
        conditioned_prior("adult", {"cr_g_per_u": -1.0})
    with pytest.raises(ValidationError, match="conditioned"):
        conditioned_prior("adult", {"cr_g_per_u": 10.0}, conditioned=("kp1",))
    with pytest.raises(ValidationError, match="settings_log_sd"):
        conditioned_prior("adult", {"cr_g_per_u": 10.0}, settings_log_sd=-0.1)
