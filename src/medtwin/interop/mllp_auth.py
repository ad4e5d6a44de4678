"""Who may send over MLLP: sending facilities authenticated by TLS client certificate or by source address.

A :class:`SenderPolicy` is checked for every message before anything of it is stored:

* **mutual TLS** (``medtwin listen --tls-cert/--tls-key --client-ca``): the connection's client certificate was
  verified against the client CA by the TLS handshake (a connection without one never gets this far); the
  message's sending facility (MSH-4.1) must be one of the names the certificate was issued to (its subject common
  name and DNS subject alternative names), so a certificate issued to one facility cannot send as another;
* **allow-list** (``medtwin listen --senders FILE``, TOML ``[senders] FACILITY = ["10.1.2.0/24", ...]``): the
  message's sending facility must be listed and the connection's source address inside one of its networks;
  ``"*"`` lists networks any facility may send from.

A message that fails is refused: NAK (``AR``, the reason in MSA-3/ERR) and the connection closed, nothing stored,
and the refusal handed to the server's ``on_refused`` callback (``medtwin listen`` records it in the audit chain as
action ``refused-sender``). The default policy of ``medtwin listen`` without either is loopback only.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtwin.errors import ValidationError

__all__ = ["LOOPBACK_ONLY", "SenderPolicy", "cert_names", "load_senders"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(values: Iterable[str], where: str) -> tuple[Network, ...]:
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ValidationError(f"{where}: {v!r} is not an address or network (e.g. 10.1.2.0/24)") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    """Sending facility -> networks it may send from (``"*"``: any facility); *tls*: require the facility to be
    named by the connection's verified client certificate."""

    allow: Mapping[str, tuple[Network, ...]] = field(default_factory=dict)
    tls: bool = False

    @classmethod
    def from_mapping(cls, senders: Mapping[str, Iterable[str]], *, tls: bool = False) -> SenderPolicy:
        return cls({str(k): _networks(v, f"senders.{k}") for k, v in senders.items()}, tls)

    def check(self, facility: str, host: str, names: frozenset[str]) -> str | None:
        """None when *facility* may send from *host* with a certificate for *names*; else why not."""
        if self.tls:
            if not names:
                return "no verified client certificate"
            if facility not in names:
                shown = ", ".join(sorted(names))
                return f"sending facility {facility!r} (MSH-4) is not named by the client certificate ({shown})"
            if not self.allow:
                return None
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return f"source address {host!r} cannot be checked"
        for key in (facility, "*"):
            if any(address in net for net in self.allow.get(key, ())):
                return None
        if facility not in self.allow and "*" not in self.allow:
            return f"sending facility {facility!r} (MSH-4) is not an allowed sender"
        return f"sending facility {facility!r} may not send from {address}"


LOOPBACK_ONLY = SenderPolicy.from_mapping({"*": ["127.0.0.0/8", "::1/128"]})
"""The default of ``medtwin listen``: any facility, from this host only."""


def load_senders(path: Path, *, tls: bool = False) -> SenderPolicy:
    """The allow-list in the TOML file *path* (``[senders]`` table: facility -> list of networks)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValidationError(f"cannot read senders file {str(path)!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"senders file {str(path)!r}: {exc}") from None
    senders = doc.get("senders")
    if not isinstance(senders, dict) or not all(isinstance(v, list) for v in senders.values()):
        raise ValidationError(f"senders file {str(path)!r}: expected a [senders] table of FACILITY = [networks]")
    return SenderPolicy.from_mapping(senders, tls=tls)


def cert_names(peercert: Any) -> frozenset[str]:
    """The names a verified peer certificate (``ssl.SSLSocket.getpeercert()`` form) was issued to: its subject
    common names and DNS subject alternative names."""
    if not isinstance(peercert, dict):
        return frozenset()
    names: set[str] = set()
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value))
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            names.add(str(value))
    return frozenset(names)
