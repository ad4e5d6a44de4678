"""FHIR resources kept as they came: every valid resource that medtwin does not turn into a record.

A :class:`FhirResource` travels in a write like a record (``Store.write([...records, *resources], raw)``), so a
bundle's records, its kept resources and its raw payload commit together. Keyed by (type, id): the same content
again is a duplicate; other content replaces the stored body, and the body it replaces is kept in
``record_versions`` (kind ``fhir``), so nothing is lost. A resource in a patient's compartment carries the
patient's id; the resources outside any compartment that it refers to (Organization, Practitioner, ...) are noted
per patient (``patient_references``, written as :class:`PatientLinks`), so a patient's export can include them
(:meth:`medtwin.store.Store.kept_resources`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select, text, tuple_, update

from medtwin.errors import ValidationError
from medtwin.records import Provenance
from medtwin.store import schema
from medtwin.store.protect import FHIR_SYSTEM_KEY, Sealer

__all__ = ["FhirResource", "Inserter", "PatientLinks", "kept_bodies", "write_links", "write_resources"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FhirResource:
    """One FHIR resource kept whole: its type, id, JSON text (*body*), the patient whose compartment holds it
    (None: none) and its provenance."""

    resource_type: str
    resource_id: str
    body: str
    patient_id: str | None = None
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        if not self.resource_type or not self.resource_id:
            raise ValidationError(
                f"FhirResource: resource_type and resource_id are required, got {self.resource_type!r}/"
                f"{self.resource_id!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientLinks:
    """The resources outside any compartment (Organization, Practitioner, ...: (type, id)) that a patient's
    resources refer to, mapped ones included, so that the patient's export can include them."""

    patient_id: str
    references: tuple[tuple[str, str], ...]


Inserter = Callable[[Connection, Table, list[dict[str, Any]]], object]
"""Inserts rows, ``ON CONFLICT DO NOTHING`` (the store's multi-row insert, :func:`medtwin.store.batch.insert_rows`)."""


def write_links(conn: Connection, insert: Inserter, links: Sequence[PatientLinks]) -> None:
    """Note *links* (in the caller's transaction; a link already noted is left as it is)."""
    rows = {(link.patient_id, rt, ri) for link in links for rt, ri in link.references}
    if rows:
        columns = ("patient_id", "resource_type", "resource_id")
        insert(conn, schema.patient_references, [dict(zip(columns, row, strict=True)) for row in sorted(rows)])


def write_resources(
    conn: Connection, insert: Inserter, resources: Sequence[FhirResource], sealer: Sealer | None = None
) -> list[str]:
    """Store *resources* (in the caller's transaction); for each, ``inserted``, ``updated`` or ``duplicate``.

    With *sealer* every body is stored sealed under its compartment's patient (``system:fhir`` outside any), and
    a stored body is opened to compare it with a new one.
    """
    if not resources:
        return []
    t, v = schema.fhir_resources, schema.record_versions
    now = datetime.now(UTC)
    latest: dict[tuple[str, str], FhirResource] = {}
    for r in resources:  # a later copy in the same write wins, as it would one write later
        latest[(r.resource_type, r.resource_id)] = r
    stored: dict[tuple[str, str], tuple[str, str | None, str | None]] = {}
    keys = sorted(latest)
    for i in range(0, len(keys), 400):
        chunk = keys[i : i + 400]
        stmt = select(t.c.resource_type, t.c.resource_id, t.c.body, t.c.source_system, t.c.source_id).where(
            tuple_(t.c.resource_type, t.c.resource_id).in_(chunk)  # by the primary key
        )
        for row in conn.execute(stmt):
            if (row[0], row[1]) in latest:
                stored[(row[0], row[1])] = (row[2], row[3], row[4])
    opened = {k: (sealer.open_text(b) if sealer is not None else b) for k, (b, _, _) in stored.items()}
    new = [r for k, r in latest.items() if k not in stored]
    changed = [r for k, r in latest.items() if k in stored and opened[k] != r.body]
    if new:
        insert(conn, t, [_row(r, now, sealer) for r in new])
    if changed:
        conn.execute(
            v.insert(),
            [
                {
                    "kind": "fhir",
                    "record_id": f"{r.resource_type}/{r.resource_id}",
                    "as_of": None,
                    "source_system": stored[(r.resource_type, r.resource_id)][1],
                    "source_id": stored[(r.resource_type, r.resource_id)][2],
                    "recorded": now,
                    "body": stored[(r.resource_type, r.resource_id)][0],  # the body being replaced (as stored)
                }
                for r in changed
            ],
        )
        conn.execute(
            update(t)
            .where(t.c.resource_type == bindparam("b_type"), t.c.resource_id == bindparam("b_id"))
            .values(
                patient_id=bindparam("patient_id"),
                source_system=bindparam("source_system"),
                source_id=bindparam("source_id"),
                recorded=bindparam("recorded"),
                body=bindparam("body"),
            ),
            [
                {k: val for k, val in _row(r, now, sealer).items() if k not in ("resource_type", "resource_id")}
                | {"b_type": r.resource_type, "b_id": r.resource_id}
                for r in changed
            ],
        )
    outcome = {(r.resource_type, r.resource_id): "inserted" for r in new}
    outcome.update({(r.resource_type, r.resource_id): "updated" for r in changed})
    out = []
    for r in resources:
        key = (r.resource_type, r.resource_id)
        out.append(outcome.pop(key, "duplicate") if latest[key] is r else "duplicate")
    return out


def _row(r: FhirResource, now: datetime, sealer: Sealer | None = None) -> dict[str, Any]:
    p = r.provenance
    return {
        "resource_type": r.resource_type,
        "resource_id": r.resource_id,
        "patient_id": r.patient_id,
        "source_system": p.source_system if p else None,
        "source_id": p.source_id if p else None,
        "recorded": now,
        "body": r.body if sealer is None else sealer.seal_text(r.patient_id or FHIR_SYSTEM_KEY, r.body),
    }


_KEPT_FOR_PATIENT = text(
    "SELECT body FROM fhir_resources WHERE patient_id = :p "
    "UNION ALL "
    "SELECT r.body FROM patient_references AS pr JOIN fhir_resources AS r "
    "ON r.resource_type = pr.resource_type AND r.resource_id = pr.resource_id "
    "WHERE pr.patient_id = :p AND r.patient_id IS NULL"
)


def kept_bodies(conn: Connection, patient_id: str) -> list[str]:
    """The JSON text of the resources kept in *patient_id* 's compartment, then of the resources outside any
    compartment that they refer to."""
    return [str(row[0]) for row in conn.execute(_KEPT_FOR_PATIENT, {"p": patient_id})]
