"""The MQTT 5 subset of medtwin.interop.mqtt_wire: packet encoding and decoding, packets cut anywhere by TCP, and the
listener against a scripted broker (messages that come in the CONNACK's segment, PUBACKs only after the commit)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from medtwin.errors import ValidationError
from medtwin.interop.devices import register_device
from medtwin.interop.mqtt import MqttListener
from medtwin.interop.mqtt_broker import broker_from_url
from medtwin.interop.mqtt_wire import (
    PINGREQ_PACKET,
    PINGRESP,
    PUBACK,
    PUBLISH,
    MqttAccessError,
    MqttProtocolError,
    MqttSocket,
    PublishWindow,
    _read_varint,
    _varint,
    decode_connack,
    decode_puback,
    decode_publish,
    decode_suback,
    encode_connect,
    encode_pubacks,
    encode_publish,
    encode_subscribe,
    split_packets,
)
from medtwin.records import Patient
from medtwin.store import Store


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455])
def test_variable_byte_integer_round_trip(n: int) -> None:
    data = _varint(n)
    assert len(data) == 1 + (n > 127) + (n > 16_383) + (n > 2_097_151)
    assert _read_varint(data, 0) == (n, len(data))
    assert _read_varint(data[:-1], 0) is None  # cut short: wait for more bytes


def test_variable_byte_integer_limits() -> None:
    with pytest.raises(MqttProtocolError):
        _varint(268_435_456)
    with pytest.raises(MqttProtocolError, match="more than 4 bytes"):
        _read_varint(b"\xff\xff\xff\xff\x01", 0)


def test_publish_round_trip_and_packets_cut_anywhere() -> None:
    big = b"x" * 300  # a remaining length of two bytes
    packets = [
        encode_publish("devices/cgm-1/obs", b'{"value": 1}', 7),
        encode_publish("devices/cgm-2/obs", big, 65_535),
        encode_publish("devices/cgm-3/obs", b"q0", 0, qos=0),
        encode_pubacks([1, 2, 513]),
    ]
    stream = b"".join(packets)
    for cut in range(1, 40):  # the same stream in chunks of every size up to 40 bytes
        buffer = bytearray()
        got = []
        for k in range(0, len(stream), cut):
            buffer += stream[k : k + cut]
            got.extend(split_packets(buffer))
        assert not buffer
        kinds = [kind for kind, _, _ in got]
        assert kinds == [PUBLISH, PUBLISH, PUBLISH, PUBACK, PUBACK, PUBACK]
        publishes = [decode_publish(flags, body) for kind, flags, body in got if kind == PUBLISH]
        assert [(p.mid, p.qos, p.topic, p.payload) for p in publishes] == [
            (7, 1, "devices/cgm-1/obs", b'{"value": 1}'),
            (65_535, 1, "devices/cgm-2/obs", big),
            (0, 0, "devices/cgm-3/obs", b"q0"),
        ]
        assert [decode_puback(body) for kind, _, body in got if kind == PUBACK] == [(1, 0), (2, 0), (513, 0)]


def test_publish_properties_are_skipped_but_aliases_and_qos_2_refused() -> None:
    props = bytes((0x01, 1)) + struct.pack(">BI", 0x02, 60)  # payload format indicator, message expiry
    body = struct.pack(">H", 3) + b"a/b" + struct.pack(">H", 9) + _varint(len(props)) + props + b"payload"
    p = decode_publish(0x02, memoryview(body))
    assert (p.mid, p.qos, p.topic, p.payload) == (9, 1, "a/b", b"payload")
    alias = struct.pack(">H", 3) + b"a/b" + struct.pack(">H", 9) + b"\x03\x23\x00\x01" + b"payload"
    with pytest.raises(MqttProtocolError, match="topic alias"):
        decode_publish(0x02, memoryview(alias))
    with pytest.raises(MqttProtocolError, match="QoS 2"):
        decode_publish(0x04, memoryview(body))


@pytest.mark.parametrize("qos", [0, 1])
def test_a_truncated_or_garbled_publish_is_a_protocol_error(qos: int) -> None:
    """A PUBLISH cut anywhere (its remaining length said so) or with a topic that is not UTF-8 is refused with
    MqttProtocolError, which drops the connection, not the listener (before: IndexError, which ended its network
    thread)."""
    whole = encode_publish("devices/cgm-1/obs", b"{}", 7, qos=qos)
    [(_, flags, body)] = split_packets(bytearray(whole))
    header = 2 + len("devices/cgm-1/obs") + 2 * qos + 1  # topic, packet id, properties' length
    for cut in range(header):
        with pytest.raises(MqttProtocolError, match="truncated PUBLISH"):
            decode_publish(flags, body[:cut])
    props = struct.pack(">H", 3) + b"a/b" + b"\x00\x09" + b"\x05\x01\x01"  # 5 bytes of properties said, 2 there
    with pytest.raises(MqttProtocolError, match="truncated MQTT properties"):
        decode_publish(0x02, memoryview(props))
    with pytest.raises(MqttProtocolError, match="not UTF-8"):
        decode_publish(0x02, memoryview(struct.pack(">H", 2) + b"\xff\xfe" + b"\x00\x09\x00{}"))
    assert decode_publish(flags, body).payload == b"{}"


def test_connect_subscribe_and_acks_encoding() -> None:
    connect = encode_connect("listener-1", clean_start=False, keep_alive_s=30, session_expiry_s=3600,
                             receive_maximum=2000)  # fmt: skip
    (kind, flags, body), *_ = split_packets(bytearray(connect))
    assert (kind, flags) == (1, 0)
    assert bytes(body[:10]) == b"\x00\x04MQTT\x05\x00\x00\x1e"  # v5, clean start off, keep alive 30 s
    assert bytes(body[10:19]) == b"\x08\x11\x00\x00\x0e\x10\x21\x07\xd0"  # session expiry 3600, receive max 2000
    assert bytes(body[19:]) == b"\x00\x0alistener-1"
    assert encode_subscribe(1, "devices/+/obs") == b"\x82\x13\x00\x01\x00\x00\x0ddevices/+/obs\x01"
    assert encode_pubacks([1, 258]) == b"\x40\x02\x00\x01\x40\x02\x01\x02"
    connack = decode_connack(memoryview(b"\x01\x00\x03\x21\x00\x14"))
    assert (connack.session_present, connack.reason_code, connack.receive_maximum) == (True, 0, 20)
    assert decode_suback(memoryview(b"\x00\x01\x00\x80")) == (1, b"\x80")
    assert decode_puback(memoryview(b"\x00\x05\x87\x00")) == (5, 0x87)


def test_connect_with_user_name_and_password_follows_the_mqtt_5_layout() -> None:
    """MQTT 5.0 sections 3.1.2.3 (Connect Flags: bit 7 User Name, bit 6 Password, bit 1 Clean Start) and 3.1.3 (the
    payload: Client Identifier, then User Name as a UTF-8 string, then Password as Binary Data, each with a two-byte
    length)."""
    packet = encode_connect("c-1", clean_start=True, keep_alive_s=60, username="wärd-7", password=b"p\x00\xffw")
    user = "wärd-7".encode()
    body = (b"\x00\x04MQTT\x05" + bytes((0b1100_0010,)) + b"\x00\x3c" + b"\x00"  # no properties
            + b"\x00\x03c-1" + len(user).to_bytes(2, "big") + user + b"\x00\x04p\x00\xffw")  # fmt: skip
    assert packet == b"\x10" + bytes((len(body),)) + body
    (kind, flags, parsed), *_ = split_packets(bytearray(packet))
    assert (kind, flags, bytes(parsed)) == (1, 0, body)
    only_user = encode_connect("c", clean_start=False, keep_alive_s=0, username="u")
    assert only_user[9] == 0x80
    assert only_user.endswith(b"\x00\x01c\x00\x01u")
    only_password = encode_connect("c", clean_start=False, keep_alive_s=0, password=b"")  # allowed by MQTT 5
    assert only_password[9] == 0x40
    assert only_password.endswith(b"\x00\x01c\x00\x00")
    assert encode_connect("c", clean_start=False, keep_alive_s=0)[9] == 0x00
    with pytest.raises(MqttProtocolError, match="password of 65536 bytes"):
        encode_connect("c", clean_start=True, keep_alive_s=0, password=b"x" * 65_536)


@pytest.mark.parametrize(
    ("code", "said"), [(0x86, "0x86 (bad user name or password)"), (0x87, "0x87 (not authorized)")]
)
def test_refused_credentials_are_a_specific_error(code: int, said: str) -> None:
    connack = bytes((0x20, 3, 0, code, 0))
    broker = ScriptedBroker()

    def serve() -> None:
        conn = broker.accept()
        broker.packets(1)
        conn.sendall(connack)

    thread = threading.Thread(target=serve)
    thread.start()
    remote = broker_from_url(f"mqtt://ward@127.0.0.1:{broker.port}", environ={"MEDTWIN_MQTT_PASSWORD": "pw"})
    with pytest.raises(MqttAccessError) as err:
        remote.open(encode_connect("c", clean_start=True, keep_alive_s=0), 10)
    thread.join(10)
    broker.close()
    assert err.value.reason_code == code
    assert str(err.value) == (f"the MQTT broker at 127.0.0.1:{broker.port} refused this client: CONNACK reason {said}"
                              f"; user 'ward', password from $MEDTWIN_MQTT_PASSWORD")  # fmt: skip
    assert decode_connack(memoryview(connack[2:])).reason_code == code


class ScriptedBroker:
    """One connection of a broker that speaks just enough MQTT 5 for the tests: it records what it receives."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None
        self.buffer = bytearray()

    def accept(self) -> socket.socket:
        self.server.settimeout(10)
        self.conn, _ = self.server.accept()
        self.conn.settimeout(10)
        return self.conn

    def session(self, *, present: bool) -> socket.socket:
        """Accept a connection and take the listener through CONNECT (CONNACK, session *present* or not) and its
        SUBSCRIBE (SUBACK): the connection, ready for PUBLISHes."""
        conn = self.accept()
        self.buffer.clear()
        [(kind, _, _)] = self.packets(1)
        assert kind == 1  # CONNECT
        conn.sendall(b"\x20\x03" + (b"\x01" if present else b"\x00") + b"\x00\x00")
        [(kind, _, body)] = self.packets(1)
        assert kind == 8  # SUBSCRIBE
        conn.sendall(b"\x90\x04" + bytes(body[:2]) + b"\x00\x01")
        return conn

    def packets(self, count: int) -> list[tuple[int, int, memoryview]]:
        assert self.conn is not None
        got: list[tuple[int, int, memoryview]] = []
        while len(got) < count:
            got.extend(split_packets(self.buffer))
            if len(got) < count:
                data = self.conn.recv(65536)
                assert data, "the client closed the connection"
                self.buffer += data
        return got

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


