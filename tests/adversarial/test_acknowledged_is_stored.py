"""Issue 13 A: every message answered AA has its raw payload and every record mapped from it stored (or is a true
duplicate of stored content). Each case was silent loss before: AA, and records missing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from medtwin.interop import hl7v2
from medtwin.records import Encounter, Observation, Patient
from medtwin.store import Store

FIXTURE_NAMES = sorted(p.name for p in (Path(__file__).parent.parent / "fixtures" / "hl7v2").glob("*.hl7"))


def stored_observations(store: Store, source_system: str, key: str) -> int:
    """Observations whose provenance is the raw entry (*source_system*, *key*)."""
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM observations WHERE source_system = :s AND source_id LIKE :k"),
                {"s": source_system, "k": key.replace("%", "\\%").replace("_", "\\_") + "/%"},
            ).scalar_one()
        )


def kept(store: Store) -> list[Any]:
    """The accepted and unmapped raw entries, oldest first."""
    entries = store.raw_log("accepted", limit=10_000) + store.raw_log("unmapped", limit=10_000)
    return sorted(entries, key=lambda e: e.raw_id)


def expected_units(payload: bytes, store: Store) -> list[hl7v2.MappedMessage | None]:
    """What the mapper makes of each message of *payload* with *store*'s keyed patient ids (None: refused)."""
    try:
        texts = hl7v2.split_batch(hl7v2.decode_payload(payload))
    except hl7v2.Hl7Error:
        return [None]
    out: list[hl7v2.MappedMessage | None] = []
    for t in texts:
        try:
            out.append(hl7v2.map_message(hl7v2.parse_message(t), patient_id_for=store.keyring.pseudonym))
        except hl7v2.Hl7Error:
            out.append(None)
    return out


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fixture_stores_every_record_it_maps(name: str, tmp_path: Path, mllp: Any) -> None:
    """Walk every HL7 fixture through the listener: for each message the records mapped = the records stored."""
    payload = mllp.fixture_bytes(name)
    with Store(f"sqlite:///{tmp_path / 'walk.db'}") as store:
        units = expected_units(payload, store)
        first = units[0].message if units[0] is not None else None
        with mllp.serving(store) as server:
            if hl7v2.wants_ack(first, True)[0]:
                (ack,) = mllp.exchange(server.port, [payload])
            else:  # MSH-15 and MSH-16 NE: no ACK is sent (the standard's rule); wait until it is stored
                mllp.send_only(server.port, payload)
                ack = "MSA|AA|"
                deadline = time.monotonic() + 30
                while server.stats.accepted + server.stats.unmapped + server.stats.rejected < len(units):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        mapped = [u for u in units if u is not None]
        entries = {(e.source_system, e.source_id): e for e in kept(store)}
        assert len(entries) == len(mapped), (name, ack)
        assert len(store.raw_log("rejected")) == len(units) - len(mapped)
        for unit in mapped:
            entry = entries[(unit.source_system, unit.source_id)]
            observations = [r for r in unit.records if isinstance(r, Observation)]
            assert entry.record_count == len(unit.records)
            assert stored_observations(store, unit.source_system, unit.source_id) == len(observations), name
            for record in unit.records:
                if isinstance(record, Patient):
                    assert store.patient(record.patient_id) is not None
                elif isinstance(record, Encounter):
                    assert record.encounter_id in {e.encounter_id for e in store.encounters(record.patient_id)}
        if all(u is not None and not u.refused for u in units):
            assert mllp.msa(ack)[1] in ("AA", "CA"), ack


def test_lab_oru_with_two_obr_groups_stores_both_groups(store: Store, mllp: Any) -> None:
    """Set ids start again in each OBR group: the second group's results used to collide with the first's."""
    payload = mllp.fixture_bytes("msfhirconv_LAB-ORU-1.hl7")
    with mllp.serving(store) as server:
        (ack,) = mllp.exchange(server.port, [payload])
    assert mllp.msa(ack)[1] == "AA"
    (entry,) = store.raw_log("accepted")
    patient = store.patients()[0].patient_id
    observations = store.observations(patient)
    assert len(observations) == 8 == entry.record_count - 1  # 10 OBX, 2 without a value; + the patient
    assert {o.code.code for o in observations} >= {"11273-0", "23761-0", "26450-7", "30180-4"}
    assert len({o.provenance.source_id for o in observations if o.provenance}) == 8


