"""Accounts: the password policy (NIST SP 800-63B 5.1.1.2), a user's own change of password (current password
checked as a sign-in checks it, sessions ended but the caller's), and the forced change of an administrator-set
password."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from medtwin.errors import ValidationError
from medtwin.security.accounts import (
    PASSWORD_RULE,
    AccountError,
    Accounts,
    CurrentPasswordError,
    PasswordPolicyError,
    check_password,
)
from medtwin.security.scopes import parse_scopes
from medtwin.security.tokens import SigningKey, TokenError, TokenService
from medtwin.store import Store
from medtwin.store.access_tables import token_families, users

CHEAP = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}


class CountingHasher(PasswordHasher):
    """An argon2id hasher that counts its verifications (a sign-in for an unknown name must cost one too)."""

    def __init__(self) -> None:
        super().__init__(**CHEAP)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
def accounts(tmp_path: Any) -> Iterator[Accounts]:
    store = Store(f"sqlite:///{tmp_path / 'accounts.db'}")
    try:
        made = Accounts(store.engine, hasher=CountingHasher())
        made.add_user("ada", "correct horse", "clinician", wards=["W1"])
        yield made
    finally:
        store.close()


def _hash_of(accounts: Accounts, username: str) -> str:
    with accounts.engine.connect() as conn:
        return str(conn.execute(select(users.c.password_hash).where(users.c.username == username)).scalar_one())


def _session(tokens: TokenService, accounts: Accounts) -> dict[str, Any]:
    user = accounts.user("ada")
    assert user is not None
    return tokens.issue(TokenService.grant(user.user_id, user.role, parse_scopes("user/*.rs"), username="ada"),
                        refresh=True)  # fmt: skip


# -- the policy -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("password", "words"),
    [
        ("seven c", "at least 8 characters are needed, this one has 7"),
        ("é" * 7, "this one has 7"),  # characters, not bytes: 14 bytes of UTF-8 are still 7 characters
        ("x" * 257, "at most 256 characters, this one has 257"),
        ("Ada.Lovelace", "this is the user name"),  # whatever the case
        ("", "at least 8"),
    ],
)
def test_the_policy_refuses_with_the_rule_named(password: str, words: str) -> None:
    with pytest.raises(PasswordPolicyError) as caught:
        check_password(password, username="ada.lovelace")
    assert words in str(caught.value)
    assert PASSWORD_RULE in str(caught.value)  # the whole rule, so the user learns it at once
    assert isinstance(caught.value, ValidationError)


@pytest.mark.parametrize("password", ["abcdefgh", "é" * 8, "x" * 256, "correct horse battery staple", "пароль-мой"])
def test_the_policy_has_no_composition_rule(password: str) -> None:
    check_password(password, username="ada")  # lower case only, no digit, another script: all accepted


def test_the_policy_refuses_the_current_password_as_the_new_one() -> None:
    with pytest.raises(PasswordPolicyError, match="the new password is the current one"):
        check_password("correct horse", username="ada", current="correct horse")
    check_password("Correct horse", username="ada", current="correct horse")  # passwords are case-sensitive


def test_an_administrator_set_password_obeys_the_policy_too(accounts: Accounts) -> None:
    with pytest.raises(PasswordPolicyError, match="this is the user name"):
        accounts.add_user("bob.smith", "BOB.SMITH", "nurse")
    with pytest.raises(PasswordPolicyError, match="at most 256"):
        accounts.set_password("ada", "y" * 300)
    assert accounts.user("bob.smith") is None


# -- a user's own change ---------------------------------------------------------------------------------------------
def test_change_password_checks_the_current_one_and_stores_an_argon2id_hash(accounts: Accounts) -> None:
    before = _hash_of(accounts, "ada")
    for username, current in [("ada", "wrong horse"), ("nobody", "correct horse")]:
        with pytest.raises(CurrentPasswordError, match="current password is wrong"):
            accounts.change_password(username, current, "a brand new password")
    assert _hash_of(accounts, "ada") == before
    user, ended = accounts.change_password("ada", "correct horse", "a brand new password")
    assert (user.username, ended) == ("ada", 0)
    after = _hash_of(accounts, "ada")
    assert after.startswith("$argon2id$")
    assert after != before
    assert "a brand new password" not in after
    assert accounts.authenticate("ada", "correct horse") is None
    assert accounts.authenticate("ada", "a brand new password") is not None


def test_an_unknown_name_costs_the_same_verification_as_a_known_one(accounts: Accounts) -> None:
    hasher = accounts.hasher
    assert isinstance(hasher, CountingHasher)
    for username in ("ada", "nobody"):
        hasher.verified = 0
        with pytest.raises(CurrentPasswordError):
            accounts.change_password(username, "wrong horse", "a brand new password")
        assert hasher.verified == 1, username


def test_a_disabled_account_cannot_change_its_password(accounts: Accounts) -> None:
    accounts.set_disabled("ada")
    with pytest.raises(CurrentPasswordError):
        accounts.change_password("ada", "correct horse", "a brand new password")
    accounts.set_disabled("ada", False)
    assert accounts.authenticate("ada", "correct horse") is not None  # nothing was changed


def test_the_policy_is_checked_after_the_current_password(accounts: Accounts) -> None:
    # "must differ from the current one" would otherwise confirm a guessed current password to a stranger
    with pytest.raises(CurrentPasswordError):
        accounts.change_password("ada", "guess horse", "guess horse")
    with pytest.raises(PasswordPolicyError, match="the new password is the current one"):
        accounts.change_password("ada", "correct horse", "correct horse")
    with pytest.raises(PasswordPolicyError, match="at least 8 characters are needed, this one has 3"):
        accounts.change_password("ada", "correct horse", "ADA")
    assert accounts.authenticate("ada", "correct horse") is not None


def test_a_change_ends_every_other_session_and_keeps_the_callers(accounts: Accounts) -> None:
    tokens = TokenService(accounts.engine, SigningKey.generate())
    mine, other, third = (_session(tokens, accounts) for _ in range(3))
    keep = tokens.verify(mine["access_token"]).session_id
    assert keep is not None
    _, ended = accounts.change_password("ada", "correct horse", "a brand new password", keep_session=keep)
    assert ended == 2
    for stolen in (other, third):
        with pytest.raises(TokenError, match="password changed"):
            tokens.refresh(stolen["refresh_token"])
    body, _ = tokens.refresh(mine["refresh_token"])  # the session that made the change goes on
    assert body["access_token"]
    with accounts.engine.connect() as conn:
        reasons = sorted(str(r) for r in conn.execute(select(token_families.c.revoked)).scalars())
    assert reasons == ["None", "password changed", "password changed"]


def test_a_reset_between_the_check_and_the_write_is_not_overwritten(accounts: Accounts) -> None:
    class ResetMidway(PasswordHasher):
        """Hashing the new password is the moment an administrator's reset lands."""

        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            if password == "a brand new password":
                accounts.hasher = PasswordHasher(**CHEAP)
                accounts.set_password("ada", "the admin's reset", password_change_required=True)
            return super().hash(password, salt=salt)

    accounts.hasher = ResetMidway(**CHEAP)
    with pytest.raises(AccountError, match="changed meanwhile"):
        accounts.change_password("ada", "correct horse", "a brand new password")
    assert accounts.authenticate("ada", "the admin's reset") is not None  # the reset stands
    user = accounts.user("ada")
    assert user is not None
    assert user.password_change_required


# -- the forced change -------------------------------------------------------------------------------------------------
def test_an_administrator_set_password_must_be_changed_and_the_change_clears_the_mark(accounts: Accounts) -> None:
    assert accounts.user("ada").password_change_required is False  # type: ignore[union-attr]
    made = accounts.add_user("bob", "initial password", "nurse", password_change_required=True)
    assert made.password_change_required
    signed = accounts.authenticate("bob", "initial password")
    assert signed is not None
    assert signed.password_change_required
    changed, _ = accounts.change_password("bob", "initial password", "bob's own password")
    assert changed.password_change_required is False
    user, _ = accounts.set_password("bob", "a reset password", password_change_required=True)
    assert user.password_change_required
    user, _ = accounts.set_password("bob", "a scripted password")  # as `users passwd --no-force-change`
    assert user.password_change_required is False
    assert {u.username: u.password_change_required for u in accounts.users()} == {"ada": False, "bob": False}
