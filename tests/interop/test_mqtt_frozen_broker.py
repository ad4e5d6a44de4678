"""The MQTT listener against a broker that is frozen but keeps the TCP connection open: it stops reading, its receive
window fills, and the listener's writes (the PUBACKs of a group, a PINGREQ) can no longer go out. Before, the write
waited for ever holding the connection's lock, and the network thread waited on that lock, so keep alive could not
notice: the listener stored nothing more and `medtwin listen` could not even stop. Now a write not taken within 1.5
keep-alive intervals drops the connection, logged as a warning, and the listener reconnects; every reading is
stored once."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.interop.test_mqtt_tls_restart import LogRecords

from medtwin.interop.devices import register_device
from medtwin.interop.mqtt import MqttListener
from medtwin.interop.mqtt_broker import broker_from_url
from medtwin.interop.mqtt_wire import (
    CONNECT,
    PINGREQ,
    PINGREQ_PACKET,
    PUBACK,
    SUBSCRIBE,
    MqttSocket,
    decode_puback,
    encode_pubacks,
    encode_publish,
    split_packets,
)
from medtwin.records import Patient
from medtwin.store import Store

T0 = datetime(2026, 5, 1, tzinfo=UTC)
N_READINGS = 6000  # their PUBACKs (24 KB) are twice what the small buffers below hold (about 12 KB)
SMALL_BUFFER = 4096  # bytes: the broker's receive buffer and the listener's send buffer (Linux doubles both)
PINGRESP_PACKET = b"\xd0\x00"


def _reading(i: int) -> bytes:
    return json.dumps({"code": "99504-3", "value": 70 + i % 200, "unit": "mg/dL",
                       "time": (T0 + timedelta(minutes=i)).isoformat()}).encode()  # fmt: skip


class Packets:
    """Whole MQTT packets read from one broker-side connection."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = bytearray()

    def next(self) -> list[tuple[int, int, memoryview]]:
        while True:
            got = split_packets(self.buffer)
            if got:
                return got
            data = self.conn.recv(65536)
            assert data, "the listener closed the connection"
            self.buffer += data


