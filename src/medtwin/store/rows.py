"""Records to table rows: the indexed columns of each table plus the JSON body (no ORM objects).

Each table has one value builder, ``values(record, time) -> tuple`` in the column order of :data:`COLUMNS`
(primary key first), where *time* turns each timestamp into what the driver stores. The dict rows that
SQLAlchemy statements take are built from the same builders (:data:`TABLES`), so the SQLite fast path of
:mod:`medtwin.store.batch` and the Core statements cannot disagree on a column.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
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

__all__ = ["COLUMNS", "TABLES", "TABLE_OF", "VALUES_OF", "TimeAdapter", "ValuesBuilder", "loinc_code"]

TimeAdapter = Callable[[datetime | None], Any]
"""Turns a record's (UTC, aware) timestamp, or None, into the value the driver binds."""
ValuesBuilder = Callable[[Any, TimeAdapter], tuple[Any, ...]]


def _aware(value: datetime | None) -> datetime | None:
    return value


def loinc_code(obs: Observation) -> str | None:
    """The LOINC code an observation is found by: its primary code mapped to LOINC, else a LOINC alt code."""
    primary = mcodes.normalise_to_loinc(obs.code)
    if primary.system == mcodes.LOINC:
        return primary.code
    for alt in obs.alt_codes:
        if alt.system == mcodes.LOINC:
            return alt.code
    return None


def _observation_values(o: Observation, time: TimeAdapter) -> tuple[Any, ...]:
    value, p = o.value, o.provenance
    quantity = value if isinstance(value, Quantity) else None
    return (
        o.observation_id,
        o.patient_id,
        o.code.system,
        o.code.code,
        loinc_code(o),
        time(o.effective),
        quantity.value if quantity else None,
        quantity.unit if quantity else None,
        o.status,
        o.encounter_id,
        p.source_system if p else None,
        p.source_id if p else None,
        codec.encode(o),
    )


def _patient_values(p: Patient, time: TimeAdapter) -> tuple[Any, ...]:
    prov = p.provenance
    return (
        p.patient_id,
        p.gender,
        p.birth_date.isoformat() if p.birth_date else None,
        time(p.deceased),
        prov.source_system if prov else None,
        prov.source_id if prov else None,
        codec.encode(p),
    )


def _encounter_values(e: Encounter, time: TimeAdapter) -> tuple[Any, ...]:
    p = e.provenance
    return (
        e.encounter_id,
        e.patient_id,
        e.status,
        e.class_code,
        time(e.start),
        time(e.end),
        p.source_system if p else None,
        p.source_id if p else None,
        codec.encode(e),
    )


def _condition_values(c: Condition, time: TimeAdapter) -> tuple[Any, ...]:
    p = c.provenance
    return (
        c.condition_id,
        c.patient_id,
        c.code.system,
        c.code.code,
        c.clinical_status,
        time(c.onset),
        p.source_system if p else None,
        p.source_id if p else None,
        codec.encode(c),
    )


def _medication_request_values(m: MedicationRequest, time: TimeAdapter) -> tuple[Any, ...]:
    p = m.provenance
    return (
        m.request_id,
        m.patient_id,
        m.medication.code,
        m.intent,
        m.status,
        time(m.authored),
        p.source_system if p else None,
        p.source_id if p else None,
        codec.encode(m),
    )


def _medication_administration_values(m: MedicationAdministration, time: TimeAdapter) -> tuple[Any, ...]:
    p = m.provenance
    return (
        m.administration_id,
        m.patient_id,
        m.medication.code,
        time(m.start),
        m.status,
        p.source_system if p else None,
        p.source_id if p else None,
        codec.encode(m),
    )


def _event_values(e: Event, time: TimeAdapter) -> tuple[Any, ...]:
    p = e.provenance
    return (
        e.event_id,
        e.patient_id,
        e.kind,
        e.code,
        time(e.time),
        e.severity,
        e.status,
        p.source_system if p else None,
        p.source_id if p else None,
        codec.encode(e),
    )


_PROV = ("source_system", "source_id", "body")
COLUMNS: dict[type[Any], tuple[str, ...]] = {
    Patient: ("patient_id", "gender", "birth_date", "deceased", *_PROV),
    Encounter: ("encounter_id", "patient_id", "status", "class_code", "start", "end", *_PROV),
    Condition: ("condition_id", "patient_id", "code_system", "code", "clinical_status", "onset", *_PROV),
    Observation: (
        "observation_id",
        "patient_id",
        "code_system",
        "code",
        "loinc_code",
        "effective",
        "value_num",
        "unit",
        "status",
        "encounter_id",
        *_PROV,
    ),
    MedicationRequest: ("request_id", "patient_id", "medication_code", "intent", "status", "authored", *_PROV),
    MedicationAdministration: ("administration_id", "patient_id", "medication_code", "start", "status", *_PROV),
    Event: ("event_id", "patient_id", "kind", "code", "time", "severity", "status", *_PROV),
}
"""The columns each record type fills, in the order of its value builder (primary key first)."""

VALUES_OF: dict[type[Any], ValuesBuilder] = {
    Patient: _patient_values,
    Encounter: _encounter_values,
    Condition: _condition_values,
    Observation: _observation_values,
    MedicationRequest: _medication_request_values,
    MedicationAdministration: _medication_administration_values,
    Event: _event_values,
}
"""record type -> ``values(record, time)``, the row of that record as a tuple in :data:`COLUMNS` order."""


def _row_builder(kind: type[Any]) -> Callable[[Any], dict[str, Any]]:
    names, values = COLUMNS[kind], VALUES_OF[kind]

    def row(record: Record) -> dict[str, Any]:
        return dict(zip(names, values(record, _aware), strict=True))

    row.__name__ = f"{kind.__name__.lower()}_row"
    return row


# record type -> (table, primary-key column, row builder); order matters: patients before their dependants.
TABLES: tuple[tuple[type[Any], Table, str, Any], ...] = (
    (Patient, schema.patients, "patient_id", _row_builder(Patient)),
    (Encounter, schema.encounters, "encounter_id", _row_builder(Encounter)),
    (Condition, schema.conditions, "condition_id", _row_builder(Condition)),
    (Observation, schema.observations, "observation_id", _row_builder(Observation)),
    (MedicationRequest, schema.medication_requests, "request_id", _row_builder(MedicationRequest)),
    (
        MedicationAdministration,
        schema.medication_administrations,
        "administration_id",
        _row_builder(MedicationAdministration),
    ),
    (Event, schema.events, "event_id", _row_builder(Event)),
)
TABLE_OF: dict[type[Any], tuple[Table, str, Any]] = {kind: (t, pk, row) for kind, t, pk, row in TABLES}