def test_listener_keeps_messages_sent_with_the_connack_and_acks_after_the_commit(tmp_path: Path) -> None:
    """A resumed session's messages can share a TCP segment with the CONNACK: none may be lost, and each is
    acknowledged only once stored."""
    store = Store(f"sqlite:///{tmp_path / 'wire.db'}")
    store.write([Patient(patient_id="pt-1", gender="female")])
    register_device(store, "cgm-1", "pt-1")
    broker = ScriptedBroker()
    payload = json.dumps({"code": "99504-3", "value": 101, "unit": "mg/dL", "time": "2026-05-01T12:00:00Z"})
    later = json.dumps({"code": "99504-3", "value": 102, "unit": "mg/dL", "time": "2026-05-01T12:05:00Z"})
    acks: list[int] = []

    def serve() -> None:
        conn = broker.accept()
        [(kind, _, _)] = broker.packets(1)
        assert kind == 1  # CONNECT
        conn.sendall(b"\x20\x03\x01\x00\x00" + encode_publish("devices/cgm-1/obs", payload.encode(), 41))
        [(kind, _, body)] = broker.packets(1)
        assert kind == 8  # SUBSCRIBE
        conn.sendall(b"\x90\x04" + bytes(body[:2]) + b"\x00\x01")
        conn.sendall(encode_publish("devices/cgm-1/obs", later.encode(), 42))
        for kind, _, body in broker.packets(2):
            assert kind == PUBACK
            acks.append(decode_puback(body)[0])

    thread = threading.Thread(target=serve)
    thread.start()
    listener = MqttListener(store, f"mqtt://127.0.0.1:{broker.port}", "devices/+/obs", client_id="t")
    listener.start()
    try:
        thread.join(20)
        assert sorted(acks) == [41, 42]
        assert len(store.observations("pt-1")) == 2  # stored before each PUBACK went (the writer acks after commit)
    finally:
        listener.stop()
        broker.close()
        store.close()


