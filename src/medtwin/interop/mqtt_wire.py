"""The part of MQTT 5 (OASIS standard, 2019) that device ingest uses: a connection that subscribes with QoS 1 and
acknowledges many messages in one write, and a QoS 1 publisher with an in-flight window.

Why not paho-mqtt here (docs/architecture.md, "Wearables over MQTT"): profiled on the living-twin bench, paho's
network thread and its per-message acknowledgement path cost about 0.1 ms of CPU per reading (one ``select`` and
three ``recv`` calls per packet, a Properties object built and cleared for every PUBLISH, a lock and a socket write
per PUBACK), a third of the listener's budget. Here one ``recv`` of up to 256 KiB is cut into all the packets it
holds, and the PUBACKs of a whole group commit leave in one ``sendall``.

What is implemented: CONNECT (clean start, keep alive, Session Expiry Interval, Receive Maximum, user name and
password), CONNACK, SUBSCRIBE/SUBACK, PUBLISH at QoS 0 and 1 both ways, PUBACK, PINGREQ/PINGRESP and DISCONNECT, on
TCP or on TLS (an :class:`ssl.SSLContext` given to :meth:`MqttSocket.open`). Not implemented, and refused with
:class:`MqttProtocolError` if the broker sends them: QoS 2 (the subscription asks for at most QoS 1, so a conforming
broker never sends it), AUTH (enhanced authentication: not asked for), and topic aliases (not asked for in CONNECT,
so never sent).

The socket does not block: a read waits in ``select`` for what comes, and a write that the broker does not take
waits there too, for at most :attr:`MqttSocket.send_timeout_s`, after which the connection is broken for both threads
(a broker that is frozen but keeps the TCP connection open stops reading: its receive window fills, and a blocking
write would wait forever, holding the lock that the other thread's reads or keep-alive need). On TLS, the socket's
reads and writes are serialized by one lock (OpenSSL does not allow one connection to be read and written by two
threads at once; the listener reads in its network thread while its writer thread sends the PUBACKs).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from medtwin.errors import MedtwinError

__all__ = [
    "Connack",
    "MqttAccessError",
    "MqttProtocolError",
    "MqttSocket",
    "Publish",
    "PublishWindow",
    "decode_connack",
    "decode_puback",
    "decode_publish",
    "decode_suback",
    "encode_connect",
    "encode_pubacks",
    "encode_publish",
    "encode_subscribe",
    "split_packets",
]

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
_PROP_SESSION_EXPIRY, _PROP_RECEIVE_MAXIMUM, _PROP_SERVER_KEEP_ALIVE = 0x11, 0x21, 0x13
_PROP_REASON_STRING = 0x1F
_RECV_BYTES = 256 * 1024
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # reason 0, normal disconnection: the session (and its queued messages) stays


class MqttProtocolError(MedtwinError):
    """The broker sent something this client does not accept (a malformed packet, QoS 2, a refused request)."""


class MqttAccessError(MqttProtocolError):
    """The broker refused this client for a reason that connecting again will not fix: its credentials (CONNACK
    0x86), its authorization (0x87; also 0x8A banned, 0x8C bad authentication method), or TLS (the broker's
    certificate failed verification, or the broker refused the client's certificate). *reason_code* is the
    CONNACK's, or None for TLS."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


# CONNACK reason codes that say the client itself is refused (MQTT 5.0 section 3.2.2.2)
_ACCESS_REFUSALS = {0x86: "bad user name or password", 0x87: "not authorized", 0x8A: "banned",
                    0x8C: "bad authentication method"}  # fmt: skip
# TLS alerts by which a broker refuses the client's certificate (OpenSSL's reason names)
_CLIENT_CERT_ALERTS = ("ALERT_CERTIFICATE_REQUIRED", "ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA",
                       "ALERT_CERTIFICATE_UNKNOWN", "ALERT_CERTIFICATE_EXPIRED", "ALERT_CERTIFICATE_REVOKED",
                       "ALERT_UNSUPPORTED_CERTIFICATE", "ALERT_ACCESS_DENIED")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Publish:
    """An inbound PUBLISH: packet id (0 at QoS 0), QoS, topic and payload."""

    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Connack:
    """The broker's answer to CONNECT: whether it kept a session, its reason code, and what it asks of the client."""

    session_present: bool
    reason_code: int
    receive_maximum: int  # QoS 1 messages the client may have unacknowledged towards the broker (65,535 if unsaid)
    server_keep_alive: int | None
    reason: str | None


def _varint(n: int) -> bytes:
    """MQTT Variable Byte Integer (at most 268,435,455)."""
    if not 0 <= n <= 268_435_455:
        raise MqttProtocolError(f"MQTT length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _read_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, position after it) of the Variable Byte Integer at *pos*; None when *data* ends inside it."""
    value = shift = 0
    for k in range(4):
        if pos + k >= len(data):
            return None
        byte = data[pos + k]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + k + 1
        shift += 7
    raise MqttProtocolError("malformed MQTT Variable Byte Integer (more than 4 bytes)")


def _string(text: str) -> bytes:
    data = text.encode()
    if len(data) > 65_535:
        raise MqttProtocolError(f"MQTT string of {len(data)} bytes (at most 65,535)")
    return struct.pack(">H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _varint(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    clean_start: bool,
    keep_alive_s: int,
    session_expiry_s: int = 0,
    receive_maximum: int = 0,
    username: str | None = None,
    password: bytes | None = None,
) -> bytes:
    """A CONNECT packet (MQTT 5, no will); *receive_maximum* 0 leaves it unsaid (65,535).

    *username* and *password* (None: absent) set the User Name and Password Flags (bits 7 and 6 of the Connect Flags,
    section 3.1.2.8-9) and follow the Client Identifier in the payload, the user name as a UTF-8 string and the
    password as Binary Data (section 3.1.3.5-6); MQTT 5 allows a password without a user name."""
    props = b""
    if session_expiry_s:
        props += struct.pack(">BI", _PROP_SESSION_EXPIRY, session_expiry_s)
    if receive_maximum:
        props += struct.pack(">BH", _PROP_RECEIVE_MAXIMUM, receive_maximum)
    flags = 0x02 if clean_start else 0x00
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        if len(password) > 65_535:
            raise MqttProtocolError(f"MQTT password of {len(password)} bytes (at most 65,535)")
        flags |= 0x40
        payload += struct.pack(">H", len(password)) + password
    body = _string("MQTT") + struct.pack(">BBH", 5, flags, keep_alive_s) + _varint(len(props)) + props
    return _packet(CONNECT << 4, body + payload)


def encode_subscribe(mid: int, topic_filter: str, qos: int = 1) -> bytes:
    """A SUBSCRIBE packet for one *topic_filter* at most *qos*."""
    return _packet((SUBSCRIBE << 4) | 0x02, struct.pack(">H", mid) + b"\x00" + _string(topic_filter) + bytes((qos,)))


def encode_publish(topic: str, payload: bytes, mid: int, qos: int = 1) -> bytes:
    """A PUBLISH packet of *payload* on *topic* (packet id *mid* at QoS 1; no properties)."""
    head = _string(topic) + (struct.pack(">H", mid) if qos else b"") + b"\x00"
    return _packet((PUBLISH << 4) | (qos << 1), head + payload)


def encode_pubacks(mids: Sequence[int]) -> bytes:
    """The PUBACKs (reason: success, which MQTT 5 lets a 2-byte PUBACK imply) of packet ids *mids*, back to back."""
    return struct.pack(f">{len(mids)}I", *(0x40020000 | mid for mid in mids))


def _properties(body: memoryview, pos: int) -> tuple[dict[int, int | str], int]:
    """The properties at *pos* of *body* that this client reads (others skipped), and the position after them."""
    got = _read_varint(body, pos)
    if got is None:
        raise MqttProtocolError("truncated MQTT properties")
    length, pos = got
    end = pos + length
    if end > len(body):
        raise MqttProtocolError(f"truncated MQTT properties ({length} bytes said, {len(body) - pos} there)")
    out: dict[int, int | str] = {}
    while pos < end:
        ident = body[pos]
        pos += 1
        if ident in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):  # one byte
            out[ident] = body[pos]
            pos += 1
        elif ident in (0x13, 0x21, 0x22, 0x23):  # two-byte integer
            out[ident] = int.from_bytes(body[pos : pos + 2], "big")
            pos += 2
        elif ident in (0x02, 0x11, 0x18, 0x27):  # four-byte integer
            out[ident] = int.from_bytes(body[pos : pos + 4], "big")
            pos += 4
        elif ident == 0x0B:  # subscription identifier (Variable Byte Integer)
            got = _read_varint(body, pos)
            if got is None:
                raise MqttProtocolError("truncated MQTT property")
            out[ident], pos = got
        elif ident in (0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F):  # string or binary data
            n = int.from_bytes(body[pos : pos + 2], "big")
            out[ident] = bytes(body[pos + 2 : pos + 2 + n]).decode(errors="replace")
            pos += 2 + n
        elif ident == 0x26:  # user property: a string pair
            n = int.from_bytes(body[pos : pos + 2], "big")
            pos += 2 + n
            n = int.from_bytes(body[pos : pos + 2], "big")
            pos += 2 + n
        else:
            raise MqttProtocolError(f"unknown MQTT property 0x{ident:02x}")
    if pos != end:
        raise MqttProtocolError("malformed MQTT properties")
    return out, end


def split_packets(buffer: bytearray) -> list[tuple[int, int, memoryview]]:
    """The whole packets at the start of *buffer* as (type, flags, body), removed from it; a partial packet stays.

    The bodies are views of a copy of the consumed bytes, so they stay valid as *buffer* changes.
    """
    spans: list[tuple[int, int, int, int]] = []
    pos = 0
    size = len(buffer)
    while pos + 2 <= size:
        first = buffer[pos]
        length = buffer[pos + 1]
        if length < 0x80:
            start = pos + 2
        else:
            got = _read_varint(buffer, pos + 1)
            if got is None:
                break
            length, start = got
        end = start + length
        if end > size:
            break
        spans.append((first >> 4, first & 0x0F, start, end))
        pos = end
    if not spans:
        return []
    data = memoryview(bytes(buffer[:pos]))
    del buffer[:pos]
    return [(kind, flags, data[start:end]) for kind, flags, start, end in spans]


def decode_publish(flags: int, body: memoryview) -> Publish:
    """The PUBLISH whose fixed-header *flags* and *body* are given (properties skipped)."""
    qos = (flags >> 1) & 0x03
    if qos > 1:
        raise MqttProtocolError(f"PUBLISH at QoS {qos}: this client subscribes with QoS 1 at most")
    size = len(body)
    n = (body[0] << 8) | body[1] if size >= 2 else 0
    pos = 2 + n
    if size < pos + 2 * qos + 1:  # the topic, the packet id at QoS 1 and the properties' length
        raise MqttProtocolError(f"truncated PUBLISH: {size} bytes, too short for its topic of {n} bytes")
    try:
        topic = bytes(body[2:pos]).decode()
    except UnicodeDecodeError:
        raise MqttProtocolError("PUBLISH topic that is not UTF-8") from None
    mid = 0
    if qos:
        mid = (body[pos] << 8) | body[pos + 1]
        pos += 2
    if body[pos] == 0:  # no properties, the common case
        pos += 1
    else:
        props, pos = _properties(body, pos)
        if 0x23 in props:
            raise MqttProtocolError("PUBLISH with a topic alias, which this client did not allow")
    return Publish(mid, qos, topic, bytes(body[pos:]))


def decode_connack(body: memoryview) -> Connack:
    """The CONNACK in *body*."""
    if len(body) < 2:
        raise MqttProtocolError("truncated CONNACK")
    props: dict[int, int | str] = {}
    if len(body) > 2:
        props, _ = _properties(body, 2)
    receive_maximum = props.get(_PROP_RECEIVE_MAXIMUM, 65_535)
    keep_alive = props.get(_PROP_SERVER_KEEP_ALIVE)
    reason = props.get(_PROP_REASON_STRING)
    return Connack(bool(body[0] & 0x01), body[1], int(receive_maximum), None if keep_alive is None else int(keep_alive),
                   None if reason is None else str(reason))  # fmt: skip


def decode_puback(body: memoryview) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK (success when the reason is omitted)."""
    if len(body) < 2:
        raise MqttProtocolError("truncated PUBACK")
    return (body[0] << 8) | body[1], body[2] if len(body) > 2 else 0


def decode_suback(body: memoryview) -> tuple[int, bytes]:
    """(packet id, one reason code per topic filter) of a SUBACK."""
    if len(body) < 3:
        raise MqttProtocolError("truncated SUBACK")
    _, pos = _properties(body, 2)
    return (body[0] << 8) | body[1], bytes(body[pos:])


class MqttSocket:
    """One MQTT connection on a non-blocking TCP socket, or a TLS one: whole packets in, bytes out (sends from several
    threads are serialized by a lock, so the writer thread's PUBACKs and the network thread's PINGREQ never
    interleave; on TLS the reads take the same lock, module docstring).

    *send_timeout_s*: how long one :meth:`send` may wait for the broker to take its bytes (None: as long as it
    takes); past it the send raises TimeoutError and the connection is broken: every later send or receive, in any
    thread, raises ConnectionError saying why (a partly written packet cannot be taken back)."""

    def __init__(self, sock: socket.socket, send_timeout_s: float | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.send_timeout_s = send_timeout_s
        self._tls = sock if isinstance(sock, ssl.SSLSocket) else None
        self._buffer = bytearray()
        self._early: list[tuple[int, int, memoryview]] = []  # packets that came with the CONNACK
        self._send_lock = threading.Lock()  # every write; on TLS, every read too
        self._broken: str | None = None  # why the connection was given up on this side
        self.last_received = time.monotonic()
        self.last_sent = time.monotonic()

    @classmethod
    def open(
        cls, host: str, port: int, connect_packet: bytes, timeout_s: float, *, tls: ssl.SSLContext | None = None
    ) -> tuple[MqttSocket, Connack]:
        """Connect to *host*:*port* (over TLS with *tls*, whose checks of the broker's certificate for the name
        *host* apply), send *connect_packet* and wait for the CONNACK.

        Raises OSError when the broker cannot be reached, :class:`MqttAccessError` when it refuses this client
        (credentials, authorization, a certificate), :class:`MqttProtocolError` for any other refusal. The CONNECT
        is written within *timeout_s*; later writes wait as long as it takes until the caller sets
        :attr:`send_timeout_s`."""
        sock = socket.create_connection((host, port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=host)  # the handshake, within timeout_s
            except ssl.SSLError as exc:
                sock.close()
                raise _tls_refusal(exc, host, port) from None
            except BaseException:
                sock.close()
                raise
        conn = cls(sock, send_timeout_s=timeout_s)
        try:
            conn.send(connect_packet)
            deadline = time.monotonic() + timeout_s
            while True:
                packets = conn.receive(max(0.0, deadline - time.monotonic()))
                if not packets and time.monotonic() >= deadline:
                    raise MqttProtocolError(f"no CONNACK from the MQTT broker at {host}:{port} in {timeout_s:g} s")
                if packets:
                    kind, _, body = packets[0]
                    if kind != CONNACK:
                        raise MqttProtocolError(f"MQTT packet type {kind} before the CONNACK")
                    conn._early = packets[1:]  # a session's queued messages can follow in the same segment
                    connack = decode_connack(body)
                    if connack.reason_code >= 0x80:
                        raise _connack_refusal(connack, host, port)
                    conn.send_timeout_s = None
                    return conn, connack
        except ssl.SSLError as exc:  # TLS 1.3: a refused client certificate is told after the handshake
            conn.close()
            if isinstance(exc, ssl.SSLEOFError):
                raise _closed_after_handshake(host, port) from None
            raise _tls_refusal(exc, host, port) from None
        except ConnectionError:
            conn.close()
            if tls is not None:
                raise _closed_after_handshake(host, port) from None
            raise
        except BaseException:
            conn.close()
            raise

    def send(self, data: bytes) -> None:
        """Write *data* whole; raises OSError when the connection is gone, TimeoutError (and the connection is
        broken) when the broker has not taken it in :attr:`send_timeout_s`."""
        with self._send_lock:
            if self._broken is not None:
                raise ConnectionError(self._broken)
            try:
                sent = self.sock.send(data)  # the common case: all of it, at once
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            if sent < len(data):
                self._send_rest(memoryview(data)[sent:])
            self.last_sent = time.monotonic()

    def _send_rest(self, view: memoryview) -> None:
        """Write *view* whole, waiting while the socket cannot take more, for :attr:`send_timeout_s` (lock held)."""
        deadline = None if self.send_timeout_s is None else time.monotonic() + self.send_timeout_s
        while view:
            try:
                view = view[self.sock.send(view) :]
                continue
            except (BlockingIOError, ssl.SSLWantWriteError):  # TLS: the same bytes offered again, as OpenSSL requires
                readable = False
            except ssl.SSLWantReadError:
                readable = True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise self._stalled()
            select.select([self.sock] if readable else [], [] if readable else [self.sock], [], left)

    def _stalled(self) -> TimeoutError:
        """Break the connection whose write the broker has not taken in :attr:`send_timeout_s` (lock held)."""
        self._broken = (f"the MQTT broker took no data for {self.send_timeout_s:g} s: it has stopped reading (frozen, "
                        f"or overloaded), though its TCP connection is open")  # fmt: skip
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a receive waiting in the other thread
        return TimeoutError(self._broken)

    def _recv_tls(self) -> bytes | None:
        """What TLS has decrypted, up to 256 KiB, without waiting: None when nothing yet (the bytes that came were
        a partial record, or a record with no data, such as a TLS 1.3 session ticket), b"" when the broker closed."""
        chunks: list[bytes] = []
        size = 0
        with self._send_lock:
            if self._broken is not None:  # shut down: what is left unread would be read as plain bytes, not TLS
                raise ConnectionError(self._broken)
            while size < _RECV_BYTES:
                try:
                    data = self.sock.recv(_RECV_BYTES - size)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not data:
                    if not chunks:
                        return b""
                    break
                chunks.append(data)
                size += len(data)
        return b"".join(chunks) if chunks else None

    def receive(self, timeout_s: float | None) -> list[tuple[int, int, memoryview]]:
        """The packets that arrive within *timeout_s* (None: wait for some); [] on a timeout; raises
        ConnectionError when the broker closed the connection."""
        if self._early:
            packets, self._early = self._early, []
            return packets
        if self._broken is not None:
            raise ConnectionError(self._broken)
        deadline = None if timeout_s is None or self._tls is None else time.monotonic() + timeout_s
        while True:
            packets = split_packets(self._buffer)
            if packets:
                return packets
            if self._tls is None:
                ready, _, _ = select.select([self.sock], [], [], timeout_s)
                if not ready:
                    return []
                try:
                    data = self.sock.recv(_RECV_BYTES)
                except BlockingIOError:  # readable, but taken by nothing (a spurious wake-up)
                    continue
            else:
                with self._send_lock:
                    pending = self._tls.pending()
                if not pending:  # decrypted bytes wait in OpenSSL, unseen by select
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    ready, _, _ = select.select([self.sock], [], [], left)
                    if not ready:
                        return []
                tls_data = self._recv_tls()
                if tls_data is None:
                    continue
                data = tls_data
            if not data:
                raise ConnectionError(self._broken or "the MQTT broker closed the connection")
            self.last_received = time.monotonic()
            self._buffer += data

    def close(self) -> None:
        """Close the socket (no DISCONNECT: send :data:`DISCONNECT_PACKET` first for a clean close)."""
        with contextlib.suppress(OSError):
            self.sock.close()


def _connack_refusal(connack: Connack, host: str, port: int) -> MqttProtocolError:
    """The error of a CONNACK with a failure *connack.reason_code*: :class:`MqttAccessError` for the codes that
    refuse the client itself."""
    code = connack.reason_code
    said = f": {connack.reason}" if connack.reason else ""
    if code in _ACCESS_REFUSALS:
        return MqttAccessError(f"the MQTT broker at {host}:{port} refused this client: CONNACK reason 0x{code:02x} "
                                 f"({_ACCESS_REFUSALS[code]}){said}", code)  # fmt: skip
    return MqttProtocolError(f"the MQTT broker at {host}:{port} refused the connection: 0x{code:02x}{said}")


def _closed_after_handshake(host: str, port: int) -> MqttProtocolError:
    """The error of a TLS connection closed by the broker before the CONNACK without a TLS alert: a broker that
    stopped or restarted does this, and so, with TLS 1.3 (where the client's side of the handshake is done before
    the broker has checked the client's certificate), may a broker that refuses the client's certificate. It cannot
    be told which, so it is not an :class:`MqttAccessError`: the listener tries again."""
    return MqttProtocolError(f"TLS: the MQTT broker at {host}:{port} closed the connection before the CONNACK, "
                             f"without a TLS alert: it stopped or restarted, or it refused this client at the TLS "
                             f"level (a broker that requires a client certificate may do so when none is given, or "
                             f"one it does not trust)")  # fmt: skip


def _tls_refusal(exc: ssl.SSLError, host: str, port: int) -> MqttProtocolError:
    """The error of a failed TLS handshake: :class:`MqttAccessError` when a certificate was refused, either
    side's (what failed, said in words)."""
    where = f"the MQTT broker at {host}:{port}"
    if isinstance(exc, ssl.SSLEOFError):  # a bare TCP close in the handshake: no certificate was refused
        return MqttProtocolError(f"TLS with {where} failed: it closed the connection during the handshake, without "
                                 f"a TLS alert (it stopped or restarted, or it is not a TLS listener)")  # fmt: skip
    if isinstance(exc, ssl.SSLCertVerificationError):
        return MqttAccessError(f"TLS: the certificate of {where} failed verification: {exc.verify_message} (it must "
                                 f"name {host!r} and be issued by a CA this client trusts)")  # fmt: skip
    reason = exc.reason or str(exc)
    if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
        return MqttAccessError(f"TLS: {where} refused this client's certificate ({reason})")
    hint = " (is it a TLS listener?)" if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE",
                                                     "UNEXPECTED_MESSAGE") else ""  # fmt: skip
    return MqttProtocolError(f"TLS with {where} failed: {reason}{hint}")


class PublishWindow:
    """QoS 1 publishing on *conn* with at most *window* messages unacknowledged, as a device does: each message
    counts as delivered only once its PUBACK (success) has come back."""

    def __init__(self, conn: MqttSocket, window: int) -> None:
        if not 1 <= window <= 65_535:
            raise MqttProtocolError(f"in-flight window {window}: 1 to 65,535")
        self.conn = conn
        self.window = window
        self.in_flight: set[int] = set()
        self.acked = 0

    def publish(self, packets: Iterable[tuple[int, bytes]]) -> None:
        """Send the QoS 1 PUBLISH *packets* (packet id, encoded packet), as many at a time as the window allows."""
        batch: list[bytes] = []
        for mid, packet in packets:
            while mid in self.in_flight or len(self.in_flight) >= self.window:
                if batch:
                    self.conn.send(b"".join(batch))
                    batch.clear()
                self._collect(None)
            self.in_flight.add(mid)
            batch.append(packet)
        if batch:
            self.conn.send(b"".join(batch))
        self._collect(0.0)

    def wait_all(self, timeout_s: float) -> None:
        """Wait until every message sent is acknowledged (raises TimeoutError after *timeout_s*)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.in_flight)} QoS 1 messages unacknowledged after {timeout_s:g} s")
            self._collect(left)

    def _collect(self, timeout_s: float | None) -> None:
        for kind, _, body in self.conn.receive(timeout_s):
            if kind == PUBACK:
                mid, reason = decode_puback(body)
                if reason >= 0x80:
                    raise MqttProtocolError(f"the broker refused message {mid}: PUBACK reason 0x{reason:02x}")
                self.in_flight.discard(mid)
                self.acked += 1
            elif kind == DISCONNECT:
                code = body[0] if len(body) else 0
                raise ConnectionError(f"the MQTT broker disconnected (reason 0x{code:02x})")
            elif kind != PINGRESP:
                raise MqttProtocolError(f"unexpected MQTT packet type {kind} on a publishing connection")
