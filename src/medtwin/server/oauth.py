"""The built-in OAuth2 issuer's endpoints: token, authorize (code + PKCE), revoke, discovery and JWKS.

Grants (RFC 6749): ``password`` (+ refresh) for users, ``client_credentials`` for devices and services,
``authorization_code`` with PKCE S256 (RFC 7636) for browser apps, and ``refresh_token`` (rotating: see
:mod:`medtwin.security.tokens`). A user token carries ``user/`` and ``patient/`` scopes only; a client's scopes
are those it asks for within those it was registered with. ``/oauth/revoke`` is logout (RFC 7009). Every login,
token, refresh and logout is audited, failures included. Authorization codes live in this process for 60 s and
are single use.

A user whose password was set by an administrator (``password_change_required``) gets no token: the ``password``
grant answers ``invalid_grant`` saying so and where to change it, and the sign-in form of the authorization-code
flow answers with a change-password form (current, new, repeated), bound to that sign-in by a single-use ticket of
this process (10 minutes, 5 tries); a successful change continues the sign-in with its code. The change is
:meth:`medtwin.security.accounts.Accounts.change_password` (the policy, the argon2id hash, other sessions ended)
and is audited as an ``update`` of the user, refusals included, never with a password.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from medtwin.errors import MedtwinError
from medtwin.security.accounts import (
    PASSWORD_MAX_CHARS,
    PASSWORD_MIN_CHARS,
    PASSWORD_RULE,
    CurrentPasswordError,
    User,
)
from medtwin.security.principal import Principal
from medtwin.security.scopes import ScopeSet, parse_scopes
from medtwin.security.tokens import TokenError, TokenService, b64url
from medtwin.server.errors import JSONBody
from medtwin.server.guard import platform_of, source_of
from medtwin.server.platform import Platform

__all__ = ["DEFAULT_USER_SCOPES", "audit_password_change", "router"]

router = APIRouter(tags=["OAuth2 / OpenID"])

DEFAULT_USER_SCOPES = "openid user/*.cruds"
"""What a user's token grants when no scope is asked for (the role still limits it: see the policy)."""

_FORM = {
    "application/x-www-form-urlencoded": {"schema": {"type": "object", "additionalProperties": {"type": "string"}}}
}
_TOKEN_DOC = {"requestBody": {"required": True, "content": _FORM}}
_CODE_TTL_S = 60.0
_TICKET_TTL_S = 600.0
_TICKET_TRIES = 5
_AUTHORIZE_KEYS = (
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "patient",
    "response_type",
)
"""The parameters of an authorization request that the sign-in carries on (never the credentials)."""


def _oauth_error(error: str, description: str, status: int = 400) -> JSONBody:
    headers = {"WWW-Authenticate": 'Basic realm="medtwin"'} if status == 401 else None
    return JSONBody({"error": error, "error_description": description}, status, headers=headers)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items()}


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            raw = base64.b64decode(header[6:]).decode()
        except (ValueError, UnicodeDecodeError):
            return None, None
        cid, _, secret = raw.partition(":")
        return cid, secret
    return form.get("client_id"), form.get("client_secret")


def _user_scopes(requested: str | None) -> ScopeSet:
    scopes = parse_scopes(requested or DEFAULT_USER_SCOPES)
    kept = tuple(s for s in scopes.scopes if s.context in ("user", "patient"))
    return ScopeSet(kept, scopes.other)


