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


def test_a_unit_commits_everything_at_its_end(store_url: str) -> None:
    with Store(store_url) as store:
        _commits_everything_at_its_end(store, store_url)


def _commits_everything_at_its_end(store: Store, url: str) -> None:
    with store.unit_of_work():
        store.add_events([event("first")])
        with store.unit_of_work():  # a nested block joins the outer one
            save_cursor(store, "twin-runtime", 5)
        store.save_snapshot("patient:P1", b"{}", T0)
        assert [e.code for e in store.events()] == ["first"]  # this thread reads in the unit: its own writes
        assert load_cursor(store, "twin-runtime") == 5
        with Store(url) as other:  # another connection sees nothing before the unit commits
            assert other.events() == []
            assert load_cursor(other, "twin-runtime") is None
        alert = event("second")
        store.add_events([alert])
        store.update_event_status(alert.event_id, "acknowledged", by="nurse")  # sees the unit's own writes
    assert [(e.code, e.status) for e in store.events()] == [("first", "active"), ("second", "acknowledged")]
    assert load_cursor(store, "twin-runtime") == 5
    assert store.latest_snapshot("patient:P1") == (T0, b"{}")


def test_reads_in_a_unit_on_an_in_memory_store_keep_its_writes() -> None:
    # an in-memory database has one connection that every caller shares: a read that took it from the pool and
    # gave it back rolled the unit's earlier writes back, silently
    with Store("sqlite://") as store:
        with store.unit_of_work():
            store.add_events([event("a")])
            assert [e.code for e in store.events()] == ["a"]
            store.add_events([event("b")])
        assert sorted(e.code for e in store.events()) == ["a", "b"]


def test_a_read_on_another_thread_does_not_undo_an_open_transaction_of_an_in_memory_store() -> None:
    # before: the reader took the one shared connection from the pool and handed it back with a rollback, undoing
    # the writer's open transaction ('a' was lost while the writer went on and committed 'b')
    with Store("sqlite://") as store:
        started, go_on = threading.Event(), threading.Event()

        def writer() -> None:
            with store.unit_of_work():
                store.add_events([event("a")])
                started.set()
                go_on.wait(5)
                store.add_events([event("b")])

        thread = threading.Thread(target=writer)
        thread.start()
        assert started.wait(5)
        seen: list[list[str]] = []
        reader = threading.Thread(target=lambda: seen.append([e.code for e in store.events()]))
        reader.start()
        reader.join(0.2)
        assert reader.is_alive()  # it waits for the writer's transaction instead of reading into it
        go_on.set()
        thread.join(5)
        reader.join(5)
        assert seen == [["a", "b"]]
        assert sorted(e.code for e in store.events()) == ["a", "b"]


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
