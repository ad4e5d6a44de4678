"""The twin runtime as a worker that follows the raw inbound log, in a process of its own beside the MLLP listener.

The listener stores each HL7 v2 message (raw payload + records) durably and acknowledges it; it does no twin work.
The worker reads the *accepted* HL7 v2 messages after its saved cursor (``medtwin.store.accepted_after``), maps
each again to the observations the listener stored (the mapping is deterministic: same records, same ids), feeds
them to a :class:`~medtwin.twin.TwinRuntime` (NEWS2, trends, alerts, stored events and NEWS2 Observations), and
then saves its cursor. So:

* the listener's interpreter lock no longer serialises parsing, storing and scoring: on two cores the listener
  and the twins run side by side (docs/benchmarks.md, "Streaming ingest");
* a crash of either process loses no alert: a restarted worker resumes at its cursor and processes every message
  acknowledged in between (at least once: a group processed but not yet saved is processed again);
* receipt-to-alert latency is measured from each message's stored receipt time.

:class:`RuntimeProcess` runs :func:`follow` in a child process (``spawn``); :func:`follow` also runs in-process
(tests, replays).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import orjson

from medtwin.errors import ValidationError
from medtwin.interop.device_obs import DEVICE_CONTENT_TYPE, stored_device_records
from medtwin.interop.hl7v2 import map_message, parse_payload
from medtwin.interop.mllp import CONTENT_TYPE
from medtwin.records import Event, MedicationAdministration, MedicationRequest, Observation, Patient, Record
from medtwin.service import exit_with_parent, prepare_service_heap
from medtwin.store import (
    AcceptedMessage,
    SharedWriteLock,
    Store,
    accepted_after,
    last_raw_id,
    resolve_database_url,
    save_cursor,
)
from medtwin.store.cursors import cursors_of, delete_cursors
from medtwin.store.engine import sqlite_file
from medtwin.store.leases import (
    DEFAULT_LEASE_S,
    ConsumerLease,
    ConsumerLeaseLostError,
    acquire_lease,
    keep_lease,
    new_holder,
    process_holder,
    release_lease,
)
from medtwin.store.locks import lock_path_for
from medtwin.store.shards import shard_of  # the worker shard that owns a patient: the raw log's stored hash
from medtwin.twin.runtime import TwinRuntime

__all__ = [
    "CHECKPOINT_EVERY_S",
    "DEFAULT_CONSUMER",
    "FOLLOWED_CONTENT_TYPES",
    "LISTENER_CHECKPOINT_S",
    "SKIPPED_CODE",
    "LogFollower",
    "RuntimeProcess",
    "WorkerStats",
    "follow",
    "listener_store",
    "record_skipped",
    "recover_and_follow",
    "shard_consumer",
    "shard_of",
    "stored_message_records",
    "stored_records",
]

log = logging.getLogger(__name__)

DEFAULT_CONSUMER = "twin-runtime"
# The worker reads each raw page once and writes a few event pages: a small SQLite cache is enough, and keeps its
# memory flat (with the store's default 64 MiB its RSS grew about 4 MB a minute through a 10-minute soak).
WORKER_CACHE_MIB = 8
CHECKPOINT_EVERY_S = 60.0
"""How often the worker saves its cursor with its twins' snapshots (each twin changed in between is saved once:
the snapshot volume of the runtime's one-a-minute snapshots; a restart processes at most this much again)."""
_TAKEN = (Observation, MedicationAdministration, MedicationRequest, Patient)


def stored_records(
    payload: bytes, key: str | None, assume_tz: tzinfo, patient_id_for: Callable[[str | None, str], str] | None = None
) -> list[Record]:
    """The records of a stored HL7 v2 raw entry, mapped again as the listener mapped them: with the entry's key
    (*key*, its ``source_id``: a conflicting resend's records carry a key of their own) when it holds one message;
    an entry of several messages (a batch frame stored whole before issue 13) with each message's own key.
    *patient_id_for*: the store's keyed patient ids (``store.keyring.pseudonym``), as the listener used."""
    messages = parse_payload(payload)
    one = key if len(messages) == 1 else None
    if patient_id_for is None:
        return [r for m in messages for r in map_message(m, assume_tz=assume_tz, key=one).records]
    return [
        r for m in messages for r in map_message(m, assume_tz=assume_tz, key=one, patient_id_for=patient_id_for).records
    ]


FOLLOWED_CONTENT_TYPES = (CONTENT_TYPE, DEVICE_CONTENT_TYPE)
"""The raw-log entries the twins follow: HL7 v2 messages (MLLP) and device readings (MQTT)."""


