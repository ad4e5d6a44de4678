"""The server's parts in one explicit object: store, accounts, tokens, policy, audit trail and live events.

:class:`ServerSettings` says how the server runs; :class:`Platform` opens what they name and is handed to the
FastAPI application (:func:`medtwin.server.app.create_app`), never reached through a global.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from medtwin.security.accounts import Accounts
from medtwin.security.audit import AuditEvent, AuditTrail
from medtwin.security.oidc import OidcSettings, OidcVerifier
from medtwin.security.policy import Policy
from medtwin.security.principal import Principal
from medtwin.security.scopes import parse_scopes
from medtwin.security.tokens import SigningKey, TokenError, TokenService, TokenSettings
from medtwin.store import Store, schema
from medtwin.store.engine import is_memory_url, sqlite_file

__all__ = ["UNSECURED", "Platform", "ServerSettings", "StoreFacts", "default_jwt_key_path", "external_token_ids"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How the API server runs.

    *security* False turns authentication, authorization and audit off (benchmarks only: every caller is
    :data:`UNSECURED`). *issuer*: the built-in issuer's URL (``iss``). *jwt_key_path*: its ES256 key (default:
    beside a SQLite database, ``<db>.jwt-key.pem``; generated, mode 0600). *oidc*: also trust this external
    OpenID Connect issuer (and offer the web app's sign-in with it when it names a client id). *audit_key_path*:
    the audit chain's signing key (default: the audit module's). *cors_origins*: origins allowed by CORS (none by
    default).
    *audit_window_s*: audit events of concurrent requests are gathered this long and appended in one transaction
    of the chain (each request is still answered only after its event is committed; 0: no gathering).
    """

    security: bool = True
    issuer: str = "medtwin"
    audience: str = "medtwin"
    jwt_key_path: str | None = None
    access_ttl_s: int = 900
    refresh_ttl_s: int = 12 * 3600
    idle_timeout_s: int = 900
    oidc: OidcSettings | None = None
    audit_key_path: str | None = None
    max_body_bytes: int = 16 << 20
    rate_per_s: float | None = 50.0
    rate_burst: int = 100
    cors_origins: tuple[str, ...] = ()
    https: bool = False
    stream_poll_s: float = 0.2
    policy_ttl_s: float = 30.0
    audit_window_s: float = 0.01
    argon2_time_cost: int | None = None
    argon2_memory_kib: int | None = None


UNSECURED = Principal(subject="unsecured", role="admin", scopes=parse_scopes("system/*.cruds"))
"""The caller of every request when security is off (benchmark baseline)."""


class StoreFacts:
    """What the policy needs to know about a patient, read from the store: care teams, ward, consents."""

    def __init__(self, store: Store, accounts: Accounts) -> None:
        self.store = store
        self.accounts = accounts

    def care_of(self, patient_id: str) -> tuple[frozenset[str], str | None]:
        """The patient's care teams, and the unit of the last location of their open encounter."""
        teams = self.accounts.teams_of(patient_id)
        e = schema.encounters
        stmt = (
            select(e.c.body).where(e.c.patient_id == patient_id, e.c.end.is_(None)).order_by(e.c.start.desc()).limit(1)
        )
        with self.store.engine.connect() as conn:
            body = conn.execute(stmt).scalar()
        ward = None
        if body is not None:
            locations = orjson.loads(body).get("locations") or []
            if locations:
                ward = locations[-1].get("unit")
        return teams, ward

    def consents(self, patient_id: str) -> Sequence[Mapping[str, Any]]:
        """The patient's Consent resources (kept whole as FHIR JSON)."""
        t = schema.fhir_resources
        stmt = select(t.c.body).where(t.c.resource_type == "Consent", t.c.patient_id == patient_id)
        with self.store.engine.connect() as conn:
            bodies = list(conn.execute(stmt).scalars())
        opened = (self.store.keys.open_text(b) for b in bodies)  # kept resources are sealed at rest
        return [orjson.loads(b) for b in opened if b is not None]


def _unverified_issuer(token: str) -> str | None:
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


def external_token_ids(token: str, principal: Principal) -> list[str]:
    """The revocation ids of an external issuer's access token: a digest of the token itself, and its session at
    the issuer (``sid``) when it names one (so tokens the issuer refreshes in that session are refused too)."""
    ids = ["ext:" + hashlib.sha256(token.encode()).hexdigest()[:40]]
    if principal.session_id:
        session = f"{principal.issuer} {principal.session_id}".encode()
        ids.append("ext-sid:" + hashlib.sha256(session).hexdigest()[:40])
    return ids


def default_jwt_key_path(store: Store) -> Path | None:
    """Where the token signing key of *store* lives when none is configured: ``$MEDTWIN_JWT_KEY_FILE``; beside a
    SQLite file (``<database>.jwt-key.pem``); ``~/.config/medtwin/jwt-<hash of the URL>.pem`` for a server
    database; None (a key for this process only) for an in-memory database."""
    env = os.environ.get("MEDTWIN_JWT_KEY_FILE")
    if env:
        return Path(env)
    if is_memory_url(store.url):
        return None
    path = sqlite_file(store.url)
    if path is not None:
        return Path(str(path) + ".jwt-key.pem")
    digest = hashlib.sha256(store.url.encode()).hexdigest()[:12]
    folder = Path.home() / ".config" / "medtwin"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"jwt-{digest}.pem"


