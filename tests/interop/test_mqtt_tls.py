"""MQTT over TLS with a user name and password, end to end against a private Mosquitto: a throwaway CA and server
certificate made here, a password file made with mosquitto_passwd, anonymous clients refused. Readings arrive and
are stored; a wrong password, an untrusted CA, a missing client certificate and a plaintext client are each refused
with an error that says which. The Mosquitto tests are skipped with a notice when mosquitto or mosquitto_passwd is
missing; the host-name check runs against a TLS server in this process."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.errors import ValidationError
from medtwin.interop.devices import register_device
from medtwin.interop.mqtt import MqttListener
from medtwin.interop.mqtt_broker import PASSWORD_ENV, broker_from_url
from medtwin.interop.mqtt_wire import MqttAccessError, MqttProtocolError, encode_connect
from medtwin.records import Patient
from medtwin.store import Store

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
USER, PASSWORD = "listener", "s3cret-listener"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> x509.Certificate:
    """A certificate valid for a day, with the extensions a strict verifier wants (Python's default context); a
    server's for the host *names* (DNS names or IP addresses)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False)  # fmt: skip
        builder = builder.add_extension(usage, critical=True)
    else:
        eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if server:
        sans: list[x509.GeneralName] = []
        for host in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return str(path)


@dataclass(frozen=True)
class PrivateBroker:
    """A Mosquitto of this test module: TLS on *port* (client certificate optional) and on *mtls_port* (required),
    plain TCP refused on both (they are TLS listeners), anonymous clients refused, one user."""

    port: int
    mtls_port: int
    ca: str
    other_ca: str
    client_cert: str
    client_key: str
    password_file: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        pytest.skip("NOTICE: mosquitto or mosquitto_passwd is not installed; MQTT over TLS was not tested end to end")
    d = tmp_path_factory.mktemp("mosquitto")
    ca_key = _key()
    ca = _cert("medtwin test CA", ca_key, None, ca=True)
    other_key = _key()
    server_key, client_key = _key(), _key()
    ca_file = _write(d / "ca.pem", ca)
    other_ca = _write(d / "other-ca.pem", _cert("someone else's CA", other_key, None, ca=True))
    _write(d / "server.pem", _cert("localhost", server_key, (ca, ca_key), server=True), server_key)
    client_cert = _write(d / "client.pem", _cert(USER, client_key, (ca, ca_key)), client_key)
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(d / "passwd"), USER, PASSWORD], check=True, capture_output=True)
    (d / "listener-password").write_text(PASSWORD + "\n")
    port, mtls_port = _free_port(), _free_port()
    tls = f"cafile {ca_file}\ncertfile {d / 'server.pem'}\nkeyfile {d / 'server.key'}\n"
    (d / "mosquitto.conf").write_text(
        f"per_listener_settings false\nallow_anonymous false\npassword_file {d / 'passwd'}\npersistence false\n"
        f"user root\nlog_dest file {d / 'mosquitto.log'}\nmax_queued_messages 0\n"
        f"listener {port} 127.0.0.1\n{tls}require_certificate false\n"
        f"listener {mtls_port} 127.0.0.1\n{tls}require_certificate true\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", mtls_port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (d / "mosquitto.log").read_text() if (d / "mosquitto.log").exists() else ""
                    pytest.fail(f"the private mosquitto did not start: {log}")
                time.sleep(0.05)
        yield PrivateBroker(port, mtls_port, ca_file, other_ca, client_cert, str(d / "client.key"),
                            str(d / "listener-password"))  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)


def _store(tmp_path: Path, devices: list[str]) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'tls.db'}")
    store.write([Patient(patient_id=f"pt-{d}", gender="unknown") for d in devices])
    for d in devices:
        register_device(store, d, f"pt-{d}")
    return store


