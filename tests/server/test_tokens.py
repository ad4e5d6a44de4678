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


def _authorize_params(api: Api) -> tuple[dict[str, str], str]:
    """A registered public client's authorization request (PKCE S256) and its verifier."""
    if api.platform.accounts.client("web") is None:
        api.platform.accounts.add_client(
            "web", "clinician", "user/*.rs", redirect_uris=["https://app.example/cb"], public=True
        )
    verifier = secrets.token_urlsafe(48)
    params = {
        "response_type": "code",
        "client_id": "web",
        "redirect_uri": "https://app.example/cb",
        "scope": "openid user/*.rs",
        "state": "s-456",
        "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    }
    return params, verifier


def _ticket(page: str) -> str:
    start = page.index('name="ticket" value="') + len('name="ticket" value="')
    return page[start : page.index('"', start)]


def test_a_required_password_change_blocks_every_token_until_it_is_done(users: Api) -> None:
    users.platform.accounts.set_password("ada", "the admins choice", password_change_required=True)
    refused = users.client.post(
        "/oauth/token", data={"grant_type": "password", "username": "ada", "password": "the admins choice"}
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    assert "must be changed" in refused.json()["error_description"]
    assert "/app/login" in refused.json()["error_description"]  # where to change it
    wrong = users.client.post(
        "/oauth/token", data={"grant_type": "password", "username": "ada", "password": "not the password"}
    )
    assert "must be changed" not in wrong.text  # the mark is told only to who knows the password

    params, verifier = _authorize_params(users)
    form = users.client.post(
        "/oauth/authorize", data={**params, "username": "ada", "password": "the admins choice"}, follow_redirects=False
    )
    assert form.status_code == 200  # no code: the change form
    assert "Choose a new password" in form.text
    assert 'name="new_password_again"' in form.text
    assert "the admins choice" not in form.text
    assert "<script" not in form.text
    csp = form.headers["content-security-policy"]
    assert "form-action 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert form.headers["x-frame-options"] == "DENY"
    ticket = _ticket(form.text)
    change = {"ticket": ticket, "current_password": "the admins choice"}
    url = "/oauth/authorize/password"
    for new, again, words in [
        ("ada's own password", "ada's own passw0rd", "The two new passwords differ"),
        ("short", "short", "at least 8 characters are needed"),
        ("the admins choice", "the admins choice", "the new password is the current one"),
    ]:
        r = users.client.post(url, data={**change, "new_password": new, "new_password_again": again})
        assert r.status_code == 200
        assert words in r.text, r.text
        assert _ticket(r.text) == ticket
    mine = {"new_password": "ada's own password", "new_password_again": "ada's own password"}
    r = users.client.post(url, data={**change, **mine, "current_password": "a wrong guess"})
    assert "The current password is wrong" in r.text
    done = users.client.post(url, data={**change, **mine}, follow_redirects=False)
    assert done.status_code == 303  # the sign-in goes on, with a code for the client
    query = parse_qs(urlsplit(done.headers["location"]).query)
    assert query["state"] == ["s-456"]
    exchange = {"grant_type": "authorization_code", "code": query["code"][0], "client_id": "web",
                "redirect_uri": "https://app.example/cb", "code_verifier": verifier}  # fmt: skip
    tokens = users.client.post("/oauth/token", data=exchange)
    assert tokens.status_code == 200, tokens.text
    assert _me(users, tokens.json()["access_token"]) == 200
    again = users.client.post(url, data={**change, "new_password": "x" * 20, "new_password_again": "x" * 20})
    assert again.status_code == 400  # the ticket was used
    user = users.platform.accounts.user("ada")
    assert user is not None
    assert not user.password_change_required
    assert _login(users, password="ada's own password")["access_token"]
    users.platform.audit.flush()
    trail = [r.event for r in users.platform.audit.records() if r.event.resource == f"User/{user.user_id}"]
    assert [(e.action, e.outcome) for e in trail] == [("update", "denied")] * 4 + [("update", "success")]
    assert "wrong" in (trail[3].detail or "")
    assert "required change" in (trail[4].detail or "")
    logins = [r.event for r in users.platform.audit.records() if r.event.action == "login"]
    assert any(e.outcome == "denied" and e.detail == "password change required" for e in logins)
    for record in users.platform.audit.records():
        for secret in ("the admins choice", "ada's own password", "a wrong guess"):
            assert secret not in repr(record.event)


def test_the_change_form_allows_five_tries_and_an_unknown_ticket_nothing(users: Api) -> None:
    users.platform.accounts.set_password("ada", "the admins choice", password_change_required=True)
    params, _ = _authorize_params(users)
    form = users.client.post("/oauth/authorize", data={**params, "username": "ada", "password": "the admins choice"})
    ticket = _ticket(form.text)
    bad = {
        "ticket": ticket,
        "current_password": "a wrong guess",
        "new_password": "n" * 10,
        "new_password_again": "n" * 10,
    }
    statuses = [users.client.post("/oauth/authorize/password", data=bad).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 400, 400]  # the fifth refusal ends the sign-in
    right = {**bad, "current_password": "the admins choice"}
    assert users.client.post("/oauth/authorize/password", data=right).status_code == 400
    assert users.client.post("/oauth/authorize/password", data={**right, "ticket": "forged"}).status_code == 400
    assert users.platform.accounts.authenticate("ada", "the admins choice") is not None  # nothing changed


def test_a_code_issued_before_an_administrators_reset_gives_no_token(users: Api) -> None:
    params, verifier = _authorize_params(users)
    r = users.client.post(
        "/oauth/authorize", data={**params, "username": "ada", "password": "correct horse"}, follow_redirects=False
    )
    code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
    users.platform.accounts.set_password("ada", "the admins choice", password_change_required=True)
    exchange = {"grant_type": "authorization_code", "code": code, "client_id": "web",
                "redirect_uri": "https://app.example/cb", "code_verifier": verifier}  # fmt: skip
    refused = users.client.post("/oauth/token", data=exchange)
    assert refused.status_code == 400
    assert "must be changed" in refused.json()["error_description"]
