"""Identity and access tables (medtwin.security.tables), and a PostgreSQL notification for each stored event.

Why (issue 15): the API server authenticates users and clients (argon2id hashes), rotates refresh tokens in
families, revokes tokens, and limits clinicians and nurses to the patients of their care teams. On PostgreSQL a
trigger sends ``NOTIFY medtwin_events, '<event id>'`` for every inserted or updated event, so that the server's
live stream learns of an event committed by the twin worker (another process) at once; SQLite has no such channel
and the server polls the time-ordered event ids instead.

Revision ID: 0020
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0020"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION medtwin_notify_event() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('medtwin_events', NEW.event_id);
    RETURN NEW;
END
$$ LANGUAGE plpgsql
"""
_NOTIFY_TRIGGER = (
    "CREATE TRIGGER events_notify AFTER INSERT OR UPDATE ON events FOR EACH ROW EXECUTE FUNCTION medtwin_notify_event()"
)


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the identity tables; on PostgreSQL, the event notification trigger."""
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=30), nullable=False),
        sa.Column("wards", sa.Text(), nullable=False),
        sa.Column("teams", sa.Text(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        _time("created"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(length=200), nullable=False),
        sa.Column("secret_hash", sa.String(length=200), nullable=True),
        sa.Column("role", sa.String(length=30), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("redirect_uris", sa.Text(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        _time("created"),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_clients")),
    )
    op.create_table(
        "care_team_patients",
        sa.Column("team", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("team", "patient_id", name=op.f("pk_care_team_patients")),
    )
    op.create_index("ix_care_team_patients_patient", "care_team_patients", ["patient_id"])
    op.create_table(
        "token_families",
        sa.Column("family_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("client_id", sa.String(length=200), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("patient", sa.String(length=200), nullable=True),
        _time("created"),
        _time("last_used"),
        _time("expires"),
        sa.Column("revoked", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("family_id", name=op.f("pk_token_families")),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family_id", sa.String(length=64), nullable=False),
        _time("issued"),
        _time("used", nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_refresh_tokens")),
    )
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["family_id"])
    op.create_table(
        "revoked_tokens",
        sa.Column("token_id", sa.String(length=64), nullable=False),
        _time("expires"),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_revoked_tokens")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NOTIFY_FUNCTION)
        op.execute(_NOTIFY_TRIGGER)


def downgrade() -> None:
    """Drop the trigger and the identity tables."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_notify ON events")
        op.execute("DROP FUNCTION IF EXISTS medtwin_notify_event()")
    op.drop_table("revoked_tokens")
    op.drop_index("ix_refresh_tokens_family", table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_table("token_families")
    op.drop_index("ix_care_team_patients_patient", table_name="care_team_patients")
    op.drop_table("care_team_patients")
    op.drop_table("clients")
    op.drop_table("users")
