"""Trusting an external OpenID Connect issuer: a small issuer runs on loopback with its own RSA keys (discovery
document + JWKS), the server verifies its tokens, follows a key rotation, and refuses what it must."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from medtwin.security.oidc import OidcSettings

from .conftest import Api, make_api, seed_patient


class Issuer:
    """A loopback OIDC issuer: ``/.well-known/openid-configuration`` and ``/jwks``; signs tokens with RS256."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"}
                elif self.path == "/jwks":
                    issuer.fetches += 1
                    body = {
                        "keys": [
                            {
                                **json.loads(RSAAlgorithm.to_jwk(k.public_key())),
                                "kid": kid,
                                "use": "sig",
                                "alg": "RS256",
                            }
                            for kid, k in issuer.keys.items()
                        ]
                    }
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, kid: str = "k1", **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.url,
            "aud": "medtwin",
            "sub": "ext-user-1",
            "iat": now,
            "exp": now + 300,
            "medtwin_role": "clinician",
            "scope": "openid user/*.rs",
            "wards": ["W1"],
            **claims,
        }
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    made = Issuer()
    yield made
    made.close()


@pytest.fixture
def oidc_api(issuer: Issuer, tmp_path: Path) -> Iterator[Api]:
    api = make_api(f"sqlite:///{tmp_path / 'oidc.db'}", tmp_path, oidc=OidcSettings(issuer.url))
    assert api.platform.oidc is not None
    api.platform.oidc.min_refetch_s = 0.0
    api.platform.extra["pid"] = seed_patient(api.store, "o1", ward="W1", index=1).patient_id
    try:
        yield api
    finally:
        api.close()


def _get(api: Api, token: str) -> Any:
    return api.client.get(f"/fhir/Patient/{api.platform.extra['pid']}", headers=api.headers(token))


def test_tokens_of_the_external_issuer_are_accepted_with_their_claims(oidc_api: Api, issuer: Issuer) -> None:
    r = _get(oidc_api, issuer.token())
    assert r.status_code == 200, r.text
    assert _get(oidc_api, issuer.token(wards=["W9"])).status_code == 404  # not on the patient's ward
    assert _get(oidc_api, issuer.token(medtwin_role="device", scope="system/Observation.c")).status_code == 403
    # the built-in issuer still works beside it
    assert _get(oidc_api, oidc_api.token("admin")).status_code == 200


def test_a_rotated_key_is_fetched_once_it_is_used(oidc_api: Api, issuer: Issuer) -> None:
    assert _get(oidc_api, issuer.token()).status_code == 200
    before = issuer.fetches
    issuer.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _get(oidc_api, issuer.token(kid="k2")).status_code == 200
    assert issuer.fetches == before + 1


@pytest.mark.parametrize("kind", ["expired", "wrong-audience", "unknown-key", "forged-signature", "wrong-issuer"])
def test_bad_external_tokens_are_refused(oidc_api: Api, issuer: Issuer, kind: str) -> None:
    if kind == "expired":
        token = issuer.token(exp=int(time.time()) - 5)
    elif kind == "wrong-audience":
        token = issuer.token(aud="another-app")
    elif kind == "unknown-key":
        issuer.keys["k3"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = issuer.token(kid="k3")
        del issuer.keys["k3"]
    elif kind == "forged-signature":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        good = jwt.decode(issuer.token(), options={"verify_signature": False})
        token = jwt.encode(good, other, algorithm="RS256", headers={"kid": "k1"})
    else:
        token = issuer.token(iss="http://127.0.0.1:1")
    r = _get(oidc_api, token)
    assert r.status_code == 401, r.text
    assert "Zyx" not in r.text
