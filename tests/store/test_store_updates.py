"""Update semantics of the store: ADT-style versions of patients and encounters replace, history is kept."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from medtwin.errors import ValidationError
from medtwin.records import Encounter, EncounterLocation, Event, Identifier, Patient, PatientIdentity, Provenance
from medtwin.store import RawMessage, Store, schema
from medtwin.store.versions import merge_encounter

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=5)
T2 = T0 + timedelta(hours=30)


def prov(msg: str, seg: str) -> Provenance:
    return Provenance(source_system="adt", source_id=f"{msg}/{seg}")


def raw(msg: str) -> RawMessage:
    return RawMessage(source_system="adt", source_id=msg, payload=b"MSH|...", content_type="hl7", received=T0)


def patient(
    msg: str, family: str = "Doe", gender: str | None = "female", given: tuple[str, ...] = ("Jane",)
) -> Patient:
    identity = PatientIdentity(
        identifiers=(Identifier(system="H", value="MRN1", type_code="MR"),), family=family, given=given
    )
    return Patient(patient_id="p1", gender=gender, identity=identity, provenance=prov(msg, "PID"))  # type: ignore[arg-type]


def a01() -> Encounter:
    loc = EncounterLocation(unit="ED", start=T0, bed="3")
    return Encounter(
        encounter_id="v1",
        patient_id="p1",
        status="in-progress",
        class_code="IMP",
        start=T0,
        locations=(loc,),
        provenance=prov("A01", "PV1"),
    )


def a02() -> Encounter:
    loc = EncounterLocation(unit="ICU", start=T1, bed="7")
    return Encounter(
        encounter_id="v1",
        patient_id="p1",
        status="in-progress",
        class_code="IMP",
        start=T0,
        locations=(loc,),
        provenance=prov("A02", "PV1"),
    )


def a03() -> Encounter:
    loc = EncounterLocation(unit="ICU", start=T2, end=T2, bed="7")
    return Encounter(
        encounter_id="v1",
        patient_id="p1",
        status="finished",
        class_code="IMP",
        start=T0,
        end=T2,
        locations=(loc,),
        provenance=prov("A03", "PV1"),
    )


EXPECTED_STAYS = (
    EncounterLocation(unit="ED", start=T0, end=T1, bed="3"),
    EncounterLocation(unit="ICU", start=T1, end=T2, bed="7"),
)


def versions(store: Store, kind: str) -> list[tuple[str | None, str]]:
    v = schema.record_versions
    with store.engine.connect() as conn:
        stmt = select(v.c.source_id, v.c.record_id).where(v.c.kind == kind).order_by(v.c.version_id)
        return [(r[0], r[1]) for r in conn.execute(stmt)]


def test_admit_transfer_discharge_give_one_encounter_with_two_stays_and_an_end(store: Store) -> None:
    results = [store.write([e], raw(e.provenance.source_id.split("/")[0])) for e in (a01(), a02(), a03())]  # type: ignore[union-attr]
    assert [(r.inserted, r.updated, r.duplicates) for r in results] == [(1, 0, 0), (0, 1, 0), (0, 1, 0)]
    [enc] = store.encounters("p1")
    assert (enc.status, enc.start, enc.end) == ("finished", T0, T2)
    assert enc.locations == EXPECTED_STAYS
    assert enc.provenance == prov("A03", "PV1")
    assert versions(store, "encounter") == [("A01/PV1", "v1"), ("A02/PV1", "v1"), ("A03/PV1", "v1")]
    # the stays table (census queries) follows the current encounter
    l_t = schema.encounter_locations
    with store.engine.connect() as conn:
        stays = conn.execute(select(l_t.c.unit, l_t.c.start, l_t.c.end).order_by(l_t.c.seq)).all()
    assert [tuple(s) for s in stays] == [("ED", T0, T1), ("ICU", T1, T2)]
    assert store.counts()["encounters"] == 1


def test_resending_any_version_changes_nothing(store: Store) -> None:
    for e in (a01(), a02(), a03()):
        store.write([e])
    before = (store.encounters("p1"), versions(store, "encounter"))
    for e in (a02(), a01(), a03()):  # same provenance, no raw message: stored once
        result = store.write([e])
        assert (result.inserted, result.updated, result.duplicates) == (0, 0, 1)
    assert (store.encounters("p1"), versions(store, "encounter")) == before


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_out_of_order_arrival_gives_the_in_order_encounter(store: Store, order: tuple[int, ...]) -> None:
    stream = (a01(), a02(), a03())
    for i in order:
        store.write([stream[i]])
    [enc] = store.encounters("p1")
    assert (enc.status, enc.start, enc.end, enc.locations) == ("finished", T0, T2, EXPECTED_STAYS)


def test_whole_visit_in_one_batch_equals_one_write_each(store: Store) -> None:
    results = store.write_batch(
        [([a01()], raw("A01")), ([a02()], raw("A02")), ([a03()], raw("A03")), ([a02()], raw("A02"))]
    )
    assert [(r.inserted, r.updated, r.duplicates, r.raw_duplicate) for r in results] == [
        (1, 0, 0, False),
        (0, 1, 0, False),
        (0, 1, 0, False),
        (0, 0, 0, True),
    ]
    [enc] = store.encounters("p1")
    assert enc.locations == EXPECTED_STAYS


def test_patient_update_replaces_demographics_and_keeps_history(store: Store) -> None:
    assert store.write([patient("A01")]).inserted == 1
    result = store.write([patient("A08", family="Smith", gender="male")])
    assert (result.inserted, result.updated, result.duplicates) == (0, 1, 0)
    current = store.patient("p1")
    assert current is not None
    assert current.identity is not None
    assert (current.gender, current.identity.family, current.identity.given) == ("male", "Smith", ("Jane",))
    assert versions(store, "patient") == [("A01/PID", "p1"), ("A08/PID", "p1")]
    iv = schema.patient_identity_versions
    with store.engine.connect() as conn:
        sealed = conn.execute(select(iv.c.body).order_by(iv.c.version_id)).scalars().all()
    assert all(b.startswith("mte1.") for b in sealed)  # encrypted at rest (docs/security-data.md)
    bodies = [store.keys.open_text(b) or "" for b in sealed]
    assert ['"Doe"' in b for b in bodies] == [True, False]  # the replaced name is kept in the history
    assert store.write([patient("A08", family="Smith", gender="male")]).duplicates == 1  # resend: no change
    assert len(versions(store, "patient")) == 2


def test_a_sparse_repeat_of_the_patient_changes_nothing(store: Store) -> None:
    store.write([patient("A01")])
    oru = Patient(patient_id="p1", identity=PatientIdentity(family=None), provenance=prov("ORU1", "PID"))
    result = store.write([oru])
    assert (result.inserted, result.updated, result.duplicates) == (0, 0, 1)
    assert store.patient("p1") == patient("A01")
    assert len(versions(store, "patient")) == 1


def test_an_old_patient_version_resent_does_not_undo_a_newer_one(store: Store) -> None:
    store.write([patient("A01")])
    store.write([patient("A08", family="Smith")])
    assert store.write([patient("A01")]).duplicates == 1
    current = store.patient("p1")
    assert current is not None
    assert current.identity is not None
    assert current.identity.family == "Smith"


def test_failed_batch_leaves_no_update_behind(store: Store) -> None:
    store.write([a01()])
    bad = Encounter(encounter_id="v2", patient_id="p1", status="x", class_code="IMP", start=T0)
    unstorable = Event(kind="alert", code="x", time=T0, message="m", data={"bad": object()})
    with pytest.raises(ValidationError, match="cannot be stored as JSON"):
        store.write_batch([([a02(), bad], raw("A02")), ([unstorable], raw("E1"))])
    [enc] = store.encounters("p1")
    assert enc == a01()
    assert versions(store, "encounter") == [("A01/PV1", "v1")]


def test_merge_encounter_needs_a_version() -> None:
    with pytest.raises(ValueError, match="no versions"):
        merge_encounter([])


def test_upgrade_from_0001_carries_stored_records_over_as_first_versions(store_url: str) -> None:
    from alembic import command

    from medtwin.store.migrate import alembic_config

    with Store(store_url) as s:
        s.write([patient("A01"), a01()])
        with s.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0001")
        with s.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        assert versions(s, "encounter") == [("A01/PV1", "v1")]
        assert versions(s, "patient") == [("A01/PID", "p1")]
        assert s.write([a02()]).updated == 1
        [enc] = s.encounters("p1")
        assert [loc.unit for loc in enc.locations] == ["ED", "ICU"]
        iv = schema.patient_identity_versions
        with s.engine.connect() as conn:
            assert len(conn.execute(select(iv.c.body)).all()) == 1
