"""medtwin records to FHIR R4 (4.0.1) JSON resources, and a patient's whole record to a Bundle.

Mapping: Patient (identity -> identifier/name/telecom/address), Observation (value[x], components,
derivedFrom, device), Encounter (class, period, locations), Condition, MedicationRequest (intent such as
``proposal``; dosageInstruction with dose, route, timing ``repeat`` period = interval and duration = infusion
time, rate, bounds start and count), MedicationAdministration, and Event: an ``alert`` about a patient becomes a
Flag, any other event (derived value, recommendation, or an alert without a patient) a DetectedIssue. Each
resource carries its provenance as an identifier (system ``urn:medtwin:source:<source system>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.records import (
    Coding,
    Condition,
    Encounter,
    Event,
    MedicationAdministration,
    MedicationRequest,
    Observation,
    ObservationValue,
    Patient,
    Provenance,
    Quantity,
    Record,
)

__all__ = [
    "EVENT_CODE_SYSTEM",
    "EVENT_DATA_EXTENSION",
    "PatientRecordSource",
    "patient_bundle",
    "to_fhir",
]

EVENT_CODE_SYSTEM = "urn:medtwin:event"
EVENT_DATA_EXTENSION = "https://medtwin.invalid/fhir/StructureDefinition/event-data"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_SEVERITY = {"high": "high", "critical": "high", "moderate": "moderate", "medium": "moderate", "low": "low"}


class PatientRecordSource(Protocol):
    """What :func:`patient_bundle` reads from (a :class:`medtwin.store.Store` is one)."""

    def patient(self, patient_id: str) -> Patient | None: ...
    def encounters(self, patient_id: str | None = None) -> list[Encounter]: ...
    def conditions(self, patient_id: str) -> list[Condition]: ...
    def observations(self, patient_id: str) -> list[Observation]: ...
    def medication_requests(self, patient_id: str) -> list[MedicationRequest]: ...
    def medication_administrations(self, patient_id: str) -> list[MedicationAdministration]: ...
    def events(self, patient_id: str | None = None) -> list[Event]: ...
    def kept_resources(self, patient_id: str) -> list[str]: ...


def _instant(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _coding(c: Coding) -> dict[str, Any]:
    out: dict[str, Any] = {"system": c.system, "code": c.code}
    if c.display:
        out["display"] = c.display
    return out


def _concept(*cs: Coding, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [_coding(c) for c in cs]}
    label = text or next((c.display for c in cs if c.display), None)
    if label:
        out["text"] = label
    return out


def _quantity(q: Quantity) -> dict[str, Any]:
    """A FHIR Quantity; labelled UCUM (system and code) only when the unit is UCUM medtwin can read, else the unit
    text alone (units from HL7 v2 OBX-6 such as ``tera.l-1`` are kept as written and must not claim to be UCUM)."""
    if codes.is_ucum(q.unit):
        return {"value": q.value, "unit": q.unit, "system": codes.UCUM, "code": q.unit}
    return {"value": q.value, "unit": q.unit}


def _ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def _identifier(p: Provenance | None) -> list[dict[str, str]]:
    if p is None:
        return []
    return [{"system": f"urn:medtwin:source:{p.source_system}", "value": p.source_id}]


def _value(target: dict[str, Any], value: ObservationValue) -> None:
    if isinstance(value, Quantity):
        target["valueQuantity"] = _quantity(value)
    elif isinstance(value, Coding):
        target["valueCodeableConcept"] = _concept(value)
    elif isinstance(value, str):
        target["valueString"] = value


def _patient(p: Patient) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Patient", "id": p.patient_id}
    ident = p.identity
    identifiers: list[dict[str, Any]] = [
        {
            **({"system": i.system} if i.system else {}),
            "value": i.value,
            **({"type": {"coding": [{"system": _V2_0203, "code": i.type_code}]}} if i.type_code else {}),
        }
        for i in (ident.identifiers if ident else ())
    ]
    identifiers += _identifier(p.provenance)
    if identifiers:
        out["identifier"] = identifiers
    if ident is not None and (ident.family or ident.given):
        name: dict[str, Any] = {"use": "official"}
        if ident.family:
            name["family"] = ident.family
        if ident.given:
            name["given"] = list(ident.given)
        out["name"] = [name]
    if ident is not None and ident.telecom:
        out["telecom"] = [{"system": "email" if "@" in t else "phone", "value": t} for t in ident.telecom]
    if p.gender:
        out["gender"] = p.gender
    if p.birth_date:
        out["birthDate"] = p.birth_date.isoformat()
    if p.deceased:
        out["deceasedDateTime"] = _instant(p.deceased)
    if ident is not None and ident.address:
        out["address"] = [{"text": ident.address}]
    return out


def _observation(o: Observation) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Observation", "id": o.observation_id}
    if o.provenance:
        out["identifier"] = _identifier(o.provenance)
    out["status"] = o.status
    if o.category:
        out["category"] = [{"coding": [{"system": _OBS_CATEGORY, "code": o.category}]}]
    out["code"] = _concept(o.code, *o.alt_codes)
    out["subject"] = _ref("Patient", o.patient_id)
    if o.encounter_id:
        out["encounter"] = _ref("Encounter", o.encounter_id)
    out["effectiveDateTime"] = _instant(o.effective)
    _value(out, o.value)
    if o.device:
        out["device"] = {"display": o.device}
    if o.derived_from:
        out["derivedFrom"] = [_ref("Observation", d) for d in o.derived_from]
    if o.components:
        comps = []
        for c in o.components:
            comp: dict[str, Any] = {"code": _concept(c.code)}
            _value(comp, c.value)
            comps.append(comp)
        out["component"] = comps
    return out


def _period(start: datetime, end: datetime | None) -> dict[str, str]:
    out = {"start": _instant(start)}
    if end is not None:
        out["end"] = _instant(end)
    return out


def _encounter(e: Encounter) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Encounter", "id": e.encounter_id}
    if e.provenance:
        out["identifier"] = _identifier(e.provenance)
    out["status"] = e.status
    out["class"] = {"system": _ACT_CODE, "code": e.class_code}
    if e.type:
        out["type"] = [_concept(e.type)]
    out["subject"] = _ref("Patient", e.patient_id)
    out["period"] = _period(e.start, e.end)
    if e.reason:
        out["reasonCode"] = [_concept(e.reason)]
    if e.disposition:
        out["hospitalization"] = {"dischargeDisposition": _concept(e.disposition)}
    if e.locations:
        out["location"] = [
            {
                "location": {"display": loc.unit + (f", bed {loc.bed}" if loc.bed else "")},
                "status": "completed" if loc.end else "active",
                "period": _period(loc.start, loc.end),
            }
            for loc in e.locations
        ]
    return out


def _condition(c: Condition) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Condition", "id": c.condition_id}
    if c.provenance:
        out["identifier"] = _identifier(c.provenance)
    out["clinicalStatus"] = {"coding": [{"system": _CONDITION_CLINICAL, "code": c.clinical_status}]}
    out["code"] = _concept(c.code)
    out["subject"] = _ref("Patient", c.patient_id)
    if c.encounter_id:
        out["encounter"] = _ref("Encounter", c.encounter_id)
    if c.onset:
        out["onsetDateTime"] = _instant(c.onset)
    if c.abatement:
        out["abatementDateTime"] = _instant(c.abatement)
    if c.recorded:
        out["recordedDate"] = _instant(c.recorded)
    return out


def _medication_request(m: MedicationRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "MedicationRequest", "id": m.request_id}
    if m.provenance:
        out["identifier"] = _identifier(m.provenance)
    out["status"] = m.status
    out["intent"] = m.intent
    out["medicationCodeableConcept"] = _concept(m.medication)
    out["subject"] = _ref("Patient", m.patient_id)
    if m.encounter_id:
        out["encounter"] = _ref("Encounter", m.encounter_id)
    if m.authored:
        out["authoredOn"] = _instant(m.authored)
    if m.note:
        out["note"] = [{"text": m.note}]
    dosage: dict[str, Any] = {}
    repeat: dict[str, Any] = {}
    if m.interval_h is not None:
        repeat.update(frequency=1, period=m.interval_h, periodUnit="h")
    if m.infusion_duration_h is not None:
        repeat.update(duration=m.infusion_duration_h, durationUnit="h")
    if m.start is not None:
        repeat["boundsPeriod"] = {"start": _instant(m.start)}
    if m.number_of_doses is not None:
        repeat["count"] = m.number_of_doses
    if repeat:
        dosage["timing"] = {"repeat": repeat}
    if m.route:
        dosage["route"] = _concept(m.route)
    dose_rate: dict[str, Any] = {}
    if m.dose:
        dose_rate["doseQuantity"] = _quantity(m.dose)
    if m.rate:
        dose_rate["rateQuantity"] = _quantity(m.rate)
    if dose_rate:
        dosage["doseAndRate"] = [dose_rate]
    if dosage:
        text = _dosage_text(m)
        out["dosageInstruction"] = [{**({"text": text} if text else {}), **dosage}]
    return out


def _dosage_text(m: MedicationRequest) -> str | None:
    parts = []
    if m.dose:
        parts.append(f"{m.dose.value:g} {m.dose.unit}")
    if m.interval_h:
        parts.append(f"every {m.interval_h:g} h")
    if m.infusion_duration_h:
        parts.append(f"infused over {m.infusion_duration_h:g} h")
    if m.number_of_doses:
        parts.append(f"x{m.number_of_doses}")
    return " ".join(parts) or None


def _medication_administration(m: MedicationAdministration) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "MedicationAdministration", "id": m.administration_id}
    if m.provenance:
        out["identifier"] = _identifier(m.provenance)
    out["status"] = m.status
    out["medicationCodeableConcept"] = _concept(m.medication)
    out["subject"] = _ref("Patient", m.patient_id)
    if m.encounter_id:
        out["context"] = _ref("Encounter", m.encounter_id)
    if m.end is not None:
        out["effectivePeriod"] = _period(m.start, m.end)
    else:
        out["effectiveDateTime"] = _instant(m.start)
    if m.request_id:
        out["request"] = _ref("MedicationRequest", m.request_id)
    dosage: dict[str, Any] = {}
    if m.route:
        dosage["route"] = _concept(m.route)
    if m.dose:
        dosage["dose"] = _quantity(m.dose)
    if m.rate:
        dosage["rateQuantity"] = _quantity(m.rate)
    if dosage:
        out["dosage"] = dosage
    return out


def _event_extension(e: Event) -> list[dict[str, Any]]:
    if not e.data:
        return []
    data = orjson.dumps(dict(e.data), option=orjson.OPT_SORT_KEYS, default=str).decode()
    return [{"url": EVENT_DATA_EXTENSION, "valueString": data}]


def _event(e: Event) -> dict[str, Any]:
    code = _concept(Coding(system=EVENT_CODE_SYSTEM, code=e.code), text=e.message)
    ident = [{"system": "urn:medtwin:event-id", "value": e.event_id}, *_identifier(e.provenance)]
    if e.kind == "alert" and e.patient_id:
        out: dict[str, Any] = {"resourceType": "Flag", "id": e.event_id}
        ext = _event_extension(e)
        if ext:
            out["extension"] = ext
        out["identifier"] = ident
        out["status"] = "inactive" if e.status == "resolved" else "active"
        out["category"] = [{"coding": [{"system": _FLAG_CATEGORY, "code": "clinical", "display": "Clinical"}]}]
        out["code"] = code
        out["subject"] = _ref("Patient", e.patient_id)
        out["period"] = {"start": _instant(e.time)}
        if e.source:
            out["author"] = {"display": e.source}
        return out
    out = {"resourceType": "DetectedIssue", "id": e.event_id}
    ext = _event_extension(e)
    if ext:
        out["extension"] = ext
    out["identifier"] = ident
    out["status"] = "final" if e.kind == "derived" else "preliminary"
    if e.status == "resolved":
        out["status"] = "cancelled" if e.kind == "recommendation" else "final"
    out["code"] = _concept(Coding(system=EVENT_CODE_SYSTEM, code=f"{e.kind}:{e.code}"), text=e.kind)
    severity = _SEVERITY.get((e.severity or "").lower())
    if severity:
        out["severity"] = severity
    if e.patient_id:
        out["patient"] = _ref("Patient", e.patient_id)
    out["identifiedDateTime"] = _instant(e.time)
    if e.source:
        out["author"] = {"display": e.source}
    out["detail"] = e.message
    return out


def to_fhir(record: Record) -> dict[str, Any]:
    """The FHIR R4 JSON resource (a dict) for *record*.

    Raises
    ------
    ValidationError
        When *record* is not a medtwin record type.
    """
    if isinstance(record, Observation):
        return _observation(record)
    if isinstance(record, Patient):
        return _patient(record)
    if isinstance(record, Encounter):
        return _encounter(record)
    if isinstance(record, Condition):
        return _condition(record)
    if isinstance(record, MedicationRequest):
        return _medication_request(record)
    if isinstance(record, MedicationAdministration):
        return _medication_administration(record)
    if isinstance(record, Event):
        return _event(record)
    raise ValidationError(f"to_fhir: {type(record).__name__} is not a medtwin record")


def _collect(source: PatientRecordSource | Sequence[Record], patient_id: str) -> list[Record]:
    if isinstance(source, Sequence):
        out: list[Record] = []
        for r in source:
            pid = r.patient_id
            if pid == patient_id:
                out.append(r)
        return out
    patient = source.patient(patient_id)
    if patient is None:
        raise ValidationError(f"patient_bundle: no patient with id {patient_id!r}")
    return [
        patient,
        *source.encounters(patient_id),
        *source.conditions(patient_id),
        *source.observations(patient_id),
        *source.medication_requests(patient_id),
        *source.medication_administrations(patient_id),
        *source.events(patient_id),
    ]


def patient_bundle(
    source: PatientRecordSource | Sequence[Record],
    patient_id: str,
    *,
    base_url: str = "https://medtwin.invalid/fhir",
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """A FHIR R4 ``collection`` Bundle of everything known about *patient_id*: its records as FHIR, and the FHIR
    resources kept whole for it (those of its compartment medtwin does not map, and the resources outside any
    compartment that they refer to: Organization, Practitioner, ...), as Patient/$everything would.

    Parameters
    ----------
    source
        A store (anything with the :class:`PatientRecordSource` methods) or a sequence of records.
    patient_id
        The patient whose record is exported.
    base_url
        Base of the entries' ``fullUrl`` (relative references inside resolve against it).
    timestamp
        The bundle's timestamp (default: now).
    """
    records = _collect(source, patient_id)
    if not any(isinstance(r, Patient) for r in records):
        raise ValidationError(f"patient_bundle: no Patient record with id {patient_id!r}")
    resources = [to_fhir(r) for r in records]
    if not isinstance(source, Sequence):  # the resources kept whole (types medtwin does not map), as they came
        resources.extend(orjson.loads(body) for body in source.kept_resources(patient_id))
    entries = [
        {"fullUrl": f"{base_url.rstrip('/')}/{res['resourceType']}/{res['id']}", "resource": res} for res in resources
    ]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": _instant(timestamp or datetime.now(UTC)),
        "entry": entries,
    }
