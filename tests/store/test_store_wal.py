"""WAL checkpoints off the commit path (medtwin.store.checkpoint) and the write lock shared between processes
(medtwin.store.locks)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.records import Observation, Quantity
from medtwin.store import SharedWriteLock, Store
from medtwin.store.checkpoint import FALLBACK_AUTOCHECKPOINT, WalCheckpointer

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _observations(n: int, start: int = 0) -> list[Observation]:
    return [
        Observation(
            patient_id=f"p{i % 5}",
            code=codes.HEART_RATE,
            effective=T0 + timedelta(seconds=i),
            value=Quantity(value=60.0 + i % 40, unit="/min"),
            observation_id=f"o{i}",
        )
        for i in range(start, start + n)
    ]


def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_commits_leave_the_wal_to_the_background_checkpointer(tmp_path: Path) -> None:
    """With a checkpointer that has not run yet, the commits' pages stay in the WAL (the database file does not
    grow): no commit checkpoints. Once it runs, they are in the database file."""
    path = tmp_path / "ck.db"
    with Store(f"sqlite:///{path}", checkpoint_interval_s=3600) as store:
        assert store.checkpointer is not None
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == FALLBACK_AUTOCHECKPOINT
        size = path.stat().st_size
        for k in range(5):
            store.write(_observations(200, start=200 * k))
        assert path.stat().st_size == size
        wal = Path(f"{path}-wal").stat().st_size
        assert wal > 500_000
        with sqlite3.connect(path) as conn:
            store.checkpointer.checkpoint(conn)
        assert path.stat().st_size > size + wal // 2
        assert store.checkpointer.frames[-1] > 100
        assert store.checkpointer.seconds[-1] > 0


def test_background_checkpointer_runs_on_its_own_and_stops_on_close(tmp_path: Path) -> None:
    path = tmp_path / "bg.db"
    with Store(f"sqlite:///{path}", checkpoint_interval_s=0.05) as store:
        assert store.checkpointer is not None
        size = path.stat().st_size
        store.write(_observations(1000))
        _until(lambda: path.stat().st_size > size + 300_000)
        assert store.checkpointer.failures == 0
        assert len(store.observations("p1")) == 200
        thread = store.checkpointer._thread
    assert not thread.is_alive()


def test_checkpointer_restarts_the_log_under_a_steady_stream_of_commits(tmp_path: Path) -> None:
    """Commits that never pause leave a newer frame than every passive checkpoint, so SQLite alone never starts
    the log again; the checkpointer's RESTART step (under the writers' lock) does, and the file stays bounded."""
    path = tmp_path / "stream.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_AUTOCHECKPOINT}")
    writer.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    lock = threading.Lock()
    checkpointer = WalCheckpointer(str(path), interval_s=0.02, lock=lock, restart_pages=20)
    try:
        k = 0
        deadline = time.monotonic() + 30
        while checkpointer.restarts < 3:
            assert time.monotonic() < deadline, "the log was never restarted"
            with lock:
                writer.execute("BEGIN IMMEDIATE")
                writer.executemany("INSERT INTO t VALUES (?, ?)", [(k + i, "x" * 500) for i in range(20)])
                writer.execute("COMMIT")
            k += 20
        assert checkpointer.failures == 0
        assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == k
    finally:
        checkpointer.close()
        writer.close()


def test_restart_step_does_not_wait_for_a_reader_while_holding_the_writers_lock(tmp_path: Path) -> None:
    """A reader still on an old snapshot blocks a restart of the log; the step then gives up at once (writers are
    waiting on the lock), and a later interval restarts it once the reader has gone."""
    path = tmp_path / "r.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_AUTOCHECKPOINT}")
    writer.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    reader = sqlite3.connect(path, isolation_level=None)
    lock = threading.Lock()
    checkpointer = WalCheckpointer(str(path), interval_s=3600, lock=lock, restart_pages=1)
    ck = sqlite3.connect(path, timeout=0, check_same_thread=False)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # a snapshot before the rows below
        writer.executemany("INSERT INTO t VALUES (?, ?)", [(k, "x" * 500) for k in range(200)])
        started = time.monotonic()
        checkpointer.checkpoint(ck)
        assert time.monotonic() - started < 1.0
        assert checkpointer.restarts == 0
        assert checkpointer.locked_seconds[-1] < 1.0
        reader.execute("COMMIT")
        checkpointer.checkpoint(ck)
        assert checkpointer.restarts == 1
    finally:
        ck.close()
        checkpointer.close()
        reader.close()
        writer.close()


def test_default_store_checkpoints_in_its_commits_and_has_no_thread(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'd.db'}") as store:
        assert store.checkpointer is None
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 10000


def test_checkpoint_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="checkpoint_interval_s must be positive"):
        Store(f"sqlite:///{tmp_path / 'x.db'}", checkpoint_interval_s=0)
    with pytest.raises(ValueError, match="interval_s must be positive"):
        WalCheckpointer(str(tmp_path / "x.db"), interval_s=-1)


def test_in_memory_store_ignores_the_checkpoint_interval() -> None:
    with Store("sqlite://", checkpoint_interval_s=0.1) as store:
        assert store.checkpointer is None
        store.write(_observations(3))
        assert len(store.observations("p0")) == 1


def _take_and_note(lock: SharedWriteLock, name: str, notes: str) -> None:
    with lock:
        with open(notes, "a") as fh:
            fh.write(name + "\n")
        time.sleep(0.05)


def _wait_for_the_lock_file(path: str, held: Any) -> None:
    """Hold the lock from another process and die holding it (SIGKILL: no chance to let go)."""
    lock = SharedWriteLock(path)
    lock.acquire()
    held.set()
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="uses the fork start method to run a test function in a child")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_waiting_process_goes_before_the_yielding_writer(tmp_path: Path) -> None:
    """While the lock is held, an announced waiter in another process (the worker's view) and the busy writer's
    yielding view both wait; on release the waiting process gets it first, whatever the timing."""
    lock = SharedWriteLock(str(tmp_path / "w.lock"), max_yield_s=30.0)
    busy = lock.yielding()
    notes = str(tmp_path / "order.txt")
    lock.acquire()
    ctx = multiprocessing.get_context("fork")
    waiter = ctx.Process(target=_take_and_note, args=(lock, "worker", notes))
    waiter.start()
    try:
        _until(lambda: busy._someone_waits(busy._state()))
        listener = threading.Thread(target=_take_and_note, args=(busy, "listener", notes))
        listener.start()
        time.sleep(0.05)
        assert not Path(notes).exists()
        lock.release()
        listener.join(30)
    finally:
        waiter.join(30)
    assert Path(notes).read_text().split() == ["worker", "listener"]


def test_yielding_writer_does_not_wait_forever_for_a_waiter(tmp_path: Path) -> None:
    lock = SharedWriteLock(str(tmp_path / "w.lock"), max_yield_s=0.05)
    never = os.open(lock.path + "-wait", os.O_RDWR | os.O_CREAT)
    fcntl.flock(never, fcntl.LOCK_SH)  # a waiter that never takes the lock
    try:
        started = time.monotonic()
        with lock.yielding():
            pass
        assert time.monotonic() - started < 5
    finally:
        os.close(never)


def _hold_in_child(lock: SharedWriteLock, held: Any, release: Any) -> None:
    with lock:
        held.set()
        release.wait(30)


@pytest.mark.skipif(sys.platform != "linux", reason="uses the fork start method to run a test function in a child")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_lock_is_shared_with_a_child_process(tmp_path: Path) -> None:
    """(The spawn start method, as the twin worker uses it, is covered by tests/twin/test_twin_worker.py.)"""
    ctx = multiprocessing.get_context("fork")
    lock = SharedWriteLock(str(tmp_path / "w.lock"))
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_in_child, args=(lock, held, release))
    child.start()
    try:
        assert held.wait(60)
        assert not lock.acquire(timeout=0.1)  # the child holds it
        release.set()
        assert lock.acquire(timeout=30)
        lock.release()
    finally:
        release.set()
        child.join(30)
    assert child.exitcode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="uses the fork start method to run a test function in a child")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_lock_held_by_a_killed_process_is_released(tmp_path: Path) -> None:
    """kill -9 of the process holding the write lock (the listener, mid-commit) must not leave the others blocked
    forever: the kernel drops the dead process's flock. (Until issue 13 the lock was a semaphore: acquire timed out.)"""
    ctx = multiprocessing.get_context("fork")
    path = str(tmp_path / "w.lock")
    held = ctx.Event()
    child = ctx.Process(target=_wait_for_the_lock_file, args=(path, held))
    child.start()
    assert held.wait(60)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    lock = SharedWriteLock(path)
    assert lock.acquire(timeout=10)
    lock.release()


def test_a_store_of_derived_data_can_skip_the_sync_and_leave_checkpoints_to_the_listener(tmp_path: Path) -> None:
    """As the twin runtime's worker opens the listener's file: commits not synced (NORMAL = 1), no checkpoints in
    its commits (the listener's thread does them)."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    with Store(url, synchronous="NORMAL", checkpoints_elsewhere=True) as store, store.engine.connect() as conn:
        assert store.checkpointer is None
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == FALLBACK_AUTOCHECKPOINT
    with Store(url) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL, the default
    with pytest.raises(ValidationError, match="synchronous must be 'FULL' or 'NORMAL'"):
        Store(url, synchronous="OFF")
