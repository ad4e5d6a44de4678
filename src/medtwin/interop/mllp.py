"""MLLP (Minimal Lower Layer Protocol) transport for HL7 v2: framing, an asyncio server with group commit, a client.

Framing (HL7 v2.5.1 appendix C, MLLP release 2): ``0x0B <message> 0x1C 0x0D``. The server

* stores every message durably *before* it sends the positive ACK: a writer thread collects the messages that
  arrive while the previous commit runs and commits them together (group commit: one transaction through
  ``Store.write_batch``), so ACK latency stays near one commit even under load;
* answers a resent message (same sender + MSH-10 control id) with a positive ACK again and stores it once;
* never crashes on bad input: malformed frames, non-HL7 payloads, oversize messages, bad encodings, missing MSH
  fields get a negative ACK (AR/AE with an ERR segment and the reason, when a reply is possible) and a dead-letter
  entry in the raw inbound log;
* bounds everything: message size, connections, idle time, and in-flight messages per connection (a slow store
  slows readers down through TCP instead of growing queues).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar, cast

from medtwin.interop.group_commit import GroupCommitWriter, IngestSink, MemorySink, StoredBatch, _Job
from medtwin.interop.hl7v2 import (
    Hl7Error,
    Hl7MappingError,
    Hl7Message,
    ack_code_of,
    build_ack,
    map_message,
    parse_message,
    parse_payload,
    wants_ack,
)
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

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
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


def frame(message: bytes | str) -> bytes:
    """Wrap one message in MLLP start/end blocks (text is encoded UTF-8)."""
    body = message.encode() if isinstance(message, str) else message
    return START_BLOCK + body + END_BLOCK


@dataclass(frozen=True, slots=True)
class FrameError:
    """A malformed or oversize frame: why, and the first bytes of what was received."""

    reason: str
    payload: bytes
    oversize: bool = False


class MllpFramer:
    """Incremental MLLP deframer: feed bytes, get complete frames (bytes) and :class:`FrameError` s in order."""

    __slots__ = ("_buf", "_skipping", "max_bytes")

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Consume *data*; return every frame completed by it."""
        buf = self._buf
        buf += data
        out: list[bytes | FrameError] = []
        while buf:
            if self._skipping:
                end = buf.find(END_BLOCK)
                if end < 0:
                    del buf[: max(0, len(buf) - 1)]
                    return out
                del buf[: end + 2]
                self._skipping = False
                continue
            start = buf.find(START_BLOCK)
            end = buf.find(END_BLOCK)
            if end >= 0 and (start < 0 or end < start):
                junk = bytes(buf[:end]).strip()
                if junk:
                    out.append(FrameError("frame has an end block but no start block (0x0B)", junk[:4096]))
                del buf[: end + 2]
                continue
            if start < 0:
                if len(buf) > self.max_bytes:
                    out.append(FrameError("bytes outside any MLLP frame", bytes(buf[:4096]), oversize=True))
                    buf.clear()
                return out
            if start > 0:
                junk = bytes(buf[:start]).strip()
                if junk:
                    out.append(FrameError("bytes outside any MLLP frame before a start block", junk[:4096]))
                del buf[:start]
                continue
            nxt = buf.find(START_BLOCK, 1)
            end = buf.find(END_BLOCK, 1)
            if nxt > 0 and (end < 0 or nxt < end):
                out.append(FrameError("frame not terminated (a new start block came first)", bytes(buf[1:nxt][:4096])))
                del buf[:nxt]
                continue
            if end < 0:
                if len(buf) - 1 > self.max_bytes:
                    out.append(FrameError(f"message exceeds {self.max_bytes} bytes", bytes(buf[1:4097]), oversize=True))
                    buf.clear()
                    self._skipping = True
                return out
            payload = bytes(buf[1:end])
            del buf[: end + 2]
            if len(payload) > self.max_bytes:
                out.append(FrameError(f"message exceeds {self.max_bytes} bytes", payload[:4096], oversize=True))
            else:
                out.append(payload)
        return out


