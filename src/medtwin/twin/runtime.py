"""TwinRuntime: routes stored observations to their patient's twin, persists events and snapshots, publishes events.

The runtime works off the ingest path: :meth:`TwinRuntime.submit` queues a committed batch (bounded queue, so a
runtime that falls behind slows the listener instead of growing memory) and a worker thread takes every batch
waiting, updates the twins, stores the group's events and NEWS2 Observations, resolves the alerts that cleared in
it and saves the snapshots that are due, all in one transaction when the store has ``unit_of_work`` (else one
transaction for the events and one for the resolutions when it has ``update_event_statuses``), then calls the
in-process subscribers. :meth:`process` does the same synchronously (tests, batch replays).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from medtwin.monitoring import DEFAULT_FRESHNESS, AlertRules
from medtwin.records import (
    Event,
    MedicationAdministration,
    MedicationRequest,
    Observation,
    Patient,
    Record,
)
from medtwin.twin.component import ComponentRegistry
from medtwin.twin.patient import PatientTwin, VitalsComponent

__all__ = ["RuntimeStore", "TwinRuntime"]

log = logging.getLogger(__name__)

Subscriber = Callable[[Event], None]

# the record kinds the runtime routes to twins (each has a patient_id); events are outputs, not inputs
_ROUTED = (Observation, MedicationAdministration, MedicationRequest, Patient)


class RuntimeStore(Protocol):
    """What the runtime needs from storage (a :class:`medtwin.store.Store` satisfies it)."""

    def add_events(self, events: Sequence[Event]) -> None:
        """Store events."""
        ...

    def update_event_status(self, event_id: str, status: str, by: str | None = None) -> Event:
        """Acknowledge / resolve an event (a store may also offer ``update_event_statuses(event_ids, status, by)``,
        several in one transaction, which the runtime then uses for the alerts that clear)."""
        ...

    def save_snapshot(self, twin_id: str, blob: bytes, at: datetime) -> None:
        """Store a twin snapshot."""
        ...

    def latest_snapshot(self, twin_id: str) -> tuple[datetime, bytes] | None:
        """The newest snapshot of a twin."""
        ...

    def upsert_events(self, events: Sequence[Event]) -> None:
        """Store the latest version of each event (an escalated alert replaces its stored version)."""
        ...


class TwinRuntime:
    """Keeps one :class:`PatientTwin` per patient up to date with the stored observations."""

    def __init__(
        self,
        store: RuntimeStore | None = None,
        *,
        freshness: timedelta = DEFAULT_FRESHNESS,
        rules: AlertRules = AlertRules(),
        snapshot_every: timedelta | None = timedelta(minutes=1),
        queue_size: int = 10_000,
        group_window_s: float = 0.05,
        registry: ComponentRegistry | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        # the built-in components and the installed packages' (entry points); only those a patient's records call
        # for run in that patient's twin, so a vitals-only feed costs a routing check per record
        self.registry = registry if registry is not None else ComponentRegistry.default()
        lookup = getattr(store, "patient", None)
        self.settings: dict[str, Any] = {"patient_lookup": lookup} if lookup is not None else {}
        if settings:
            self.settings.update(settings)
        self.freshness = freshness
        self.rules = rules
        self.snapshot_every = snapshot_every
        self.group_window_s = group_window_s
        self.twins: dict[str, PatientTwin] = {}
        self._subscribers: list[Subscriber] = []
        self._queue: queue.Queue[tuple[Sequence[Record], float] | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._last_snapshot: dict[str, float] = {}
        self._dirty: set[str] = set()  # twins changed since the last checkpoint
        self.alert_latencies_s: deque[float] = deque(maxlen=100_000)  # the most recent alerts' receipt-to-alert
        self.alerts_raised = 0  # every alert, also those whose latency has left the window above
        # receipt-to-processed (twins updated, forecasts made, outputs committed) of the most recent messages
        self.processed_latencies_s: deque[float] = deque(maxlen=100_000)
        self.events_published = 0
        self.busy_s = 0.0

    # -- subscription --------------------------------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call *callback* with every new event (in the runtime's thread); returns an unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    # -- twins ---------------------------------------------------------------------------------------------
    def twin(self, patient_id: str) -> PatientTwin:
        """The twin of *patient_id* (restored from its latest snapshot, or new)."""
        with self._lock:
            twin = self.twins.get(patient_id)
            if twin is None:
                vitals = VitalsComponent(patient_id, freshness=self.freshness, rules=self.rules)
                snap = self.store.latest_snapshot(f"patient:{patient_id}") if self.store is not None else None
                kw: dict[str, Any] = {"vitals": vitals, "registry": self.registry, "settings": self.settings}
                twin = PatientTwin.restore(snap[1], **kw) if snap else PatientTwin(patient_id, **kw)
                self.twins[patient_id] = twin
            return twin

    # -- processing ----------------------------------------------------------------------------------------
    def process(self, records: Sequence[Record], *, received_monotonic: float | None = None) -> list[Event]:
        """Route *records* to the twins now; store and publish the resulting events; return them."""
        return self.process_many([(records, received_monotonic)])

    def process_many(
        self,
        items: Sequence[tuple[Sequence[Record], float | None]],
        *,
        also: Callable[[], None] | None = None,
        checkpoint: bool = False,
    ) -> list[Event]:
        """Process several stored messages' records, in order, with ONE store transaction for their outputs.

        Each item is ``(records, received_monotonic)``: the receipt time (``time.monotonic()`` clock, or None) is
        used to measure receipt-to-alert latency. The group's events, NEWS2 Observations, resolved alerts and due
        snapshots are written in one transaction when the store offers ``unit_of_work`` (a
        :class:`medtwin.store.Store` does); *also* runs inside it, after them (the worker saves its cursor there,
        so the cursor never moves past outputs that were not stored). With *checkpoint* the transaction also holds
        a snapshot of every twin changed since the last checkpoint (:meth:`checkpoint`). Subscribers are called after
        the commit.
        """
        events: list[Event] = []
        to_write: list[Record] = []
        cleared: list[str] = []
        touched: dict[str, PatientTwin] = {}
        routed = _ROUTED
        latest_received: float | None = None
        with self._lock:
            twins = self.twins
            for records, received in items:
                if received is not None:
                    latest_received = received
                by_patient: dict[str, list[Record]] = {}
                for r in records:
                    if isinstance(r, routed):
                        pid = r.patient_id
                        mine = by_patient.get(pid)
                        if mine is None:
                            by_patient[pid] = [r]
                        else:
                            mine.append(r)
                for patient_id, mine_records in by_patient.items():
                    twin = twins.get(patient_id)
                    if twin is None:
                        twin = self.twin(patient_id)
                    touched[patient_id] = twin
                    new = twin.observe(mine_records, defer=True)
                    vitals = twin.vitals
                    if vitals.cleared:
                        cleared.extend(vitals.cleared)
                        vitals.cleared = []
                    if not new:
                        continue
                    self._collect(new, received, events, to_write, cleared)
                    if vitals.last_news2_observation is not None and any(
                        isinstance(e, Event) and e.code == "news2" for e in new
                    ):
                        to_write.append(vitals.last_news2_observation)
            flushed = self._flush(list(touched.values()))
            if flushed:
                self._collect(flushed, latest_received, events, to_write, cleared)
            # alerts the other components saw clear (vitals: above), after their raises: a component's alert raised
            # and cleared in the same group (the glucose filter's, whose ids are new at every raise) ends resolved,
            # as when each message is a group of its own (until 2026-12-07 it stayed active: the outcome depended
            # on how messages were grouped)
            for twin in touched.values():
                for component in twin.components.values():
                    gone = getattr(component, "cleared", None)
                    if gone:
                        cleared.extend(gone)
                        gone.clear()
            if self.store is not None:
                self._dirty.update(touched)
            unit = getattr(self.store, "unit_of_work", None)
            with unit() if unit is not None else nullcontext():
                self._persist(to_write, cleared, list(touched.values()), checkpoint=checkpoint)
                if also is not None:
                    also()
            done = time.monotonic()
            self.processed_latencies_s.extend(done - received for _, received in items if received is not None)
        for event in events:
            self.events_published += 1
            for callback in list(self._subscribers):
                try:
                    callback(event)
                except Exception:
                    log.exception("event subscriber failed")
        return events

    def _collect(
        self,
        new: Sequence[Record],
        received: float | None,
        events: list[Event],
        to_write: list[Record],
        cleared: list[str],
    ) -> None:
        """Add a twin's outputs to the group's writes and events; count the alerts and their latency.

        An alert that cleared earlier in the group and is raised again now (a recurrence reopens the same id) is no
        longer to be resolved: the group's resolutions are written after its events, so without this the outcome
        would depend on how messages were grouped (and a worker restarted after a crash groups them differently).
        """
        to_write.extend(new)
        raised = [e for e in new if isinstance(e, Event)]
        if cleared and raised:
            again = {e.event_id for e in raised}
            cleared[:] = [c for c in cleared if c not in again]
        events.extend(raised)
        alerts = sum(1 for e in raised if e.kind == "alert")  # new ones and escalations: both reach a person
        self.alerts_raised += sum(1 for e in raised if e.kind == "alert" and e.data.get("revision", 1) == 1)
        if received is not None and alerts:
            self.alert_latencies_s.extend([time.monotonic() - received] * alerts)

    def _flush(self, twins: list[PatientTwin]) -> list[Record]:
        """The components' deferred work for the group's twins: one batched call per component kind that offers
        one (the glucose filter of every patient with a new reading), else each component's ``flush``."""
        out: list[Record] = []
        if self.registry is None:
            return out
        for spec in self.registry.specs():
            components = [t.components[spec.name] for t in twins if spec.name in t.components]
            if not components:
                continue
            if spec.flush_many is not None:
                out.extend(spec.flush_many(components))
                continue
            for component in components:
                flush = getattr(component, "flush", None)
                if flush is not None:
                    out.extend(flush())
        return out

    def _persist(
        self, to_write: list[Record], cleared: list[str], twins: list[PatientTwin], *, checkpoint: bool = False
    ) -> None:
        if self.store is None:
            return
        # an escalation is a new version of an alert already raised (medtwin.monitoring.alerts): stored over it
        updates = [r for r in to_write if isinstance(r, Event) and r.data.get("revision", 1) > 1]
        if updates:
            to_write = [r for r in to_write if not (isinstance(r, Event) and r.data.get("revision", 1) > 1)]
        write = getattr(self.store, "write", None)
        if to_write:
            if write is not None:
                write(to_write)  # events and NEWS2 observations of the whole group: one transaction
            else:
                self.store.add_events([r for r in to_write if isinstance(r, Event)])
        if updates:  # after the inserts: an alert raised and escalated in the same group is stored, then replaced
            self.store.upsert_events(updates)
        if cleared:
            self._resolve(self.store, cleared)
        if checkpoint:
            self._save_dirty()
            return
        if self.snapshot_every is None:  # snapshots only at checkpoints (the log-following worker)
            return
        now = time.monotonic()
        for twin in twins:
            if now - self._last_snapshot.get(twin.patient_id, 0.0) >= self.snapshot_every.total_seconds():
                self._last_snapshot[twin.patient_id] = now
                self.store.save_snapshot(twin.twin_id, twin.snapshot(), datetime.now(UTC))

    def _save_dirty(self) -> None:
        """Snapshot every twin changed since the last checkpoint: all encoded first, then stored, so that in a unit
        of work the write lock (taken at the first write) is held for the inserts only, not while hundreds of
        twins are encoded (about 1 ms each with a glucose filter; the listener's commits wait for that lock)."""
        assert self.store is not None
        at = datetime.now(UTC)
        twins = (self.twins.get(patient_id) for patient_id in sorted(self._dirty))
        blobs = [(twin.twin_id, twin.snapshot()) for twin in twins if twin is not None]
        for twin_id, blob in blobs:
            self.store.save_snapshot(twin_id, blob, at)
        self._dirty.clear()

    def checkpoint(self, *, also: Callable[[], None] | None = None) -> None:
        """Snapshot every twin changed since the last checkpoint and run *also* (the worker saves its cursor) in ONE
        transaction: the saved twins and the saved cursor always describe the same point of the log, so a worker
        restarted after a crash resumes from a consistent state (docs/architecture.md, "Durability")."""
        with self._lock:
            unit = getattr(self.store, "unit_of_work", None)
            with unit() if unit is not None else nullcontext():
                if self.store is not None:
                    self._save_dirty()
                if also is not None:
                    also()

    @staticmethod
    def _resolve(store: RuntimeStore, event_ids: list[str]) -> None:
        """Mark the alerts *event_ids* resolved: one transaction when the store offers a batched update."""
        batched = getattr(store, "update_event_statuses", None)
        if batched is not None:
            try:
                batched(event_ids, "resolved", by="medtwin.twin")
                return
            except KeyError:
                pass  # one of them is not stored: resolve one by one, so the others still are
        for event_id in event_ids:
            try:
                store.update_event_status(event_id, "resolved", by="medtwin.twin")
            except KeyError:
                log.warning("resolved alert %s is not stored", event_id)

    def acknowledge(self, event_id: str, *, by: str | None = None) -> Event | None:
        """Acknowledge an alert in the store (an escalation of it will still fire)."""
        return None if self.store is None else self.store.update_event_status(event_id, "acknowledged", by=by)

    # -- background worker ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread that drains :meth:`submit`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="twin-runtime", daemon=True)
            self._thread.start()

    def submit(self, records: Sequence[Record], received_monotonic: float | None = None) -> None:
        """Queue committed *records* for the worker (blocks when the queue is full: backpressure)."""
        self._queue.put((records, received_monotonic if received_monotonic is not None else time.monotonic()))

    def offer(self, records: Sequence[Record], received_monotonic: float | None = None) -> bool:
        """Queue *records* if there is room; False when the queue is full (for callers that must not block,
        such as the MLLP server's event loop, which then waits and offers again)."""
        try:
            self._queue.put_nowait(
                (records, received_monotonic if received_monotonic is not None else time.monotonic())
            )
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            stop = False
            # collect for a short window: one transaction for the group instead of one per message keeps the
            # runtime's writes from competing with the listener's commits for the (single) SQLite writer
            until = time.monotonic() + self.group_window_s
            while len(group) < 512:
                try:
                    nxt = self._queue.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            started = time.perf_counter()
            try:
                self.process_many([(records, received) for records, received in group])
            except Exception:
                log.exception("twin runtime failed on a group of %d batches", len(group))
            finally:
                self.busy_s += time.perf_counter() - started
                for _ in group:
                    self._queue.task_done()
            if stop:
                self._queue.task_done()
                return

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until everything submitted so far is processed (up to *timeout_s*)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        """Process what is queued, stop the worker, and snapshot every twin."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(30)
            self._thread = None
        if self.store is not None:
            with self._lock:
                for twin in self.twins.values():
                    self.store.save_snapshot(twin.twin_id, twin.snapshot(), datetime.now(UTC))