def test_publish_window_waits_for_acks_and_reuses_packet_ids() -> None:
    broker = ScriptedBroker()
    seen: list[int] = []

    def serve() -> None:
        conn = broker.accept()
        broker.packets(1)  # CONNECT
        conn.sendall(b"\x20\x06\x00\x00\x03\x21\x00\x02")  # CONNACK: receive maximum 2
        while len(seen) < 5:
            for _, flags, body in broker.packets(1):
                p = decode_publish(flags, body)
                seen.append(p.mid)
                conn.sendall(encode_pubacks([p.mid]))

    thread = threading.Thread(target=serve)
    thread.start()
    conn, connack = MqttSocket.open("127.0.0.1", broker.port, encode_connect("p", clean_start=True, keep_alive_s=0), 10)
    window = PublishWindow(conn, connack.receive_maximum)
    window.publish([(1 + k % 2, encode_publish("devices/a/obs", b"{}", 1 + k % 2)) for k in range(5)])
    window.wait_all(10)
    thread.join(10)
    conn.close()
    broker.close()
    assert window.acked == 5
    assert seen == [1, 2, 1, 2, 1]  # an id is used again only after its PUBACK


def test_listener_reconnects_and_never_acks_on_the_wrong_connection(tmp_path: Path) -> None:
    """The broker drops the connection before the PUBACK: the listener reconnects to the same session, and the
    message, resent under a new id, is stored once and acknowledged under the new id only."""
    store = Store(f"sqlite:///{tmp_path / 'reconnect.db'}")
    store.write([Patient(patient_id="pt-1", gender="female")])
    register_device(store, "cgm-1", "pt-1")
    broker = ScriptedBroker()
    payload = json.dumps({"code": "99504-3", "value": 101, "unit": "mg/dL", "time": "2026-05-01T12:00:00Z"}).encode()
    second: list[tuple[int, int]] = []

    def serve() -> None:
        for connection, mid in ((1, 5), (2, 9)):
            conn = broker.accept()
            broker.buffer.clear()
            [(kind, _, body)] = broker.packets(1)
            assert kind == 1
            assert body[7] & 0x02 == 0  # clean start off: the session persists
            conn.sendall(b"\x20\x03" + (b"\x01" if connection == 2 else b"\x00") + b"\x00\x00")
            [(kind, _, body)] = broker.packets(1)
            assert kind == 8
            conn.sendall(
                b"\x90\x04" + bytes(body[:2]) + b"\x00\x01" + encode_publish("devices/cgm-1/obs", payload, mid)
            )
            if connection == 1:
                conn.close()  # before any PUBACK: the message is not acknowledged on this connection
                continue
            for kind, _, body in broker.packets(1):
                second.append((kind, decode_puback(body)[0]))

    thread = threading.Thread(target=serve)
    thread.start()
    listener = MqttListener(store, f"mqtt://127.0.0.1:{broker.port}", "devices/+/obs", client_id="t")
    listener.start()
    try:
        thread.join(30)
        assert second == [(PUBACK, 9)]
        assert len(store.observations("pt-1")) == 1  # stored once, though it arrived twice
    finally:
        stats = listener.stop()
        broker.close()
        store.close()
    assert stats.stored + stats.duplicates == 2
    assert stats.stale_acks + stats.acked == 2
    assert stats.acked >= 1


