"""Records to and from the JSON ``body`` column of the store (orjson; exact round trip of every field)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, TypeVar

import orjson

from medtwin.errors import ValidationError
from medtwin.records import (
    Coding,
    Condition,
    Encounter,
    EncounterLocation,
    Event,
    FrozenMap,
    Identifier,
    MedicationAdministration,
    MedicationRequest,
    Observation,
    ObservationComponent,
    ObservationValue,
    Patient,
    PatientIdentity,
    Provenance,
    Quantity,
    Record,
)

__all__ = ["decode", "decode_identity", "encode", "encode_identity"]

R = TypeVar("R", bound=Record)


def _default(obj: object) -> object:
    if isinstance(obj, FrozenMap):
        return dict(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"cannot store {type(obj).__name__} {obj!r} in a record body")


def _non_finite(value: object) -> bool:
    """True when *value* holds an infinite or NaN float (JSON would silently turn it into null)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Quantity):
        return not math.isfinite(value.value)
    if isinstance(value, Mapping):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


def _check_finite(record: Record) -> None:
    parts: tuple[object, ...]
    if isinstance(record, Observation) and not record.components:  # the streaming hot path: one value
        value = record.value
        if isinstance(value, Quantity) and not math.isfinite(value.value):
            raise ValidationError("Observation: an infinite or NaN number cannot be stored")
        return
    if isinstance(record, Observation):
        parts = (record.value, *(c.value for c in record.components))
    elif isinstance(record, MedicationRequest | MedicationAdministration):
        parts = (record.dose, record.rate)
    elif isinstance(record, Event):
        parts = (record.data,)
    else:
        return
    if any(_non_finite(p) for p in parts):
        raise ValidationError(f"{type(record).__name__}: an infinite or NaN number cannot be stored")


def _coding_doc(c: Any) -> Any:
    return {"system": c.system, "code": c.code, "display": c.display} if type(c) is Coding else c


def _value_doc(v: Any) -> Any:
    kind = type(v)
    if kind is Quantity:
        return {"value": v.value, "unit": v.unit}
    return _coding_doc(v) if kind is Coding else v


def _component_doc(c: Any) -> Any:
    return {"code": _coding_doc(c.code), "value": _value_doc(c.value)} if type(c) is ObservationComponent else c


def _observation_doc(o: Observation) -> dict[str, Any]:
    """*o* as the dict whose JSON is byte for byte orjson's serialisation of the dataclass, built ~3x faster.

    orjson serialises each nested slotted dataclass (Coding, Quantity, Provenance) far slower than a dict; the
    streaming path encodes eight observations per message. Used only while the field lists below are those
    of the record classes (:data:`_FAST_OBSERVATION`), so a new field can never be dropped silently.
    """
    p = o.provenance
    return {
        "patient_id": o.patient_id,
        "code": _coding_doc(o.code),
        "effective": o.effective,
        "value": _value_doc(o.value),
        "components": [_component_doc(c) for c in o.components],
        "status": o.status,
        "category": o.category,
        "device": o.device,
        "encounter_id": o.encounter_id,
        "observation_id": o.observation_id,
        "alt_codes": [_coding_doc(c) for c in o.alt_codes],
        "derived_from": o.derived_from,
        "provenance": {"source_system": p.source_system, "source_id": p.source_id} if type(p) is Provenance else p,
    }