def _batch(messages: list[bytes]) -> bytes:
    """An FHS/BHS batch frame holding *messages* (as the python-hl7 sample file is built)."""
    head = b"FHS|^~\\&||ABCHS||AUSDHSV|20070101123401|||f.hl7|\rBHS|^~\\&||ABCHS||AUSDHSV|20070101123401||||b-1\r"
    tail = f"BTS|{len(messages)}\rFTS|1\r".encode()
    return head + b"".join(m.rstrip(b"\r") + b"\r" for m in messages) + tail


def test_a_batch_whose_first_message_is_stored_stores_the_others(store: Store, mllp: Any) -> None:
    messages = [_oru(f"B-{i}") for i in range(3)]
    payload = _batch(messages)
    with mllp.serving(store) as server:
        first, whole = mllp.exchange(server.port, [messages[0], payload])
    assert mllp.msa(first)[1] == "AA"
    assert mllp.msa(whole)[1] == "AA", whole
    assert f"batch of {len(messages)} messages: {len(messages)} stored" in whole
    assert [e.source_id for e in kept(store)] == ["B-0", "B-1", "B-2"]
    assert len(store.raw_log("duplicate")) == 1  # the first message, sent twice
    assert len(store.observations(store.patients()[0].patient_id)) == 3 * 6


def test_a_batch_with_one_unreadable_message_stores_the_others(store: Store, mllp: Any) -> None:
    messages = [_oru("G-1"), _oru("G-2").replace(b"|ORU^R01^ORU_R01|", b"||"), _oru("G-3")]
    with mllp.serving(store) as server:
        (ack,) = mllp.exchange(server.port, [_batch(messages)])
    assert mllp.msa(ack)[1] == "AR"
    assert "message 2: MSH-9" in ack
    assert [e.source_id for e in kept(store)] == ["G-1", "G-3"]
    (dead,) = store.raw_log("rejected")
    assert dead.payload == messages[1].rstrip(b"\r")  # the refused message alone, as it came


def _oru(control_id: str, sender: str = "BEDSIDE_MON", mrn: str = "MRN-1") -> bytes:
    base = (FIXTURES_DIR / "authored_ORU_R01_vitals_pcd01_mdc_v26.hl7").read_bytes()
    return (
        base.replace(b"PCD-000042", control_id.encode())
        .replace(b"BEDSIDE_MON^", sender.encode() + b"^", 1)
        .replace(b"MRN-4711", mrn.encode())
    )


FIXTURES_DIR = Path(__file__).parent.parent / "fixtures" / "hl7v2"


def test_overlong_control_ids_and_senders_never_collide(store: Store, mllp: Any) -> None:
    """Two control ids of 450 characters that share their first 400, and two senders of 250 that share their
    first 200: four different messages, four entries (they used to be cut to 400 / 200 characters: "duplicate")."""
    a, b = "C" * 400 + "A" * 50, "C" * 400 + "B" * 50
    s1, s2 = "S" * 200 + "1" * 50, "S" * 200 + "2" * 50
    payloads = [_oru(a), _oru(b), _oru("X-1", s1), _oru("X-1", s2)]
    with mllp.serving(store) as server:
        acks = mllp.exchange(server.port, payloads)
    assert [mllp.msa(x)[1] for x in acks] == ["AA"] * 4
    assert not any("duplicate" in x for x in acks)
    entries = kept(store)
    assert len(entries) == 4
    assert all(len(e.source_id) <= 400 and len(e.source_system) <= 200 for e in entries)
    assert len(store.observations(store.patients()[0].patient_id)) == 4 * 6
    with mllp.serving(store) as server:  # and each is still recognised when resent
        again = mllp.exchange(server.port, payloads)
    assert all("duplicate of a stored message" in x for x in again)


