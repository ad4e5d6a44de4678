"""Users, clients and care teams, kept in the store's database (tables of :mod:`medtwin.store.access_tables`).

Passwords and client secrets are hashed with argon2id (RFC 9106; argon2-cffi's defaults: t=3, m=64 MiB, p=4), so
a copy of the database yields no password. A user has one role (:data:`ROLES`), the wards and care teams whose
patients they look after; a client (device, service, browser app) has a role, the scopes it may be granted and,
for the authorization-code flow, its registered redirect URIs.

Passwords follow NIST SP 800-63B section 5.1.1.2 (memorized secrets, :func:`check_password`): 8 to 256 characters
of any kind, not the user name, a new one not the current one, and no composition rule (no "one digit, one
capital"), because such rules make passwords more predictable, not stronger. A password an administrator sets
(``medtwin users add/passwd``, the web app's administration) can be marked *password_change_required*: the built-in
issuer then issues no token until the user has chosen their own with :meth:`Accounts.change_password`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from medtwin.errors import MedtwinError, ValidationError
from medtwin.records import new_id
from medtwin.security.scopes import parse_scopes
from medtwin.store.access_tables import care_team_patients, clients, revoked_tokens, token_families, users

__all__ = [
    "PASSWORD_MAX_CHARS",
    "PASSWORD_MIN_CHARS",
    "PASSWORD_RULE",
    "ROLES",
    "AccountError",
    "Accounts",
    "Client",
    "CurrentPasswordError",
    "PasswordPolicyError",
    "User",
    "check_password",
]

ROLES = ("admin", "clinician", "nurse", "pharmacist", "researcher", "device")
"""The roles of medtwin's policy (docs/security.md, "Roles")."""


PASSWORD_MIN_CHARS = 8
"""The shortest password accepted (NIST SP 800-63B 5.1.1.2: at least 8 characters when the user chooses it)."""
PASSWORD_MAX_CHARS = 256
"""The longest (NIST: allow at least 64; the cap bounds the hashing work one request can ask for)."""
PASSWORD_RULE = (
    f"a password needs {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters of any kind (letters, digits, spaces, "
    "symbols; no other rule) and must not be the user name or, when changed, the current password"
)
"""The password policy in words, repeated in every refusal so that the user learns the whole rule at once."""


class AccountError(MedtwinError):
    """An account operation that cannot be done (unknown user, duplicate name, bad role)."""


class PasswordPolicyError(ValidationError):
    """A password the policy (:func:`check_password`) refuses; the message names the rule broken and the policy."""


class CurrentPasswordError(AccountError):
    """The current password given to :meth:`Accounts.change_password` is wrong (or the account is unknown or
    disabled: alike, so that the answer tells nothing about which names exist)."""


