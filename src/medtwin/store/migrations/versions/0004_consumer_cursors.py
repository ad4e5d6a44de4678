"""Consumer cursors: how far a consumer of the raw inbound log (the twin runtime's worker) has read.

A consumer reads the accepted rows of ``raw_inbound`` in ``raw_id`` order and stores the last ``raw_id`` it has
processed here, so that after a crash or a restart it resumes where it stopped: no acknowledged message is left
unprocessed (see docs/store.md, "Consumer cursors").

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``consumer_cursors``."""
    op.create_table(
        "consumer_cursors",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_consumer_cursors")),
    )


def downgrade() -> None:
    """Drop ``consumer_cursors``."""
    op.drop_table("consumer_cursors")
