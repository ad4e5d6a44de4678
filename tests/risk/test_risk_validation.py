"""The validation toolkit on cohorts where the truth is known, against brute force and against fairlearn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.risk import metrics as m
from medtwin.risk import pooled_cohort, prevent
from medtwin.risk.simulate import simulate_binary, simulate_censored, synthetic_cohort
from medtwin.risk.validation import Outcome, evaluate, fit_recalibration, reliability_plot


@pytest.fixture(scope="module")
def cohort() -> dict[str, np.ndarray]:
    c = synthetic_cohort(12000, seed=11)
    r = pooled_cohort(c)
    ok = ~r.refused
    return {"risk": r.risk[ok], "sex": c["sex"][ok], "age": c["age_years"][ok]}


def _brute_harrell(t: np.ndarray, e: np.ndarray, p: np.ndarray) -> float:
    num = den = 0.0
    for i in range(len(t)):
        if e[i] != 1:
            continue
        for j in range(len(t)):
            if j != i and (t[j] > t[i] or (t[j] == t[i] and e[j] == 0)):
                den += 1
                num += 1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0
    return num / den


def test_harrell_c_equals_brute_force_with_ties() -> None:
    rng = np.random.default_rng(5)
    t = rng.integers(1, 8, 250).astype(float)  # many tied times
    e = (rng.random(250) < 0.6).astype(float)
    p = rng.integers(0, 20, 250) / 20 + 0.01  # many tied predictions
    got = m.c_statistic_censored(t, e, p, horizon=10, n_boot=0).value
    assert got == pytest.approx(_brute_harrell(t, e, p), abs=1e-12)


def test_auc_equals_sklearn_and_ci_is_delong() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(6)
    p = rng.random(3000)
    y = (rng.random(3000) < p).astype(float)
    est = m.c_statistic(y, p)
    assert est.value == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert est.low < est.value < est.high
    assert est.high - est.low == pytest.approx(0.034, abs=0.01)  # SE ~ 0.009 for n=3000, AUC ~0.83


def test_kaplan_meier_without_censoring_is_the_proportion() -> None:
    t = np.array([1.0, 2, 3, 4, 11, 12])
    e = np.ones(6)
    assert m.kaplan_meier_risk(t, e, 10).value == pytest.approx(4 / 6)


@pytest.mark.parametrize("kind", ["binary", "censored"])
def test_outcomes_drawn_from_the_equation_give_slope_one_and_oe_one(cohort: dict[str, np.ndarray], kind: str) -> None:
    p = cohort["risk"]
    out = simulate_binary(p, seed=1) if kind == "binary" else simulate_censored(p, horizon=10, seed=1)
    rep = evaluate(p, out, {"sex": cohort["sex"]}, n_boot=50)
    assert rep.overall.calibration_slope.covers(1.0)
    assert rep.overall.observed_expected.covers(1.0)
    assert rep.overall.c_statistic.value > 0.7
    assert rep.miscalibrated_groups == []
    assert abs(rep.recalibration.slope - 1) < 0.1


def test_deliberately_miscalibrated_subgroup_is_detected(cohort: dict[str, np.ndarray]) -> None:
    p = cohort["risk"]
    out = simulate_censored(p, horizon=10, seed=2, hazard_ratio=np.where(cohort["sex"] == "female", 1.8, 1.0))
    rep = evaluate(p, out, {"sex": cohort["sex"]}, n_boot=50)
    assert rep.miscalibrated_groups == [("sex", "female")]
    women = rep.subgroups.set_index("group").loc["female"]
    assert women["oe_low"] > 1.3
    gap = rep.gaps.set_index(["variable", "metric"]).loc[("sex", "oe")]
    assert gap["gap"] > 0.4
    assert gap["highest"] == "female"


def test_recalibration_fixes_the_mean_and_holdout_is_honest(cohort: dict[str, np.ndarray]) -> None:
    p = cohort["risk"]
    out = simulate_binary(p, seed=3, odds_ratio=0.5)
    rep = evaluate(p, out, n_boot=0)
    assert not rep.overall.observed_expected.covers(1.0)
    assert rep.after.observed_expected.value == pytest.approx(1.0, abs=1e-6)  # apparent: exact by construction
    held = evaluate(p, out, n_boot=0, holdout=0.4)
    assert not held.after_is_apparent
    assert held.after.observed_expected.covers(1.0)
    recal = fit_recalibration(p, out)
    assert recal.scale == "logit"
    assert recal.intercept < -0.5  # halved odds


def test_censored_recalibration_matches_kaplan_meier(cohort: dict[str, np.ndarray]) -> None:
    p = cohort["risk"]
    out = simulate_censored(p, horizon=10, seed=4, hazard_ratio=0.6)
    recal = fit_recalibration(p, out)
    km = m.kaplan_meier_risk(out.time, out.event, 10).value
    assert recal.apply(p).mean() == pytest.approx(km, rel=1e-6)
    assert recal.slope == pytest.approx(1.0, abs=0.12)


def test_subgroup_metrics_agree_with_fairlearn_metricframe(cohort: dict[str, np.ndarray]) -> None:
    from fairlearn.metrics import MetricFrame

    p = cohort["risk"]
    out = simulate_binary(p, seed=5)
    rep = evaluate(p, out, {"sex": cohort["sex"]}, n_boot=0)
    frame = MetricFrame(
        metrics={
            "c": lambda y, q: m.c_statistic(y, q).value,
            "oe": lambda y, q: m.observed_expected(y, q).value,
            "brier": m.brier_score,
        },
        y_true=out.y,
        y_pred=p,
        sensitive_features=cohort["sex"],
    )
    ours = rep.subgroups.set_index("group")
    for metric in ("c", "oe", "brier"):
        for group in ("female", "male"):
            assert ours.loc[group, metric] == pytest.approx(frame.by_group.loc[group, metric], rel=1e-12)
        gap = rep.gaps.set_index("metric").loc[metric, "gap"]
        assert gap == pytest.approx(frame.difference()[metric], rel=1e-12)


def test_small_groups_are_listed_without_metrics(cohort: dict[str, np.ndarray]) -> None:
    p = cohort["risk"][:3000]
    labels = np.where(np.arange(3000) < 40, "tiny", "big")
    rep = evaluate(p, simulate_binary(p, seed=6), {"group": labels}, n_boot=0)
    tiny = rep.subgroups.set_index("group").loc["tiny"]
    assert tiny["too_small"]
    assert tiny["n"] == 40
    assert np.isnan(tiny["c"])


def test_report_outputs(cohort: dict[str, np.ndarray], tmp_path: Path) -> None:
    p = cohort["risk"][:4000]
    rep = evaluate(p, simulate_censored(p, horizon=10, seed=7), {"sex": cohort["sex"][:4000]}, model="PCE", n_boot=20)
    png = reliability_plot(rep, tmp_path / "reliability.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = rep.to_dict()
    assert data["outcome"] == "censored"
    assert len(data["deciles"]) == 10
    assert "| sex | female |" in rep.to_markdown()


def test_bad_validation_input_is_refused() -> None:
    with pytest.raises(ValidationError, match="missing"):
        evaluate(np.array([0.1, np.nan]), Outcome.binary([0, 1]))
    with pytest.raises(ValidationError, match="0 or 1"):
        m.c_statistic([0, 2], [0.1, 0.2])
    with pytest.raises(ValidationError, match="non-negative"):
        m.kaplan_meier_risk([-1.0, 2.0], [1, 0], 10)
    with pytest.raises(ValidationError, match="3 predictions for 2"):
        evaluate(np.array([0.1, 0.2, 0.3]), Outcome.binary([0, 1]))


def test_prevent_validates_with_its_own_outcomes() -> None:
    c = synthetic_cohort(6000, seed=12)
    r = prevent(c, outcome="ascvd")
    ok = ~r.refused
    rep = evaluate(r.risk[ok], simulate_binary(r.risk[ok], seed=8), n_boot=0)
    assert rep.overall.calibration_slope.covers(1.0)
