"""WAL checkpoints off the commit path: a background thread copies the write-ahead log into the database file.

With SQLite's default, the connection whose commit pushes the WAL past ``wal_autocheckpoint`` pages runs the
checkpoint inside that ``COMMIT``: it copies every changed page into the database file and syncs it before the
call returns. For the MLLP listener that commit's messages (and every message queued behind it) wait for the
copy: measured on the project's VM at 1,000 msg/s, checkpoint commits were the ACK latency tail (commit p99
31.8 ms, ACK p99 86 ms; with the checkpoint in a thread of its own 17.1 ms and 54 ms in the same session; see
docs/store.md and docs/benchmarks.md).

:class:`WalCheckpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection every *interval_s*
seconds. A passive checkpoint takes no write lock, so commits go on while it copies. The store's connections
are then opened with a far larger ``wal_autocheckpoint`` (:data:`FALLBACK_AUTOCHECKPOINT` pages, about 400 MB), so
a commit checkpoints only if this thread has stopped (see :class:`medtwin.store.Store`'s
``checkpoint_interval_s`` and ``checkpoints_elsewhere``).

Copying is not enough to bound the file: SQLite starts the log again from its beginning only when a writer finds
it fully copied, and under a steady stream there is always a newer commit than the last checkpoint (measured:
the WAL grew to 95,000 pages in 8 s at 1,000 msg/s until the fallback checkpoint stalled a commit for 144 ms).
So once the log holds *restart_pages* pages, the thread follows the passive pass with
``PRAGMA wal_checkpoint(RESTART)`` while holding the store's write lock: only the few pages committed since the
passive pass are left to copy, and writers wait on that lock (woken at once) rather than in SQLite's busy handler.

Durability is unchanged: a commit is durable when its WAL frames are synced (``synchronous=FULL``); a checkpoint
only moves already-durable pages.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from typing import Any

__all__ = ["FALLBACK_AUTOCHECKPOINT", "WalCheckpointer"]

log = logging.getLogger(__name__)

FALLBACK_AUTOCHECKPOINT = 100_000  # WAL pages at which a commit checkpoints anyway (the thread has stopped)


class WalCheckpointer:
    """A daemon thread that checkpoints the SQLite database at *path* every *interval_s* seconds.

    *lock* is the write lock of the store whose commits this thread checkpoints (an object with ``acquire`` and
    ``release``), taken for the restart step only. ``seconds`` keeps the duration of recent checkpoints, ``frames``
    the WAL pages each found and ``restarts`` counts the times the log was started again (for benchmarks and health
    checks); ``failures`` counts checkpoints that raised (logged, then retried at the next interval).
    """

    def __init__(self, path: str, *, interval_s: float = 0.5, lock: Any = None, restart_pages: int = 2_000) -> None:
        if interval_s <= 0:
            raise ValueError(f"WalCheckpointer: interval_s must be positive, got {interval_s}")
        self.path = path
        self.interval_s = interval_s
        self.lock = lock
        self.restart_pages = restart_pages
        self.seconds: deque[float] = deque(maxlen=10_000)
        self.frames: deque[int] = deque(maxlen=10_000)
        self.locked_seconds: deque[float] = deque(maxlen=10_000)  # time the restart step held the writers' lock
        self.restarts = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True)
        self._thread.start()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """One passive checkpoint on *conn*, then a restart of the log if it has grown past *restart_pages*."""
        started = time.perf_counter()
        busy, log_frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if not busy and log_frames >= self.restart_pages:
            # a second passive pass copies what was committed during the first, so that little is left to copy
            # (and sync) while the writers wait for the lock
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if self.lock is not None:
                self.lock.acquire()
            locked = time.perf_counter()
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                self.locked_seconds.append(time.perf_counter() - locked)
                if self.lock is not None:
                    self.lock.release()
            self.restarts += not busy
        self.seconds.append(time.perf_counter() - started)
        self.frames.append(int(log_frames))
        if busy:
            log.debug("WAL checkpoint of %s was blocked; retrying in %.1f s", self.path, self.interval_s)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after a last checkpoint."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            # no busy timeout: while writers wait for the lock the restart must not wait for readers in SQLite's
            # sleeping busy handler (measured: it held the lock up to its 50 ms timeout); if a reader is active the
            # step reports busy and the log is restarted at a later interval
            conn = sqlite3.connect(self.path, timeout=0, check_same_thread=False)
        except sqlite3.Error:
            log.exception("WAL checkpointer cannot open %s; commits checkpoint past the fallback size", self.path)
            return
        try:
            while True:
                stopping = self._stop.wait(self.interval_s)
                try:
                    self.checkpoint(conn)
                except sqlite3.Error:
                    self.failures += 1
                    log.exception("WAL checkpoint of %s failed; retrying in %.1f s", self.path, self.interval_s)
                if stopping:
                    return
        finally:
            conn.close()
