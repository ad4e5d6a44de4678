"""The vectorised equations equal the plain per-person reference implementations on random cohorts."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.risk import cha2ds2_vasc, findrisc, has_bled, pooled_cohort, prevent, qrisk3
from medtwin.risk.reference import cha2ds2_vasc_one, findrisc_one, has_bled_one, pce_one, prevent_one, qrisk3_one
from medtwin.risk.simulate import synthetic_cohort

N = 300


@pytest.fixture(scope="module")
def cohort() -> dict[str, np.ndarray]:
    c = synthetic_cohort(N, seed=21)
    c["race"] = np.where(c["race"] == "other", "white", c["race"])
    c["age_years"] = np.random.default_rng(1).uniform(40, 59, N)  # valid for the 30-year models too
    c["bmi_kg_m2"] = c["bmi_kg_m2"].clip(20, 39.9)  # inside QRISK3's range (the API bounds values outside it)
    return c


def _person(c: dict[str, np.ndarray], i: int) -> dict[str, object]:
    return {k: v[i] for k, v in c.items()}


def test_pce_and_qrisk3(cohort: dict[str, np.ndarray]) -> None:
    people = [_person(cohort, i) for i in range(N)]
    np.testing.assert_allclose(pooled_cohort(cohort).risk, [pce_one(p) for p in people], rtol=1e-12)  # type: ignore[arg-type]
    np.testing.assert_allclose(qrisk3(cohort).risk, [qrisk3_one(p) for p in people], rtol=1e-12)  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", ["base", "acr", "hba1c", "sdi", "full"])
@pytest.mark.parametrize("years", [10, 30])
@pytest.mark.parametrize("outcome", ["cvd", "ascvd", "hf"])
def test_prevent(cohort: dict[str, np.ndarray], variant: str, years: int, outcome: str) -> None:
    got = prevent(cohort, outcome=outcome, years=years, variant=variant).risk  # type: ignore[arg-type]
    want = [prevent_one(_person(cohort, i), variant, years, outcome) for i in range(N)]  # type: ignore[arg-type]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_points(cohort: dict[str, np.ndarray]) -> None:
    people = [_person(cohort, i) for i in range(N)]
    f = findrisc({**cohort, "diabetes": np.zeros(N)})
    assert f.points.tolist() == [findrisc_one(p) for p in people]  # type: ignore[arg-type]
    c = cha2ds2_vasc(cohort, require_af=False)
    assert c.points.tolist() == [cha2ds2_vasc_one(p) for p in people]  # type: ignore[arg-type]
    assert has_bled(cohort).points.tolist() == [has_bled_one(p) for p in people]  # type: ignore[arg-type]


def test_prevent_cohort_equals_prevent_for_all_30_models() -> None:
    from medtwin.risk.prevent import prevent_cohort

    c = synthetic_cohort(2000, seed=22)  # ages 40-79: the 30-year models refuse those over 59
    c["uacr_mg_g"][:5] = 0.01  # outside the range: refused by both
    everything = prevent_cohort(c)
    assert len(everything) == 30
    for (variant, years, outcome), risk in everything.items():
        want = prevent(c, outcome=outcome, years=years, variant=variant).risk  # type: ignore[arg-type]
        np.testing.assert_allclose(risk, want, rtol=1e-10, equal_nan=True)
