"""Encryption at rest inside the store: which columns are sealed, under which key, and the data keys' table.

Sealed (AES-256-GCM, :mod:`medtwin.crypto.envelope`) under the patient's data key:

* ``patients.body`` (gender, birth date, deceased time: the birth date is a direct identifier) with the
  ``patients.birth_date`` column left empty; ``patient_identity.body`` (names, identifiers/MRN, telecom, address);
  ``record_versions.body`` of patient versions and ``patient_identity_versions.body``;
* ``fhir_resources.body`` (FHIR JSON kept whole) and ``record_versions.body`` of replaced FHIR resources, under
  the compartment's patient (resources outside any compartment: the system key ``system:fhir``);
* ``raw_inbound.payload`` (HL7 v2 messages, FHIR bundles, dead letters, conflicting resends) under the key of the
  one patient its records belong to, else the system key ``system:raw`` (a dead letter whose patient is not known,
  a bundle of several patients); ``raw_inbound.key_ref`` names it.

``raw_inbound.digest`` (duplicate detection) is keyed: HMAC-SHA-256 of the payload's SHA-256 under the keyring's
secret, so a stolen digest cannot confirm a guessed message. Identifiers are found through ``identity_index``
(HMAC blind index of ``system|value`` and ``*|value``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from medtwin.crypto import SYSTEM_KEY, DataKeys, Keyring
from medtwin.records import PatientIdentity
from medtwin.store import schema

__all__ = ["FHIR_SYSTEM_KEY", "SYSTEM_KEY", "Sealer", "load_wrapped_keys", "store_wrapped_keys"]

FHIR_SYSTEM_KEY = "system:fhir"


def load_wrapped_keys(conn: Connection, refs: list[str]) -> dict[str, tuple[str, bytes]]:
    """(master key id, wrapped key) of the stored data keys among *refs*."""
    t = schema.patient_keys
    out: dict[str, tuple[str, bytes]] = {}
    for i in range(0, len(refs), 500):
        stmt = select(t.c.key_ref, t.c.master_key_id, t.c.wrapped).where(t.c.key_ref.in_(refs[i : i + 500]))
        for ref, kid, wrapped in conn.execute(stmt):
            out[str(ref)] = (str(kid), bytes(wrapped))
    return out


def store_wrapped_keys(conn: Connection, new: dict[str, tuple[str, bytes]]) -> None:
    """Insert new wrapped data keys (a key another writer stored first is kept: ON CONFLICT DO NOTHING)."""
    t = schema.patient_keys
    ins = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
    now = datetime.now(UTC)
    conn.execute(
        ins.on_conflict_do_nothing(),
        [{"key_ref": ref, "master_key_id": kid, "wrapped": w, "created": now} for ref, (kid, w) in new.items()],
    )


class Sealer:
    """Seals and opens values inside one write transaction (*conn*): a data key that does not exist yet is
    created and stored on *conn*, so it commits (or rolls back) with the rows it sealed."""

    def __init__(self, keys: DataKeys, conn: Connection | None) -> None:
        self.keys = keys
        self.keyring: Keyring = keys.keyring
        self._conn = conn

    def _key(self, ref: str) -> AESGCM:
        aead = self.keys.cached(ref)
        if aead is None:
            create = None if self._conn is None else (lambda new: store_wrapped_keys(self._conn, new))  # type: ignore[arg-type]
            aead = self.keys.keys_for([ref], create=create)[ref]
        return aead

    def prepare(self, refs: Iterable[str]) -> None:
        """Make sure the data keys of *refs* exist and are cached (one read, one insert for the new ones)."""
        missing = [r for r in dict.fromkeys(refs) if self.keys.cached(r) is None]
        if missing:
            create = None if self._conn is None else (lambda new: store_wrapped_keys(self._conn, new))  # type: ignore[arg-type]
            self.keys.keys_for(missing, create=create)

    def seal_text(self, ref: str, text: str) -> str:
        return DataKeys.seal_text_with(self._key(ref), ref, text)

    def seal_bytes(self, ref: str, data: bytes) -> bytes:
        return DataKeys.seal_with(self._key(ref), ref, data)

    def open_text(self, value: str) -> str | None:
        return self.keys.open_text(value)

    def open_bytes(self, value: bytes) -> bytes | None:
        return self.keys.open(value)

    def digest(self, plain_digest: str) -> str:
        """The keyed digest stored for a payload whose SHA-256 (hex) is *plain_digest*."""
        return self.keyring.digest(plain_digest.encode())

    def payload_digest(self, payload: bytes) -> str:
        return self.digest(hashlib.sha256(payload).hexdigest())

    def blind_rows(self, patient_id: str, identity: PatientIdentity) -> list[dict[str, Any]]:
        """The ``identity_index`` rows of *identity* (each identifier under its system and under any system)."""
        blinds = set()
        for ident in identity.identifiers:
            blinds.add(self.keyring.blind_index(ident.system, ident.value))
            blinds.add(self.keyring.blind_index(None, ident.value))
        return [{"blind": b, "patient_id": patient_id} for b in sorted(blinds)]
