"""The twin worker's reader of the raw inbound log: :class:`LogFollower` and the shard layouts of its cursors.

A follower reads the *accepted* entries after its saved cursor (``medtwin.store.accepted_after``) and maps each
again to the records the listener stored (the mappings are deterministic: same records, same ids); sharded, it
returns only its own patients' records and keeps a cursor of its own. An entry that no longer maps is stepped over
with an alert that says so (:func:`record_skipped`). It holds the consumer's lease (:mod:`medtwin.store.leases`):
one worker set follows a store at a time. The loop that feeds the twins is :func:`medtwin.twin.follow_loop.follow`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo

import orjson

from medtwin.errors import ValidationError
from medtwin.interop.device_obs import DEVICE_CONTENT_TYPE, stored_device_records
from medtwin.interop.hl7v2 import map_message, parse_payload
from medtwin.interop.mllp import CONTENT_TYPE
from medtwin.records import Event, MedicationAdministration, MedicationRequest, Observation, Patient, Record
from medtwin.store import AcceptedMessage, Store, accepted_after, last_raw_id, save_cursor
from medtwin.store.cursors import cursors_of, delete_cursors
from medtwin.store.leases import DEFAULT_LEASE_S, ConsumerLease, acquire_lease, keep_lease, process_holder
from medtwin.store.shards import shard_of  # the worker shard that owns a patient: the raw log's stored hash

__all__ = [
    "DEFAULT_CONSUMER",
    "FOLLOWED_CONTENT_TYPES",
    "SKIPPED_CODE",
    "Layouts",
    "LogFollower",
    "record_skipped",
    "saved_layouts",
    "shard_consumer",
    "stored_message_records",
    "stored_records",
]

log = logging.getLogger("medtwin.twin.worker")  # the worker's one log, named as before it was split in modules

DEFAULT_CONSUMER = "twin-runtime"
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
