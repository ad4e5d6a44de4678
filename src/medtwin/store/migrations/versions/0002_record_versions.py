"""Record versions: every version of a patient (+ identity) and encounter that changed the stored record.

Existing patients and encounters are carried over as their first version (``as_of`` NULL, sorted first), so
the first ADT update after the upgrade merges onto them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the version tables and carry the stored patients and encounters over as first versions."""
    op.create_table(
        "record_versions",
        sa.Column(
            "version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("record_id", sa.String(length=200), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_system", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.String(length=400), nullable=True),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_record_versions")),
    )
    with op.batch_alter_table("record_versions", schema=None) as batch_op:
        batch_op.create_index("ix_record_versions_kind_record", ["kind", "record_id", "version_id"], unique=False)
        batch_op.create_index(
            "uq_record_versions_provenance", ["kind", "record_id", "source_system", "source_id"], unique=True
        )
    op.create_table(
        "patient_identity_versions",
        sa.Column("version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["record_versions.version_id"],
            name=op.f("fk_patient_identity_versions_version_id_record_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_patient_identity_versions")),
    )
    op.execute(
        "INSERT INTO record_versions (kind, record_id, source_system, source_id, body) "
        "SELECT 'patient', patient_id, source_system, source_id, body FROM patients ORDER BY patient_id"
    )
    op.execute(
        "INSERT INTO record_versions (kind, record_id, source_system, source_id, body) "
        "SELECT 'encounter', encounter_id, source_system, source_id, body FROM encounters ORDER BY encounter_id"
    )
    op.execute(
        "INSERT INTO patient_identity_versions (version_id, body) "
        "SELECT v.version_id, i.body FROM record_versions v JOIN patient_identity i ON i.patient_id = v.record_id "
        "WHERE v.kind = 'patient'"
    )


def downgrade() -> None:
    """Drop the version tables (the current rows stay as they are)."""
    op.drop_table("patient_identity_versions")
    with op.batch_alter_table("record_versions", schema=None) as batch_op:
        batch_op.drop_index("uq_record_versions_provenance")
        batch_op.drop_index("ix_record_versions_kind_record")
    op.drop_table("record_versions")