def stored_message_records(
    message: AcceptedMessage,
    assume_tz: tzinfo = UTC,
    patient_id_for: Callable[[str | None, str], str] | None = None,
) -> list[Record]:
    """The records a stored raw entry was mapped to, mapped again (the mappings are deterministic): an HL7 v2
    message (:func:`stored_records`) or a device reading (:func:`medtwin.interop.device_obs.stored_device_records`);
    only the kinds the twins take (observations, medication administrations and requests, patients).
    *patient_id_for*: the store's keyed patient ids, as the listener used (:func:`stored_records`)."""
    if message.content_type == DEVICE_CONTENT_TYPE:
        return list(stored_device_records(message.payload))
    mapped = stored_records(message.payload, message.source_id, assume_tz, patient_id_for)
    return [r for r in mapped if isinstance(r, _TAKEN)]


_SHARD_SEPARATOR = "/shard-"


def shard_consumer(name: str, shard: int, shards: int) -> str:
    """The cursor name of shard *shard* of *shards* of consumer *name* (unsharded: *name* itself)."""
    return name if shards == 1 else f"{name}{_SHARD_SEPARATOR}{shard + 1}-of-{shards}"


_SHARD_NAME = re.compile(r"(\d+)-of-(\d+)")
Layouts = dict[int, dict[str, tuple[int, datetime]]]


def saved_layouts(store: Store, name: str) -> Layouts:
    """The saved cursors of consumer *name*, by layout: shard count -> {cursor name: (position, when saved)}."""
    layouts: Layouts = {}
    for cursor, saved in cursors_of(store, [name], f"{name}{_SHARD_SEPARATOR}").items():
        if cursor == name:
            shards = 1
        else:
            found = _SHARD_NAME.fullmatch(cursor[len(name) + len(_SHARD_SEPARATOR) :])
            shards = int(found.group(2)) if found and 0 < int(found.group(1)) <= int(found.group(2)) else 0
        if shards:
            layouts.setdefault(shards, {})[cursor] = saved
    return layouts


def _last_saved(cursors: dict[str, tuple[int, datetime]]) -> datetime:
    return max(updated for _, updated in cursors.values())


