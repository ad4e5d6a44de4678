"""The personal model's parametrisation, the recorded-input kernel and the in-silico ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose import load_cohort
from medtwin.glucose._kernels import PARAM_ORDER
from medtwin.glucose._twin_kernels import run_inputs
from medtwin.glucose.identifiability import collinearity_index, ou_whiten, sensitivities
from medtwin.glucose.insilico import simulate_therapy_a, true_glucose
from medtwin.glucose.simulation import PatientBatch, simulate_open_loop
from medtwin.glucose.twin_model import (
    CANDIDATE_PARAMETERS,
    PersonalModel,
    PopulationPrior,
    population_prior,
    population_values,
    to_natural,
    to_unconstrained,
)


def test_basal_glucose_parametrisation_reproduces_all_30_patients() -> None:
    """With Gb in place of kp1 (Dalla Man 2007 steady-state constraints) kp1, Ib and x0 come out as published."""
    cohort = load_cohort("all")
    values = population_values(cohort.names)
    prior = population_prior("all", identified=CANDIDATE_PARAMETERS)
    for b in range(cohort.size):
        model = PersonalModel(prior, body_weight_kg=float(cohort.params["BW"][b]),
                              basal_u_h=float(cohort.basal_u_per_min[b] * 60.0))  # fmt: skip
        theta = to_unconstrained(CANDIDATE_PARAMETERS, np.array([values[c][b] for c in CANDIDATE_PARAMETERS]))
        p, gb = model.parameters(theta[None, :])
        truth = np.array([cohort.params[k][b] for k in PARAM_ORDER])
        np.testing.assert_allclose(p[0], truth, rtol=1e-9)
        np.testing.assert_allclose(model.initial_state(p, gb)[0], cohort.x0[b], rtol=1e-9, atol=1e-12)


def test_b_is_identified_on_the_logit_scale_so_every_prior_draw_is_a_fraction() -> None:
    """A log-normal prior on b (0.56-0.99 in the 30 patients) puts mass above 1, where the gastric-emptying tanh slope
    5 / (2 (1 - b) D) turns over; on the logit scale every draw is in (0, 1) and the transform round-trips."""
    names = ("Gb", "kmin", "b", "k2")
    prior = population_prior("adult", identified=names)
    values = to_natural(names, prior.sample(20000, np.random.default_rng(4)))
    assert np.all((values[:, 2] > 0.0) & (values[:, 2] < 1.0))
    log_b = np.log(population_values(load_cohort("all").names)["b"])
    assert np.mean(np.random.default_rng(4).normal(log_b.mean(), log_b.std(), 20000) > 0.0) > 0.02  # the old prior
    np.testing.assert_allclose(to_unconstrained(names, values), prior.sample(20000, np.random.default_rng(4)))
    model = PersonalModel(prior, body_weight_kg=60.0, basal_u_h=1.0)
    p, _ = model.parameters(prior.mean[None, :])
    assert 0.0 < p[0, PARAM_ORDER.index("b")] < 1.0
    with pytest.raises(ValidationError, match="b must lie in"):
        to_unconstrained(names, np.array([[140.0, 0.01, 1.2, 0.1]]))


def test_a_prior_saved_with_b_on_the_log_scale_is_refused() -> None:
    prior = population_prior("adult", identified=("Gb", "b"))
    saved = prior.to_dict()
    assert saved["logit"] == ["b"]
    assert PopulationPrior.from_dict(saved).names == ("Gb", "b")
    del saved["logit"]
    with pytest.raises(ValidationError, match="fit the twin again"):
        PopulationPrior.from_dict(saved)
    plain = population_prior("adult").to_dict()
    del plain["logit"]  # the default set has no logit parameter: earlier snapshots still load
    assert PopulationPrior.from_dict(plain).names == population_prior("adult").names


def test_steady_state_holds_for_any_identified_values() -> None:
    prior = population_prior("adult")
    model = PersonalModel(prior, body_weight_kg=70.0, basal_u_h=0.9)
    rng = np.random.default_rng(3)
    theta = prior.sample(6, rng)
    p, gb = model.parameters(theta)
    x = model.initial_state(p, gb)
    minutes = 600
    bg = run_inputs(x, p, np.zeros((6, 5)), np.zeros(minutes), np.full(minutes, 0.9 / 60.0))
    np.testing.assert_allclose(bg[-1], gb, rtol=2e-6)


def test_recorded_input_kernel_equals_the_open_loop_reference() -> None:
    cohort = load_cohort(["adult#003", "child#004"])
    rng = np.random.default_rng(5)
    minutes = 300
    cho = np.zeros((minutes, 2))
    cho[30:39] = 5.0
    insulin = np.repeat(cohort.basal_u_per_min[None, :], minutes, axis=0) + (rng.random((minutes, 2)) < 0.05) * 0.5
    reference = simulate_open_loop(cohort, cho, insulin)
    batch = PatientBatch(cohort)
    announced = np.zeros((minutes, 2))
    announced[30] = 45.0  # eaten at 5 g/min over 9 minutes, as the open-loop reference is fed
    bg = run_inputs(batch.x, batch._p_matrix, batch.meal_state, announced, insulin)
    np.testing.assert_allclose(bg, reference.bg_mg_dl[1:], rtol=1e-9)


def test_open_loop_replay_of_the_records_reproduces_the_closed_loop_truth() -> None:
    sim = simulate_therapy_a(["adult#001", "adolescent#002", "child#003"], days=1, seed=2)
    replayed = true_glucose(sim.cohort, sim.data)
    # the only difference: a recorded bolus is delivered within one minute, the pump spread it over 3
    assert np.max(np.abs(replayed - sim.result.bg_mg_dl)) < 4.0
    assert np.median(np.abs(replayed - sim.result.bg_mg_dl)) < 0.5


def test_population_prior_leave_one_out_and_refusals() -> None:
    prior = population_prior("adult", exclude=["ADULT#004"])
    assert "adult#004" not in prior.members
    assert len(prior.members) == 9
    full = population_prior("adult")
    assert not np.allclose(prior.mean, full.mean)
    assert prior.cov.shape == (prior.dim, prior.dim)
    np.testing.assert_allclose(prior.cov, prior.cov.T)
    assert np.all(np.linalg.eigvalsh(prior.cov) > 0)
    for kwargs in ({"identified": ("Gb", "nonsense")}, {"identified": ("Gb", "Gb")}):
        with pytest.raises(ValidationError):
            population_prior("all", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown population"):
        population_prior("teen")


def test_sensitivities_match_a_direct_difference() -> None:
    sim = simulate_therapy_a(["adult#001"], days=1, seed=1)
    data = sim.data[0]
    prior = population_prior("all")
    model = PersonalModel(prior, body_weight_kg=data.body_weight_kg or 0, basal_u_h=float(data.basal_u_h[0]))
    theta = prior.mean.copy()
    t = data.cgm_t_min[::10]
    bg, s = sensitivities(model, data, theta, t)
    j = prior.names.index("Vmx")
    up = theta.copy()
    up[j] += 1e-4
    _, gb = model.parameters(up[None])
    direct = model.simulate(up[None], data, initial_glucose_mg_dl=gb)[np.rint(t).astype(int), 0]
    np.testing.assert_allclose((direct - bg) / 1e-4, s[:, j], rtol=0.02, atol=0.05)
    assert np.all(s[t > 480, j] <= 1e-9)  # more insulin-dependent uptake never raises glucose after the first meal
    assert collinearity_index(np.column_stack([s[:, j], 2 * s[:, j] + 1e-9])) > 1e3


def test_ou_whitening_decorrelates_an_ou_process() -> None:
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(3, 8, 20000))
    rho = np.exp(-np.diff(t) / 45.0)
    e = np.empty(t.size)
    e[0] = rng.standard_normal()
    for i in range(1, t.size):
        e[i] = rho[i - 1] * e[i - 1] + np.sqrt(1 - rho[i - 1] ** 2) * rng.standard_normal()
    w = ou_whiten(e, t, 45.0)
    assert abs(np.corrcoef(w[1:], w[:-1])[0, 1]) < 0.03
    assert np.std(w) == pytest.approx(1.0, abs=0.03)


def test_simulate_starts_at_the_initial_glucose_and_runs_each_member_on_its_own_inputs() -> None:
    """Row 0 of a simulation is the glucose at the start (it was once read after the kernel had advanced the state,
    giving the glucose at the end); members of different people in one batch (column maps, own lengths) get the
    trajectories they get alone."""
    sim = simulate_therapy_a(["adult#001"], days=1, seed=2)
    data = sim.data[0]
    prior = population_prior("adult")
    model = PersonalModel(prior, body_weight_kg=70.0, basal_u_h=float(data.basal_u_h[0]))
    theta = prior.sample(3, np.random.default_rng(1))
    bg = model.simulate(theta, data, initial_glucose_mg_dl=np.array([90.0, 140.0, 200.0]), minutes=600)
    np.testing.assert_allclose(bg[0], [90.0, 140.0, 200.0])
    assert bg.shape == (601, 3)
    # the same members with their inputs in two columns and their own lengths
    p, _ = model.parameters(theta)
    x = model.initial_state(p, np.array([90.0, 140.0, 200.0]))
    meals, insulin = data.minute_inputs(600)
    two_meals = np.stack([meals, np.zeros(600)], axis=1)
    two_insulin = np.stack([insulin, insulin * 2.0], axis=1)
    mixed = run_inputs(x, p, np.zeros((3, 5)), two_meals, two_insulin, meal_col=np.array([0, 1, 0]),
                       insulin_col=np.array([0, 1, 0]), stop=np.array([600, 300, 450]))  # fmt: skip
    np.testing.assert_array_equal(mixed[:, 0], bg[1:, 0])
    np.testing.assert_array_equal(mixed[:450, 2], bg[1:451, 2])
    assert np.all(np.isnan(mixed[450:, 2]))
    assert np.all(np.isnan(mixed[300:, 1]))
    alone = model.simulate(theta[1:2], data, initial_glucose_mg_dl=140.0, minutes=600)
    assert not np.allclose(mixed[:300, 1], alone[1:301, 0])  # other inputs: another trajectory


def test_m2_follows_an_identified_m4_in_the_ratio_every_virtual_patient_has() -> None:
    """m2 = 3 / (2 HEb) m4 and m30 = HEb / (1 - HEb) m1 (Dalla Man 2007) with HEb = 0.6 in all 30 patients: a held m2
    beside an identified m4 would be a hepatic extraction no patient has. m30 stays held while m1 is."""
    values = population_values(load_cohort("all").names)
    np.testing.assert_allclose(values["m2"] / values["m4"], 2.5, rtol=1e-9)
    np.testing.assert_allclose(values["m30"] / values["m1"], 1.5, rtol=1e-9)
    assert population_prior("child").tied == ()  # held by default (not validated as the default)
    prior = population_prior("child", exclude=["child#002"], tie=True)
    assert prior.tied == ("m2",)
    theta = prior.sample(5, np.random.default_rng(7))
    p, _ = PersonalModel(prior, body_weight_kg=40.0, basal_u_h=0.5).parameters(theta)
    m4 = p[:, PARAM_ORDER.index("m4")]
    assert np.ptp(m4) > 0.01
    np.testing.assert_allclose(p[:, PARAM_ORDER.index("m2")] / m4, 2.5, rtol=1e-9)
    np.testing.assert_allclose(p[:, PARAM_ORDER.index("m30")], prior.fixed["m30"])
    held = population_prior("child", exclude=["child#002"])
    p_held, _ = PersonalModel(held, body_weight_kg=40.0, basal_u_h=0.5).parameters(theta)
    np.testing.assert_allclose(p_held[:, PARAM_ORDER.index("m2")], held.fixed["m2"])
    assert prior.without(["m4"]).tied == ()
    assert population_prior("adult", identified=("Gb", "m2", "m4"), tie=True).tied == ()
    assert PopulationPrior.from_dict(prior.to_dict()).tied == ("m2",)
    saved = prior.to_dict()
    del saved["tied"]  # a prior saved before the tie replays as it was fitted: m2 held
    assert PopulationPrior.from_dict(saved).tied == ()
    with pytest.raises(ValidationError, match="partner is identified"):
        PopulationPrior.from_dict({**prior.to_dict(), "tied": ["m30"]})
