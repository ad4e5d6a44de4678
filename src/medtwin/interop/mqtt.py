"""MQTT ingest of device readings: QoS 1, a persistent session, and the PUBACK only after the durable commit.

:class:`MqttListener` subscribes (MQTT 5 through :mod:`medtwin.interop.mqtt_wire`, ``clean_start`` off with a
session expiry, so the broker keeps the subscription and the unacknowledged messages while the listener is down)
with acknowledgement after the commit: a
message is acknowledged only once its reading (the envelope of :mod:`medtwin.interop.device_obs` and its
Observation) or, for a bad payload, its dead letter with the reason, is committed. Messages are stored in groups
(one transaction, one disk sync for all messages waiting, as the MLLP listener does). So a crash at any moment
loses nothing: what was acknowledged is stored, the rest is sent again by the broker after the restart, and a
resent reading is recognised by its key (device, reading id or code and time) and stored once.

An acknowledgement is only sent on the connection that received the message (a message id belongs to one
connection: after a reconnect the broker resends the unacknowledged messages under new ids).

The broker is reached as :mod:`medtwin.interop.mqtt_broker` says (``mqtts://`` for TLS, user name and password). A
refusal that connecting again cannot fix (credentials, authorization, a certificate: :class:`MqttAccessError`)
fails :meth:`MqttListener.start`, and when it comes on a reconnect it ends the listener's reconnecting (logged, and
told to *on_failure*) instead of retrying forever; the broker keeps the session's messages meanwhile. Any other
failure drops that connection only, never the listener: a broker stopped, restarted or out of reach, a connection
closed without a TLS close_notify (a bare TCP close or a reset, also in the middle of the TLS handshake or before
the CONNACK), a malformed packet. The listener connects again after *reconnect_delay_s*, twice as long after each
failed try (up to 30 s), and logs the loss, each failed try and the reconnect as warnings.

A broker that is frozen but keeps its TCP connections open (a stopped process, a hung host) stops reading, and once
its receive window is full nothing more can be written to it: a write (the PUBACKs of a group, a PINGREQ) that it has
not taken within 1.5 keep-alive intervals (60 s with keep alive off) drops the connection as above, so neither
thread waits on it for good. The PUBACKs it never took are not lost: their readings are stored, and the broker
resends them (and any it did take, if it lost them) on the next connection, where they are recognised and stored
once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from medtwin.errors import ValidationError
from medtwin.interop.device_obs import (
    DEVICE_CONTENT_TYPE,
    DevicePayloadError,
    DeviceReading,
    device_from_topic,
    envelope,
    parse_reading,
    reading_observation,
)
from medtwin.interop.devices import bound_patients
from medtwin.interop.mqtt_broker import MqttBroker, broker_from_url, parse_mqtt_url
from medtwin.interop.mqtt_wire import (
    DISCONNECT,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PINGRESP,
    PUBLISH,
    SUBACK,
    MqttAccessError,
    MqttProtocolError,
    MqttSocket,
    Publish,
    decode_publish,
    decode_suback,
    encode_connect,
    encode_pubacks,
    encode_subscribe,
)
from medtwin.records import Observation
from medtwin.store import RawMessage, Store

__all__ = ["MqttListener", "MqttStats", "StoredReading", "parse_mqtt_url"]

log = logging.getLogger(__name__)

SOURCE_SYSTEM_PREFIX = "device:"
_BINDING_TTL_S = 5.0  # a device newly bound or rebound is seen within this long
_KEEP_ALIVE_OFF_S = 40  # what bounds a write, as the keep-alive interval does, where keep alive is off (0)


@dataclass(slots=True)
class MqttStats:
    """What a listener did: readings stored, duplicates (redeliveries), dead letters, acknowledgements sent."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    acked: int = 0
    stale_acks: int = 0
    commits: int = 0
    ack_latencies_s: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading committed by the listener: its Observation and when the message arrived (monotonic clock)."""

    observation: Observation
    received_monotonic: float


class _Inbound(NamedTuple):
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float
    generation: int


class MqttListener:
    """Stores device readings from MQTT into *store* and acknowledges them after the commit (module docstring).

    *on_stored* is called (in the writer thread, after the commit) with the group's stored readings, for a twin
    runtime in the same process. *receive_maximum*: how many unacknowledged messages the broker may have in flight
    to this client (MQTT 5 Receive Maximum): the group commit needs a window of many messages (twice *max_group*:
    one group arrives while the one before commits). *max_group*: the most readings in one commit. A group takes
    only what has already arrived, so groups are this large only when the listener is behind; then a larger group
    costs less CPU per reading, because each commit writes every index page it touched once, and with one reading
    per device per commit that is a page of each (device, patient) index per reading (bench/mqtt_listener_cpu.py,
    1,000 wearers: 0.18 ms per reading with groups of 1,000, 0.12 ms with 4,000). The connection is
    :mod:`medtwin.interop.mqtt_wire`'s (a network thread reading whole receive buffers of packets, and the PUBACKs
    of a group sent in one write); it reconnects by itself, with the same persistent session, when it drops.

    *url* is an ``mqtt://`` URL, or a :class:`MqttBroker` (TLS and credentials: :func:`broker_from_url`).
    *on_failure* is called (in the network thread) when a reconnect is refused for good (module docstring).
    *reconnect_delay_s*: the wait before the first try to reconnect after the connection is lost; it doubles with
    each failed try, up to 30 s, and starts again from this once a connection is made.
    """

    def __init__(
        self,
        store: Store,
        url: str | MqttBroker,
        topic: str = "devices/+/obs",
        *,
        client_id: str = "medtwin-listener",
        session_expiry_s: int = 7 * 24 * 3600,
        receive_maximum: int = 8000,
        max_group: int = 4000,
        keep_alive_s: int = 30,
        on_stored: Callable[[Sequence[StoredReading]], None] | None = None,
        keep_latencies: bool = False,
        on_failure: Callable[[MqttAccessError], None] | None = None,
        reconnect_delay_s: float = 1.0,
    ) -> None:
        self.store = store
        self.broker = url if isinstance(url, MqttBroker) else broker_from_url(url)
        self.host, self.port = self.broker.host, self.broker.port
        self.on_failure = on_failure
        self.reconnect_delay_s = reconnect_delay_s
        self.topic = topic
        self.client_id = client_id
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.max_group = max_group
        self.keep_alive_s = keep_alive_s
        self.on_stored = on_stored
        self.keep_latencies = keep_latencies
        self.stats = MqttStats()
        self._inbox: queue.SimpleQueue[list[_Inbound] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _conn and _generation together
        self._generation = 0  # one per connection: a message id is valid on its own connection only
        self._conn: Any = None  # the MqttSocket of the current connection (None while disconnected)
        self._closing = threading.Event()
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        self._network: threading.Thread | None = None
        self._keep_alive_now = keep_alive_s  # the broker's Server Keep Alive, when it names one
        self._bindings: dict[str, tuple[float, str | None]] = {}

    # -- the connection (network thread) ---------------------------------------------------------------------------
    def _connect(self, timeout_s: float, *, wait_for_suback: bool = True) -> MqttSocket:
        """A new connection of the persistent session, subscribed; raises OSError or MqttProtocolError.

        Without *wait_for_suback* (a reconnect, when the session already holds the subscription) the SUBACK is
        checked by :meth:`_read` as it comes, behind whatever the broker resends first."""
        packet = encode_connect(
            self.client_id,
            clean_start=False,
            keep_alive_s=self.keep_alive_s,
            session_expiry_s=self.session_expiry_s,
            receive_maximum=self.receive_maximum,
            username=self.broker.username,
            password=self.broker.password,
        )
        conn, connack = self.broker.open(packet, timeout_s)
        try:
            keep_alive = self.keep_alive_s if connack.server_keep_alive is None else connack.server_keep_alive
            conn.send_timeout_s = 1.5 * (keep_alive or _KEEP_ALIVE_OFF_S)  # a frozen broker: module docstring
            conn.send(encode_subscribe(1, self.topic, qos=1))
            early: list[Publish] = []  # the session's queued messages may come before the SUBACK
            deadline = time.monotonic() + timeout_s
            subscribed = not wait_for_suback
            while not subscribed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MqttProtocolError(f"no SUBACK for {self.topic!r} in {timeout_s:g} s")
                for kind, flags, body in conn.receive(left):
                    if kind == PUBLISH:
                        early.append(decode_publish(flags, body))
                    elif kind == SUBACK:
                        _, codes = decode_suback(body)
                        if not codes or codes[0] >= 0x80:
                            raise MqttProtocolError(f"subscription to {self.topic!r} refused: reason "
                                                    f"0x{codes[0] if codes else 0:02x}")  # fmt: skip
                        subscribed = True
                    elif kind != PINGRESP:
                        raise MqttProtocolError(f"unexpected MQTT packet type {kind} before the SUBACK")
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._generation += 1
            self._conn = conn
            generation = self._generation
        self._keep_alive_now = keep_alive
        if early:
            now = time.monotonic()
            self._inbox.put([_Inbound(p.mid, p.qos, p.topic, p.payload, now, generation) for p in early])
        self._connected.set()
        return conn

    def _network_loop(self, conn: MqttSocket | None) -> None:
        """Read *conn*, and when it fails connect again (the same session) with backoff until the listener stops
        or the broker refuses this client for good (module docstring); each loss, failed try and reconnect is
        logged as a warning, so that ``medtwin listen`` shows an outage from its start to its end."""
        delay = self.reconnect_delay_s
        tries = 0  # failed tries to reconnect since the connection was lost
        lost_at = 0.0
        while not self._closing.is_set():
            try:
                if conn is None:
                    conn = self._connect(10.0, wait_for_suback=False)
                    log.warning("MQTT listener reconnected to %s:%d after %.1f s without a connection (%d failed "
                                "%s)", self.host, self.port, time.monotonic() - lost_at, tries,
                                "try" if tries == 1 else "tries")  # fmt: skip
                delay, tries = self.reconnect_delay_s, 0
                self._read(conn)
            except MqttAccessError as exc:  # connecting again would be refused again: give up, say why
                log.error("MQTT listener: %s; not reconnecting", exc)
                with self._lock:
                    self._generation += 1
                    self._conn = None
                self._connected.clear()
                if conn is not None:
                    conn.close()
                if self.on_failure is not None:
                    self.on_failure(exc)
                return
            except (OSError, MqttProtocolError) as exc:  # a broker gone (a bare close or reset included), or refusing
                self._log_retry(conn is not None, exc, tries, delay)  # for a reason that may pass: try again
            except Exception as exc:  # a bug of the broker's or ours: drop this connection, never the listener
                self._log_retry(conn is not None, exc, tries, delay, unexpected=True)
            if conn is not None:
                lost_at = time.monotonic()
            else:
                tries += 1
            with self._lock:
                self._generation += 1  # the message ids of the closed connection are void
                self._conn = None
            self._connected.clear()
            if conn is not None:
                conn.close()
                conn = None
            if self._closing.wait(delay):
                return
            delay = min(30.0, 2 * delay)

    def _log_retry(
        self, connected: bool, exc: Exception, tries: int, delay: float, *, unexpected: bool = False
    ) -> None:
        if self._closing.is_set():
            return
        why = f"{type(exc).__name__}: {exc}" if unexpected else str(exc) or type(exc).__name__
        where = f"{self.host}:{self.port}"
        if connected:
            said = f"MQTT connection to {where} lost ({why}); reconnecting, next try in {delay:g} s"
        else:
            said = f"MQTT listener: reconnecting to {where} failed (try {tries + 1}: {why}); next try in {delay:g} s"
        if unexpected:
            log.error("%s", said, exc_info=exc)
        else:
            log.warning("%s", said)

    def _read(self, conn: MqttSocket) -> None:
        """Queue the messages of *conn* for the writer, one list per receive, until it fails or the listener stops.

        Keep alive: a PINGREQ goes when nothing has come from the broker, or nothing has been sent to it, for half
        the keep-alive interval (at most one per half interval); the connection is taken for dead when nothing at
        all, not even a PINGRESP, has come for 1.5 intervals."""
        generation = self._generation
        keep_alive = self._keep_alive_now
        half = keep_alive / 2
        wait = min(1.0, half) if keep_alive else 1.0
        inbox = self._inbox
        last_ping = time.monotonic()
        while not self._closing.is_set():
            packets = conn.receive(wait)
            now = time.monotonic()
            batch: list[_Inbound] = []
            for kind, flags, body in packets:
                if kind == PUBLISH:
                    p = decode_publish(flags, body)
                    batch.append(_Inbound(p.mid, p.qos, p.topic, p.payload, now, generation))
                elif kind == SUBACK:  # of a reconnect (start() waits for the first)
                    _, codes = decode_suback(body)
                    if not codes or codes[0] >= 0x80:
                        raise MqttProtocolError(f"subscription to {self.topic!r} refused: reason "
                                                f"0x{codes[0] if codes else 0:02x}")  # fmt: skip
                elif kind == DISCONNECT:
                    raise ConnectionError(f"the broker disconnected (reason 0x{body[0] if len(body) else 0:02x})")
                elif kind != PINGRESP:
                    raise MqttProtocolError(f"unexpected MQTT packet type {kind}")
            if batch:
                inbox.put(batch)
            if keep_alive:
                quiet = now - conn.last_received >= half or now - conn.last_sent >= half
                if quiet and now - last_ping >= half:
                    conn.send(PINGREQ_PACKET)
                    last_ping = now
                if now - conn.last_received > 1.5 * keep_alive:
                    raise ConnectionError(f"nothing from the broker for {1.5 * keep_alive:g} s (keep alive)")

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> None:
        """Connect (persistent session), subscribe and start storing; returns once the subscription is acknowledged;
        raises when the broker cannot be reached or refuses."""
        self._closing.clear()
        self._writer = threading.Thread(target=self._write_loop, name="mqtt-writer", daemon=True)
        self._writer.start()
        try:
            conn = self._connect(timeout_s)  # connected and subscribed: nothing published after start() is lost
        except OSError as exc:
            self.stop()
            raise ValidationError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}") from None
        except MqttAccessError as exc:
            self.stop()
            raise ValidationError(str(exc)) from None
        except MqttProtocolError as exc:
            self.stop()
            raise ValidationError(
                f"the MQTT broker at {self.host}:{self.port} did not accept the connection and subscription to "
                f"{self.topic!r}: {exc}"
            ) from None
        self._network = threading.Thread(target=self._network_loop, args=(conn,), name="mqtt-network", daemon=True)
        self._network.start()

    def stop(self) -> MqttStats:
        """Store and acknowledge what has arrived, then disconnect (the session stays on the broker)."""
        if self._writer is not None:
            self._inbox.put(None)
            self._writer.join(30)
            self._writer = None
        self._closing.set()
        with self._lock:
            conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError):  # already gone: the session stays all the same
                conn.send(DISCONNECT_PACKET)
        if self._network is not None:
            self._network.join(10)
            self._network = None
        elif conn is not None:
            conn.close()
        with self._lock:
            self._conn = None
        return self.stats

    def __enter__(self) -> MqttListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- storing ---------------------------------------------------------------------------------------------------
    def _patients_of(self, device_ids: set[str]) -> dict[str, str | None]:
        """The bound patient of each of *device_ids*: cached for :data:`_BINDING_TTL_S`, the expired ones read
        again in one query."""
        now = time.monotonic()
        out: dict[str, str | None] = {}
        expired: list[str] = []
        for device in device_ids:
            cached = self._bindings.get(device)
            if cached is not None and now - cached[0] < _BINDING_TTL_S:
                out[device] = cached[1]
            else:
                expired.append(device)
        if expired:
            for device, patient in bound_patients(self.store, expired).items():
                self._bindings[device] = (now, patient)
                out[device] = patient
        return out

    def _write_loop(self) -> None:
        carry: list[_Inbound] = []  # what did not fit in the last group (a receive holds many messages)
        stop = False
        while True:
            group = carry
            if not group:
                first = self._inbox.get()
                if first is None:
                    return
                group = first
            while len(group) < self.max_group and not stop:  # what else has arrived, without waiting
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    group.extend(more)  # a list of the network thread's, handed over: ours to extend
            group, carry = group[: self.max_group], group[self.max_group :]
            while True:
                try:
                    self.store_group(group)
                    break
                except Exception:  # the store is down or full: keep the messages (unacknowledged) and retry
                    log.exception("MQTT listener: storing %d messages failed; retrying", len(group))
                    time.sleep(1.0)
            if stop and not carry:
                return

    def store_group(self, group: Sequence[_Inbound]) -> None:
        """Store *group* (readings in one transaction, dead letters each in its own), then acknowledge each."""
        items: list[tuple[list[Any], RawMessage | None]] = []
        stored: list[StoredReading] = []
        now = datetime.now(UTC)
        parsed: list[tuple[_Inbound, DeviceReading | DevicePayloadError]] = []
        for m in group:
            try:
                parsed.append((m, parse_reading(m.payload, m.topic)))
            except DevicePayloadError as exc:
                parsed.append((m, exc))
        patients = self._patients_of({r.device_id for _, r in parsed if isinstance(r, DeviceReading)})
        for m, reading in parsed:
            patient = patients.get(reading.device_id) if isinstance(reading, DeviceReading) else None
            if not isinstance(reading, DeviceReading) or patient is None:
                error = reading if isinstance(reading, DevicePayloadError) else DevicePayloadError(
                    f"device {reading.device_id!r} is not registered and bound to a patient")  # fmt: skip
                raw_key = f"{SOURCE_SYSTEM_PREFIX}{device_from_topic(m.topic) or 'unknown'}"
                self.stats.rejected += 1
                self.store.reject(
                    RawMessage(source_system=raw_key[:200], source_id=f"mqtt-{now.timestamp():.6f}-{m.mid}",
                               payload=m.payload, content_type="application/json", received=now,
                               status="rejected", reason=f"{m.topic[:200]}: {error}"),
                    f"{m.topic[:200]}: {error}",
                )  # fmt: skip
                continue
            obs = reading_observation(reading, patient)
            raw = RawMessage(source_system=f"{SOURCE_SYSTEM_PREFIX}{reading.device_id}", source_id=reading.key,
                             payload=envelope(reading, patient, m.topic, m.payload),
                             content_type=DEVICE_CONTENT_TYPE, received=now)  # fmt: skip
            items.append(([obs], raw))
            stored.append(StoredReading(obs, m.received))
        if items:
            results = self.store.write_batch(items)
            self.stats.commits += 1
            fresh: list[StoredReading] = []
            for result, reading_stored, (_, kept) in zip(results, stored, items, strict=True):
                if result.raw_conflict:  # the same reading key with another value: kept as a dead letter, flagged
                    assert kept is not None
                    first = result.related_raw_id
                    reason = (f"conflicting resend: reading {kept.source_id[:100]!r} of {kept.source_system[:80]}"
                              f" is stored with another value as raw_id {first}; both are kept")  # fmt: skip
                    key = f"{kept.source_id[:150]}#conflict-{now:%s%f}"
                    self.store.reject(dataclasses.replace(kept, source_id=key, status="rejected", reason=reason,
                                                          related_raw_id=result.related_raw_id,
                                                          relation="conflict-of"), reason)  # fmt: skip
                    self.stats.rejected += 1
                elif result.raw_duplicate:
                    self.stats.duplicates += 1
                else:
                    self.stats.stored += 1
                    fresh.append(reading_stored)
            stored = fresh
        self._acknowledge(group)
        if stored and self.on_stored is not None:
            try:
                self.on_stored(stored)
            except Exception:
                log.exception("MQTT listener: the on_stored callback failed")

    def _acknowledge(self, group: Sequence[_Inbound]) -> None:
        """The PUBACKs of *group*, in one write, on the connection each message came on (if it is still open)."""
        with self._lock:
            conn, generation = self._conn, self._generation
        now = time.monotonic()
        mids: list[int] = []
        for m in group:
            if m.qos == 0:
                continue
            if conn is None or m.generation != generation:
                self.stats.stale_acks += 1  # the broker resends it on the new connection
                continue
            mids.append(m.mid)
            if self.keep_latencies:
                self.stats.ack_latencies_s.append(now - m.received)
        if not mids:
            return
        try:
            conn.send(encode_pubacks(mids))
        except OSError:  # the connection dropped meanwhile: the broker resends these on the next one
            self.stats.stale_acks += len(mids)
            return
        self.stats.acked += len(mids)