def check_password(password: str, *, username: str, current: str | None = None) -> None:
    """Check *password* against the policy (NIST SP 800-63B 5.1.1.2); raises :class:`PasswordPolicyError`.

    Length is counted in characters (Unicode code points), so a password of accented letters or another script is
    measured as the user sees it. *username* is refused as a password whatever its case; *current* (the password
    being replaced, when known) is refused as the new one.
    """
    if not isinstance(password, str):
        raise PasswordPolicyError(f"password: a text is required; {PASSWORD_RULE}")
    n = len(password)
    if n < PASSWORD_MIN_CHARS:
        raise PasswordPolicyError(
            f"password: at least {PASSWORD_MIN_CHARS} characters are needed, this one has {n}; {PASSWORD_RULE}"
        )
    if n > PASSWORD_MAX_CHARS:
        raise PasswordPolicyError(
            f"password: at most {PASSWORD_MAX_CHARS} characters, this one has {n}; {PASSWORD_RULE}"
        )
    if password.casefold() == username.casefold():
        raise PasswordPolicyError(f"password: this is the user name (in some case), which is refused; {PASSWORD_RULE}")
    if current is not None and password == current:
        raise PasswordPolicyError(f"password: the new password is the current one, which is refused; {PASSWORD_RULE}")


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
    password_change_required: bool = False
    """Set when an administrator set the password: no token is issued until the user has changed it."""


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
        self,
        username: str,
        password: str,
        role: str,
        *,
        wards: Sequence[str] = (),
        teams: Sequence[str] = (),
        password_change_required: bool = False,
    ) -> User:
        """Create a user; raises :class:`AccountError` when the name is taken and :class:`PasswordPolicyError` for a
        password the policy refuses. *password_change_required*: the user must choose their own password before
        the issuer gives them a token (what an administrator's ``medtwin users add`` and the web app set)."""
        _check_role(role)
        if not username or len(username) > 200:
            raise ValidationError("username: 1 to 200 characters")
        check_password(password, username=username)
        row = {
            "user_id": new_id(),
            "username": username,
            "password_hash": self.hasher.hash(password),
            "role": role,
            "wards": json.dumps(_names("wards", wards)),
            "teams": json.dumps(_names("teams", teams)),
            "disabled": False,
            "created": datetime.now(UTC),
            "password_change_required": password_change_required,
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
            password_change_required=bool(get("password_change_required")),
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

    def set_password(self, username: str, password: str, *, password_change_required: bool = False) -> tuple[User, int]:
        """Replace a user's password (argon2id hash, as :meth:`add_user`) and end every session of the user: their
        refresh tokens are revoked and their sessions' access tokens listed as revoked (the token service rejects
        them within its revocation refresh, 2 s). *password_change_required*: the user must choose their own
        password at their next sign-in (an administrator's reset). Returns the user and how many sessions ended.

        Raises
        ------
        AccountError
            No user with this name.
        PasswordPolicyError
            A password the policy (:func:`check_password`) refuses.
        """
        check_password(password, username=username)
        password_hash = self.hasher.hash(password)
        with self.engine.begin() as conn:
            row = conn.execute(select(users.c.user_id).where(users.c.username == username)).first()
            if row is None:
                raise AccountError(f"no user named {username!r}")
            conn.execute(
                update(users)
                .where(users.c.user_id == row.user_id)
                .values(password_hash=password_hash, password_change_required=password_change_required)
            )
            ended = self._end_sessions(conn, row.user_id, "password reset")
        found = self.user(username)
        assert found is not None
        return found, ended

    def change_password(
        self, username: str, current: str, new: str, *, keep_session: str | None = None
    ) -> tuple[User, int]:
        """The user's own change of password: *current* is verified as :meth:`authenticate` verifies it (the same
        argon2id check, as slow for an unknown name; a disabled account is refused), *new* must pass the policy
        (:func:`check_password`, and differ from *current*), its argon2id hash replaces the old one, the
        *password_change_required* mark is cleared, and every session of the user but *keep_session* (the refresh
        token family of the session making the change, when there is one) ends, as :meth:`set_password` ends them:
        whoever holds a session opened with the old password loses it (OWASP ASVS 4.0 3.3.3). Returns the user and
        how many sessions ended.

        The current password is checked before the policy, so a refusal by the policy ("must differ from the current
        one") is never an oracle for someone who does not know the current password.

        Raises
        ------
        CurrentPasswordError
            Wrong current password, unknown name, or a disabled account (one message for all three).
        PasswordPolicyError
            A new password the policy refuses.
        AccountError
            The password was changed by someone else between the check and the write (nothing is changed).
        """
        row = self._verified(username, current)
        if row is None:
            raise CurrentPasswordError("the current password is wrong (or the account is unknown or disabled)")
        check_password(new, username=row.username, current=current)
        password_hash = self.hasher.hash(new)
        with self.engine.begin() as conn:
            # the old hash in the condition: an administrator's reset between the check and here is not overwritten
            done = conn.execute(
                update(users)
                .where((users.c.user_id == row.user_id) & (users.c.password_hash == row.password_hash))
                .values(password_hash=password_hash, password_change_required=False)
            )
            if done.rowcount == 0:
                raise AccountError(f"the password of {username!r} was changed meanwhile; nothing was changed")
            ended = self._end_sessions(conn, row.user_id, "password changed", keep=keep_session)
        found = self.user(row.user_id)
        assert found is not None
        return found, ended

    @staticmethod
    def _end_sessions(conn: Any, user_id: str, why: str, *, keep: str | None = None) -> int:
        """Revoke the live refresh-token families of *user_id* but *keep*, and list them as revoked so that their
        access tokens are refused too; returns how many ended."""
        live = conn.execute(
            select(token_families.c.family_id, token_families.c.expires).where(
                (token_families.c.subject == user_id) & token_families.c.revoked.is_(None)
            )
        ).all()
        ended = 0
        for family_id, expires in live:
            if family_id == keep:
                continue
            conn.execute(update(token_families).where(token_families.c.family_id == family_id).values(revoked=why))
            listed = select(revoked_tokens.c.token_id).where(revoked_tokens.c.token_id == family_id)
            if conn.execute(listed).first() is None:
                conn.execute(insert(revoked_tokens), {"token_id": family_id, "expires": expires})
            ended += 1
        return ended

    def _verified(self, username: str, password: str) -> Any:
        """The row of the enabled user *username* whose password this is, or None. An unknown name costs the same
        argon2id verification (against a dummy hash) as a known one, so timing does not tell names apart."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).first()
        stored = self._dummy_hash if row is None else row.password_hash
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled:
            return None
        return row

    def authenticate(self, username: str, password: str) -> User | None:
        """The enabled user whose password this is, or None (unknown name, wrong password, disabled: alike). The
        user may have *password_change_required* set: the caller decides what that allows (the issuer: no token)."""
        row = self._verified(username, password)
        return None if row is None else self._user(row)

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
