"""A small OpenID Connect provider on loopback, for the tests of the web app's sign-in with an external issuer.

It plays the hospital's identity provider (Keycloak-like claims: ``realm_access.roles``, ``groups``): discovery
document, JWKS, an authorization endpoint that shows a sign-in form (a user name; no password: it is a test
double), a token endpoint (authorization code with PKCE S256, checked; refresh tokens), token revocation and an
end-session endpoint. It signs with RS256 or ES256 and answers the token endpoint with CORS headers, as a real
provider does for a browser app on another origin. ``tamper`` makes it misbehave on purpose (another state, another
nonce) for the negative tests.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["KEYCLOAK_STYLE_USERS", "LoopbackIdP"]

KEYCLOAK_STYLE_USERS: dict[str, dict[str, Any]] = {
    "kim.ext": {"name": "Kim External", "realm_access": {"roles": ["offline_access", "medtwin-nurse"]},
                "groups": ["/wards/WARD-A", "/staff"]},
    "lee.ext": {"name": "Lee External", "realm_access": {"roles": ["medtwin-doctor", "medtwin-nurse"]},
                "groups": ["/wards/WARD-A", "/wards/WARD-B", "/teams/cardiology"]},
    "visitor": {"name": "Visiting Consultant", "realm_access": {"roles": ["offline_access", "uma_authorization"]},
                "groups": ["/wards/WARD-A"]},
}  # fmt: skip
"""The provider's users: a nurse of WARD-A, a doctor (clinician) of both wards, and a user it knows whose roles
give no medtwin role."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LoopbackIdP:
    """The provider, serving on ``127.0.0.1`` in a thread until :meth:`close`.

    *alg*: ``RS256`` or ``ES256``. *client_id*: the one public client it knows (any loopback redirect URI).
    *audience*: the ``aud`` of its access tokens. *users*: user name -> extra claims.
    """

    def __init__(self, *, alg: str = "RS256", client_id: str = "medtwin-web", audience: str = "medtwin",
                 users: dict[str, dict[str, Any]] | None = None, access_ttl_s: int = 300) -> None:  # fmt: skip
        self.alg = alg
        self.client_id = client_id
        self.audience = audience
        self.users = dict(KEYCLOAK_STYLE_USERS if users is None else users)
        self.access_ttl_s = access_ttl_s
        self.key: Any = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if alg.startswith("RS")
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.kid = f"idp-{alg.lower()}-1"
        self.codes: dict[str, dict[str, Any]] = {}
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.logouts: list[dict[str, str]] = []
        self.revoked: list[str] = []
        self.tamper: dict[str, str] = {}
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="loopback-idp", daemon=True)
        self.thread.start()

    # -- tokens ---------------------------------------------------------------------------------------------------
    def jwk(self) -> dict[str, Any]:
        algo = RSAAlgorithm if self.alg.startswith("RS") else ECAlgorithm
        return {**json.loads(algo.to_jwk(self.key.public_key())), "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.key, algorithm=self.alg, headers={"kid": self.kid})

    def _base(self, user: str, sid: str) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.url, "sub": f"idp-{hashlib.sha256(user.encode()).hexdigest()[:12]}", "iat": now,
                "exp": now + self.access_ttl_s, "sid": sid, "preferred_username": user, **self.users[user]}  # fmt: skip

    def access_token(self, user: str, *, sid: str = "s-1", **claims: Any) -> str:
        """An access token for *user* (``aud`` the API, ``scope`` without SMART scopes, as providers issue)."""
        body = {**self._base(user, sid), "aud": self.audience, "azp": self.client_id, "jti": secrets.token_hex(8),
                "scope": "openid profile", **claims}  # fmt: skip
        return self.sign(body)

    def id_token(self, user: str, *, nonce: str, sid: str = "s-1", **claims: Any) -> str:
        """An ID token for *user* issued to the client, bound to *nonce*."""
        return self.sign({**self._base(user, sid), "aud": self.client_id, "nonce": nonce, "auth_time": int(time.time()),
                          **claims})  # fmt: skip

    # -- HTTP -------------------------------------------------------------------------------------------------------
    def discovery(self) -> dict[str, Any]:
        u = self.url
        return {"issuer": u, "authorization_endpoint": f"{u}/authorize", "token_endpoint": f"{u}/token",
                "jwks_uri": f"{u}/jwks", "revocation_endpoint": f"{u}/revoke", "end_session_endpoint": f"{u}/logout",
                "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": [self.alg],
                "subject_types_supported": ["public"]}  # fmt: skip

    def _login_form(self, params: dict[str, str], error: str = "") -> str:
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items())  # fmt: skip
        message = f'<p role="alert">{html.escape(error)}</p>' if error else ""
        return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Hospital sign-in</title></head>'
                f'<body><main><h1>Test Hospital IdP</h1>{message}<form method="post" action="/authorize">{hidden}'
                '<label>User name <input name="username" autocomplete="username" required></label>'
                '<button type="submit">Continue</button></form></main></body></html>')  # fmt: skip

    def _authorize(self, params: dict[str, str]) -> tuple[int, dict[str, str], str]:
        """(status, headers, body) of an authorization request (GET: the form; POST: the user's answer)."""
        redirect = params.get("redirect_uri", "")
        if params.get("client_id") != self.client_id or not redirect.startswith("http://127.0.0.1:"):
            return 400, {}, "unknown client or redirect URI"
        if params.get("response_type") != "code" or params.get("code_challenge_method") != "S256":
            return 400, {}, "authorization code with PKCE S256 only"
        user = params.pop("username", None)
        if user is None:
            return 200, {"Content-Type": "text/html; charset=utf-8"}, self._login_form(params)
        if user not in self.users:
            return 200, {"Content-Type": "text/html; charset=utf-8"}, self._login_form(params, "Unknown user.")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self.codes[code] = {"user": user, "redirect_uri": redirect, "challenge": params.get("code_challenge", ""),
                                "nonce": params.get("nonce", ""), "expires": time.time() + 60}  # fmt: skip
        state = self.tamper.get("state", params.get("state", ""))
        return 302, {"Location": f"{redirect}?{urlencode({'code': code, 'state': state})}"}, ""

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(form)
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") == "refresh_token":
            with self._lock:
                grant = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if grant is None:
                return 400, {"error": "invalid_grant", "error_description": "unknown refresh token"}
            return 200, self._tokens(grant["user"], grant["nonce"], grant["sid"])
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        with self._lock:
            grant = self.codes.pop(form.get("code", ""), None)  # single use
        if grant is None or grant["expires"] < time.time():
            return 400, {"error": "invalid_grant", "error_description": "unknown or expired code"}
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri differs"}
        verifier = form.get("code_verifier", "")
        if not verifier or _b64url(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        return 200, self._tokens(grant["user"], self.tamper.get("nonce", grant["nonce"]), secrets.token_hex(6))

    def _tokens(self, user: str, nonce: str, sid: str) -> dict[str, Any]:
        refresh = secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens[refresh] = {"user": user, "nonce": nonce, "sid": sid}
        return {"access_token": self.access_token(user, sid=sid), "id_token": self.id_token(user, nonce=nonce, sid=sid),
                "token_type": "Bearer", "expires_in": self.access_ttl_s, "refresh_token": refresh,
                "scope": "openid profile"}  # fmt: skip

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: str | dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(status)
                kind = "application/json" if isinstance(body, dict) else "text/plain"
                heads = {"Content-Type": kind, **(headers or {})}
                origin = self.headers.get("Origin")
                if origin:  # CORS for the browser app's token exchange, refresh and revocation
                    heads["Access-Control-Allow-Origin"] = origin
                    heads["Access-Control-Allow-Headers"] = "Content-Type"
                for k, v in heads.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_OPTIONS(self) -> None:
                self._send(204, "", {"Access-Control-Allow-Methods": "POST"})

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/.well-known/openid-configuration":
                    self._send(200, idp.discovery())
                elif parts.path == "/jwks":
                    self._send(200, {"keys": [idp.jwk()]})
                elif parts.path == "/authorize":
                    status, headers, body = idp._authorize(params)
                    self._send(status, body, headers)
                elif parts.path == "/logout":
                    idp.logouts.append(params)
                    target = params.get("post_logout_redirect_uri", "")
                    if target.startswith("http://127.0.0.1:"):
                        self._send(302, "", {"Location": target})
                    else:
                        self._send(200, "signed out", {"Content-Type": "text/plain"})
                else:
                    self._send(404, "not found")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                path = urlsplit(self.path).path
                if path == "/authorize":
                    status, headers, body = idp._authorize(form)
                    self._send(status, body, headers)
                elif path == "/token":
                    status, answer = idp._token(form)
                    self._send(status, answer, {"Cache-Control": "no-store"})
                elif path == "/revoke":
                    idp.revoked.append(form.get("token", ""))
                    idp.refresh_tokens.pop(form.get("token", ""), None)
                    self._send(200, {})
                else:
                    self._send(404, "not found")

            def log_message(self, *args: Any) -> None:
                return

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
