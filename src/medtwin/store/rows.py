"""Records to table rows: the indexed columns of each table plus the JSON body (no ORM objects)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table

from medtwin import codes as mcodes
from medtwin.records import (
    Condition,
    Encounter,
    Event,
    MedicationAdministration,
    MedicationRequest,
    Observation,
    Patient,
    Quantity,
    Record,
)
from medtwin.store import codec, schema

__all__ = ["TABLES", "TABLE_OF", "loinc_code"]


def _prov(record: Record) -> dict[str, Any]:
    p = record.provenance
    return {"source_system": p.source_system if p else None, "source_id": p.source_id if p else None}


def loinc_code(obs: Observation) -> str | None:
    """The LOINC code an observation is found by: its primary code mapped to LOINC, else a LOINC alt code."""
    primary = mcodes.normalise_to_loinc(obs.code)
    if primary.system == mcodes.LOINC:
        return primary.code
    for alt in obs.alt_codes:
        if alt.system == mcodes.LOINC:
            return alt.code
    return None


def _observation_row(o: Observation) -> dict[str, Any]:
    value = o.value
    return {
        "observation_id": o.observation_id,
        "patient_id": o.patient_id,
        "code_system": o.code.system,
        "code": o.code.code,
        "loinc_code": loinc_code(o),
        "effective": o.effective,
        "value_num": value.value if isinstance(value, Quantity) else None,
        "unit": value.unit if isinstance(value, Quantity) else None,
        "status": o.status,
        "encounter_id": o.encounter_id,
        **_prov(o),
        "body": codec.encode(o),
    }


def _patient_row(p: Patient) -> dict[str, Any]:
    return {
        "patient_id": p.patient_id,
        "gender": p.gender,
        "birth_date": p.birth_date.isoformat() if p.birth_date else None,
        "deceased": p.deceased,
        **_prov(p),
        "body": codec.encode(p),
    }


def _encounter_row(e: Encounter) -> dict[str, Any]:
    return {
        "encounter_id": e.encounter_id,
        "patient_id": e.patient_id,
        "status": e.status,
        "class_code": e.class_code,
        "start": e.start,
        "end": e.end,
        **_prov(e),
        "body": codec.encode(e),
    }


def _condition_row(c: Condition) -> dict[str, Any]:
    return {
        "condition_id": c.condition_id,
        "patient_id": c.patient_id,
        "code_system": c.code.system,
        "code": c.code.code,
        "clinical_status": c.clinical_status,
        "onset": c.onset,
        **_prov(c),
        "body": codec.encode(c),
    }


def _medication_request_row(m: MedicationRequest) -> dict[str, Any]:
    return {
        "request_id": m.request_id,
        "patient_id": m.patient_id,
        "medication_code": m.medication.code,
        "intent": m.intent,
        "status": m.status,
        "authored": m.authored,
        **_prov(m),
        "body": codec.encode(m),
    }


def _medication_administration_row(m: MedicationAdministration) -> dict[str, Any]:
    return {
        "administration_id": m.administration_id,
        "patient_id": m.patient_id,
        "medication_code": m.medication.code,
        "start": m.start,
        "status": m.status,
        **_prov(m),
        "body": codec.encode(m),
    }


def _event_row(e: Event) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "patient_id": e.patient_id,
        "kind": e.kind,
        "code": e.code,
        "time": e.time,
        "severity": e.severity,
        "status": e.status,
        **_prov(e),
        "body": codec.encode(e),
    }


# record type -> (table, primary-key column, row builder); order matters: patients before their dependants.
TABLES: tuple[tuple[type[Any], Table, str, Any], ...] = (
    (Patient, schema.patients, "patient_id", _patient_row),
    (Encounter, schema.encounters, "encounter_id", _encounter_row),
    (Condition, schema.conditions, "condition_id", _condition_row),
    (Observation, schema.observations, "observation_id", _observation_row),
    (MedicationRequest, schema.medication_requests, "request_id", _medication_request_row),
    (MedicationAdministration, schema.medication_administrations, "administration_id", _medication_administration_row),
    (Event, schema.events, "event_id", _event_row),
)
TABLE_OF: dict[type[Any], tuple[Table, str, Any]] = {kind: (t, pk, row) for kind, t, pk, row in TABLES}