class FrozenBroker:
    """A broker in a thread, serving one session on two connections. On the first it sends *N_READINGS* readings and
    then never reads again, though it keeps the connection open and even sends a PINGRESP now and then (so that
    only a bounded write, not keep alive, can tell that it is stuck). On the second it resends them all (it never
    read which were acknowledged) and reads their PUBACKs, answering PINGREQs."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.context = context
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)  # inherited by accepted sockets
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        self.listener_ready = threading.Event()  # the test has made the listener's send buffer small
        self.frozen: socket.socket | None = None
        self.second: socket.socket | None = None
        self.reconnected = threading.Event()
        self.acks: list[int] = []
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _accept(self, timeout_s: float) -> tuple[socket.socket, Packets]:
        self.server.settimeout(timeout_s)
        conn, _ = self.server.accept()
        conn.settimeout(10)
        if self.context is not None:
            conn = self.context.wrap_socket(conn, server_side=True)
        packets = Packets(conn)
        [(kind, _, _)] = packets.next()
        assert kind == CONNECT
        conn.sendall(b"\x20\x03" + (b"\x01" if self.frozen is not None else b"\x00") + b"\x00\x00")
        [(kind, _, body)] = packets.next()
        assert kind == SUBSCRIBE
        conn.sendall(b"\x90\x04" + bytes(body[:2]) + b"\x00\x01")
        return conn, packets

    def _readings(self) -> bytes:
        return b"".join(encode_publish("devices/cgm-1/obs", _reading(i), 1 + i) for i in range(N_READINGS))

    def _run(self) -> None:
        try:
            self.frozen, _ = self._accept(10)
            assert self.listener_ready.wait(10)
            self.frozen.sendall(self._readings())
            deadline = time.monotonic() + 30
            while True:  # frozen: nothing read, a PINGRESP every 0.5 s, until the listener connects again
                assert time.monotonic() < deadline, "the listener did not connect again in 30 s"
                with contextlib.suppress(OSError):  # the listener dropped this connection
                    self.frozen.sendall(PINGRESP_PACKET)
                try:
                    conn, packets = self._accept(0.5)
                    break
                except TimeoutError:
                    continue
            self.reconnected.set()
            conn.sendall(self._readings())
            while len(self.acks) < N_READINGS:
                for kind, _, body in packets.next():
                    if kind == PINGREQ:
                        conn.sendall(PINGRESP_PACKET)
                    else:
                        assert kind == PUBACK
                        self.acks.append(decode_puback(body)[0])
            self.second = conn  # kept open: the listener is stopped first
        except BaseException as exc:
            self.failure = exc

    def close(self) -> None:
        for conn in (self.frozen, self.second):
            if conn is not None:
                conn.close()  # the frozen one with unread bytes: a reset, which frees a listener waiting to write
        self.server.close()
        self.thread.join(10)


@pytest.fixture
def listener_log() -> Iterator[LogRecords]:
    handler = LogRecords()
    logger = logging.getLogger("medtwin.interop.mqtt")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_a_broker_that_stops_reading_is_dropped_and_nothing_is_lost_or_doubled(
    transport: str, tmp_path: Path, tls_files: tuple[Path, Path], listener_log: LogRecords
) -> None:
    """The broker sends 6,000 readings and then reads nothing more while keeping the connection open (and sending
    PINGRESPs, so keep alive is content): the listener's PUBACKs fill the buffers between them and its write can no
    longer go out. Within 1.5 keep-alive intervals it drops that connection, says why in a warning, and reconnects;
    the broker resends all 6,000 and gets their PUBACKs; each reading is stored once."""
    store = Store(f"sqlite:///{tmp_path / 'frozen.db'}")
    store.write([Patient(patient_id="pt-1", gender="female")])
    register_device(store, "cgm-1", "pt-1")
    cert, key = tls_files
    context = None
    if transport == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        url = "mqtts://127.0.0.1:{port}"
    else:
        url = "mqtt://127.0.0.1:{port}"
    broker = FrozenBroker(context)
    remote = broker_from_url(url.format(port=broker.port), ca_file=str(cert) if context else None)
    listener = MqttListener(store, remote, "devices/+/obs", client_id="t", keep_alive_s=2, reconnect_delay_s=0.05)
    listener.start()
    try:
        with listener._lock:
            listener._conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        broker.listener_ready.set()
        broker.thread.join(60)
        assert broker.failure is None, repr(broker.failure)
        assert broker.reconnected.is_set()
        assert sorted(broker.acks) == list(range(1, N_READINGS + 1))
        warnings = [r.getMessage() for r in listener_log.records if r.levelno == logging.WARNING]
    finally:
        broker.close()
        stats = listener.stop()
    times = [o.effective for o in store.observations("pt-1")]
    store.close()
    assert len(times) == len(set(times)) == N_READINGS  # stored once each, though each came twice
    assert (stats.stored, stats.duplicates, stats.rejected) == (N_READINGS, N_READINGS, 0)
    assert stats.stale_acks > 0  # PUBACKs of the first connection that were given up
    lost = [w for w in warnings if f"connection to 127.0.0.1:{broker.port} lost" in w]
    assert len(lost) == 1, warnings
    assert "took no data for 3 s: it has stopped reading" in lost[0]
    assert any("reconnected" in w for w in warnings), warnings


def test_a_write_the_peer_does_not_take_breaks_the_connection_for_both_threads() -> None:
    """MqttSocket alone: a send that waits past *send_timeout_s* raises TimeoutError, wakes a receive waiting (with
    no timeout) in another thread with ConnectionError saying why, and every later send fails the same way."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()  # never reads
    conn = MqttSocket(client, send_timeout_s=0.3)
    woken: list[BaseException] = []

    def read() -> None:
        try:
            conn.receive(None)
        except BaseException as exc:
            woken.append(exc)

    def fill() -> None:
        for _ in range(10_000):  # 160 MiB at most: far more than the buffers between them hold
            conn.send(encode_pubacks([1]) * 4096)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        with pytest.raises(TimeoutError, match=r"took no data for 0\.3 s: it has stopped reading"):
            fill()
        reader.join(5)
        assert not reader.is_alive()
        assert [type(e) for e in woken] == [ConnectionError]
        assert "took no data for 0.3 s" in str(woken[0])
        with pytest.raises(ConnectionError, match="took no data"):
            conn.send(PINGREQ_PACKET)
    finally:
        conn.close()
        peer.close()
        server.close()
