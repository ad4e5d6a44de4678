"""MQTT ingest of device readings: QoS 1, a persistent session, and the PUBACK only after the durable commit.

:class:`MqttListener` subscribes (paho-mqtt, MQTT 5, ``clean_start`` off with a session expiry, so the broker keeps
the subscription and the unacknowledged messages while the listener is down) with manual acknowledgement: a
message is acknowledged only once its reading (the envelope of :mod:`medtwin.interop.device_obs` and its
Observation) or, for a bad payload, its dead letter with the reason, is committed. Messages are stored in groups
(one transaction, one disk sync for all messages waiting, as the MLLP listener does). So a crash at any moment
loses nothing: what was acknowledged is stored, the rest is sent again by the broker after the restart, and a
resent reading is recognised by its key (device, reading id or code and time) and stored once.

An acknowledgement is only sent on the connection that received the message (a message id belongs to one
connection: after a reconnect the broker resends the unacknowledged messages under new ids).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from medtwin.errors import ValidationError
from medtwin.interop.device_obs import (
    DEVICE_CONTENT_TYPE,
    DevicePayloadError,
    device_from_topic,
    envelope,
    parse_reading,
    reading_observation,
)
from medtwin.interop.devices import bound_patient
from medtwin.records import Observation
from medtwin.service import drain_batch
from medtwin.store import RawMessage, Store

__all__ = ["MqttListener", "MqttStats", "StoredReading", "parse_mqtt_url"]

log = logging.getLogger(__name__)

SOURCE_SYSTEM_PREFIX = "device:"
_BINDING_TTL_S = 5.0  # a device newly bound or rebound is seen within this long


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """(host, port) of ``mqtt://host[:port]`` (port 1883 by default)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValidationError(f"MQTT URL {url!r}: expected mqtt://HOST[:PORT], e.g. mqtt://127.0.0.1:1883")
    return parts.hostname, parts.port or 1883


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


@dataclass(frozen=True, slots=True)
class _Inbound:
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
    to this client (MQTT 5 Receive Maximum): the group commit needs a window of many messages.
    """

    def __init__(
        self,
        store: Store,
        url: str,
        topic: str = "devices/+/obs",
        *,
        client_id: str = "medtwin-listener",
        session_expiry_s: int = 7 * 24 * 3600,
        receive_maximum: int = 2000,
        max_group: int = 1000,
        on_stored: Callable[[Sequence[StoredReading]], None] | None = None,
        keep_latencies: bool = False,
    ) -> None:
        self.store = store
        self.host, self.port = parse_mqtt_url(url)
        self.topic = topic
        self.client_id = client_id
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.max_group = max_group
        self.on_stored = on_stored
        self.keep_latencies = keep_latencies
        self.stats = MqttStats()
        self._inbox: queue.Queue[_Inbound | None] = queue.Queue()
        self._generation = 0
        self._generation_lock = threading.Lock()
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        self._bindings: dict[str, tuple[float, str | None]] = {}
        self._client: Any = None

    # -- MQTT callbacks (paho's network thread) ------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("MQTT connection refused: %s", reason_code)
            return
        with self._generation_lock:
            self._generation += 1
        client.subscribe(self.topic, qos=1)  # the SUBACK sets _subscribed (start() waits for it)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if any(getattr(code, "is_failure", False) for code in reason_codes):
            log.error("MQTT subscription to %r refused: %s", self.topic, reason_codes)
            return
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        with self._generation_lock:
            self._generation += 1  # the message ids of the closed connection are void

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._inbox.put(
            _Inbound(
                message.mid, message.qos, message.topic, bytes(message.payload), time.monotonic(), self._generation
            )
        )

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> None:
        """Connect (persistent session), subscribe and start storing; returns once the subscription is acknowledged;
        raises when the broker cannot be reached or refuses."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)  # fmt: skip
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        self._writer = threading.Thread(target=self._write_loop, name="mqtt-writer", daemon=True)
        self._writer.start()
        try:
            client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        except OSError as exc:
            self._inbox.put(None)
            raise ValidationError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}") from None
        self._client = client
        client.loop_start()
        if not self._connected.wait(timeout_s):  # connected and subscribed: nothing published after start() is lost
            self.stop()
            raise ValidationError(
                f"the MQTT broker at {self.host}:{self.port} did not accept the connection and subscription to "
                f"{self.topic!r}"
            )

    def stop(self) -> MqttStats:
        """Store and acknowledge what has arrived, then disconnect (the session stays on the broker)."""
        if self._writer is not None:
            self._inbox.put(None)
            self._writer.join(30)
            self._writer = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        return self.stats

    def __enter__(self) -> MqttListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- storing ---------------------------------------------------------------------------------------------------
    def _patient_of(self, device_id: str) -> str | None:
        now = time.monotonic()
        cached = self._bindings.get(device_id)
        if cached is not None and now - cached[0] < _BINDING_TTL_S:
            return cached[1]
        patient = bound_patient(self.store, device_id)
        self._bindings[device_id] = (now, patient)
        return patient

    def _write_loop(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            group, stop = drain_batch(self._inbox, first, self.max_group)
            while True:
                try:
                    self.store_group(group)
                    break
                except Exception:  # the store is down or full: keep the messages (unacknowledged) and retry
                    log.exception("MQTT listener: storing %d messages failed; retrying", len(group))
                    time.sleep(1.0)
            if stop:
                return

    def store_group(self, group: Sequence[_Inbound]) -> None:
        """Store *group* (readings in one transaction, dead letters each in its own), then acknowledge each."""
        items: list[tuple[list[Any], RawMessage | None]] = []
        stored: list[StoredReading] = []
        now = datetime.now(UTC)
        for m in group:
            device = device_from_topic(m.topic) or "unknown"
            raw_key = f"{SOURCE_SYSTEM_PREFIX}{device}"
            try:
                reading = parse_reading(m.payload, m.topic)
                patient = self._patient_of(reading.device_id)
                if patient is None:
                    raise DevicePayloadError(f"device {reading.device_id!r} is not registered and bound to a patient")
            except DevicePayloadError as exc:
                self.stats.rejected += 1
                self.store.reject(
                    RawMessage(source_system=raw_key[:200], source_id=f"mqtt-{now.timestamp():.6f}-{m.mid}",
                               payload=m.payload, content_type="application/json", received=now,
                               status="rejected", reason=f"{m.topic[:200]}: {exc}"),
                    f"{m.topic[:200]}: {exc}",
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
        client = self._client
        now = time.monotonic()
        for m in group:
            if m.qos == 0:
                continue
            if client is None or m.generation != self._generation:
                self.stats.stale_acks += 1  # the broker resends it on the new connection
                continue
            client.ack(m.mid, m.qos)
            self.stats.acked += 1
            if self.keep_latencies:
                self.stats.ack_latencies_s.append(now - m.received)
