"""The public names of medtwin.store and medtwin.interop.fhir are exactly these (changes must be deliberate)."""

from __future__ import annotations

import medtwin.interop.fhir as fhir
import medtwin.store as store


def test_store_public_api() -> None:
    assert sorted(store.__all__) == [
        "AcceptedMessage",
        "EventNotFoundError",
        "FhirResource",
        "PatientLinks",
        "RawLogEntry",
        "RawMessage",
        "SharedWriteLock",
        "Store",
        "StoreConfigError",
        "WriteResult",
        "accepted_after",
        "last_raw_id",
        "load_cursor",
        "raw_digest",
        "resolve_database_url",
        "save_cursor",
    ]
    for name in store.__all__:
        assert getattr(store, name) is not None


def test_fhir_public_api() -> None:
    assert sorted(fhir.__all__) == [
        "DocumentResult",
        "FhirInputError",
        "FhirLimits",
        "FileReport",
        "IngestReport",
        "MAPPED_TYPES",
        "ParsedPayload",
        "Unmapped",
        "fhir_files",
        "ingest_document",
        "ingest_file",
        "ingest_paths",
        "map_resource",
        "parse_datetime",
        "parse_payload",
        "patient_bundle",
        "to_fhir",
    ]
    for name in fhir.__all__:
        assert getattr(fhir, name) is not None
