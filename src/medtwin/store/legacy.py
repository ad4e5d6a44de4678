"""The keyring check and the one-time protection of rows written before encryption at rest (revision 0010).

On every open the store compares the keyring's check value with the one kept in ``key_settings`` (the first open
writes it): a key file that does not belong to the database is refused, instead of sealing new rows under keys
that no one can join with the old ones. The first open with keys also protects what an older release stored in
clear, in one transaction:

* patient ids are re-keyed: an id that is the unkeyed SHA-256 of one of the patient's identifiers (HL7 v2 before
  issue 15) becomes the keyed id of that identifier; an id that is not ``pt-...`` (a FHIR logical id, often the MRN
  itself) becomes the keyed id of that FHIR id. Every table and JSON body that names the patient follows
  (``replace`` of the exact JSON text ``"patient_id":"<old>"`` and of ``"Patient/<old>"`` in kept FHIR resources);
* patient bodies, identities and their versions are sealed and the birth-date column emptied; identifiers enter
  the blind index;
* kept FHIR resources and replaced FHIR versions are sealed; raw payloads are sealed under the system key (which
  patient a legacy payload belongs to is not worked out: erasing a legacy patient cannot find their old payloads,
  docs/security-data.md) and their digests keyed.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, select, text, update

from medtwin.crypto import SYSTEM_KEY, KeyringError, is_sealed, is_sealed_text
from medtwin.store import codec, schema
from medtwin.store.protect import FHIR_SYSTEM_KEY, Sealer

if TYPE_CHECKING:
    from medtwin.store.store import Store

__all__ = ["check_and_protect", "legacy_patient_id", "protect_rows"]

_CHECK = "keyring_check"
_PROTECTED = "protected_at_rest"
# tables whose patient_id column (and JSON body "patient_id") name a patient
_CLINICAL = ("observations", "encounters", "conditions", "medication_requests", "medication_administrations", "events")


def legacy_patient_id(system: str | None, value: str) -> str:
    """The unkeyed id releases before issue 15 gave an identifier (only to recognise and re-key such ids)."""
    return "pt-" + hashlib.sha256(f"{system or ''}|{value}".encode()).hexdigest()[:16]


def _settings(conn: Connection) -> dict[str, str]:
    t = schema.key_settings
    return {str(n): str(v) for n, v in conn.execute(select(t.c.name, t.c.value))}


def check_and_protect(store: Store) -> None:
    """Refuse a keyring that does not belong to *store*'s database; protect legacy rows once."""
    check = store.keyring.check_value()
    with store._reading() as conn:
        settings = _settings(conn)
    known = settings.get(_CHECK)
    if known is not None and known != check:
        where = f" ({store.keyring.path})" if store.keyring.path else ""
        raise KeyringError(
            f"the keyring{where} does not belong to this database (its check value differs): open it with the key "
            "file or $MEDTWIN_MASTER_KEY it was written with"
        )
    if known == check and settings.get(_PROTECTED) == "1":
        return
    with store._transaction() as conn:
        settings = _settings(conn)  # another process may have done it meanwhile
        if settings.get(_PROTECTED) != "1":
            protect_rows(conn, store.sealer(conn))
        t = schema.key_settings
        conn.execute(t.delete().where(t.c.name.in_([_CHECK, _PROTECTED])))
        conn.execute(t.insert(), [{"name": _CHECK, "value": check}, {"name": _PROTECTED, "value": "1"}])


def _new_id(sealer: Sealer, old: str, identity: Any) -> str:
    if old.startswith("pt-"):
        if identity is not None:
            for ident in identity.identifiers:
                if legacy_patient_id(ident.system, ident.value) == old:
                    return sealer.keyring.pseudonym(ident.system, ident.value)
        return old  # not derived from an identifier we hold: nothing to re-key
    return sealer.keyring.pseudonym.fhir(old)


def _rename(conn: Connection, old: str, new: str) -> None:
    """Every row and JSON body naming patient *old* names *new*."""
    params = {"old": old, "new": new, "oj": f'"patient_id":"{old}"', "nj": f'"patient_id":"{new}"'}
    for table in _CLINICAL:
        conn.execute(
            text(f"UPDATE {table} SET patient_id = :new, body = replace(body, :oj, :nj) WHERE patient_id = :old"),
            params,
        )
    conn.execute(text("UPDATE patient_references SET patient_id = :new WHERE patient_id = :old"), params)
    ref = {"old": old, "new": new, "oref": f'"Patient/{old}"', "nref": f'"Patient/{new}"'}
    conn.execute(
        text("UPDATE fhir_resources SET patient_id = :new, body = replace(body, :oref, :nref) WHERE patient_id = :old"),
        ref,
    )
    conn.execute(
        text("UPDATE record_versions SET record_id = :new, body = replace(body, :oj, :nj) "
             "WHERE kind = 'patient' AND record_id = :old"),
        params,
    )  # fmt: skip


