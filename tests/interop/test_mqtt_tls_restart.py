"""The MQTT listener over TLS when the broker goes away without a TLS close_notify (a bare TCP close or reset: the
broker killed or restarted), also in the middle of a reconnect: it keeps retrying with backoff, says so in its log,
never gives up, and every reading the publisher had a PUBACK for is stored exactly once.

The first test scripts the broker in this process (a TLS server that drops the listener in each way, then serves
it). The others kill -9 and restart a private Mosquitto (TLS, password, persistence on; skipped with a notice when
Mosquitto is not installed): `medtwin listen` through two restarts, one of them while the broker has just taken the
listener's TCP connection (stopped, then killed); and (slow) a stream of 5,000 QoS 1 readings through four, one of
them with a stand-in server on the broker's port that closes the connections bare during and after the TLS
handshake."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from tests.interop.test_mqtt_tls import MOSQUITTO, MOSQUITTO_PASSWD, PASSWORD, USER, _cert, _free_port, _key, _write

from medtwin.interop.devices import register_device
from medtwin.interop.mqtt import MqttListener
from medtwin.interop.mqtt_broker import MqttBroker, broker_from_url
from medtwin.interop.mqtt_wire import (
    CONNECT,
    PUBACK,
    SUBSCRIBE,
    MqttAccessError,
    MqttProtocolError,
    PublishWindow,
    decode_puback,
    encode_connect,
    encode_publish,
    split_packets,
)
from medtwin.records import Patient
from medtwin.store import Store

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _reading(i: int) -> bytes:
    """Reading *i* of device cgm-1: its own time, so that each is one stored Observation."""
    return json.dumps({"code": "99504-3", "value": 70 + i % 200, "unit": "mg/dL",
                       "time": (T0 + timedelta(minutes=i)).isoformat()}).encode()  # fmt: skip


@dataclass(frozen=True)
class Pki:
    """A throwaway CA and a server certificate for localhost (files), and a context that serves it."""

    ca: str
    server_cert: str
    server_key: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca_key, server_key = _key(), _key()
    ca = _cert("medtwin test CA", ca_key, None, ca=True)
    ca_file = _write(tmp_path / "ca.pem", ca)
    server = _write(tmp_path / "server.pem", _cert("localhost", server_key, (ca, ca_key), server=True), server_key)
    return Pki(ca_file, server, str(tmp_path / "server.key"))


def _store(path: Path) -> Store:
    store = Store(f"sqlite:///{path}")
    store.write([Patient(patient_id="pt-1", gender="female")])
    register_device(store, "cgm-1", "pt-1")
    return store


class LogRecords(logging.Handler):
    """The records of the listener's logger (its network thread logs the losses and the reconnects)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def listener_log() -> Iterator[LogRecords]:
    handler = LogRecords()
    logger = logging.getLogger("medtwin.interop.mqtt")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- the broker's ways of going away during a (re)connect, in this process ------------------------------------------
def _bare_close(conn: socket.socket, pki: Pki) -> None:
    """TCP accepted, closed before any TLS (the broker killed as it accepted)."""
    conn.close()


def _reset(conn: socket.socket, pki: Pki) -> None:
    """TCP accepted, then reset (RST: a process killed with the client's bytes unread)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def _half_handshake(conn: socket.socket, pki: Pki) -> None:
    """The ClientHello read, the server's first flight sent, then a bare close: the handshake cut in the middle."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = pki.server_context().wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(conn.recv(65536))
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    conn.sendall(outgoing.read())
    conn.close()


def _not_tls(conn: socket.socket, pki: Pki) -> None:
    """A TLS-less server on the port (plain MQTT: a CONNACK), then a bare close."""
    conn.recv(65536)
    conn.sendall(b"\x20\x03\x00\x00\x00")
    conn.close()


def _close_after_handshake(conn: socket.socket, pki: Pki) -> None:
    """The handshake done and the CONNECT read, then a bare TCP close, no close_notify and no CONNACK (the broker
    killed between accepting the client and answering it)."""
    tls = pki.server_context().wrap_socket(conn, server_side=True)
    data = bytearray()
    while not split_packets(data):
        data += tls.recv(65536)
    tls.close()  # Python sends no close_notify on close(): a bare TCP close


DROPS: tuple[Callable[[socket.socket, Pki], None], ...] = (
    _bare_close,
    _reset,
    _half_handshake,
    _not_tls,
    _close_after_handshake,
)


