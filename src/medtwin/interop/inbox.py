"""The inbox: processing a rejected raw message again, after a fix, keeping its history (``medtwin inbox retry``).

A rejected entry stays as it is (the raw log is append-only); its retry is a new entry that names it
(``relation = retry-of``): accepted with its records when the message now goes through (a fix in medtwin's
mapping or configuration, or a corrected payload given by the interface engineer), rejected again with the new
reason when it does not. HL7 v2 payloads are read exactly as the MLLP listener reads them (each message of a batch
on its own, conflicting resends kept beside the first), FHIR JSON as ``medtwin ingest`` reads a file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

import orjson

from medtwin.errors import ValidationError
from medtwin.interop.fhir import FhirInputError, parse_payload
from medtwin.interop.hl7v2 import Hl7MappingError, control_key, message_digest
from medtwin.interop.mllp import CONTENT_TYPE
from medtwin.interop.mllp_units import map_again, prepare_frame
from medtwin.store import RawLogEntry, RawMessage, Store

__all__ = ["RetryOutcome", "retry_rejected"]

_FHIR_TYPES = ("application/fhir+json", "application/fhir+ndjson")


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """One entry a retry wrote: its raw id, status (accepted, unmapped, duplicate, rejected), records stored, why."""

    raw_id: int | None
    status: str
    records: int
    reason: str | None


def retry_rejected(
    store: Store, raw_id: int, *, payload: bytes | None = None, assume_tz: tzinfo = UTC
) -> list[RetryOutcome]:
    """Process the rejected raw entry *raw_id* again (with the corrected *payload* when given); one outcome per
    message it holds (a batch frame: several).

    Raises
    ------
    ValidationError
        No such entry, or it is not a rejected one (an accepted message needs no retry).
    """
    entry = store.raw_entry(raw_id)
    if entry is None:
        raise ValidationError(f"inbox retry: no raw entry {raw_id}")
    if entry.status != "rejected":
        raise ValidationError(f"inbox retry: raw entry {raw_id} is {entry.status}, only rejected entries are retried")
    data = payload if payload is not None else (entry.payload or b"")
    if entry.content_type in _FHIR_TYPES:
        return [_retry_fhir(store, entry, data)]
    if entry.content_type != CONTENT_TYPE:
        raise ValidationError(
            f"inbox retry: raw entry {raw_id} holds {entry.content_type!r}, which medtwin cannot read"
        )
    return _retry_hl7(store, entry, data, assume_tz)


def _retry_raw(entry: RawLogEntry, data: bytes, **fields: Any) -> RawMessage:
    base = RawMessage(
        source_system=entry.source_system,
        source_id=entry.source_id,
        payload=data,
        content_type=entry.content_type,
        received=datetime.now(UTC),
        related_raw_id=entry.raw_id,
        relation="retry-of",
    )
    return dataclasses.replace(base, **fields)


def _rejected(store: Store, entry: RawLogEntry, data: bytes, reason: str, **fields: Any) -> RetryOutcome:
    key = f"{entry.source_id.split('#', 1)[0][:300]}#retry-{entry.raw_id}-{datetime.now(UTC).timestamp():.6f}"
    raw_id = store.reject(_retry_raw(entry, data, source_id=key, status="rejected", reason=reason, **fields), reason)
    return RetryOutcome(raw_id, "rejected", 0, reason)


def _retry_fhir(store: Store, entry: RawLogEntry, data: bytes) -> RetryOutcome:
    try:
        parsed = parse_payload(
            orjson.loads(data),
            file=f"raw {entry.raw_id}",
            source_system=entry.source_system,
            patient_id_for=store.keyring.pseudonym.fhir,
        )
    except (FhirInputError, orjson.JSONDecodeError) as exc:
        return _rejected(store, entry, data, f"retry of raw_id {entry.raw_id}: {exc}")
    key = f"hmac:{store.keyring.digest(data)}"  # the key medtwin ingest gives a file of these bytes
    notes = "; ".join([f"retry of raw_id {entry.raw_id}", *parsed.warnings])[:2000]
    result = store.write(parsed.items, _retry_raw(entry, data, source_id=key, reason=notes))
    status = "duplicate" if result.raw_duplicate else "accepted"
    return RetryOutcome(result.raw_id, status, result.inserted + result.updated, None)


def _retry_hl7(store: Store, entry: RawLogEntry, data: bytes, assume_tz: tzinfo) -> list[RetryOutcome]:
    out = []
    for unit in prepare_frame(data, assume_tz, store.keyring.pseudonym):
        if unit.error is not None or unit.mapped is None:
            error = unit.error
            out.append(_rejected(store, entry, unit.payload, f"retry of raw_id {entry.raw_id}: HL7 "
                                 f"{getattr(error, 'error_code', '207')}: {error}"))  # fmt: skip
            continue
        mapped = unit.mapped
        notes = [f"retry of raw_id {entry.raw_id}", *mapped.notes, *(f"refused {r.location}: {r.reason}"
                                                                     for r in mapped.refused)]  # fmt: skip
        raw = _retry_raw(
            entry,
            unit.payload,
            source_system=mapped.source_system,
            source_id=mapped.source_id,
            status="accepted" if mapped.supported else "unmapped",
            reason="; ".join(notes)[:2000],
            digest=message_digest(mapped.message),
        )
        result = store.write(list(mapped.records), raw)
        if result.raw_conflict:  # the control id is stored with other content: kept beside it, as the listener does
            again = map_again(
                unit,
                control_key(mapped.message, store.keyring.digest((raw.digest or "").encode())),
                assume_tz,
                store.keyring.pseudonym,
            )
            raw = dataclasses.replace(raw, source_id=again.source_id, related_raw_id=result.related_raw_id,
                                      relation="conflict-of")  # fmt: skip
            result = store.write(list(again.records), raw)
        if result.raw_conflict:
            raise Hl7MappingError(f"retry of raw_id {entry.raw_id}: the conflicting resend could not be keyed")
        status = "duplicate" if result.raw_duplicate else raw.status
        out.append(RetryOutcome(result.raw_id, status, result.inserted + result.updated, raw.reason))
    return out
