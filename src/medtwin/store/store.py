"""The :class:`Store`: durable, idempotent persistence of records, raw inbound messages, events and snapshots.

One object per database. Every write is one transaction (the raw message and all its records commit together,
or nothing does) made of bulk ``INSERT ... ON CONFLICT DO NOTHING`` statements (:mod:`medtwin.store.batch`), so
loading the same source record twice stores it once; a newer version of a patient or encounter updates it and
is kept in the version history (:mod:`medtwin.store.versions`). SQLite runs in WAL mode with
``synchronous=FULL``, so a returned :meth:`Store.write` has reached the disk (safe to acknowledge). The object is
safe to share between threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Table,
    and_,
    bindparam,
    case,
    func,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, InterfaceError, NoSuchModuleError, OperationalError

from medtwin import codes as mcodes
from medtwin.errors import MedtwinError, ValidationError
from medtwin.records import (
    Coding,
    Condition,
    Encounter,
    Event,
    EventStatus,
    MedicationAdministration,
    MedicationRequest,
    Observation,
    Patient,
    Record,
    utc,
)
from medtwin.store import batch, codec, schema
from medtwin.store.checkpoint import FALLBACK_AUTOCHECKPOINT, WalCheckpointer
from medtwin.store.config import StoreConfigError, resolve_database_url
from medtwin.store.engine import (
    JoinedTransaction,
    SqliteSettings,
    WriteLock,
    WriteTransaction,
    is_memory_url,
    make_engine,
    prepare_sqlite_file,
    reason,
    safe_url,
    sqlite_file,
)
from medtwin.store.locks import SharedWriteLock, file_lock, lock_path_for
from medtwin.store.migrate import upgrade_to_head
from medtwin.store.resources import FhirResource, PatientLinks, kept_bodies

__all__ = ["EventNotFoundError", "RawLogEntry", "RawMessage", "RawStatus", "Store", "WriteResult"]

RawStatus = str


class _LockedRead:
    """A pooled connection held under the write lock (an in-memory database: one connection for every thread)."""

    def __init__(self, engine: Any, lock: WriteLock) -> None:
        self._engine = engine
        self._lock = lock
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        self._lock.acquire()
        try:
            self._conn = self._engine.connect()
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def __exit__(self, *exc: object) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        finally:
            self._lock.release()


class _UnitOfWork(threading.local):
    """This thread's open unit of work (:meth:`Store.unit_of_work`): its depth, transaction and connection."""

    depth = 0
    tx: WriteTransaction | None = None
    conn: Connection | None = None


class _ThreadTransaction(WriteTransaction):
    """A write transaction that this thread's reads and nested writes join while it is open."""

    def __init__(self, engine: Any, lock: WriteLock | None, unit: _UnitOfWork) -> None:
        super().__init__(engine, lock)
        self._unit = unit

    def __enter__(self) -> Connection:
        conn = super().__enter__()
        self._unit.conn = conn
        return conn

    def __exit__(self, *exc: Any) -> None:
        self._unit.conn = None
        super().__exit__(*exc)


_RAW_STATUSES = ("accepted", "rejected", "duplicate", "unmapped")
# FHIR observation statuses whose value must not be used as the current one
_NOT_A_VALUE = ("entered-in-error", "cancelled")
_EVENT_STATUSES = ("active", "acknowledged", "resolved")
_IDS_PER_QUERY = 900  # ids per IN (...) list, well under every driver's bound-parameter limit


