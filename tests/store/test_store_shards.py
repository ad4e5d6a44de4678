"""The raw log's patient hash (revision 0030): stored with each single-patient entry, tested in SQL by shard."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update

from medtwin.records import Coding, Observation, Patient, Quantity
from medtwin.store import RawMessage, Store, accepted_after, schema
from medtwin.store.shards import entry_patient, in_shard, patient_hash, shard_of, shard_of_hash

AT = datetime(2026, 12, 7, 8, tzinfo=UTC)


def obs(pid: str, k: int) -> Observation:
    return Observation(observation_id=f"o-{pid}-{k}", patient_id=pid,
                       code=Coding(system="http://loinc.org", code="8867-4"), effective=AT,
                       value=Quantity(value=70.0 + k, unit="/min"))  # fmt: skip


def raw(key: str) -> RawMessage:
    return RawMessage(source_system="test", source_id=key, payload=f"payload {key}", content_type="text/plain",
                      received=AT)  # fmt: skip


def test_the_hash_is_blake2b_as_signed_64_bits_and_its_shard_the_unsigned_value_mod_n() -> None:
    for pid in ("a", "pt-5d2c", "pt-sim-cgm-0001", "pt-sim-cgm-0002", "é"):
        u = int.from_bytes(hashlib.blake2b(pid.encode(), digest_size=8).digest(), "big")
        h = patient_hash(pid)
        assert -(2**63) <= h < 2**63
        assert h % 2**64 == u
        for n in (1, 2, 3, 7, 64):
            assert shard_of_hash(h, n) == shard_of(pid, n) == u % n
    assert any(patient_hash(f"pt-{i}") < 0 for i in range(20))  # both signs occur: the SQL test handles both


def test_an_entry_has_one_patient_only_when_every_record_names_the_same_one() -> None:
    assert entry_patient([obs("p1", 1), obs("p1", 2), Patient(patient_id="p1")]) == "p1"
    assert entry_patient([obs("p1", 1), obs("p2", 1)]) is None
    assert entry_patient([]) is None


def test_the_sql_shard_test_agrees_with_shard_of_for_every_stored_hash(store_url: str) -> None:
    pids = [f"pt-{i}" for i in range(60)]
    with Store(store_url) as store:
        store.write_batch([([obs(pid, 0)], raw(pid)) for pid in pids])
        store.write_batch([([obs("x1", 0), obs("x2", 0)], raw("two-patients")), ([], raw("no-records"))])
        t = schema.raw_inbound
        with store._reading() as conn:
            stored = dict(conn.execute(select(t.c.source_id, t.c.patient_hash)).all())
        assert {k: stored[k] for k in pids} == {pid: patient_hash(pid) for pid in pids}
        assert stored["two-patients"] is None
        assert stored["no-records"] is None
        for n in (2, 3, 5):
            seen: list[list[str]] = []
            for k in range(n):
                with store._reading() as conn:
                    rows = conn.execute(select(t.c.source_id).where(in_shard(t.c.patient_hash, k, n))).scalars()
                    seen.append(sorted(rows))
            for k, ids in enumerate(seen):
                assert {"two-patients", "no-records"} <= set(ids)  # tied to no single patient: every shard
                assert sorted(i for i in ids if i.startswith("pt-")) == sorted(p for p in pids if shard_of(p, n) == k)


def test_accepted_after_by_shard_and_up_to_a_position(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/s.db") as store:
        pids = [f"pt-{i}" for i in range(12)]
        store.write_batch([([obs(pid, 0)], raw(pid)) for pid in pids])
        everything = accepted_after(store, 0)
        assert [m.patient_hash for m in everything] == [patient_hash(p) for p in pids]
        shards = [accepted_after(store, 0, shard=(k, 2)) for k in range(2)]
        assert sorted(m.raw_id for s in shards for m in s) == [m.raw_id for m in everything]
        assert all(shard_of_hash(m.patient_hash or 0, 2) == k for k, s in enumerate(shards) for m in s)
        assert [m.raw_id for m in accepted_after(store, 0, through=everything[4].raw_id)] == [
            m.raw_id for m in everything[:5]
        ]
        # an entry stored before revision 0030 (no hash) is read by every shard
        with store._transaction() as conn:
            conn.execute(update(schema.raw_inbound).where(schema.raw_inbound.c.raw_id == everything[0].raw_id)
                         .values(patient_hash=None))  # fmt: skip
        assert all(accepted_after(store, 0, shard=(k, 2))[0].raw_id == everything[0].raw_id for k in range(2))