def test_the_same_control_id_with_other_content_is_kept_as_a_conflict(store: Store, mllp: Any) -> None:
    """Five published ADT samples (A01, A03, A08) that all use control id MSG00001, sent with python-hl7's own
    mllp_send client: each is stored; the four after the first are kept as conflicts of it (relation conflict-of),
    and each resent again is a true duplicate."""
    names = [
        "msfhirconv_ADT-A01-01.hl7",
        "msfhirconv_ADT-A01-02.hl7",
        "msfhirconv_ADT-A03-01.hl7",
        "msfhirconv_ADT-A08-01.hl7",
        "msfhirconv_ADT-A08-02.hl7",
    ]
    mllp_send = Path(sys.executable).parent / "mllp_send"
    with mllp.serving(store) as server:
        acks = []
        for name in [*names, names[2]]:
            done = subprocess.run(
                [str(mllp_send), "--loose", "-f", str(mllp.fixtures / name), "-p", str(server.port), "127.0.0.1"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            acks.append(done.stdout.replace("\n", "\r"))
        stats = server.stats
    assert [mllp.msa(a)[1] for a in acks] == ["AA"] * 6
    assert not any("duplicate" in a for a in acks[:5])
    assert "duplicate of a stored message" in acks[5]
    entries = kept(store)
    assert len(entries) == 5
    first = entries[0]
    assert (first.source_id, first.relation) == ("MSG00001", None)
    assert all(e.relation == "conflict-of" and e.related_raw_id == first.raw_id for e in entries[1:])
    assert all(e.source_id.startswith("MSG00001#conflict-") for e in entries[1:])
    assert (stats.conflicts, stats.duplicates) == (4, 1)
    with store.engine.connect() as conn:  # every version of the patient and encounter is kept
        versions = conn.execute(text("SELECT count(*) FROM record_versions WHERE kind = 'encounter'")).scalar_one()
    assert versions >= 4


def test_an_unmapped_type_resent_three_times_is_stored_once(store: Store, mllp: Any) -> None:
    orm = _oru("ORM-1").replace(b"ORU^R01^ORU_R01", b"ORM^O01^ORM_O01")
    with mllp.serving(store) as server:
        acks = mllp.exchange(server.port, [orm, orm, orm])
    assert [mllp.msa(a)[1] for a in acks] == ["AA"] * 3
    assert len(store.raw_log("unmapped")) == 1
    assert len(store.raw_log("duplicate")) == 2


def test_an_oru_with_an_empty_obx6_stores_what_maps_and_names_the_rest(store: Store, mllp: Any) -> None:
    """A published public-health ORU^R01 whose heart-rate OBX has no unit: the other results and the patient are
    stored and the ACK is AE with an ERR naming that OBX (it used to be refused whole)."""
    payload = mllp.fixture_bytes("msfhirconv_ORU-R01-01.hl7")
    # MSH-15 AL (enhanced mode): the commit ACK says committed, CA, with the refusal as a warning (ERR-4 W); the
    # same message in original mode gets AE with the ERR as an error
    control = hl7v2.parse_payload(payload)[0].control_id
    original = payload.replace(b"|AL|NE|USA|", b"|||USA|").replace(control.encode(), b"ORIGINAL-MODE")
    with mllp.serving(store) as server:
        (ack, ack_original) = mllp.exchange(server.port, [payload, original])
    assert mllp.msa(ack)[1:3] == ["CA", control]
    assert mllp.msa(ack_original)[1:3] == ["AE", "ORIGINAL-MODE"]
    assert [e[4] for e in mllp.errs(ack)] == ["W"]
    assert [e[4] for e in mllp.errs(ack_original)] == ["E"]
    (err,) = mllp.errs(ack)
    assert err[2] == "OBX[2]^6"
    assert err[3].startswith("101^")
    assert "OBX-6 unit is empty" in err[8]
    entries = store.raw_log("accepted")
    assert len(entries) == 2
    assert all("refused OBX[2]^6" in (e.reason or "") for e in entries)
    assert len(store.observations(store.patients()[0].patient_id)) == 2 * 3
