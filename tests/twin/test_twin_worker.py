"""The twin runtime's worker: follows the store's raw log from a saved cursor, in-process and in its own process."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from medtwin.interop import hl7v2
from medtwin.interop.mllp import CONTENT_TYPE, MllpClient, MllpConfig, MllpServer
from medtwin.interop.virtual_feed import sample_to_oru
from medtwin.monitoring.virtual import virtual_ward
from medtwin.records import Event
from medtwin.store import RawMessage, Store, accepted_after, last_raw_id, load_cursor, save_cursor, schema
from medtwin.store.shards import patient_hash, shard_of_hash
from medtwin.twin import LogFollower, RuntimeProcess, TwinRuntime, follow
from medtwin.twin.worker import SKIPPED_CODE, listener_store, record_skipped, shard_consumer, shard_of

START = datetime(2026, 1, 1, tzinfo=UTC)


def feed(n: int, prefix: str = "W", patients: int = 4) -> list[bytes]:
    """*n* ORU^R01 from virtual monitors (stable, sepsis, hypoxic, post-op), one reading per patient per 5 min."""
    ward = virtual_ward(patients, start=START, seed=3)
    out = []
    for i in range(n):
        p = ward[i % patients]
        sample = p.sample(START + timedelta(minutes=5 * (i // patients)))
        out.append(sample_to_oru(p, sample, f"{prefix}-{i:05d}").encode())
    return out


def store_messages(store: Store, payloads: list[bytes]) -> None:
    """Store *payloads* as the listener does: raw message + mapped records, one group commit."""
    items = []
    for payload in payloads:
        (message,) = hl7v2.parse_payload(payload)
        raw = RawMessage(
            source_system=message.source_system,
            source_id=message.control_id,
            payload=payload,
            content_type=CONTENT_TYPE,
            received=datetime.now(UTC),
        )
        items.append((hl7v2.map_message(message, patient_id_for=store.keyring.pseudonym).records, raw))
    store.write_batch(items)


def direct_events(payloads: list[bytes], key: Any) -> list[Event]:
    """What a runtime fed directly (no store, no log) raises for *payloads*, in order (patient ids keyed by *key*,
    the store's ``keyring.pseudonym``, as the listener and the worker key them)."""
    runtime = TwinRuntime(None)
    return [
        e
        for p in payloads
        for e in runtime.process(hl7v2.map_message(hl7v2.parse_payload(p)[0], patient_id_for=key).records)
    ]


def latest(events: list[Event]) -> list[Event]:
    """The last version of each event (an escalated or reopened alert is stored over its earlier versions)."""
    return list({e.event_id: e for e in events}.values())


def summary(events: list[Event]) -> list[tuple[str, str, str, datetime, str | None]]:
    return sorted((e.patient_id or "", e.kind, e.code, e.time, e.severity) for e in events)


def test_worker_reads_stored_messages_once_and_matches_a_directly_fed_runtime(tmp_path: Path) -> None:
    payloads = feed(120)
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        save_cursor(store, "twin-runtime", 0)  # this consumer starts at the beginning of the log
        store_messages(store, payloads[:70])
        follower = LogFollower(store, batch=50)
        runtime = TwinRuntime(store)
        first = follow(follower, runtime, should_stop=lambda: True, group_window_s=0.0, cursor_every_s=0.0)
        runtime.close()  # a clean stop snapshots every twin (as RuntimeProcess.stop does)
        assert first.messages == 70
        assert load_cursor(store, "twin-runtime") == last_raw_id(store)
        store_messages(store, payloads[70:])
        runtime = TwinRuntime(store)  # a restart: twins come back from their snapshots, the cursor from the store
        second = follow(LogFollower(store), runtime, should_stop=lambda: True, group_window_s=0.0, cursor_every_s=0.0)
        assert second.messages == 50  # only what arrived since, nothing twice
        runtime.close()
        via_log = store.events()
    expected = direct_events(payloads, store.keyring.pseudonym)
    assert any(e.kind == "alert" for e in expected)
    alerts = latest([e for e in expected if e.kind == "alert"])
    assert summary([e for e in via_log if e.kind == "alert"]) == summary(alerts)  # the same alerts, none twice
    assert first.alerts + second.alerts == len(alerts)  # the count, not the latency window (bench/soak.py read it)
    # a twin restored from its snapshot remembers the NEWS2 it last announced: a restart changes nothing
    assert summary(via_log) == summary(latest(expected))


def test_alert_count_is_not_capped_by_the_latency_window() -> None:
    runtime = TwinRuntime(None)
    runtime.alert_latencies_s = deque(maxlen=3)
    events = [
        e
        for p in feed(60)
        for e in runtime.process(hl7v2.map_message(hl7v2.parse_payload(p)[0]).records, received_monotonic=0.0)
    ]
    raised = sum(1 for e in events if e.kind == "alert" and e.data["revision"] == 1)  # new alerts, not updates
    assert raised > 3
    assert runtime.alerts_raised == raised
    assert len(runtime.alert_latencies_s) == 3


def test_a_group_and_its_cursor_are_stored_together_or_not_at_all(tmp_path: Path) -> None:
    payloads = feed(40)
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        save_cursor(store, "twin-runtime", 0)
        store_messages(store, payloads)
        follower = LogFollower(store)
        items = follower.poll()

        def cursor_then_crash() -> None:
            follower.commit()
            raise OSError("disk full")

        with pytest.raises(OSError, match="disk full"):
            TwinRuntime(store).process_many(items, also=cursor_then_crash)
        assert store.events() == []  # neither the group's events nor its cursor were stored
        assert load_cursor(store, "twin-runtime") == 0
        again = LogFollower(store)
        events = TwinRuntime(store).process_many(again.poll(), also=again.commit)
        assert any(e.kind == "alert" for e in events)
        assert summary(store.events()) == summary(events)
        assert load_cursor(store, "twin-runtime") == last_raw_id(store)


def test_a_new_consumer_starts_at_the_end_of_the_log(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        store_messages(store, feed(8))
        follower = LogFollower(store, name="late")
        assert follower.position == last_raw_id(store) == load_cursor(store, "late")
        assert follower.poll() == []
        store_messages(store, feed(4, prefix="NEW"))
        assert len(follower.poll()) == 4


def test_a_stored_message_that_no_longer_maps_is_logged_and_passed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        save_cursor(store, "twin-runtime", 0)
        store.write(
            [],
            RawMessage(source_system="X@Y", source_id="odd", payload=b"not hl7 at all", content_type=CONTENT_TYPE,
                       received=datetime.now(UTC)),
        )  # fmt: skip
        store_messages(store, feed(4))
        follower = LogFollower(store)
        with caplog.at_level(logging.WARNING, logger="medtwin.twin.worker"):
            stats = follow(
                follower, TwinRuntime(store), should_stop=lambda: True, group_window_s=0.0, cursor_every_s=0.0
            )
        assert stats.messages == 5
        assert stats.unmappable == 1
        assert "no longer maps" in caplog.text
        assert load_cursor(store, "twin-runtime") == last_raw_id(store)
        # not only logged: an alert says which message the twins never saw (the payload names no patient)
        (skipped,) = [e for e in store.events(kind="alert") if e.code == SKIPPED_CODE]
        assert skipped.data["raw_id"] == 1
        assert "no longer maps" in skipped.data["reason"]
        assert skipped.patient_id is None
        assert skipped.severity == "medium"
        assert skipped.status == "active"


def record_keys(items: list[tuple[Any, float]]) -> list[tuple[str, str]]:
    return [(r.patient_id, getattr(r, "observation_id", type(r).__name__)) for records, _ in items for r in records]


def test_sharded_followers_see_every_record_exactly_once_and_a_patient_in_one_shard(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        save_cursor(store, "twin-runtime", 0)
        store_messages(store, feed(108, patients=36))
        everything = record_keys(LogFollower(store).poll())
        shards = [record_keys(LogFollower(store, shard=k, shards=3).poll()) for k in range(3)]
        assert sorted(everything) == sorted(k for shard in shards for k in shard)  # none lost, none twice
        owners = [{pid for pid, _ in shard} for shard in shards]
        # 36 patients over 3 shards (patient ids are keyed per store, so which shard is random): each gets some but
        # with probability 3 (2/3)^36 ~ 1e-6 (with 12 patients it was 2 %, a flaky test)
        assert all(owners)
        assert sum(len(o) for o in owners) == len({pid for pid, _ in everything}) == 36  # a patient in one shard
        for k, patients in enumerate(owners):
            assert {shard_of(pid, 3) for pid in patients} == {k}
        cursors = [load_cursor(store, shard_consumer("twin-runtime", k, 3)) for k in range(3)]
        assert cursors == [0, 0, 0]  # a new layout starts where the unsharded worker's cursor was


def test_a_sharded_follower_reads_only_its_patients_entries_and_follows_the_logs_end(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        save_cursor(store, "twin-runtime", 0)
        store_messages(store, feed(48, patients=12))
        shards = [LogFollower(store, shard=k, shards=3) for k in range(3)]
        polled = [record_keys(f.poll()) for f in shards]
        assert sum(f.messages for f in shards) == 48  # each entry read by one shard: none read three times
        assert all(f.shared_messages == 0 for f in shards)
        assert [f.read for f in shards] == [last_raw_id(store)] * 3  # past the others' entries too
        # entries without a patient hash (stored before revision 0030) are read by every shard, records kept once
        with store._transaction() as conn:
            conn.execute(update(schema.raw_inbound).values(patient_hash=None))
        again = [LogFollower(store, shard=k, shards=3) for k in range(3)]
        assert sorted(k for f in again for k in record_keys(f.poll())) == sorted(k for p in polled for k in p)
        assert [f.shared_messages for f in again] == [48] * 3
        # a shard with nothing of its own after its cursor still moves it to the end of the log (and saves it)
        end = last_raw_id(store)
        store_messages(store, feed(4, prefix="X", patients=1))  # one patient's messages: one shard's
        (owner,) = {shard_of_hash(m.patient_hash or 0, 3) for m in accepted_after(store, end)}
        idle = (owner + 1) % 3
        follower = LogFollower(store, shard=idle, shards=3)
        assert follower.position < end
        follow(follower, TwinRuntime(store, snapshot_every=None), should_stop=lambda: True, group_window_s=0.0,
               cursor_every_s=0.0)  # fmt: skip
        assert load_cursor(store, shard_consumer("twin-runtime", idle, 3)) == last_raw_id(store)


def test_an_entry_whose_records_are_not_of_the_patient_stored_with_it_is_skipped_with_a_record(
    tmp_path: Path,
) -> None:
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        save_cursor(store, "twin-runtime", 0)
        store_messages(store, feed(4, patients=1))
        (pid,) = {pid for pid, _ in record_keys(LogFollower(store).poll())}
        other = next(f"pt-{i}" for i in range(50) if shard_of(f"pt-{i}", 2) != shard_of(pid, 2))
        with store._transaction() as conn:  # as if the mapping now gave another patient than the stored one
            conn.execute(update(schema.raw_inbound).values(patient_hash=patient_hash(other)))
        wrong = LogFollower(store, shard=shard_of(other, 2), shards=2)
        assert wrong.poll() == []
        assert wrong.unmappable == 4  # refused, not dropped: recorded as skipped
        skipped = [e for e in store.events() if e.code == SKIPPED_CODE]
        assert len(skipped) == 4
        assert "not the one it was stored for" in skipped[0].message


def test_shard_of_is_stable_across_processes_and_spread() -> None:
    assert [shard_of(f"pt-{i}", 2) for i in range(8)] == [shard_of(f"pt-{i}", 2) for i in range(8)]
    assert shard_of("pt-sim-cgm-0000", 1) == 0
    counts = [0, 0]
    for i in range(1000):
        counts[shard_of(f"pt-sim-cgm-{i:04d}", 2)] += 1
    assert 400 < counts[0] < 600  # the bench's 1,000 wearers split about evenly
    # pinned: a release that changed the hash would hand patients to another worker, whose twins lack their state
    assert shard_consumer("twin-runtime", 1, 2) == "twin-runtime/shard-2-of-2"
    assert [shard_of(p, 2) for p in ("a", "pt-5d2c", "pt-sim-cgm-0001")] == PINNED_SHARDS


PINNED_SHARDS = [1, 1, 0]


@pytest.mark.parametrize(
    ("as_listen", "workers"),
    [(False, 1), (True, 1), (True, 2)],
    ids=["plain", "shared-lock+checkpointer", "two-sharded-workers"],
)
def test_runtime_process_beside_the_listener_raises_and_stores_alerts(
    tmp_path: Path, as_listen: bool, workers: int
) -> None:
    """*as_listen*: as `medtwin listen` runs them: a write lock shared with the (spawned) worker, and the listener's
    WAL checkpoints in a background thread; *workers*: worker processes, each owning a shard of the patients."""
    db = f"sqlite:///{tmp_path / 'live.db'}"
    listener, lock = listener_store(db) if as_listen else (Store(db), None)
    payloads = feed(60)

    async def main() -> None:
        with listener as store:
            async with MllpServer(store, MllpConfig(port=0)) as server:
                assert server.port is not None
                async with await MllpClient.connect("127.0.0.1", server.port, timeout_s=20) as client:
                    for payload in payloads:
                        assert "MSA|AA|" in await client.send(payload)

    worker = RuntimeProcess(db, write_lock=lock, workers=workers)
    start = worker.start()
    assert start == 0
    assert len(set(worker.pids)) == workers
    try:
        asyncio.run(main())
    finally:
        stats = worker.stop()
    assert "error" not in stats, stats
    assert stats["messages"] == 60
    assert stats["alerts"] > 0
    assert stats["alert_p50_ms"] > 0
    with Store(db) as store:
        alerts = store.events(kind="alert")
        assert len(alerts) == stats["alerts"]
        assert [load_cursor(store, name) for name in worker.consumers] == [last_raw_id(store)] * workers
        if workers > 1:
            # each reads its own patients' messages only (selected in SQL by the stored patient hash); the patients'
            # ids are keyed per store, so which shard gets how many differs from run to run
            owners = [shard_of(hl7v2.map_message(hl7v2.parse_payload(p)[0], patient_id_for=store.keyring.pseudonym)
                               .records[0].patient_id or "", workers) for p in payloads]  # fmt: skip
            assert [s["messages"] for s in stats["shards"]] == [owners.count(k) for k in range(workers)]
            assert all(s["shared_messages"] == 0 for s in stats["shards"])
            assert sum(s["alerts"] for s in stats["shards"]) == stats["alerts"]
            assert [s["alerts"] for s in stats["shards"]] == [
                sum(1 for a in alerts if shard_of(a.patient_id or "", workers) == k) for k in range(workers)
            ]
            assert summary(alerts) == summary(latest([e for e in direct_events(payloads, store.keyring.pseudonym)
                                                      if e.kind == "alert"]))  # fmt: skip
        assert store.latest_snapshot(f"patient:{alerts[0].patient_id}") is not None  # twins snapshotted at stop


class FlakyRuntime(TwinRuntime):
    """Fails its first group, as a store error or a bug would."""

    failures_left = 1

    def process_many(self, items, **options):  # type: ignore[no-untyped-def]
        if FlakyRuntime.failures_left:
            FlakyRuntime.failures_left -= 1
            raise OSError("disk I/O error")
        return super().process_many(items, **options)


def test_a_failing_group_restarts_the_twins_from_the_cursor_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from medtwin.twin.worker import recover_and_follow

    payloads = feed(40)
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        save_cursor(store, "twin-runtime", 0)
        store_messages(store, payloads)
        ready: list[int] = []
        with caplog.at_level(logging.ERROR, logger="medtwin.twin.worker"):
            report = recover_and_follow(
                store, lambda: FlakyRuntime(store), should_stop=lambda: True, on_ready=ready.append, retry_pause_s=0
            )
        assert ready == [0]
        assert report["restarts"] == 1
        assert report["skipped"] == 0
        assert "restarting from the saved cursor" in caplog.text
        assert report["messages_read"] >= 40
        assert load_cursor(store, "twin-runtime") == last_raw_id(store)
        stored_alerts = store.events(kind="alert")
    expected = direct_events(payloads, store.keyring.pseudonym)
    assert summary(stored_alerts) == summary([e for e in expected if e.kind == "alert"])


class PoisonedRuntime(TwinRuntime):
    """Fails on every group that holds message W-00007 (a bug triggered by one message)."""

    def process_many(self, items, **options):  # type: ignore[no-untyped-def]
        for records, _ in items:
            if any(r.provenance is not None and r.provenance.source_id.startswith("W-00007/") for r in records):
                raise ValueError("twin bug on this message")
        return super().process_many(items, **options)


def test_a_message_that_always_fails_is_isolated_and_stepped_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from medtwin.twin.worker import recover_and_follow

    payloads = feed(30)
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as store:
        save_cursor(store, "twin-runtime", 0)
        store_messages(store, payloads)
        poisoned = next(m.raw_id for m in accepted_after(store, 0) if b"W-00007" in m.payload)
        with caplog.at_level(logging.ERROR, logger="medtwin.twin.worker"):
            report = recover_and_follow(
                store, lambda: PoisonedRuntime(store), should_stop=lambda: True, retry_pause_s=0, isolate_messages=5
            )
        assert report["skipped"] == 1
        assert f"raw message {poisoned} failed 3 times on its own; stepped over" in caplog.text
        assert load_cursor(store, "twin-runtime") == last_raw_id(store)
        alerts = [e for e in store.events(kind="alert") if e.code != SKIPPED_CODE]
        (skipped,) = [e for e in store.events(kind="alert") if e.code == SKIPPED_CODE]
        assert skipped.data["raw_id"] == poisoned
        assert skipped.event_id == f"twin-skipped-{poisoned}"
        assert (
            skipped.patient_id
            == hl7v2.map_message(hl7v2.parse_payload(payloads[7])[0], patient_id_for=store.keyring.pseudonym)
            .records[0]
            .patient_id
        )
        # stepping over the same message again (a restart before the cursor moved on) stores the alert once
        assert record_skipped(store, poisoned, "again") is not None
        assert len([e for e in store.events(kind="alert") if e.code == SKIPPED_CODE]) == 1
    expected = direct_events([p for i, p in enumerate(payloads) if i != 7], store.keyring.pseudonym)
    # every other message reached the twins
    assert summary(alerts) == summary([e for e in expected if e.kind == "alert"])


def test_merged_report_takes_the_slowest_shard_that_has_a_figure() -> None:
    from medtwin.twin.worker_process import _merged

    shards = [
        {"messages": 7, "shared_messages": 2, "alerts": 0, "alert_p50_ms": float("nan"), "busy_s": 1.0},
        {"messages": 5, "shared_messages": 2, "alerts": 3, "alert_p50_ms": 12.5, "busy_s": 2.0},
    ]
    merged = _merged(shards)
    assert merged["alert_p50_ms"] == 12.5  # the shard whose patients raised no alert has no latency to report
    assert merged["busy_s"] == 2.0
    assert merged["messages"] == 10  # each entry once: the 2 tied to no single patient were read by both
    assert merged["alerts"] == 3


def test_sharded_workers_share_the_cores_for_compiled_threads() -> None:
    """Each of N sharded worker processes runs the glucose kernels on cores // N threads (at least one), so N workers
    beside the listener do not each start a spinning thread per core; one worker keeps numba's default."""
    import os
    import subprocess
    import sys

    code = (
        "import numba; from medtwin.twin.worker_process import _share_cores; before = numba.get_num_threads(); "
        "_share_cores({n}); print(before, numba.get_num_threads())"
    )
    cores = len(os.sched_getaffinity(0))
    for n, expected in ((1, None), (2, max(1, cores // 2)), (64, 1)):
        out = subprocess.run([sys.executable, "-c", code.format(n=n)], capture_output=True, text=True, check=True)
        before, after = (int(v) for v in out.stdout.split())
        assert after == (before if expected is None else min(before, expected))