@dataclass(frozen=True, slots=True)
class MllpConfig:
    """Limits and options of an :class:`MllpServer`.

    ``max_in_flight`` bounds the messages of one connection that are read but not yet acknowledged: when it is
    reached the server stops reading that socket (TCP then slows the sender) until ACKs have gone out.
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


@dataclass(slots=True)
class ServerStats:
    """Counters of an :class:`MllpServer`."""

    connections: int = 0
    refused_connections: int = 0
    frames: int = 0
    accepted: int = 0
    duplicates: int = 0
    unmapped: int = 0
    rejected: int = 0
    errors: int = 0
    records: int = 0
    reads_paused: int = 0  # times a connection hit max_in_flight and reading stopped (backpressure)
    reasons: dict[str, int] = field(default_factory=dict)


class _Slot:
    """One received frame of a connection, waiting for its ACK (ACKs leave in arrival order)."""

    __slots__ = ("ack", "done")

    def __init__(self) -> None:
        self.ack: bytes | None = None
        self.done = False


class _Connection(asyncio.Protocol):
    """One MLLP connection: deframes, hands frames to the server, writes the ACKs in order as commits finish."""

    def __init__(self, server: MllpServer) -> None:
        self.server = server
        self.framer = MllpFramer(server.config.max_message_bytes)
        self.slots: deque[_Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.paused = False
        self.closing = False  # no more reads: close once every owed ACK is out
        self.lost = False
        self.last_active = 0.0
        self._idle: asyncio.TimerHandle | None = None
        self._flush_scheduled = False

    # -- asyncio.Protocol -------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport = self.transport
        server = self.server
        if len(server._connections) >= server.config.max_connections or server._closing:
            server.stats.refused_connections += 1
            self.lost = True
            transport.abort()
            return
        server._connections.add(self)
        server.stats.connections += 1
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.last_active = server._loop_time()
        self._arm_idle(server.config.idle_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        server = self.server
        self.last_active = server._loop_time()
        for item in self.framer.feed(data):
            server.stats.frames += 1
            slot = _Slot()
            self.slots.append(slot)
            server._receive(item, self, slot)
        if not self.paused and len(self.slots) >= server.config.max_in_flight and self.transport is not None:
            self.paused = True  # backpressure: stop reading until ACKs have gone out
            server.stats.reads_paused += 1
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.closing = True
        self.flush()
        return True  # keep the transport open to send the ACKs still owed (flush closes it)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.closing = True
        if self._idle is not None:
            self._idle.cancel()
        self.server._connections.discard(self)
        self.server._connection_gone()

    # -- ACKs -------------------------------------------------------------------------------------------------
    def settle(self, slot: _Slot, ack: bytes | None) -> None:
        """Record *slot* 's ACK (None: none owed); the ACKs now due are sent, in arrival order, by one socket write
        at the end of this turn of the event loop (a group commit settles many slots of a connection at once)."""
        slot.ack = ack
        slot.done = True
        if not self._flush_scheduled and self.slots and self.slots[0] is slot:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        slots = self.slots
        out: list[bytes] = []
        while slots and slots[0].done:
            ack = slots.popleft().ack
            if ack is not None:
                out.append(START_BLOCK + ack + END_BLOCK)
        transport = self.transport
        if transport is None or self.lost:
            return
        if out:
            transport.write(b"".join(out))
        if self.paused and len(slots) <= self.server.config.max_in_flight // 2 and not self.closing:
            self.paused = False
            transport.resume_reading()
        if self.closing and not slots:
            transport.close()

    def close(self) -> None:
        """Stop reading; close once the ACKs still owed are sent."""
        if self.lost:
            return
        self.closing = True
        if self.transport is not None and not self.paused:
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()
        self.flush()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()

    # -- idle timeout -----------------------------------------------------------------------------------------
    def _arm_idle(self, delay: float) -> None:
        self._idle = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        if self.lost:
            return
        timeout = self.server.config.idle_timeout_s
        quiet = self.server._loop_time() - self.last_active
        if quiet >= timeout and not self.slots:
            log.info("closing idle MLLP connection from %s after %.0f s", self.peer, quiet)
            self.close()
            return
        self._arm_idle(max(0.05, timeout - quiet) if not self.slots else timeout)


class MllpServer:
    """An asyncio MLLP listener that stores each message durably before acknowledging it.

    Each connection is an :class:`asyncio.Protocol`: frames are parsed and mapped as they arrive (in the event
    loop), handed to the group-commit writer thread, and their ACKs are written, in arrival order and coalesced
    into one socket write, when the commit that holds them is durable.

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
    ) -> None:
        self.sink = sink
        self.config = config
        self.on_stored = on_stored
        self.stats = ServerStats()
        self._writer: GroupCommitWriter | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[_Connection] = set()
        self._closing = False
        self._all_gone: asyncio.Event | None = None
        self._known_patients: set[str] = set()  # patients this server has stored (ORU need not resend them)
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

    def _ack(self, message: Hl7Message | None, ok: bool, rejected: bool, text: str = "", *, code: str = "",
             location: str = "") -> bytes | None:  # fmt: skip
        send, enhanced = wants_ack(message, ok)
        if not send:
            return None
        ack = build_ack(
            message,
            ack_code_of(ok, rejected=rejected, enhanced=enhanced),
            text=text,
            error_code=code,
            error_location=location,
            control_id=f"{self._ack_prefix}-{next(self._ack_ids)}",
            sending_application=self.config.application,
            sending_facility=self.config.facility,
        )
        return ack.encode()

    def _submit(self, job: _Job, callback: Callable[[bool, Any], None]) -> None:
        assert self._writer is not None
        assert self._loop is not None
        self._writer.submit_callback(job, self._loop, callback)

    def _dead_letter(
        self,
        payload: bytes,
        message: Hl7Message | None,
        peer: str,
        reason: str,
        received: datetime,
        then: Callable[[bool, Any], None],
    ) -> None:
        self.stats.rejected += 1
        self._reason(reason)
        source_system = message.source_system if message is not None else f"mllp:{peer.rsplit(':', 1)[0]}"
        control = message.control_id if message is not None else ""
        source_id = f"{control or 'unparsed'}#rejected-{received.timestamp():.6f}-{next(self._ack_ids)}"
        raw = RawMessage(
            source_system=source_system[:200],
            source_id=source_id[:400],
            payload=payload,
            content_type=CONTENT_TYPE,
            received=received,
            status="rejected",
            reason=reason,
        )
        self._submit(_Job("reject", raw, reason=reason), then)

    def _refuse(
        self,
        payload: bytes,
        source: Hl7Message | None,
        header: Hl7Message | None,
        nak: bytes | None,
        reason: str,
        received: datetime,
        conn: _Connection,
        slot: _Slot,
    ) -> None:
        """Dead-letter *payload* (its source from *source*, else the peer); once that is durable answer *nak*, or a
        'storage unavailable' AE built from *header* if the dead letter could not be stored."""
        self._dead_letter(
            payload,
            source,
            conn.peer,
            reason,
            received,
            lambda ok, value: conn.settle(slot, nak if ok else self._storage_nak(header, value)),
        )

    def _receive(self, item: bytes | FrameError, conn: _Connection, slot: _Slot) -> None:
        """Parse, map and queue one frame for the group commit; its ACK is settled on *slot* after the commit."""
        try:
            self._receive_or_raise(item, conn, slot)
        except Exception:  # never lose a frame to a bug: answer it and keep serving
            log.exception("unexpected error while handling a frame")
            self.stats.errors += 1
            if not slot.done:
                conn.settle(slot, self._ack(None, False, False, "internal error; resend later", code="207"))

    def _receive_or_raise(self, item: bytes | FrameError, conn: _Connection, slot: _Slot) -> None:
        received = datetime.now(UTC)
        received_monotonic = time.monotonic()
        if isinstance(item, FrameError):
            header = _salvage_header(item.payload)
            nak = self._ack(header, False, True, item.reason, code="100" if not item.oversize else "104")
            self._refuse(item.payload, None, header, nak, f"MLLP framing: {item.reason}", received, conn, slot)
            return
        message: Hl7Message | None = None
        try:
            messages = parse_payload(item)
            message = messages[0]
            mapped = [map_message(m, assume_tz=self.config.assume_tz) for m in messages]
        except Exception as exc:  # bad input never crashes the server: everything unexpected is refused too
            if isinstance(exc, Hl7Error):
                error = exc
            else:
                log.exception("unexpected error while reading a message")
                error = Hl7Error(f"cannot process the message: {type(exc).__name__}: {exc}", error_code="207")
            header = message or _salvage_header(item)
            rejected = not isinstance(error, Hl7MappingError) and error.error_code != "207"
            nak = self._ack(header, False, rejected, str(error), code=error.error_code, location=error.location)
            self._refuse(item, header, header, nak, f"HL7 {error.error_code}: {error}", received, conn, slot)
            return
        records: list[Record] = [
            r
            for m in mapped
            for r in m.records
            # the store keeps the first Patient row (insert-or-ignore); an ORU repeating a stored patient adds nothing
            if not (isinstance(r, Patient) and m.message.message_type == "ORU" and r.patient_id in self._known_patients)
        ]
        supported = any(m.supported for m in mapped)
        raw = RawMessage(
            source_system=message.source_system[:200],
            source_id=message.control_id[:400],
            payload=item,
            content_type=CONTENT_TYPE,
            received=received,
            status="accepted",
            reason="; ".join(n for m in mapped for n in m.notes)[:2000] or None,
        )
        head = message
        if not supported:

            def logged(ok: bool, value: Any) -> None:
                if not ok:
                    conn.settle(slot, self._storage_nak(head, value))
                    return
                self.stats.unmapped += 1
                conn.settle(slot, self._ack(head, True, False, "stored; message type not mapped to records"))

            self._submit(_Job("log", raw, status="unmapped", reason=mapped[0].notes[0]), logged)
            return

        def stored(ok: bool, result: Any) -> None:
            if not ok:
                conn.settle(slot, self._storage_nak(head, result))
                return
            assert isinstance(result, WriteResult)
            if result.raw_duplicate:
                self.stats.duplicates += 1
                conn.settle(slot, self._ack(head, True, False, "duplicate of a stored message; not stored again"))
                return
            self.stats.accepted += 1
            self.stats.records += result.inserted + result.updated  # ADT updates are writes too
            if len(self._known_patients) > 100_000:
                self._known_patients.clear()
            self._known_patients.update(r.patient_id for r in records if isinstance(r, Patient))
            if self.on_stored is not None and records:
                self._offer(StoredBatch(records, received_monotonic), conn, slot, self._ack(head, True, False))
            else:
                conn.settle(slot, self._ack(head, True, False))

        self._submit(_Job("write", raw, records=records), stored)

    def _offer(self, batch: StoredBatch, conn: _Connection, slot: _Slot, ack: bytes | None) -> None:
        """Hand *batch* to the subscriber; while it answers False (full), retry every 5 ms, holding the ACK back."""
        assert self.on_stored is not None
        try:
            taken = self.on_stored(batch) is not False
        except Exception:
            log.exception("on_stored subscriber failed")
            taken = True
        if taken or conn.lost:
            conn.settle(slot, ack)
        else:
            assert self._loop is not None
            self._loop.call_later(0.005, self._offer, batch, conn, slot, ack)

    def _storage_nak(self, message: Hl7Message | None, exc: Any) -> bytes | None:
        log.error("storing a message failed: %s", exc, exc_info=exc if isinstance(exc, BaseException) else None)
        self.stats.errors += 1
        return self._ack(message, False, False, "storage unavailable; resend later", code="207")


def _salvage_header(payload: bytes) -> Hl7Message | None:
    """The MSH of a payload that failed to decode or parse, read leniently, so the NAK can reference it."""
    try:
        text = payload.decode("latin-1").removeprefix("\xef\xbb\xbf")
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