def _field_names(kind: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


_FAST_OBSERVATION = (
    _field_names(Observation)
    == (
        "patient_id",
        "code",
        "effective",
        "value",
        "components",
        "status",
        "category",
        "device",
        "encounter_id",
        "observation_id",
        "alt_codes",
        "derived_from",
        "provenance",
    )
    and _field_names(Coding) == ("system", "code", "display")
    and _field_names(Quantity) == ("value", "unit")
    and _field_names(ObservationComponent) == ("code", "value")
    and _field_names(Provenance) == ("source_system", "source_id")
)
"""Whether :func:`_observation_doc` knows every field (else observations take the generic dataclass path)."""


def encode(record: Record) -> str:
    """The JSON body of *record* (its identity part is excluded for patients: see :func:`encode_identity`)."""
    _check_finite(record)
    if type(record) is Observation and _FAST_OBSERVATION:
        try:
            return orjson.dumps(
                _observation_doc(record), default=_default, option=orjson.OPT_PASSTHROUGH_SUBCLASS
            ).decode()
        except orjson.JSONEncodeError as exc:
            raise ValidationError(f"Observation: cannot be stored as JSON ({exc})") from exc
    if isinstance(record, Patient) and record.identity is not None:
        record = Patient(
            patient_id=record.patient_id,
            gender=record.gender,
            birth_date=record.birth_date,
            deceased=record.deceased,
            provenance=record.provenance,
        )
    try:
        return orjson.dumps(record, default=_default, option=orjson.OPT_PASSTHROUGH_SUBCLASS).decode()
    except orjson.JSONEncodeError as exc:
        raise ValidationError(f"{type(record).__name__}: cannot be stored as JSON ({exc})") from exc


def encode_identity(identity: PatientIdentity) -> str:
    """The JSON body of a patient's identity part."""
    return orjson.dumps(identity).decode()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _coding(d: Mapping[str, Any] | None) -> Coding | None:
    return None if d is None else Coding(system=d["system"], code=d["code"], display=d.get("display"))


def _req_coding(d: Mapping[str, Any]) -> Coding:
    return Coding(system=d["system"], code=d["code"], display=d.get("display"))


def _quantity(d: Mapping[str, Any] | None) -> Quantity | None:
    return None if d is None else Quantity(value=d["value"], unit=d["unit"])


def _provenance(d: Mapping[str, Any] | None) -> Provenance | None:
    return None if d is None else Provenance(source_system=d["source_system"], source_id=d["source_id"])


def _value(v: Any) -> ObservationValue:
    if v is None or isinstance(v, str):
        return v
    if "unit" in v:
        return _quantity(v)
    return _coding(v)


def decode_identity(body: str | bytes) -> PatientIdentity:
    """The :class:`PatientIdentity` stored as *body*."""
    d = orjson.loads(body)
    return PatientIdentity(
        identifiers=tuple(
            Identifier(system=i["system"], value=i["value"], type_code=i.get("type_code")) for i in d["identifiers"]
        ),
        family=d["family"],
        given=tuple(d["given"]),
        telecom=tuple(d["telecom"]),
        address=d["address"],
    )


def _patient(d: dict[str, Any]) -> Patient:
    return Patient(
        patient_id=d["patient_id"],
        gender=d["gender"],
        birth_date=None if d["birth_date"] is None else date.fromisoformat(d["birth_date"]),
        deceased=_dt(d["deceased"]),
        provenance=_provenance(d["provenance"]),
    )


def _observation(d: dict[str, Any]) -> Observation:
    return Observation(
        patient_id=d["patient_id"],
        code=_req_coding(d["code"]),
        effective=datetime.fromisoformat(d["effective"]),
        value=_value(d["value"]),
        components=tuple(
            ObservationComponent(code=_req_coding(c["code"]), value=_value(c["value"])) for c in d["components"]
        ),
        status=d["status"],
        category=d["category"],
        device=d["device"],
        encounter_id=d["encounter_id"],
        observation_id=d["observation_id"],
        alt_codes=tuple(_req_coding(c) for c in d["alt_codes"]),
        derived_from=tuple(d["derived_from"]),
        provenance=_provenance(d["provenance"]),
    )


def _encounter(d: dict[str, Any]) -> Encounter:
    return Encounter(
        encounter_id=d["encounter_id"],
        patient_id=d["patient_id"],
        status=d["status"],
        class_code=d["class_code"],
        start=datetime.fromisoformat(d["start"]),
        end=_dt(d["end"]),
        locations=tuple(
            EncounterLocation(
                unit=loc["unit"], start=datetime.fromisoformat(loc["start"]), end=_dt(loc["end"]), bed=loc["bed"]
            )
            for loc in d["locations"]
        ),
        type=_coding(d["type"]),
        reason=_coding(d["reason"]),
        disposition=_coding(d.get("disposition")),  # absent in bodies written before the field existed
        provenance=_provenance(d["provenance"]),
    )


def _condition(d: dict[str, Any]) -> Condition:
    return Condition(
        condition_id=d["condition_id"],
        patient_id=d["patient_id"],
        code=_req_coding(d["code"]),
        clinical_status=d["clinical_status"],
        onset=_dt(d["onset"]),
        abatement=_dt(d["abatement"]),
        recorded=_dt(d["recorded"]),
        encounter_id=d["encounter_id"],
        provenance=_provenance(d["provenance"]),
    )


def _medication_request(d: dict[str, Any]) -> MedicationRequest:
    return MedicationRequest(
        request_id=d["request_id"],
        patient_id=d["patient_id"],
        medication=_req_coding(d["medication"]),
        intent=d["intent"],
        status=d["status"],
        authored=_dt(d["authored"]),
        dose=_quantity(d["dose"]),
        route=_coding(d["route"]),
        interval_h=d["interval_h"],
        infusion_duration_h=d["infusion_duration_h"],
        rate=_quantity(d["rate"]),
        start=_dt(d["start"]),
        number_of_doses=d["number_of_doses"],
        note=d["note"],
        encounter_id=d["encounter_id"],
        provenance=_provenance(d["provenance"]),
    )


def _medication_administration(d: dict[str, Any]) -> MedicationAdministration:
    return MedicationAdministration(
        administration_id=d["administration_id"],
        patient_id=d["patient_id"],
        medication=_req_coding(d["medication"]),
        start=datetime.fromisoformat(d["start"]),
        end=_dt(d["end"]),
        dose=_quantity(d["dose"]),
        route=_coding(d["route"]),
        rate=_quantity(d["rate"]),
        status=d["status"],
        encounter_id=d["encounter_id"],
        request_id=d["request_id"],
        provenance=_provenance(d["provenance"]),
    )


def _event(d: dict[str, Any]) -> Event:
    return Event(
        kind=d["kind"],
        code=d["code"],
        time=datetime.fromisoformat(d["time"]),
        message=d["message"],
        patient_id=d["patient_id"],
        severity=d["severity"],
        data=d["data"],
        status=d["status"],
        source=d["source"],
        event_id=d["event_id"],
        provenance=_provenance(d["provenance"]),
    )


_DECODERS: dict[type[Any], Any] = {
    Patient: _patient,
    Observation: _observation,
    Encounter: _encounter,
    Condition: _condition,
    MedicationRequest: _medication_request,
    MedicationAdministration: _medication_administration,
    Event: _event,
}


def decode(kind: type[R], body: str | bytes) -> R:
    """The record of type *kind* stored as *body*."""
    record: R = _DECODERS[kind](orjson.loads(body))
    return record
