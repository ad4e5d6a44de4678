"""Transport hardening: security headers, CORS closed by default, size limits, rate limits (429 + Retry-After),
path tricks, malformed input, HTTPS round trip, health and readiness."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from medtwin.server.hardening import RateLimiter

from .conftest import Api, LiveServer, make_api, seed_patient


def test_security_headers_on_every_answer(api: Api) -> None:
    for r in (api.client.get("/health"), api.client.get("/fhir/Patient/x"), api.client.get("/nowhere")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert "strict-transport-security" not in r.headers  # only over HTTPS


def test_cors_is_closed_by_default_and_opens_to_configured_origins(api: Api, tmp_path: Path) -> None:
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    r = api.client.options("/fhir/metadata", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    assert (
        "access-control-allow-origin" not in api.client.get("/health", headers={"Origin": "https://a.example"}).headers
    )
    (tmp_path / "cors").mkdir()
    opened = make_api(
        f"sqlite:///{tmp_path / 'cors' / 'cors.db'}", tmp_path / "cors", cors_origins=("https://app.example",)
    )
    ok = opened.client.get("/health", headers={"Origin": "https://app.example"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = opened.client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    opened.close()


def test_oversized_bodies_are_413_and_store_nothing(tmp_path: Path) -> None:
    api = make_api(f"sqlite:///{tmp_path / 'big.db'}", tmp_path, max_body_bytes=10_000)
    h = api.headers(api.token("admin"))
    before = api.store.counts()
    r = api.client.post("/fhir", content=b"{" + b" " * 20_000 + b"}", headers=h)
    assert r.status_code == 413
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "over the limit" in r.json()["issue"][0]["diagnostics"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b" " * 1000

    r = api.client.post("/fhir", content=chunks(), headers=h)
    assert r.status_code == 413
    assert api.store.counts() == before
    api.close()


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    api = make_api(f"sqlite:///{tmp_path / 'rate.db'}", tmp_path, rate_per_s=1.0, rate_burst=3)
    h = api.headers(api.token("admin"))
    codes = [api.client.get("/fhir/metadata", headers=h).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200]
    assert codes[3:] == [429, 429]
    r = api.client.get("/fhir/metadata", headers=h)
    assert int(r.headers["retry-after"]) >= 1
    other = api.headers(api.token("clinician"))  # another client has its own bucket
    assert api.client.get("/fhir/metadata", headers=other).status_code == 200
    api.close()


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.take("a") == 0.0


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Patient/..%2F..%2Fetc%2Fpasswd",
        "/fhir/Patient/%00",
        "/fhir/Observation/" + "a" * 65,
        "/api/patients/..%2Fx/twin",
        "/fhir/Patient/a%20b",
    ],
)
def test_path_tricks_are_4xx_and_reveal_nothing(api: Api, path: str) -> None:
    seed_patient(api.store, "p1", ward="W1", index=1)
    r = api.client.get(path, headers=api.headers(api.token("admin")))
    assert 400 <= r.status_code < 500
    assert "Zyx" not in r.text
    assert "Traceback" not in r.text


def test_malformed_requests_get_clear_4xx(api: Api) -> None:
    h = api.headers(api.token("admin"))
    r = api.client.get("/api/patients?limit=abc", headers=h)
    assert r.status_code == 400
    assert "limit" in r.json()["message"]
    r = api.client.get("/fhir/Observation?patient=x&_count=99999", headers=h)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    r = api.client.post("/oauth/token", content=b"\xff\xfe garbage", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    assert r.json()["error"] == "unsupported_grant_type"
    r = api.client.get("/fhir/Observation", headers=h)
    assert r.status_code == 400
    assert "patient parameter" in r.text


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/health").json() == {"status": "ok"}
    assert api.client.get("/ready").json() == {"status": "ready"}


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_https_round_trip(tmp_path: Path, live: Callable[..., LiveServer]) -> None:
    cert, key = _certificate(tmp_path)
    api = make_api(f"sqlite:///{tmp_path / 'tls.db'}", tmp_path, https=True)
    pid = seed_patient(api.store, "h1", ward="W1", index=1).patient_id
    server = live(api.app, ssl_certfile=str(cert), ssl_keyfile=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=context, timeout=10) as client:
        r = client.get(f"https://127.0.0.1:{server.port}/fhir/Patient/{pid}", headers=api.headers(api.token("admin")))
        assert r.status_code == 200
        assert r.json()["id"] == pid
        assert r.headers["strict-transport-security"].startswith("max-age=")
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port is no answer
        httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)
    with httpx.Client(verify=ssl.create_default_context(), timeout=5) as untrusting, pytest.raises(httpx.ConnectError):
        untrusting.get(f"https://127.0.0.1:{server.port}/health")
    api.close()