def _serve_mqtt(conn: socket.socket, pki: Pki, payload: bytes, acks: list[int], served: threading.Event) -> None:
    """A broker that resumes the session: CONNACK (session present), SUBACK, one PUBLISH, and its PUBACK read; then
    it keeps the connection until the listener closes it."""
    tls = pki.server_context().wrap_socket(conn, server_side=True)
    tls.settimeout(10)
    buffer = bytearray()

    def packets() -> list[tuple[int, int, memoryview]]:
        while True:
            got = split_packets(buffer)
            if got:
                return got
            data = tls.recv(65536)
            assert data, "the listener closed the connection"
            buffer.extend(data)

    [(kind, _, _)] = packets()
    assert kind == CONNECT
    tls.sendall(b"\x20\x03\x01\x00\x00")
    [(kind, _, body)] = packets()
    assert kind == SUBSCRIBE
    tls.sendall(b"\x90\x04" + bytes(body[:2]) + b"\x00\x01" + encode_publish("devices/cgm-1/obs", payload, 7))
    for kind, _, body in packets():
        assert kind == PUBACK
        acks.append(decode_puback(body)[0])
    served.set()
    tls.settimeout(30)
    try:
        while tls.recv(65536):
            pass
    except OSError:
        pass
    tls.close()


def test_tls_connections_closed_bare_in_every_phase_are_retried_with_backoff(
    pki: Pki, tmp_path: Path, listener_log: LogRecords
) -> None:
    """The listener is connected over TLS; the broker drops it, then drops each reconnect in another way (a bare
    close or a reset before TLS, a handshake cut in the middle, a TLS-less server, a bare close after the handshake
    before the CONNACK): the listener tries again after each, waiting twice as long each time, says what happened
    in a warning each time, never takes it for a refusal of this client, and the reading sent once the broker
    serves it again is stored and acknowledged."""
    store = _store(tmp_path / "drops.db")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(20)
    port = server.getsockname()[1]
    acks: list[int] = []
    errors: list[BaseException] = []
    served = threading.Event()

    def serve() -> None:
        try:
            conn, _ = server.accept()  # the first connection: serve it, then drop it bare
            tls = pki.server_context().wrap_socket(conn, server_side=True)
            buffer = bytearray()
            while not split_packets(buffer):
                buffer += tls.recv(65536)
            tls.sendall(b"\x20\x03\x00\x00\x00")
            while not split_packets(buffer):
                buffer += tls.recv(65536)
            tls.sendall(b"\x90\x04\x00\x01\x00\x01")
            time.sleep(0.2)
            tls.close()
            for drop in DROPS:
                conn, _ = server.accept()
                drop(conn, pki)
            conn, _ = server.accept()
            _serve_mqtt(conn, pki, _reading(0), acks, served)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    failures: list[MqttAccessError] = []
    remote = broker_from_url(f"mqtts://localhost:{port}", ca_file=pki.ca)
    listener = MqttListener(store, remote, "devices/+/obs", client_id="t", on_failure=failures.append,
                            reconnect_delay_s=0.05)  # fmt: skip
    listener.start()
    try:
        served.wait(30)
        assert errors == []
        assert acks == [7]
        assert failures == []
        assert listener._network is not None
        assert listener._network.is_alive()
    finally:
        stats = listener.stop()
        thread.join(10)
        server.close()
    assert len(store.observations("pt-1")) == 1
    assert stats.stored == 1
    store.close()
    warnings = listener_log.messages(logging.WARNING)
    assert listener_log.messages(logging.ERROR) == []
    retries = [w for w in warnings if "next try in" in w]
    assert len(retries) == 1 + len(DROPS), warnings
    assert retries[0].startswith(f"MQTT connection to localhost:{port} lost (")
    for k, w in enumerate(retries[1:], start=1):
        assert w.startswith(f"MQTT listener: reconnecting to localhost:{port} failed (try {k}: "), w
    delays = [float(w.rsplit("next try in ", 1)[1].removesuffix(" s")) for w in retries]
    assert delays == [0.05 * 2**k for k in range(len(retries))]  # the backoff doubles with each failed try
    assert "is it a TLS listener?" in retries[1 + DROPS.index(_not_tls)]
    after_handshake = retries[1 + DROPS.index(_close_after_handshake)]
    assert "closed the connection before the CONNACK, without a TLS alert: it stopped or restarted" in after_handshake
    refusals = [w for w in retries if "refused this client" in w]
    assert all("stopped or restarted" in w for w in refusals), refusals  # a bare close is not told as a refusal only
    [reconnected] = [w for w in warnings if "reconnected" in w]
    assert reconnected.startswith(f"MQTT listener reconnected to localhost:{port} after ")
    assert reconnected.endswith(f"({len(DROPS)} failed tries)")


