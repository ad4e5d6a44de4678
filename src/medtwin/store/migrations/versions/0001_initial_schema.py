"""Initial schema: patients (+ identity), observations, encounters (+ locations), conditions, medications,
events, raw inbound log, twin snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "conditions",
        sa.Column("condition_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.Column("code_system", sa.String(length=200), nullable=False),
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("clinical_status", sa.String(length=30), nullable=True),
        sa.Column("onset", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_system", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.String(length=400), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("condition_id", name=op.f("pk_conditions")),
        sa.UniqueConstraint("source_system", "source_id", name="uq_conditions_provenance"),
    )
    with op.batch_alter_table("conditions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_conditions_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "encounters",
        sa.Column("encounter_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("class_code", sa.String(length=30), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_system", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.String(length=400), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("encounter_id", name=op.f("pk_encounters")),
        sa.UniqueConstraint("source_system", "source_id", name="uq_encounters_provenance"),
    )
    with op.batch_alter_table("encounters", schema=None) as batch_op:
        batch_op.create_index("ix_encounters_patient_start", ["patient_id", "start"], unique=False)
        batch_op.create_index("ix_encounters_start", ["start"], unique=False)

    op.create_table(
        "events",
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("code", sa.String(length=200), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("severity", sa.String(length=30), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_by", sa.String(length=200), nullable=True),
        sa.Column("status_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_system", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.String(length=400), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_events")),
        sa.UniqueConstraint("source_system", "source_id", name="uq_events_provenance"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_patient_time", ["patient_id", "time"], unique=False)
        batch_op.create_index("ix_events_status_time", ["status", "time"], unique=False)

    op.create_table(
        "medication_administrations",
        sa.Column("administration_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.Column("medication_code", sa.String(length=100), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("source_system", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.String(length=400), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("administration_id", name=op.f("pk_medication_administrations")),
        sa.UniqueConstraint("source_system", "source_id", name="uq_medication_administrations_provenance"),
    )
    with op.batch_alter_table("medication_administrations", schema=None) as batch_op:
        batch_op.create_index("ix_medication_administrations_patient_start", ["patient_id", "start"], unique=False)

    op.create_table(
        "medication_requests",
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.Column("medication_code", sa.String(length=100), nullable=False),
        sa.Column("intent", sa.String(length=30), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("authored", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_system", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.String(length=400), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_medication_requests")),
        sa.UniqueConstraint("source_system", "source_id", name="uq_medication_requests_provenance"),
    )
    with op.batch_alter_table("medication_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_medication_requests_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "observations",
        sa.Column("observation_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.Column("code_system", sa.String(length=200), nullable=False),
        sa.Column("code", sa.String(length=100), nullable=False),
        sa.Column("loinc_code", sa.String(length=100), nullable=True),
        sa.Column("effective", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(length=60), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("encounter_id", sa.String(length=200), nullable=True),
        sa.Column("source_system", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.String(length=400), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("observation_id", name=op.f("pk_observations")),
        sa.UniqueConstraint("source_system", "source_id", name="uq_observations_provenance"),
    )
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.create_index("ix_observations_patient_code_time", ["patient_id", "code", "effective"], unique=False)
        batch_op.create_index(
            "ix_observations_patient_loinc_time", ["patient_id", "loinc_code", "effective"], unique=False
        )
        batch_op.create_index("ix_observations_patient_time", ["patient_id", "effective"], unique=False)

    op.create_table(
        "patients",
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.Column("gender", sa.String(length=16), nullable=True),
        sa.Column("birth_date", sa.String(length=10), nullable=True),
        sa.Column("deceased", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_system", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.String(length=400), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_patients")),
        sa.UniqueConstraint("source_system", "source_id", name="uq_patients_provenance"),
    )
    op.create_table(
        "raw_inbound",
        sa.Column("raw_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("source_system", sa.String(length=200), nullable=False),
        sa.Column("source_id", sa.String(length=400), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("received", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("record_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("raw_id", name=op.f("pk_raw_inbound")),
    )
    with op.batch_alter_table("raw_inbound", schema=None) as batch_op:
        batch_op.create_index("ix_raw_inbound_source", ["source_system", "source_id"], unique=False)
        batch_op.create_index("ix_raw_inbound_status_received", ["status", "received"], unique=False)
        batch_op.create_index(
            "uq_raw_inbound_accepted",
            ["source_system", "source_id"],
            unique=True,
            sqlite_where=sa.text("status = 'accepted'"),
            postgresql_where=sa.text("status = 'accepted'"),
        )

    op.create_table(
        "twin_snapshots",
        sa.Column(
            "snapshot_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("twin_id", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_id", name=op.f("pk_twin_snapshots")),
    )
    with op.batch_alter_table("twin_snapshots", schema=None) as batch_op:
        batch_op.create_index("ix_twin_snapshots_twin_at", ["twin_id", "at"], unique=False)

    op.create_table(
        "encounter_locations",
        sa.Column("encounter_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("unit", sa.String(length=100), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("bed", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["encounter_id"],
            ["encounters.encounter_id"],
            name=op.f("fk_encounter_locations_encounter_id_encounters"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("encounter_id", "seq", name=op.f("pk_encounter_locations")),
    )
    with op.batch_alter_table("encounter_locations", schema=None) as batch_op:
        batch_op.create_index("ix_encounter_locations_unit_start", ["unit", "start"], unique=False)

    op.create_table(
        "patient_identity",
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.patient_id"],
            name=op.f("fk_patient_identity_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_patient_identity")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("patient_identity")
    with op.batch_alter_table("encounter_locations", schema=None) as batch_op:
        batch_op.drop_index("ix_encounter_locations_unit_start")

    op.drop_table("encounter_locations")
    with op.batch_alter_table("twin_snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_twin_snapshots_twin_at")

    op.drop_table("twin_snapshots")
    with op.batch_alter_table("raw_inbound", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_raw_inbound_accepted",
            sqlite_where=sa.text("status = 'accepted'"),
            postgresql_where=sa.text("status = 'accepted'"),
        )
        batch_op.drop_index("ix_raw_inbound_status_received")
        batch_op.drop_index("ix_raw_inbound_source")

    op.drop_table("raw_inbound")
    op.drop_table("patients")
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_index("ix_observations_patient_time")
        batch_op.drop_index("ix_observations_patient_loinc_time")
        batch_op.drop_index("ix_observations_patient_code_time")

    op.drop_table("observations")
    with op.batch_alter_table("medication_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_medication_requests_patient_id"))

    op.drop_table("medication_requests")
    with op.batch_alter_table("medication_administrations", schema=None) as batch_op:
        batch_op.drop_index("ix_medication_administrations_patient_start")

    op.drop_table("medication_administrations")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_status_time")
        batch_op.drop_index("ix_events_patient_time")

    op.drop_table("events")
    with op.batch_alter_table("encounters", schema=None) as batch_op:
        batch_op.drop_index("ix_encounters_start")
        batch_op.drop_index("ix_encounters_patient_start")

    op.drop_table("encounters")
    with op.batch_alter_table("conditions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_conditions_patient_id"))

    op.drop_table("conditions")
