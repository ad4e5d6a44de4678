"""MLLP (Minimal Lower Layer Protocol) transport for HL7 v2: an asyncio server with group commit, and a client.

Framing (HL7 v2.5.1 appendix C, MLLP release 2): ``0x0B <message> 0x1C 0x0D`` (:mod:`medtwin.interop.mllp_framing`).
The server

* stores every message durably *before* it sends the positive ACK: a writer thread collects the messages that
  arrive while the previous commit runs and commits them together (group commit: one transaction through
  ``Store.write_batch``), so ACK latency stays near one commit even under load;
* answers a resent message (same sender + MSH-10 control id, same content) with a positive ACK again and stores it
  once; a resend with the same control id and *other* content is kept beside the first (a conflict, recorded);
* processes each message of a batch frame on its own (:mod:`medtwin.interop.mllp_units`);
* never crashes on bad input: malformed frames, non-HL7 payloads, oversize messages, bad encodings, missing MSH
  fields get a negative ACK (AR/AE with an ERR segment and the reason, when a reply is possible) and a dead-letter
  entry in the raw inbound log; a burst of garbage is ONE dead letter with its counts and a sample; a result that
  cannot be used costs only itself (the rest of its message is stored, the ACK names it);
* bounds everything, so that one client cannot deny service to the others: message size, connections (in all and
  per peer address), idle time, the time to assemble one frame (a client trickling a frame byte by byte is cut off),
  and in-flight messages per connection (deframing stops there: a slow store or a flood slows that sender through
  TCP instead of growing queues); a large message is parsed and mapped in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import ssl
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar, cast

from medtwin.interop.group_commit import GroupCommitWriter, IngestSink, MemorySink, StoredBatch, _Job
from medtwin.interop.hl7v2 import (
    Hl7MappingError,
    Hl7Message,
    ack_code_of,
    build_ack,
    control_key,
    message_digest,
    parse_message,
    source_key,
    wants_ack,
)
from medtwin.interop.mllp_auth import SenderPolicy
from medtwin.interop.mllp_connection import _Connection, _Slot
from medtwin.interop.mllp_framing import END_BLOCK, START_BLOCK, FrameError, MllpFramer, frame
from medtwin.interop.mllp_units import ACCEPTED, ERROR, REJECTED, Outcome, Unit, combine, map_again, prepare_frame
from medtwin.records import Patient, Record
from medtwin.store import RawMessage, WriteResult

__all__ = [
    "CONTENT_TYPE",
    "END_BLOCK",
    "START_BLOCK",
    "FrameError",
    "GroupCommitWriter",
    "IngestSink",
    "MemorySink",
    "MllpClient",
    "MllpConfig",
    "MllpFramer",
    "MllpServer",
    "ServerStats",
    "StoredBatch",
    "frame",
    "run",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

CONTENT_TYPE = "x-application/hl7-v2+er7"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run *main* to completion on a new event loop: uvloop's where it is installed (a dependency of medtwin on
    Linux and macOS; it cut the listener's per-message loop overhead measurably, see docs/benchmarks.md),
    otherwise asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, or a trimmed install
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@dataclass(frozen=True, slots=True)
class MllpConfig:
    """Limits and options of an :class:`MllpServer`.

    ``max_in_flight`` bounds the messages of one connection that are read but not yet acknowledged: when it is
    reached the server stops deframing and reading that socket (TCP then slows the sender) until ACKs have gone out.
    ``max_connections_per_peer`` (default: half of ``max_connections``) bounds the connections of one peer address,
    so one host cannot take every connection; ``frame_timeout_s`` is the time a client has to send one whole frame
    from its start block (a client that trickles bytes is cut off: its partial frame is dead-lettered and refused);
    ``idle_timeout_s`` closes a connection that has sent no frame for that long (bytes that complete no frame do
    not count). Frames of more than ``offload_bytes`` are parsed and mapped in a worker thread.
    """

    host: str = "127.0.0.1"
    port: int = 2575
    max_message_bytes: int = 1 << 20
    max_connections: int = 64
    idle_timeout_s: float = 300.0
    max_in_flight: int = 64
    max_batch: int = 512
    ssl_context: ssl.SSLContext | None = None
    assume_tz: tzinfo = UTC
    application: str = "MEDTWIN"
    facility: str = "MEDTWIN"
    reuse_port: bool = False
    max_connections_per_peer: int | None = None
    frame_timeout_s: float = 30.0
    offload_bytes: int = 64 << 10
    senders: SenderPolicy | None = None  # None: every sender that can connect (medtwin listen: loopback only)

    @property
    def per_peer(self) -> int:
        """Connections allowed from one peer address."""
        if self.max_connections_per_peer is not None:
            return self.max_connections_per_peer
        return max(1, self.max_connections // 2)


@dataclass(slots=True)
class ServerStats:
    """Counters of an :class:`MllpServer`."""

    connections: int = 0
    refused_connections: int = 0
    frames: int = 0
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0  # resends with a stored control id and other content, kept beside the first
    unmapped: int = 0
    rejected: int = 0
    refused_results: int = 0  # results (OBX) refused inside messages whose other records were stored
    refused_senders: int = 0  # frames refused because their sender failed authentication (mllp_auth)
    timeouts: int = 0  # connections cut off for not finishing a frame in frame_timeout_s
    errors: int = 0
    records: int = 0
    reads_paused: int = 0  # times a connection hit max_in_flight and reading stopped (backpressure)
    offloaded: int = 0  # frames parsed and mapped in a worker thread
    reasons: dict[str, int] = field(default_factory=dict)


class MllpServer:
    """An asyncio MLLP listener that stores each message durably before acknowledging it.

    Each connection is an :class:`asyncio.Protocol`: frames are parsed and mapped as they arrive (in the event
    loop; a large one in a worker thread), handed to the group-commit writer thread, and their ACKs are written, in
    arrival order and coalesced into one socket write, when the commit that holds them is durable.

    *on_stored* is called (in the event loop, after the commit, before the ACK is sent) with each committed
    :class:`StoredBatch`; it must not block: hand the work to another thread or process (``TwinRuntime.offer``)
    and return False when that queue is full: the server then offers again a few milliseconds later, delaying only
    this message's ACK (backpressure on that sender) instead of stalling the event loop.
    """

    def __init__(
        self,
        sink: IngestSink,
        config: MllpConfig = MllpConfig(),
        *,
        on_stored: Callable[[StoredBatch], bool | None] | None = None,
        on_refused: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.sink = sink
        self.on_refused = on_refused  # (sending facility, peer address, reason): an unauthenticated sender
        self.config = config
        self.on_stored = on_stored
        self.stats = ServerStats()
        self._writer: GroupCommitWriter | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._connections: set[_Connection] = set()
        self._peers: dict[str, int] = {}
        self._closing = False
        self._all_gone: asyncio.Event | None = None
        self._known_patients: set[str] = set()  # patients this server has stored (ORU need not resend them)
        # a store's keys: patient ids keyed by its secret, conflict keys by a keyed digest (issue 15)
        keyring = getattr(sink, "keyring", None)
        self._patient_id_for = getattr(keyring, "pseudonym", None)
        self._keyed_digest: Callable[[bytes], str] | None = getattr(keyring, "digest", None)
        self._ack_ids = itertools.count(1)
        self._ack_prefix = f"{os.getpid():x}{int(time.time()) & 0xFFFFFF:x}"
        self.port: int | None = None

    def _loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def start(self) -> int:
        """Bind and start accepting; returns the bound port (useful with ``port=0``)."""
        self._loop = asyncio.get_running_loop()
        self._writer = GroupCommitWriter(self.sink, max_batch=self.config.max_batch)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mllp-large-frame")
        self._server = await self._loop.create_server(
            lambda: _Connection(self),
            self.config.host,
            self.config.port,
            ssl=self.config.ssl_context,
            reuse_port=self.config.reuse_port or None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop accepting, send the ACKs still owed, close every connection, finish queued commits."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._connections:
            self._all_gone = asyncio.Event()
            for conn in list(self._connections):
                conn.close()
            try:
                await asyncio.wait_for(self._all_gone.wait(), timeout=10)
            except TimeoutError:
                for conn in list(self._connections):
                    conn.abort()
                await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.close)
            self._writer = None

    def _connection_gone(self) -> None:
        if self._all_gone is not None and not self._connections:
            self._all_gone.set()

    async def __aenter__(self) -> MllpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _reason(self, reason: str) -> None:
        key = reason.split(":")[0][:60]
        self.stats.reasons[key] = self.stats.reasons.get(key, 0) + 1

    def _ack(self, message: Hl7Message | None, outcome: Outcome) -> bytes | None:
        ok = outcome.severity == ACCEPTED
        send, enhanced = wants_ack(message, ok)
        if outcome.stored and not ok and wants_ack(message, True) == (True, True):
            ok, send, enhanced = True, True, True  # committed: CA, the refused results as warnings
        if not send:
            return None
        ack = build_ack(
            message,
            ack_code_of(ok, rejected=outcome.severity == REJECTED, enhanced=enhanced),
            text=outcome.text,
            errors=outcome.errors,
            control_id=f"{self._ack_prefix}-{next(self._ack_ids)}",
            sending_application=self.config.application,
            sending_facility=self.config.facility,
        )
        return ack.encode()

    def _submit(self, job: _Job, callback: Callable[[bool, Any], None]) -> None:
        assert self._writer is not None
        assert self._loop is not None
        self._writer.submit_callback(job, self._loop, callback)

    # -- one frame ----------------------------------------------------------------------------------------------
    def _receive(self, item: bytes | FrameError, conn: _Connection, slot: _Slot) -> None:
        """Read one frame (in a worker thread when large) and queue its messages for the group commit; the frame's
        ACK is settled on *slot* once every message of it is durable (or refused)."""
        received = datetime.now(UTC)
        try:
            if isinstance(item, FrameError):
                self._refuse_frame(item, conn, slot, received)
            elif len(item) > self.config.offload_bytes and self._readers is not None and self._loop is not None:
                self.stats.offloaded += 1
                conn.busy = True
                future = self._loop.run_in_executor(self._readers, prepare_frame, item, self.config.assume_tz,
                                                   self._patient_id_for)  # fmt: skip
                future.add_done_callback(lambda f: self._prepared(f, item, conn, slot, received))
            else:
                self._store_units(
                    prepare_frame(item, self.config.assume_tz, self._patient_id_for), conn, slot, received
                )
        except Exception:  # never lose a frame to a bug: answer it and keep serving
            self._internal_error(conn, slot)

    def _prepared(self, future: asyncio.Future[list[Unit]], item: bytes, conn: _Connection, slot: _Slot,
                  received: datetime) -> None:  # fmt: skip
        try:
            units = future.result()
        except Exception:
            log.exception("unexpected error while reading a large frame")
            units = [Unit(item, error=Hl7MappingError("cannot process the message", error_code="207"))]
        try:
            self._store_units(units, conn, slot, received)
        except Exception:
            self._internal_error(conn, slot)
        conn.offload_done()

    def _internal_error(self, conn: _Connection, slot: _Slot) -> None:
        log.exception("unexpected error while handling a frame")
        self.stats.errors += 1
        if not slot.done:
            conn.settle(slot, self._ack(None, Outcome(ERROR, errors=(("207", "", "internal error; resend later"),))))

    def _refuse_frame(self, item: FrameError, conn: _Connection, slot: _Slot, received: datetime) -> None:
        header = _salvage_header(item.payload)
        outcome = Outcome(REJECTED, errors=(("104" if item.oversize else "100", "", item.reason),))
        raw = self._dead_letter_raw(item.payload, None, conn.peer, f"MLLP framing: {item.reason}", received)
        self._reject(raw, self._settler(conn, slot, header, [None], 0), outcome)

    def _reject(self, raw: RawMessage, done: Callable[..., None], outcome: Outcome) -> None:
        """Queue the dead letter *raw*; once it is durable the unit's *outcome* is recorded by *done*."""

        def logged(ok: bool, value: Any) -> None:
            done(ok, value, outcome)

        self._submit(_Job("reject", raw, reason=raw.reason), logged)

    def _refused_sender(self, units: list[Unit], conn: _Connection, header: Hl7Message | None) -> str | None:
        """Why the frame's sender may not send (:mod:`medtwin.interop.mllp_auth`), or None."""
        policy = self.config.senders
        if policy is None:
            return None
        for unit in units:
            message = unit.message or _salvage_header(unit.payload) or header
            facility = message.sending_facility if message is not None else ""
            why = policy.check(facility, conn.host, conn.cert_names)
            if why is not None:
                self.stats.refused_senders += 1
                log.warning("refused MLLP sender %r from %s: %s", facility, conn.peer, why)
                if self.on_refused is not None:
                    try:
                        self.on_refused(facility, conn.peer, why)
                    except Exception:  # the audit's trouble must not keep the connection open
                        log.exception("on_refused failed")
                return why
        return None

    def _store_units(self, units: list[Unit], conn: _Connection, slot: _Slot, received: datetime) -> None:
        header = units[0].message or _salvage_header(units[0].payload)
        refused = self._refused_sender(units, conn, header)
        if refused is not None:  # nothing of an unauthenticated sender is stored: NAK, then close
            conn.settle(
                slot, self._ack(header, Outcome(REJECTED, "sender not authorized", (("207", "MSH^1^4", refused),)))
            )
            conn.close()
            return
        outcomes: list[Outcome | None] = [None] * len(units)
        for i, unit in enumerate(units):
            done = self._settler(conn, slot, header, outcomes, i)
            if unit.error is not None:
                error = unit.error
                severity = ERROR if isinstance(error, Hl7MappingError) or error.error_code == "207" else REJECTED
                outcome = Outcome(severity, errors=((error.error_code, error.location, str(error)),))
                message = unit.message or (_salvage_header(unit.payload) if len(units) > 1 else header)
                reason = f"HL7 {error.error_code}: {error}"
                self._reject(self._dead_letter_raw(unit.payload, message, conn.peer, reason, received), done, outcome)
            else:
                self._write_unit(unit, received, done)

    def _settler(
        self, conn: _Connection, slot: _Slot, header: Hl7Message | None, outcomes: list[Outcome | None], index: int
    ) -> Callable[..., None]:
        """The callback that records unit *index* 's outcome and, once every unit of the frame has one, settles the
        frame's ACK. Called as ``(ok, value)`` by a dead letter's commit (then *outcome* is given) or with the
        outcome directly; a failed commit makes the unit an AE 'storage unavailable; resend later'."""

        def done(ok: bool, value: Any, outcome: Outcome | None = None) -> None:
            if not ok:
                self._storage_failed(value)
                outcome = Outcome(ERROR, errors=(("207", "", "storage unavailable; resend later"),))
            assert outcome is not None
            outcomes[index] = outcome
            if all(o is not None for o in outcomes):
                conn.settle(slot, self._ack(header, combine(cast(list[Outcome], outcomes))))

        return done

    def _dead_letter_raw(
        self, payload: bytes, message: Hl7Message | None, peer: str, reason: str, received: datetime
    ) -> RawMessage:
        self.stats.rejected += 1
        self._reason(reason)
        source_system = source_key(message) if message is not None else f"mllp:{peer.rsplit(':', 1)[0]}"
        control = control_key(message) if message is not None else "unparsed"
        # a unique key of its own, so a corrected resend with the same control id is still accepted
        return RawMessage(
            source_system=source_system,
            source_id=f"{control[:300]}#rejected-{received.timestamp():.6f}-{next(self._ack_ids)}",
            payload=payload,
            content_type=CONTENT_TYPE,
            received=received,
            status="rejected",
            reason=reason,
        )

    # -- one message ----------------------------------------------------------------------------------------------
    def _write_unit(self, unit: Unit, received: datetime, done: Callable[..., None], conflict_of: int | None = None,
                    mapped: Any = None) -> None:  # fmt: skip
        """Queue *unit* 's raw message and records for the group commit (unmapped types too: kept once per key)."""
        mapped = mapped or unit.mapped
        assert mapped is not None
        received_monotonic = time.monotonic()
        records: list[Record] = [
            r
            for r in mapped.records
            # the store keeps the first Patient row (insert-or-ignore); an ORU repeating a stored patient adds nothing
            if not (
                isinstance(r, Patient) and mapped.message.message_type == "ORU" and r.patient_id in self._known_patients
            )
        ]
        notes = [*mapped.notes, *(f"refused {r.location}: {r.reason}" for r in mapped.refused)]
        if conflict_of is not None:
            notes.insert(0, f"conflicting resend: control id {mapped.message.control_id[:100]!r} was stored with other "
                            f"content as raw_id {conflict_of}; both are kept")  # fmt: skip
        raw = RawMessage(
            source_system=mapped.source_system,
            source_id=mapped.source_id,
            payload=unit.payload,
            content_type=CONTENT_TYPE,
            received=received,
            status="accepted" if mapped.supported else "unmapped",
            reason="; ".join(notes)[:2000] or None,
            related_raw_id=conflict_of,
            relation="conflict-of" if conflict_of is not None else None,
            digest=message_digest(mapped.message),
        )
        head = mapped.message

        def stored(ok: bool, result: Any) -> None:
            if not ok:
                done(False, result)
                return
            assert isinstance(result, WriteResult)
            if result.raw_conflict:
                if conflict_of is not None:  # the digest-qualified key is taken by yet other content
                    done(
                        True,
                        None,
                        Outcome(ERROR, errors=(("205", "MSH^1^10", "conflicting resend could not be keyed"),)),
                    )
                    return
                digest = message_digest(head)
                if self._keyed_digest is not None:  # a plain SHA-256 in the key would confirm a guessed message
                    digest = self._keyed_digest(digest.encode())
                key = control_key(head, digest)
                again = map_again(unit, key, self.config.assume_tz, self._patient_id_for)
                self._write_unit(unit, received, done, result.related_raw_id, again)
                return
            if result.raw_duplicate:
                self.stats.duplicates += 1
                done(True, None, Outcome(ACCEPTED, "duplicate of a stored message; not stored again"))
                return
            if not mapped.supported:
                self.stats.unmapped += 1
                done(True, None, Outcome(ACCEPTED, "stored; message type not mapped to records"))
                return
            self.stats.accepted += 1
            self.stats.conflicts += conflict_of is not None
            self.stats.records += result.inserted + result.updated  # ADT updates are writes too
            if len(self._known_patients) > 100_000:
                self._known_patients.clear()
            self._known_patients.update(r.patient_id for r in records if isinstance(r, Patient))
            outcome = self._stored_outcome(mapped, conflict_of)
            if self.on_stored is not None and records:
                self._offer(StoredBatch(records, received_monotonic), lambda: done(True, None, outcome))
            else:
                done(True, None, outcome)

        self._submit(_Job("write", raw, records=records), stored)

    def _stored_outcome(self, mapped: Any, conflict_of: int | None) -> Outcome:
        text = f"stored beside raw_id {conflict_of}: same control id, other content" if conflict_of is not None else ""
        if not mapped.refused:
            return Outcome(ACCEPTED, text)
        self.stats.refused_results += len(mapped.refused)
        kept = sum(1 for r in mapped.records if not isinstance(r, Patient))
        summary = f"stored {kept} result(s); {len(mapped.refused)} refused (see ERR)" + (f"; {text}" if text else "")
        errors = tuple((r.error_code, r.location, r.reason) for r in mapped.refused)
        return Outcome(ERROR, summary, errors, stored=True)

    def _offer(self, batch: StoredBatch, then: Callable[[], None]) -> None:
        """Hand *batch* to the subscriber; while it answers False (full), retry every 5 ms, holding the ACK back."""
        assert self.on_stored is not None
        try:
            taken = self.on_stored(batch) is not False
        except Exception:
            log.exception("on_stored subscriber failed")
            taken = True
        if taken:
            then()
        else:
            assert self._loop is not None
            self._loop.call_later(0.005, self._offer, batch, then)

    def _storage_failed(self, exc: Any) -> None:
        log.error("storing a message failed: %s", exc, exc_info=exc if isinstance(exc, BaseException) else None)
        self.stats.errors += 1