@dataclass(frozen=True, slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    user_id: str
    scope: str
    patient: str | None
    expires: float


def _check_patient_context(platform: Platform, grant_principal: Principal, patient: str | None) -> None:
    if patient is None:
        return
    access = platform.policy.patient_access(grant_principal, patient, "Patient", "r", at=datetime.now(UTC))
    if not access.allowed:
        raise TokenError("invalid_request", "patient: no such patient in your care")


def _user_principal(user: User) -> Principal:
    """The user as an audit record names them (no token: a sign-in or a password change on the issuer's form)."""
    return Principal(subject=user.user_id, role=user.role, scopes=parse_scopes(""), username=user.username)


async def audit_password_change(
    request: Request, user: User, *, by: Principal | None = None, refused: str | None = None, ended: int = 0, how: str
) -> None:
    """Audit a user's change of their own password as an ``update`` of ``User/<id>``: *refused* (why, never the
    password) for a refusal, else the number of other sessions *ended*. *how*: where (the sign-in form, the web
    app's account page). *by*: the caller's principal when the change came with a token."""
    platform = platform_of(request)
    actor = by or _user_principal(user)
    if refused is not None:
        await platform.record(actor, "update", f"User/{user.user_id}", outcome="denied", source=source_of(request),
                              detail=f"user {user.username}: password change refused ({how}): {refused}")  # fmt: skip
        return
    await platform.record(actor, "update", f"User/{user.user_id}", source=source_of(request),
                          detail=f"user {user.username}: password changed by the user ({how}); {ended} other "
                                 "session(s) ended")  # fmt: skip


def _principal_of(grant: Any) -> Principal:
    return Principal(
        subject=grant.subject,
        role=grant.role,
        scopes=parse_scopes("user/*.cruds"),
        wards=frozenset(grant.wards),
        teams=frozenset(grant.teams),
        username=grant.username,
    )


async def _password_grant(request: Request, platform: Platform, form: dict[str, str]) -> Response:
    username, password = form.get("username", ""), form.get("password", "")
    user = await run_in_threadpool(platform.accounts.authenticate, username, password)
    if user is None:
        await platform.record(
            None,
            "login",
            f"user:{username[:80]}",
            outcome="denied",
            source=source_of(request),
            detail="bad credentials or disabled",
        )
        return _oauth_error("invalid_grant", "unknown user, wrong password, or the account is disabled")
    if user.password_change_required:
        await platform.record(_user_principal(user), "login", f"user:{user.username}", outcome="denied",
                              source=source_of(request), detail="password change required")  # fmt: skip
        return _oauth_error(
            "invalid_grant",
            f"the password of {user.username} was set by an administrator and must be changed before a token is "
            f"issued: sign in once at {_issuer_base(request)}/app/login (the sign-in form asks for a new password)",
        )
    grant = TokenService.grant(
        user.user_id,
        user.role,
        _user_scopes(form.get("scope")),
        username=user.username,
        wards=user.wards,
        teams=user.teams,
        patient=form.get("patient") or None,
    )
    _check_patient_context(platform, _principal_of(grant), grant.patient)
    body = platform.tokens.issue(grant, refresh=True)
    principal = Principal(subject=user.user_id, role=user.role, scopes=grant.scope)
    await platform.record(principal, "login", f"user:{user.username}", source=source_of(request))
    return JSONBody(body)


async def _client_grant(request: Request, platform: Platform, form: dict[str, str]) -> Response:
    cid, secret = _client_credentials(request, form)
    client = None
    if cid and secret:
        client = await run_in_threadpool(platform.accounts.authenticate_client, cid, secret)
    if client is None:
        await platform.record(
            None,
            "token",
            f"client:{(cid or '')[:80]}",
            outcome="denied",
            source=source_of(request),
            detail="bad client credentials",
        )
        return _oauth_error("invalid_client", "unknown client or wrong secret", 401)
    allowed = parse_scopes(client.scopes)
    wanted = parse_scopes(form["scope"]).narrowed_to(allowed) if form.get("scope") else allowed
    grant = TokenService.grant(
        client.client_id, client.role, wanted, client_id=client.client_id, patient=form.get("patient") or None
    )
    body = platform.tokens.issue(grant)
    await platform.record(
        Principal(subject=client.client_id, role=client.role, scopes=wanted),
        "token",
        f"client:{client.client_id}",
        source=source_of(request),
    )
    return JSONBody(body)


async def _refresh_grant(request: Request, platform: Platform, form: dict[str, str]) -> Response:
    token = form.get("refresh_token", "")
    try:
        body, subject = platform.tokens.refresh(token, scope=form.get("scope") or None)
    except TokenError as exc:
        await platform.record(None, "refresh", "session", outcome="denied", source=source_of(request), detail=str(exc))
        return _oauth_error(exc.error, str(exc))
    principal = platform.tokens.verify(body["access_token"])
    await platform.record(principal, "refresh", f"user:{subject}", source=source_of(request))
    return JSONBody(body)


async def _code_grant(request: Request, platform: Platform, form: dict[str, str]) -> Response:
    codes: dict[str, _Code] = platform.extra.setdefault("codes", {})
    code = codes.pop(form.get("code", ""), None)
    verifier = form.get("code_verifier", "")
    if code is None or code.expires < time.time():
        return _oauth_error("invalid_grant", "unknown, used or expired authorization code")
    if form.get("client_id") != code.client_id or form.get("redirect_uri") != code.redirect_uri:
        return _oauth_error("invalid_grant", "client_id or redirect_uri differ from the authorization request")
    if b64url(hashlib.sha256(verifier.encode()).digest()) != code.challenge:
        await platform.record(
            None,
            "login",
            f"client:{code.client_id}",
            outcome="denied",
            source=source_of(request),
            detail="PKCE verifier does not match",
        )
        return _oauth_error("invalid_grant", "code_verifier does not match the code_challenge (PKCE)")
    user = platform.accounts.user(code.user_id)
    if user is None or user.disabled:
        return _oauth_error("invalid_grant", "the account can no longer log in")
    if user.password_change_required:  # an administrator reset the password after the code was issued
        return _oauth_error("invalid_grant", "the password must be changed first: sign in again")
    grant = TokenService.grant(
        user.user_id,
        user.role,
        _user_scopes(code.scope),
        username=user.username,
        wards=user.wards,
        teams=user.teams,
        client_id=code.client_id,
        patient=code.patient,
    )
    body = platform.tokens.issue(grant, refresh=True)
    await platform.record(
        Principal(subject=user.user_id, role=user.role, scopes=grant.scope),
        "login",
        f"user:{user.username} via {code.client_id}",
        source=source_of(request),
    )
    return JSONBody(body)


@router.post(
    "/oauth/token",
    openapi_extra=_TOKEN_DOC,
    summary="Token endpoint (RFC 6749)",
    responses={
        400: {"description": "OAuth2 error"},
        401: {"description": "Bad client credentials"},
        413: {"description": "Too large"},
        429: {"description": "Rate limited"},
    },
)
async def token(request: Request) -> Response:
    """Grant types: password, client_credentials, refresh_token, authorization_code (PKCE)."""
    platform = platform_of(request)
    form = await _form(request)
    grant_type = form.get("grant_type")
    handlers = {
        "password": _password_grant,
        "client_credentials": _client_grant,
        "refresh_token": _refresh_grant,
        "authorization_code": _code_grant,
    }
    handler = handlers.get(grant_type or "")
    if handler is None:
        return _oauth_error("unsupported_grant_type", f"grant_type {grant_type!r} is not one of {', '.join(handlers)}")
    try:
        return await handler(request, platform, form)
    except TokenError as exc:
        return _oauth_error(exc.error, str(exc))
    except MedtwinError as exc:  # a malformed scope
        return _oauth_error("invalid_scope", str(exc))


@router.post(
    "/oauth/revoke",
    openapi_extra=_TOKEN_DOC,
    summary="Logout: revoke a token (RFC 7009)",
    responses={413: {"description": "Too large"}, 429: {"description": "Rate limited"}},
)
async def revoke(request: Request) -> Response:
    """Revoke a refresh token (its session ends) or an access token (with its session)."""
    platform = platform_of(request)
    form = await _form(request)
    subject = await run_in_threadpool(platform.tokens.revoke, form.get("token", ""))
    if subject is not None:
        await platform.record(
            Principal(subject=subject, role="user", scopes=parse_scopes("")),
            "logout",
            "session",
            source=source_of(request),
        )
    return JSONBody({"revoked": subject is not None})


_LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>medtwin sign in</title></head><body>
<h1>Sign in to medtwin</h1><p>{client} asks for: {scope}</p>
<form method="post" action="/oauth/authorize">{hidden}
<label>User <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></body></html>"""

_CHANGE_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>medtwin: choose a new password</title></head><body><main>
<h1>Choose a new password</h1>
<p>The password of <strong>{username}</strong> was set by an administrator. Choose your own to finish signing in;
your other sessions end.</p>
<p id="rule">Rule: {rule}.</p>
{error}<form method="post" action="/oauth/authorize/password">
<input type="hidden" name="ticket" value="{ticket}">
<input type="text" name="username" value="{username}" autocomplete="username" hidden>
<p><label>Current password <input name="current_password" type="password" autocomplete="current-password"
required></label></p>
<p><label>New password <input name="new_password" type="password" autocomplete="new-password" required
minlength="{min}" maxlength="{max}" aria-describedby="rule"></label></p>
<p><label>New password again <input name="new_password_again" type="password" autocomplete="new-password" required
minlength="{min}" maxlength="{max}"></label></p>
<button type="submit">Change password and sign in</button></form></main></body></html>"""


@dataclass(slots=True)
class _ChangeTicket:
    """A sign-in stopped for a required password change: who, the authorization request to continue, until when
    (Unix seconds) and how many tries are left."""

    user_id: str
    username: str
    params: dict[str, str]
    expires: float
    tries: int = _TICKET_TRIES


def _change_form(ticket: str, username: str, error: str | None = None) -> HTMLResponse:
    shown = "" if error is None else f'<p role="alert"><strong>{html.escape(error)}</strong></p>\n'
    page = _CHANGE_PAGE.format(username=html.escape(username, quote=True), ticket=html.escape(ticket, quote=True),
                               rule=html.escape(PASSWORD_RULE), error=shown, min=PASSWORD_MIN_CHARS,
                               max=PASSWORD_MAX_CHARS)  # fmt: skip
    return HTMLResponse(page)


def _code_redirect(platform: Platform, params: dict[str, str], redirect: str, user_id: str) -> Response:
    """Issue a single-use authorization code for *user_id* and send the browser to the client with it."""
    code = secrets.token_urlsafe(32)
    codes: dict[str, _Code] = platform.extra.setdefault("codes", {})
    now = time.time()
    for stale in [k for k, c in codes.items() if c.expires < now]:
        del codes[stale]
    codes[code] = _Code(
        params["client_id"],
        redirect,
        params["code_challenge"],
        user_id,
        params.get("scope", ""),
        params.get("patient") or None,
        now + _CODE_TTL_S,
    )
    query = {"code": code, **({"state": params["state"]} if "state" in params else {})}
    sep = "&" if urlsplit(redirect).query else "?"
    return RedirectResponse(f"{redirect}{sep}{urlencode(query)}", status_code=303)


def _authorize_params(params: dict[str, str], platform: Platform) -> tuple[str | None, str]:
    """(error or None, redirect uri) of an authorization request."""
    client = platform.accounts.client(params.get("client_id", ""))
    redirect = params.get("redirect_uri", "")
    if client is None or client.disabled:
        return "unknown client", ""
    if redirect not in client.redirect_uris:
        return "redirect_uri is not registered for this client", ""
    if params.get("response_type") != "code":
        return "response_type must be code", redirect
    if params.get("code_challenge_method") != "S256" or len(params.get("code_challenge", "")) < 43:
        return "PKCE is required: code_challenge (S256) of 43+ characters", redirect
    return None, redirect


@router.get(
    "/oauth/authorize",
    response_class=HTMLResponse,
    summary="Authorization request: the sign-in form",
    responses={400: {"description": "Bad authorization request"}, 429: {"description": "Rate limited"}},
)
async def authorize_form(request: Request) -> Response:
    """The sign-in form of the authorization-code flow (PKCE S256 required)."""
    platform = platform_of(request)
    params = dict(request.query_params.items())
    error, _ = _authorize_params(params, platform)
    if error is not None:
        return HTMLResponse(f"<!doctype html><p>{html.escape(error)}</p>", 400)
    hidden = "".join(
        f'<input type="hidden" name="{k}" value="{html.escape(params[k], quote=True)}">'
        for k in _AUTHORIZE_KEYS
        if k in params
    )
    page = _LOGIN_PAGE.format(
        client=html.escape(params["client_id"]), scope=html.escape(params.get("scope", "")), hidden=hidden
    )
    return HTMLResponse(page)


@router.post(
    "/oauth/authorize",
    openapi_extra=_TOKEN_DOC,
    summary="Sign in; redirects with a code",
    responses={
        200: {"description": "The password was set by an administrator: the change-password form"},
        303: {"description": "Redirect to the client with code and state"},
        400: {"description": "Bad request"},
        401: {"description": "Bad credentials"},
        413: {"description": "Too large"},
        429: {"description": "Rate limited"},
    },
)
async def authorize(request: Request) -> Response:
    """Check the user's credentials and redirect to the client with a single-use code."""
    platform = platform_of(request)
    form = await _form(request)
    error, redirect = _authorize_params(form, platform)
    if error is not None:
        return HTMLResponse(f"<!doctype html><p>{html.escape(error)}</p>", 400)
    user = await run_in_threadpool(platform.accounts.authenticate, form.get("username", ""), form.get("password", ""))
    if user is None:
        await platform.record(
            None,
            "login",
            f"user:{form.get('username', '')[:80]}",
            outcome="denied",
            source=source_of(request),
            detail="bad credentials or disabled (authorize)",
        )
        return HTMLResponse("<!doctype html><p>Wrong user name or password.</p>", 401)
    if user.password_change_required:
        ticket = secrets.token_urlsafe(32)
        tickets: dict[str, _ChangeTicket] = platform.extra.setdefault("password_tickets", {})
        now = time.time()
        for stale in [k for k, t in tickets.items() if t.expires < now]:
            del tickets[stale]
        params = {k: form[k] for k in _AUTHORIZE_KEYS if k in form}  # not the password
        tickets[ticket] = _ChangeTicket(user.user_id, user.username, params, now + _TICKET_TTL_S)
        await platform.record(
            _user_principal(user),
            "login",
            f"user:{user.username}",
            outcome="denied",
            source=source_of(request),
            detail="password change required (change form shown)",
        )
        return _change_form(ticket, user.username)
    return _code_redirect(platform, form, redirect, user.user_id)


@router.post(
    "/oauth/authorize/password",
    openapi_extra=_TOKEN_DOC,
    summary="A required password change at sign-in; redirects with a code",
    responses={
        200: {"description": "The change form again, with the reason of the refusal"},
        303: {"description": "Password changed: redirect to the client with code and state"},
        400: {"description": "Unknown, used or expired ticket"},
        413: {"description": "Too large"},
        429: {"description": "Rate limited"},
    },
)
async def authorize_change_password(request: Request) -> Response:
    """Change the password that an administrator set (the form the sign-in answered with), then continue that
    sign-in. The ticket of the form ties the change to the sign-in that just checked the password; a refusal shows
    the form again with its reason, at most 5 times per ticket."""
    platform = platform_of(request)
    form = await _form(request)
    tickets: dict[str, _ChangeTicket] = platform.extra.setdefault("password_tickets", {})
    key = form.get("ticket", "")
    ticket = tickets.get(key)
    if ticket is None or ticket.expires < time.time() or ticket.tries <= 0:
        tickets.pop(key, None)
        return HTMLResponse("<!doctype html><p>This sign-in has expired; sign in again.</p>", 400)
    found = await run_in_threadpool(platform.accounts.user, ticket.user_id)
    error, redirect = _authorize_params(ticket.params, platform)
    if found is None or error is not None:
        tickets.pop(key, None)
        return HTMLResponse("<!doctype html><p>This sign-in can no longer continue; sign in again.</p>", 400)
    user, ticket.tries = found, ticket.tries - 1
    new, again = form.get("new_password", ""), form.get("new_password_again", "")
    refused: str | None = None
    ended = 0
    if new != again:
        refused = "the two new passwords differ"
    else:
        try:
            _, ended = await run_in_threadpool(
                platform.accounts.change_password, ticket.username, form.get("current_password", ""), new
            )
        except CurrentPasswordError:
            refused = "the current password is wrong"
        except MedtwinError as exc:  # the policy, or a reset meanwhile
            refused = str(exc)
    if refused is not None:
        await audit_password_change(request, user, refused=refused, how="sign-in form, required change")
        if ticket.tries <= 0:
            tickets.pop(key, None)
            return HTMLResponse(f"<!doctype html><p>{html.escape(refused)}. Too many tries: sign in again.</p>", 400)
        return _change_form(key, ticket.username, refused[:1].upper() + refused[1:] + ".")
    tickets.pop(key, None)
    await audit_password_change(request, user, ended=ended, how="sign-in form, required change")
    return _code_redirect(platform, ticket.params, redirect, user.user_id)


def _issuer_base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/.well-known/openid-configuration", summary="OpenID Connect discovery")
async def openid_configuration(request: Request) -> JSONBody:
    """Where the built-in issuer's endpoints and keys are."""
    platform = platform_of(request)
    base = _issuer_base(request)
    return JSONBody(
        {
            "issuer": platform.settings.issuer,
            "authorization_endpoint": f"{base}/oauth/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "grant_types_supported": ["password", "client_credentials", "refresh_token", "authorization_code"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        }
    )


@router.get("/.well-known/smart-configuration", summary="SMART App Launch configuration")
async def smart_configuration(request: Request) -> JSONBody:
    """SMART App Launch 2.0 discovery."""
    base = _issuer_base(request)
    return JSONBody(
        {
            "issuer": platform_of(request).settings.issuer,
            "authorization_endpoint": f"{base}/oauth/authorize",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": [
                "openid",
                "launch/patient",
                "offline_access",
                "patient/*.rs",
                "user/*.cruds",
                "system/Observation.c",
            ],
            "capabilities": [
                "launch-standalone",
                "client-public",
                "client-confidential-symmetric",
                "context-standalone-patient",
                "permission-patient",
                "permission-user",
                "permission-v2",
            ],
        }
    )


@router.get("/.well-known/jwks.json", summary="The issuer's public keys (JWKS)")
async def jwks(request: Request) -> JSONBody:
    """The public key that verifies the built-in issuer's tokens."""
    return JSONBody({"keys": [platform_of(request).tokens.key.jwk()]})
