"""Where the MLLP server's messages go: the storage protocol it needs, an in-memory sink, and the group-commit
writer thread that commits the messages arriving during one commit together (one durable transaction, one ACK
wake-up of the event loop per group). Used by :mod:`medtwin.interop.mllp`, which re-exports the public names."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from medtwin.records import Record
from medtwin.service import drain_batch
from medtwin.store import RawMessage, WriteResult, raw_digest

__all__ = ["GroupCommitWriter", "IngestSink", "MemorySink", "StoredBatch"]

log = logging.getLogger("medtwin.interop.mllp")  # one logger for the server and its writer thread


class IngestSink(Protocol):
    """What the server needs from storage (a :class:`medtwin.store.Store` satisfies it)."""

    def write(self, records: Sequence[Record], raw: RawMessage | None = None) -> WriteResult:
        """Store records and their raw message in one durable transaction."""
        ...

    def reject(self, raw: RawMessage, reason: str) -> object:
        """Dead-letter *raw* with *reason*."""
        ...

    def log_raw(self, raw: RawMessage, status: str, reason: str | None = None) -> int | None:
        """Log *raw* with *status* and no records."""
        ...


class MemorySink:
    """An in-memory :class:`IngestSink` with the store's idempotency semantics (for tests, demos and benchmarks)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.raw: list[tuple[RawMessage, str, str | None]] = []
        self._kept: dict[tuple[str, str], tuple[int, str]] = {}  # key -> (raw id, digest)
        self._provenance: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def write(self, records: Sequence[Record], raw: RawMessage | None = None) -> WriteResult:
        with self._lock:
            if raw is not None:
                key = (raw.source_system, raw.source_id)
                digest = raw.digest or raw_digest(raw.payload_bytes)
                kept = self._kept.get(key)
                if kept is not None:  # a resend: the same content is a duplicate, other content a conflict
                    if kept[1] != digest:
                        return WriteResult(inserted=0, duplicates=0, raw_conflict=True, related_raw_id=kept[0])
                    self.raw.append((raw, "duplicate", None))
                    return WriteResult(inserted=0, duplicates=0, raw_duplicate=True, related_raw_id=kept[0])
                self.raw.append((raw, raw.status, raw.reason))
                self._kept[key] = (len(self.raw), digest)
            inserted = 0
            for r in records:
                p = r.provenance
                if p is not None:
                    pkey = (type(r).__name__ + p.source_system, p.source_id)
                    if pkey in self._provenance:
                        continue
                    self._provenance.add(pkey)
                self.records.append(r)
                inserted += 1
            return WriteResult(inserted=inserted, duplicates=len(records) - inserted, raw_id=len(self.raw))

    def write_batch(self, items: Sequence[tuple[Sequence[Record], RawMessage | None]]) -> list[WriteResult]:
        return [self.write(records, raw) for records, raw in items]

    def reject(self, raw: RawMessage, reason: str) -> None:
        with self._lock:
            self.raw.append((raw, "rejected", reason))

    def log_raw(self, raw: RawMessage, status: str, reason: str | None = None) -> int | None:
        with self._lock:
            self.raw.append((raw, status, reason))
            return len(self.raw)

    def entries(self, status: str) -> list[tuple[RawMessage, str, str | None]]:
        """Raw log entries with *status*."""
        with self._lock:
            return [e for e in self.raw if e[1] == status]


@dataclass(frozen=True, slots=True)
class _Job:
    kind: str  # "write" | "reject" | "log"
    raw: RawMessage
    records: Sequence[Record] = ()
    reason: str | None = None
    status: str = ""


# a queued job and what settles it: a concurrent.futures.Future (loop None), or a callback
# ``(succeeded, result or exception) -> None`` run in that event loop
_Pending = tuple[_Job, Any, asyncio.AbstractEventLoop | None]


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """Records just committed, with the monotonic receipt time of their message (for the twin runtime)."""

    records: Sequence[Record]
    received_monotonic: float