def _salvage_header(payload: bytes) -> Hl7Message | None:
    """The MSH of a payload that failed to decode or parse, read leniently, so the NAK can reference it."""
    try:
        text = payload[:65536].decode("latin-1").removeprefix("\xef\xbb\xbf")
        first = text.replace("\n", "\r").split("\r", 1)[0]
        return parse_message(first)
    except Exception:
        return None


class MllpClient:
    """An asyncio MLLP client: send messages (optionally pipelined) and read the ACKs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout_s: float = 30.0) -> None:
        self._reader = reader
        self._writer = writer
        self.timeout_s = timeout_s

    @classmethod
    async def connect(
        cls, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None, timeout_s: float = 30.0
    ) -> MllpClient:
        """Open a connection."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_context, limit=1 << 20), timeout_s
        )
        return cls(reader, writer, timeout_s=timeout_s)

    async def send_frame(self, message: bytes | str) -> None:
        """Send one framed message without waiting for its ACK."""
        self._writer.write(frame(message))
        await self._writer.drain()

    async def read_ack(self) -> str:
        """Read the next ACK (decoded text, without framing)."""
        data = await asyncio.wait_for(self._reader.readuntil(END_BLOCK), self.timeout_s)
        return data[data.find(START_BLOCK) + 1 : -2].decode("utf-8", errors="replace")

    async def send(self, message: bytes | str) -> str:
        """Send one message and return its ACK."""
        await self.send_frame(message)
        return await self.read_ack()

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def __aenter__(self) -> MllpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
