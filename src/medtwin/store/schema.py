"""The store's tables, as SQLAlchemy Core metadata (the Alembic migrations are the source of truth on disk).

Each clinical table keeps the columns that queries filter and sort on (patient, code, time, provenance) plus a
``body`` column holding the whole record as JSON, so that reading a record back is one decode and writing is one
executemany insert. Direct identifiers live in ``patient_identity``, apart from ``patients``, so that a later
release can encrypt that one table. Times are stored in UTC (see :class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

from medtwin.codes import LOINC

__all__ = [
    "KEPT_RAW",
    "NOT_LOINC_PRIMARY",
    "UTCDateTime",
    "audit_checkpoints",
    "audit_log",
    "conditions",
    "consumer_cursors",
    "consumer_leases",
    "encounter_locations",
    "encounters",
    "events",
    "fhir_resources",
    "identity_index",
    "key_settings",
    "medication_administrations",
    "medication_requests",
    "metadata",
    "observations",
    "patient_identity",
    "patient_identity_versions",
    "patient_keys",
    "patient_references",
    "patients",
    "raw_inbound",
    "record_versions",
    "sqlite_utc_text",
    "twin_snapshots",
    "unindexed",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC; SQLite hands back naive values, which are UTC by construction."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise _naive_time_error(value)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _naive_time_error(value: datetime) -> ValueError:
    return ValueError(f"naive datetime {value.isoformat()} cannot be stored; medtwin stores UTC times")


def unindexed(column: Column[Any]) -> Any:
    """*column* as an expression no index can serve (``column || ''``), for a filter the planner must not lead with.

    SQLite's planner has no table statistics here (no ANALYZE) and prefers an index with an equality on it: for
    ``status = 'accepted'`` that meant the ``(status, ...)`` index, a scan of nearly the whole growing table, where
    another index or the primary-key range reads a few rows (docs/store.md, "Consumer cursors";
    tests/store/test_store_query_plans.py pins the plans). The comparison itself is unchanged.
    """
    return column.concat("")


def sqlite_utc_text(value: datetime | None) -> str | None:
    """*value* as :class:`UTCDateTime` stores it on SQLite: naive UTC ISO text with microseconds.

    The text is exactly what SQLAlchemy's SQLite ``DateTime`` bind processor writes (``YYYY-MM-DD
    HH:MM:SS.ffffff``), so rows written by the fast path of :mod:`medtwin.store.batch` read back, sort and
    compare like rows written by a Core statement (tests/store/test_store_rows.py checks it).
    """
    if value is None:
        return None
    stored = _UTC_TEXT.get(value)  # the observations of one message share their time: format it once
    if stored is not None:
        return stored
    if value.tzinfo is None or value.utcoffset() is None:
        raise _naive_time_error(value)
    stored = value.astimezone(UTC).isoformat(" ", "microseconds")[:-6]  # less "+00:00"
    if len(_UTC_TEXT) >= 4096:
        _UTC_TEXT.clear()
    _UTC_TEXT[value] = stored
    return stored


# equal aware datetimes are the same instant, so they share one text; a naive datetime never equals an aware one
_UTC_TEXT: dict[datetime, str] = {}


def _provenance() -> list[Column[Any]]:
    return [Column("source_system", String(200)), Column("source_id", String(400))]


patients = Table(
    "patients",
    metadata,
    Column("patient_id", String(200), primary_key=True),
    Column("gender", String(16)),
    Column("birth_date", String(10)),
    Column("deceased", UTCDateTime()),
    *_provenance(),
    Column("body", Text, nullable=False),
    UniqueConstraint("source_system", "source_id", name="uq_patients_provenance"),
)

patient_identity = Table(
    "patient_identity",
    metadata,
    Column(
        "patient_id",
        String(200),
        ForeignKey("patients.patient_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("body", Text, nullable=False),
)

NOT_LOINC_PRIMARY = text(f"code_system <> '{LOINC}'")
"""The condition of the partial observation code index; a query must state it (literally) to use that index."""

DENSE_LOINC: frozenset[str] = frozenset(
    ("2708-6", "3151-8", "59408-5", "80288-4", "8310-5", "8462-4", "8478-0", "8480-6", "8867-4", "88330-6",
     "8889-8", "9279-1")
)  # fmt: skip
"""LOINC codes of the dense streams (bedside-monitor vital signs, the runtime's NEWS2 score): they are read through
the (patient, time, LOINC) index; every other code also through the sparse (patient, LOINC, time) index whose
condition is :data:`SPARSE_LOINC` (revision 0005 freezes the list)."""

SPARSE_LOINC = text("loinc_code NOT IN (" + ", ".join(f"'{c}'" for c in sorted(DENSE_LOINC)) + ")")
"""The condition of the sparse per-code index; a query for a code outside :data:`DENSE_LOINC` states it."""

observations = Table(
    "observations",
    metadata,
    Column("observation_id", String(200), primary_key=True),
    Column("patient_id", String(200), nullable=False),
    Column("code_system", String(200), nullable=False),
    Column("code", String(100), nullable=False),
    Column("loinc_code", String(100)),
    Column("effective", UTCDateTime(), nullable=False),
    Column("value_num", Float),
    Column("unit", String(60)),
    Column("status", String(30), nullable=False),
    Column("encounter_id", String(200)),
    *_provenance(),
    Column("body", Text, nullable=False),
    UniqueConstraint("source_system", "source_id", name="uq_observations_provenance"),
    # Only rows whose primary code is not LOINC: for a LOINC-coded row ``loinc_code = code``, so a query by that
    # code is answered by the loinc index (revision 0003; see docs/store.md, "Observation indexes").
    Index(
        "ix_observations_patient_code_time_not_loinc",
        "patient_id",
        "code",
        "effective",
        sqlite_where=NOT_LOINC_PRIMARY,
        postgresql_where=NOT_LOINC_PRIMARY,
    ),
    # Revision 0005 (docs/store.md, "Observation indexes"): one leaf per patient per commit for a vital-sign stream,
    # and a direct per-code lookup for the sparse codes only.
    Index("ix_observations_patient_time_loinc", "patient_id", "effective", "loinc_code"),
    Index(
        "ix_observations_patient_loinc_time_sparse",
        "patient_id",
        "loinc_code",
        "effective",
        sqlite_where=SPARSE_LOINC,
        postgresql_where=SPARSE_LOINC,
    ),
)

encounters = Table(
    "encounters",
    metadata,
    Column("encounter_id", String(200), primary_key=True),
    Column("patient_id", String(200), nullable=False),
    Column("status", String(30), nullable=False),
    Column("class_code", String(30), nullable=False),
    Column("start", UTCDateTime(), nullable=False),
    Column("end", UTCDateTime()),
    *_provenance(),
    Column("body", Text, nullable=False),
    UniqueConstraint("source_system", "source_id", name="uq_encounters_provenance"),
    Index("ix_encounters_patient_start", "patient_id", "start"),
    Index("ix_encounters_start", "start"),
)

encounter_locations = Table(
    "encounter_locations",
    metadata,
    Column(
        "encounter_id",
        String(200),
        ForeignKey("encounters.encounter_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("seq", Integer, primary_key=True),
    Column("unit", String(100), nullable=False),
    Column("start", UTCDateTime(), nullable=False),
    Column("end", UTCDateTime()),
    Column("bed", String(100)),
    Index("ix_encounter_locations_unit_start", "unit", "start"),
)

conditions = Table(
    "conditions",
    metadata,
    Column("condition_id", String(200), primary_key=True),
    Column("patient_id", String(200), nullable=False, index=True),
    Column("code_system", String(200), nullable=False),
    Column("code", String(100), nullable=False),
    Column("clinical_status", String(30)),
    Column("onset", UTCDateTime()),
    *_provenance(),
    Column("body", Text, nullable=False),
    UniqueConstraint("source_system", "source_id", name="uq_conditions_provenance"),
)

medication_requests = Table(
    "medication_requests",
    metadata,
    Column("request_id", String(200), primary_key=True),
    Column("patient_id", String(200), nullable=False, index=True),
    Column("medication_code", String(100), nullable=False),
    Column("intent", String(30), nullable=False),
    Column("status", String(30), nullable=False),
    Column("authored", UTCDateTime()),
    *_provenance(),
    Column("body", Text, nullable=False),
    UniqueConstraint("source_system", "source_id", name="uq_medication_requests_provenance"),
)

medication_administrations = Table(
    "medication_administrations",
    metadata,
    Column("administration_id", String(200), primary_key=True),
    Column("patient_id", String(200), nullable=False),
    Column("medication_code", String(100), nullable=False),
    Column("start", UTCDateTime(), nullable=False),
    Column("status", String(30), nullable=False),
    *_provenance(),
    Column("body", Text, nullable=False),
    UniqueConstraint("source_system", "source_id", name="uq_medication_administrations_provenance"),
    Index("ix_medication_administrations_patient_start", "patient_id", "start"),
)

events = Table(
    "events",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("patient_id", String(200)),
    Column("kind", String(20), nullable=False),
    Column("code", String(200), nullable=False),
    Column("time", UTCDateTime(), nullable=False),
    Column("severity", String(30)),
    Column("status", String(20), nullable=False),
    Column("status_by", String(200)),
    Column("status_time", UTCDateTime()),
    *_provenance(),
    Column("body", Text, nullable=False),
    UniqueConstraint("source_system", "source_id", name="uq_events_provenance"),
    Index("ix_events_patient_time", "patient_id", "time"),
    Index("ix_events_status_time", "status", "time"),
)

KEPT_RAW = text("status IN ('accepted', 'unmapped')")
"""The condition of the raw log's unique (source system, source id) index (revision 0006)."""

raw_inbound = Table(
    "raw_inbound",
    metadata,
    Column("raw_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("source_system", String(200), nullable=False),
    Column("source_id", String(400), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("received", UTCDateTime(), nullable=False),
    Column("status", String(20), nullable=False),
    Column("reason", Text),
    Column("record_count", Integer, nullable=False, server_default=text("0")),
    Column("payload", LargeBinary, nullable=False),
    # revision 0006: SHA-256 of the payload (a resend with the same key and other content is a conflict, kept), and
    # the entry this one relates to: the original of a duplicate or conflicting resend, the rejected entry a retry
    # re-processed
    Column("digest", String(64)),
    Column("related_raw_id", BigInteger),
    Column("relation", String(20)),
    # revision 0010: the key the payload is encrypted under (a patient id, or "system:raw" for payloads tied to no
    # patient); erasing a patient deletes the rows under their key
    Column("key_ref", String(200)),
    # revision 0030: the hash of the one patient the entry's records belong to (NULL: none, or several), so a
    # consumer sharded by patient reads its own entries in SQL (medtwin.store.shards). Not indexed: a consumer
    # reads the primary-key range after its cursor and the test is on each row of it (an index would cost every
    # insert of the listener and save nothing there)
    Column("patient_hash", BigInteger),
    # One *kept* row (accepted, or unmapped: stored without records) per (source system, source id): that is the
    # idempotency key. Rejected and duplicate arrivals are logged as extra rows (a corrected resend must still be
    # accepted).
    Index(
        "uq_raw_inbound_kept",
        "source_system",
        "source_id",
        unique=True,
        sqlite_where=KEPT_RAW,
        postgresql_where=KEPT_RAW,
    ),
    Index("ix_raw_inbound_source", "source_system", "source_id"),
    Index("ix_raw_inbound_key_ref", "key_ref"),
    Index("ix_raw_inbound_status_received", "status", "received"),
    # the entries that refer to one (its duplicates, conflicting resends, retries): `medtwin inbox show` (0006)
    Index(
        "ix_raw_inbound_related",
        "related_raw_id",
        sqlite_where=text("related_raw_id IS NOT NULL"),
        postgresql_where=text("related_raw_id IS NOT NULL"),
    ),
)

twin_snapshots = Table(
    "twin_snapshots",
    metadata,
    Column("snapshot_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("twin_id", String(200), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("blob", LargeBinary, nullable=False),
    Index("ix_twin_snapshots_twin_at", "twin_id", "at"),
)

# Every version of a patient or encounter that changed the stored record (see medtwin.store.versions): the
# current row is the fold of these, and nothing an ADT update replaced is lost. ``kind`` is "patient" or
# "encounter"; ``as_of`` is the time the version speaks for (encounters; NULL for patients and for rows
# carried over from before revision 0002); ``version_id`` is the arrival order.
record_versions = Table(
    "record_versions",
    metadata,
    Column("version_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(20), nullable=False),
    Column("record_id", String(200), nullable=False),
    Column("as_of", UTCDateTime()),
    *_provenance(),
    Column("recorded", UTCDateTime()),
    Column("body", Text, nullable=False),
    Index("ix_record_versions_kind_record", "kind", "record_id", "version_id"),
    Index("uq_record_versions_provenance", "kind", "record_id", "source_system", "source_id", unique=True),
)

# The identity part of each patient version (direct identifiers stay in identity tables only).
patient_identity_versions = Table(
    "patient_identity_versions",
    metadata,
    Column(
        "version_id",
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("record_versions.version_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("body", Text, nullable=False),
)

# FHIR resources kept as they came (revision 0007): every valid resource that medtwin does not turn into a record
# (Immunization, Procedure, Claim, ... and a resource of a mapped type that lacks what medtwin needs), keyed by type
# and id, in its patient's compartment (``patient_id``; NULL for resources outside any, e.g. Organization). The
# FHIR export of a patient returns them (medtwin.interop.fhir.writer).
fhir_resources = Table(
    "fhir_resources",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("resource_id", String(200), primary_key=True),
    Column("patient_id", String(200)),
    *_provenance(),
    Column("recorded", UTCDateTime(), nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_fhir_resources_patient", "patient_id", "resource_type"),
)

# Resources outside a patient's compartment that the patient's resources refer to (Organization, Practitioner,
# Location, Medication...): the export of the patient includes them, as FHIR's Patient/$everything does.
patient_references = Table(
    "patient_references",
    metadata,
    Column("patient_id", String(200), primary_key=True),
    Column("resource_type", String(64), primary_key=True),
    Column("resource_id", String(200), primary_key=True),
)

# How far each consumer of the raw inbound log has read (revision 0004): the last ``raw_id`` it has processed.
consumer_cursors = Table(
    "consumer_cursors",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated", UTCDateTime(), nullable=False),
)

# Which worker set follows a consumer's cursors (revision 0050): the holder's token and until when its lease runs
# (medtwin.store.leases).
consumer_leases = Table(
    "consumer_leases",
    metadata,
    Column("consumer", String(200), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires", UTCDateTime(), nullable=False),
    Column("updated", UTCDateTime(), nullable=False),
)


# -- security (revision 0010) ---------------------------------------------------------------------------------------
# The audit trail (medtwin.security.audit): an append-only hash chain, one row per event. ``hash`` is SHA-256 of the
# previous row's hash and this row's canonical content; ``time`` is kept as canonical ISO text (UTC, microseconds) so
# the bytes hashed are the bytes stored on every database. Only pseudonymous patient ids are written here.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", String(40), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("role", String(60), nullable=False),
    Column("action", String(30), nullable=False),
    Column("resource", String(400), nullable=False),
    Column("patient_id", String(200)),
    Column("outcome", String(20), nullable=False),
    Column("source", String(200), nullable=False),
    Column("purpose", String(200)),
    Column("detail", Text),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_action", "action", "seq"),
    Index("ix_audit_log_patient", "patient_id", "seq"),
)

# A signed checkpoint of the chain's head after every appended batch (Ed25519 over seq and hash).
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("signed_at", String(40), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

# Each patient's data key (AES-256-GCM), wrapped by a master key (medtwin.crypto); erasing the patient deletes the
# row (crypto-shredding). ``key_ref`` is the key id under which payloads not tied to a patient are kept ("system:...").
patient_keys = Table(
    "patient_keys",
    metadata,
    Column("key_ref", String(200), primary_key=True),
    Column("master_key_id", String(64), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created", UTCDateTime(), nullable=False),
)

# Facts about the keys that are safe to keep in the database: the id of the keyring a store was written under and a
# check value of the secret (so a wrong key file is refused instead of writing ids no one can join up).
key_settings = Table(
    "key_settings",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# Keyed blind index of patient identifiers (revision 0010): HMAC-SHA-256 of "system|value" under a secret that is not
# in the database, so an MRN finds its patient without the MRN being stored in clear.
identity_index = Table(
    "identity_index",
    metadata,
    Column("blind", String(64), primary_key=True),
    Column("patient_id", String(200), primary_key=True),
    Index("ix_identity_index_patient", "patient_id"),
)
