"""Store.unit_of_work: several writes in one transaction (one write lock, one commit), all stored or none."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from medtwin.records import Event
from medtwin.store import Store, load_cursor, save_cursor

T0 = datetime(2026, 3, 1, 8, tzinfo=UTC)


def event(code: str) -> Event:
    return Event(kind="alert", code=code, time=T0, patient_id="P1", message=code, severity="high")


def test_a_failed_unit_stores_nothing(store: Store) -> None:
    def fails_at_the_end() -> None:
        with store.unit_of_work():
            store.add_events([event("first")])
            save_cursor(store, "twin-runtime", 5)
            store.save_snapshot("patient:P1", b"{}", T0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails_at_the_end()
    assert store.events() == []
    assert load_cursor(store, "twin-runtime") is None
    assert store.latest_snapshot("patient:P1") is None


def test_a_unit_commits_everything_at_its_end(store: Store) -> None:
    with store.unit_of_work():
        store.add_events([event("first")])
        with store.unit_of_work():  # a nested block joins the outer one
            save_cursor(store, "twin-runtime", 5)
        store.save_snapshot("patient:P1", b"{}", T0)
        assert store.events() == []  # reads use their own connections: nothing is committed yet
        alert = event("second")
        store.add_events([alert])
        store.update_event_status(alert.event_id, "acknowledged", by="nurse")  # sees the unit's own writes
    assert [(e.code, e.status) for e in store.events()] == [("first", "active"), ("second", "acknowledged")]
    assert load_cursor(store, "twin-runtime") == 5
    assert store.latest_snapshot("patient:P1") == (T0, b"{}")


class CountingLock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acquired = 0

    def acquire(self) -> bool:
        self.acquired += 1
        return self.lock.acquire()

    def release(self) -> None:
        self.lock.release()


def test_a_unit_takes_the_write_lock_once_and_other_threads_wait_for_it(tmp_path: Path) -> None:
    lock = CountingLock()
    with Store(f"sqlite:///{tmp_path / 'u.db'}", write_lock=lock) as store:
        lock.acquired = 0
        other_done = threading.Event()
        with store.unit_of_work():
            store.add_events([event("a")])
            store.save_snapshot("patient:P1", b"{}", T0)
            save_cursor(store, "twin-runtime", 1)
            # another thread's write is not part of this unit: it waits for the lock until the unit ends
            other = threading.Thread(target=lambda: (store.add_events([event("b")]), other_done.set()))
            other.start()
            assert not other_done.wait(0.2)
        other.join(5)
        assert other_done.is_set()
        assert lock.acquired == 2  # the unit once, the other thread once
        with store.unit_of_work():
            assert store.events()  # reads only: the unit never takes the write lock
        assert lock.acquired == 2
        assert sorted(e.code for e in store.events()) == ["a", "b"]
