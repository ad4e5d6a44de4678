"""The tables of identity and access used by medtwin.security (created by migration 0020_security; 0040 adds
``users.password_change_required``, the forced change of an administrator-set password).

Users and clients keep argon2id hashes of their passwords and secrets, never the secrets. Refresh tokens are kept
as SHA-256 digests (a database leak yields no usable token), grouped in families (one per login) so that a reused
refresh token revokes its whole family. Care-team membership of patients lives here; a patient's ward is read from
their open encounter in the store. The tables are part of the store's one metadata (the migrations are checked
against it), defined apart from :mod:`medtwin.store.schema` because only the security floor uses them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Column, Index, String, Table, Text, false

from medtwin.store.schema import UTCDateTime, metadata

__all__ = [
    "care_team_patients",
    "clients",
    "refresh_tokens",
    "revoked_tokens",
    "token_families",
    "users",
]


def _created() -> Column[Any]:
    return Column("created", UTCDateTime(), nullable=False)


users = Table(
    "users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("username", String(200), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(30), nullable=False),
    Column("wards", Text, nullable=False),  # JSON list of ward (unit) names
    Column("teams", Text, nullable=False),  # JSON list of care-team names
    Column("disabled", Boolean, nullable=False),
    _created(),
    # set when an administrator sets the password; cleared when the user changes it (migration 0040)
    Column("password_change_required", Boolean, nullable=False, server_default=false()),
)

clients = Table(
    "clients",
    metadata,
    Column("client_id", String(200), primary_key=True),
    Column("secret_hash", String(200)),  # NULL: a public client (browser app: authorization code + PKCE)
    Column("role", String(30), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("redirect_uris", Text, nullable=False),  # JSON list
    Column("disabled", Boolean, nullable=False),
    _created(),
)

care_team_patients = Table(
    "care_team_patients",
    metadata,
    Column("team", String(200), primary_key=True),
    Column("patient_id", String(200), primary_key=True),
    Index("ix_care_team_patients_patient", "patient_id"),
)

token_families = Table(
    "token_families",
    metadata,
    Column("family_id", String(64), primary_key=True),
    Column("subject", String(200), nullable=False),
    Column("client_id", String(200)),
    Column("scope", Text, nullable=False),
    Column("patient", String(200)),
    _created(),
    Column("last_used", UTCDateTime(), nullable=False),
    Column("expires", UTCDateTime(), nullable=False),
    Column("revoked", String(200)),  # NULL while valid; else why (logout, reuse, disabled)
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("family_id", String(64), nullable=False),
    Column("issued", UTCDateTime(), nullable=False),
    Column("used", UTCDateTime()),
    Index("ix_refresh_tokens_family", "family_id"),
)

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),  # an access token's jti, or a family id (all its tokens)
    Column("expires", UTCDateTime(), nullable=False),
)
