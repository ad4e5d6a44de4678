"""OAuth2 bearer tokens: the built-in issuer (signed JWT access tokens, rotating refresh tokens) and their checks.

Access tokens are JWTs signed with ES256 (ECDSA P-256, RFC 7518 3.4) under the server's key, whose public half is
published as a JWKS. They carry what the policy needs (role, scopes, wards, care teams, launch patient), so an
authorised request costs no database lookup; a verified token is cached until it expires (one signature check per
token, not per request). Refresh tokens are random strings stored as SHA-256 digests in families (one family per
login): each refresh returns a new refresh token and marks the old one used; presenting a used one again revokes the
whole family (RFC 6819 5.2.2.3, OAuth 2.0 Security BCP 4.14: a stolen token is detected at its first reuse).
Logout revokes the family, and with it every access token of the session (``sid``). A session idle for longer than
``idle_timeout_s`` cannot be refreshed (HIPAA 164.312(a)(2)(iii) automatic logoff), and its access tokens never
outlive that timeout. Revocations are shared between server processes through the database, read again every
``revocation_refresh_s`` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, delete, insert, select, update

from medtwin.errors import MedtwinError
from medtwin.records import new_id
from medtwin.security.principal import Principal
from medtwin.security.scopes import ScopeSet, parse_scopes
from medtwin.store.access_tables import refresh_tokens, revoked_tokens, token_families

__all__ = ["SigningKey", "TokenError", "TokenService", "TokenSettings", "b64url", "principal_from_claims"]


class TokenError(MedtwinError):
    """A token request or a token that is refused: *error* is the OAuth2 error code, the message says why."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigningKey:
    """An ES256 signing key and its JWK; :meth:`load_or_create` keeps it in a PEM file readable by its owner only."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        numbers = self.public_key.public_numbers()
        self._x, self._y = numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")
        # RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order
        thumb = f'{{"crv":"P-256","kty":"EC","x":"{b64url(self._x)}","y":"{b64url(self._y)}"}}'
        self.kid = b64url(hashlib.sha256(thumb.encode()).digest())[:16]

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load_or_create(cls, path: str | Path) -> SigningKey:
        """The key in PEM file *path*, created (mode 0600) when missing."""
        path = Path(path)
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise TokenError("server_error", f"{path}: not an EC private key")
            return cls(key)
        made = cls.generate()
        pem = made.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return made

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 7517) for the JWKS endpoint."""
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(self._x),
            "y": b64url(self._y),
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
        }


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """The issuer's settings: *issuer* (its URL, the ``iss`` claim), *audience*, lifetimes in seconds."""

    issuer: str = "medtwin"
    audience: str = "medtwin"
    access_ttl_s: int = 900
    refresh_ttl_s: int = 12 * 3600
    idle_timeout_s: int = 900
    revocation_refresh_s: float = 2.0
    cache_size: int = 50_000


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def principal_from_claims(claims: dict[str, Any], *, role_claim: str = "role") -> Principal:
    """The :class:`Principal` a verified token's claims stand for.

    Raises
    ------
    TokenError
        A claim is missing or malformed (``invalid_token``).
    """
    subject = claims.get("sub")
    role = claims.get(role_claim)
    if isinstance(role, list):
        role = next((r for r in role if isinstance(r, str)), None)
    if not isinstance(subject, str) or not subject or not isinstance(role, str):
        raise TokenError("invalid_token", f"the token has no subject or no {role_claim!r} claim")
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    try:
        scopes = parse_scopes(str(scope))
    except MedtwinError as exc:
        raise TokenError("invalid_token", str(exc)) from None

    def names(key: str) -> frozenset[str]:
        value = claims.get(key, [])
        return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()

    patient = claims.get("patient")
    return Principal(
        subject=subject,
        role=role,
        scopes=scopes,
        patient=patient if isinstance(patient, str) else None,
        wards=names("wards"),
        teams=names("teams"),
        client_id=claims.get("client_id") if isinstance(claims.get("client_id"), str) else None,
        username=claims.get("preferred_username") if isinstance(claims.get("preferred_username"), str) else None,
        token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
        session_id=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
        expires=float(claims.get("exp", float("inf"))),
        issuer=str(claims.get("iss", "")),
    )


