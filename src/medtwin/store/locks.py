"""Locks shared by the processes that write one SQLite file: OS-level, so a lock dies with the process holding it.

SQLite has one writer at a time. A connection that finds the write lock taken waits in SQLite's busy handler,
which sleeps 1, 2, 5, 10, ... 100 ms between tries and is not woken when the lock is released. Beside the MLLP
listener, which commits back to back under load, the twin runtime's worker process (:mod:`medtwin.twin.worker`)
lost almost every try: measured on the project's VM at 1,000 msg/s, the worker used 1.6 s of CPU in 10 s yet fell
5.7 s behind the log (receipt-to-alert p50 5.7 s).

:class:`SharedWriteLock` is taken around every write transaction of the stores that share it (see
:class:`medtwin.store.Store`'s ``write_lock``): a blocked process sleeps on the lock itself and is woken when it is
released, and the busy writer's view (:meth:`SharedWriteLock.yielding`) steps aside while another process is
waiting, for at most ``max_yield_s`` per transaction.

The lock is an ``flock`` on a lock file beside the database (``<database>.lock``): the kernel releases it when the
process holding it dies. Until issue 13 it was a ``multiprocessing`` semaphore, which nobody releases when its
holder is killed: ``kill -9`` of ``medtwin listen`` in the middle of a commit left the twin worker blocked on it
forever, orphaned (its cursor never moved again). A process announces that it waits by holding a shared ``flock``
on a second file (``<database>.lock-wait``), which a killed waiter also lets go of. :func:`file_lock` (the same
kind of lock, for one block) serialises schema migrations of processes that open a fresh database together.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["SharedWriteLock", "file_lock", "lock_path_for"]


def lock_path_for(database_path: str) -> str:
    """The lock file of the SQLite database file *database_path*."""
    return f"{database_path}.lock"


def _open_lock_file(path: str) -> int:
    """A descriptor of the lock file *path* (created 0600 when missing; it holds no data)."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on *path* for the block (released by the kernel if the process dies).

    Yields False, without locking, when the file cannot be created or opened (a read-only folder: nothing will be
    written there either).
    """
    try:
        fd = _open_lock_file(path)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the flock


class _ProcessState:
    """What one process holds of a :class:`SharedWriteLock`: its descriptors and the lock of its own threads."""

    def __init__(self, path: str) -> None:
        self.pid = os.getpid()
        self.threads = threading.Lock()  # an flock is per open file: threads of one process take turns here first
        self.fd = _open_lock_file(path)
        self.wait_fd = _open_lock_file(path + "-wait")


_STATES: dict[tuple[str, int], _ProcessState] = {}
_STATES_LOCK = threading.Lock()


class SharedWriteLock:
    """A lock for write transactions across processes (pass it to the processes as an argument; it pickles).

    *path*: the lock file (:func:`lock_path_for` of the database file); None makes a temporary file that this
    process removes at exit. The default view announces itself while it waits; the view from :meth:`yielding` (for
    the busiest writer) lets an announced waiter go first, for at most *max_yield_s* per acquisition.
    """

    def __init__(self, path: str | None = None, *, max_yield_s: float = 0.05) -> None:
        if path is None:
            fd, path = tempfile.mkstemp(prefix="medtwin-write-", suffix=".lock")
            os.close(fd)
            atexit.register(_remove_quietly, path)
            atexit.register(_remove_quietly, path + "-wait")
        self.path = str(path)
        self.max_yield_s = max_yield_s
        self.yields = False

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "max_yield_s": self.max_yield_s, "yields": self.yields}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _state(self) -> _ProcessState:
        key = (self.path, os.getpid())  # a forked child opens descriptors of its own
        state = _STATES.get(key)
        if state is None:
            with _STATES_LOCK:
                state = _STATES.get(key)
                if state is None:
                    state = _STATES[key] = _ProcessState(self.path)
        return state

    def yielding(self) -> SharedWriteLock:
        """The same lock, seen by a writer that lets waiting processes go first."""
        view = SharedWriteLock(self.path, max_yield_s=self.max_yield_s)
        view.yields = True
        return view

    def _someone_waits(self, state: _ProcessState) -> bool:
        try:
            fcntl.flock(state.wait_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True  # a waiter holds its shared lock
            raise
        fcntl.flock(state.wait_fd, fcntl.LOCK_UN)
        return False

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock; with *timeout* (seconds), give up after it and return False."""
        state = self._state()
        if not state.threads.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            if self.yields:
                if self._someone_waits(state):
                    deadline = time.monotonic() + self.max_yield_s
                    while time.monotonic() < deadline and self._someone_waits(state):
                        time.sleep(0.0002)
                if self._flock(state.fd, timeout):
                    return True
            else:
                fcntl.flock(state.wait_fd, fcntl.LOCK_SH)
                try:
                    if self._flock(state.fd, timeout):
                        return True
                finally:
                    fcntl.flock(state.wait_fd, fcntl.LOCK_UN)
        except BaseException:
            state.threads.release()
            raise
        state.threads.release()
        return False

    @staticmethod
    def _flock(fd: int, timeout: float | None) -> bool:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def release(self) -> None:
        """Let the lock go."""
        state = self._state()
        fcntl.flock(state.fd, fcntl.LOCK_UN)
        state.threads.release()

    def __enter__(self) -> SharedWriteLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"SharedWriteLock({self.path!r}{', yielding' if self.yields else ''})"


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
