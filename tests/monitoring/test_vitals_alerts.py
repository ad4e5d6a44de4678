"""Freshness windows, trend rules, alert de-duplication / escalation, and the virtual monitors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.monitoring import (
    AlertRules,
    AlertTracker,
    LatestVitals,
    News2Result,
    TrendHistory,
    evaluate_rules,
    news2_score,
)
from medtwin.monitoring.virtual import PROFILES, VirtualPatient, virtual_ward
from medtwin.monitoring.vitals import news2_observation
from medtwin.records import Coding, Observation, Quantity

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def obs(code: Coding, value: float | Coding, unit: str = "", minutes: float = 0.0) -> Observation:
    v: Quantity | Coding = value if isinstance(value, Coding) else Quantity(value=value, unit=unit)
    return Observation(patient_id="p1", code=code, effective=T0 + timedelta(minutes=minutes), value=v)


def full_set(minutes: float = 0.0, *, rr: float = 15, pulse: float = 70) -> list[Observation]:
    return [
        obs(codes.RESPIRATORY_RATE, rr, "/min", minutes),
        obs(codes.OXYGEN_SATURATION_PULSE_OX, 97, "%", minutes),
        obs(codes.INHALED_OXYGEN_FLOW, 0, "L/min", minutes),
        obs(codes.SYSTOLIC_BP, 120, "mm[Hg]", minutes),
        obs(codes.HEART_RATE, pulse, "/min", minutes),
        obs(codes.LEVEL_OF_CONSCIOUSNESS, codes.ACVPU["A"], minutes=minutes),
        obs(codes.BODY_TEMPERATURE, 37.0, "Cel", minutes),
    ]


def test_latest_vitals_combine_only_fresh_values() -> None:
    latest = LatestVitals.from_observations(full_set(0))
    latest.update(obs(codes.HEART_RATE, 120, "/min", 50))
    fresh = latest.snapshot(T0 + timedelta(minutes=50))
    assert fresh.pulse_per_min == 120
    assert fresh.news2().complete
    later = latest.snapshot(T0 + timedelta(minutes=90))  # everything but the pulse is 90 min old
    assert later.pulse_per_min == 120
    assert later.respiration_rate_per_min is None
    assert "respiration_rate" in later.stale
    r = later.news2()
    assert not r.complete
    assert "respiration_rate" in r.missing
    assert r.total == 2
    shorter = latest.snapshot(T0 + timedelta(minutes=50), freshness=timedelta(minutes=10))
    assert shorter.respiration_rate_per_min is None
    with pytest.raises(ValidationError):
        latest.snapshot(T0, freshness=timedelta(0))


def test_out_of_order_arrivals_do_not_overwrite_newer_values_and_units_convert() -> None:
    latest = LatestVitals()
    latest.update(obs(codes.HEART_RATE, 100, "/min", 10))
    latest.update(obs(codes.HEART_RATE, 60, "/min", 5))
    latest.update(obs(codes.BODY_TEMPERATURE, 100.4, "[degF]", 10))
    snap = latest.snapshot(T0 + timedelta(minutes=10))
    assert snap.pulse_per_min == 100
    assert snap.temperature_c == pytest.approx(38.0)
    assert latest.update(obs(codes.CREATININE_SERUM, 1.0, "mg/dL")) is None


def test_oxygen_from_flow_or_fio2() -> None:
    latest = LatestVitals.from_observations([obs(codes.INHALED_OXYGEN_CONCENTRATION, 28, "%")])
    assert latest.snapshot(T0).on_oxygen is True
    latest = LatestVitals.from_observations([obs(codes.INHALED_OXYGEN_FLOW, 0, "L/min")])
    assert latest.snapshot(T0).on_oxygen is False
    assert LatestVitals().snapshot(T0).on_oxygen is None


def test_news2_observation_record() -> None:
    vitals = LatestVitals.from_observations(full_set(0, rr=26)).snapshot(T0)
    result = vitals.news2()
    record = news2_observation(result, vitals, patient_id="p1")
    assert record.code == codes.NEWS2_TOTAL
    assert record.code.code == "88330-6"
    assert record.value == Quantity(value=3.0, unit="{score}")
    rr = record.component(codes.RESPIRATORY_RATE)
    assert rr is not None
    assert rr.value == Quantity(value=3.0, unit="{score}")
    assert len(record.components) == 7
    assert len(record.derived_from) == 7
    assert record.status == "final"


def _evaluate(totals: list[tuple[float, int]], spo2: list[tuple[float, float]]) -> list[str]:
    n2 = TrendHistory(timedelta(hours=12))
    sp = TrendHistory(timedelta(hours=12))
    for minutes, total in totals:
        n2.add(T0 + timedelta(minutes=minutes), total)
    for minutes, value in spo2:
        sp.add(T0 + timedelta(minutes=minutes), value)
    at = T0 + timedelta(minutes=max([m for m, _ in totals] + [m for m, _ in spo2]))
    current = None
    if totals:
        scores: dict[str, int | None] = {"respiration_rate": totals[-1][1]}
        current = News2Result(scores=scores, total=totals[-1][1], level="low", missing=(), spo2_scale=1)
    return [s.code for s in evaluate_rules(at=at, news2=current, news2_history=n2, spo2_history=sp)]


def test_news2_rising_rule_window() -> None:
    assert "news2-rising" in _evaluate([(0, 1), (300, 3)], [])  # +2 within 6 h
    assert "news2-rising" not in _evaluate([(0, 1), (300, 2)], [])  # +1
    assert "news2-rising" not in _evaluate([(0, 1), (400, 3)], [])  # the low point is older than 6 h


def test_spo2_falling_rule() -> None:
    assert "spo2-falling" in _evaluate([], [(0, 97), (30, 95), (50, 94)])
    assert "spo2-falling" not in _evaluate([], [(0, 97), (50, 95)])
    assert "spo2-falling" not in _evaluate([], [(0, 93), (50, 97)])  # rising
    assert "spo2-falling" not in _evaluate([], [(0, 97), (70, 93)])  # outside the 1 h window


@pytest.mark.parametrize("reopen_minutes", [360, 1])
def test_tracker_deduplicates_escalates_and_resolves_with_hysteresis(reopen_minutes: int) -> None:
    tracker = AlertTracker(
        clear_after=2, clear_after_time=timedelta(minutes=5), reopen_within=timedelta(minutes=reopen_minutes)
    )
    rules = AlertRules()
    empty = TrendHistory(timedelta(hours=6))

    def step(minutes: int, **vitals: float | str) -> tuple[list[str], list[str]]:
        r = news2_score(**vitals)  # type: ignore[arg-type]
        at = T0 + timedelta(minutes=minutes)
        signals = evaluate_rules(at=at, news2=r, news2_history=empty, spo2_history=empty, rules=rules)
        fired, cleared = tracker.update(signals, patient_id="p1", at=at)
        return [f"{e.code}:{e.severity}" for e in fired], cleared

    fired, _ = step(0, respiration_rate_per_min=26, pulse_per_min=120)  # 3 + 2 = 5: medium + red
    assert sorted(fired) == ["news2-red-parameter:low-medium", "news2-response:medium"]
    first_id = tracker.active["news2-response"]
    assert step(5, respiration_rate_per_min=26, pulse_per_min=120)[0] == []  # same level: de-duplicated
    fired, _ = step(10, respiration_rate_per_min=26, pulse_per_min=135, systolic_bp_mm_hg=95)  # 3+3+2 = 8: high
    assert fired == ["news2-response:high"]  # the open alert, updated: not a second alert
    assert tracker.active["news2-response"] == first_id
    assert step(15, respiration_rate_per_min=26, pulse_per_min=135)[0] == []  # lower again: no new alert
    assert step(20, respiration_rate_per_min=15)[1] == []  # cleared once: hysteresis keeps it
    fired, cleared = step(25, respiration_rate_per_min=15)
    assert first_id in cleared
    assert fired == []
    assert tracker.active == {}
    assert step(30, respiration_rate_per_min=26, pulse_per_min=120)[0]
    if reopen_minutes == 360:  # back within the reopen window: the same alert reopens
        assert tracker.active["news2-response"] == first_id
    else:  # a new episode: a new alert
        assert tracker.active["news2-response"] != first_id


def test_tracker_escalation_updates_the_open_alert() -> None:
    tracker = AlertTracker()
    sig = evaluate_rules(
        at=T0,
        news2=news2_score(consciousness="V"),
        news2_history=TrendHistory(timedelta(hours=6)),
        spo2_history=TrendHistory(timedelta(hours=6)),
    )
    fired, _ = tracker.update(sig, patient_id="p1", at=T0)
    sig2 = evaluate_rules(
        at=T0,
        news2=news2_score(consciousness="V", respiration_rate_per_min=30, pulse_per_min=140),
        news2_history=TrendHistory(timedelta(hours=6)),
        spo2_history=TrendHistory(timedelta(hours=6)),
    )
    fired2, _ = tracker.update(sig2, patient_id="p1", at=T0 + timedelta(minutes=1))
    response = next(e for e in fired2 if e.code == "news2-response")
    first = next(e for e in fired if e.code == "news2-response")
    assert response.event_id == first.event_id  # the same alert, a new version of it
    assert response.time == first.time == T0  # raised then; updated now
    assert (response.severity, response.status) == ("high", "active")
    assert response.data["escalated_from"] == first.severity == "low-medium"
    assert response.data["revision"] == 2
    assert response.data["updated"] == (T0 + timedelta(minutes=1)).isoformat()


def test_virtual_profiles_are_reproducible_and_deteriorate() -> None:
    a = VirtualPatient("VM-1", "sepsis", start=T0, seed=7)
    b = VirtualPatient("VM-1", "sepsis", start=T0, seed=7)
    times = [T0 + timedelta(minutes=10 * i) for i in range(40)]
    assert [a.sample(t) for t in times] == [b.sample(t) for t in times]
    sepsis = VirtualPatient("VM-2", "sepsis", start=T0, missing_probability=0, artefact_probability=0)
    early, late = sepsis.true_vitals(0), sepsis.true_vitals(6)
    assert float(late["hr"] or 0) > float(early["hr"] or 0) + 40
    assert float(late["sbp"] or 0) < float(early["sbp"] or 0) - 35
    assert late["acvpu"] == "C"
    hypoxic = VirtualPatient("VM-3", "hypoxic", start=T0)
    assert hypoxic.true_vitals(0)["o2"] == 0.0
    assert float(hypoxic.true_vitals(3)["o2"] or 0) > 0
    stable = VirtualPatient("VM-4", "stable", start=T0, seed=1, missing_probability=0, artefact_probability=0)
    scores = [
        news2_score(
            respiration_rate_per_min=s.respiration_rate_per_min,
            spo2_percent=s.spo2_percent,
            on_oxygen=bool(s.oxygen_flow_l_min),
            systolic_bp_mm_hg=s.systolic_bp_mm_hg,
            pulse_per_min=s.heart_rate_per_min,
            consciousness=s.acvpu,
            temperature_c=s.temperature_c,
        ).total
        for s in (stable.sample(t) for t in times)
    ]
    assert max(scores) <= 2


def test_virtual_ward_and_validation() -> None:
    ward = virtual_ward(6, start=T0)
    assert [p.profile for p in ward] == [*PROFILES, *PROFILES[:2]]
    assert len({p.key for p in ward}) == 6
    with pytest.raises(ValidationError, match="profile"):
        VirtualPatient("x", "zombie", start=T0)
    with pytest.raises(ValidationError):
        virtual_ward(0, start=T0)
    noisy = VirtualPatient("VM-9", "stable", start=T0, seed=3, missing_probability=0.5)
    samples = [noisy.sample(T0 + timedelta(minutes=i)) for i in range(50)]
    assert any(s.heart_rate_per_min is None for s in samples)
    assert any(s.heart_rate_per_min is not None for s in samples)


def test_trend_history_orders_late_points_and_stays_bounded() -> None:
    h = TrendHistory(timedelta(hours=1), max_points=5)
    for minutes in (0, 10, 30, 20):
        h.add(T0 + timedelta(minutes=minutes), float(minutes))
    assert [v for _, v in h.points()] == [0.0, 10.0, 20.0, 30.0]
    h.add(T0 - timedelta(hours=2), 99.0)  # older than the window: ignored
    assert len(h.points()) == 4
    for minutes in range(31, 40):
        h.add(T0 + timedelta(minutes=minutes), float(minutes))
    assert len(h.points()) == 5
    assert h.points()[-1][1] == 39.0
    h.add(T0 + timedelta(minutes=125), 1.0)  # the window slides
    assert [v for _, v in h.points()] == [1.0]