class AckingConnection:
    """A connection on which the writer keeps sending PUBACKs while the broker has nothing to send: only a PINGREQ
    gets an answer (a PINGRESP) from it."""

    def __init__(self) -> None:
        self.last_received = self.last_sent = time.monotonic()
        self.pings = 0
        self.answer = False

    def receive(self, timeout_s: float | None) -> list[tuple[int, int, memoryview]]:
        time.sleep(0.02)
        self.last_sent = time.monotonic()  # the writer's PUBACKs
        if self.answer:
            self.answer = False
            self.last_received = time.monotonic()
            return [(PINGRESP, 0, memoryview(b""))]
        return []

    def send(self, data: bytes) -> None:
        assert data == PINGREQ_PACKET
        self.pings += 1
        self.answer = True


def test_keep_alive_pings_a_quiet_broker_even_while_acknowledging(tmp_path: Path) -> None:
    """Sending PUBACKs does not tell the listener that the broker is alive: when nothing has come for half the
    keep-alive interval it pings, and a broker that answers is kept (before: dropped after 1.5 intervals)."""
    listener = MqttListener(Store(f"sqlite:///{tmp_path / 'k.db'}"), "mqtt://127.0.0.1:1", keep_alive_s=1)
    listener._keep_alive_now = 0.2
    conn = AckingConnection()
    failed: list[BaseException] = []

    def read() -> None:
        try:
            listener._read(conn)  # type: ignore[arg-type]
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    time.sleep(1.0)  # five keep-alive intervals
    listener._closing.set()
    thread.join(5)
    assert failed == []
    assert conn.pings >= 3


