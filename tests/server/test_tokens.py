"""Tokens: password + refresh (rotation, reuse revokes the family), expiry, idle sessions, logout, client
credentials, authorization code + PKCE, and tokens that must be refused."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from medtwin.security.tokens import SigningKey, b64url

from .conftest import Api, seed_patient


def _login(api: Api, username: str = "ada", password: str = "correct horse", **extra: str) -> dict[str, Any]:
    r = api.client.post(
        "/oauth/token", data={"grant_type": "password", "username": username, "password": password, **extra}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _refresh(api: Api, token: str) -> Any:
    return api.client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token})


def _me(api: Api, access: str) -> int:
    pid = api.platform.extra["pid"]
    return int(api.client.get(f"/api/patients/{pid}", headers=api.headers(access)).status_code)


@pytest.fixture
def users(api: Api) -> Api:
    seeded = seed_patient(api.store, "t1", ward="W1", index=1)
    api.platform.extra["pid"] = seeded.patient_id
    api.platform.accounts.add_user("ada", "correct horse", "clinician", wards=["W1"])
    return api


def test_password_login_then_refresh_rotates_and_reuse_revokes_the_whole_session(users: Api) -> None:
    first = _login(users)
    assert first["token_type"] == "Bearer"
    assert first["expires_in"] <= 900
    assert _me(users, first["access_token"]) == 200
    second = _refresh(users, first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert _me(users, second["access_token"]) == 200
    reused = _refresh(users, first["refresh_token"])  # the old one again: theft suspected
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert "reused" in reused.json()["error_description"] or "already used" in reused.json()["error_description"]
    assert _refresh(users, second["refresh_token"]).status_code == 400  # the family is revoked
    assert _me(users, second["access_token"]) == 401  # and the session's access tokens with it
    assert _me(users, first["access_token"]) == 401


def test_access_tokens_expire(users: Api) -> None:
    tokens = _login(users)
    users.platform.tokens.clock = lambda: time.time() + 901
    r = users.client.get(f"/api/patients/{users.platform.extra['pid']}", headers=users.headers(tokens["access_token"]))
    assert r.status_code == 401
    assert "expired" in r.json()["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_an_idle_session_cannot_be_refreshed(users: Api) -> None:
    tokens = _login(users)
    users.platform.tokens.clock = lambda: time.time() + 16 * 60  # idle timeout: 15 minutes
    r = _refresh(users, tokens["refresh_token"])
    assert r.status_code == 400
    assert "idle" in r.json()["error_description"]


def test_logout_revokes_the_session(users: Api) -> None:
    tokens = _login(users)
    r = users.client.post("/oauth/revoke", data={"token": tokens["refresh_token"]})
    assert r.status_code == 200
    assert r.json() == {"revoked": True}
    assert _me(users, tokens["access_token"]) == 401
    assert _refresh(users, tokens["refresh_token"]).status_code == 400
    again = _login(users)  # logging in again starts a new session
    users.client.post("/oauth/revoke", data={"token": again["access_token"]})  # logout with the access token
    assert _me(users, again["access_token"]) == 401
    assert _refresh(users, again["refresh_token"]).status_code == 400


def test_wrong_password_unknown_user_and_disabled_user_are_refused_alike(users: Api) -> None:
    bodies = []
    for username, password in (("ada", "wrong password"), ("nobody", "whatever1")):
        r = users.client.post(
            "/oauth/token", data={"grant_type": "password", "username": username, "password": password}
        )
        assert r.status_code == 400
        bodies.append(r.json())
    tokens = _login(users)
    users.platform.accounts.set_disabled("ada")
    r = users.client.post(
        "/oauth/token", data={"grant_type": "password", "username": "ada", "password": "correct horse"}
    )
    bodies.append(r.json())
    assert bodies[0] == bodies[1] == bodies[2]
    assert _refresh(users, tokens["refresh_token"]).status_code == 400
    audit = users.platform.audit
    assert audit is not None
    audit.flush()
    logins = [r.event for r in audit.records(action="login")]
    assert [e.outcome for e in logins] == ["denied", "denied", "success", "denied"]


def test_client_credentials_give_a_device_write_only_access(users: Api) -> None:
    _, secret = users.platform.accounts.add_client("monitor-1", "device", "system/Observation.c")
    assert secret is not None
    r = users.client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "monitor-1",
            "client_secret": secret,
            "scope": "system/*.cruds",
        },
    )
    assert r.status_code == 200
    assert r.json()["scope"] == ""  # asked for more than registered: nothing of it is granted
    token = users.client.post(
        "/oauth/token", auth=("monitor-1", secret), data={"grant_type": "client_credentials"}
    ).json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == "system/Observation.c"
    assert _me(users, token) == 403
    bad = users.client.post(
        "/oauth/token", auth=("monitor-1", "not the secret"), data={"grant_type": "client_credentials"}
    )
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client"


def test_authorization_code_with_pkce(users: Api) -> None:
    users.platform.accounts.add_client(
        "web", "clinician", "user/*.rs", redirect_uris=["https://app.example/cb"], public=True
    )
    verifier = secrets.token_urlsafe(48)
    challenge = b64url(hashlib.sha256(verifier.encode()).digest())
    params = {
        "response_type": "code",
        "client_id": "web",
        "redirect_uri": "https://app.example/cb",
        "scope": "openid user/*.rs",
        "state": "s-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    form = users.client.get("/oauth/authorize", params=params)
    assert form.status_code == 200
    assert "<form" in form.text
    assert "form-action 'self'" in form.headers["content-security-policy"]
    bad = users.client.get("/oauth/authorize", params={**params, "redirect_uri": "https://evil.example/cb"})
    assert bad.status_code == 400
    wrong = users.client.post(
        "/oauth/authorize", data={**params, "username": "ada", "password": "nope-nope"}, follow_redirects=False
    )
    assert wrong.status_code == 401
    r = users.client.post(
        "/oauth/authorize", data={**params, "username": "ada", "password": "correct horse"}, follow_redirects=False
    )
    assert r.status_code == 303
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["state"] == ["s-123"]
    code = query["code"][0]
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": "web",
        "redirect_uri": "https://app.example/cb",
    }
    assert users.client.post("/oauth/token", data={**exchange, "code_verifier": "x" * 50}).status_code == 400
    r = users.client.post("/oauth/token", data={**exchange, "code_verifier": verifier})
    assert r.status_code == 400  # the code was used by the failed attempt: single use
    r2 = users.client.post(
        "/oauth/authorize", data={**params, "username": "ada", "password": "correct horse"}, follow_redirects=False
    )
    code2 = parse_qs(urlsplit(r2.headers["location"]).query)["code"][0]
    ok = users.client.post("/oauth/token", data={**exchange, "code": code2, "code_verifier": verifier})
    assert ok.status_code == 200
    assert "refresh_token" in ok.json()
    assert _me(users, ok.json()["access_token"]) == 200


def _forged(claims: dict[str, Any], key: Any = None, alg: str = "ES256") -> str:
    return jwt.encode(claims, key or SigningKey.generate().private_key, algorithm=alg)


@pytest.mark.parametrize("kind", ["garbage", "other-key", "wrong-audience", "alg-none", "no-role", "basic-scheme"])
def test_bad_tokens_are_401_with_a_reason(users: Api, kind: str) -> None:
    now = int(time.time())
    claims = {
        "iss": "medtwin",
        "aud": "medtwin",
        "sub": "x",
        "iat": now,
        "exp": now + 60,
        "jti": "j",
        "role": "admin",
        "scope": "user/*.cruds",
    }
    key = users.platform.tokens.key.private_key
    header = {
        "garbage": "Bearer not.a.jwt",
        "other-key": f"Bearer {_forged(claims)}",
        "wrong-audience": f"Bearer {_forged({**claims, 'aud': 'someone-else'}, key)}",
        "alg-none": "Bearer "
        + base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=")
        + "."
        + base64.urlsafe_b64encode(str(claims).encode()).decode().rstrip("=")
        + ".",
        "no-role": f"Bearer {_forged({k: v for k, v in claims.items() if k != 'role'}, key)}",
        "basic-scheme": "Basic YWRtaW46YWRtaW4=",
    }[kind]
    r = users.client.get(f"/api/patients/{users.platform.extra['pid']}", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.json()["message"]
    assert "Zyx" not in r.text
