"""Consumer leases: one twin worker set at a time follows a consumer's cursors.

Why: two ``medtwin listen`` processes on one store ran twin workers under the same cursor names, so both read,
processed and checkpointed the same cursors (messages processed twice, alerts raised twice, a cursor moved under
the other worker). A worker set now holds a lease row per consumer (``consumer``: the base cursor name, e.g.
``twin-runtime``), renewed while it runs; a second set is refused while the lease is live and takes it over once
it has expired (a holder killed with ``kill -9`` renews it no more). See :mod:`medtwin.store.leases`.

Revision ID: 0050
Revises: 0040
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0050"
down_revision: str | None = "0040"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``consumer_leases``."""
    op.create_table(
        "consumer_leases",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", name=op.f("pk_consumer_leases")),
    )


def downgrade() -> None:
    """Drop ``consumer_leases`` (worker sets are then no longer kept apart)."""
    op.drop_table("consumer_leases")