def test_credentials_refused_on_a_reconnect_end_the_listener_instead_of_retrying(tmp_path: Path) -> None:
    """The broker accepts the listener, drops it, and refuses its credentials on the reconnect (CONNACK 0x86): the
    listener tells *on_failure* and its network thread ends (no reconnect loop), and the CONNECTs carried the user
    name and password."""
    store = Store(f"sqlite:///{tmp_path / 'refused.db'}")
    broker = ScriptedBroker()
    connects: list[bytes] = []

    def serve() -> None:
        for connection in (1, 2):
            conn = broker.accept()
            broker.buffer.clear()
            [(kind, _, body)] = broker.packets(1)
            assert kind == 1
            connects.append(bytes(body))
            if connection == 2:
                conn.sendall(b"\x20\x03\x00\x86\x00")
                return
            conn.sendall(b"\x20\x03\x00\x00\x00")
            [(kind, _, body)] = broker.packets(1)
            conn.sendall(b"\x90\x04" + bytes(body[:2]) + b"\x00\x01")
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    failures: list[MqttAccessError] = []
    remote = broker_from_url(f"mqtt://ward@127.0.0.1:{broker.port}", environ={"MEDTWIN_MQTT_PASSWORD": "pw"})
    listener = MqttListener(store, remote, "devices/+/obs", client_id="t", on_failure=failures.append)
    listener.start()
    try:
        thread.join(20)
        network = listener._network
        assert network is not None
        network.join(10)
        assert not network.is_alive()  # gave up: no reconnect loop
        assert [f.reason_code for f in failures] == [0x86]
        assert "user 'ward', password from $MEDTWIN_MQTT_PASSWORD" in str(failures[0])
    finally:
        listener.stop()
        broker.close()
        store.close()
    assert len(connects) == 2
    assert all(c[7] & 0xC0 == 0xC0 and c.endswith(b"\x00\x04ward\x00\x02pw") for c in connects)