# -- a private Mosquitto killed -9 and restarted under a stream of readings ----------------------------------------
class RestartableMosquitto:
    """A Mosquitto on one TLS port (password, anonymous refused) whose session store survives a kill -9: persistence
    on, saved after every change."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        assert MOSQUITTO is not None
        assert MOSQUITTO_PASSWD is not None
        self.dir = directory
        self.port = _free_port()
        (directory / "db").mkdir(parents=True)
        passwd = directory / "passwd"
        subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwd), USER, PASSWORD], check=True, capture_output=True)
        (directory / "mosquitto.conf").write_text(
            f"per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\n"
            f"persistence true\npersistence_location {directory / 'db'}/\nautosave_interval 1\n"
            f"autosave_on_changes true\nuser root\nlog_dest file {directory / 'mosquitto.log'}\n"
            f"log_type all\nmax_queued_messages 0\nmax_inflight_messages 0\n"
            f"listener {self.port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server_cert}\n"
            f"keyfile {pki.server_key}\nrequire_certificate false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "mosquitto.log").read_text(errors="replace")
                    pytest.fail(f"the private mosquitto did not start: {log[-2000:]}")
                time.sleep(0.02)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9: no DISCONNECT, no TLS close_notify; the kernel closes (or resets) its connections."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        self.kills += 1


class StreamPublisher:
    """A device publishing readings 0..n-1 at QoS 1 over TLS, a few in flight; each counts as delivered once its
    PUBACK is back, and what was in flight on a lost connection is sent again on the next (as devices do)."""

    def __init__(self, remote: MqttBroker, topic: str, n: int) -> None:
        self.remote, self.topic, self.n = remote, topic, n
        self.acked: set[int] = set()
        self.paused = threading.Event()
        self.idle = threading.Event()  # set while paused and disconnected
        self.stop = threading.Event()
        self.failures = 0
        self.refused: MqttAccessError | None = None
        self.thread = threading.Thread(target=self._run, name="test-publisher", daemon=True)

    def _run(self) -> None:
        todo: deque[int] = deque(range(self.n))
        mid = 0
        while not self.stop.is_set() and (todo or len(self.acked) < self.n):
            if self.paused.is_set():
                self.idle.set()
                time.sleep(0.02)
                continue
            self.idle.clear()
            try:
                conn, _ = self.remote.open(encode_connect(f"pub-{uuid.uuid4().hex[:8]}", clean_start=True,
                                                          keep_alive_s=0, username=self.remote.username,
                                                          password=self.remote.password), 5)  # fmt: skip
            except MqttAccessError as exc:
                self.refused = exc
                return
            except (OSError, MqttProtocolError):
                self.failures += 1
                time.sleep(0.05)
                continue
            in_flight: dict[int, int] = {}
            try:
                while not self.stop.is_set() and not self.paused.is_set() and (todo or in_flight):
                    while todo and len(in_flight) < 10:
                        i = todo.popleft()
                        mid = mid % 65_535 + 1
                        in_flight[mid] = i
                        conn.send(encode_publish(self.topic.replace("+", "cgm-1"), _reading(i), mid))
                        time.sleep(0.002)  # about 400 readings a second: kills land mid-stream
                    for kind, _, body in conn.receive(0.05):
                        if kind == PUBACK:
                            got, reason = decode_puback(body)
                            assert reason < 0x80, f"PUBACK reason 0x{reason:02x}"
                            self.acked.add(in_flight.pop(got))
            except (OSError, MqttProtocolError):
                self.failures += 1
            finally:
                todo.extendleft(sorted(in_flight.values(), reverse=True))  # not acknowledged: sent again
                conn.close()


def _connected_to(port: int) -> bool:
    """Whether a TCP connection to *port* on this machine is established (the broker's port is private)."""
    return any(c.raddr and c.raddr[1] == port and c.status == psutil.CONN_ESTABLISHED
               for c in psutil.net_connections("tcp"))  # fmt: skip


def _stand_in(port: int, pki: Pki) -> None:
    """On the broker's port while it is down: a server that drops each connection in one of :data:`DROPS`' ways."""
    with socket.create_server(("127.0.0.1", port)) as server:
        server.settimeout(20)
        for drop in DROPS:
            conn, _ = server.accept()
            drop(conn, pki)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, publisher: StreamPublisher) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert publisher.refused is None, f"the broker refused the publisher: {publisher.refused}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow
