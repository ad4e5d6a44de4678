"""Store contract tests, run against SQLite and (when reachable) PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlalchemy import event, text

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.records import (
    Coding,
    Condition,
    Encounter,
    EncounterLocation,
    Event,
    Identifier,
    MedicationAdministration,
    MedicationRequest,
    Observation,
    ObservationComponent,
    Patient,
    PatientIdentity,
    Provenance,
    Quantity,
    Record,
)
from medtwin.store import EventNotFoundError, RawMessage, Store

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
VANCOMYCIN = Coding(system=RXNORM, code="11124", display="Vancomycin")


def prov(source_id: str) -> Provenance:
    return Provenance(source_system="test", source_id=source_id)


def hr(i: int, patient_id: str = "p1", minutes: int | None = None) -> Observation:
    return Observation(
        patient_id=patient_id,
        code=codes.HEART_RATE,
        effective=T0 + timedelta(minutes=i if minutes is None else minutes),
        value=Quantity(value=60.0 + i, unit="/min"),
        provenance=prov(f"{patient_id}-hr-{i}"),
    )


def raw(source_id: str, payload: str = "MSH|...") -> RawMessage:
    return RawMessage(
        source_system="mllp", source_id=source_id, payload=payload, content_type="x-application/hl7-v2+er7", received=T0
    )


def full_record_set() -> list[Record]:
    """One of every record type, with every optional part filled."""
    return [
        Patient(
            patient_id="p1",
            gender="female",
            birth_date=date(1950, 5, 17),
            deceased=None,
            identity=PatientIdentity(
                identifiers=(Identifier(system="urn:mrn", value="MRN-1", type_code="MR"),),
                family="Doe",
                given=("Jane", "Q"),
                telecom=("555-0100",),
                address="1 Main St, Springfield",
            ),
            provenance=prov("Patient/p1"),
        ),
        Observation(
            patient_id="p1",
            code=codes.BLOOD_PRESSURE_PANEL,
            effective=T0,
            components=(
                ObservationComponent(code=codes.SYSTOLIC_BP, value=Quantity(value=120, unit="mm[Hg]")),
                ObservationComponent(code=codes.DIASTOLIC_BP, value=Quantity(value=80, unit="mm[Hg]")),
            ),
            category="vital-signs",
            device="monitor-7",
            encounter_id="e1",
            observation_id="obs-bp",
            alt_codes=(codes.BLOOD_PRESSURE_PANEL_OLD,),
            derived_from=("obs-a", "obs-b"),
            provenance=prov("Observation/obs-bp"),
        ),
        Observation(
            patient_id="p1",
            code=codes.LEVEL_OF_CONSCIOUSNESS,
            effective=T0,
            value=codes.ACVPU["A"],
            observation_id="obs-acvpu",
            provenance=prov("Observation/obs-acvpu"),
        ),
        Observation(patient_id="p1", code=codes.BMI, effective=T0, value="normal", observation_id="obs-text"),
        Encounter(
            encounter_id="e1",
            patient_id="p1",
            status="in-progress",
            class_code="IMP",
            start=T0 - timedelta(hours=5),
            locations=(
                EncounterLocation(unit="ED", start=T0 - timedelta(hours=5), end=T0 - timedelta(hours=2), bed="3"),
                EncounterLocation(unit="ICU", start=T0 - timedelta(hours=2)),
            ),
            type=Coding(system=codes.SNOMED, code="183452005", display="Emergency hospital admission"),
            reason=Coding(system=codes.SNOMED, code="91302008", display="Sepsis"),
            provenance=prov("Encounter/e1"),
        ),
        Condition(
            condition_id="c1",
            patient_id="p1",
            code=Coding(system=codes.SNOMED, code="91302008", display="Sepsis"),
            onset=T0 - timedelta(days=1),
            recorded=T0,
            encounter_id="e1",
            provenance=prov("Condition/c1"),
        ),
        MedicationRequest(
            request_id="mr1",
            patient_id="p1",
            medication=VANCOMYCIN,
            intent="proposal",
            authored=T0,
            dose=Quantity(value=1250, unit="mg"),
            route=Coding(system=codes.SNOMED, code="47625008", display="Intravenous route"),
            interval_h=12.0,
            infusion_duration_h=1.5,
            rate=Quantity(value=833.3, unit="mg/h"),
            start=T0 + timedelta(hours=1),
            number_of_doses=4,
            note="AUC24 target 400-600",
            encounter_id="e1",
            provenance=prov("MedicationRequest/mr1"),
        ),
        MedicationAdministration(
            administration_id="ma1",
            patient_id="p1",
            medication=VANCOMYCIN,
            start=T0,
            end=T0 + timedelta(hours=1),
            dose=Quantity(value=1000, unit="mg"),
            rate=Quantity(value=1000, unit="mg/h"),
            request_id="mr1",
            provenance=prov("MedicationAdministration/ma1"),
        ),
        Event(
            kind="alert",
            code="news2-high",
            time=T0,
            message="NEWS2 7",
            patient_id="p1",
            severity="high",
            data={"score": 7, "parts": {"rr": 3}},
            source="news2",
            event_id="ev1",
        ),
    ]


def test_every_record_type_round_trips_exactly(store: Store) -> None:
    records = full_record_set()
    result = store.write(records)
    assert (result.inserted, result.duplicates, result.raw_duplicate) == (len(records), 0, False)
    assert store.patients() == [records[0]]
    assert store.patient("p1") == records[0]
    assert store.patient("nobody") is None
    assert store.observations("p1") == sorted(records[1:4], key=lambda o: (o.effective, o.observation_id))  # type: ignore[union-attr]
    assert store.encounters("p1") == [records[4]]
    assert store.conditions("p1") == [records[5]]
    assert store.medication_requests("p1") == [records[6]]
    assert store.medication_administrations("p1") == [records[7]]
    assert store.events("p1") == [records[8]]


def test_same_source_record_is_stored_once(store: Store) -> None:
    first = store.write([hr(1), hr(2)])
    again = store.write([hr(1), hr(2), hr(3)])
    assert (first.inserted, first.duplicates) == (2, 0)
    assert (again.inserted, again.duplicates) == (1, 2)
    assert [o.value for o in store.observations("p1")] == [Quantity(value=v, unit="/min") for v in (61.0, 62.0, 63.0)]


def test_duplicates_inside_one_batch_are_counted(store: Store) -> None:
    result = store.write([hr(1), hr(1), hr(1)])
    assert (result.inserted, result.duplicates) == (1, 2)


def test_raw_message_resend_writes_nothing_and_is_logged(store: Store) -> None:
    first = store.write([hr(1)], raw("MSG1"))
    assert first.raw_id is not None
    assert not first.raw_duplicate
    resend = store.write([hr(1), hr(2)], raw("MSG1"))
    assert resend.raw_duplicate
    assert (resend.inserted, resend.raw_id) == (0, None)
    assert len(store.observations("p1")) == 1
    seen = store.raw_seen("mllp", "MSG1")
    assert seen is not None
    assert (seen.raw_id, seen.status, seen.record_count) == (first.raw_id, "accepted", 1)
    assert seen.payload is None  # an existence check does not read the payload back
    log = store.raw_log()
    assert [e.status for e in log] == ["duplicate", "accepted"]
    assert log[0].reason == f"resend of accepted raw_id {first.raw_id}"


def test_failed_write_leaves_nothing_behind(store: Store) -> None:
    bad_event = Event(kind="alert", code="x", time=T0, message="m", data={"unstorable": object()})
    with pytest.raises(ValidationError, match="Event: cannot be stored as JSON"):
        store.write([*full_record_set()[:8], bad_event], raw("MSG-BAD"))
    assert store.raw_seen("mllp", "MSG-BAD") is None
    assert store.counts() == dict.fromkeys(store.counts(), 0)


def test_rejected_message_is_kept_and_a_corrected_resend_is_accepted(store: Store) -> None:
    store.reject(raw("MSG2", "garbage"), "MSH-9: unknown message type ZZZ")
    assert store.raw_seen("mllp", "MSG2") is None
    rejected = store.raw_log(status="rejected")
    assert len(rejected) == 1
    assert (rejected[0].reason, rejected[0].payload) == ("MSH-9: unknown message type ZZZ", b"garbage")
    ok = store.write([hr(1)], raw("MSG2"))
    assert (ok.raw_duplicate, ok.inserted) == (False, 1)
    assert store.raw_seen("mllp", "MSG2") is not None


def test_raw_message_validation() -> None:
    with pytest.raises(ValidationError, match="status"):
        RawMessage(source_system="a", source_id="b", payload=b"", content_type="t", received=T0, status="odd")
    with pytest.raises(ValidationError, match="time zone"):
        RawMessage(source_system="a", source_id="b", payload=b"", content_type="t", received=datetime(2024, 1, 1))


def test_observations_filter_by_code_and_window_in_time_order(store: Store) -> None:
    rr = Observation(
        patient_id="p1",
        code=codes.RESPIRATORY_RATE,
        effective=T0 + timedelta(minutes=5),
        value=Quantity(value=18, unit="/min"),
    )
    store.write([hr(i) for i in (9, 3, 7, 1, 5)] + [rr, hr(2, patient_id="p2")])
    got = store.observations("p1", codes.HEART_RATE, since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=9))
    assert [o.effective.minute for o in got] == [3, 5, 7]
    assert len(store.observations("p1")) == 6
    assert store.observations("p1", codes.RESPIRATORY_RATE) == [rr]
    # A window given in another zone means the same instants.
    cet = timezone(timedelta(hours=1))
    got_cet = store.observations("p1", codes.HEART_RATE, since=T0.astimezone(cet) + timedelta(minutes=3))
    assert [o.effective.minute for o in got_cet] == [3, 5, 7, 9]
    with pytest.raises(ValidationError, match="time zone"):
        store.observations("p1", since=datetime(2024, 1, 1))


def test_loinc_query_finds_mdc_coded_and_alt_coded_observations(store: Store) -> None:
    mdc_hr = Observation(
        patient_id="p1",
        code=Coding(system=codes.MDC, code="147842", display="MDC_ECG_HEART_RATE"),
        effective=T0,
        value=Quantity(value=88, unit="/min"),
    )
    local_rr = Observation(
        patient_id="p1",
        code=Coding(system="urn:local", code="RESP"),
        alt_codes=(codes.RESPIRATORY_RATE,),
        effective=T0,
        value=Quantity(value=22, unit="/min"),
    )
    store.write([mdc_hr, local_rr])
    assert store.observations("p1", codes.HEART_RATE) == [mdc_hr]
    assert store.observations("p1", codes.RESPIRATORY_RATE) == [local_rr]
    assert store.observations("p1", Coding(system=codes.MDC, code="147842")) == [mdc_hr]


def test_latest_observations_by_code(store: Store) -> None:
    temp = Observation(
        patient_id="p1", code=codes.BODY_TEMPERATURE, effective=T0, value=Quantity(value=38.2, unit="Cel")
    )
    store.write([hr(i) for i in (1, 4, 2)] + [temp])
    latest = store.latest_observations("p1", [codes.HEART_RATE, codes.BODY_TEMPERATURE, codes.RESPIRATORY_RATE])
    assert set(latest) == {codes.HEART_RATE.code, codes.BODY_TEMPERATURE.code}
    assert latest[codes.HEART_RATE.code].value == Quantity(value=64, unit="/min")
    recent = store.latest_observations(
        "p1", codes=[codes.HEART_RATE, codes.BODY_TEMPERATURE], since=T0 + timedelta(minutes=1)
    )
    assert set(recent) == {codes.HEART_RATE.code}


def test_latest_observations_skip_entered_in_error_and_cancelled(store: Store) -> None:
    """A value retracted as entered-in-error (or a cancelled one) must not show as the patient's latest vital."""
    wrong = dataclasses.replace(hr(9), status="entered-in-error", provenance=prov("p1-hr-9"))
    cancelled = dataclasses.replace(hr(8), status="cancelled", provenance=prov("p1-hr-8"))
    store.write([hr(1), hr(2), cancelled, wrong])
    latest = store.latest_observations("p1", [codes.HEART_RATE])
    assert latest[codes.HEART_RATE.code].value == Quantity(value=62, unit="/min")
    assert len(store.observations("p1", codes.HEART_RATE)) == 4  # kept, and listed, with their status