def test_a_refusal_at_the_start_is_a_validation_error(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'start.db'}")
    broker = ScriptedBroker()

    def serve() -> None:
        conn = broker.accept()
        broker.packets(1)
        conn.sendall(b"\x20\x03\x00\x87\x00")

    thread = threading.Thread(target=serve)
    thread.start()
    listener = MqttListener(store, f"mqtt://127.0.0.1:{broker.port}", "devices/+/obs")
    with pytest.raises(ValidationError, match=r"CONNACK reason 0x87 \(not authorized\); no user name was sent"):
        listener.start()
    thread.join(10)
    broker.close()
    store.close()


def test_a_malformed_packet_drops_the_connection_and_the_listener_reconnects(tmp_path: Path) -> None:
    """The broker sends a PUBLISH cut short inside its own length: the listener drops that connection, logs why,
    connects again and stores what the broker sends next (before: the network thread died of an IndexError and the
    listener never connected again, while `medtwin listen` went on running)."""
    store = Store(f"sqlite:///{tmp_path / 'malformed.db'}")
    store.write([Patient(patient_id="pt-1", gender="female")])
    register_device(store, "cgm-1", "pt-1")
    broker = ScriptedBroker()
    payload = json.dumps({"code": "99504-3", "value": 101, "unit": "mg/dL", "time": "2026-05-01T12:00:00Z"}).encode()
    acks: list[int] = []

    def serve() -> None:
        for connection in (1, 2):
            conn = broker.session(present=connection == 2)
            if connection == 1:
                conn.sendall(b"\x32\x04\x00\x05ab")  # QoS 1, a topic of 5 bytes in a body of 4
                assert conn.recv(65536) == b""  # the listener closes this connection
                conn.close()
                continue
            conn.sendall(encode_publish("devices/cgm-1/obs", payload, 3))
            for kind, _, body in broker.packets(1):
                assert kind == PUBACK
                acks.append(decode_puback(body)[0])

    thread = threading.Thread(target=serve)
    thread.start()
    listener = MqttListener(store, f"mqtt://127.0.0.1:{broker.port}", "devices/+/obs", client_id="t",
                            reconnect_delay_s=0.05)  # fmt: skip
    listener.start()
    try:
        thread.join(20)
        assert acks == [3]
        assert len(store.observations("pt-1")) == 1
    finally:
        listener.stop()
        broker.close()
        store.close()


class FailingConnection:
    """A connection whose read fails with an error no MQTT client expects (a bug's, say)."""

    last_received = last_sent = 0.0

    def receive(self, timeout_s: float | None) -> list[tuple[int, int, memoryview]]:
        raise ValueError("an unexpected failure")

    def close(self) -> None:
        pass


def test_an_unexpected_error_is_logged_and_the_listener_connects_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever fails on a connection, the network thread logs it (with its traceback) and connects again: it never
    ends but on a refusal of this client (MqttAccessError) or the listener's stop."""
    listener = MqttListener(Store(f"sqlite:///{tmp_path / 'u.db'}"), "mqtt://127.0.0.1:1", reconnect_delay_s=0.01)
    connects: list[float] = []

    def connect(timeout_s: float, *, wait_for_suback: bool = True) -> MqttSocket:
        connects.append(timeout_s)
        if len(connects) >= 2:
            listener._closing.set()
        return FailingConnection()  # type: ignore[return-value]

    listener._connect = connect  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="medtwin.interop.mqtt"):
        thread = threading.Thread(target=listener._network_loop, args=(FailingConnection(),))
        thread.start()
        thread.join(10)
    assert not thread.is_alive()
    assert len(connects) == 2  # it connected again after each failure
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors
    assert "lost (ValueError: an unexpected failure)" in errors[0].getMessage()
    assert errors[0].exc_info is not None
