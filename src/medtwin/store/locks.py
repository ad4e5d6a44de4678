"""A write lock shared by the processes that write one SQLite file, so a low-rate writer is not starved.

SQLite has one writer at a time. A connection that finds the write lock taken waits in SQLite's busy handler,
which sleeps 1, 2, 5, 10, ... 100 ms between tries and is not woken when the lock is released. Beside the MLLP
listener, which commits back to back under load, the twin runtime's worker process (:mod:`medtwin.twin.worker`)
lost almost every try: measured on the project's VM at 1,000 msg/s, the worker used 1.6 s of CPU in 10 s yet fell
5.7 s behind the log (receipt-to-alert p50 5.7 s).

:class:`SharedWriteLock` is taken around every write transaction of the stores that share it (see
:class:`medtwin.store.Store`'s ``write_lock``): a blocked process sleeps on the lock itself and is woken when it is
released, and the busy writer's view (:meth:`SharedWriteLock.yielding`) steps aside while another process is
waiting, for at most ``max_yield_s`` per transaction. Processes that do not share the lock (a CLI command, say)
still meet SQLite's busy handler as before.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

__all__ = ["SharedWriteLock"]


class SharedWriteLock:
    """A lock for write transactions across processes (create it before starting them; pass it as an argument).

    The default view announces itself while it waits; the view from :meth:`yielding` (for the busiest writer)
    lets an announced waiter go first.
    """

    def __init__(self, context: Any = None, *, max_yield_s: float = 0.05) -> None:
        ctx = context if context is not None else multiprocessing.get_context("spawn")
        self._lock = ctx.Lock()
        self._waiting = ctx.Value("i", 0)
        self.max_yield_s = max_yield_s
        self.yields = False

    def yielding(self) -> SharedWriteLock:
        """The same lock, seen by a writer that lets waiting processes go first."""
        view = object.__new__(SharedWriteLock)
        view.__dict__.update(self.__dict__)
        view.yields = True
        return view

    def acquire(self) -> bool:
        """Take the lock, blocking."""
        if self.yields:
            if self._waiting.value:
                deadline = time.monotonic() + self.max_yield_s
                while self._waiting.value and time.monotonic() < deadline:
                    time.sleep(0.0002)
            return bool(self._lock.acquire())
        with self._waiting.get_lock():
            self._waiting.value += 1
        try:
            return bool(self._lock.acquire())
        finally:
            with self._waiting.get_lock():
                self._waiting.value -= 1

    def release(self) -> None:
        """Let the lock go."""
        self._lock.release()

    def __enter__(self) -> SharedWriteLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