class LogFollower:
    """Reads the accepted HL7 v2 messages after a saved cursor and maps them to their observations.

    ``position`` is the saved cursor; ``read`` is the position after the messages :meth:`poll` has returned so
    far, saved by :meth:`commit`. A consumer that has never saved a cursor starts at the end of the log (it does
    not replay history) and saves that position at once, so a listener started after it cannot store a message it
    would skip.

    Sharded (*shards* above 1): the follower of shard *shard* returns only the records of the patients it owns
    (:func:`shard_of`) and keeps a cursor of its own (:func:`shard_consumer`); the followers of shards 0 to
    *shards* - 1 together return every record exactly once. It reads, in SQL, only the entries stored with the hash
    of one of its patients and those tied to no single patient (a batch of several, an entry stored before the
    hash was: these it maps and keeps its own records of); its position moves past the other shards' entries
    whether or not a poll found any of its own, so its cursor follows the log's end.

    A change of the worker count (a new layout) starts each shard at the lowest cursor of the layout that ran last
    (the most recently saved; with the layouts saved after it when it never ran whole): messages in between are
    processed again, at least once, as after a crash. Layouts before it are not consulted (a 4-shard layout of
    last month would replay a month), and once every shard of the running layout has saved past an older
    layout's cursors, those are deleted (:meth:`commit`). A shard's own cursor saved before another layout ran is
    stale and is replaced the same way. With no other layout it starts at the lowest cursor of its own layout, or
    at the end of the log when there is none.

    One worker set follows a consumer at a time: the follower holds the consumer's lease (*name*, as *holder*,
    this process's own token by default; the shards of one set share one) and renews it while it polls and with
    every cursor save, which commits only while the lease is held (:mod:`medtwin.store.leases`). Another holder's
    live lease refuses it (:class:`~medtwin.store.leases.ConsumerBusyError`) after waiting up to *wait_s* for that
    lease to expire; *lease_s*: how long its own lease runs after each renewal.
    """

    def __init__(
        self,
        store: Store,
        *,
        name: str = DEFAULT_CONSUMER,
        assume_tz: tzinfo = UTC,
        batch: int = 500,
        shard: int = 0,
        shards: int = 1,
        holder: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        wait_s: float = 0.0,
    ) -> None:
        if shards < 1 or not 0 <= shard < shards:
            raise ValidationError(f"twin worker shard {shard} of {shards}: need 0 <= shard < shards")
        self.store = store
        self.consumer = name
        self.name = shard_consumer(name, shard, shards)
        self.shard = shard
        self.shards = shards
        self.assume_tz = assume_tz
        self.batch = batch
        self.lease = ConsumerLease(name, holder or process_holder(), lease_s)
        acquire_lease(store, self.lease, wait_s=wait_s)
        self._renew_at = time.monotonic() + lease_s / 3
        self._others_retired = False
        saved = self._start()
        self.position = saved
        self.read = saved
        self.messages = 0
        self.shared_messages = 0  # of them, entries tied to no single patient: every shard reads those
        self.unmappable = 0
        self.last_poll_full = False
        self._owned: dict[str, bool] = {}

    def _start(self) -> int:
        """The position this shard starts after (saved, when it is not its own saved cursor; see the class)."""
        layouts = saved_layouts(self.store, self.consumer)
        own = layouts.pop(self.shards, {})
        mine = own.pop(self.name, None)
        newest_first = sorted(layouts.items(), key=lambda item: _last_saved(item[1]), reverse=True)
        if mine is not None and (not newest_first or mine[1] >= _last_saved(newest_first[0][1])):
            return mine[0]
        behind: list[int] = []
        for shards, cursors in newest_first:  # the newest layouts, down to the newest that ran whole
            behind += [position for position, _ in cursors.values()]
            if len(cursors) == shards:
                break
        if not behind:
            behind = [position for position, _ in own.values()]
        start = min(behind) if behind else last_raw_id(self.store)
        with self.store.unit_of_work():
            if mine is not None:  # stale (another layout ran since): replaced, backwards too
                delete_cursors(self.store, [self.name])
            save_cursor(self.store, self.name, start)
        return start

    def _retire_other_layouts(self) -> None:
        """Delete the cursors of the consumer's other layouts that every shard of this one has saved past (after
        they all saved since the others last did: a shard not yet started may hold a stale cursor)."""
        layouts = saved_layouts(self.store, self.consumer)
        own = layouts.pop(self.shards, {})
        if not layouts:
            self._others_retired = True
            return
        if len(own) < self.shards or min(u for _, u in own.values()) < max(map(_last_saved, layouts.values())):
            return
        floor = min(position for position, _ in own.values())
        passed = [name for cursors in layouts.values() for name, (position, _) in cursors.items() if position <= floor]
        delete_cursors(self.store, passed)

    def keep_lease_when_due(self) -> None:
        """Renew the lease when a third of it has passed (raises
        :class:`~medtwin.store.leases.ConsumerLeaseLostError` when another set has taken it over)."""
        if time.monotonic() >= self._renew_at:
            keep_lease(self.store, self.lease)
            self._renew_at = time.monotonic() + self.lease.lease_s / 3

    def owns(self, patient_id: str) -> bool:
        """Whether this follower's shard owns *patient_id* (always, unsharded)."""
        if self.shards == 1:
            return True
        mine = self._owned.get(patient_id)
        if mine is None:
            if len(self._owned) > 1_000_000:  # a bound on memory: the answer is cheap to compute again
                self._owned.clear()
            mine = self._owned[patient_id] = shard_of(patient_id, self.shards) == self.shard
        return mine

    def _records(self, message: AcceptedMessage) -> list[Record]:
        """The records of *message* that this follower's shard owns (a device reading of another shard's patient
        is not mapped at all: its envelope names the patient).

        An entry stored with a patient's hash was selected for this shard by that hash: a record of it that this
        shard does not own (the mapping no longer gives the patient the entry was stored for) would reach no
        worker, so the entry is refused (:class:`ValidationError`) and, like one that no longer maps, skipped
        with a record of why."""
        if self.shards == 1:
            return stored_message_records(message, self.assume_tz, self.store.keyring.pseudonym)
        if message.content_type == DEVICE_CONTENT_TYPE:
            doc = orjson.loads(message.payload)  # the envelope names the bound patient: parsed once, mapped if ours
            patient = str(doc["patient_id"])
            if self.owns(patient):
                return list(stored_device_records(doc))
            if message.patient_hash is not None:
                raise ValidationError(f"its patient {patient!r} is not the one it was stored for (shard hash)")
            return []
        records = stored_message_records(message, self.assume_tz, self.store.keyring.pseudonym)
        mine = [r for r in records if self.owns(r.patient_id or "")]
        if message.patient_hash is not None and len(mine) != len(records):
            raise ValidationError("a record's patient is not the one it was stored for (shard hash)")
        return mine

    def poll(self) -> list[tuple[Sequence[Record], float]]:
        """The next messages' observations with their receipt times on the ``time.monotonic()`` clock.

        :meth:`commit` saves the position after them once they are processed. A stored message that no longer
        maps (a changed mapping, a different time zone setting) is logged with its raw id and skipped, never
        silently.
        """
        self.keep_lease_when_due()
        sharded = self.shards > 1
        # sharded: the log's end first, then this shard's entries up to it; a poll that is not full has seen every
        # entry up to that end (one writer commits at a time: no lower id can commit after a higher one is seen)
        end = last_raw_id(self.store) if sharded else None
        found = accepted_after(self.store, self.read, content_type=FOLLOWED_CONTENT_TYPES, limit=self.batch,
                               shard=(self.shard, self.shards) if sharded else None, through=end)  # fmt: skip
        self.last_poll_full = len(found) == self.batch
        if not found:
            if end is not None and end > self.read:
                self.read = end  # only the other shards' entries (or none accepted) up to the end
            return []
        now_wall, now_mono = datetime.now(UTC), time.monotonic()
        out: list[tuple[Sequence[Record], float]] = []
        for message in found:
            try:
                records = self._records(message)
            except Exception as exc:
                self.unmappable += 1
                log.warning("twin runtime: accepted raw message %d no longer maps (%s); skipped", message.raw_id, exc)
                record_skipped(self.store, message.raw_id, f"it no longer maps: {exc}", shard=self.shard,
                               shards=self.shards)  # fmt: skip
                continue
            if records or not sharded:
                out.append((records, now_mono - (now_wall - message.received).total_seconds()))
        self.messages += len(found)
        if sharded:
            self.shared_messages += sum(1 for m in found if m.patient_hash is None)
        last = found[-1].raw_id
        self.read = last if end is None or self.last_poll_full else max(last, end)
        return out

    def commit(self) -> None:
        """Save the position after every message :meth:`poll` has returned (call once they are processed), with the
        lease renewed in the same transaction: nothing is saved once another worker set has taken the lease over."""
        if self.read != self.position:
            with self.store.unit_of_work():
                keep_lease(self.store, self.lease)
                save_cursor(self.store, self.name, self.read)
                if not self._others_retired:
                    self._retire_other_layouts()
            self._renew_at = time.monotonic() + self.lease.lease_s / 3
            self.position = self.read


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """What a worker did: messages read (a sharded worker: its patients' and, of them, ``shared_messages``, those
    tied to no single patient, which every shard reads), events raised, alerts and their receipt-to-alert latency
    (over the most recent 100,000 alerts), and the receipt-to-processed latency of the most recent 100,000 messages
    (twins updated, forecasts made, outputs committed)."""

    messages: int
    unmappable: int
    events: int
    alerts: int
    alert_p50_ms: float
    alert_p99_ms: float
    busy_s: float
    position: int
    processed_p50_ms: float = float("nan")
    processed_p99_ms: float = float("nan")
    shared_messages: int = 0


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1e3 if values else float("nan")


