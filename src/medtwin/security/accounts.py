"""Users, clients and care teams, kept in the store's database (tables of :mod:`medtwin.store.access_tables`).

Passwords and client secrets are hashed with argon2id (RFC 9106; argon2-cffi's defaults: t=3, m=64 MiB, p=4), so
a copy of the database yields no password. A user has one role (:data:`ROLES`), the wards and care teams whose
patients they look after; a client (device, service, browser app) has a role, the scopes it may be granted and,
for the authorization-code flow, its registered redirect URIs.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from medtwin.errors import MedtwinError, ValidationError
from medtwin.records import new_id
from medtwin.security.scopes import parse_scopes
from medtwin.store.access_tables import care_team_patients, clients, revoked_tokens, token_families, users

__all__ = ["ROLES", "AccountError", "Accounts", "Client", "User"]

ROLES = ("admin", "clinician", "nurse", "pharmacist", "researcher", "device")
"""The roles of medtwin's policy (docs/security.md, "Roles")."""


class AccountError(MedtwinError):
    """An account operation that cannot be done (unknown user, duplicate name, bad role)."""


@dataclass(frozen=True, slots=True)
class User:
    """A person who logs in (no password hash: it never leaves :class:`Accounts`)."""

    user_id: str
    username: str
    role: str
    wards: tuple[str, ...]
    teams: tuple[str, ...]
    disabled: bool
    created: datetime


@dataclass(frozen=True, slots=True)
class Client:
    """A registered OAuth client; *confidential* when it has a secret."""

    client_id: str
    role: str
    scopes: str
    redirect_uris: tuple[str, ...]
    disabled: bool
    confidential: bool


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValidationError(f"role {role!r} is not one of {', '.join(ROLES)}")


def _names(what: str, names: Sequence[str]) -> list[str]:
    """Ward or care-team names: non-empty, at most 80 characters, no duplicates (order kept)."""
    out: list[str] = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or len(name) > 80:
            raise ValidationError(f"{what}[{i}]: {name!r} is not a name (1 to 80 characters)")
        if name.strip() not in out:
            out.append(name.strip())
    return out


