"""A patient's twin built from the stored record: every record replayed in time order through a fresh twin.

This is what ``medtwin twin ...`` answers from: the same components, fed the same records in the order they
happened, reach the state the runtime's twin reached (components are deterministic given their inputs), without
writing anything. Records at the same time are observed together, as a message's records are.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from medtwin.records import MedicationAdministration, Observation, Patient, Record
from medtwin.store import Store
from medtwin.twin.component import ComponentRegistry
from medtwin.twin.patient import PatientTwin

__all__ = ["record_of", "twin_from_record"]


def record_of(store: Store, patient_id: str) -> list[Record]:
    """The records of *patient_id* the twins take (Patient, observations, medication administrations), by time."""
    patient = store.patient(patient_id)
    timed: list[tuple[datetime, int, Record]] = []
    for obs in store.observations(patient_id):
        timed.append((obs.effective, 1, obs))
    for adm in store.medication_administrations(patient_id):
        timed.append((adm.start, 0, adm))  # a dose before a level drawn at the same time
    timed.sort(key=lambda e: (e[0], e[1]))
    out: list[Record] = [] if patient is None else [patient]
    out.extend(r for _, _, r in timed)
    return out


def _time(record: Record) -> datetime | None:
    if isinstance(record, Observation):
        return record.effective
    if isinstance(record, MedicationAdministration):
        return record.start
    return None


def twin_from_record(
    store: Store,
    patient_id: str,
    *,
    registry: ComponentRegistry | None = None,
    settings: Mapping[str, Any] | None = None,
) -> tuple[PatientTwin, list[Record]]:
    """The twin of *patient_id* after replaying its record, and everything the replay produced (alerts,
    proposals), which is returned, not stored."""
    twin = PatientTwin(
        patient_id, registry=registry if registry is not None else ComponentRegistry.default(), settings=settings
    )
    produced: list[Record] = []
    group: list[Record] = []
    at: datetime | None = None
    for record in record_of(store, patient_id):
        if isinstance(record, Patient):
            twin.patient = record
            produced.extend(twin.observe([record]))
            continue
        when = _time(record)
        if group and when != at:
            produced.extend(twin.observe(group))
            group = []
        group.append(record)
        at = when
    if group:
        produced.extend(twin.observe(group))
    return twin, produced