def follow(
    follower: LogFollower,
    runtime: TwinRuntime,
    *,
    should_stop: Callable[[], bool],
    group_window_s: float = 0.2,
    cursor_every_s: float = CHECKPOINT_EVERY_S,
    max_messages: int | None = None,
    abandon: Callable[[], bool] | None = None,
    first_checkpoint_s: float | None = None,
) -> WorkerStats:
    """Process the log until *should_stop* returns True and nothing is left to read; return the statistics.

    The worker polls the log every *group_window_s* (measured from one poll's start to the next: a group that takes
    longer to process is followed by the next poll at once) and reads what arrived since as one group, stores the
    group's outputs (events, NEWS2 Observations, resolved alerts) in one transaction and, at most every
    *cursor_every_s* (the first time after *first_checkpoint_s*, default *cursor_every_s*) and when it stops,
    checkpoints: its cursor with a snapshot of every twin changed since the last checkpoint, in one transaction
    right after the group's (:meth:`TwinRuntime.checkpoint`), so the saved twins and the saved cursor always
    describe the same point of the log and the group's outputs do not wait for the snapshots. The listener shares
    SQLite's single writer lock: every runtime transaction is one more wait for the lock, for the worker and for
    the listener, so a few larger runtime transactions keep both moving. The price: alerts come up to one window
    later, and after a crash up to *cursor_every_s* of messages are processed again from the checkpoint's state;
    the twins are deterministic and their outputs' ids come from their inputs, so that gives the same alerts and
    proposals again, stored once.
    A backlog is read without waiting; once caught up, a checkpoint that came due is made without waiting for the
    next message. With *max_messages* it returns once it has read that many; once *abandon* returns True (the
    parent process died) it saves its cursor and returns at once, backlog or not.

    Until 2026-12-07 the worker slept a whole window after processing each group (a poll every window plus the
    group's processing time) and made its checkpoints inside a group's transaction, the group's outputs waiting
    for every twin's snapshot (docs/benchmarks.md, "Living twin": commit-to-forecast latency).
    """
    busy = 0.0
    first = cursor_every_s if first_checkpoint_s is None else first_checkpoint_s
    saved_at = time.monotonic() - (cursor_every_s - first)  # as if the last checkpoint were that long ago
    while True:
        polled_at = time.monotonic()
        before = follower.read
        items = follower.poll()
        if follower.read != before:
            started = time.perf_counter()
            runtime.process_many(items)
            save = time.monotonic() - saved_at >= cursor_every_s
            if save:  # the cursor and the snapshots of the twins changed since the last one, after the group's commit
                runtime.checkpoint(also=follower.commit)
                saved_at = time.monotonic()
            busy += time.perf_counter() - started
            if max_messages is not None and follower.messages >= max_messages:
                break
            if abandon is not None and abandon():
                break
            if follower.last_poll_full:
                continue
        elif follower.read != follower.position and time.monotonic() - saved_at >= cursor_every_s:
            # caught up with a checkpoint still due (the last group came before it was): saved now, not at the next
            # message, so an idle worker's cursor (and a shard's past the others' entries) reaches the log's end
            runtime.checkpoint(also=follower.commit)
            saved_at = time.monotonic()
        elif should_stop():
            break
        # the rest of the window since this poll began: a group's processing is part of the window, not added to it
        time.sleep(max(0.0, polled_at + group_window_s - time.monotonic()))
    runtime.checkpoint(also=follower.commit)
    latencies = sorted(runtime.alert_latencies_s)
    processed = sorted(runtime.processed_latencies_s)
    return WorkerStats(
        messages=follower.messages,
        unmappable=follower.unmappable,
        events=runtime.events_published,
        alerts=runtime.alerts_raised,
        alert_p50_ms=_pct(latencies, 50),
        alert_p99_ms=_pct(latencies, 99),
        busy_s=busy,
        position=follower.position,
        processed_p50_ms=_pct(processed, 50),
        processed_p99_ms=_pct(processed, 99),
        shared_messages=follower.shared_messages,
    )