def test_encounters_overlapping_a_window(store: Store) -> None:
    def enc(eid: str, start_h: float, end_h: float | None, patient_id: str = "p1") -> Encounter:
        return Encounter(
            encounter_id=eid,
            patient_id=patient_id,
            status="finished" if end_h is not None else "in-progress",
            class_code="EMER",
            start=T0 + timedelta(hours=start_h),
            end=None if end_h is None else T0 + timedelta(hours=end_h),
        )

    store.write([enc("late", 10, 12), enc("early", 0, 2), enc("open", 5, None), enc("other", 1, 3, "p2")])
    assert [e.encounter_id for e in store.encounters()] == ["early", "other", "open", "late"]
    assert [e.encounter_id for e in store.encounters("p1")] == ["early", "open", "late"]
    window = store.encounters(since=T0 + timedelta(hours=2.5), until=T0 + timedelta(hours=10))
    assert [e.encounter_id for e in window] == ["other", "open"]


def test_events_filter_and_status_updates(store: Store) -> None:
    a = Event(kind="alert", code="news2", time=T0, message="NEWS2 5", patient_id="p1", event_id="a")
    b = Event(kind="derived", code="map", time=T0 + timedelta(minutes=1), message="MAP 65", patient_id="p1")
    c = Event(kind="alert", code="news2", time=T0 + timedelta(minutes=2), message="NEWS2 7", patient_id="p2")
    store.add_events([c, a, b])
    store.add_events([a])  # same id again: left as it is
    assert [e.message for e in store.events()] == ["NEWS2 5", "MAP 65", "NEWS2 7"]
    assert [e.message for e in store.events(kind="alert")] == ["NEWS2 5", "NEWS2 7"]
    assert store.events(patient_id="p1", kind="derived") == [b]
    assert store.events(since=T0 + timedelta(minutes=2)) == [c]
    acked = store.update_event_status("a", "acknowledged", by="nurse-1")
    assert (acked.status, acked.message) == ("acknowledged", "NEWS2 5")
    assert store.events(status="acknowledged") == [acked]
    assert [e.event_id for e in store.events(status="active")] == [b.event_id, c.event_id]
    with pytest.raises(EventNotFoundError, match="no event with id 'missing'"):
        store.update_event_status("missing", "resolved")
    with pytest.raises(ValidationError, match="'closed' is not one of"):
        store.update_event_status("a", "closed")
    with pytest.raises(ValidationError, match="expected Event"):
        store.add_events([hr(1)])  # type: ignore[list-item]


