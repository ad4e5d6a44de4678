"""Where the MQTT broker is and how this client proves itself to it: the URL, TLS and the credentials.

``mqtt://[USER@]HOST[:PORT]`` is plain TCP (port 1883); ``mqtts://[USER@]HOST[:PORT]`` is TLS (port 8883) with the
broker's certificate verified against the system's CAs, or against ``ca_file`` alone when one is given, for the
URL's host name (hostname checking on), TLS 1.2 at least; ``cert_file`` (and ``key_file``, unless the key is in the
same PEM) adds a client certificate for mutual TLS.

The password is never part of the URL, so it is never on a command line (where ``ps`` and shell history show it)
nor in a log: it comes from ``password_file`` (its first line) or else from the environment variable
:data:`PASSWORD_ENV`, and only when the URL names a user. A password is sent over TLS, or over plain TCP to this
machine's loopback only; to any other host over ``mqtt://`` it is refused. :attr:`MqttBroker.url` is the URL to
print: it never holds a password (a URL that holds one is refused, and the error does not repeat it).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from medtwin.errors import ValidationError
from medtwin.interop.mqtt_wire import Connack, MqttAccessError, MqttSocket

__all__ = ["PASSWORD_ENV", "MqttBroker", "broker_from_url", "parse_mqtt_url"]

PASSWORD_ENV = "MEDTWIN_MQTT_PASSWORD"
_DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883}
_EXAMPLE = "mqtt://HOST[:PORT] or mqtts://[USER@]HOST[:PORT], e.g. mqtts://listener@broker.example.org"


@dataclass(frozen=True, slots=True)
class MqttBroker:
    """An MQTT broker to connect to (module docstring): address, TLS context (None: plain TCP) and credentials.

    *password_source* says where the password came from, *ca_file* and *cert_file* which files TLS uses (for error
    messages; never the password itself)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    username: str | None = None
    password: bytes | None = field(default=None, repr=False)
    password_source: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None

    @property
    def url(self) -> str:
        """The URL to show: scheme, user name (no password, ever), host and port."""
        user = f"{self.username}@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls is not None else 'mqtt'}://{user}{host}:{self.port}"

    def open(self, connect_packet: bytes, timeout_s: float) -> tuple[MqttSocket, Connack]:
        """Connect, send *connect_packet* (built with :attr:`username` and :attr:`password`) and wait for the
        CONNACK (:meth:`MqttSocket.open`); a refusal of the credentials says which user and where the password came
        from, a refused certificate which CA was trusted."""
        try:
            return MqttSocket.open(self.host, self.port, connect_packet, timeout_s, tls=self.tls)
        except MqttAccessError as exc:
            raise MqttAccessError(f"{exc}; {self._credentials_said(exc.reason_code)}", exc.reason_code) from None

    def _credentials_said(self, reason_code: int | None) -> str:
        if reason_code is None:  # TLS
            trusted = f"the CA(s) of --mqtt-ca {self.ca_file}" if self.ca_file else "the system's CAs (no --mqtt-ca)"
            return f"trusted: {trusted}; client certificate: {self.cert_file or 'none (no --mqtt-cert)'}"
        if self.username is None:
            return "no user name was sent (name one in the URL: mqtts://USER@HOST)"
        source = self.password_source or f"none: set ${PASSWORD_ENV} or give --mqtt-password-file"
        return f"user {self.username!r}, password from {source}"


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """(host, port) of ``mqtt://`` or ``mqtts://[USER@]HOST[:PORT]`` (port 1883, or 8883 for mqtts)."""
    broker = broker_from_url(url, environ={})
    return broker.host, broker.port


def broker_from_url(
    url: str,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    password_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> MqttBroker:
    """The broker of *url* with its TLS context and credentials (module docstring); *environ* (default
    ``os.environ``) is where :data:`PASSWORD_ENV` is looked up. Raises ValidationError saying what is wrong (a bad
    URL, a password in it, an unreadable file, TLS options on a plain URL, a password sent in the clear)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if scheme not in _DEFAULT_PORTS or not parts.hostname or port == -1:
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never repeat what precedes '@'
        raise ValidationError(f"MQTT URL {shown!r}: expected {_EXAMPLE}")
    if parts.password is not None:
        raise ValidationError(f"MQTT URL for {parts.hostname}: a password does not belong in the URL (a command line "
                              f"is visible to every user of the machine): give it in ${PASSWORD_ENV} or a file "
                              f"(--mqtt-password-file)")  # fmt: skip
    tls = scheme == "mqtts"
    host = parts.hostname
    if not tls and (ca_file or cert_file or key_file):
        raise ValidationError(f"--mqtt-ca, --mqtt-cert and --mqtt-key need TLS: use mqtts://{host} (not {scheme}://)")
    context = _tls_context(ca_file, cert_file, key_file) if tls else None
    username = unquote(parts.username) if parts.username is not None else None
    password, source = None, None
    if username is not None:
        password, source = _password(password_file, os.environ if environ is None else environ)
    elif password_file is not None:
        raise ValidationError(f"--mqtt-password-file without a user: name one in the URL (mqtts://USER@{host})")
    if password is not None and not tls and not _loopback(host):
        raise ValidationError(f"MQTT URL for {host}: a password would cross the network in the clear over "
                              f"{scheme}://; use mqtts:// (plain TCP carries one to this machine only)")  # fmt: skip
    return MqttBroker(host, port or _DEFAULT_PORTS[scheme], context, username, password, source, ca_file, cert_file)


def _password(password_file: str | None, environ: Mapping[str, str]) -> tuple[bytes | None, str | None]:
    """The password and where it came from: the first line of *password_file*, else :data:`PASSWORD_ENV`."""
    if password_file is not None:
        try:
            text = Path(password_file).read_bytes()
        except OSError as exc:
            raise ValidationError(f"--mqtt-password-file {password_file}: cannot read it ({exc.strerror})") from None
        line = text.splitlines()[0] if text else b""
        if not line:
            raise ValidationError(f"--mqtt-password-file {password_file}: the file is empty")
        return line, f"--mqtt-password-file {password_file}"
    if environ.get(PASSWORD_ENV):
        return environ[PASSWORD_ENV].encode(), f"${PASSWORD_ENV}"
    return None, None


def _tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """A client context: the broker's certificate verified (against *ca_file* alone, else the system's CAs) for its
    host name, TLS 1.2 at least, and the client certificate *cert_file* with *key_file* when given."""
    if key_file is not None and cert_file is None:
        raise ValidationError("--mqtt-key without --mqtt-cert: the key belongs to a client certificate")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValidationError(f"--mqtt-ca {ca_file}: not a readable PEM file of CA certificates ({exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
        except (OSError, ssl.SSLError) as exc:
            raise ValidationError(f"--mqtt-cert {cert_file} / --mqtt-key {key_file or '(in the same file)'}: cannot "
                                  f"load the client certificate and its key ({exc})") from None  # fmt: skip
    return context


def _no_passphrase() -> bytes:
    """Asked for when the client key is encrypted: refused here rather than prompted for on the terminal."""
    raise ValidationError("--mqtt-key: the client key is encrypted with a passphrase; give an unencrypted key (kept "
                          "readable by this service's user only)")  # fmt: skip


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
