"""MLLP senders authenticated: mutual TLS with `medtwin certs dev` certificates (a round trip), the facility named
by the certificate, an allow-list by source address; an unknown sender gets AR, is not stored, and is audited."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

from medtwin.interop.mllp import MllpClient, MllpConfig, MllpServer
from medtwin.interop.mllp_auth import LOOPBACK_ONLY, SenderPolicy, load_senders
from medtwin.interop.mllp_pool import server_ssl_context
from medtwin.security.audit import AuditTrail, SenderRefusals
from medtwin.security.certs import make_dev_certificates
from medtwin.store import Store

ORU = (Path(__file__).parent.parent / "fixtures" / "hl7v2" / "authored_ORU_R01_vitals_loinc_v251.hl7").read_bytes()


def message(facility: str, control: str) -> bytes:
    head, _, rest = ORU.partition(b"\r")
    fields = head.split(b"|")
    fields[3] = facility.encode()
    fields[9] = control.encode()
    return b"|".join(fields) + b"\r" + rest


def msa(ack: str) -> str:
    return next(s for s in ack.split("\r") if s.startswith("MSA|")).split("|")[1]


def run(store: Store, config: MllpConfig, body, refused: list[tuple[str, str, str]]):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        server = MllpServer(store, config, on_refused=lambda *a: refused.append(a))
        port = await server.start()
        try:
            return await asyncio.wait_for(body(port), 60)
        finally:
            await server.close()

    return asyncio.run(main())


@pytest.fixture
def certs(tmp_path: Path):  # type: ignore[no-untyped-def]
    return make_dev_certificates(tmp_path / "certs", clients=["ICU-MONITORS", "LAB"])


def _client_ctx(certs, name: str | None) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    if name is not None:
        cert, key = certs.clients[name]
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def _send_without_certificate(port: int) -> None:
    bare = await MllpClient.connect("localhost", port, ssl_context=_client_ctx(_CERTS[0], None), timeout_s=5)
    await bare.send(message("ICU-MONITORS", "NOCERT-1"))  # no client certificate: the handshake fails


_CERTS: list[Any] = []


def test_mutual_tls_round_trip_and_facility_check(tmp_path: Path, certs) -> None:  # type: ignore[no-untyped-def]
    store = Store(f"sqlite:///{tmp_path / 'tls.db'}")
    _CERTS[:] = [certs]
    config = MllpConfig(
        port=0,
        ssl_context=server_ssl_context(str(certs.server_cert), str(certs.server_key), str(certs.ca_cert)),
        senders=SenderPolicy(tls=True),
    )
    refused: list[tuple[str, str, str]] = []

    async def body(port: int) -> list[str]:
        acks = []
        client = await MllpClient.connect("localhost", port, ssl_context=_client_ctx(certs, "ICU-MONITORS"))
        acks.append(await client.send(message("ICU-MONITORS", "OK-1")))
        acks.append(await client.send(message("LAB", "SPOOF-1")))  # a certificate for one facility sends as another
        await client.close()
        with pytest.raises((ssl.SSLError, ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError)):
            await _send_without_certificate(port)
        return acks

    ok, spoof = run(store, config, body, refused)
    assert msa(ok) in ("AA", "CA")
    assert msa(spoof) in ("AR", "CR")
    assert "not named by the client certificate" in spoof
    assert store.raw_seen("ICU-MONITORS", "OK-1") is not None or any(e.source_id == "OK-1" for e in store.raw_log())
    assert not any(e.source_id.startswith(("SPOOF", "NOCERT")) for e in store.raw_log(status=None, limit=1000))
    assert [r[0] for r in refused] == ["LAB"]
    store.close()


def test_allow_list_by_source_address(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'allow.db'}")
    refused: list[tuple[str, str, str]] = []

    async def body(port: int) -> tuple[str, str]:
        client = await MllpClient.connect("127.0.0.1", port)
        good = await client.send(message("WARD-A", "A-1"))
        await client.close()
        client = await MllpClient.connect("127.0.0.1", port)
        bad = await client.send(message("WARD-B", "B-1"))
        await client.close()
        return good, bad

    policy = SenderPolicy.from_mapping({"WARD-A": ["127.0.0.1/32"], "WARD-B": ["10.0.0.0/8"]})
    good, bad = run(store, MllpConfig(port=0, senders=policy), body, refused)
    assert msa(good) in ("AA", "CA")
    assert msa(bad) in ("AR", "CR")
    assert refused
    assert refused[0][0] == "WARD-B"
    assert "may not send from 127.0.0.1" in refused[0][2]
    assert not any(e.source_id == "B-1" for e in store.raw_log(status=None, limit=1000))
    store.close()


def test_refusals_are_audited(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'audit.db'}")
    recorder = SenderRefusals(store)  # what `medtwin listen` gives each listener process as on_refused

    async def body(port: int) -> str:
        client = await MllpClient.connect("127.0.0.1", port)
        ack = await client.send(message("UNKNOWN", "U-1"))
        await client.close()
        return ack

    async def main() -> str:
        server = MllpServer(store, MllpConfig(port=0, senders=policy), on_refused=recorder)
        port = await server.start()
        try:
            return await asyncio.wait_for(body(port), 60)
        finally:
            await server.close()

    policy = SenderPolicy.from_mapping({"KNOWN": ["127.0.0.1/32"]})
    assert msa(asyncio.run(main())) in ("AR", "CR")
    recorder.close()  # commits what it queued
    trail = AuditTrail(store)
    [rec] = trail.records(action="refused-sender")
    assert rec.event.actor == "UNKNOWN"
    assert rec.event.outcome == "denied"
    assert rec.event.source is not None
    assert rec.event.source.startswith("127.0.0.1")
    assert "not an allowed sender" in (rec.event.detail or "")
    assert trail.verify().ok
    trail.close()
    store.close()


def test_policy_rules(tmp_path: Path) -> None:
    assert LOOPBACK_ONLY.check("ANY", "127.0.0.1", frozenset()) is None
    assert LOOPBACK_ONLY.check("ANY", "192.168.1.9", frozenset()) is not None
    tls = SenderPolicy(tls=True)
    assert tls.check("LAB", "10.1.1.1", frozenset({"LAB"})) is None
    assert "no verified client certificate" in (tls.check("LAB", "10.1.1.1", frozenset()) or "")
    f = tmp_path / "senders.toml"
    f.write_text('[senders]\nLAB = ["10.2.0.0/16"]\n"*" = ["::1"]\n')
    p = load_senders(f)
    assert p.check("LAB", "10.2.3.4", frozenset()) is None
    assert p.check("OTHER", "::1", frozenset()) is None
    assert p.check("OTHER", "10.2.3.4", frozenset()) is not None
    f.write_text('[senders]\nLAB = ["not-a-network"]\n')
    from medtwin.errors import ValidationError

    with pytest.raises(ValidationError, match="not an address"):
        load_senders(f)


def test_certs_dev_cli(tmp_path: Path) -> None:
    import stat

    from typer.testing import CliRunner

    from medtwin.cli import app

    r = CliRunner().invoke(app, ["certs", "dev", "--out", str(tmp_path / "c"), "--client", "ICU"])
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((tmp_path / "c" / "ca-key.pem").stat().st_mode) == 0o600
    assert (tmp_path / "c" / "client-ICU.pem").exists()
