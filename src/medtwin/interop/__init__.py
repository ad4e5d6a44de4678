"""Interoperability edges: FHIR R4, HL7 v2 + MLLP, CSV readers and writers (floor 2)."""

__all__: list[str] = []
