"""Security (issue 15): the audit chain, per-patient data keys, the keyed blind index, the raw log's key reference.

Why: direct identifiers and raw payloads are encrypted at rest under per-patient data keys wrapped by a master key
kept outside the database (medtwin.crypto); an MRN is found through a keyed blind index instead of plaintext; every
access is recorded in an append-only hash chain with signed checkpoints (medtwin.security.audit). The rows written
before this revision are encrypted and their ids re-keyed by the store when it first opens with its keys
(``medtwin.store.protect.protect_legacy_rows``): that needs the key, which Alembic does not have.

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0010"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the audit, key and blind-index tables; add ``raw_inbound.key_ref``."""
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=60), nullable=False),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("resource", sa.String(length=400), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("purpose", sa.String(length=200), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_action", "audit_log", ["action", "seq"])
    op.create_index("ix_audit_log_patient", "audit_log", ["patient_id", "seq"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "patient_keys",
        sa.Column("key_ref", sa.String(length=200), nullable=False),
        sa.Column("master_key_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_ref", name=op.f("pk_patient_keys")),
    )
    op.create_table(
        "key_settings",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_key_settings")),
    )
    op.create_table(
        "identity_index",
        sa.Column("blind", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("blind", "patient_id", name=op.f("pk_identity_index")),
    )
    op.create_index("ix_identity_index_patient", "identity_index", ["patient_id"])
    with op.batch_alter_table("raw_inbound") as batch:
        batch.add_column(sa.Column("key_ref", sa.String(length=200), nullable=True))
    op.create_index("ix_raw_inbound_key_ref", "raw_inbound", ["key_ref"])


def downgrade() -> None:
    """Drop what :func:`upgrade` created (encrypted rows stay encrypted: decrypt them with the keys first)."""
    op.drop_index("ix_raw_inbound_key_ref", table_name="raw_inbound")
    with op.batch_alter_table("raw_inbound") as batch:
        batch.drop_column("key_ref")
    op.drop_index("ix_identity_index_patient", table_name="identity_index")
    op.drop_table("identity_index")
    op.drop_table("key_settings")
    op.drop_table("patient_keys")
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_audit_log_patient", table_name="audit_log")
    op.drop_index("ix_audit_log_action", table_name="audit_log")
    op.drop_table("audit_log")
