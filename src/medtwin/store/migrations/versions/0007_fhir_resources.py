"""FHIR resources kept whole: every valid resource medtwin does not turn into a record, by type and id.

Why (issue 13): Immunization, Procedure, DiagnosticReport, CarePlan, Claim, ExplanationOfBenefit, Goal,
DocumentReference, ... (and a resource of a mapped type that lacks what medtwin needs, e.g. a not-done
Observation without a time) vanished from the patient's record and from its export: only the raw bundle kept
them. ``fhir_resources`` keeps each as FHIR JSON keyed by (type, id), in its patient's compartment (``patient_id``;
NULL outside any), and ``patient_references`` names the resources outside the compartment (Organization,
Practitioner, ...) that a patient's resources refer to, so the patient's export can include them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``fhir_resources`` and ``patient_references``."""
    op.create_table(
        "fhir_resources",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=200), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=True),
        sa.Column("source_system", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.String(length=400), nullable=True),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "resource_id", name=op.f("pk_fhir_resources")),
    )
    op.create_index("ix_fhir_resources_patient", "fhir_resources", ["patient_id", "resource_type"])
    op.create_table(
        "patient_references",
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", "resource_type", "resource_id", name=op.f("pk_patient_references")),
    )


def downgrade() -> None:
    """Drop ``patient_references`` and ``fhir_resources``."""
    op.drop_table("patient_references")
    op.drop_index("ix_fhir_resources_patient", table_name="fhir_resources")
    op.drop_table("fhir_resources")
