"""The twin worker set: :class:`RuntimeProcess` runs :func:`recover_and_follow` in child processes, one per shard.

:func:`recover_and_follow` is :func:`~medtwin.twin.follow_loop.follow` that survives failures (a restart from the
saved cursor, a message that always fails isolated and stepped over); :func:`listener_store` opens the listener's
store and the write lock it shares with the workers; the set holds the consumer's lease
(:mod:`medtwin.store.leases`) from :meth:`RuntimeProcess.start` to :meth:`RuntimeProcess.stop`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, timedelta, tzinfo
from typing import Any

from medtwin.errors import ValidationError
from medtwin.records import Event
from medtwin.service import exit_with_parent, prepare_service_heap
from medtwin.store import SharedWriteLock, Store, accepted_after, resolve_database_url, save_cursor
from medtwin.store.engine import sqlite_file
from medtwin.store.leases import (
    DEFAULT_LEASE_S,
    ConsumerLease,
    ConsumerLeaseLostError,
    acquire_lease,
    keep_lease,
    new_holder,
    release_lease,
)
from medtwin.store.locks import lock_path_for
from medtwin.twin.follow_loop import CHECKPOINT_EVERY_S, follow
from medtwin.twin.log_follower import (
    DEFAULT_CONSUMER,
    FOLLOWED_CONTENT_TYPES,
    LogFollower,
    record_skipped,
    shard_consumer,
)
from medtwin.twin.runtime import TwinRuntime

__all__ = [
    "DEFAULT_WORKERS",
    "LISTENER_CHECKPOINT_S",
    "WORKER_CACHE_MIB",
    "RuntimeProcess",
    "listener_store",
    "recover_and_follow",
]

log = logging.getLogger("medtwin.twin.worker")  # the worker's one log, named as before it was split in modules

# The worker reads each raw page once and writes a few event pages: a small SQLite cache is enough, and keeps its
# memory flat (with the store's default 64 MiB its RSS grew about 4 MB a minute through a 10-minute soak).
WORKER_CACHE_MIB = 8


def recover_and_follow(
    store: Store,
    make_runtime: Callable[[], TwinRuntime],
    *,
    should_stop: Callable[[], bool],
    name: str = DEFAULT_CONSUMER,
    assume_tz: tzinfo = UTC,
    on_ready: Callable[[int], None] | None = None,
    retry_pause_s: float = 1.0,
    attempts: int = 3,
    isolate_messages: int = 100,
    abandon: Callable[[], bool] | None = None,
    shard: int = 0,
    shards: int = 1,
    holder: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> dict[str, Any]:
    """:func:`follow` that survives failures; returns :class:`WorkerStats` as a dict (of the last attempt) plus
    ``restarts``, ``skipped`` and ``messages_read`` (every read, re-reads after a restart included).

    After an error (a store that cannot be written, a bug) it logs it and starts again from the saved cursor with
    fresh twins restored from their snapshots, as a restarted process would (at least once), reading the next
    *isolate_messages* one at a time with the cursor saved after each. A message that then fails *attempts* times
    on its own is logged with its raw id and stepped over, so one bad message cannot stop every patient's twin; an
    alert records it (:func:`record_skipped`), as it does for a stored message that no longer maps.
    Stepping over is a cursor write: while the store cannot be written (disk full, database down) nothing is
    skipped and the worker keeps retrying every *retry_pause_s*. *abandon*: as for :func:`follow` (and no retry
    once it returns True). *shard* of *shards*: the patients this worker owns, and its cursor; *holder*, *lease_s*:
    the consumer's lease (:class:`LogFollower`). A lease taken over by another worker set is not retried: its
    :class:`~medtwin.store.leases.ConsumerLeaseLostError` is raised.
    """
    restarts = skipped = failures = stop_retries = read = 0
    failed_at: int | None = None
    isolating = False
    while True:
        runtime = make_runtime()
        follower = LogFollower(store, name=name, assume_tz=assume_tz, batch=1 if isolating else 500, shard=shard,
                               shards=shards, holder=holder, lease_s=lease_s)  # fmt: skip
        if on_ready is not None:
            on_ready(follower.position)
            on_ready = None
        try:
            if isolating:
                follow(follower, runtime, should_stop=lambda: True, group_window_s=0.0, cursor_every_s=0.0,
                       max_messages=isolate_messages)  # fmt: skip
                runtime.close()
                isolating = False
                stop_retries = 0  # progress
                continue
            # shard k of n checkpoints first (k + 1) / n of an interval after it starts: shards started together
            # would otherwise snapshot all their twins in the same second, every interval, both cores at once
            stats = follow(follower, runtime, should_stop=should_stop, abandon=abandon,
                           first_checkpoint_s=CHECKPOINT_EVERY_S * (shard + 1) / shards)  # fmt: skip
        except ConsumerLeaseLostError:
            raise  # another worker set follows these cursors now: a restart here would be refused
        except Exception:
            restarts += 1
            position = follower.position
            failures = failures + 1 if isolating and position == failed_at else 1
            failed_at = position
            log.exception("twin runtime failed after raw id %d; restarting from the saved cursor", position)
            if isolating and failures >= attempts:
                try:
                    bad = accepted_after(store, position, content_type=FOLLOWED_CONTENT_TYPES, limit=1,
                                         shard=(shard, shards))  # fmt: skip
                    if bad:
                        with store.unit_of_work():
                            keep_lease(store, follower.lease)
                            save_cursor(store, follower.name, bad[0].raw_id)
                        skipped += 1
                        failures = stop_retries = 0  # progress
                        log.error("twin runtime: raw message %d failed %d times on its own; stepped over",
                                  bad[0].raw_id, attempts)  # fmt: skip
                        record_skipped(store, bad[0].raw_id, f"it failed {attempts} times on its own",
                                       payload=bad[0].payload, assume_tz=assume_tz, shard=shard,
                                       shards=shards)  # fmt: skip
                except Exception:
                    log.exception("twin runtime: cannot step over the message after raw id %d; retrying", position)
            isolating = True
            if abandon is not None and abandon():
                return {"error": "the parent process died while failing", "restarts": restarts, "skipped": skipped}
            if should_stop():  # shutting down: finish what is stored unless failures stop making progress
                stop_retries += 1
                if stop_retries > attempts + 1:
                    return {"error": "stopped while failing", "restarts": restarts, "skipped": skipped}
            time.sleep(retry_pause_s)
            continue
        finally:
            read += follower.messages
        runtime.close()  # snapshot every twin
        return {**asdict(stats), "restarts": restarts, "skipped": skipped, "messages_read": read}


def _share_cores(shards: int) -> None:
    """Give each of *shards* worker processes its share of the cores for the compiled glucose kernels' threads.

    numba's threaded kernels start one thread per core in every process, and its OpenMP layer keeps idle threads
    spinning for a while after each parallel loop: *shards* workers beside the listener would each run as many
    threads as there are cores, and the spinning is CPU taken from the other processes. The shards are already
    the parallelism, so a worker uses ``cores // shards`` threads (at least one)."""
    if shards <= 1:
        return
    import numba

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    numba.set_num_threads(max(1, min(limit, cores // shards)))


def _child(
    db: str | None,
    freshness_s: float,
    name: str,
    assume_tz: tzinfo,
    on_event: Callable[[Event], None] | None,
    conn: multiprocessing.connection.Connection,
    stop: Any,
    write_lock: SharedWriteLock | None = None,
    checkpoints_elsewhere: bool = False,
    settings: dict[str, Any] | None = None,
    shard: int = 0,
    shards: int = 1,
    holder: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> None:
    """The worker process (shard *shard* of *shards*, of the set whose lease *holder* holds): follow the log until
    told to stop (or until the parent dies), then report."""
    _share_cores(shards)
    # NORMAL sync: the worker writes derived data only (events, NEWS2, snapshots, its cursor after them), computed
    # again from the durable raw log if a power loss takes its last commits back; its commits then hold the write
    # lock, which the listener waits for, for the WAL write only, not for a disk sync (docs/store.md)
    store = Store(
        db,
        cache_mib=WORKER_CACHE_MIB,
        write_lock=write_lock,
        synchronous="NORMAL",
        checkpoints_elsewhere=checkpoints_elsewhere,
    )
    # Ctrl-C in a terminal reaches the whole process group: the parent asks this process to stop (``stop``), and
    # an interrupt here would skip the final snapshots and the report
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        prepare_service_heap()  # this process is a service of its own (medtwin.service)
        orphaned = threading.Event()
        exit_with_parent(orphaned.set)  # stop at once if the parent dies; ended after a grace period at the latest

        def should_stop() -> bool:
            return bool(stop.is_set()) or orphaned.is_set()

        def make_runtime() -> TwinRuntime:
            # snapshots only at checkpoints, with the cursor (follow): a restart resumes from a consistent state
            runtime = TwinRuntime(store, freshness=timedelta(seconds=freshness_s), snapshot_every=None,
                                  settings=settings)  # fmt: skip
            if on_event is not None:
                runtime.subscribe(on_event)
            return runtime

        report = recover_and_follow(
            store,
            make_runtime,
            should_stop=should_stop,
            name=name,
            assume_tz=assume_tz,
            on_ready=lambda position: conn.send({"ready": position}),
            abandon=orphaned.is_set,
            shard=shard,
            shards=shards,
            holder=holder,
            lease_s=lease_s,
        )
        conn.send(report)
    except Exception as exc:  # report, then fail: the parent shows why
        log.exception("twin runtime worker failed")
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        store.close()


LISTENER_CHECKPOINT_S = 0.5  # the listener checkpoints the WAL from a thread, off the commit path (store.checkpoint)


def listener_store(db: str | None, *, shared_lock: bool = True) -> tuple[Store, SharedWriteLock | None]:
    """The store of an MLLP listener, as ``medtwin listen`` opens it, and the lock to give the other writers.

    The store checkpoints the WAL from a thread of its own every :data:`LISTENER_CHECKPOINT_S`. *shared_lock*
    (other processes write the file too: the twin runtime in a :class:`RuntimeProcess`, more listener processes of
    a :class:`~medtwin.interop.mllp_pool.ListenerPool`): it takes a :class:`~medtwin.store.locks.SharedWriteLock`
    (its yielding view, so the worker's few transactions go first), returned for
    ``RuntimeProcess(..., write_lock=lock)`` and ``ListenerPool(..., write_lock=lock)``; otherwise the lock is None.
    """
    lock: SharedWriteLock | None = None
    if shared_lock:  # an flock on the database's lock file: it dies with a killed holder (medtwin.store.locks)
        path = sqlite_file(resolve_database_url(db))
        lock = SharedWriteLock(lock_path_for(path) if path else None)
    view = None if lock is None else lock.yielding()
    return Store(db, checkpoint_interval_s=LISTENER_CHECKPOINT_S, write_lock=view), lock


DEFAULT_WORKERS = 2
"""Twin worker processes of ``medtwin listen --mqtt`` by default: on two cores the CGM wearers' twins (the glucose
filter) are the limit and need both cores (docs/benchmarks.md, "Living twin"); each owns the patients
:func:`shard_of` gives it. The MLLP listener keeps one: the vitals twins keep up at 1,000 msg/s with one worker,
and every worker reads and maps each HL7 v2 message to find its patients' records."""


class RuntimeProcess:
    """:class:`TwinRuntime` s following the store's raw log in child processes (see the module docstring).

    *workers* processes (``spawn``), each owning a shard of the patients (:func:`shard_of`: every record of a
    patient goes to the same worker, which keeps its own cursor and its twins' snapshots), so the twins' work runs
    on several cores; one worker is the unsharded layout of earlier releases (cursor :data:`DEFAULT_CONSUMER`).
    *db* is the database URL as given to :class:`~medtwin.store.Store` (None: the configured default, resolved
    in the child exactly as in the parent). *on_event* must be a module-level function (it is sent to the child
    by reference); it is called in the child for every event, e.g. to print alerts. *write_lock*: the lock of the
    listener's store from :func:`listener_store`, so the worker's writes are not starved by the listener's commits;
    with it the worker also leaves WAL checkpoints to the listener (measured: otherwise every commit of the worker
    that found the WAL past 10,000 pages ran a 15-30 ms checkpoint while holding the write lock, and the listener's
    ACKs waited for it). *settings*: the twin components' settings (picklable values, e.g.
    ``{"glucose_particles": 64}``).

    One set of workers follows a store's consumer *name*: :meth:`start` takes the consumer's lease for the set
    before it starts a process (:mod:`medtwin.store.leases`; the workers renew it every third of *lease_s*), and
    raises :class:`~medtwin.store.leases.ConsumerBusyError` while another set holds it, after waiting up to
    *lease_s* for a lease that is no longer renewed (a set that was killed) to expire; :meth:`stop` gives it up.
    """

    def __init__(
        self,
        db: str | None,
        *,
        freshness: timedelta = timedelta(hours=1),
        name: str = DEFAULT_CONSUMER,
        assume_tz: tzinfo = UTC,
        on_event: Callable[[Event], None] | None = None,
        write_lock: SharedWriteLock | None = None,
        settings: dict[str, Any] | None = None,
        workers: int = 1,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        if not 1 <= workers <= 64:
            raise ValidationError(f"twin workers: 1 to 64, got {workers}")
        self.lease = ConsumerLease(name, new_holder(), lease_s)
        self.db = db
        self.settings = settings
        self.write_lock = write_lock
        self.freshness = freshness
        self.name = name
        self.assume_tz = assume_tz
        self.on_event = on_event
        self.workers = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[Any] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        self._stop: Any = None
        self.stats: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        """The first child's process id (None before :meth:`start`)."""
        return int(self._procs[0].pid) if self._procs else None

    @property
    def pids(self) -> list[int]:
        """Every child's process id, shard by shard (empty before :meth:`start`)."""
        return [int(p.pid) for p in self._procs]

    @property
    def consumers(self) -> list[str]:
        """The cursor names of the shards (:func:`shard_consumer`)."""
        return [shard_consumer(self.name, k, self.workers) for k in range(self.workers)]

    def start(self, timeout_s: float = 120.0) -> int:
        """Start the children and wait until their cursors are in place; returns the lowest log position they start
        after."""
        self._with_store(lambda store: acquire_lease(store, self.lease, wait_s=self.lease.lease_s))
        self._stop = self._ctx.Event()
        positions = []
        for shard in range(self.workers):
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(
                target=_child,
                args=(
                    self.db,
                    self.freshness.total_seconds(),
                    self.name,
                    self.assume_tz,
                    self.on_event,
                    child,
                    self._stop,
                    self.write_lock,
                    self.write_lock is not None,  # a listener's lock: that listener checkpoints (listener_store)
                    self.settings,
                    shard,
                    self.workers,
                    self.lease.holder,
                    self.lease.lease_s,
                ),
                name="medtwin-twin-runtime" if self.workers == 1 else f"medtwin-twin-runtime-{shard + 1}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        for proc, parent in zip(self._procs, self._conns, strict=True):
            if not parent.poll(timeout_s):
                self._kill_all()
                raise RuntimeError(f"the twin runtime worker did not start within {timeout_s:.0f} s")
            reply = parent.recv()
            if "ready" not in reply:
                proc.join(10)
                self._kill_all()
                raise RuntimeError(f"the twin runtime worker failed to start: {reply.get('error', reply)}")
            positions.append(int(reply["ready"]))
        return min(positions)

    def _with_store(self, use: Callable[[Store], None]) -> None:
        store = Store(self.db, cache_mib=WORKER_CACHE_MIB, write_lock=self.write_lock,
                      checkpoints_elsewhere=self.write_lock is not None)  # fmt: skip
        try:
            use(store)
        finally:
            store.close()

    def _kill_all(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        try:  # every worker of the set has exited: the next set may start at once
            self._with_store(lambda store: release_lease(store, self.lease))
        except Exception as exc:  # the workers are stopped all the same; the lease then runs out by itself
            log.warning("twin runtime: cannot give up the lease of %r (%s); it expires in %.0f s", self.name, exc,
                        self.lease.lease_s)  # fmt: skip

    def stop(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Ask the children to finish what is stored, snapshot their twins and exit; returns their statistics (with
        several workers: summed or the slowest shard's, and each shard's under ``shards``)."""
        if not self._procs:
            return self.stats
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        reports: list[dict[str, Any]] = []
        for conn in self._conns:
            if conn.poll(max(0.0, deadline - time.monotonic())):
                try:
                    reports.append(dict(conn.recv()))
                except EOFError:
                    reports.append({"error": "the twin runtime worker exited without a report"})
            else:
                reports.append({"error": f"the twin runtime worker did not stop within {timeout_s:.0f} s"})
        for proc in self._procs:
            proc.join(10)
        self._kill_all()
        self.stats = reports[0] if len(reports) == 1 else _merged(reports)
        return self.stats

    def __enter__(self) -> RuntimeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SUMMED = ("events", "alerts", "unmappable", "restarts", "skipped")
_SLOWEST = ("busy_s", "processed_p50_ms", "processed_p99_ms", "alert_p50_ms", "alert_p99_ms")


def _merged(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report of several shards' workers: counts summed (messages: each entry once), the slowest shard's times
    and latencies, the lowest position; each shard's own report under ``shards``; the first error, naming its
    shard."""
    out: dict[str, Any] = {"workers": len(reports), "shards": reports}
    for key in _SUMMED:
        out[key] = sum(int(r.get(key, 0)) for r in reports)
    for key in _SLOWEST:  # a shard without alerts (its patients raised none) has no alert latency: NaN, left out
        values = [v for r in reports if key in r and not math.isnan(v := float(r[key]))]
        if values:
            out[key] = max(values)
    # each shard reads its own patients' entries, and every shard the entries tied to no single patient
    shared = max((int(r.get("shared_messages", 0)) for r in reports), default=0)
    out["messages"] = sum(int(r.get("messages", 0)) - int(r.get("shared_messages", 0)) for r in reports) + shared
    positions = [int(r["position"]) for r in reports if "position" in r]
    if positions:
        out["position"] = min(positions)
    errors = [f"shard {k + 1} of {len(reports)}: {r['error']}" for k, r in enumerate(reports) if "error" in r]
    if errors:
        out["error"] = "; ".join(errors)
    return out
