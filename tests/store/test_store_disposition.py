"""Encounter discharge disposition round-trips through the store (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import orjson

from medtwin import codes
from medtwin.records import Encounter, EncounterLocation, Provenance
from medtwin.store import Store
from medtwin.store.codec import decode, encode

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def enc(eid: str, disposition: object) -> Encounter:
    return Encounter(
        encounter_id=eid,
        patient_id="p1",
        status="finished",
        class_code="EMER",
        start=T0,
        end=T0 + timedelta(hours=3),
        locations=(EncounterLocation(unit="ED", start=T0, end=T0 + timedelta(hours=3)),),
        disposition=disposition,  # type: ignore[arg-type]
        provenance=Provenance(source_system="test", source_id=f"Encounter/{eid}"),
    )


def test_disposition_round_trips_through_the_store(store: Store) -> None:
    records = [enc("lwbs", codes.DISCHARGE_LWBS), enc("xfer", codes.DISCHARGE_OTHER_HCF), enc("none", None)]
    assert store.write(records).inserted == 3
    got = {e.encounter_id: e for e in store.encounters("p1")}
    assert got["lwbs"].disposition == codes.DISCHARGE_LWBS
    assert got["xfer"].disposition == codes.DISCHARGE_OTHER_HCF
    assert got["none"].disposition is None
    assert sorted(got.values(), key=lambda e: e.encounter_id) == sorted(records, key=lambda e: e.encounter_id)


def test_body_written_before_the_field_existed_decodes_with_no_disposition() -> None:
    body = orjson.loads(encode(enc("old", codes.DISCHARGE_EXPIRED)))
    assert body["disposition"]["code"] == "exp"
    del body["disposition"]
    assert decode(Encounter, orjson.dumps(body)).disposition is None


def test_disposition_survives_a_versioned_update(store: Store) -> None:
    admitted = dataclasses.replace(
        enc("v1", None), status="in-progress", end=None, locations=(EncounterLocation(unit="ED", start=T0),)
    )
    discharged = dataclasses.replace(
        enc("v1", codes.DISCHARGE_LWBS), provenance=Provenance(source_system="test", source_id="Encounter/v1#2")
    )
    store.write([admitted])
    store.write([discharged])
    [got] = store.encounters("p1")
    assert got.end == discharged.end
    assert got.disposition == codes.DISCHARGE_LWBS
