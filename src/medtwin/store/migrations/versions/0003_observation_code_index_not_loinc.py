"""Observations: the (patient, code, time) index keeps only rows whose primary code is not LOINC.

Why: a query by code (``Store.observations(pid, code)``, ``Store.latest_observations``) matches
``code_system = :system AND code = :code`` OR ``loinc_code = :loinc``. For a row whose primary code is LOINC,
``loinc_code`` equals ``code`` (``medtwin.store.rows.loinc_code`` maps a LOINC coding to itself), so every such
row that the first branch can match, the second matches too, through ``ix_observations_patient_loinc_time``.
The full code index therefore duplicated the loinc index for LOINC-coded rows (nearly all vital signs), and
each duplicate entry was one more B-tree leaf written per (patient, code) per commit: on an ORU^R01 stream
the most expensive index to keep. The store now asks LOINC codings through ``loinc_code`` only, and other
codings (MDC, local systems) through this partial index (its condition is repeated literally in the query so
that SQLite and PostgreSQL can use it). Nothing is deleted: only the index changes; reads return the same rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_NOT_LOINC = sa.text("code_system <> 'http://loinc.org'")


def upgrade() -> None:
    """Replace the full (patient, code, time) index by its non-LOINC part."""
    op.drop_index("ix_observations_patient_code_time", table_name="observations")
    op.create_index(
        "ix_observations_patient_code_time_not_loinc",
        "observations",
        ["patient_id", "code", "effective"],
        unique=False,
        sqlite_where=_NOT_LOINC,
        postgresql_where=_NOT_LOINC,
    )


def downgrade() -> None:
    """Restore the full (patient, code, time) index."""
    op.drop_index("ix_observations_patient_code_time_not_loinc", table_name="observations")
    op.create_index("ix_observations_patient_code_time", "observations", ["patient_id", "code", "effective"])
