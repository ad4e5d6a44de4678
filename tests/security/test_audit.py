"""The audit chain: append, durability, verification against each kind of tampering, FHIR AuditEvent export."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fhirclient.models.auditevent import AuditEvent as FhirAuditEvent
from sqlalchemy import delete, insert, select, update

from medtwin.errors import ValidationError
from medtwin.security.audit import GENESIS, AuditEvent, AuditTrail, to_fhir
from medtwin.store import Store, schema

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def _event(i: int, action: str = "read", **kw: object) -> AuditEvent:
    base: dict[str, object] = {
        "time": T0 + timedelta(seconds=i),
        "actor": f"user-{i % 3}",
        "role": "clinician",
        "action": action,
        "resource": f"Patient/pt-{i:016x}",
        "patient_id": f"pt-{i:016x}",
        "source": "127.0.0.1",
    }
    base.update(kw)
    return AuditEvent(**base)  # type: ignore[arg-type]


@pytest.fixture
def trail(store_url: str, tmp_path: Path) -> AuditTrail:
    t = AuditTrail(store_url, tmp_path / "audit.key")
    t.record_many(_event(i) for i in range(10))
    t.flush()  # the head file names record 10 (it is otherwise written at most once a second)
    yield t
    t.close()


def _engine(trail: AuditTrail):  # the database as an intruder sees it
    return trail._store.engine


def test_events_get_consecutive_numbers_and_verify(trail: AuditTrail) -> None:
    assert trail.count() == 10
    records = trail.records()
    assert [r.seq for r in records] == list(range(1, 11))
    assert records[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert records[3].event == _event(3)
    result = trail.verify()
    assert result.ok, result.reason
    assert result.records == 10


def test_concurrent_callers_share_batches_and_lose_nothing(store_url: str, tmp_path: Path) -> None:
    trail = AuditTrail(store_url, tmp_path / "audit.key")
    seqs: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(25):
            s = trail.record(_event(k * 100 + i))
            with lock:
                seqs.append(s)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(seqs) == list(range(1, 201))
    with _engine(trail).connect() as conn:
        checkpoints = conn.execute(select(schema.audit_checkpoints.c.seq)).scalars().all()
    assert len(checkpoints) <= 200  # one per committed batch
    assert trail.verify().ok
    trail.close()


def test_a_returned_record_is_committed(store_url: str, tmp_path: Path) -> None:
    """record() returns after the commit: another connection (another process) sees the row at once."""
    trail = AuditTrail(store_url, tmp_path / "audit.key")
    seq = trail.record(_event(1))
    other = Store(store_url)
    with other.engine.connect() as conn:
        assert conn.execute(select(schema.audit_log.c.seq)).scalars().all() == [seq]
    other.close()
    trail.close()


def test_modified_record_is_named(trail: AuditTrail) -> None:
    with _engine(trail).begin() as conn:
        conn.execute(update(schema.audit_log).where(schema.audit_log.c.seq == 4).values(actor="someone-else"))
    result = trail.verify()
    assert not result.ok
    assert result.first_bad_seq == 4
    assert "modified" in result.reason


def test_deleted_record_is_named(trail: AuditTrail) -> None:
    with _engine(trail).begin() as conn:
        conn.execute(delete(schema.audit_log).where(schema.audit_log.c.seq == 6))
    result = trail.verify()
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert "missing" in result.reason


def test_inserted_record_is_named(trail: AuditTrail) -> None:
    """An intruder makes room (renumbers 5..10 to 6..11) and inserts a row with a chain link that fits."""
    t = schema.audit_log
    with _engine(trail).begin() as conn:
        rows = conn.execute(select(t).where(t.c.seq >= 5).order_by(t.c.seq.desc())).all()
        for r in rows:
            conn.execute(update(t).where(t.c.seq == r.seq).values(seq=r.seq + 1))
        prev = conn.execute(select(t.c.hash).where(t.c.seq == 4)).scalar_one()
        forged = {k: getattr(rows[-1], k) for k in rows[-1]._fields}
        forged.update(seq=5, actor="intruder", prev_hash=prev)
        conn.execute(insert(t), forged)
    result = trail.verify()
    assert (result.ok, result.first_bad_seq) == (False, 5)


def test_reordered_records_are_named(trail: AuditTrail) -> None:
    t = schema.audit_log
    with _engine(trail).begin() as conn:
        conn.execute(update(t).where(t.c.seq == 3).values(seq=-3))
        conn.execute(update(t).where(t.c.seq == 7).values(seq=3))
        conn.execute(update(t).where(t.c.seq == -3).values(seq=7))
    result = trail.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "does not follow" in result.reason


def test_rewritten_chain_fails_the_signed_checkpoint(trail: AuditTrail) -> None:
    """An intruder who edits a row and recomputes every hash after it still cannot sign a checkpoint."""
    from medtwin.security.audit import _chain_hash

    t = schema.audit_log
    with _engine(trail).begin() as conn:
        conn.execute(update(t).where(t.c.seq == 2).values(action="search"))
        prev = GENESIS
        for r in conn.execute(select(t).order_by(t.c.seq)).all():
            values = {k: getattr(r, k) for k in r._fields}
            h = _chain_hash(prev, r.seq, values)
            conn.execute(update(t).where(t.c.seq == r.seq).values(prev_hash=prev, hash=h))
            prev = h
    result = trail.verify()
    assert not result.ok
    assert result.first_bad_seq is not None
    assert result.first_bad_seq <= 2
    assert "checkpoint" in result.reason


def test_appended_forgery_is_detected(trail: AuditTrail) -> None:
    from medtwin.security.audit import _chain_hash, _row_values

    t = schema.audit_log
    with _engine(trail).begin() as conn:
        prev = conn.execute(select(t.c.hash).where(t.c.seq == 10)).scalar_one()
        values = _row_values(_event(11, actor="intruder"))
        conn.execute(insert(t), {"seq": 11, **values, "prev_hash": prev, "hash": _chain_hash(prev, 11, values)})
    result = trail.verify()
    assert (result.ok, result.first_bad_seq) == (False, 11)
    assert "not covered" in result.reason


def test_truncation_is_detected_by_checkpoint(trail: AuditTrail) -> None:
    with _engine(trail).begin() as conn:
        conn.execute(delete(schema.audit_log).where(schema.audit_log.c.seq > 7))
    result = trail.verify()
    assert (result.ok, result.first_bad_seq) == (False, 8)
    assert "truncated" in result.reason


def test_truncation_with_checkpoints_removed_is_detected_by_the_head_file(trail: AuditTrail) -> None:
    with _engine(trail).begin() as conn:
        conn.execute(delete(schema.audit_log).where(schema.audit_log.c.seq > 7))
        conn.execute(delete(schema.audit_checkpoints).where(schema.audit_checkpoints.c.seq > 7))
    result = trail.verify()
    assert (result.ok, result.first_bad_seq) == (False, 8), result.reason
    assert "head file" in result.reason


def _head_seq(trail: AuditTrail) -> int:
    import orjson

    assert trail.head_path is not None
    return int(orjson.loads(trail.head_path.read_bytes())["seq"])


def _cut_after(trail: AuditTrail, seq: int) -> None:
    """An intruder deletes the records after *seq* and their checkpoints (a consistent, shorter chain)."""
    with _engine(trail).begin() as conn:
        conn.execute(delete(schema.audit_log).where(schema.audit_log.c.seq > seq))
        conn.execute(delete(schema.audit_checkpoints).where(schema.audit_checkpoints.c.seq > seq))


@pytest.fixture
def lagging(store_url: str, tmp_path: Path) -> AuditTrail:
    """A trail whose head file names record 3 while records 4..9 are committed (the head thread rests an hour)."""
    t = AuditTrail(store_url, tmp_path / "audit.key", head_interval_s=3600)
    t.record_many(_event(i) for i in range(3))
    t.flush()
    t.record_many(_event(i) for i in range(3, 9))
    yield t
    t.close()


def test_the_head_file_lags_at_most_one_interval_and_flush_brings_it_up(lagging: AuditTrail) -> None:
    assert lagging.count() == 9
    assert _head_seq(lagging) == 3  # written at the flush; the next write waits for the interval
    assert lagging.verify().ok  # a head file behind the log is consistent
    lagging.flush()
    assert _head_seq(lagging) == 9


def test_a_cut_reaching_the_head_files_record_is_detected_while_the_head_lags(lagging: AuditTrail) -> None:
    _cut_after(lagging, 2)
    result = lagging.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "head file" in result.reason


def test_a_cut_after_the_head_files_record_is_caught_by_the_next_append(lagging: AuditTrail) -> None:
    """Records 4..9 are not in the head file yet; cutting them is refused at the next append, which writes
    nothing (the requests it audits fail: nothing is answered unaudited)."""
    from medtwin.security.audit import AuditIntegrityError

    _cut_after(lagging, 5)
    with pytest.raises(AuditIntegrityError, match="cut off"):
        lagging.record(_event(20))
    assert lagging.count() == 5


def test_a_rewritten_last_record_is_caught_by_the_next_append(lagging: AuditTrail) -> None:
    from medtwin.security.audit import AuditIntegrityError, _chain_hash

    t = schema.audit_log
    with _engine(lagging).begin() as conn:
        row = conn.execute(select(t).where(t.c.seq == 9)).one()
        values = {k: getattr(row, k) for k in row._fields}
        values["actor"] = "someone-else"
        conn.execute(
            update(t).where(t.c.seq == 9).values(actor="someone-else", hash=_chain_hash(row.prev_hash, 9, values))
        )
    with pytest.raises(AuditIntegrityError, match="rewritten"):
        lagging.record(_event(20))


def test_close_writes_the_head_file(lagging: AuditTrail, store_url: str, tmp_path: Path) -> None:
    lagging.close()
    assert _head_seq(lagging) == 9
    again = AuditTrail(store_url, tmp_path / "audit.key")  # the next start, after an intruder's cut
    _cut_after(again, 8)
    result = again.verify()
    assert (result.ok, result.first_bad_seq) == (False, 9)
    assert "head file" in result.reason
    again.close()


def test_interval_zero_writes_the_head_before_the_event_is_acknowledged(store_url: str, tmp_path: Path) -> None:
    t = AuditTrail(store_url, tmp_path / "audit.key", head_interval_s=0)
    for i in range(1, 4):
        assert t.record(_event(i)) == i
        assert _head_seq(t) == i
    t.close()


def test_the_head_thread_writes_the_newest_head_without_a_flush(store_url: str, tmp_path: Path) -> None:
    """No flush, no close: the head thread alone brings the head file to the last record (interval 0.05 s)."""
    t = AuditTrail(store_url, tmp_path / "audit.key", head_interval_s=0.05)
    t.record(_event(1))
    t.record_many(_event(i) for i in range(2, 6))
    deadline = time.monotonic() + 30
    assert t.head_path is not None
    while (not t.head_path.exists() or _head_seq(t) < 5) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _head_seq(t) == 5
    t.close()


def test_another_trail_appending_in_between_is_not_a_cut(trail: AuditTrail, tmp_path: Path) -> None:
    again = AuditTrail(trail._store, tmp_path / "audit.key")
    assert again.record(_event(11)) == 11
    again.close()
    assert trail.record(_event(12)) == 12
    trail.flush()
    assert trail.verify().ok


def test_record_many_nowait_commits_a_group_with_one_future(trail: AuditTrail) -> None:
    future = trail.record_many_nowait([_event(20), _event(21), _event(22)])
    assert future.result() == [11, 12, 13]
    assert [r.event for r in trail.records(after=10)] == [_event(20), _event(21), _event(22)]
    with pytest.raises(ValidationError, match="expected AuditEvent"):
        trail.record_many_nowait([_event(23), "not an event"])  # type: ignore[list-item]


def test_forged_checkpoint_signature_is_detected(trail: AuditTrail) -> None:
    c = schema.audit_checkpoints
    with _engine(trail).begin() as conn:
        conn.execute(update(c).values(signature="00" * 64))
    assert not trail.verify().ok


def test_a_second_trail_continues_the_chain(trail: AuditTrail, tmp_path: Path) -> None:
    again = AuditTrail(trail._store, tmp_path / "audit.key")
    assert again.record(_event(11)) == 11
    assert again.verify().ok
    again.close()


def test_another_signing_key_does_not_verify(trail: AuditTrail, tmp_path: Path) -> None:
    other = AuditTrail(trail._store, tmp_path / "other.key")
    assert not other.verify().ok


def test_bad_events_are_refused() -> None:
    with pytest.raises(ValidationError, match="action"):
        _event(1, action="peek")
    with pytest.raises(ValidationError, match="time zone"):
        _event(1, time=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="outcome"):
        _event(1, outcome="maybe")


def test_verify_does_not_create_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no audit signing key"):
        AuditTrail("sqlite://", tmp_path / "missing.key", create_key=False)


@pytest.mark.parametrize(
    "action", ["read", "search", "create", "update", "delete", "login", "refresh", "logout", "denied",
               "break-glass", "erase", "export", "refused-sender"]
)  # fmt: skip
def test_fhir_export_validates_with_fhirclient_r4(action: str) -> None:
    trail = AuditTrail("sqlite://")
    resource = "Observation?patient=pt-1" if action == "search" else "Patient/pt-1"
    trail.record(_event(1, action=action, resource=resource, purpose="emergency" if action == "break-glass" else None))
    [doc] = trail.export_fhir()
    model = FhirAuditEvent(doc, strict=True)
    assert model.as_json()["resourceType"] == "AuditEvent"
    assert doc["agent"][0]["who"]["identifier"]["value"] == "user-1"
    assert any(e["what"].get("reference") == "Patient/pt-0000000000000001" for e in doc["entity"])
    trail.close()


def test_fhir_balp_codes() -> None:
    rec = AuditTrail("sqlite://")
    rec.record(_event(1, action="read"))
    rec.record(_event(2, action="break-glass", purpose="unconscious patient in ED"))
    read, glass = rec.export_fhir()
    assert read["type"]["code"] == "rest"
    assert read["subtype"][0]["code"] == "read"
    assert read["action"] == "R"
    assert glass["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert [r.event.action for r in rec.review()] == ["break-glass"]
    assert to_fhir(rec.records()[0])["outcome"] == "0"
    rec.close()


def test_audit_and_keys_cli(tmp_path: Path) -> None:
    import orjson
    from typer.testing import CliRunner

    from medtwin.cli import app

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    store = Store(db)
    trail = AuditTrail(store)
    trail.record(_event(1, action="read"))
    trail.record(_event(2, action="break-glass", purpose="unconscious patient"))
    trail.close()
    store.close()
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--db", db, "--json"])
    assert ok.exit_code == 0, ok.output
    assert orjson.loads(ok.stdout)["records"] == 2
    review = runner.invoke(app, ["audit", "review", "--db", db, "--json"])
    assert [r["purpose"] for r in orjson.loads(review.stdout)] == ["unconscious patient"]
    out = tmp_path / "audit.json"
    assert runner.invoke(app, ["audit", "export", "--db", db, "-o", str(out)]).exit_code == 0
    assert len(orjson.loads(out.read_bytes())["entry"]) == 2
    rotated = runner.invoke(app, ["keys", "rotate", "--db", db, "--json"])
    assert rotated.exit_code == 0, rotated.output
    status = runner.invoke(app, ["keys", "status", "--db", db, "--json"])
    assert orjson.loads(status.stdout)["current_master_key"] == orjson.loads(rotated.stdout)["new_key_id"]
    store = Store(db)
    with store.engine.begin() as conn:
        conn.execute(update(schema.audit_log).where(schema.audit_log.c.seq == 1).values(actor="x"))
    store.close()
    bad = runner.invoke(app, ["audit", "verify", "--db", db])
    assert bad.exit_code == 1
    assert "broken at record 1" in bad.output