SKIPPED_CODE = "twin-message-skipped"


def record_skipped(
    store: Store,
    raw_id: int,
    reason: str,
    *,
    payload: bytes | None = None,
    assume_tz: tzinfo = UTC,
    shard: int = 0,
    shards: int = 1,
) -> Event | None:
    """Store an alert that the twins never saw the accepted raw message *raw_id*, and why (returns it).

    The message and its observations stay stored; only the twin's scores and alerts miss it, so a person has to
    know (a monitoring gap for that patient): the alert (code :data:`SKIPPED_CODE`, severity medium, the raw id in
    its data) stays active until acknowledged. Its id comes from the raw id, so a worker that steps over the same
    message again after a restart stores it once (a sharded worker's: one per shard, *shard* of *shards*, each
    naming the shard whose patients miss it). The patient is named when the payload still maps.
    """
    patient_id = None
    if payload is not None:
        try:
            patient_id = next(
                (
                    r.patient_id
                    for r in stored_records(payload, None, assume_tz, store.keyring.pseudonym)
                    if isinstance(r, Observation)
                ),
                None,
            )
        except Exception:  # it may not map at all: the alert names the raw message only
            patient_id = None
    event = Event(
        kind="alert",
        code=SKIPPED_CODE,
        time=datetime.now(UTC),
        severity="medium",
        patient_id=patient_id,
        message=f"raw message {raw_id} was stepped over by the twin runtime ({reason[:300]}): its data is stored but "
        "not in the scores and alerts",
        data={"raw_id": raw_id, "reason": reason[:1000]}
        | ({"shard": f"{shard + 1} of {shards}"} if shards > 1 else {}),
        source="medtwin.twin.worker",
        event_id=f"twin-skipped-{raw_id}" if shards == 1 else f"twin-skipped-{raw_id}-{shard + 1}-of-{shards}",
    )
    try:
        store.add_events([event])
    except Exception:
        log.exception("twin runtime: cannot store the alert for stepped-over raw message %d", raw_id)
        return None
    return event


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
