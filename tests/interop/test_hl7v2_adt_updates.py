"""ADT^A01/A02/A03/A08 for one visit, mapped and stored: one encounter that moves, ends, and a patient that changes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from medtwin import codes
from medtwin.interop import hl7v2
from medtwin.records import Coding, Encounter, EncounterLocation
from medtwin.store import RawMessage, Store

ADMIT = "20260301080000"
TRANSFER = "20260301130000"
DISCHARGE = "20260302140000"
V2_0112 = "http://terminology.hl7.org/CodeSystem/v2-0112"


def adt(event: str, control_id: str, when: str, unit: str, bed: str, *, family: str = "DOE", sex: str = "F") -> str:
    pv1 = ["PV1", "1", "I", f"{unit}^{bed}^1", *[""] * 15, "V100", *[""] * 24, ADMIT]
    if event == "A03":
        pv1.append(DISCHARGE)
    return "\r".join(
        [
            f"MSH|^~\\&|ADT|HOSP|MT|MT|{when}||ADT^{event}^ADT_{event}|{control_id}|P|2.5",
            f"EVN|{event}|{when}",
            f"PID|1||MRN1^^^HOSP^MR||{family}^JANE||19600101|{sex}",
            "|".join(pv1),
        ]
    )


A01 = adt("A01", "C1", ADMIT, "ED", "3")
A02 = adt("A02", "C2", TRANSFER, "ICU", "7")
A03 = adt("A03", "C3", DISCHARGE, "ICU", "7")
A08 = adt("A08", "C4", "20260301150000", "ICU", "7", family="SMITH", sex="M")


def t(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'adt.db'}")
    try:
        yield s
    finally:
        s.close()


def ingest(store: Store, text: str) -> tuple[int, int, int, bool]:
    message = hl7v2.parse_message(text)
    mapped = hl7v2.map_message(message)
    raw = RawMessage(
        source_system=message.source_system,
        source_id=message.control_id,
        payload=text,
        content_type="x-application/hl7-v2+er7",
        received=datetime(2026, 3, 3, tzinfo=UTC),
    )
    r = store.write(mapped.records, raw)
    return r.inserted, r.updated, r.duplicates, r.raw_duplicate


STAYS = (
    EncounterLocation(unit="ED", start=t(ADMIT), end=t(TRANSFER), bed="3/1"),
    EncounterLocation(unit="ICU", start=t(TRANSFER), end=t(DISCHARGE), bed="7/1"),
)


def test_transfer_maps_the_new_unit_from_the_event_time() -> None:
    [enc] = [r for r in hl7v2.map_message(hl7v2.parse_message(A02)).records if isinstance(r, Encounter)]
    assert enc.locations == (EncounterLocation(unit="ICU", start=t(TRANSFER), bed="7/1"),)
    assert enc.start == t(ADMIT)


def test_admit_transfer_discharge_give_one_encounter_with_two_stays(store: Store) -> None:
    assert ingest(store, A01) == (2, 0, 0, False)  # patient + encounter
    assert ingest(store, A02) == (0, 1, 1, False)  # same patient (no change), encounter moved
    assert ingest(store, A03) == (0, 1, 1, False)
    [enc] = store.encounters()
    assert (enc.encounter_id, enc.status, enc.start, enc.end) == ("V100", "finished", t(ADMIT), t(DISCHARGE))
    assert enc.locations == STAYS
    for text in (A01, A02, A03):  # a resend of any of them is acknowledged and changes nothing
        assert ingest(store, text) == (0, 0, 0, True)
    assert store.encounters() == [enc]


def test_a08_updates_the_patient_and_keeps_the_old_name(store: Store) -> None:
    ingest(store, A01)
    assert ingest(store, A08)[1] >= 1
    [patient] = store.patients()
    assert patient.gender == "male"
    assert patient.identity is not None
    assert patient.identity.family == "SMITH"
    with store.engine.connect() as conn:
        sealed = [r[0] for r in conn.exec_driver_sql("SELECT body FROM patient_identity_versions")]
    history = [store.keys.open_text(b) or "" for b in sealed]  # encrypted at rest (docs/security-data.md)
    assert any('"DOE"' in b for b in history)


@pytest.mark.parametrize("order", list(itertools.permutations((A01, A02, A03))))
def test_any_arrival_order_gives_the_same_visit(store: Store, order: tuple[str, ...]) -> None:
    for text in order:
        ingest(store, text)
    [enc] = store.encounters()
    assert (enc.status, enc.end, enc.locations) == ("finished", t(DISCHARGE), STAYS)


@pytest.mark.parametrize(
    ("pv1_36", "expected"),
    [
        ("lwbs", codes.DISCHARGE_LWBS),
        ("other-hcf", codes.DISCHARGE_OTHER_HCF),
        ("EXP", codes.DISCHARGE_EXPIRED),
        ("07^Left against medical advice", Coding(system=V2_0112, code="07", display="Left against medical advice")),
        ("", None),
    ],
)
def test_pv1_36_discharge_disposition_maps_to_the_encounter(pv1_36: str, expected: Coding | None) -> None:
    segments = A03.split("\r")
    pv1 = segments[-1].split("|")
    pv1[36] = pv1_36
    segments[-1] = "|".join(pv1)
    [enc] = [r for r in hl7v2.map_message(hl7v2.parse_message("\r".join(segments))).records if isinstance(r, Encounter)]
    assert enc.disposition == expected
    assert (enc.status, enc.end) == ("finished", t(DISCHARGE))
