"""One MLLP connection of :class:`medtwin.interop.mllp.MllpServer`: deframing up to the in-flight limit, the ACKs in
arrival order, and the per-connection limits (idle time, the deadline to finish a frame, garbage reported after a
quiet moment, unfinished frames dead-lettered on a half-close or a reset)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from medtwin.interop.mllp_auth import cert_names
from medtwin.interop.mllp_framing import END_BLOCK, START_BLOCK, FrameError, MllpFramer

if TYPE_CHECKING:
    from medtwin.interop.mllp import MllpServer

__all__: list[str] = []  # used by medtwin.interop.mllp only

log = logging.getLogger("medtwin.interop.mllp")
_JUNK_QUIET_S = 0.2  # garbage followed by this much quiet is reported (one dead letter for the burst)


class _Slot:
    """One received frame of a connection, waiting for its ACK (ACKs leave in arrival order)."""

    __slots__ = ("ack", "done")

    def __init__(self) -> None:
        self.ack: bytes | None = None
        self.done = False


class _Connection(asyncio.Protocol):
    """One MLLP connection: deframes (incrementally, up to the in-flight limit), hands frames to the server, writes
    the ACKs in order as commits finish, and enforces the per-connection limits."""

    def __init__(self, server: MllpServer) -> None:
        self.server = server
        self.framer = MllpFramer(server.config.max_message_bytes)
        self.slots: deque[_Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.host = "?"
        self.paused = False
        self.busy = False  # a large frame of this connection is being read in a worker thread
        self.closing = False  # no more reads: close once every owed ACK is out
        self.lost = False
        self.counted = False
        self.cert_names: frozenset[str] = frozenset()  # names of a verified TLS client certificate
        self.last_active = 0.0
        self.partial_since: float | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._frame_timer: asyncio.TimerHandle | None = None
        self._junk_timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False

    # -- asyncio.Protocol -------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport = self.transport
        server = self.server
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.cert_names = cert_names(transport.get_extra_info("peercert"))
        if (
            len(server._connections) >= server.config.max_connections
            or server._peers.get(self.host, 0) >= server.config.per_peer
            or server._closing
        ):
            server.stats.refused_connections += 1
            self.lost = True
            transport.abort()
            return
        server._connections.add(self)
        server._peers[self.host] = server._peers.get(self.host, 0) + 1
        self.counted = True
        server.stats.connections += 1
        self.last_active = server._loop_time()
        self._arm_idle(server.config.idle_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.framer.push(data)
        self.drain()

    def drain(self) -> None:
        """Hand on the buffered frames until the in-flight limit (or a frame read off the loop) stops it."""
        server, framer = self.server, self.framer
        limit = server.config.max_in_flight
        while not self.busy and len(self.slots) < limit and not self.lost:
            item = framer.next_item()
            if item is None:
                break
            self._hand_on(item)
        blocked = self.busy or len(self.slots) >= limit
        if blocked and not self.paused and self.transport is not None and not self.closing:
            self.paused = True  # backpressure: stop reading until ACKs have gone out
            server.stats.reads_paused += 1
            self.transport.pause_reading()
        if framer.has_junk and self._junk_timer is None and not self.lost:
            self._junk_timer = asyncio.get_running_loop().call_later(_JUNK_QUIET_S, self._junk_quiet)
        self._watch_partial()

    def _hand_on(self, item: bytes | FrameError) -> None:
        server = self.server
        server.stats.frames += 1
        self.last_active = server._loop_time()
        slot = _Slot()
        self.slots.append(slot)
        server._receive(item, self, slot)

    def _junk_quiet(self) -> None:
        self._junk_timer = None
        if self.lost or self.busy or len(self.slots) >= self.server.config.max_in_flight:
            if self.framer.has_junk and not self.lost:  # reported once there is room
                self._junk_timer = asyncio.get_running_loop().call_later(_JUNK_QUIET_S, self._junk_quiet)
            return
        junk = self.framer.flush_junk()
        if junk is not None:
            self._hand_on(junk)

    def _watch_partial(self) -> None:
        """Start the frame deadline when a frame is begun but not finished (and forget it once none is)."""
        if self.framer.partial() is None:
            self.partial_since = None
            return
        if self.partial_since is None:
            now = self.server._loop_time()
            self.partial_since = now
            if self._frame_timer is not None:
                self._frame_timer.cancel()
            delay = self.server.config.frame_timeout_s
            self._frame_timer = asyncio.get_running_loop().call_later(delay, self._frame_deadline, now)

    def _frame_deadline(self, since: float) -> None:
        self._frame_timer = None
        if self.lost or self.partial_since is None:
            return
        if self.partial_since != since or self.busy:  # another frame since, or one is being read: look again later
            wait = (
                0.5 if self.busy else self.partial_since + self.server.config.frame_timeout_s - self.server._loop_time()
            )
            loop = asyncio.get_running_loop()
            self._frame_timer = loop.call_later(max(0.05, wait), self._frame_deadline, self.partial_since)
            return
        self.server.stats.timeouts += 1
        self._give_up_partial(f"frame not completed within {self.server.config.frame_timeout_s:g} s")
        log.info("MLLP connection from %s closed: a frame was not completed in time", self.peer)
        self.close()

    def _give_up_partial(self, why: str) -> None:
        """Dead-letter what is buffered of an unfinished frame (and garbage before it) with *why*."""
        junk = self.framer.flush_junk()
        if junk is not None:
            self._hand_on(junk)
        partial = self.framer.partial()
        if partial is not None:
            size, sample = partial
            self._hand_on(FrameError(f"{why} ({size} bytes of it received)", sample, size=size))
        self.framer.discard()
        self.partial_since = None

    def eof_received(self) -> bool:
        if not self.closing:  # a half-close: frames still buffered are read, a frame left unfinished is refused
            self.busy_or_drain_then(lambda: self._give_up_partial("connection closed in the middle of a frame"))
        self.closing = True
        self.flush()
        return True  # keep the transport open to send the ACKs still owed (flush closes it)

    def busy_or_drain_then(self, then: Callable[[], None]) -> None:
        """Hand on every buffered frame (ignoring the in-flight limit: the sender has stopped), then call *then*."""
        while not self.busy and (item := self.framer.next_item()) is not None:
            self._hand_on(item)
        if not self.busy:
            then()
        else:
            self._after_busy = then

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost and not self.closing:  # a reset: what was buffered of a frame is still dead-lettered
            self.busy_or_drain_then(lambda: self._give_up_partial("connection lost in the middle of a frame"))
        self.lost = True
        self.closing = True
        for timer in (self._idle, self._frame_timer, self._junk_timer):
            if timer is not None:
                timer.cancel()
        server = self.server
        server._connections.discard(self)
        if self.counted:
            self.counted = False
            left = server._peers.get(self.host, 1) - 1
            if left > 0:
                server._peers[self.host] = left
            else:
                server._peers.pop(self.host, None)
        server._connection_gone()

    # -- frames read off the loop -----------------------------------------------------------------------------
    _after_busy: Callable[[], None] | None = None

    def offload_done(self) -> None:
        """A frame read in a worker thread was handed on: go on with the buffered ones."""
        self.busy = False
        then, self._after_busy = self._after_busy, None
        if then is not None:
            self.busy_or_drain_then(then)
            self.flush()  # a closing connection closes once nothing is owed
        elif not self.lost and not self.closing:
            self.drain()
            self._resume_if_room()

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
            self.last_active = self.server._loop_time()
        if not self.closing:
            self._resume_if_room()
        if self.closing and not slots and not self.busy:
            transport.close()

    def _resume_if_room(self) -> None:
        if self.paused and len(self.slots) <= self.server.config.max_in_flight // 2 and not self.busy:
            self.drain()  # frames already buffered first
            if self.paused and len(self.slots) < self.server.config.max_in_flight and not self.busy:
                self.paused = False
                assert self.transport is not None
                self.transport.resume_reading()

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
