"""What the researcher role sees: the de-identified record of :mod:`medtwin.security.deid` (HIPAA Safe Harbor).

The same function as ``medtwin export --deidentify``: no names, identifiers, contact details or free text; dates
shifted by the patient's secret offset; ages over 89 aggregated; ZIP3; resource ids and references replaced by
research ids (``rs-...``). It covers Patient, Encounter, Condition, Observation, MedicationRequest and
MedicationAdministration, which is why the researcher role reads those types only (medtwin.security.policy).
A request names a record by its platform id; :func:`research_resource` finds its de-identified version by the
research id that id maps to.
"""

from __future__ import annotations

from typing import Any

from medtwin.security.deid import deidentify_patient, research_id
from medtwin.store import Store

__all__ = ["research_resource", "research_resources"]


def research_resources(store: Store, patient_id: str, resource_type: str | None = None) -> list[dict[str, Any]]:
    """The de-identified resources of *patient_id* (of *resource_type* only, when given); Patient first."""
    if store.patient(patient_id) is None:
        return []
    found = deidentify_patient(store, patient_id)
    return found if resource_type is None else [r for r in found if r.get("resourceType") == resource_type]


def research_resource(store: Store, patient_id: str, resource_type: str, record_id: str) -> dict[str, Any] | None:
    """The de-identified version of record *record_id* (of *resource_type*) of *patient_id*, or None."""
    wanted = research_id(store.keyring, record_id)
    return next((r for r in research_resources(store, patient_id, resource_type) if r.get("id") == wanted), None)
