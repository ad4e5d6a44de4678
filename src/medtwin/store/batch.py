"""The store's write path: a whole batch of (records, raw message) items in a few bulk statements.

One call writes every item of a group commit: one insert per table for the whole batch (not three statements
per message), raw-log keys matched in Python, record rows encoded once. On SQLite each insert is one prepared
statement (many rows each) run by the driver on value tuples (:data:`medtwin.store.rows.VALUES_OF`), and the
rows it inserted are told apart by rowid; on PostgreSQL it is a multi-row ``INSERT ... RETURNING``. Semantics
per item are those of one :meth:`medtwin.store.Store.write` after another, in order:

* raw messages: one *kept* row (accepted, or unmapped) per (source system, source id); a resend of the same
  content (of an earlier batch or earlier in this one) writes none of its records and is logged as a
  ``duplicate`` row naming the original ``raw_id``; a resend of *other* content under that key is a conflict:
  nothing of it is written, and the outcome says so (the caller keeps it under a key of its own);
* insert-once records (observations, conditions, medications, events): ``ON CONFLICT DO NOTHING`` on the id and
  the provenance, the skipped ones counted as duplicates;
* patients and encounters: insert, or update through :mod:`medtwin.store.versions` (the version that changed
  the record is kept in ``record_versions``); a version already stored (same provenance) or one that changes
  nothing is a duplicate.

The caller owns the transaction: if anything raises, nothing of the batch is stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from medtwin.errors import ValidationError
from medtwin.records import Encounter, Patient, Provenance, Record
from medtwin.store import codec, rows, schema
from medtwin.store.protect import FHIR_SYSTEM_KEY, SYSTEM_KEY, Sealer
from medtwin.store.resources import FhirResource, PatientLinks, write_links, write_resources
from medtwin.store.shards import entry_patient, patient_hash
from medtwin.store.versions import encounter_as_of, merge_encounter, merge_patient, same_content

if TYPE_CHECKING:
    from medtwin.store.store import RawMessage

__all__ = [
    "KEPT_STATUSES",
    "RAW_COLUMNS",
    "ItemOutcome",
    "encode_plain",
    "group_records",
    "insert_rows",
    "raw_digest",
    "raw_row",
    "raw_values",
    "seal_raw",
    "sqlite_begin_immediate",
    "write_items",
]

_VERSIONED = (Patient, Encounter)
_KEPT = (FhirResource, PatientLinks)  # written by medtwin.store.resources
_PLAIN = tuple(entry for entry in rows.TABLES if entry[0] not in _VERSIONED)


@dataclass(slots=True)
class ItemOutcome:
    """What happened to one item: records inserted, updated and skipped; the raw row id, or a resend of a kept key
    (``raw_duplicate``: the same content; ``raw_conflict``: other content, nothing written) and its original."""

    inserted: int = 0
    updated: int = 0
    duplicates: int = 0
    raw_duplicate: bool = False
    raw_id: int | None = None
    records: int = 0
    raw_conflict: bool = False
    related_raw_id: int | None = None


@dataclass(slots=True)
class _Item:
    records: Sequence[Record | FhirResource | PatientLinks]
    groups: dict[type[Any], list[Any]]
    raw: RawMessage | None
    encoded: dict[type[Any], list[tuple[Any, ...]]]  # SQLite value tuples by type (empty elsewhere)
    outcome: ItemOutcome = field(default_factory=ItemOutcome)


def group_records(records: Sequence[Record | FhirResource | PatientLinks]) -> dict[type[Any], list[Any]]:
    """*records* grouped by type; raises :class:`ValidationError` for anything the store cannot hold."""
    groups: dict[type[Any], list[Any]] = {}
    for record in records:
        kind = type(record)
        if kind not in rows.TABLE_OF and kind not in _KEPT:
            raise ValidationError(f"Store.write: {kind.__name__} is not a storable record type")
        groups.setdefault(kind, []).append(record)
    return groups


def encode_plain(groups: dict[type[Any], list[Any]]) -> dict[type[Any], list[tuple[Any, ...]]]:
    """The SQLite value tuples of the insert-once records in *groups* (observations, conditions, ...), by type.

    Computed before the write transaction (``write_items(..., encoded=...)``), so the write lock, which other
    threads and processes wait for, is held for SQLite's work only, not for encoding the rows.
    """
    return {
        kind: [rows.VALUES_OF[kind](r, schema.sqlite_utc_text) for r in records]
        for kind, records in groups.items()
        if kind not in _VERSIONED and kind not in _KEPT
    }


_MAX_PARAMS = 30_000  # bound parameters per statement (SQLite allows 32,766 since 3.32; PostgreSQL 65,535)
_PROCESSORS: dict[tuple[str, str, str], tuple[tuple[str, ...], tuple[Callable[[Any], Any] | None, ...]]] = {}


def _bulk_insert(
    conn: Connection, table: Table, params: list[dict[str, Any]], returning: Sequence[str] = ()
) -> list[Any]:
    """Insert *params* into *table* as multi-row ``INSERT ... ON CONFLICT DO NOTHING [RETURNING ...]`` statements.

    The statement text is built once per chunk and run on the driver directly: SQLAlchemy's per-row parameter
    compilation costs more than the database's insert for small rows. Each column's bind processor (UTC times,
    binary) is still applied, so the stored values are exactly those of a Core insert.
    """
    if not params:
        return []
    dialect = conn.dialect
    names = tuple(params[0])
    cache_key = (dialect.name, table.name, ",".join(names))
    if cache_key not in _PROCESSORS:
        _PROCESSORS[cache_key] = (
            names,
            tuple(table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names),
        )
    _, processors = _PROCESSORS[cache_key]
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    row_marks = "(" + ", ".join([mark] * len(names)) + ")"
    head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) VALUES "
    tail = " ON CONFLICT DO NOTHING"
    if returning:
        tail += " RETURNING " + ", ".join(quote(n) for n in returning)
    per_chunk = max(1, _MAX_PARAMS // len(names))
    out: list[Any] = []
    for i in range(0, len(params), per_chunk):
        chunk = params[i : i + per_chunk]
        flat: list[Any] = []
        for row in chunk:
            for name, proc in zip(names, processors, strict=True):
                value = row[name]
                flat.append(proc(value) if proc is not None and value is not None else value)
        result = conn.exec_driver_sql(head + ", ".join([row_marks] * len(chunk)) + tail, tuple(flat))
        if returning:
            out.extend(result.all())
    return out


def insert_rows(conn: Connection, table: Table, params: list[dict[str, Any]]) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` of *params* in multi-row statements (:func:`_bulk_insert`)."""
    _bulk_insert(conn, table, params)


