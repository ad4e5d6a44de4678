"""PatientTwin and TwinRuntime: routing, alerts, persistence of events and snapshots, subscribers, FHIR output."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medtwin import codes
from medtwin.interop.fhir import to_fhir
from medtwin.records import Coding, Event, Observation, Quantity
from medtwin.store import Store
from medtwin.twin import PatientTwin, TwinRuntime, VitalsComponent

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def vitals(patient: str, minutes: float, *, rr: float = 15, pulse: float = 70, sbp: float = 120,
           spo2: float = 97, acvpu: str = "A") -> list[Observation]:  # fmt: skip
    t = T0 + timedelta(minutes=minutes)

    def q(code: Coding, value: float, unit: str) -> Observation:
        return Observation(patient_id=patient, code=code, effective=t, value=Quantity(value=value, unit=unit))

    return [
        q(codes.RESPIRATORY_RATE, rr, "/min"),
        q(codes.OXYGEN_SATURATION_PULSE_OX, spo2, "%"),
        q(codes.INHALED_OXYGEN_FLOW, 0, "L/min"),
        q(codes.SYSTOLIC_BP, sbp, "mm[Hg]"),
        q(codes.HEART_RATE, pulse, "/min"),
        q(codes.BODY_TEMPERATURE, 37.0, "Cel"),
        Observation(patient_id=patient, code=codes.LEVEL_OF_CONSCIOUSNESS, effective=t, value=codes.ACVPU[acvpu]),
    ]


def alert_codes(events: list[Event]) -> list[str]:
    return sorted(f"{e.code}:{e.severity}" for e in events if e.kind == "alert")


def test_patient_twin_news2_derived_events_and_alerts() -> None:
    twin = PatientTwin("p1")
    events = twin.observe(vitals("p1", 0))
    assert [e.code for e in events] == ["news2"]
    assert events[0].data["total"] == 0
    assert twin.observe(vitals("p1", 5)) == []  # same score: no new derived event
    events = twin.observe(vitals("p1", 10, rr=26, pulse=120, sbp=95))  # 3 + 2 + 2 = 7; qSOFA RR + SBP = 2
    assert alert_codes(events) == [
        "news2-red-parameter:low-medium",
        "news2-response:high",
        "news2-rising:high",  # the severity of a rise is the level it rose to (RCP 2017 clinical response)
        "qsofa-positive:high",  # at least medium, and the NEWS2 level when higher
    ]
    news2 = twin.vitals.last_news2_observation
    assert news2 is not None
    assert news2.value == Quantity(value=7.0, unit="{score}")
    assert twin.observe(vitals("p2", 10, rr=40)) == []  # another patient's data is not routed here


def test_forecast_extrapolates_the_news2_trend() -> None:
    twin = PatientTwin("p1")
    assert twin.forecast(timedelta(hours=1)) is None
    for i, rr in enumerate([15, 21, 25, 25]):
        twin.observe(vitals("p1", 30 * i, rr=rr, pulse=70 + 20 * i))
    f = twin.forecast(timedelta(hours=1))
    assert f is not None
    assert f.slope_per_h > 0
    assert f.expected_total > twin.vitals.news2_history.points()[-1][1]
    assert f.points == 4


def test_snapshot_round_trip_keeps_alert_state() -> None:
    twin = PatientTwin("p1")
    twin.observe(vitals("p1", 0, rr=26))
    restored = PatientTwin.restore(twin.snapshot())
    assert restored.vitals.tracker.active == twin.vitals.tracker.active
    # the restored twin does not re-fire the active alert at the same level
    events = restored.observe(vitals("p1", 5, rr=26))
    assert alert_codes(events) == []
    assert restored.vitals.latest.snapshot(T0 + timedelta(minutes=5)).respiration_rate_per_min == 26


def test_runtime_persists_events_snapshots_and_publishes(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'twin.db'}")
    try:
        runtime = TwinRuntime(store, snapshot_every=timedelta(0))
        seen: list[Event] = []
        unsubscribe = runtime.subscribe(seen.append)
        runtime.start()
        runtime.submit(vitals("p1", 0) + vitals("p2", 0))
        runtime.submit(vitals("p1", 10, rr=26, pulse=120))
        runtime.drain()
        runtime.close()
        unsubscribe()
        stored = store.events(kind="alert")
        assert alert_codes(stored) == alert_codes(seen)
        assert {e.patient_id for e in stored} == {"p1"}
        assert len(store.events(kind="derived")) == 3
        news2 = store.observations("p1", code=codes.NEWS2_TOTAL)
        assert [o.value for o in news2] == [Quantity(value=0.0, unit="{score}"), Quantity(value=5.0, unit="{score}")]
        snap = store.latest_snapshot("patient:p1")
        assert snap is not None
        alert = stored[0]
        acked = runtime.acknowledge(alert.event_id, by="nurse-1")
        assert acked is not None
        assert acked.status == "acknowledged"

        # a new runtime restores the twin from its snapshot: the active alerts are not fired again
        runtime2 = TwinRuntime(store)
        again = runtime2.process(vitals("p1", 15, rr=26, pulse=120))
        assert alert_codes(again) == []
        # recovery resolves them (after the hysteresis: three assessments spanning at least 30 minutes)
        for minutes in (20, 35, 50):
            runtime2.process(vitals("p1", minutes))
        assert {e.status for e in store.events(patient_id="p1", kind="alert")} == {"resolved"}
    finally:
        store.close()


def test_runtime_without_store_and_failing_subscriber() -> None:
    runtime = TwinRuntime()
    runtime.subscribe(lambda e: (_ for _ in ()).throw(RuntimeError("subscriber bug")))
    events = runtime.process(vitals("p1", 0, acvpu="V"))
    assert "news2-red-parameter:low-medium" in alert_codes(events)
    assert runtime.acknowledge("x") is None


def test_freshness_window_is_respected() -> None:
    twin = PatientTwin("p1", vitals=VitalsComponent("p1", freshness=timedelta(minutes=30)))
    twin.observe(vitals("p1", 0, rr=26))
    late_hr = [o for o in vitals("p1", 45, pulse=75) if o.code == codes.HEART_RATE]
    events = twin.observe(late_hr)
    derived = next(e for e in events if e.code == "news2")
    assert derived.data["total"] == 0
    assert "respiration_rate" in derived.data["missing"]
    assert "respiration_rate" in derived.data["stale"]


def test_fhir_outputs_validate_with_fhirclient_r4() -> None:
    pytest.importorskip("fhirclient")
    from fhirclient.models.detectedissue import DetectedIssue
    from fhirclient.models.flag import Flag
    from fhirclient.models.observation import Observation as FhirObservation

    twin = PatientTwin("p1")
    events = twin.observe(vitals("p1", 0, rr=26, pulse=120, sbp=95))
    news2 = twin.vitals.last_news2_observation
    assert news2 is not None
    resource = to_fhir(news2)
    fhir_obs = FhirObservation(resource, strict=True)
    assert fhir_obs.code.coding[0].system == "http://loinc.org"
    assert fhir_obs.code.coding[0].code == "88330-6"
    assert fhir_obs.valueQuantity.value == 7
    assert len(fhir_obs.component) == 7
    alert = next(e for e in events if e.kind == "alert")
    flag_json = to_fhir(alert)
    assert flag_json["resourceType"] == "Flag"
    Flag(flag_json, strict=True)
    derived = next(e for e in events if e.kind == "derived")
    issue = to_fhir(derived)
    assert issue["resourceType"] == "DetectedIssue"
    DetectedIssue(issue, strict=True)


def test_offer_refuses_when_the_queue_is_full() -> None:
    runtime = TwinRuntime(queue_size=1)  # worker not started: nothing drains the queue
    assert runtime.offer(vitals("p1", 0)) is True
    assert runtime.offer(vitals("p1", 5)) is False
    runtime.start()
    runtime.drain()
    assert runtime.offer(vitals("p1", 10)) is True
    runtime.close()
    assert "p1" in runtime.twins


def test_background_worker_stores_alert_resolutions_before_drain_returns(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'twin.db'}")
    try:
        runtime = TwinRuntime(store, group_window_s=0.0)
        runtime.start()
        runtime.submit(vitals("p1", 0, rr=26, pulse=120))
        runtime.drain()
        raised = store.events(patient_id="p1", kind="alert")
        assert raised
        assert {e.status for e in raised} == {"active"}
        for minutes in (5, 20, 35):  # recovery: resolved after three assessments spanning at least 30 minutes
            runtime.submit(vitals("p1", minutes))
        runtime.drain()
        assert {e.status for e in store.events(patient_id="p1", kind="alert")} == {"resolved"}
        runtime.close()
    finally:
        store.close()


class _BatchedStatusStore:
    """A RuntimeStore with the batched status update; *missing* ids make it raise like a store that lacks them."""

    def __init__(self, missing: set[str] | None = None) -> None:
        self.missing = missing or set()
        self.batches: list[list[str]] = []
        self.single: list[str] = []
        self.events: list[Event] = []

    def add_events(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def update_event_statuses(self, event_ids: Sequence[str], status: str, by: str | None = None) -> list[Event]:
        assert (status, by) == ("resolved", "medtwin.twin")
        if self.missing & set(event_ids):
            raise KeyError(sorted(self.missing & set(event_ids))[0])
        self.batches.append(list(event_ids))
        return []

    def update_event_status(self, event_id: str, status: str, by: str | None = None) -> Event:
        if event_id in self.missing:
            raise KeyError(event_id)
        self.single.append(event_id)
        return next(e for e in self.events if e.event_id == event_id)

    def save_snapshot(self, twin_id: str, blob: bytes, at: datetime) -> None:
        pass

    def latest_snapshot(self, twin_id: str) -> tuple[datetime, bytes] | None:
        return None


def _raise_then_recover(store: _BatchedStatusStore, *, lose_first: bool = False) -> list[str]:
    """Raise two alerts for each of two patients, then recover both (resolved in the same group); the alert ids."""
    runtime = TwinRuntime(store)
    raised = runtime.process(vitals("p1", 0, rr=26, pulse=120) + vitals("p2", 0, rr=26, pulse=120))
    ids = [e.event_id for e in raised if e.kind == "alert"]
    assert len(ids) == 4  # news2-response and news2-red-parameter for each patient
    if lose_first:
        store.missing = {ids[0]}
    for minutes in (5, 20):
        runtime.process(vitals("p1", minutes) + vitals("p2", minutes))
    runtime.process_many([(vitals("p1", 35), None), (vitals("p2", 35), None)])  # both resolve in this group
    return ids


def test_resolutions_of_a_group_are_one_batched_status_update() -> None:
    store = _BatchedStatusStore()
    ids = _raise_then_recover(store)
    assert store.batches == [ids]
    assert store.single == []


def test_a_batched_update_that_misses_an_event_falls_back_to_one_update_per_alert() -> None:
    store = _BatchedStatusStore()
    ids = _raise_then_recover(store, lose_first=True)
    assert store.batches == []
    assert store.single == ids[1:]  # the alerts the store has are still resolved