class GroupCommitWriter:
    """A writer thread that commits the jobs queued while the previous commit ran, then resolves their futures.

    With a sink that has ``write_batch(items) -> list[WriteResult]`` (as :class:`medtwin.store.Store` does) a group
    is one transaction; otherwise each job is its own transaction.
    """

    def __init__(self, sink: IngestSink, *, max_batch: int = 512) -> None:
        self.sink = sink
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mllp-group-commit", daemon=True)
        self._thread.start()
        self.commits = 0
        self.jobs = 0
        self.busy_s = 0.0
        self.cpu_s = 0.0  # CPU time of the writer thread (busy_s minus waits for the disk, locks and the GIL)
        self.commit_seconds: deque[float] = deque(maxlen=100_000)  # duration of each recent group commit

    def submit(self, job: _Job) -> Future[Any]:
        """Queue *job*; the future resolves to a WriteResult (write) or None once it is durable."""
        fut: Future[Any] = Future()
        self._queue.put((job, fut, None))
        return fut

    def submit_to_loop(self, job: _Job, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        """Queue *job*; the asyncio future (of *loop*) resolves like :meth:`submit`'s.

        The futures of one group commit are resolved by one callback in their loop, not one thread-safe wake-up
        per message: at high rates the per-message wake-ups were a visible share of the event loop's time.
        """
        fut: asyncio.Future[Any] = loop.create_future()

        def resolve(ok: bool, value: Any) -> None:
            if fut.done():  # cancelled while waiting
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        self.submit_callback(job, loop, resolve)
        return fut

    def submit_callback(
        self, job: _Job, loop: asyncio.AbstractEventLoop, callback: Callable[[bool, Any], None]
    ) -> None:
        """Queue *job*; once its group is durable, ``callback(succeeded, result or exception)`` runs in *loop*
        (one wake-up of the loop per group, like :meth:`submit_to_loop`, without a future per message)."""
        self._queue.put((job, callback, loop))

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued jobs and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, stop = drain_batch(self._queue, item, self.max_batch)
            started = time.perf_counter()
            cpu = time.thread_time()
            self._commit(batch)
            took = time.perf_counter() - started
            self.cpu_s += time.thread_time() - cpu
            self.busy_s += took
            self.commit_seconds.append(took)
            if stop:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        self.commits += 1
        self.jobs += len(batch)
        done: dict[int, tuple[bool, Any]] = {}  # batch index -> (succeeded, result or exception)
        write_batch = getattr(self.sink, "write_batch", None)
        writes = [i for i, (job, _, _) in enumerate(batch) if job.kind == "write"]
        if write_batch is not None and len(writes) > 1:
            try:
                results = write_batch([(batch[i][0].records, batch[i][0].raw) for i in writes])
                if len(results) != len(writes):
                    raise RuntimeError(f"write_batch returned {len(results)} results for {len(writes)} messages")
                for i, result in zip(writes, results, strict=True):
                    done[i] = (True, result)
            except Exception:  # isolate the failing message by committing one by one
                log.exception("group commit of %d messages failed; retrying one by one", len(writes))
        for i, (job, _, _) in enumerate(batch):
            if i in done:
                continue
            try:
                if job.kind == "write":
                    done[i] = (True, self.sink.write(job.records, job.raw))
                elif job.kind == "reject":
                    self.sink.reject(job.raw, job.reason or "rejected")
                    done[i] = (True, None)
                else:
                    done[i] = (True, self.sink.log_raw(job.raw, job.status, job.reason))
            except Exception as exc:
                done[i] = (False, exc)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, bool, Any]]] = {}
        for i, (_, target, loop) in enumerate(batch):
            ok, value = done[i]
            if loop is None:
                if ok:
                    target.set_result(value)
                else:
                    target.set_exception(value)
            else:
                by_loop.setdefault(loop, []).append((target, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for these any more
                loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[Callable[[bool, Any], None], bool, Any]]) -> None:
    """Run the callbacks of a group commit (in their loop) with each job's outcome."""
    for callback, ok, value in settled:
        try:
            callback(ok, value)
        except Exception:  # one bad callback must not keep the others from running
            log.exception("group-commit callback failed")
