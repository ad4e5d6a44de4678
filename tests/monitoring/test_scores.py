"""NEWS2, qSOFA and MEWS against the published charts and the reference cases in tests/fixtures/scores."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medtwin.errors import ValidationError
from medtwin.monitoring import mews_score, news2_score, qsofa_score, response_level
from medtwin.monitoring.news2 import (
    score_pulse,
    score_respiration_rate,
    score_spo2,
    score_systolic_bp,
    score_temperature,
)

CASES = Path(__file__).parent.parent / "fixtures" / "scores" / "NEWS2_CASES.csv"


def _cases() -> list[dict[str, str]]:
    with CASES.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c['expected_total']}-{c['expected_level'][:10]}")
def test_news2_reference_cases(case: dict[str, str]) -> None:
    r = news2_score(
        respiration_rate_per_min=float(case["resp_rate"]),
        spo2_percent=float(case["spo2"]),
        on_oxygen=case["on_oxygen"] == "true",
        systolic_bp_mm_hg=float(case["systolic_bp"]),
        pulse_per_min=float(case["pulse"]),
        consciousness=case["acvpu"],
        temperature_c=float(case["temperature_c"]),
        spo2_scale=2 if case["spo2_scale"] == "2" else 1,
    )
    assert r.total == int(case["expected_total"])
    assert r.level == case["expected_level"].split(" ")[0]
    assert r.complete


def test_all_reference_cases_are_read() -> None:
    assert len(_cases()) == 9


# RCP 2017 chart 1 band edges: (value, points)
@pytest.mark.parametrize(
    ("value", "points"), [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (8.4, 3), (8.5, 1)]
)
def test_respiration_bands(value: float, points: int) -> None:
    assert score_respiration_rate(value) == points


@pytest.mark.parametrize(("value", "points"), [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)])
def test_spo2_scale1_bands(value: float, points: int) -> None:
    assert score_spo2(value, on_oxygen=True, scale=1) == points
    assert score_spo2(value, on_oxygen=False, scale=1) == points


@pytest.mark.parametrize(
    ("value", "on_oxygen", "points"),
    [(83, False, 3), (84, True, 2), (85, False, 2), (86, True, 1), (87, False, 1), (88, True, 0), (92, True, 0),
     (93, False, 0), (99, False, 0), (93, True, 1), (94, True, 1), (95, True, 2), (96, True, 2), (97, True, 3)],
)  # fmt: skip
def test_spo2_scale2_bands(value: float, on_oxygen: bool, points: int) -> None:
    assert score_spo2(value, on_oxygen=on_oxygen, scale=2) == points


@pytest.mark.parametrize(
    ("value", "points"), [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3)]
)
def test_systolic_bands(value: float, points: int) -> None:
    assert score_systolic_bp(value) == points


@pytest.mark.parametrize(
    ("value", "points"), [(40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2), (130, 2), (131, 3)]
)
def test_pulse_bands(value: float, points: int) -> None:
    assert score_pulse(value) == points


@pytest.mark.parametrize(
    ("value", "points"), [(35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2)]
)
def test_temperature_bands(value: float, points: int) -> None:
    assert score_temperature(value) == points


@pytest.mark.parametrize("acvpu", ["C", "V", "P", "U", "c"])
def test_any_non_alert_consciousness_is_a_red_score(acvpu: str) -> None:
    r = news2_score(consciousness=acvpu)
    assert r.scores["consciousness"] == 3
    assert r.red_parameters == ("consciousness",)


def test_response_levels() -> None:
    assert response_level(4, 2) == "low"
    assert response_level(3, 3) == "low-medium"
    assert response_level(5, 3) == "medium"
    assert response_level(6, 1) == "medium"
    assert response_level(7, 0) == "high"


def test_missing_parameters_are_reported_not_guessed() -> None:
    r = news2_score(respiration_rate_per_min=26, pulse_per_min=120)
    assert r.total == 5
    assert not r.complete
    assert set(r.missing) == {"spo2", "air_or_oxygen", "systolic_bp", "consciousness", "temperature"}
    assert r.scores["spo2"] is None


def test_invalid_inputs_raise_validation_errors() -> None:
    with pytest.raises(ValidationError, match="ACVPU"):
        news2_score(consciousness="X")
    with pytest.raises(ValidationError, match="above 100"):
        news2_score(spo2_percent=101)
    with pytest.raises(ValidationError, match="negative"):
        news2_score(pulse_per_min=-1)
    with pytest.raises(ValidationError, match="finite"):
        news2_score(temperature_c=float("nan"))
    with pytest.raises(ValidationError, match="scale"):
        news2_score(spo2_percent=95, spo2_scale=3)  # type: ignore[arg-type]


@given(
    rr=st.floats(0, 60),
    spo2=st.floats(50, 100),
    oxygen=st.booleans(),
    sbp=st.floats(40, 260),
    pulse=st.floats(20, 220),
    acvpu=st.sampled_from("ACVPU"),
    temp=st.floats(30, 43),
)
def test_total_is_sum_of_parameters_and_bounded(
    rr: float, spo2: float, oxygen: bool, sbp: float, pulse: float, acvpu: str, temp: float
) -> None:
    r = news2_score(
        respiration_rate_per_min=rr,
        spo2_percent=spo2,
        on_oxygen=oxygen,
        systolic_bp_mm_hg=sbp,
        pulse_per_min=pulse,
        consciousness=acvpu,
        temperature_c=temp,
    )
    assert r.total == sum(v for v in r.scores.values() if v is not None)
    assert 0 <= r.total <= 20
    assert r.level == response_level(r.total, max(v for v in r.scores.values() if v is not None))


@given(st.floats(0, 60), st.floats(0, 60))
def test_respiration_score_is_u_shaped(a: float, b: float) -> None:
    # moving away from the normal band (12-20) never lowers the score
    lo, hi = sorted((a, b))
    if lo >= 16:
        assert score_respiration_rate(hi) >= score_respiration_rate(lo)
    if hi <= 16:
        assert score_respiration_rate(lo) >= score_respiration_rate(hi)


def test_qsofa() -> None:
    # Seymour 2016: one point each for RR >= 22, altered mentation, SBP <= 100
    assert qsofa_score(respiration_rate_per_min=22, systolic_bp_mm_hg=100, gcs=14).total == 3
    assert qsofa_score(respiration_rate_per_min=21, systolic_bp_mm_hg=101, gcs=15).total == 0
    r = qsofa_score(respiration_rate_per_min=24, systolic_bp_mm_hg=98)
    assert r.positive
    assert r.missing == ("altered_mentation",)
    assert qsofa_score(acvpu="V").criteria["altered_mentation"] is True
    assert not qsofa_score(respiration_rate_per_min=30).positive
    with pytest.raises(ValidationError, match="Glasgow"):
        qsofa_score(gcs=2)


@pytest.mark.parametrize(
    ("kwargs", "scores"),
    [
        ({"systolic_bp_mm_hg": 70}, {"systolic_bp": 3}),
        ({"systolic_bp_mm_hg": 71}, {"systolic_bp": 2}),
        ({"systolic_bp_mm_hg": 81}, {"systolic_bp": 1}),
        ({"systolic_bp_mm_hg": 101}, {"systolic_bp": 0}),
        ({"systolic_bp_mm_hg": 200}, {"systolic_bp": 2}),
        ({"heart_rate_per_min": 40}, {"heart_rate": 2}),
        ({"heart_rate_per_min": 41}, {"heart_rate": 1}),
        ({"heart_rate_per_min": 100}, {"heart_rate": 0}),
        ({"heart_rate_per_min": 110}, {"heart_rate": 1}),
        ({"heart_rate_per_min": 129}, {"heart_rate": 2}),
        ({"heart_rate_per_min": 130}, {"heart_rate": 3}),
        ({"respiration_rate_per_min": 8}, {"respiration_rate": 2}),
        ({"respiration_rate_per_min": 9}, {"respiration_rate": 0}),
        ({"respiration_rate_per_min": 15}, {"respiration_rate": 1}),
        ({"respiration_rate_per_min": 21}, {"respiration_rate": 2}),
        ({"respiration_rate_per_min": 30}, {"respiration_rate": 3}),
        ({"temperature_c": 34.9}, {"temperature": 2}),
        ({"temperature_c": 35.0}, {"temperature": 0}),
        ({"temperature_c": 38.4}, {"temperature": 0}),
        ({"temperature_c": 38.5}, {"temperature": 2}),
        ({"avpu": "A"}, {"avpu": 0}),
        ({"avpu": "V"}, {"avpu": 1}),
        ({"avpu": "P"}, {"avpu": 2}),
        ({"avpu": "U"}, {"avpu": 3}),
    ],
)
def test_mews_bands_subbe_2001(kwargs: dict[str, float | str], scores: dict[str, int]) -> None:
    r = mews_score(**kwargs)  # type: ignore[arg-type]
    for name, points in scores.items():
        assert r.scores[name] == points


def test_mews_total_and_threshold() -> None:
    r = mews_score(
        systolic_bp_mm_hg=85, heart_rate_per_min=115, respiration_rate_per_min=24, temperature_c=38.6, avpu="A"
    )
    assert r.total == 7
    assert r.high_risk
    assert not r.missing
    assert not mews_score(systolic_bp_mm_hg=120, heart_rate_per_min=80, respiration_rate_per_min=12).high_risk
