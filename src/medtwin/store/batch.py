"""The store's write path: a whole batch of (records, raw message) items in a few bulk statements.

One call writes every item of a group commit: one multi-row insert per table for the whole batch (not three
statements per message), raw-log keys matched in Python, record rows encoded once. Semantics per item are those
of one :meth:`medtwin.store.Store.write` after another, in order:

* raw messages: one *accepted* row per (source system, source id); a resend (of an earlier batch or earlier in
  this one) writes none of its records and is logged as a ``duplicate`` row naming the original ``raw_id``;
* insert-once records (observations, conditions, medications, events): ``ON CONFLICT DO NOTHING`` on the id and
  the provenance, the skipped ones counted as duplicates;
* patients and encounters: insert, or update through :mod:`medtwin.store.versions` (the version that changed
  the record is kept in ``record_versions``); a version already stored (same provenance) or one that changes
  nothing is a duplicate.

The caller owns the transaction: if anything raises, nothing of the batch is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from medtwin.errors import ValidationError
from medtwin.records import Encounter, Patient, Provenance, Record
from medtwin.store import codec, rows, schema
from medtwin.store.versions import encounter_as_of, merge_encounter, merge_patient, same_content

if TYPE_CHECKING:
    from medtwin.store.store import RawMessage

__all__ = ["ItemOutcome", "group_records", "write_items"]

_VERSIONED = (Patient, Encounter)
_PLAIN = tuple(entry for entry in rows.TABLES if entry[0] not in _VERSIONED)


@dataclass(slots=True)
class ItemOutcome:
    """What happened to one item: records inserted, updated and skipped; the raw row id or a resend."""

    inserted: int = 0
    updated: int = 0
    duplicates: int = 0
    raw_duplicate: bool = False
    raw_id: int | None = None
    records: int = 0


@dataclass(slots=True)
class _Item:
    records: Sequence[Record]
    groups: dict[type[Any], list[Any]]
    raw: RawMessage | None
    outcome: ItemOutcome = field(default_factory=ItemOutcome)


def group_records(records: Sequence[Record]) -> dict[type[Any], list[Any]]:
    """*records* grouped by type; raises :class:`ValidationError` for anything the store cannot hold."""
    groups: dict[type[Any], list[Any]] = {}
    for record in records:
        kind = type(record)
        if kind not in rows.TABLE_OF:
            raise ValidationError(f"Store.write: {kind.__name__} is not a storable record type")
        groups.setdefault(kind, []).append(record)
    return groups


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


def _key(p: Provenance | None) -> tuple[str, str] | None:
    return None if p is None else (p.source_system, p.source_id)


def write_items(
    conn: Connection,
    dialect: str,
    items: Sequence[tuple[Sequence[Record], RawMessage | None]],
    groups: Sequence[dict[type[Any], list[Any]]],
) -> list[ItemOutcome]:
    """Write *items* (with their records already grouped by :func:`group_records`) on *conn*; one outcome each."""
    batch = [_Item(records, g, raw) for (records, raw), g in zip(items, groups, strict=True)]
    for item in batch:
        item.outcome.records = len(item.records)
    _write_raws(conn, dialect, batch)
    live = [item for item in batch if not item.outcome.raw_duplicate]
    _write_patients(conn, dialect, live)
    _write_encounters(conn, dialect, live)
    for kind, table, pk, row_of in _PLAIN:
        pending = [(item, row_of(r)) for item in live for r in item.groups.get(kind, ())]
        if not pending:
            continue
        new_ids = {r[0] for r in _bulk_insert(conn, table, [row for _, row in pending], (pk,))}
        for item, row in pending:
            if row[pk] in new_ids:
                new_ids.discard(row[pk])
                item.outcome.inserted += 1
            else:
                item.outcome.duplicates += 1
    return [item.outcome for item in batch]


# -- raw log --------------------------------------------------------------------------------------------------
def _raw_row(raw: RawMessage, status: str, reason: str | None, count: int, payload: bytes) -> dict[str, Any]:
    return {
        "source_system": raw.source_system,
        "source_id": raw.source_id,
        "content_type": raw.content_type,
        "received": raw.received,
        "status": status,
        "reason": reason,
        "record_count": count,
        "payload": payload,
    }


def _write_raws(conn: Connection, dialect: str, batch: list[_Item]) -> None:
    t = schema.raw_inbound
    first: dict[tuple[str, str], _Item] = {}
    to_insert: list[_Item] = []
    resends: list[_Item] = []
    for item in batch:
        raw = item.raw
        if raw is None:
            continue
        if raw.status == "accepted":
            key = (raw.source_system, raw.source_id)
            if key in first:
                resends.append(item)
                continue
            first[key] = item
        to_insert.append(item)
    if not to_insert and not resends:
        return
    if to_insert:
        params = [
            _raw_row(i.raw, i.raw.status, i.raw.reason, len(i.records), i.raw.payload_bytes)
            for i in to_insert
            if i.raw is not None
        ]
        returned = sorted(
            _bulk_insert(conn, t, params, ("raw_id", "source_system", "source_id", "status")),
            key=lambda r: int(r.raw_id),
        )
        accepted_ids = {(r.source_system, r.source_id): int(r.raw_id) for r in returned if r.status == "accepted"}
        # rows that cannot conflict come back in parameter order (ids increase within one statement)
        others = iter(int(r.raw_id) for r in returned if r.status != "accepted")
        for item in to_insert:
            assert item.raw is not None
            if item.raw.status == "accepted":
                raw_id = accepted_ids.get((item.raw.source_system, item.raw.source_id))
                if raw_id is None:
                    resends.append(item)  # accepted by an earlier transaction
                    continue
                item.outcome.raw_id = raw_id
            else:
                item.outcome.raw_id = next(others)
    if not resends:
        return
    originals = {k: i.outcome.raw_id for k, i in first.items() if i.outcome.raw_id is not None}
    unknown = {(i.raw.source_system, i.raw.source_id) for i in resends if i.raw is not None} - originals.keys()
    if unknown:
        stmt_sel = select(t.c.raw_id, t.c.source_system, t.c.source_id).where(
            t.c.status == "accepted", t.c.source_id.in_(sorted({sid for _, sid in unknown}))
        )
        for r in conn.execute(stmt_sel):
            if (r.source_system, r.source_id) in unknown:
                originals[(r.source_system, r.source_id)] = int(r.raw_id)
    dup_rows = []
    for item in resends:
        assert item.raw is not None
        item.outcome = ItemOutcome(raw_duplicate=True, records=item.outcome.records)
        original = originals.get((item.raw.source_system, item.raw.source_id))
        dup_rows.append(_raw_row(item.raw, "duplicate", f"resend of accepted raw_id {original}", 0, b""))
    conn.execute(t.insert(), dup_rows)


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


def _version_row(kind: str, record_id: str, as_of: datetime | None, record: Record, now: datetime) -> dict[str, Any]:
    p = record.provenance
    return {
        "kind": kind,
        "record_id": record_id,
        "as_of": as_of,
        "source_system": p.source_system if p else None,
        "source_id": p.source_id if p else None,
        "recorded": now,
        "body": codec.encode(record),
    }


def _write_patients(conn: Connection, dialect: str, live: list[_Item]) -> None:
    pending: list[tuple[_Item, Patient]] = [(item, p) for item in live for p in item.groups.get(Patient, ())]
    if not pending:
        return
    p_t, i_t = schema.patients, schema.patient_identity
    ids = sorted({p.patient_id for _, p in pending})
    stored: dict[str, Patient] = {}
    stmt = select(p_t.c.body, i_t.c.body).select_from(p_t.outerjoin(i_t)).where(p_t.c.patient_id.in_(ids))
    for body, identity in conn.execute(stmt):
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
        conn.execute(p_t.insert(), [rows.TABLE_OF[Patient][2](current[pid]) for pid in sorted(created)])
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
            row = rows.TABLE_OF[Patient][2](current[pid])
            row["b_id"] = row.pop("patient_id")
            params.append(row)
        conn.execute(stmt_up, params)
    identities = [
        {"patient_id": pid, "body": codec.encode_identity(ident)}
        for pid in sorted(created | changed)
        if (ident := current[pid].identity) is not None
    ]
    if identities:
        ins = postgresql.insert(i_t) if dialect == "postgresql" else sqlite.insert(i_t)
        conn.execute(
            ins.on_conflict_do_update(index_elements=[i_t.c.patient_id], set_={"body": ins.excluded.body}), identities
        )
    v_t = schema.record_versions
    v_ids = conn.execute(
        v_t.insert().returning(v_t.c.version_id, sort_by_parameter_order=True),
        [_version_row("patient", p.patient_id, None, p, now) for p in versions],
    ).scalars()
    ident_rows = [
        {"version_id": int(vid), "body": codec.encode_identity(p.identity)}
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
