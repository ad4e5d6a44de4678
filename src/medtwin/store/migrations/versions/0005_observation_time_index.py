"""Observations: one (patient, time, LOINC) index for the dense vital-sign streams; per-code only for the rest.

Why: ``ix_observations_patient_loinc_time`` (patient, LOINC code, time) put every observation of an ORU^R01 on a
B-tree leaf of its own (one per patient and code), and ``ix_observations_patient_time`` added one more leaf per
patient. Measured on the project's VM (groups of 4 bedside-monitor messages, 8 observations each): 90 WAL pages
per commit and 706 us of CPU per message with both; 40 pages and 463 us without the per-code index; 26 pages and
381 us without either. A commit's cost is its pages (each is written to the WAL, checksummed, synced, and later
copied by a checkpoint), so the stream's ACK latency and the listener's throughput follow this count.

Now:

* ``ix_observations_patient_time_loinc`` (patient, time, LOINC code) answers "this patient's observations in a
  time range" (a prefix), and "this patient's heart rate in a range" by reading the range and testing the code
  inside the index (no table lookups for the other codes). A stream appends one leaf per patient per commit.
* ``ix_observations_patient_loinc_time_sparse`` (patient, LOINC code, time) keeps only rows whose LOINC code is not
  one of the dense vital-sign codes listed below (:data:`medtwin.store.schema.DENSE_LOINC`). Labs and other
  sparse codes keep their direct lookup, so "the latest creatinine" does not scan a month of 1 Hz vital signs.
  Queries for such a code state the index condition literally (as revision 0003 does) so that the planner can
  use it.

The dense list is frozen here: changing it takes a new revision (tests check that schema.py states the same).
Nothing is deleted: only indexes change; reads return the same rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

__all__ = ["DENSE_LOINC", "branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

# the high-rate codes of bedside monitors and the twin runtime's NEWS2 score (as of this revision), sorted: the
# query states the same condition text, and the planner matches the list in order
DENSE_LOINC = (
    "2708-6",  # oxygen saturation in arterial blood
    "3151-8",  # inhaled oxygen flow rate
    "59408-5",  # oxygen saturation by pulse oximetry
    "80288-4",  # level of consciousness
    "8310-5",  # body temperature
    "8462-4",  # diastolic blood pressure
    "8478-0",  # mean blood pressure
    "8480-6",  # systolic blood pressure
    "88330-6",  # NEWS2 total
    "8867-4",  # heart rate
    "8889-8",  # heart rate by pulse oximetry
    "9279-1",  # respiratory rate
)
_SPARSE = sa.text("loinc_code NOT IN (" + ", ".join(f"'{c}'" for c in DENSE_LOINC) + ")")


def upgrade() -> None:
    """Replace the (patient, time) and (patient, LOINC, time) indexes."""
    op.create_index(
        "ix_observations_patient_time_loinc", "observations", ["patient_id", "effective", "loinc_code"], unique=False
    )
    op.create_index(
        "ix_observations_patient_loinc_time_sparse",
        "observations",
        ["patient_id", "loinc_code", "effective"],
        unique=False,
        sqlite_where=_SPARSE,
        postgresql_where=_SPARSE,
    )
    op.drop_index("ix_observations_patient_loinc_time", table_name="observations")
    op.drop_index("ix_observations_patient_time", table_name="observations")


def downgrade() -> None:
    """Restore the (patient, time) and (patient, LOINC, time) indexes."""
    op.create_index("ix_observations_patient_time", "observations", ["patient_id", "effective"])
    op.create_index("ix_observations_patient_loinc_time", "observations", ["patient_id", "loinc_code", "effective"])
    op.drop_index("ix_observations_patient_loinc_time_sparse", table_name="observations")
    op.drop_index("ix_observations_patient_time_loinc", table_name="observations")