class Accounts:
    """Users, clients and care-team membership in the database behind *engine*.

    *hasher*: the argon2id hasher (tests pass a cheaper one; hashes record their own parameters, so any hasher
    verifies any hash).
    """

    def __init__(self, engine: Engine, *, hasher: PasswordHasher | None = None) -> None:
        self.engine = engine
        self.hasher = hasher or PasswordHasher()
        # verifying against this keeps a login for an unknown name as slow as one for a known name
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    # -- users ------------------------------------------------------------------------------------------------
    def add_user(
        self, username: str, password: str, role: str, *, wards: Sequence[str] = (), teams: Sequence[str] = ()
    ) -> User:
        """Create a user; raises :class:`AccountError` when the name is taken."""
        _check_role(role)
        if not username or len(username) > 200:
            raise ValidationError("username: 1 to 200 characters")
        if len(password) < 8:
            raise ValidationError("password: at least 8 characters")
        row = {
            "user_id": new_id(),
            "username": username,
            "password_hash": self.hasher.hash(password),
            "role": role,
            "wards": json.dumps(_names("wards", wards)),
            "teams": json.dumps(_names("teams", teams)),
            "disabled": False,
            "created": datetime.now(UTC),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(users), row)
        except IntegrityError:
            raise AccountError(f"a user named {username!r} already exists") from None
        return self._user(row)

    @staticmethod
    def _user(row: object) -> User:
        get = row.__getitem__ if isinstance(row, dict) else row._mapping.__getitem__  # type: ignore[attr-defined]
        return User(
            user_id=get("user_id"),
            username=get("username"),
            role=get("role"),
            wards=tuple(json.loads(get("wards"))),
            teams=tuple(json.loads(get("teams"))),
            disabled=bool(get("disabled")),
            created=get("created"),
        )

    def users(self) -> list[User]:
        """Every user, by name."""
        with self.engine.connect() as conn:
            return [self._user(r) for r in conn.execute(select(users).order_by(users.c.username))]

    def user(self, username_or_id: str) -> User | None:
        """The user with this name or id, or None."""
        stmt = select(users).where((users.c.username == username_or_id) | (users.c.user_id == username_or_id))
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else self._user(row)

    def set_disabled(self, username: str, disabled: bool = True) -> User:
        """Disable (or enable again) a user; raises :class:`AccountError` for an unknown name."""
        with self.engine.begin() as conn:
            done = conn.execute(update(users).where(users.c.username == username).values(disabled=disabled))
        if done.rowcount == 0:
            raise AccountError(f"no user named {username!r}")
        found = self.user(username)
        assert found is not None
        return found

    def update_user(
        self,
        username: str,
        *,
        role: str | None = None,
        wards: Sequence[str] | None = None,
        teams: Sequence[str] | None = None,
    ) -> User:
        """Change a user's role, wards or care teams (None: unchanged); raises :class:`AccountError` for an unknown
        name. Tokens already issued keep the claims they were issued with until they expire or are refreshed."""
        values: dict[str, object] = {}
        if role is not None:
            _check_role(role)
            values["role"] = role
        for name, names in (("wards", wards), ("teams", teams)):
            if names is not None:
                values[name] = json.dumps(_names(name, names))
        if not values:
            raise ValidationError("nothing to change: give a role, wards or teams")
        with self.engine.begin() as conn:
            done = conn.execute(update(users).where(users.c.username == username).values(**values))
        if done.rowcount == 0:
            raise AccountError(f"no user named {username!r}")
        found = self.user(username)
        assert found is not None
        return found

    def set_password(self, username: str, password: str) -> tuple[User, int]:
        """Replace a user's password (argon2id hash, as :meth:`add_user`) and end every session of the user: their
        refresh tokens are revoked and their sessions' access tokens listed as revoked (the token service rejects
        them within its revocation refresh, 2 s). Returns the user and how many sessions were ended.

        Raises
        ------
        AccountError
            No user with this name.
        ValidationError
            A password under 8 characters.
        """
        if len(password) < 8:
            raise ValidationError("password: at least 8 characters")
        password_hash = self.hasher.hash(password)
        with self.engine.begin() as conn:
            row = conn.execute(select(users.c.user_id).where(users.c.username == username)).first()
            if row is None:
                raise AccountError(f"no user named {username!r}")
            conn.execute(update(users).where(users.c.user_id == row.user_id).values(password_hash=password_hash))
            live = conn.execute(
                select(token_families.c.family_id, token_families.c.expires).where(
                    (token_families.c.subject == row.user_id) & token_families.c.revoked.is_(None)
                )
            ).all()
            for family_id, expires in live:
                conn.execute(
                    update(token_families)
                    .where(token_families.c.family_id == family_id)
                    .values(revoked="password reset")
                )
                listed = select(revoked_tokens.c.token_id).where(revoked_tokens.c.token_id == family_id)
                if conn.execute(listed).first() is None:
                    conn.execute(insert(revoked_tokens), {"token_id": family_id, "expires": expires})
        found = self.user(username)
        assert found is not None
        return found, len(live)

    def authenticate(self, username: str, password: str) -> User | None:
        """The enabled user whose password this is, or None (unknown name, wrong password, disabled: alike)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).first()
        stored = self._dummy_hash if row is None else row.password_hash
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled:
            return None
        return self._user(row)

    # -- clients ----------------------------------------------------------------------------------------------
    def add_client(
        self,
        client_id: str,
        role: str,
        scopes: str,
        *,
        redirect_uris: Sequence[str] = (),
        public: bool = False,
    ) -> tuple[Client, str | None]:
        """Register a client; returns it and its secret (shown once; None for a *public* client)."""
        _check_role(role)
        parse_scopes(scopes)  # refuse a malformed scope now, not at the first token request
        if not client_id or len(client_id) > 200:
            raise ValidationError("client id: 1 to 200 characters")
        secret = None if public else secrets.token_urlsafe(32)
        row = {
            "client_id": client_id,
            "secret_hash": None if secret is None else self.hasher.hash(secret),
            "role": role,
            "scopes": scopes,
            "redirect_uris": json.dumps(list(redirect_uris)),
            "disabled": False,
            "created": datetime.now(UTC),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(clients), row)
        except IntegrityError:
            raise AccountError(f"a client {client_id!r} already exists") from None
        return Client(client_id, role, scopes, tuple(redirect_uris), False, secret is not None), secret

    def client(self, client_id: str) -> Client | None:
        """The registered client, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(clients).where(clients.c.client_id == client_id)).first()
        if row is None:
            return None
        return Client(
            row.client_id,
            row.role,
            row.scopes,
            tuple(json.loads(row.redirect_uris)),
            bool(row.disabled),
            row.secret_hash is not None,
        )

    def authenticate_client(self, client_id: str, secret: str) -> Client | None:
        """The enabled confidential client with this secret, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(clients).where(clients.c.client_id == client_id)).first()
        stored = self._dummy_hash if row is None or row.secret_hash is None else row.secret_hash
        try:
            self.hasher.verify(stored, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled or row.secret_hash is None:
            return None
        return self.client(client_id)

    # -- care teams -------------------------------------------------------------------------------------------
    def assign(self, team: str, patient_id: str) -> None:
        """Put *patient_id* in the care of *team* (idempotent)."""
        if not team or not patient_id:
            raise ValidationError("care team and patient id are required")
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(care_team_patients.c.team).where(
                    care_team_patients.c.team == team, care_team_patients.c.patient_id == patient_id
                )
            ).first()
            if exists is None:
                conn.execute(insert(care_team_patients), {"team": team, "patient_id": patient_id})

    def unassign(self, team: str, patient_id: str) -> None:
        """Take *patient_id* out of *team*'s care."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(care_team_patients).where(
                    care_team_patients.c.team == team, care_team_patients.c.patient_id == patient_id
                )
            )

    def teams_of(self, patient_id: str) -> frozenset[str]:
        """The care teams looking after *patient_id*."""
        stmt = select(care_team_patients.c.team).where(care_team_patients.c.patient_id == patient_id)
        with self.engine.connect() as conn:
            return frozenset(str(t) for t in conn.execute(stmt).scalars())

    def patients_of(self, teams: Sequence[str]) -> frozenset[str]:
        """The patients in the care of any of *teams*."""
        if not teams:
            return frozenset()
        stmt = select(care_team_patients.c.patient_id).where(care_team_patients.c.team.in_(list(teams)))
        with self.engine.connect() as conn:
            return frozenset(str(p) for p in conn.execute(stmt).scalars())