def test_snapshots_latest_wins(store: Store) -> None:
    assert store.latest_snapshot("twin-1") is None
    store.save_snapshot("twin-1", b"old", T0)
    store.save_snapshot("twin-1", b"new", T0 + timedelta(hours=1))
    store.save_snapshot("twin-1", b"older", T0 - timedelta(hours=1))
    store.save_snapshot("twin-2", b"other", T0 + timedelta(hours=5))
    assert store.latest_snapshot("twin-1") == (T0 + timedelta(hours=1), b"new")


def test_concurrent_writers_from_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for j in range(10):
                batch = [hr(i, patient_id=f"p{k}", minutes=j * 10 + i) for i in range(j * 10, j * 10 + 10)]
                store.write(batch, raw(f"T{k}-{j}"))
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts()["observations"] == 400
    assert store.counts()["raw_inbound"] == 40


def test_reopening_runs_migrations_once(store_url: str) -> None:
    with Store(store_url) as s:
        s.write([hr(1)])
    with Store(store_url) as s:
        assert len(s.observations("p1")) == 1
        with s.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0050"


def test_write_refuses_non_records(store: Store) -> None:
    with pytest.raises(ValidationError, match="str is not a storable record type"):
        store.write(["not a record"])  # type: ignore[list-item]


def test_write_batch_keeps_each_items_idempotency_in_one_transaction(store: Store) -> None:
    results = store.write_batch([([hr(1)], raw("B1")), ([hr(1), hr(2)], raw("B2")), ([hr(3)], raw("B1"))])
    assert [(r.inserted, r.duplicates, r.raw_duplicate) for r in results] == [
        (1, 0, False),
        (1, 1, False),
        (0, 0, True),
    ]
    bad_event = Event(kind="alert", code="x", time=T0, message="m", data={"unstorable": object()})
    with pytest.raises(ValidationError):
        store.write_batch([([hr(4)], raw("B3")), ([bad_event], raw("B4"))])
    assert store.raw_seen("mllp", "B3") is None
    assert len(store.observations("p1")) == 2


