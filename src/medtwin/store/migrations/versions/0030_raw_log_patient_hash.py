"""The raw log's patient hash: a sharded twin worker selects its own patients' entries in SQL.

Why (issue 18): each of the twin runtime's worker processes owns a shard of the patients; each read every raw
entry, decrypted and parsed it, and discarded the other shards' in Python. ``raw_inbound.patient_hash`` holds the
hash of the one patient an entry's records belong to (medtwin.store.shards), written with the entry, so a worker
reads only its own (and the entries tied to no single patient). Entries written before this revision keep NULL:
every worker reads them and keeps its own records, as before, so no entry is lost across the upgrade.

Revision ID: 0030
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0030"
down_revision: str | None = "0020"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``raw_inbound.patient_hash`` (NULL for the entries already stored)."""
    with op.batch_alter_table("raw_inbound") as batch:
        batch.add_column(sa.Column("patient_hash", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Drop ``raw_inbound.patient_hash`` (sharded workers then read every entry again)."""
    with op.batch_alter_table("raw_inbound") as batch:
        batch.drop_column("patient_hash")