def test_mosquitto_killed_and_restarted_mid_stream_loses_and_doubles_nothing(
    pki: Pki, tmp_path: Path, listener_log: LogRecords
) -> None:
    """kill -9 and restart of a TLS Mosquitto (persistent session) four times under a stream of QoS 1 readings:
    once plainly, once while the listener's reconnect has just been accepted (the broker stopped with the
    connection in its backlog, then killed), once with a stand-in server on the port that closes the connections
    bare in each way, and once right away. The listener never gives up, and every reading the publisher had a
    PUBACK for (all of them in the end) is stored exactly once."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip("NOTICE: mosquitto or mosquitto_passwd is not installed; the broker restarts were not tested")
    broker = RestartableMosquitto(tmp_path / "mosquitto", pki)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    url = f"mqtts://{USER}@localhost:{broker.port}"
    remote = broker_from_url(url, ca_file=pki.ca, password_file=str(tmp_path / "pw"))
    store = _store(tmp_path / "restarts.db")
    n = 5000
    topic = "devices/+/obs"
    broker.start()
    failures: list[MqttAccessError] = []
    listener = MqttListener(store, remote, topic, client_id=f"restart-{uuid.uuid4().hex[:8]}",
                            on_failure=failures.append, reconnect_delay_s=0.1)  # fmt: skip
    listener.start()
    publisher = StreamPublisher(remote, topic, n)
    publisher.thread.start()
    stored_at_kill: list[int] = []
    acked_at_kill: list[int] = []

    def stored() -> int:
        return len(store.observations("pt-1"))

    def streaming(acked: int) -> None:
        """Wait until the publisher has *acked* PUBACKs and the listener, connected, has stored 100 readings more
        since the last kill: the next kill lands mid-stream for both."""
        since = stored_at_kill[-1] if stored_at_kill else 0
        _wait(lambda: len(publisher.acked) >= acked and listener._connected.is_set() and stored() >= since + 100, 60,
              f"{acked} readings acknowledged and the listener storing", publisher)  # fmt: skip
        stored_at_kill.append(stored())
        acked_at_kill.append(len(publisher.acked))

    try:
        streaming(400)
        broker.kill()  # 1: plainly
        time.sleep(0.3)
        broker.start()

        streaming(1000)
        publisher.paused.set()  # 2: only the listener reconnects; the broker takes its TCP connection and dies
        broker.kill()
        publisher.idle.wait(10)
        broker.start()
        broker.signal(signal.SIGSTOP)
        _wait(lambda: _connected_to(broker.port), 20, "the listener's reconnect to the stopped broker", publisher)
        time.sleep(0.2)  # its ClientHello is in the stopped broker's receive buffer
        broker.kill()
        broker.start()
        publisher.paused.clear()

        streaming(1600)
        publisher.paused.set()  # 3: a stand-in on the port drops the listener's reconnects bare, in each way
        broker.kill()
        publisher.idle.wait(10)
        _stand_in(broker.port, pki)
        broker.start()
        publisher.paused.clear()

        streaming(3500)
        broker.kill()  # 4: restarted at once
        broker.start()

        publisher.thread.join(120)
        assert not publisher.thread.is_alive()
        _wait(lambda: stored() >= n, 60, f"{n} readings stored", publisher)
        time.sleep(1.0)  # a reading resent once more would be stored by now
        assert failures == []
        assert listener._network is not None
        assert listener._network.is_alive()
    finally:
        publisher.stop.set()
        listener.stop()
        if broker.proc is not None:
            broker.proc.terminate()
            broker.proc.wait(10)
    assert all(s < n for s in stored_at_kill + acked_at_kill), (stored_at_kill, acked_at_kill)  # mid-stream
    assert publisher.acked == set(range(n))
    times = [o.effective for o in store.observations("pt-1")]
    store.close()
    assert len(times) == n  # every acknowledged reading stored
    assert len(set(times)) == n  # and once
    assert listener_log.messages(logging.ERROR) == []
    warnings = listener_log.messages(logging.WARNING)
    assert len([w for w in warnings if " lost (" in w]) == 4, warnings  # the four kills of a connected listener
    assert len([w for w in warnings if "reconnected" in w]) == 4, warnings
    assert len([w for w in warnings if "reconnecting to" in w]) >= 1 + len(DROPS)  # the kill of the stopped broker
    refusals = [w for w in warnings if "refused this client" in w]
    assert all("stopped or restarted" in w for w in refusals), refusals


def test_medtwin_listen_rides_out_broker_restarts_and_says_so(pki: Pki, tmp_path: Path) -> None:
    """`medtwin listen --mqtt mqtts://...` while its TLS Mosquitto is killed -9 and restarted twice (the second
    time stopped while taking the listener's reconnect, then killed): the process keeps running, its stderr tells
    each loss, failed try and reconnect, it stores every reading once and exits 0 on SIGTERM."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip("NOTICE: mosquitto or mosquitto_passwd is not installed; the broker restarts were not tested")
    broker = RestartableMosquitto(tmp_path / "mosquitto", pki)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    url = f"mqtts://{USER}@localhost:{broker.port}"
    remote = broker_from_url(url, ca_file=pki.ca, password_file=str(tmp_path / "pw"))
    db = f"sqlite:///{tmp_path / 'listen.db'}"
    _store(tmp_path / "listen.db").close()
    broker.start()
    listen = subprocess.Popen(
        [sys.executable, "-c", "from medtwin.cli import main; main()", "listen", "--mqtt", url, "--mqtt-ca", pki.ca,
         "--mqtt-password-file", str(tmp_path / "pw"), "--db", db, "--quiet", "--twin-workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    store = Store(db)

    def publish(first: int) -> None:
        conn, _ = remote.open(encode_connect(f"pub-{first}", clean_start=True, keep_alive_s=0, username=USER,
                                             password=PASSWORD.encode()), 10)  # fmt: skip
        window = PublishWindow(conn, 10)
        window.publish([(1 + k, encode_publish("devices/cgm-1/obs", _reading(first + k), 1 + k)) for k in range(100)])
        window.wait_all(10)
        conn.close()

    def stored(count: int) -> None:
        deadline = time.monotonic() + 60
        while len(store.observations("pt-1")) < count:
            assert listen.poll() is None, f"medtwin listen ended: {listen.communicate()}"
            assert time.monotonic() < deadline, f"{count} readings not stored in 60 s"
            time.sleep(0.05)

    try:
        _wait_for_session(broker)
        publish(0)
        stored(100)
        broker.kill()
        time.sleep(2.5)  # the listener's first try (after 1 s) finds the port closed, its second (3 s) the broker
        broker.start()
        publish(100)
        stored(200)
        broker.kill()
        broker.start()
        broker.signal(signal.SIGSTOP)  # the listener's reconnect is taken by the kernel; the broker dies under it
        deadline = time.monotonic() + 20
        while not _connected_to(broker.port):
            assert time.monotonic() < deadline, "the listener did not try to reconnect"
            time.sleep(0.01)
        time.sleep(0.2)
        broker.kill()
        broker.start()
        publish(200)
        stored(300)
        time.sleep(0.5)
        listen.send_signal(signal.SIGTERM)
        out, err = listen.communicate(timeout=60)
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.communicate()
        if broker.proc is not None:
            broker.proc.terminate()
            broker.proc.wait(10)
    times = [o.effective for o in store.observations("pt-1")]
    store.close()
    assert listen.returncode == 0, err
    assert len(times) == len(set(times)) == 300
    assert json.loads(out.rsplit("stopped: ", 1)[1])["stored"] == 300
    logged = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (?:WARNING|ERROR) medtwin\.interop\.mqtt: (MQTT .*)$")
    lines = [m.group(1) for m in map(logged.match, err.splitlines()) if m]  # time, level, logger: message
    assert len([line for line in lines if f"connection to localhost:{broker.port} lost (" in line]) == 2, err
    assert len([line for line in lines if "reconnected" in line]) == 2, err
    assert len([line for line in lines if "failed (try 1: " in line]) == 2, err
    assert "not reconnecting" not in err


def _wait_for_session(broker: RestartableMosquitto) -> None:
    """Until the listener's session is on *broker* (its log says the listener subscribed)."""
    deadline = time.monotonic() + 60
    while "Received SUBSCRIBE from medtwin-listener" not in (broker.dir / "mosquitto.log").read_text(errors="replace"):
        assert time.monotonic() < deadline, "medtwin listen did not subscribe in 60 s"
        time.sleep(0.05)