class EventNotFoundError(MedtwinError, KeyError):
    """No event with the given id is stored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RawMessage:
    """An inbound payload as received (HL7 v2 message, FHIR bundle, NDJSON chunk...), logged before mapping.

    *related_raw_id* and *relation* name an entry this one refers to: ``conflict-of`` (a resend under a kept key
    with other content), ``retry-of`` (a rejected entry processed again); the store adds ``duplicate-of`` itself.
    """

    source_system: str
    source_id: str
    payload: bytes | str
    content_type: str
    received: datetime
    status: str = "accepted"
    reason: str | None = None
    related_raw_id: int | None = None
    relation: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if not self.source_system or not self.source_id:
            raise ValidationError(
                f"RawMessage: source_system and source_id are required, got {self.source_system!r}/{self.source_id!r}"
            )
        if self.status not in _RAW_STATUSES:
            raise ValidationError(f"RawMessage.status: {self.status!r} is not one of {', '.join(_RAW_STATUSES)}")
        object.__setattr__(self, "received", utc(self.received, field_name="RawMessage.received"))

    @property
    def payload_bytes(self) -> bytes:
        """The payload as bytes (text is stored UTF-8 encoded)."""
        return self.payload.encode() if isinstance(self.payload, str) else self.payload


@dataclass(frozen=True, slots=True, kw_only=True)
class RawLogEntry:
    """One row of the raw inbound log; *payload* is None when the query did not read it (:meth:`Store.raw_seen`)."""

    raw_id: int
    source_system: str
    source_id: str
    content_type: str
    received: datetime
    status: str
    reason: str | None
    record_count: int
    payload: bytes | None
    related_raw_id: int | None = None
    relation: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteResult:
    """What one :meth:`Store.write` did: records inserted, updated, already stored; whether the raw was a resend.

    ``inserted + updated + duplicates`` is the number of records given (0 of them counted for a resend). A resend
    under a key already kept is ``raw_duplicate`` when its content is the same (logged as a duplicate) and
    ``raw_conflict`` when it differs: then nothing was written, and the caller must keep it under a key of its own
    (``related_raw_id`` is the kept entry in both cases).
    """

    inserted: int
    duplicates: int
    raw_duplicate: bool = False
    raw_id: int | None = None
    updated: int = 0
    raw_conflict: bool = False
    related_raw_id: int | None = None

    def __repr__(self) -> str:
        # the fields added later are shown only when set, so the repr of a plain write reads as it always did
        extra = f", updated={self.updated}" if self.updated else ""
        if self.raw_conflict:
            extra += ", raw_conflict=True"
        if self.related_raw_id is not None:
            extra += f", related_raw_id={self.related_raw_id}"
        return (
            f"WriteResult(inserted={self.inserted}, duplicates={self.duplicates}, "
            f"raw_duplicate={self.raw_duplicate}, raw_id={self.raw_id}{extra})"
        )


class Store:
    """Persistence for medtwin records (SQLite embedded by default, PostgreSQL by URL).

    Parameters
    ----------
    url
        A SQLAlchemy database URL; None resolves it as :func:`medtwin.store.config.resolve_database_url` does.
    migrate
        Run the Alembic migrations to head on open (the default).
    cache_mib
        SQLite page cache per connection, in MiB (64: the listener's indexes stay cached; a consumer that streams
        through the raw log once, like the twin runtime's worker, needs far less).
    checkpoint_interval_s
        SQLite file databases: checkpoint the write-ahead log from a background thread every this many seconds
        instead of inside the commit that fills it (:mod:`medtwin.store.checkpoint`; the MLLP listener uses 0.5 s
        so that no acknowledgement waits for a checkpoint). None (default): SQLite's own checkpoints.
    checkpoints_elsewhere
        SQLite: another store on the same file checkpoints in the background (the listener's, for the twin
        runtime's worker), so this one's commits leave the WAL to it too (they checkpoint only past the fallback
        size, as with ``checkpoint_interval_s``).
    create
        SQLite: create the database file when it does not exist (mode 0600, readable by its owner only). False
        for commands that only read: a path where no database exists is then a :class:`StoreConfigError`
        (with a hint when ``sqlite:///`` was meant as an absolute path), not a new empty database.
    write_lock
        SQLite: a :class:`~medtwin.store.locks.SharedWriteLock` taken around every write transaction, shared with
        the other processes that write the file (the listener and its twin runtime worker), so that none of them
        waits in SQLite's sleeping busy handler. None (default): a lock for this process's threads only.
    synchronous
        SQLite: ``"FULL"`` (default): a returned write is on disk. ``"NORMAL"``: commits are not synced (a power
        loss can take the last ones back, never half of one); only for a writer of derived data that is computed
        again from the durable raw log after a loss, like the twin runtime's worker (its cursor is saved after its
        outputs, and SQLite's WAL keeps commits in order).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        migrate: bool = True,
        cache_mib: int = 64,
        checkpoint_interval_s: float | None = None,
        write_lock: SharedWriteLock | None = None,
        synchronous: str = "FULL",
        checkpoints_elsewhere: bool = False,
        create: bool = True,
    ) -> None:
        if cache_mib < 1:
            raise ValidationError(f"Store: cache_mib must be at least 1, got {cache_mib}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValidationError(f"Store: synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if checkpoint_interval_s is not None and not checkpoint_interval_s > 0:
            raise ValidationError(f"Store: checkpoint_interval_s must be positive, got {checkpoint_interval_s}")
        self.url = resolve_database_url(url)
        self.checkpointer: WalCheckpointer | None = None
        prepare_sqlite_file(self.url, create=create)
        background = checkpoint_interval_s is not None
        inline = not (background or checkpoints_elsewhere)
        try:
            self._engine = make_engine(
                self.url, SqliteSettings(cache_mib, 10000 if inline else FALLBACK_AUTOCHECKPOINT, synchronous)
            )
        except (ArgumentError, NoSuchModuleError) as exc:
            raise StoreConfigError(f"cannot open database {safe_url(self.url)}: {reason(exc)}") from exc
        self._dialect = self._engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValidationError(f"Store: database {self._dialect!r} is not supported (use SQLite or PostgreSQL)")
        self._unit = _UnitOfWork()
        self._one_connection = self._dialect == "sqlite" and is_memory_url(self.url)
        # SQLite has one writer; serialising writers in-process avoids busy-retry storms between threads.
        self._write_lock: WriteLock | None = None
        if self._dialect == "sqlite":
            self._write_lock = write_lock if write_lock is not None else threading.Lock()
        if migrate:
            self._migrate()
        path = self._engine.url.database
        if background and self._dialect == "sqlite" and path and not is_memory_url(self.url):
            assert checkpoint_interval_s is not None
            self.checkpointer = WalCheckpointer(path, interval_s=checkpoint_interval_s, lock=self._write_lock)

    def _migrate(self) -> None:
        """Upgrade the schema to head; processes opening one fresh SQLite file take turns (an OS-level lock):
        SQLite runs each ``CREATE TABLE`` in a transaction of its own, so two processes both found no schema and
        the second failed with "table ... already exists"."""
        path = sqlite_file(self.url)
        try:
            with file_lock(lock_path_for(path)) if path else contextlib.nullcontext(), self._engine.begin() as conn:
                upgrade_to_head(conn)
        except (OperationalError, InterfaceError) as exc:
            self._engine.dispose()
            raise StoreConfigError(f"cannot open database {safe_url(self.url)}: {reason(exc)}") from exc

    # -- lifecycle ----------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tools and migrations; domain code uses the methods)."""
        return self._engine

    def close(self) -> None:
        """Stop the background checkpointer (after a last checkpoint), then release every pooled connection."""
        if self.checkpointer is not None:
            self.checkpointer.close()
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._engine.url.render_as_string(hide_password=True)!r})"

    # -- writing ------------------------------------------------------------------------------------------
    def _insert(self, table: Table) -> Insert:
        if self._dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    def _transaction(self) -> WriteTransaction | JoinedTransaction:
        unit = self._unit
        if unit.conn is not None:  # this thread's open transaction: a unit of work, or a write in progress
            return JoinedTransaction(unit.conn)
        if unit.depth:  # the unit's first write: take the lock now (its rows were encoded before)
            unit.tx = WriteTransaction(self._engine, self._write_lock)
            unit.conn = unit.tx.__enter__()
            return JoinedTransaction(unit.conn)
        return _ThreadTransaction(self._engine, self._write_lock, unit)

    def _reading(self) -> AbstractContextManager[Connection]:
        """A connection to read with: this thread's open transaction if there is one (its writes are visible);
        on an in-memory database, whose one connection every thread shares, the pooled connection under the write
        lock (handing it back rolls back what is on it: a read beside another thread's open transaction undid that
        transaction, silently); else a pooled connection."""
        unit = self._unit.conn
        if unit is not None:
            return JoinedTransaction(unit)
        if self._one_connection and self._write_lock is not None:
            return _LockedRead(self._engine, self._write_lock)
        return self._engine.connect()

    @contextmanager
    def unit_of_work(self) -> Iterator[None]:
        """Every write this thread makes through the store inside the block, in ONE transaction.

        One write lock and one commit for all of them: all are stored or, if the block raises, none. The lock is
        taken at the first write (so what the block computes before it, such as the JSON of the rows a ``write``
        encodes, does not hold up other writers) and kept until the block ends. The twin runtime's worker stores
        each group's events, resolved alerts, due snapshots and its cursor this way: with separate transactions it
        waited for the write lock once per write, half its time beside two listener processes
        (docs/benchmarks.md). Nested blocks join the outer one. Reads through the store on the same thread after
        the unit's first write (``events``, ``latest_snapshot``, :func:`~medtwin.store.accepted_after`...) run in
        the unit and see its writes; other threads and processes see them once the block ends.
        """
        unit = self._unit
        unit.depth += 1
        if unit.depth > 1:
            try:
                yield
            finally:
                unit.depth -= 1
            return
        failure: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            tx, unit.tx, unit.conn, unit.depth = unit.tx, None, None, 0
            if tx is not None:  # commit, or roll back on failure
                tx.__exit__(type(failure) if failure else None, failure, failure.__traceback__ if failure else None)

    def _insert_raw(self, conn: Connection, raw: RawMessage, status: str, reason: str | None) -> int:
        stmt = schema.raw_inbound.insert().returning(schema.raw_inbound.c.raw_id)
        return int(conn.execute(stmt, batch.raw_row(raw, status, reason, 0)).scalar_one())

    def write(
        self, records: Sequence[Record | FhirResource | PatientLinks], raw: RawMessage | None = None
    ) -> WriteResult:
        """Store *records* (and the *raw* message they came from) in one durable transaction.

        A raw message whose (source system, source id) was already accepted writes nothing and returns
        ``raw_duplicate=True`` (the resend is logged as a ``duplicate`` row without payload); one with other content
        writes nothing and returns ``raw_conflict=True`` (see :class:`WriteResult`). An insert-once record
        (observation, condition, medication, event) whose provenance, or primary id, is already stored is skipped
        and counted in ``duplicates``. A patient or encounter that is already stored is updated when the new
        version changes it (``updated``; the version is kept in the history, see :mod:`medtwin.store.versions`)
        and counted in ``duplicates`` when it is a version already stored or changes nothing.
        """
        return self.write_batch([(records, raw)])[0]

    def write_batch(
        self, items: Sequence[tuple[Sequence[Record | FhirResource | PatientLinks], RawMessage | None]]
    ) -> list[WriteResult]:
        """Several :meth:`write` calls in ONE transaction (group commit: one disk sync for all of them).

        Each (records, raw) pair keeps its own idempotency, as if written one after the other in order; the whole
        batch takes one bulk insert per table (:mod:`medtwin.store.batch`). If anything fails, nothing of the batch
        is stored (a caller that wants per-message isolation retries the items one by one).
        """
        groups = [batch.group_records(records) for records, _ in items]
        # rows encoded before the write lock is taken: other writers (threads, the twin worker) wait less
        encoded = [batch.encode_plain(g) for g in groups] if self._dialect == "sqlite" else None
        with self._transaction() as conn:
            outcomes = batch.write_items(conn, self._dialect, items, groups, encoded)
        return [
            WriteResult(
                inserted=o.inserted,
                duplicates=o.duplicates,
                raw_duplicate=o.raw_duplicate,
                raw_id=o.raw_id,
                updated=o.updated,
                raw_conflict=o.raw_conflict,
                related_raw_id=o.related_raw_id,
            )
            for o in outcomes
        ]

    def reject(self, raw: RawMessage, reason: str) -> int:
        """Log *raw* as rejected, with *reason* (dead letter; kept forever); returns its raw id."""
        with self._transaction() as conn:
            return self._insert_raw(conn, raw, "rejected", reason)

    def log_raw(self, raw: RawMessage, status: str, reason: str | None = None) -> int | None:
        """Log *raw* with *status* (e.g. ``unmapped``) without records; returns its raw id (None if a resend).

        An ``unmapped`` (or ``accepted``) entry is kept once per key, like :meth:`write`'s raw message: a resend of
        the same content is logged as a duplicate and returns None.
        """
        if status not in _RAW_STATUSES:
            raise ValidationError(f"Store.log_raw: status {status!r} is not one of {', '.join(_RAW_STATUSES)}")
        if status in batch.KEPT_STATUSES:
            return self.write([], dataclasses.replace(raw, status=status, reason=reason)).raw_id
        with self._transaction() as conn:
            return self._insert_raw(conn, raw, status, reason)

    # -- raw log ------------------------------------------------------------------------------------------
    @staticmethod
    def _raw_entry(row: Any) -> RawLogEntry:
        return RawLogEntry(
            raw_id=int(row.raw_id),
            source_system=row.source_system,
            source_id=row.source_id,
            content_type=row.content_type,
            received=row.received,
            status=row.status,
            reason=row.reason,
            record_count=int(row.record_count),
            payload=bytes(row.payload) if "payload" in row._fields else None,
            related_raw_id=None if row.related_raw_id is None else int(row.related_raw_id),
            relation=row.relation,
        )

    def raw_log(
        self, status: str | None = None, limit: int = 100, *, relation: str | None = None, before: int | None = None
    ) -> list[RawLogEntry]:
        """The newest *limit* raw inbound entries, newest first: only those with *status* and *relation*
        (``conflict-of``, ``retry-of``, ``duplicate-of``) when given, and with a raw id below *before* (paging)."""
        t = schema.raw_inbound
        stmt = select(t).order_by(t.c.raw_id.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(t.c.status == status)
        if relation is not None:
            stmt = stmt.where(schema.unindexed(t.c.relation) == relation)
        if before is not None:
            stmt = stmt.where(t.c.raw_id < before)
        with self._reading() as conn:
            return [self._raw_entry(r) for r in conn.execute(stmt)]

    def raw_entry(self, raw_id: int) -> RawLogEntry | None:
        """The raw inbound entry *raw_id*, payload included, or None."""
        t = schema.raw_inbound
        with self._reading() as conn:
            row = conn.execute(select(t).where(t.c.raw_id == raw_id)).first()
        return None if row is None else self._raw_entry(row)

    def raw_related(self, raw_id: int) -> list[RawLogEntry]:
        """The entries that refer to entry *raw_id* (its duplicates, conflicting resends and retries), oldest first,
        without their payloads."""
        t = schema.raw_inbound
        stmt = select(*(c for c in t.c if c.name != "payload")).where(t.c.related_raw_id == raw_id)
        with self._reading() as conn:
            return [self._raw_entry(r) for r in conn.execute(stmt.order_by(t.c.raw_id))]

    def raw_seen(
        self, source_system: str, source_id: str, *, statuses: Sequence[str] = ("accepted",)
    ) -> RawLogEntry | None:
        """The first raw entry for (*source_system*, *source_id*) with one of *statuses* (default: accepted), or None.

        ``statuses=("accepted", "unmapped")`` also finds payloads that were kept but held nothing to map, so that
        a loader can skip them on a resend. Only the key columns are read: the entry's ``payload`` is None
        (use :meth:`raw_log` for payloads), so an existence check stays cheap however large the payload.
        """
        for status in statuses:
            if status not in _RAW_STATUSES:
                raise ValidationError(f"Store.raw_seen: status {status!r} is not one of {', '.join(_RAW_STATUSES)}")
        t = schema.raw_inbound
        stmt = (
            select(*(c for c in t.c if c.name != "payload"))
            .where(t.c.source_system == source_system, t.c.source_id == source_id, t.c.status.in_(list(statuses)))
            .order_by(t.c.raw_id)
            .limit(1)
        )
        with self._reading() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else self._raw_entry(row)

    # -- reading ------------------------------------------------------------------------------------------
    def _bodies(self, stmt: Any) -> list[str]:
        with self._reading() as conn:
            return [r[0] for r in conn.execute(stmt)]

    def patients(self) -> list[Patient]:
        """Every patient, with identity, ordered by patient id."""
        p, i = schema.patients, schema.patient_identity
        stmt = select(p.c.body, i.c.body).select_from(p.outerjoin(i)).order_by(p.c.patient_id)
        with self._reading() as conn:
            return [self._patient(body, ident) for body, ident in conn.execute(stmt)]

    def patient_ids(self, prefix: str = "", *, limit: int | None = None) -> list[str]:
        """The ids of the patients whose id starts with *prefix* (case-sensitive), at most *limit* of them.

        Reads ids only (no record bodies). The match is ``LIKE 'prefix%'`` with ``%``, ``_`` and the escape
        character escaped, so they match literally, plus an exact comparison of the leading characters because
        SQLite's ``LIKE`` ignores ASCII case. Ordered by the database's collation of ``patient_id``.
        """
        if limit is not None and limit < 1:
            raise ValidationError(f"Store.patient_ids: limit must be a positive number of ids, got {limit}")
        p = schema.patients
        stmt = select(p.c.patient_id).order_by(p.c.patient_id)
        if prefix:
            stmt = stmt.where(
                p.c.patient_id.startswith(prefix, autoescape=True),
                func.substr(p.c.patient_id, 1, len(prefix)) == prefix,
            )
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._reading() as conn:
            return [str(r[0]) for r in conn.execute(stmt)]

    @staticmethod
    def _patient(body: str, identity: str | None) -> Patient:
        patient = codec.decode(Patient, body)
        if identity is None:
            return patient
        return dataclasses.replace(patient, identity=codec.decode_identity(identity))

    def patient(self, patient_id: str) -> Patient | None:
        """The patient *patient_id* with identity, or None."""
        p, i = schema.patients, schema.patient_identity
        stmt = select(p.c.body, i.c.body).select_from(p.outerjoin(i)).where(p.c.patient_id == patient_id)
        with self._reading() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else self._patient(row[0], row[1])

    @staticmethod
    def _code_match(coding: Coding) -> ColumnElement[bool]:
        """Rows coded as *coding*, its LOINC mapping, or carrying it as their LOINC code (one index per branch).

        A row whose primary code is LOINC has ``loinc_code = code``, so for a LOINC *coding* the exact branch
        adds nothing; for any other coding it is asked through the partial index of non-LOINC rows, whose
        condition is stated literally so that the planner can use it (revision 0003). A LOINC code outside the
        dense vital-sign streams states the sparse index's condition for the same reason (revision 0005); a dense
        one is read through the (patient, time, LOINC) index.
        """
        t = schema.observations
        target = mcodes.normalise_to_loinc(coding)
        by_loinc: ColumnElement[bool] = t.c.loinc_code == target.code
        if target.code not in schema.DENSE_LOINC:
            by_loinc = and_(by_loinc, schema.SPARSE_LOINC)
        if coding.system == mcodes.LOINC:
            return by_loinc
        exact = and_(t.c.code_system == coding.system, t.c.code == coding.code, schema.NOT_LOINC_PRIMARY)
        return or_(exact, by_loinc) if target.system == mcodes.LOINC else exact

    def observations(
        self,
        patient_id: str,
        code: Coding | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Observation]:
        """Observations of *patient_id* in time order, optionally of one *code*, with ``since <= t < until``.

        A LOINC *code* also matches observations whose primary MDC code maps to it or that carry it as an
        alternative code.
        """
        t = schema.observations
        stmt = select(t.c.body).where(t.c.patient_id == patient_id)
        if code is not None:
            stmt = stmt.where(self._code_match(code))
        if since is not None:
            stmt = stmt.where(t.c.effective >= utc(since, field_name="since"))
        if until is not None:
            stmt = stmt.where(t.c.effective < utc(until, field_name="until"))
        stmt = stmt.order_by(t.c.effective, t.c.observation_id)
        return [codec.decode(Observation, b) for b in self._bodies(stmt)]

    def latest_observations(
        self, patient_id: str, codes: Sequence[Coding], since: datetime | None = None
    ) -> dict[str, Observation]:
        """The newest observation of *patient_id* for each coding in *codes*, keyed by the coding's code.

        Observations with status ``entered-in-error`` or ``cancelled`` are skipped: a retracted value is not a
        patient's latest value (they stay in :meth:`observations`).
        """
        t = schema.observations
        found: dict[str, Observation] = {}
        with self._reading() as conn:
            for coding in codes:
                stmt = select(t.c.body).where(
                    t.c.patient_id == patient_id, self._code_match(coding), t.c.status.not_in(_NOT_A_VALUE)
                )
                if since is not None:
                    stmt = stmt.where(t.c.effective >= utc(since, field_name="since"))
                body = conn.execute(stmt.order_by(t.c.effective.desc(), t.c.observation_id.desc()).limit(1)).scalar()
                if body is not None:
                    found[coding.code] = codec.decode(Observation, body)
        return found

    def latest_results(self, patient_id: str, limit: int = 50) -> list[Observation]:
        """The newest observation of each code of *patient_id* outside the dense vital-sign streams (labs and
        other results: what ``medtwin patient`` shows under "Results"), newest first, at most *limit* codes.

        Read through the two partial indexes that hold exactly those rows (revisions 0003 and 0005), so a
        patient with months of 1 Hz vital signs costs no scan of them.
        """
        t = schema.observations
        sparse = select(t.c.body, t.c.effective).where(t.c.patient_id == patient_id, schema.SPARSE_LOINC)
        other = select(t.c.body, t.c.effective).where(
            t.c.patient_id == patient_id, schema.NOT_LOINC_PRIMARY, t.c.loinc_code.is_(None)
        )
        with self._reading() as conn:
            rows = [*conn.execute(sparse), *conn.execute(other)]
        rows.sort(key=lambda r: r[1], reverse=True)
        found: dict[tuple[str, str], Observation] = {}
        for body, _ in rows:
            obs = codec.decode(Observation, body)
            if obs.status not in _NOT_A_VALUE:
                found.setdefault((obs.code.system, obs.code.code), obs)
                if len(found) >= limit:
                    break
        return list(found.values())

    def encounters(
        self, patient_id: str | None = None, since: datetime | None = None, until: datetime | None = None
    ) -> list[Encounter]:
        """Encounters overlapping [*since*, *until*) (open ones count as ongoing), ordered by start."""
        t = schema.encounters
        stmt = select(t.c.body)
        if patient_id is not None:
            stmt = stmt.where(t.c.patient_id == patient_id)
        if since is not None:
            stmt = stmt.where(or_(t.c.end.is_(None), t.c.end >= utc(since, field_name="since")))
        if until is not None:
            stmt = stmt.where(t.c.start < utc(until, field_name="until"))
        stmt = stmt.order_by(t.c.start, t.c.encounter_id)
        return [codec.decode(Encounter, b) for b in self._bodies(stmt)]

    def conditions(self, patient_id: str) -> list[Condition]:
        """Conditions of *patient_id*, by onset (unknown onset last)."""
        t = schema.conditions
        stmt = select(t.c.body).where(t.c.patient_id == patient_id)
        stmt = stmt.order_by(t.c.onset.is_(None), t.c.onset, t.c.condition_id)
        return [codec.decode(Condition, b) for b in self._bodies(stmt)]

    def medication_requests(self, patient_id: str) -> list[MedicationRequest]:
        """Medication requests (orders and proposals) of *patient_id*, by authored time."""
        t = schema.medication_requests
        stmt = select(t.c.body).where(t.c.patient_id == patient_id)
        stmt = stmt.order_by(t.c.authored.is_(None), t.c.authored, t.c.request_id)
        return [codec.decode(MedicationRequest, b) for b in self._bodies(stmt)]

    def medication_administrations(self, patient_id: str) -> list[MedicationAdministration]:
        """Medication administrations of *patient_id*, by start time."""
        t = schema.medication_administrations
        stmt = select(t.c.body).where(t.c.patient_id == patient_id).order_by(t.c.start, t.c.administration_id)
        return [codec.decode(MedicationAdministration, b) for b in self._bodies(stmt)]

    def kept_resources(self, patient_id: str) -> list[str]:
        """The FHIR resources kept whole for *patient_id* (JSON text): those in the patient's compartment, then the
        resources outside any compartment that they refer to (see :mod:`medtwin.store.resources`)."""
        with self._reading() as conn:
            return kept_bodies(conn, patient_id)

    # -- events -------------------------------------------------------------------------------------------
    def add_events(self, events: Sequence[Event]) -> None:
        """Store *events* (one transaction; an event id already stored is left as it is)."""
        for e in events:
            if not isinstance(e, Event):
                raise ValidationError(f"Store.add_events: expected Event, got {type(e).__name__}")
        if events:
            self.write(events)

    def events(
        self,
        patient_id: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
    ) -> list[Event]:
        """Events in time order, filtered by patient, kind, status and ``time >= since``."""
        t = schema.events
        stmt = select(t.c.body)
        if patient_id is not None:
            stmt = stmt.where(t.c.patient_id == patient_id)
        if kind is not None:
            stmt = stmt.where(t.c.kind == kind)
        if status is not None:
            # for one patient, the (patient_id, time) index, not a scan of every event of that status
            stmt = stmt.where((schema.unindexed(t.c.status) if patient_id is not None else t.c.status) == status)
        if since is not None:
            stmt = stmt.where(t.c.time >= utc(since, field_name="since"))
        stmt = stmt.order_by(t.c.time, t.c.event_id)
        return [codec.decode(Event, b) for b in self._bodies(stmt)]

    def upsert_events(self, events: Sequence[Event]) -> None:
        """Store the latest version of each event in ONE transaction: ids already stored are replaced (severity,
        status, time, body: an alert escalated by its twin), the others inserted as by :meth:`add_events`."""
        for e in events:
            if not isinstance(e, Event):
                raise ValidationError(f"Store.upsert_events: expected Event, got {type(e).__name__}")
        latest = {e.event_id: e for e in events}  # an id given twice: its last version
        if not latest:
            return
        t = schema.events
        ids = list(latest)
        with self._transaction() as conn:
            known: set[str] = set()
            for i in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[i : i + _IDS_PER_QUERY]
                known.update(conn.execute(select(t.c.event_id).where(t.c.event_id.in_(chunk))).scalars())
            if known:
                conn.execute(
                    update(t)
                    .where(t.c.event_id == bindparam("b_id"))
                    .values(
                        severity=bindparam("b_severity"),
                        status=bindparam("b_status"),
                        time=bindparam("b_time"),
                        body=bindparam("b_body"),
                        # an escalation re-activates an acknowledged alert: its acknowledgement no longer applies
                        status_by=case((bindparam("b_status") == "active", null()), else_=t.c.status_by),
                        status_time=case((bindparam("b_status") == "active", null()), else_=t.c.status_time),
                    ),
                    [
                        {
                            "b_id": i,
                            "b_severity": latest[i].severity,
                            "b_status": latest[i].status,
                            "b_time": latest[i].time,
                            "b_body": codec.encode(latest[i]),
                        }
                        for i in known
                    ],
                )
            fresh = [e for i, e in latest.items() if i not in known]
            if fresh:
                self.write(fresh)  # joins this transaction

    def event_counts(self, *, kind: str | None = None, patient_id: str | None = None) -> dict[str, int]:
        """How many events there are by status (``{"active": 4, "resolved": 15}``), for a kind and a patient."""
        t = schema.events
        stmt = select(t.c.status, func.count()).group_by(t.c.status)
        if kind is not None:
            stmt = stmt.where(t.c.kind == kind)
        if patient_id is not None:
            stmt = stmt.where(t.c.patient_id == patient_id)
        with self._reading() as conn:
            return {str(status): int(n) for status, n in conn.execute(stmt)}

    def update_event_status(self, event_id: str, status: str, by: str | None = None) -> Event:
        """Set the status of event *event_id* (acknowledge / resolve) and return the updated event."""
        return self._set_event_statuses("update_event_status", [event_id], status, by)[0]

    def update_event_statuses(self, event_ids: Sequence[str], status: str, by: str | None = None) -> list[Event]:
        """Set the status of every event in *event_ids* in ONE transaction; the updated events, in the order given.

        Validation and errors are those of :meth:`update_event_status`: an unknown *status* raises
        :class:`ValidationError`; ids that are not stored raise :class:`EventNotFoundError` (a ``KeyError``) naming
        them, and then no event is changed. An id given twice is updated once (and returned twice).
        """
        if isinstance(event_ids, str):
            raise ValidationError(
                f"update_event_statuses: expected a sequence of event ids, got the string {event_ids!r}"
            )
        return self._set_event_statuses("update_event_statuses", event_ids, status, by)

    def _set_event_statuses(self, caller: str, event_ids: Sequence[str], status: str, by: str | None) -> list[Event]:
        if status not in _EVENT_STATUSES:
            raise ValidationError(f"{caller}: {status!r} is not one of {', '.join(_EVENT_STATUSES)}")
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return []
        t = schema.events
        updated: dict[str, Event] = {}
        with self._transaction() as conn:
            for i in range(0, len(ids), _IDS_PER_QUERY):
                stmt = select(t.c.event_id, t.c.body).where(t.c.event_id.in_(ids[i : i + _IDS_PER_QUERY]))
                for event_id, body in conn.execute(stmt):
                    event = codec.decode(Event, body)
                    updated[event_id] = dataclasses.replace(event, status=cast(EventStatus, status))
            missing = [i for i in ids if i not in updated]
            if missing:
                shown = ", ".join(repr(i) for i in missing[:10]) + (
                    f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                )
                raise EventNotFoundError(f"{caller}: no event with id {shown}")
            now = datetime.now(UTC)
            conn.execute(
                update(t)
                .where(t.c.event_id == bindparam("b_id"))
                .values(status=status, status_by=by, status_time=now, body=bindparam("b_body")),
                [{"b_id": i, "b_body": codec.encode(e)} for i, e in updated.items()],
            )
        return [updated[i] for i in event_ids]

    # -- twin snapshots -----------------------------------------------------------------------------------
    def save_snapshot(self, twin_id: str, blob: bytes, at: datetime) -> None:
        """Store a snapshot *blob* of twin *twin_id* taken at *at*."""
        if not twin_id:
            raise ValidationError("save_snapshot: twin_id must be a non-empty string")
        with self._transaction() as conn:
            conn.execute(
                schema.twin_snapshots.insert(),
                {"twin_id": twin_id, "at": utc(at, field_name="snapshot at"), "blob": bytes(blob)},
            )

    def latest_snapshot(self, twin_id: str) -> tuple[datetime, bytes] | None:
        """The newest (time, blob) snapshot of twin *twin_id*, or None."""
        t = schema.twin_snapshots
        stmt = select(t.c.at, t.c.blob).where(t.c.twin_id == twin_id)
        stmt = stmt.order_by(t.c.at.desc(), t.c.snapshot_id.desc()).limit(1)
        with self._reading() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else (row[0], bytes(row[1]))

    # -- summaries ----------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Number of rows in each table (for summaries and tests)."""
        tables: Iterable[Table] = (
            schema.patients,
            schema.encounters,
            schema.conditions,
            schema.observations,
            schema.medication_requests,
            schema.medication_administrations,
            schema.events,
            schema.raw_inbound,
            schema.twin_snapshots,
        )
        with self._reading() as conn:
            return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in tables}
