"""Erasure of a patient (GDPR Art. 17; ``medtwin patient erase ID``; the API's ``DELETE`` for admins).

:func:`erase_patient` removes, in ONE transaction with its audit record: the patient and identity rows, the blind
index entries, every record of the patient (observations, encounters and their stays, conditions, medication
requests and administrations, events), the FHIR resources kept in their compartment and their links, every version
of those (``record_versions``, identity versions), the twin snapshots of the patient, the raw payloads sealed under
the patient's key, and last the patient's wrapped data key (crypto-shredding: a copy of any of those rows in a
backup is sealed under that key and cannot be opened any more).

What stays: the audit chain (it names the patient by pseudonymous id only, and still verifies: the erasure is an
event in it), and payloads sealed under the *system* key that mention the patient together with others (a bundle
of several patients, a dead letter whose patient was not known, a payload stored before encryption at rest):
they are counted in the report (``shared_payloads``) so an operator can act on them, not deleted, because they hold
other patients' data too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, or_, select

from medtwin.crypto import SYSTEM_KEY
from medtwin.errors import MedtwinError
from medtwin.records import Patient
from medtwin.security.audit import AuditEvent, AuditTrail
from medtwin.store import Store, schema

__all__ = ["ErasureReport", "PatientNotFoundError", "erase_patient"]

_RECORD_TABLES = (
    schema.observations,
    schema.conditions,
    schema.medication_requests,
    schema.medication_administrations,
    schema.events,
)


class PatientNotFoundError(MedtwinError, KeyError):
    """No patient with that id is stored (nothing was erased)."""


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What :func:`erase_patient` removed (rows per table), the audit record's sequence number, and how many
    payloads under the system key mention the patient (kept: they hold other patients' data too)."""

    patient_id: str
    removed: dict[str, int] = field(default_factory=dict)
    key_destroyed: bool = False
    audit_seq: int | None = None
    shared_payloads: int = 0


def _count(conn: Connection, stmt: object) -> int:
    return int(getattr(conn.execute(stmt), "rowcount", 0) or 0)  # type: ignore[call-overload]


def _shared_payloads(store: Store, conn: Connection, patient: Patient) -> int:
    """Payloads under the system key whose plaintext mentions one of the patient's identifier values."""
    values = [i.value.encode() for i in (patient.identity.identifiers if patient.identity else ()) if len(i.value) >= 4]
    if not values:
        return 0
    r = schema.raw_inbound
    n = 0
    for (payload,) in conn.execute(select(r.c.payload).where(r.c.key_ref == SYSTEM_KEY)):
        data = store.keys.open(bytes(payload)) if payload else b""
        if data and any(v in data for v in values):
            n += 1
    return n


def erase_patient(
    store: Store,
    patient_id: str,
    *,
    actor: str,
    role: str = "admin",
    source: str = "",
    reason: str | None = None,
    trail: AuditTrail | None = None,
) -> ErasureReport:
    """Erase patient *patient_id* from *store* (see the module doc); audited as action ``erase`` in *trail*
    (default: the store's trail with its default signing key) in the same transaction.

    Raises
    ------
    PatientNotFoundError
        No such patient (nothing changed; nothing is audited as erased).
    """
    patient = store.patient(patient_id)
    if patient is None:
        raise PatientNotFoundError(f"no patient {patient_id!r} to erase")
    own_trail = trail is None
    audit = trail if trail is not None else AuditTrail(store)
    removed: dict[str, int] = {}
    try:
        with store.audit_transaction() as conn:
            shared = _shared_payloads(store, conn, patient)
            e_t, f_t, v_t = schema.encounters, schema.fhir_resources, schema.record_versions
            encounter_ids = list(
                conn.execute(select(e_t.c.encounter_id).where(e_t.c.patient_id == patient_id)).scalars()
            )
            kept = [f"{t}/{i}" for t, i in conn.execute(
                select(f_t.c.resource_type, f_t.c.resource_id).where(f_t.c.patient_id == patient_id))]  # fmt: skip
            versions = or_(
                (v_t.c.kind == "patient") & (v_t.c.record_id == patient_id),
                (v_t.c.kind == "encounter") & v_t.c.record_id.in_(encounter_ids or [""]),
                (v_t.c.kind == "fhir") & v_t.c.record_id.in_(kept or [""]),
            )
            version_ids = list(conn.execute(select(v_t.c.version_id).where(versions)).scalars())
            if version_ids:
                iv = schema.patient_identity_versions
                removed["patient_identity_versions"] = _count(conn, delete(iv).where(iv.c.version_id.in_(version_ids)))
                removed["record_versions"] = _count(conn, delete(v_t).where(v_t.c.version_id.in_(version_ids)))
            for t in _RECORD_TABLES:
                removed[t.name] = _count(conn, delete(t).where(t.c.patient_id == patient_id))
            if encounter_ids:
                loc = schema.encounter_locations
                removed["encounter_locations"] = _count(conn, delete(loc).where(loc.c.encounter_id.in_(encounter_ids)))
            removed["encounters"] = _count(conn, delete(e_t).where(e_t.c.patient_id == patient_id))
            removed["fhir_resources"] = _count(conn, delete(f_t).where(f_t.c.patient_id == patient_id))
            pr = schema.patient_references
            removed["patient_references"] = _count(conn, delete(pr).where(pr.c.patient_id == patient_id))
            s_t = schema.twin_snapshots
            removed["twin_snapshots"] = _count(
                conn,
                delete(s_t).where(or_(s_t.c.twin_id == f"patient:{patient_id}", s_t.c.twin_id.contains(patient_id))),
            )
            r_t = schema.raw_inbound
            removed["raw_inbound"] = _count(conn, delete(r_t).where(r_t.c.key_ref == patient_id))
            ix = schema.identity_index
            removed["identity_index"] = _count(conn, delete(ix).where(ix.c.patient_id == patient_id))
            i_t, p_t = schema.patient_identity, schema.patients
            removed["patient_identity"] = _count(conn, delete(i_t).where(i_t.c.patient_id == patient_id))
            removed["patients"] = _count(conn, delete(p_t).where(p_t.c.patient_id == patient_id))
            k_t = schema.patient_keys
            destroyed = _count(conn, delete(k_t).where(k_t.c.key_ref == patient_id)) > 0
            detail = f"erased; {sum(removed.values())} rows; data key destroyed: {destroyed}"
            if shared:
                detail += f"; {shared} shared payload(s) under the system key mention the patient"
            [seq] = audit.append_in(
                conn,
                [
                    AuditEvent(
                        time=datetime.now(UTC),
                        actor=actor,
                        role=role,
                        action="erase",
                        resource=f"Patient/{patient_id}",
                        patient_id=patient_id,
                        source=source,
                        purpose=reason,
                        detail=detail,
                    )
                ],
            )
        store.keys.forget([patient_id])
        audit.sync_head()
    finally:
        if own_trail:
            audit.close()
    return ErasureReport(patient_id, {str(k): v for k, v in removed.items()}, destroyed, seq, shared)