def test_readings_arrive_over_tls_with_a_password_and_are_stored(
    broker: PrivateBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener (password from a file) and `medtwin devices simulate` (password from the environment), both over
    TLS verified against the test CA: every reading the simulator had acknowledged is stored."""
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    store = _store(tmp_path, ["sim-cgm-0000"])
    remote = broker_from_url(f"mqtts://{USER}@localhost:{broker.port}", ca_file=broker.ca,
                             password_file=broker.password_file)  # fmt: skip
    assert remote.url == f"mqtts://{USER}@localhost:{broker.port}"
    listener = MqttListener(store, remote, f"{prefix}devices/+/obs", client_id=f"tls-{prefix}")
    listener.start()
    try:
        monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
        sim = CliRunner().invoke(app, ["devices", "simulate", "--mqtt", f"mqtts://{USER}@127.0.0.1:{broker.port}",
                                       "--mqtt-ca", broker.ca, "--cgm", "1", "--speed", "0", "--prefix", prefix,
                                       "--json"])  # fmt: skip
        assert sim.exit_code == 0, sim.output
        published = json.loads(sim.output)["published"]
        assert published >= 288  # a day of 5-minute CGM and its meals
        deadline = time.monotonic() + 20
        while listener.stats.stored < published and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stats = listener.stop()
    assert stats.stored == published
    assert len(store.observations("pt-sim-cgm-0000")) == published
    store.close()
    assert PASSWORD not in sim.output


def test_a_wrong_password_is_refused_with_the_reason_and_no_retry(
    broker: PrivateBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    url = f"mqtts://{USER}@localhost:{broker.port}"
    store = _store(tmp_path, [])
    listener = MqttListener(store, broker_from_url(url, ca_file=broker.ca), "devices/+/obs")
    with pytest.raises(ValidationError) as err:
        listener.start()
    message = str(err.value)
    assert "refused this client: CONNACK reason 0x87 (not authorized)" in message  # Mosquitto's answer (not 0x86)
    assert f"user {USER!r}, password from ${PASSWORD_ENV}" in message
    assert "not-the-password" not in message
    store.close()
    sim = CliRunner().invoke(app, ["devices", "simulate", "--mqtt", url, "--mqtt-ca", broker.ca, "--cgm", "1",
                                   "--speed", "0"])  # fmt: skip
    assert sim.exit_code == 2
    assert "0x87 (not authorized); user 'listener', password from $MEDTWIN_MQTT_PASSWORD" in sim.output
    assert "not-the-password" not in sim.output


def test_anonymous_clients_are_refused(broker: PrivateBroker) -> None:
    remote = broker_from_url(f"mqtts://localhost:{broker.port}", ca_file=broker.ca)
    with pytest.raises(MqttAccessError, match=r"refused this client: CONNACK reason 0x8[67]") as err:
        remote.open(encode_connect("anon", clean_start=True, keep_alive_s=0), 10)
    assert "no user name was sent" in str(err.value)


def test_an_untrusted_broker_certificate_says_what_failed(broker: PrivateBroker, tmp_path: Path) -> None:
    """Verified against another CA (as with the system's CAs: the test CA is in neither) the broker is refused
    before any credential is sent."""
    remote = broker_from_url(f"mqtts://{USER}@localhost:{broker.port}", ca_file=broker.other_ca,
                             password_file=broker.password_file)  # fmt: skip
    with pytest.raises(MqttAccessError) as err:
        remote.open(encode_connect("c", clean_start=True, keep_alive_s=0, username=USER, password=b"x"), 10)
    message = str(err.value)
    assert f"TLS: the certificate of the MQTT broker at localhost:{broker.port} failed verification" in message
    assert ("self-signed certificate in certificate chain" in message  # the broker sends its CA along
            or "unable to get local issuer certificate" in message)  # fmt: skip
    assert f"trusted: the CA(s) of --mqtt-ca {broker.other_ca}; client certificate: none" in message
    system = broker_from_url(f"mqtts://localhost:{broker.port}")
    with pytest.raises(MqttAccessError, match="failed verification"):
        system.open(encode_connect("c", clean_start=True, keep_alive_s=0), 10)
    store = _store(tmp_path, [])
    with pytest.raises(ValidationError, match="failed verification"):
        MqttListener(store, remote, "devices/+/obs").start()
    store.close()


def test_a_plaintext_client_is_refused(broker: PrivateBroker, tmp_path: Path) -> None:
    """The TLS listener drops a CONNECT that is not inside a TLS session: nothing of it reaches MQTT."""
    plain = broker_from_url(f"mqtt://127.0.0.1:{broker.port}")
    with pytest.raises(ConnectionError):
        plain.open(encode_connect("plain", clean_start=True, keep_alive_s=0), 5)
    store = _store(tmp_path, [])
    with pytest.raises(ValidationError, match=f"cannot reach the MQTT broker at 127.0.0.1:{broker.port}"):
        MqttListener(store, f"mqtt://127.0.0.1:{broker.port}", "devices/+/obs").start()
    store.close()


def test_mutual_tls_needs_the_client_certificate(broker: PrivateBroker) -> None:
    url = f"mqtts://{USER}@localhost:{broker.mtls_port}"
    connect = encode_connect("mtls", clean_start=True, keep_alive_s=0, username=USER, password=PASSWORD.encode())
    without = broker_from_url(url, ca_file=broker.ca, password_file=broker.password_file)
    with pytest.raises(MqttProtocolError, match=r"refused this client at the TLS level|refused this client's cert"):
        without.open(connect, 10)
    with_cert = broker_from_url(url, ca_file=broker.ca, cert_file=broker.client_cert, key_file=broker.client_key,
                                password_file=broker.password_file)  # fmt: skip
    conn, connack = with_cert.open(connect, 10)
    conn.close()
    assert connack.reason_code == 0


def test_medtwin_listen_exits_with_the_reason_when_refused(broker: PrivateBroker, tmp_path: Path) -> None:
    """`medtwin listen --mqtt` with a wrong password in its password file: exit status 2 and the broker's reason,
    at once (no reconnect loop), the password nowhere in the output."""
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    result = CliRunner().invoke(app, ["listen", "--mqtt", f"mqtts://{USER}@localhost:{broker.port}", "--mqtt-ca",
                                      broker.ca, "--mqtt-password-file", str(wrong), "--db",
                                      f"sqlite:///{tmp_path / 'l.db'}", "--twin-workers", "1", "--quiet"])  # fmt: skip
    assert result.exit_code == 2
    assert "CONNACK reason 0x87 (not authorized); user 'listener', password from --mqtt-password-file" in result.output
    assert "not-the-password" not in result.output


def test_a_certificate_for_another_host_name_is_refused(tmp_path: Path) -> None:
    """Hostname checking is on: a broker whose certificate (from a trusted CA) names another host is refused (a
    TLS server in this process; no Mosquitto needed)."""
    ca_key, key = _key(), _key()
    ca = _cert("medtwin test CA", ca_key, None, ca=True)
    ca_file = _write(tmp_path / "ca.pem", ca)
    elsewhere = _cert("broker", key, (ca, ca_key), server=True, names=("broker.elsewhere.example",))
    server_pem = _write(tmp_path / "server.pem", elsewhere, key)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server_pem, str(tmp_path / "server.key"))
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]

    def serve() -> None:
        conn, _ = listening.accept()
        with conn, pytest.raises(ssl.SSLError):  # the client aborts the handshake
            server_context.wrap_socket(conn, server_side=True)

    thread = threading.Thread(target=serve)
    thread.start()
    remote = broker_from_url(f"mqtts://127.0.0.1:{port}", ca_file=ca_file)
    with pytest.raises(MqttAccessError, match=r"failed verification: (IP address|Hostname) mismatch"):
        remote.open(encode_connect("c", clean_start=True, keep_alive_s=0), 10)
    thread.join(10)
    listening.close()