def test_store_without_url_uses_the_environment(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTWIN_DATABASE_URL", store_url)
    with Store() as s:
        assert s.url == store_url
        s.write([hr(1)])
    with Store(store_url) as s:
        assert len(s.observations("p1")) == 1


def test_migrations_match_the_schema_and_downgrade_cleanly(store_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from medtwin.store.migrate import alembic_config
    from medtwin.store.schema import metadata

    with Store(store_url) as s:
        with s.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        with s.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
        assert set(inspect(s.engine).get_table_names()) <= {"alembic_version"}
    with Store(store_url) as s:
        assert s.counts()["observations"] == 0


def test_raw_seen_does_not_select_the_payload(store: Store) -> None:
    store.write([hr(1)], raw("BIG", "X" * 100_000))
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        seen = store.raw_seen("mllp", "BIG")
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert seen is not None
    assert seen.payload is None
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1
    assert "payload" not in selects[0]
    assert store.raw_log()[0].payload == b"X" * 100_000  # the full log still reads it


def _bare_patient(patient_id: str) -> Patient:
    return Patient(patient_id=patient_id, provenance=prov(f"Patient/{patient_id}"))


def test_patient_ids_by_prefix_escapes_like_wildcards(store: Store) -> None:
    ids = ["abc-1", "abc-2", "abd", "a%c", "a%d", "a_c", "axc", "ABC-3", "x\\y", "x\\z", "xy"]
    store.write([_bare_patient(i) for i in ids])
    assert sorted(store.patient_ids()) == sorted(ids)  # SQL order follows the database collation
    assert sorted(store.patient_ids("abc")) == ["abc-1", "abc-2"]  # case-sensitive on SQLite too (LIKE is not)
    assert store.patient_ids("ABC") == ["ABC-3"]
    assert sorted(store.patient_ids("a%")) == ["a%c", "a%d"]  # % is literal, not "any"
    assert store.patient_ids("a_") == ["a_c"]  # _ is literal, not "any one character"
    assert sorted(store.patient_ids("x\\")) == ["x\\y", "x\\z"]
    assert store.patient_ids("abd") == ["abd"]
    assert store.patient_ids("nothing") == []
    assert len(store.patient_ids("abc", limit=1)) == 1
    with pytest.raises(ValidationError, match="limit"):
        store.patient_ids("a", limit=0)