@dataclass(frozen=True, slots=True)
class _Grant:
    """What a session's tokens say about the caller."""

    subject: str
    role: str
    scope: ScopeSet
    username: str | None = None
    wards: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    client_id: str | None = None
    patient: str | None = None


class TokenService:
    """Issues, refreshes, revokes and verifies the built-in issuer's tokens (thread-safe).

    *lookup_user*: refresh re-reads the user (role, wards, teams, disabled) through it, so a change of role or a
    disabled account takes effect at the next refresh at the latest; it returns None for a user who may no longer
    log in.
    """

    def __init__(
        self,
        engine: Engine,
        key: SigningKey,
        settings: TokenSettings = TokenSettings(),
        *,
        lookup_user: Callable[[str], _Grant | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.key = key
        self.settings = settings
        self.lookup_user = lookup_user
        self.clock = clock
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._lock = threading.Lock()
        self._revoked: set[str] = set()
        self._revoked_read = -1e18
        self._pruned = -1e18

    # -- issuing ----------------------------------------------------------------------------------------------
    @staticmethod
    def grant(
        subject: str,
        role: str,
        scope: ScopeSet,
        *,
        username: str | None = None,
        wards: Sequence[str] = (),
        teams: Sequence[str] = (),
        client_id: str | None = None,
        patient: str | None = None,
    ) -> _Grant:
        """What tokens are issued for (the caller's identity and scopes)."""
        return _Grant(subject, role, scope, username, tuple(wards), tuple(teams), client_id, patient)

    def _access_token(self, grant: _Grant, session_id: str | None, now: float) -> tuple[str, int]:
        ttl = self.settings.access_ttl_s
        if session_id is not None:
            ttl = min(ttl, self.settings.idle_timeout_s)
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "sub": grant.subject,
            "iat": int(now),
            "exp": int(now) + ttl,
            "jti": new_id(),
            "role": grant.role,
            "scope": grant.scope.text(),
        }
        for name, value in (
            ("client_id", grant.client_id),
            ("patient", grant.patient),
            ("sid", session_id),
            ("preferred_username", grant.username),
        ):
            if value is not None:
                claims[name] = value
        if grant.wards:
            claims["wards"] = list(grant.wards)
        if grant.teams:
            claims["teams"] = list(grant.teams)
        token = jwt.encode(claims, self.key.private_key, algorithm="ES256", headers={"kid": self.key.kid})
        return token, ttl

    def _response(self, grant: _Grant, token: str, ttl: int, refresh: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": grant.scope.text(),
        }
        if refresh is not None:
            out["refresh_token"] = refresh
        if grant.patient is not None:
            out["patient"] = grant.patient
        return out

    def issue(self, grant: _Grant, *, refresh: bool = False) -> dict[str, Any]:
        """A token response (RFC 6749 5.1) for *grant*; with *refresh*, a new session with a refresh token."""
        now = self.clock()
        if not refresh:
            token, ttl = self._access_token(grant, None, now)
            return self._response(grant, token, ttl, None)
        family = new_id()
        refresh_token = secrets.token_urlsafe(32)
        at = datetime.fromtimestamp(now, UTC)
        with self.engine.begin() as conn:
            conn.execute(
                insert(token_families),
                {
                    "family_id": family,
                    "subject": grant.subject,
                    "client_id": grant.client_id,
                    "scope": grant.scope.text(),
                    "patient": grant.patient,
                    "created": at,
                    "last_used": at,
                    "expires": at + timedelta(seconds=self.settings.refresh_ttl_s),
                    "revoked": None,
                },
            )
            conn.execute(
                insert(refresh_tokens), {"token_hash": _hash(refresh_token), "family_id": family, "issued": at}
            )
        token, ttl = self._access_token(grant, family, now)
        return self._response(grant, token, ttl, refresh_token)

    def refresh(self, refresh_token: str, *, scope: str | None = None) -> tuple[dict[str, Any], str]:
        """Rotate *refresh_token*: new access and refresh tokens of the same session; returns them and the subject.

        Raises
        ------
        TokenError
            ``invalid_grant``: unknown, expired, idle or revoked session; a refresh token used before (the whole
            session is then revoked).
        """
        now = self.clock()
        at = datetime.fromtimestamp(now, UTC)
        with self.engine.begin() as conn:
            row = conn.execute(
                select(refresh_tokens.c.family_id, refresh_tokens.c.used).where(
                    refresh_tokens.c.token_hash == _hash(refresh_token)
                )
            ).first()
            if row is None:
                raise TokenError("invalid_grant", "unknown refresh token")
            family = conn.execute(select(token_families).where(token_families.c.family_id == row.family_id)).first()
            assert family is not None
            if family.revoked is not None:
                raise TokenError("invalid_grant", f"the session was ended ({family.revoked})")
            if row.used is not None:
                self._revoke_family(conn, family.family_id, "refresh token reused", family.expires)
                raise TokenError("invalid_grant", "refresh token already used: the session is revoked (possible theft)")
            if at > family.expires:
                raise TokenError("invalid_grant", "the session has expired; log in again")
            if (at - family.last_used).total_seconds() > self.settings.idle_timeout_s:
                self._revoke_family(conn, family.family_id, "idle", family.expires)
                raise TokenError("invalid_grant", "the session was idle too long and has ended; log in again")
            granted = parse_scopes(family.scope)
            wanted = granted if scope is None else parse_scopes(scope).narrowed_to(granted)
            grant = _Grant(family.subject, "", wanted, client_id=family.client_id, patient=family.patient)
            if self.lookup_user is not None:
                current = self.lookup_user(family.subject)
                if current is None:
                    self._revoke_family(conn, family.family_id, "account disabled", family.expires)
                    raise TokenError("invalid_grant", "the account can no longer log in")
                grant = _Grant(
                    family.subject,
                    current.role,
                    wanted,
                    current.username,
                    current.wards,
                    current.teams,
                    family.client_id,
                    family.patient,
                )
            new_refresh = secrets.token_urlsafe(32)
            conn.execute(
                update(refresh_tokens).where(refresh_tokens.c.token_hash == _hash(refresh_token)).values(used=at)
            )
            conn.execute(
                insert(refresh_tokens), {"token_hash": _hash(new_refresh), "family_id": family.family_id, "issued": at}
            )
            conn.execute(
                update(token_families).where(token_families.c.family_id == family.family_id).values(last_used=at)
            )
        token, ttl = self._access_token(grant, family.family_id, now)
        return self._response(grant, token, ttl, new_refresh), family.subject

    def _revoke_family(self, conn: Any, family_id: str, why: str, expires: datetime) -> None:
        conn.execute(update(token_families).where(token_families.c.family_id == family_id).values(revoked=why))
        exists = conn.execute(select(revoked_tokens.c.token_id).where(revoked_tokens.c.token_id == family_id)).first()
        if exists is None:
            conn.execute(insert(revoked_tokens), {"token_id": family_id, "expires": expires})
        with self._lock:
            self._revoked.add(family_id)

    def revoke(self, token: str) -> str | None:
        """Log out: revoke *token* (RFC 7009: a refresh token ends its session; an access token is revoked with its
        session). Returns the subject whose token it was, or None for a token this issuer does not know (which
        RFC 7009 2.2 answers with success all the same)."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(refresh_tokens.c.family_id).where(refresh_tokens.c.token_hash == _hash(token))
            ).first()
            if row is not None:
                family = conn.execute(select(token_families).where(token_families.c.family_id == row.family_id)).one()
                self._revoke_family(conn, family.family_id, "logout", family.expires)
                return str(family.subject)
        try:
            principal = self.verify(token)
        except TokenError:
            return None
        with self.engine.begin() as conn:
            expires = datetime.fromtimestamp(principal.expires, UTC)
            if principal.token_id is not None:
                conn.execute(insert(revoked_tokens), {"token_id": principal.token_id, "expires": expires})
                with self._lock:
                    self._revoked.add(principal.token_id)
            if principal.session_id is not None:
                session = conn.execute(
                    select(token_families).where(token_families.c.family_id == principal.session_id)
                ).first()
                if session is not None and session.revoked is None:
                    self._revoke_family(conn, session.family_id, "logout", session.expires)
        with self._lock:
            self._cache.pop(token, None)
        return principal.subject

    def revoke_ids(self, ids: Sequence[str], expires: datetime) -> None:
        """Revoke token or session ids of another issuer (an external issuer's token at logout) until *expires*;
        :meth:`is_revoked` then says so in every server process (they share the revocation table)."""
        with self.engine.begin() as conn:
            for token_id in ids:
                seen = conn.execute(select(revoked_tokens.c.token_id).where(revoked_tokens.c.token_id == token_id))
                if seen.first() is None:
                    conn.execute(insert(revoked_tokens), {"token_id": token_id, "expires": expires})
        with self._lock:
            self._revoked.update(ids)

    def is_revoked(self, ids: Sequence[str]) -> bool:
        """True when one of *ids* was revoked (:meth:`revoke_ids`), as far as this process knows (2 s)."""
        self._refresh_revocations(self.clock())
        revoked = self._revoked
        return any(i in revoked for i in ids)

    # -- verifying --------------------------------------------------------------------------------------------
    def _refresh_revocations(self, now: float) -> None:
        if now - self._revoked_read < self.settings.revocation_refresh_s:
            return
        at = datetime.fromtimestamp(now, UTC)
        if now - self._pruned > 600:  # forget revocations of tokens long expired (a write: rarely)
            self._pruned = now
            with self.engine.begin() as conn:
                conn.execute(delete(revoked_tokens).where(revoked_tokens.c.expires < at - timedelta(hours=1)))
        with self.engine.connect() as conn:
            ids = {str(t) for t in conn.execute(select(revoked_tokens.c.token_id)).scalars()}
        with self._lock:
            self._revoked = ids | self._revoked
            self._revoked_read = now

    def _revoked_principal(self, principal: Principal) -> bool:
        revoked = self._revoked
        return principal.token_id in revoked or (principal.session_id is not None and principal.session_id in revoked)

    def verify(self, token: str) -> Principal:
        """The :class:`Principal` of a valid access token of this issuer (cached until it expires).

        Raises
        ------
        TokenError
            ``invalid_token``: bad signature, wrong issuer or audience, expired, revoked, malformed.
        """
        now = self.clock()
        self._refresh_revocations(now)
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires <= now:
                with self._lock:
                    self._cache.pop(token, None)
                raise TokenError("invalid_token", "the access token has expired")
            if self._revoked_principal(cached):
                raise TokenError("invalid_token", "the access token was revoked")
            return cached
        try:
            claims = jwt.decode(
                token,
                self.key.public_key,
                algorithms=["ES256"],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                options={"require": ["exp", "iat", "sub", "jti"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token", f"the access token is not valid ({exc})") from None
        principal = principal_from_claims(claims)
        if principal.expires <= now:
            raise TokenError("invalid_token", "the access token has expired")
        if self._revoked_principal(principal):
            raise TokenError("invalid_token", "the access token was revoked")
        with self._lock:
            self._cache[token] = principal
            if len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        return principal