def protect_rows(conn: Connection, sealer: Sealer) -> None:
    """Seal and re-key every row stored in clear (see the module doc); rows already sealed are left alone."""
    p, i = schema.patients, schema.patient_identity
    rows = conn.execute(select(p.c.patient_id, p.c.body, p.c.source_system, i.c.body).select_from(p.outerjoin(i))).all()
    for pid, body, _source_system, ident_body in rows:
        if is_sealed_text(body):
            continue
        identity = None if ident_body is None or is_sealed_text(ident_body) else codec.decode_identity(ident_body)
        new = _new_id(sealer, pid, identity)
        if new != pid:
            if conn.execute(select(p.c.patient_id).where(p.c.patient_id == new)).first() is not None:
                raise KeyringError(f"re-keying patient {pid!r}: its new id {new!r} is already taken")
            plain_body = body.replace(f'"patient_id":"{pid}"', f'"patient_id":"{new}"')
            # the identity row refers to the patient (ON DELETE CASCADE): take both out, put them back renamed
            row = dict(conn.execute(select(p).where(p.c.patient_id == pid)).mappings().one())
            conn.execute(p.delete().where(p.c.patient_id == pid))
            conn.execute(p.insert(), {**row, "patient_id": new})
            if ident_body is not None:
                conn.execute(i.insert(), {"patient_id": new, "body": ident_body})
            _rename(conn, pid, new)
            body = plain_body
        conn.execute(update(p).where(p.c.patient_id == new).values(body=sealer.seal_text(new, body), birth_date=None))
        if identity is not None:
            conn.execute(update(i).where(i.c.patient_id == new).values(body=sealer.seal_text(new, ident_body)))
            blinds = sealer.blind_rows(new, identity)
            if blinds:
                conn.execute(schema.identity_index.insert(), blinds)
    v, iv = schema.record_versions, schema.patient_identity_versions
    for vid, record_id, body in conn.execute(
        select(v.c.version_id, v.c.record_id, v.c.body).where(v.c.kind.in_(["patient", "fhir"]))
    ).all():
        if not is_sealed_text(body):
            ref = record_id if not record_id.count("/") else FHIR_SYSTEM_KEY
            conn.execute(update(v).where(v.c.version_id == vid).values(body=sealer.seal_text(ref, body)))
    for vid, record_id, body in conn.execute(
        select(iv.c.version_id, v.c.record_id, iv.c.body).select_from(iv.join(v, v.c.version_id == iv.c.version_id))
    ).all():
        if not is_sealed_text(body):
            conn.execute(update(iv).where(iv.c.version_id == vid).values(body=sealer.seal_text(record_id, body)))
    f = schema.fhir_resources
    for rtype, rid, patient, body in conn.execute(
        select(f.c.resource_type, f.c.resource_id, f.c.patient_id, f.c.body)
    ).all():
        if not is_sealed_text(body):
            conn.execute(
                update(f)
                .where(f.c.resource_type == rtype, f.c.resource_id == rid)
                .values(body=sealer.seal_text(patient or FHIR_SYSTEM_KEY, body))
            )
    r = schema.raw_inbound
    last = 0
    while True:
        chunk = conn.execute(
            select(r.c.raw_id, r.c.payload, r.c.digest).where(r.c.raw_id > last).order_by(r.c.raw_id).limit(500)
        ).all()
        if not chunk:
            break
        params = []
        for raw_id, payload, digest in chunk:
            data = bytes(payload)
            last = int(raw_id)
            if is_sealed(data):
                continue
            plain = digest if digest is not None and len(digest) == 64 else hashlib.sha256(data).hexdigest()
            params.append(
                {
                    "b_id": raw_id,
                    "payload": sealer.seal_bytes(SYSTEM_KEY, data) if data else data,
                    "digest": sealer.digest(plain) if data or digest else None,
                    "key_ref": SYSTEM_KEY,
                }
            )
        if params:
            conn.execute(
                update(r)
                .where(r.c.raw_id == bindparam("b_id"))
                .values(payload=bindparam("payload"), digest=bindparam("digest"), key_ref=bindparam("key_ref")),
                params,
            )