@dataclass
class Platform:
    """The server's parts. Build it with :meth:`open`; :meth:`close` closes what it opened."""

    settings: ServerSettings
    store: Store
    accounts: Accounts
    tokens: TokenService
    policy: Policy
    audit: AuditTrail | None
    oidc: OidcVerifier | None = None
    owns_store: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    _pending: list[tuple[AuditEvent, asyncio.Future[int]]] = field(default_factory=list, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    @classmethod
    def open(
        cls,
        settings: ServerSettings,
        store: Store | str | None = None,
        *,
        audit: AuditTrail | None = None,
        oidc: OidcVerifier | None = None,
    ) -> Platform:
        """Open the store (a :class:`Store`, a URL, or None for the configured one) and the parts over it."""
        owns = not isinstance(store, Store)
        opened = store if isinstance(store, Store) else Store(store)
        try:
            hasher = None
            if settings.argon2_time_cost is not None or settings.argon2_memory_kib is not None:
                from argon2 import PasswordHasher

                hasher = PasswordHasher(
                    time_cost=settings.argon2_time_cost or 3, memory_cost=settings.argon2_memory_kib or 65536
                )
            accounts = Accounts(opened.engine, hasher=hasher)
            key_path = settings.jwt_key_path or default_jwt_key_path(opened)
            key = SigningKey.load_or_create(key_path) if key_path else SigningKey.generate()
            token_settings = TokenSettings(
                issuer=settings.issuer,
                audience=settings.audience,
                access_ttl_s=settings.access_ttl_s,
                refresh_ttl_s=settings.refresh_ttl_s,
                idle_timeout_s=settings.idle_timeout_s,
            )

            def lookup(subject: str) -> Any:
                user = accounts.user(subject)
                if user is None or user.disabled:
                    return None
                return TokenService.grant(
                    user.user_id,
                    user.role,
                    parse_scopes(""),
                    username=user.username,
                    wards=user.wards,
                    teams=user.teams,
                )

            tokens = TokenService(opened.engine, key, token_settings, lookup_user=lookup)
            policy = Policy(StoreFacts(opened, accounts), ttl_s=settings.policy_ttl_s)
            if audit is None and settings.security:
                audit = AuditTrail(opened, settings.audit_key_path)
            if oidc is None and settings.oidc is not None:
                oidc = OidcVerifier.from_settings(settings.oidc)
        except BaseException:
            if owns:
                opened.close()
            raise
        return cls(settings, opened, accounts, tokens, policy, audit if settings.security else None, oidc, owns)

    def verify(self, token: str) -> Principal:
        """The caller a bearer token stands for (built-in issuer, or the trusted external OIDC issuer).

        Raises
        ------
        TokenError
            The token is not valid.
        """
        if self.oidc is not None and _unverified_issuer(token) == self.oidc.issuer:
            principal = self.oidc.verify(token)
            if self.tokens.is_revoked(external_token_ids(token, principal)):
                raise TokenError("invalid_token", "the access token was revoked (signed out)")
            return principal
        return self.tokens.verify(token)

    def revoke_external(self, token: str, principal: Principal) -> None:
        """Sign-out of an external issuer's user: refuse this access token, and the other tokens of its session at
        that issuer (``sid``), from now until it expires (the issuer itself may still honour them elsewhere)."""
        expires = datetime.fromtimestamp(min(principal.expires, 4e9), UTC)
        self.tokens.revoke_ids(external_token_ids(token, principal), expires)

    async def record(
        self,
        principal: Principal | None,
        action: str,
        resource: str,
        *,
        patient_id: str | None = None,
        outcome: str = "success",
        source: str = "",
        purpose: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append an audit event (durable before this returns: the request is answered after it)."""
        if self.audit is None:
            return
        event = AuditEvent(
            time=datetime.now(UTC),
            actor=principal.subject if principal is not None else "anonymous",
            role=principal.role if principal is not None else "none",
            action=action,
            resource=resource,
            patient_id=patient_id,
            outcome=outcome,
            source=source,
            purpose=purpose,
            detail=detail,
        )
        if self.settings.audit_window_s <= 0:
            await self.audit.arecord(event)
            return
        # Gather the events of concurrent requests for a few milliseconds, then hand them to the chain's writer
        # together: one transaction (one signature, one sync) for all of them. A transaction costs about 1 ms of CPU
        # and an event 0.03 ms (bench/api_load.py, docs/benchmarks.md), so small batches made audit the largest
        # cost of a read.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        self._pending.append((event, waiter))
        if len(self._pending) >= 256:
            self._flush_audit()
        elif len(self._pending) == 1:
            loop.call_later(self.settings.audit_window_s, self._flush_audit)
        await waiter

    def _flush_audit(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._append(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _append(self, batch: list[tuple[AuditEvent, asyncio.Future[int]]]) -> None:
        assert self.audit is not None
        try:  # one unit for the writer: one transaction, one future, one wake-up of this loop
            seqs = await asyncio.wrap_future(self.audit.record_many_nowait([event for event, _ in batch]))
        except Exception as exc:  # the requests that wait for it fail: nothing is answered unaudited
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            for (_, waiter), seq in zip(batch, seqs, strict=True):
                if not waiter.done():  # a request cancelled meanwhile (its client went away)
                    waiter.set_result(seq)

    def close(self) -> None:
        """Flush and close the audit trail; close the store when this platform opened it."""
        if self.audit is not None:
            self.audit.close()
        if self.owns_store:
            self.store.close()
