"""Raw inbound log: a digest and a relation per entry; one kept row per key for unmapped messages too.

Why (issue 13):

* ``digest`` (SHA-256 of the payload): a message resent with a control id already stored but *other* content was
  answered "duplicate" and dropped. The store now compares digests: the same content is a duplicate, other content
  a conflicting resend, which the listener keeps (docs/hl7v2.md, "Duplicates and conflicting resends").
* ``related_raw_id`` + ``relation``: what an entry refers to: the original of a ``duplicate-of`` or
  ``conflict-of`` resend, the rejected entry a ``retry-of`` re-processed (``medtwin inbox retry``); indexed where
  set, so an entry's history is found without a scan.
* The unique index on (source system, source id) now covers ``unmapped`` rows as well as ``accepted`` ones (it is
  renamed ``uq_raw_inbound_kept``): an unmapped message type resent three times was stored three times. Older
  repeats of an unmapped key are turned into ``duplicate`` rows (payload kept, related to the first) before the
  index is built, so nothing is deleted.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

_KEPT = sa.text("status IN ('accepted', 'unmapped')")
_ACCEPTED = sa.text("status = 'accepted'")
_RELATED = sa.text("related_raw_id IS NOT NULL")


def upgrade() -> None:
    """Add ``digest``, ``related_raw_id`` and ``relation``; widen the unique index to unmapped rows."""
    with op.batch_alter_table("raw_inbound") as batch:
        batch.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("related_raw_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("relation", sa.String(length=20), nullable=True))
    # every repeat of an unmapped key after its first row becomes a duplicate of it (the index below needs that)
    op.execute(
        sa.text(
            "UPDATE raw_inbound SET status = 'duplicate', relation = 'duplicate-of', related_raw_id = ("
            "  SELECT min(f.raw_id) FROM raw_inbound AS f WHERE f.source_system = raw_inbound.source_system"
            "  AND f.source_id = raw_inbound.source_id AND f.status IN ('accepted', 'unmapped'))"
            " WHERE status = 'unmapped' AND raw_id > ("
            "  SELECT min(f.raw_id) FROM raw_inbound AS f WHERE f.source_system = raw_inbound.source_system"
            "  AND f.source_id = raw_inbound.source_id AND f.status IN ('accepted', 'unmapped'))"
        )
    )
    op.drop_index("uq_raw_inbound_accepted", table_name="raw_inbound")
    op.create_index(
        "uq_raw_inbound_kept",
        "raw_inbound",
        ["source_system", "source_id"],
        unique=True,
        sqlite_where=_KEPT,
        postgresql_where=_KEPT,
    )
    op.create_index(
        "ix_raw_inbound_related",
        "raw_inbound",
        ["related_raw_id"],
        sqlite_where=_RELATED,
        postgresql_where=_RELATED,
    )


def downgrade() -> None:
    """Back to one accepted row per key (unmapped repeats stay duplicates); drop the new columns."""
    op.drop_index("ix_raw_inbound_related", table_name="raw_inbound")
    op.drop_index("uq_raw_inbound_kept", table_name="raw_inbound")
    op.create_index(
        "uq_raw_inbound_accepted",
        "raw_inbound",
        ["source_system", "source_id"],
        unique=True,
        sqlite_where=_ACCEPTED,
        postgresql_where=_ACCEPTED,
    )
    with op.batch_alter_table("raw_inbound") as batch:
        batch.drop_column("relation")
        batch.drop_column("related_raw_id")
        batch.drop_column("digest")
