"""WAL checkpoints off the commit path: a background thread copies the write-ahead log into the database file.

With SQLite's default, the connection whose commit pushes the WAL past ``wal_autocheckpoint`` pages runs the
checkpoint inside that ``COMMIT``: it copies every changed page into the database file and syncs it before the
call returns. For the MLLP listener that commit's messages (and every message queued behind it) wait for the
copy: measured on the project's VM at 1,000 msg/s, checkpoint commits were the ACK latency tail (commit p99
31.8 ms, ACK p99 86 ms; with the checkpoint in a thread of its own 17.1 ms and 54 ms in the same session; see
docs/benchmarks.md).

:class:`WalCheckpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection every *interval_s*
seconds. A passive checkpoint takes no write lock, so commits go on while it copies; the writer connections are
opened with ``wal_autocheckpoint=0`` (see :class:`medtwin.store.Store`'s ``background_checkpoint``). SQLite
reuses the log from its start once a checkpoint has copied all of it, so the file stays bounded as long as the
thread keeps up. Durability is unchanged: a commit is durable when its WAL frames are synced (``synchronous=FULL``);
the checkpoint only moves already-durable pages.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque

__all__ = ["FALLBACK_AUTOCHECKPOINT", "WalCheckpointer"]

log = logging.getLogger(__name__)

FALLBACK_AUTOCHECKPOINT = 100_000  # WAL pages at which a commit checkpoints anyway (the thread fell behind)


class WalCheckpointer:
    """A daemon thread that checkpoints the SQLite database at *path* every *interval_s* seconds.

    ``seconds`` keeps the duration of recent checkpoints and ``frames`` the WAL frames each found (for benchmarks
    and health checks); ``failures`` counts checkpoints that raised (logged, then retried at the next interval).
    """

    def __init__(self, path: str, *, interval_s: float = 0.5) -> None:
        if interval_s <= 0:
            raise ValueError(f"WalCheckpointer: interval_s must be positive, got {interval_s}")
        self.path = path
        self.interval_s = interval_s
        self.seconds: deque[float] = deque(maxlen=10_000)
        self.frames: deque[int] = deque(maxlen=10_000)
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint", daemon=True)
        self._thread.start()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """One passive checkpoint on *conn*, timed."""
        started = time.perf_counter()
        busy, log_frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
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
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
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
