"""Authentication and authorization of one request, and the audit record of what it did.

* :func:`caller`: the bearer token (``Authorization: Bearer``; the live-stream endpoints also take
  ``?access_token=`` because browsers cannot set headers on EventSource and WebSocket) verified into a
  :class:`~medtwin.security.Principal`; a missing or bad token is 401 and audited (a valid external token of a
  user with no medtwin role: 403).
* :func:`require`: the role and scopes permit the interaction on the type at all, else 403 (it depends on the
  token only, so it tells nothing about any patient).
* :func:`patient_access`: the decision for one patient; a denial is answered exactly as a missing resource (404),
  so a caller cannot learn whether a patient exists. A break-glass access (header ``X-Break-Glass-Reason``) is
  audited with action ``break-glass`` and flagged for review.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from medtwin.security.policy import Access
from medtwin.security.principal import Principal
from medtwin.security.tokens import TokenError
from medtwin.server.errors import ApiError, not_found
from medtwin.server.platform import UNSECURED, Platform

__all__ = ["BREAK_GLASS_HEADER", "bearer_scheme", "caller", "patient_access", "platform_of", "require", "source_of"]

BREAK_GLASS_HEADER = "x-break-glass-reason"
bearer_scheme = HTTPBearer(auto_error=False, description="An access token of medtwin's issuer or the trusted OIDC one")


def platform_of(conn: HTTPConnection) -> Platform:
    """The :class:`Platform` of the application serving *conn*."""
    platform: Platform = conn.app.state.platform
    return platform


def source_of(conn: HTTPConnection) -> str:
    """The caller's network address, for the audit record."""
    client = conn.client
    return f"{client.host}:{client.port}" if client else ""


def _token(conn: HTTPConnection, *, query_token: bool) -> str | None:
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    if query_token:
        return conn.query_params.get("access_token")
    return None


async def authenticate(conn: HTTPConnection, *, query_token: bool = False) -> Principal:
    """The verified caller of *conn*; raises 401 (audited) without a valid token."""
    platform = platform_of(conn)
    if not platform.settings.security:
        return UNSECURED
    token = _token(conn, query_token=query_token)
    challenge = {"WWW-Authenticate": 'Bearer realm="medtwin"'}
    if token is None:
        await platform.record(
            None, "denied", conn.url.path, outcome="denied", source=source_of(conn), detail="no bearer token"
        )
        raise ApiError(
            401, "unauthorized", "a bearer token is required (Authorization: Bearer <token>)", headers=challenge
        )
    try:
        return platform.verify(token)
    except TokenError as exc:
        await platform.record(
            None, "denied", conn.url.path, outcome="denied", source=source_of(conn), detail=f"{exc.error}: {exc}"
        )
        # a valid token of a user the external issuer knows but who has no medtwin role: 403 (RFC 6750 3.1)
        status = 403 if exc.error == "insufficient_scope" else 401
        raise ApiError(
            status, exc.error, str(exc), headers={"WWW-Authenticate": f'Bearer realm="medtwin", error="{exc.error}"'}
        ) from None


async def caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)
) -> Principal:
    """FastAPI dependency: the verified caller (header token only; *credentials* documents the bearer scheme in
    OpenAPI, the header itself is read by :func:`authenticate`)."""
    return await authenticate(request)


async def require(request: HTTPConnection, principal: Principal, resource: str, action: str, what: str) -> None:
    """403 (audited) unless *principal*'s role and scopes permit *action* on *resource*; *what* names the target
    for the audit record (``Observation?patient=...``)."""
    platform = platform_of(request)
    if not platform.settings.security or platform.policy.may(principal, resource, action):
        return
    await platform.record(
        principal,
        "denied",
        what,
        outcome="denied",
        source=source_of(request),
        detail=f"role/scope: {resource}.{action}",
    )
    raise ApiError(
        403,
        "forbidden",
        f"your role ({principal.role}) and token scopes do not permit "
        f"{_ACTION_NAMES.get(action, action)} on {resource}",
    )


_ACTION_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


async def patient_access(
    request: HTTPConnection,
    principal: Principal,
    patient_id: str,
    resource: str,
    action: str,
    what: str,
    *,
    raise_denied: bool = True,
    audit_denied: bool = True,
) -> Access | None:
    """The decision for *principal* on patient *patient_id*; a denial is audited (unless not *audit_denied*: the
    patients a list leaves out) and answered as *what* not found (or returned as None when not *raise_denied*:
    search results are filtered instead)."""
    platform = platform_of(request)
    if not platform.settings.security:
        return Access(True, "security off")
    reason = request.headers.get(BREAK_GLASS_HEADER)
    access = platform.policy.patient_access(
        principal, patient_id, resource, action, at=datetime.now(UTC), break_glass=reason.strip() if reason else None
    )
    if not access.allowed:
        if audit_denied:
            await platform.record(
                principal,
                "denied",
                what,
                patient_id=patient_id,
                outcome="denied",
                source=source_of(request),
                detail=access.reason,
            )
        if raise_denied:
            raise not_found(what)
        return None
    if access.break_glass:
        await platform.record(
            principal,
            "break-glass",
            what,
            patient_id=patient_id,
            source=source_of(request),
            purpose=reason,
            detail="flagged for review: access outside the care relationship",
        )
    return access
