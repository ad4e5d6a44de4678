"""FHIR R4 in and out (floor 2): bundles, resources and bulk NDJSON to records; records to FHIR R4 JSON.

See docs/fhir.md for the mapping, the error messages and the idempotency rules.
"""

from medtwin.interop.fhir.errors import FhirInputError
from medtwin.interop.fhir.ingest import (
    DocumentResult,
    FhirLimits,
    FileReport,
    IngestReport,
    fhir_files,
    ingest_document,
    ingest_file,
    ingest_paths,
)
from medtwin.interop.fhir.payload import ParsedPayload, parse_payload
from medtwin.interop.fhir.reader import MAPPED_TYPES, Unmapped, map_resource, parse_datetime
from medtwin.interop.fhir.writer import patient_bundle, to_fhir

__all__ = [
    "MAPPED_TYPES",
    "DocumentResult",
    "FhirInputError",
    "FhirLimits",
    "FileReport",
    "IngestReport",
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
