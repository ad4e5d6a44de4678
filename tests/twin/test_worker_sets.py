"""One twin worker set per store: a second set is refused whatever its layout, a set whose lease was taken over
cannot move a cursor, and a change of the worker count starts from the layout that ran last, not a stale one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select, update
from tests.interop.test_mllp_crash import finish, start_listener
from tests.twin.test_twin_worker import feed, store_messages

from medtwin.store import Store, last_raw_id, load_cursor, save_cursor, schema
from medtwin.store.leases import ConsumerBusyError, ConsumerLeaseLostError
from medtwin.twin import LogFollower, RuntimeProcess, TwinRuntime
from medtwin.twin.worker import DEFAULT_CONSUMER, shard_consumer


def cursor_names(store: Store) -> set[str]:
    with store._reading() as conn:
        return {str(name) for (name,) in conn.execute(select(schema.consumer_cursors.c.name))}


def saved_long_ago(store: Store, names: list[str], days: int = 30) -> None:
    """As if the cursors *names* were last saved *days* ago (a layout that ran last month)."""
    t = schema.consumer_cursors
    with store._transaction() as conn:
        conn.execute(update(t).where(t.c.name.in_(names)).values(updated=datetime.now(UTC) - timedelta(days=days)))


def test_a_second_worker_set_is_refused_whatever_its_layout(store_url: str) -> None:
    with Store(store_url) as store:
        store_messages(store, feed(8))
        running = LogFollower(store, holder="listen on ward-1 pid 11")
        for shards in (1, 2, 3):  # the same cursor, or other shard names over the same patients
            with pytest.raises(ConsumerBusyError, match="held by listen on ward-1 pid 11"):
                LogFollower(store, shard=shards - 1, shards=shards, holder="listen on ward-1 pid 22")
        assert cursor_names(store) == {DEFAULT_CONSUMER}  # the refused set saved no cursor of its own
        assert LogFollower(store, shard=1, shards=2, holder=running.lease.holder).position == running.position


def test_a_worker_whose_lease_was_taken_over_cannot_move_the_cursor_or_its_twins(store_url: str) -> None:
    with Store(store_url) as store:
        save_cursor(store, DEFAULT_CONSUMER, 0)
        store_messages(store, feed(8))
        stalled = LogFollower(store, holder="stalled", lease_s=0.3)
        runtime = TwinRuntime(store, snapshot_every=None)
        runtime.process_many(stalled.poll())
        successor = LogFollower(store, holder="successor", wait_s=10.0)  # once the stalled one's lease expired
        assert successor.position == 0
        with pytest.raises(ConsumerLeaseLostError, match="taken over"):
            runtime.checkpoint(also=stalled.commit)  # the twins' snapshots and the cursor, in one transaction
        assert load_cursor(store, DEFAULT_CONSUMER) == 0  # nothing skipped: the successor reads all 8
        assert all(store.latest_snapshot(f"patient:{pid}") is None for pid in store.patient_ids())
        assert len(successor.poll()) == 8
        successor.commit()
        assert load_cursor(store, DEFAULT_CONSUMER) == last_raw_id(store)


def test_a_new_layout_starts_from_the_layout_that_ran_last_and_retires_the_older_ones(store_url: str) -> None:
    with Store(store_url) as store:
        store_messages(store, feed(40, patients=8))
        last = last_raw_id(store)
        month_old = [shard_consumer(DEFAULT_CONSUMER, k, 4) for k in range(4)]
        for name in month_old:  # four workers last month: far behind
            save_cursor(store, name, 2)
        saved_long_ago(store, month_old)
        for k in range(2):  # then two, until now
            save_cursor(store, shard_consumer(DEFAULT_CONSUMER, k, 2), last - 5 + k)
        followers = [LogFollower(store, shard=k, shards=3) for k in range(3)]
        assert [f.position for f in followers] == [last - 5] * 3  # not 2: no month of replay
        followers[0].poll()
        followers[0].commit()
        # a shard of the new layout is still at last - 5: the two-worker cursor at last - 4 is kept until it passes
        assert cursor_names(store) == {shard_consumer(DEFAULT_CONSUMER, k, 3) for k in range(3)} | {
            shard_consumer(DEFAULT_CONSUMER, 1, 2)
        }
        for follower in followers[1:]:
            follower.poll()
            follower.commit()
        assert cursor_names(store) == {shard_consumer(DEFAULT_CONSUMER, k, 3) for k in range(3)}
        assert all(load_cursor(store, f.name) == last for f in followers)


def test_a_layout_run_again_after_another_restarts_from_the_other_not_from_its_own_old_cursors(
    store_url: str,
) -> None:
    with Store(store_url) as store:
        store_messages(store, feed(40, patients=8))
        last = last_raw_id(store)
        old = [shard_consumer(DEFAULT_CONSUMER, k, 2) for k in range(2)]
        save_cursor(store, old[0], 3)  # two workers long ago: one far behind, one past where the twins are now
        save_cursor(store, old[1], last)
        saved_long_ago(store, old)
        save_cursor(store, DEFAULT_CONSUMER, last - 6)  # then one worker, until now
        assert [LogFollower(store, shard=k, shards=2).position for k in range(2)] == [last - 6] * 2
        assert [load_cursor(store, name) for name in old] == [last - 6] * 2  # replaced, backwards too


def test_a_second_runtime_process_is_refused_before_it_starts_a_worker(tmp_path: object) -> None:
    db = f"sqlite:///{tmp_path}/w.db"
    with Store(db) as store:
        save_cursor(store, DEFAULT_CONSUMER, 0)
    first = RuntimeProcess(db, lease_s=6.0)
    first.start()
    second = RuntimeProcess(db, workers=2, lease_s=6.0)
    try:
        with pytest.raises(ConsumerBusyError, match="already run on"):
            second.start()  # the first's worker renews its lease meanwhile: refused, not taken over
        assert second.pids == []
    finally:
        assert "error" not in first.stop()
    second.start()  # the first gave its lease up when it stopped: the next set starts at once
    assert len(second.pids) == 2
    assert "error" not in second.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_second_listen_on_the_store_stops_with_the_reason_and_a_killed_ones_workers_are_taken_over(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'w.db'}"
    Store(db_url).close()
    first, _ = start_listener(db_url, new_session=True)
    try:
        command = [sys.executable, "-c", "from medtwin.cli import main; main()", "listen", "--port", "0", "--quiet"]
        second = subprocess.run([*command, "--db", db_url], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "COLUMNS": "400"}, check=False)  # fmt: skip
        assert second.returncode == 2, second.stdout + second.stderr
        assert "error: the twin workers of consumer 'twin-runtime' already run on" in second.stderr
        assert f"pid {first.pid} " in second.stderr  # the listener holding them
        assert "listening on" not in second.stdout
        workers = psutil.Process(first.pid).children(recursive=True)
        first.kill()
        first.wait(30)
        psutil.wait_procs(workers, timeout=30)
        third, _ = start_listener(db_url)  # its process is gone: taken over without waiting for the lease to expire
        third.send_signal(signal.SIGTERM)
        assert third.wait(60) == 0  # a clean shutdown, its workers' lease given up
        finish(third)
    finally:
        finish(first)
        if any(p.pid != first.pid for p in psutil.process_iter() if _group_of(p) == first.pid):
            os.killpg(first.pid, signal.SIGKILL)


def _group_of(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, psutil.Error):
        return None