_LAST_ROWID = 2**63 - 1  # past it SQLite picks rowids at random, and "rowid > before" no longer finds new rows
_SQLITE_INSERTS: dict[tuple[str, tuple[str, ...], int], str] = {}
_SQLITE_MAX_ROWS = 1024  # rows per statement at most (and at most the driver's bound-parameter limit allows)


def sqlite_begin_immediate(conn: Connection) -> None:
    """Start *conn*'s write transaction with ``BEGIN IMMEDIATE`` (the write lock now) unless one is open."""
    _sqlite_driver(conn)


def _sqlite_driver(conn: Connection) -> sqlite3.Connection:
    """The pysqlite connection under *conn*, in a write transaction (``BEGIN IMMEDIATE`` when none is open).

    Holding the write lock from the first statement makes "the rows above the largest rowid read before the
    insert" exactly the rows this transaction inserted, whatever other connections do.
    """
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    if not driver.in_transaction:
        driver.execute("BEGIN IMMEDIATE")
    return driver


def _sqlite_chunks(total: int, most: int) -> list[int]:
    """Row counts of the statements that insert *total* rows: full chunks of the largest power of two <= *most*,
    then the binary digits of the rest (so a handful of distinct statements serves every batch size)."""
    size = 1 << (max(1, most).bit_length() - 1)
    sizes = [size] * (total // size)
    rest = total % size
    while rest:
        part = 1 << (rest.bit_length() - 1)
        sizes.append(part)
        rest -= part
    return sizes


def _sqlite_insert(
    driver: sqlite3.Connection, table: Table, names: Sequence[str], values: list[tuple[Any, ...]]
) -> tuple[int, int] | None:
    """``INSERT ... ON CONFLICT DO NOTHING`` of *values*, many rows per statement.

    Multi-row ``VALUES`` rather than ``executemany``: the driver lets go of the interpreter lock for every
    statement it steps, and a writer thread that must win the lock back once per row waits for the event loop's
    switch interval each time (measured: 4 ms per row instead of 10 us with a busy event loop beside it).

    Returns (the largest rowid before the insert, the number of rows inserted); the rows inserted are those with
    a larger rowid, because SQLite gives a new row of a rowid table the largest rowid + 1. Returns None, having
    inserted nothing, when that rule no longer holds (the largest possible rowid is taken).
    """
    width = len(names)
    cursor = driver.cursor()
    try:
        before = cursor.execute(f'SELECT max(rowid) FROM "{table.name}"').fetchone()[0] or 0
        if before >= _LAST_ROWID:
            return None
        most = min(_SQLITE_MAX_ROWS, driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
        inserted = 0
        start = 0
        for size in _sqlite_chunks(len(values), most):
            key = (table.name, tuple(names), size)
            sql = _SQLITE_INSERTS.get(key)
            if sql is None:
                columns = ", ".join(f'"{n}"' for n in names)
                row = "(" + ", ".join("?" * width) + ")"
                sql = f'INSERT INTO "{table.name}" ({columns}) VALUES {", ".join([row] * size)} ON CONFLICT DO NOTHING'
                _SQLITE_INSERTS[key] = sql
            chunk = values[start : start + size]
            start += size
            cursor.execute(sql, chunk[0] if size == 1 else [v for r in chunk for v in r])
            inserted += cursor.rowcount
        return before, inserted
    finally:
        cursor.close()


def _insert_once(
    conn: Connection,
    driver: sqlite3.Connection | None,
    kind: type[Any],
    records: list[Any],
    values: list[tuple[Any, ...]],
) -> tuple[list[Any], set[Any] | None]:
    """Insert *records* of *kind* (ON CONFLICT DO NOTHING): their primary keys, and the set of those inserted.

    The set is None when every record was inserted (the common case, which then costs no read back). On SQLite
    *values* are the records' value tuples (:func:`encode_plain`); elsewhere they are not used.
    """
    table, pk, row_of = rows.TABLE_OF[kind]
    if driver is not None:
        done = _sqlite_insert(driver, table, rows.COLUMNS[kind], values)
        if done is not None:
            ids = [v[0] for v in values]
            before, inserted = done
            if inserted == len(values):
                return ids, None
            stmt = f'SELECT "{pk}" FROM "{table.name}" WHERE rowid > ?'
            return ids, {r[0] for r in driver.execute(stmt, (before,))}
    params = [row_of(r) for r in records]
    return [p[pk] for p in params], {r[0] for r in _bulk_insert(conn, table, params, (pk,))}


def _key(p: Provenance | None) -> tuple[str, str] | None:
    return None if p is None else (p.source_system, p.source_id)


def write_items(
    conn: Connection,
    dialect: str,
    items: Sequence[tuple[Sequence[Record | FhirResource | PatientLinks], RawMessage | None]],
    groups: Sequence[dict[type[Any], list[Any]]],
    encoded: Sequence[dict[type[Any], list[tuple[Any, ...]]]] | None = None,
    sealer: Sealer | None = None,
) -> list[ItemOutcome]:
    """Write *items* (with their records already grouped by :func:`group_records`) on *conn*; one outcome each.

    *encoded* (SQLite): each item's value tuples from :func:`encode_plain`, best computed before the transaction
    (encoded here when not given); ignored elsewhere. *sealer*: encryption at rest (:mod:`medtwin.store.protect`):
    raw payloads, patient bodies and identities and kept FHIR resources are sealed, digests keyed (the store always
    gives one; None writes plaintext, for tools that read old databases only).
    """
    if dialect != "sqlite":
        encoded = [{} for _ in groups]
    elif encoded is None:
        encoded = [encode_plain(g) for g in groups]
    batch = [_Item(records, g, raw, e) for (records, raw), g, e in zip(items, groups, encoded, strict=True)]
    for item in batch:
        item.outcome.records = len(item.records) - len(item.groups.get(PatientLinks, ()))
    driver = _sqlite_driver(conn) if dialect == "sqlite" else None
    if sealer is not None:
        refs = [_item_ref(item) for item in batch]
        sealer.prepare(
            [*(r for r, item in zip(refs, batch, strict=True) if item.raw is not None),
             *(p.patient_id for item in batch for p in item.groups.get(Patient, ())),
             *(r.patient_id or FHIR_SYSTEM_KEY for item in batch for r in item.groups.get(FhirResource, ()))]
        )  # fmt: skip
        for item, ref in zip(batch, refs, strict=True):
            if item.raw is not None:
                item.raw = seal_raw(sealer, item.raw, ref)
    _write_raws(conn, driver, batch)
    live = [item for item in batch if not (item.outcome.raw_duplicate or item.outcome.raw_conflict)]
    _write_patients(conn, dialect, driver, live, sealer)
    _write_encounters(conn, dialect, live)
    for kind, _table, _pk, _row_of in _PLAIN:
        owners = [(item, len(g)) for item in live if (g := item.groups.get(kind))]
        if not owners:
            continue
        records = [r for item, _ in owners for r in item.groups[kind]]
        values = [v for item, _ in owners for v in item.encoded.get(kind, ())]
        ids, new_ids = _insert_once(conn, driver, kind, records, values)
        if new_ids is None:
            for item, n in owners:
                item.outcome.inserted += n
            continue
        pending = iter(ids)
        for item, n in owners:
            for record_id in itertools.islice(pending, n):
                if record_id in new_ids:
                    new_ids.discard(record_id)  # a later record with the same id was not inserted
                    item.outcome.inserted += 1
                else:
                    item.outcome.duplicates += 1
    kept = [(item, r) for item in live for r in item.groups.get(FhirResource, ())]
    written = write_resources(conn, insert_rows, [r for _, r in kept], sealer)
    for (item, _), status in zip(kept, written, strict=True):
        if status == "inserted":
            item.outcome.inserted += 1
        elif status == "updated":
            item.outcome.updated += 1
        else:
            item.outcome.duplicates += 1
    write_links(conn, insert_rows, [link for item in live for link in item.groups.get(PatientLinks, ())])
    return [item.outcome for item in batch]


# -- raw log --------------------------------------------------------------------------------------------------
RAW_COLUMNS = (
    "source_system",
    "source_id",
    "content_type",
    "received",
    "status",
    "reason",
    "record_count",
    "payload",
    "digest",
    "related_raw_id",
    "relation",
    "key_ref",
    "patient_hash",
)
_RAW_RETURNING = ("raw_id", "source_system", "source_id", "status")
KEPT_STATUSES = ("accepted", "unmapped")  # one row per (source system, source id) among these (revision 0006)


def raw_digest(payload: bytes) -> str:
    """The digest the raw log keeps of a payload (SHA-256, hex): equal digests mean the same content."""
    return hashlib.sha256(payload).hexdigest()


def _digest(raw: RawMessage) -> str:
    return raw.digest or raw_digest(raw.payload_bytes)


def raw_values(
    raw: RawMessage,
    status: str,
    reason: str | None,
    count: int,
    *,
    payload: bytes | None = None,
    related: tuple[int | None, str] | None = None,
    time: Callable[[datetime], Any] | None = None,
    patient: str | None = None,
) -> tuple[Any, ...]:
    """The raw log row of *raw* in :data:`RAW_COLUMNS` order: the one place a raw entry is encoded.

    *payload* replaces the message's (a duplicate keeps none); *related* is (raw id, relation) when the entry refers
    to another (else the message's own); *time* turns the receipt time into what the driver binds; *patient*: the
    one patient the entry's records belong to (:func:`medtwin.store.shards.entry_patient`), stored as its hash so a
    consumer sharded by patient selects its entries in SQL (None: no single patient).
    """
    data = raw.payload_bytes if payload is None else payload
    digest = (raw.digest or raw_digest(data)) if payload is None else (raw_digest(data) if data else None)
    related_id, relation = related if related is not None else (raw.related_raw_id, raw.relation)
    return (
        raw.source_system,
        raw.source_id,
        raw.content_type,
        raw.received if time is None else time(raw.received),
        status,
        reason,
        count,
        data,
        digest,
        related_id,
        relation if related_id is not None else None,
        raw.key_ref,
        None if patient is None else patient_hash(patient),
    )


def _item_ref(item: _Item) -> str:
    """The key a raw payload is sealed under: the one patient its records belong to, else the system key."""
    pids = {p.patient_id for p in item.groups.get(Patient, ())}
    if not pids:
        for kind, records in item.groups.items():
            if kind is PatientLinks:
                continue
            for r in records:
                pid = getattr(r, "patient_id", None)
                if pid:
                    pids.add(pid)
                    if len(pids) > 1:
                        return SYSTEM_KEY
    return next(iter(pids)) if len(pids) == 1 else SYSTEM_KEY


def seal_raw(sealer: Sealer, raw: RawMessage, ref: str) -> RawMessage:
    """*raw* with its payload and reason sealed under *ref* and its digest keyed (the plain SHA-256 is never
    stored). The reason is sealed because the reasons of mappers and validators may quote the input."""
    data = raw.payload_bytes
    digest = sealer.digest(raw.digest or raw_digest(data))
    payload = sealer.seal_bytes(ref, data) if data else data
    reason = sealer.seal_text(ref, raw.reason) if raw.reason else raw.reason
    # a copy with four fields changed, without dataclasses.replace's second validation (done when *raw* was made;
    # it is a few microseconds per message on the listener's hot path)
    sealed = object.__new__(type(raw))
    for name in _field_names(type(raw)):
        object.__setattr__(sealed, name, getattr(raw, name))
    for name, value in (("payload", payload), ("digest", digest), ("key_ref", ref), ("reason", reason)):
        object.__setattr__(sealed, name, value)
    return sealed


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _field_names(kind: type[Any]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(kind))
    return names


def raw_row(raw: RawMessage, status: str, reason: str | None, count: int, **options: Any) -> dict[str, Any]:
    """:func:`raw_values` as a dict of column values (for SQLAlchemy statements)."""
    return dict(zip(RAW_COLUMNS, raw_values(raw, status, reason, count, **options), strict=True))


def _insert_raws(conn: Connection, driver: sqlite3.Connection | None, items: list[_Item]) -> list[tuple[Any, ...]]:
    """Insert the raw row of each of *items*; (raw id, source system, source id, status) of each row inserted."""
    triples = [(i.raw, i.outcome.records, entry_patient(i.records)) for i in items if i.raw is not None]
    t = schema.raw_inbound
    if driver is not None:
        values = [raw_values(r, r.status, r.reason, n, time=schema.sqlite_utc_text, patient=p) for r, n, p in triples]
        done = _sqlite_insert(driver, t, RAW_COLUMNS, values)
        if done is not None:
            stmt = f"SELECT {', '.join(_RAW_RETURNING)} FROM raw_inbound WHERE raw_id > ? ORDER BY raw_id"
            return driver.execute(stmt, (done[0],)).fetchall()
    params = [raw_row(r, r.status, r.reason, n, patient=p) for r, n, p in triples]
    return sorted((tuple(r) for r in _bulk_insert(conn, t, params, _RAW_RETURNING)), key=lambda r: int(r[0]))


def _stored_originals(conn: Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str]]:
    """(raw id, digest) of the kept raw row of each of *keys* that has one (by the (source system, source id)
    index, not the (status, received) one: a scan of the whole log)."""
    t = schema.raw_inbound
    stmt = select(t.c.raw_id, t.c.source_system, t.c.source_id, t.c.digest).where(
        schema.unindexed(t.c.status).in_(KEPT_STATUSES),
        t.c.source_system.in_(sorted({system for system, _ in keys})),
        t.c.source_id.in_(sorted({sid for _, sid in keys})),
    )
    found: dict[tuple[str, str], tuple[int, str | None]] = {}
    for r in conn.execute(stmt):
        if (r.source_system, r.source_id) in keys:
            found[(r.source_system, r.source_id)] = (int(r.raw_id), r.digest)
    legacy = [raw_id for raw_id, digest in found.values() if digest is None]  # written before revision 0006
    digests = {}
    if legacy:
        rows = conn.execute(select(t.c.raw_id, t.c.payload).where(t.c.raw_id.in_(legacy)))
        digests = {int(r.raw_id): raw_digest(bytes(r.payload)) for r in rows}
    return {k: (raw_id, digest or digests[raw_id]) for k, (raw_id, digest) in found.items()}


def _write_raws(conn: Connection, driver: sqlite3.Connection | None, batch: list[_Item]) -> None:
    """Log the raw message of each item: a new key is inserted; a key already kept (earlier in the batch or in an
    earlier transaction) is a ``duplicate`` when the content is the same (logged without payload, records not
    written) and a *conflict* when it differs (nothing written: the caller keeps it under a key of its own)."""
    first: dict[tuple[str, str], _Item] = {}
    to_insert: list[_Item] = []
    resends: list[_Item] = []
    for item in batch:
        raw = item.raw
        if raw is None:
            continue
        if raw.status in KEPT_STATUSES:
            key = (raw.source_system, raw.source_id)
            if key in first:
                resends.append(item)
                continue
            first[key] = item
        to_insert.append(item)
    if to_insert:
        returned = _insert_raws(conn, driver, to_insert)
        kept_ids = {(r[1], r[2]): int(r[0]) for r in returned if r[3] in KEPT_STATUSES}
        # rows that cannot conflict come back in parameter order (ids increase within one statement)
        others = iter(int(r[0]) for r in returned if r[3] not in KEPT_STATUSES)
        for item in to_insert:
            assert item.raw is not None
            if item.raw.status in KEPT_STATUSES:
                raw_id = kept_ids.get((item.raw.source_system, item.raw.source_id))
                if raw_id is None:
                    resends.append(item)  # kept by an earlier transaction
                    continue
                item.outcome.raw_id = raw_id
            else:
                item.outcome.raw_id = next(others)
    if not resends:
        return
    originals = {
        k: (i.outcome.raw_id, _digest(i.raw))
        for k, i in first.items()
        if i.outcome.raw_id is not None and i.raw is not None
    }
    unknown = {(i.raw.source_system, i.raw.source_id) for i in resends if i.raw is not None} - originals.keys()
    if unknown:
        originals.update(_stored_originals(conn, unknown))
    dup_rows = []
    for item in resends:
        raw = item.raw
        assert raw is not None
        original_id, original_digest = originals[(raw.source_system, raw.source_id)]
        same = _digest(raw) == original_digest
        item.outcome = ItemOutcome(
            raw_duplicate=same, raw_conflict=not same, related_raw_id=original_id, records=item.outcome.records
        )
        if same:
            reason = f"resend of {raw.status} raw_id {original_id}"
            dup_rows.append(raw_row(raw, "duplicate", reason, 0, payload=b"", related=(original_id, "duplicate-of")))
    if dup_rows:
        conn.execute(schema.raw_inbound.insert(), dup_rows)


# -- versioned records ----------------------------------------------------------------------------------------
def _taken_provenance(conn: Connection, table: Table, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (source system, source id) pairs among *keys* that a stored row of *table* already carries."""
    if not keys:
        return set()
    stmt = select(table.c.source_system, table.c.source_id).where(table.c.source_id.in_(sorted({k[1] for k in keys})))
    return {(r[0], r[1]) for r in conn.execute(stmt)} & keys


def _version_provenance(conn: Connection, kind: str, keys: set[tuple[str, str]]) -> set[tuple[str, str, str]]:
    """(record id, source system, source id) of the stored versions of *kind* whose source id is among *keys*."""
    if not keys:
        return set()
    v = schema.record_versions
    stmt = select(v.c.record_id, v.c.source_system, v.c.source_id).where(
        v.c.kind == kind, v.c.source_id.in_(sorted({k[1] for k in keys}))
    )
    return {(r[0], r[1], r[2]) for r in conn.execute(stmt)}


def _seal(sealer: Sealer | None, ref: str, text: str) -> str:
    return text if sealer is None else sealer.seal_text(ref, text)


def _version_row(
    kind: str, record_id: str, as_of: datetime | None, record: Record, now: datetime, sealer: Sealer | None = None
) -> dict[str, Any]:
    p = record.provenance
    return {
        "kind": kind,
        "record_id": record_id,
        "as_of": as_of,
        "source_system": p.source_system if p else None,
        "source_id": p.source_id if p else None,
        "recorded": now,
        "body": _seal(sealer, record_id, codec.encode(record)) if kind == "patient" else codec.encode(record),
    }


_STORED_PATIENTS: dict[tuple[str, str | None], Patient] = {}


def _stored_patient(body: str, identity: str | None, sealer: Sealer | None = None) -> Patient | None:
    """The patient stored as *body* (+ *identity*), opened (*sealer*) and decoded once per distinct stored text.

    Every ORU repeats its patient, so a stream reads the same few stored rows in every batch; the key is the
    stored (sealed) text itself, so an update (new text) can never be answered from the cache. None: the row's key
    was destroyed (an erased patient).
    """
    key = (body, identity)
    patient = _STORED_PATIENTS.get(key)
    if patient is None:
        if sealer is not None:
            opened = sealer.open_text(body)
            identity = None if identity is None else sealer.open_text(identity)
            if opened is None:
                return None
            body = opened
        patient = codec.decode(Patient, body)
        if identity is not None:
            patient = Patient(
                patient_id=patient.patient_id,
                gender=patient.gender,
                birth_date=patient.birth_date,
                deceased=patient.deceased,
                identity=codec.decode_identity(identity),
                provenance=patient.provenance,
            )
        if len(_STORED_PATIENTS) >= 4096:
            _STORED_PATIENTS.clear()
        _STORED_PATIENTS[key] = patient
    return patient


def _stored_patient_rows(conn: Connection, driver: sqlite3.Connection | None, ids: list[str]) -> list[Any]:
    """(body, identity body) of the stored patients among *ids*."""
    if driver is not None and len(ids) <= _MAX_PARAMS:
        marks = ", ".join("?" * len(ids))
        return driver.execute(
            "SELECT p.body, i.body FROM patients AS p LEFT OUTER JOIN patient_identity AS i "
            f"ON i.patient_id = p.patient_id WHERE p.patient_id IN ({marks})",
            ids,
        ).fetchall()
    p_t, i_t = schema.patients, schema.patient_identity
    stmt = select(p_t.c.body, i_t.c.body).select_from(p_t.outerjoin(i_t)).where(p_t.c.patient_id.in_(ids))
    return list(conn.execute(stmt))


def _sealed_patient_row(sealer: Sealer | None, row: dict[str, Any], pid: str) -> dict[str, Any]:
    """A patients row with its body sealed and the birth date column left empty (it is in the sealed body)."""
    if sealer is not None:
        row["body"] = sealer.seal_text(pid, row["body"])
        row["birth_date"] = None
    return row


def _write_patients(
    conn: Connection, dialect: str, driver: sqlite3.Connection | None, live: list[_Item], sealer: Sealer | None
) -> None:
    pending: list[tuple[_Item, Patient]] = [(item, p) for item in live for p in item.groups.get(Patient, ())]
    if not pending:
        return
    p_t, i_t = schema.patients, schema.patient_identity
    ids = sorted({p.patient_id for _, p in pending})
    stored: dict[str, Patient] = {}
    for body, identity in _stored_patient_rows(conn, driver, ids):
        patient = _stored_patient(body, identity, sealer)
        if patient is None:  # its key was destroyed: an erased patient's leftover row
            continue
        stored[patient.patient_id] = patient
    new_keys = {k for _, p in pending if p.patient_id not in stored and (k := _key(p.provenance)) is not None}
    taken = _taken_provenance(conn, p_t, new_keys)
    changing = {
        k
        for _, p in pending
        if (s := stored.get(p.patient_id)) is not None
        and (k := _key(p.provenance)) is not None
        and not same_content(p, s)
        and not same_content(merge_patient(s, p), s)
    }
    seen = _version_provenance(conn, "patient", changing)
    current = dict(stored)
    created: set[str] = set()
    changed: set[str] = set()
    versions: list[Patient] = []
    for item, p in pending:
        pid, key = p.patient_id, _key(p.provenance)
        cur = current.get(pid)
        if cur is None:
            if key is not None and key in taken:
                item.outcome.duplicates += 1
                continue
            current[pid] = p
            created.add(pid)
            item.outcome.inserted += 1
        else:
            if same_content(p, cur) or (key is not None and (pid, *key) in seen):
                item.outcome.duplicates += 1
                continue
            merged = merge_patient(cur, p)
            if same_content(merged, cur):
                item.outcome.duplicates += 1
                continue
            current[pid] = merged
            if pid not in created:
                changed.add(pid)
            item.outcome.updated += 1
        if key is not None:
            taken.add(key)
            seen.add((pid, *key))
        versions.append(p)
    if not versions:
        return
    now = datetime.now(UTC)
    if created:
        conn.execute(
            p_t.insert(),
            [_sealed_patient_row(sealer, rows.TABLE_OF[Patient][2](current[pid]), pid) for pid in sorted(created)],
        )
    if changed:
        stmt_up = (
            update(p_t)
            .where(p_t.c.patient_id == bindparam("b_id"))
            .values(
                gender=bindparam("gender"),
                birth_date=bindparam("birth_date"),
                deceased=bindparam("deceased"),
                source_system=bindparam("source_system"),
                source_id=bindparam("source_id"),
                body=bindparam("body"),
            )
        )
        params = []
        for pid in sorted(changed):
            row = _sealed_patient_row(sealer, rows.TABLE_OF[Patient][2](current[pid]), pid)
            row["b_id"] = row.pop("patient_id")
            params.append(row)
        conn.execute(stmt_up, params)
    identities = [
        {"patient_id": pid, "body": _seal(sealer, pid, codec.encode_identity(ident))}
        for pid in sorted(created | changed)
        if (ident := current[pid].identity) is not None
    ]
    if sealer is not None:
        blinds = [
            b
            for pid in sorted(created | changed)
            if (ident := current[pid].identity) is not None
            for b in sealer.blind_rows(pid, ident)
        ]
        if blinds:
            insert_rows(conn, schema.identity_index, blinds)
    if identities:
        ins = postgresql.insert(i_t) if dialect == "postgresql" else sqlite.insert(i_t)
        conn.execute(
            ins.on_conflict_do_update(index_elements=[i_t.c.patient_id], set_={"body": ins.excluded.body}), identities
        )
    v_t = schema.record_versions
    v_ids = conn.execute(
        v_t.insert().returning(v_t.c.version_id, sort_by_parameter_order=True),
        [_version_row("patient", p.patient_id, None, p, now, sealer) for p in versions],
    ).scalars()
    ident_rows = [
        {"version_id": int(vid), "body": _seal(sealer, p.patient_id, codec.encode_identity(p.identity))}
        for vid, p in zip(v_ids, versions, strict=True)
        if p.identity is not None
    ]
    if ident_rows:
        conn.execute(schema.patient_identity_versions.insert(), ident_rows)


def _write_encounters(conn: Connection, dialect: str, live: list[_Item]) -> None:
    pending: list[tuple[_Item, Encounter]] = [(item, e) for item in live for e in item.groups.get(Encounter, ())]
    if not pending:
        return
    e_t, l_t, v_t = schema.encounters, schema.encounter_locations, schema.record_versions
    ids = sorted({e.encounter_id for _, e in pending})
    stored = {
        e.encounter_id: e
        for e in (
            codec.decode(Encounter, b)
            for b in conn.execute(select(e_t.c.body).where(e_t.c.encounter_id.in_(ids))).scalars()
        )
    }
    new_keys = {k for _, e in pending if e.encounter_id not in stored and (k := _key(e.provenance)) is not None}
    taken = _taken_provenance(conn, e_t, new_keys)
    history: dict[str, list[Encounter]] = {}
    to_load = sorted(
        {e.encounter_id for _, e in pending if (s := stored.get(e.encounter_id)) and not same_content(e, s)}
    )
    if to_load:
        stmt = select(v_t.c.record_id, v_t.c.body).where(v_t.c.kind == "encounter", v_t.c.record_id.in_(to_load))
        for record_id, body in conn.execute(stmt.order_by(v_t.c.version_id)):
            history.setdefault(record_id, []).append(codec.decode(Encounter, body))
    current = dict(stored)
    created: set[str] = set()
    changed: set[str] = set()
    versions: list[Encounter] = []
    for item, e in pending:
        eid, key = e.encounter_id, _key(e.provenance)
        cur = current.get(eid)
        if cur is None:
            if key is not None and key in taken:
                item.outcome.duplicates += 1
                continue
            current[eid] = e
            history[eid] = [e]
            created.add(eid)
            item.outcome.inserted += 1
            if key is not None:
                taken.add(key)
            versions.append(e)
            continue
        if same_content(e, cur):
            item.outcome.duplicates += 1
            continue
        past = history.setdefault(eid, [cur])
        if key is not None and any(_key(v.provenance) == key for v in past):
            item.outcome.duplicates += 1
            continue
        merged = merge_encounter([*past, e])
        if same_content(merged, cur):
            item.outcome.duplicates += 1
            continue
        past.append(e)
        current[eid] = merged
        if eid not in created:
            changed.add(eid)
        item.outcome.updated += 1
        versions.append(e)
    if not versions:
        return
    row_of = rows.TABLE_OF[Encounter][2]
    if created:
        conn.execute(e_t.insert(), [row_of(current[eid]) for eid in sorted(created)])
    if changed:
        stmt_up = (
            update(e_t)
            .where(e_t.c.encounter_id == bindparam("b_id"))
            .values(
                {
                    c: bindparam(c)
                    for c in (
                        "patient_id",
                        "status",
                        "class_code",
                        "start",
                        "end",
                        "source_system",
                        "source_id",
                        "body",
                    )
                }
            )
        )
        params = []
        for eid in sorted(changed):
            row = row_of(current[eid])
            row["b_id"] = row.pop("encounter_id")
            params.append(row)
        conn.execute(stmt_up, params)
        conn.execute(delete(l_t).where(l_t.c.encounter_id.in_(sorted(changed))))
    locations = [
        {"encounter_id": eid, "seq": i, "unit": loc.unit, "start": loc.start, "end": loc.end, "bed": loc.bed}
        for eid in sorted(created | changed)
        for i, loc in enumerate(current[eid].locations)
    ]
    if locations:
        conn.execute(l_t.insert(), locations)
    now = datetime.now(UTC)
    conn.execute(
        v_t.insert(), [_version_row("encounter", e.encounter_id, encounter_as_of(e), e, now) for e in versions]
    )
