"""A forced password change: ``users.password_change_required``.

Why: a password an administrator sets (``medtwin users add`` / ``users passwd``, the web app's reset) was valid until
changed again, and a user could not change it. The flag is set with such a password and cleared when the user
chooses their own (``Accounts.change_password``); while it is set the built-in issuer issues the user no token. The
users that exist at the upgrade get ``false`` (their passwords keep working as before: nothing forces a change an
operator did not ask for).

Revision ID: 0040
Revises: 0030
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0040"
down_revision: str | None = "0030"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``users.password_change_required`` (false for the users already there)."""
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("password_change_required", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    """Drop ``users.password_change_required`` (an admin-set password is then no longer forced to change)."""
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_change_required")
