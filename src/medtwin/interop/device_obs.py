"""Device readings (wearables, CGM) as they arrive over MQTT: payload formats, the stored envelope, and the records.

A reading is published on a topic naming the device (``devices/<device id>/obs``) and is either

* a FHIR R4 Observation (``resourceType: Observation``: ``code.coding[0]``, ``valueQuantity`` with ``value`` and
  ``code`` or ``unit``, ``effectiveDateTime`` with a time zone, optionally ``device.reference`` ``Device/<id>`` and
  ``id``), or
* the compact JSON documented in docs/devices.md::

      {"device": "cgm-0001", "code": "99504-3", "value": 112, "unit": "mg/dL", "time": "2026-12-07T08:00:00Z"}

  with optional ``system`` (default LOINC) and ``id`` (the device's own reading id).

The device must be registered and bound to a patient (:mod:`medtwin.interop.devices`); the listener then stores an
envelope (:data:`DEVICE_CONTENT_TYPE`) holding the topic, the device, the patient it was bound to at receipt and
the payload as received, so mapping the entry again later (the twin runtime's worker) gives the same records even
if the device has since been bound to someone else. Each reading is keyed by the device's reading id, else by its
code and time: a redelivered message (no PUBACK before a crash) is a duplicate and is stored once.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from medtwin import codes
from medtwin.errors import UnitError, ValidationError
from medtwin.records import Coding, Observation, Provenance, Quantity, utc

__all__ = [
    "DEVICE_CONTENT_TYPE",
    "DevicePayloadError",
    "DeviceReading",
    "device_from_topic",
    "envelope",
    "parse_reading",
    "reading_observation",
    "stored_device_records",
]

DEVICE_CONTENT_TYPE = "application/vnd.medtwin.device-reading+json"
_SYSTEMS = {"loinc": codes.LOINC, "ln": codes.LOINC, "mdc": codes.MDC, "snomed": codes.SNOMED}
_MAX_KEY = 200
_GLUCOSE_CODES = frozenset(c.code for c in (codes.GLUCOSE_BLOOD, codes.GLUCOSE_SERUM, codes.GLUCOSE_INTERSTITIAL))
_VITAL_CODES = frozenset(c.code for c in codes.VITAL_SIGNS)


class DevicePayloadError(ValidationError):
    """A device payload that cannot be used (the reason names the field); it goes to the dead-letter log."""


@dataclass(frozen=True, slots=True)
class DeviceReading:
    """One reading of a device: what (*code*), *value* in *unit*, when (*time*, UTC) and its idempotency *key*."""

    device_id: str
    code: Coding
    value: float
    unit: str
    time: datetime
    key: str


def device_from_topic(topic: str) -> str | None:
    """The device id in a topic ``[prefix/]devices/<id>/...`` (None for a topic of another shape)."""
    parts = topic.split("/")
    for level, name in enumerate(parts[:-1]):
        if name == "devices" and parts[level + 1]:
            return parts[level + 1]
    return None


_TIMES: dict[str, datetime] = {}  # times already parsed: a group of readings from many devices shares a few
_TIMES_KEPT = 4096
_CODINGS: dict[tuple[Any, str], Coding] = {}  # (system as sent, code) of the compact form -> its Coding


def _time(text: Any, where: str) -> datetime:
    if not isinstance(text, str):
        raise DevicePayloadError(f"{where}: a time is required (ISO 8601 with a time zone), got {text!r}")
    cached = _TIMES.get(text)
    if cached is not None:
        return cached
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DevicePayloadError(f"{where}: {text[:60]!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise DevicePayloadError(f"{where}: {text[:60]!r} has no time zone (a device clock must say which)")
    value = utc(value)
    if len(_TIMES) >= _TIMES_KEPT:
        _TIMES.clear()
    _TIMES[text] = value
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DevicePayloadError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _system(name: Any) -> str:
    if name is None:
        return codes.LOINC
    text = str(name)
    return _SYSTEMS.get(text.lower(), text)


def _fhir_reading(doc: dict[str, Any]) -> tuple[str | None, Coding, float, str, datetime, str]:
    coding = (doc.get("code") or {}).get("coding") or []
    if not coding or not isinstance(coding[0], dict) or not coding[0].get("code"):
        raise DevicePayloadError("Observation.code.coding[0].code is required")
    code = Coding(system=str(coding[0].get("system") or codes.LOINC), code=str(coding[0]["code"]),
                  display=coding[0].get("display"))  # fmt: skip
    quantity = doc.get("valueQuantity")
    if not isinstance(quantity, dict):
        raise DevicePayloadError("Observation.valueQuantity is required (a numeric reading)")
    value = _number(quantity.get("value"), "Observation.valueQuantity.value")
    unit = str(quantity.get("code") or quantity.get("unit") or "")
    when = _time(doc.get("effectiveDateTime"), "Observation.effectiveDateTime")
    reference = str((doc.get("device") or {}).get("reference") or "")
    device = reference.removeprefix("Device/") if reference else None
    key = str(doc["id"]) if doc.get("id") else ""
    return device, code, value, unit, when, key


_COMPACT_FIELDS = frozenset(("device", "code", "system", "value", "unit", "time", "id"))


def _compact_reading(doc: dict[str, Any]) -> tuple[str | None, Coding, float, str, datetime, str]:
    if not _COMPACT_FIELDS.issuperset(doc):
        unknown = sorted(set(doc) - _COMPACT_FIELDS)
        raise DevicePayloadError(f"unknown fields {unknown} (known: device, code, system, value, unit, time, id)")
    if not doc.get("code"):
        raise DevicePayloadError("'code' is required (a LOINC code unless 'system' says otherwise)")
    system, code_text = doc.get("system"), str(doc["code"])
    code = _CODINGS.get((system, code_text)) if isinstance(system, str | None) else None
    if code is None:
        code = Coding(system=_system(system), code=code_text)
        if isinstance(system, str | None) and len(_CODINGS) < _TIMES_KEPT:
            _CODINGS[(system, code_text)] = code
    value = _number(doc.get("value"), "'value'")
    when = _time(doc.get("time"), "'time'")
    device = str(doc["device"]) if doc.get("device") else None
    return device, code, value, str(doc.get("unit") or ""), when, str(doc.get("id") or "")


def parse_reading(payload: bytes, topic: str) -> DeviceReading:
    """The reading in *payload* (FHIR Observation or compact JSON) published on *topic*.

    The value is converted to medtwin's canonical unit for the code when it has one (glucose in mmol/L to mg/dL).

    Raises
    ------
    DevicePayloadError
        Not JSON, a field missing or invalid, a unit that does not convert, or a device that differs from the
        topic's.
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DevicePayloadError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise DevicePayloadError(f"expected a JSON object, got {type(doc).__name__}")
    topic_device = device_from_topic(topic)
    if doc.get("resourceType") == "Observation":
        device, code, value, unit, when, key = _fhir_reading(doc)
    elif "resourceType" in doc:
        raise DevicePayloadError(f"resourceType {str(doc['resourceType'])[:40]!r}: only Observation is read")
    else:
        device, code, value, unit, when, key = _compact_reading(doc)
    if device and topic_device and device != topic_device:
        raise DevicePayloadError(f"device {device!r} in the payload differs from the topic's {topic_device!r}")
    device = device or topic_device
    if not device:
        raise DevicePayloadError(f"no device: topic {topic[:80]!r} is not devices/<id>/... and the payload names none")
    code = codes.normalise_to_loinc(code)
    target = codes.canonical_unit(code)
    if target is not None and unit != target:
        if not unit:
            raise DevicePayloadError(f"code {code.code} needs a unit (expected {target!r})")
        try:
            value = codes.convert(value, unit, target, analyte="glucose" if code.code in _GLUCOSE_CODES else None)
        except UnitError as exc:
            raise DevicePayloadError(f"unit: {exc}") from None
        unit = target
    key = key or f"{code.code}@{when.isoformat()}"
    if len(key) > _MAX_KEY:
        raise DevicePayloadError(f"reading id of {len(key)} characters (at most {_MAX_KEY})")
    return DeviceReading(device, code, value, unit or "1", when, key)


def envelope(reading: DeviceReading, patient_id: str, topic: str, payload: bytes) -> bytes:
    """The raw-log entry of a reading: topic, device, bound patient and the payload as received (UTF-8 text)."""
    return orjson.dumps(
        {"topic": topic, "device": reading.device_id, "patient_id": patient_id, "payload": payload.decode()}
    )


def reading_observation(reading: DeviceReading, patient_id: str) -> Observation:
    """The Observation of *reading* for *patient_id*: id from the device and key (a redelivery maps to it again)."""
    if not patient_id:
        raise DevicePayloadError(f"reading {reading.key[:80]!r} of {reading.device_id!r}: no patient id")
    # prevalidated parts: the device id and key are non-empty (parse_reading), the value a finite float (_number
    # or the unit conversion) and the unit a non-empty string
    provenance = Provenance.prevalidated(f"device:{reading.device_id}", reading.key)
    digest = hashlib.blake2b(f"{reading.device_id}|{reading.key}".encode(), digest_size=10).hexdigest()
    millis = max(0, int(reading.time.timestamp() * 1000))
    # prevalidated: what the constructor checks holds by construction (ids non-empty, the time aware and in UTC
    # from _time, the value a Quantity); it is the listener's hot path
    return Observation.prevalidated(
        observation_id=f"{millis:012x}{digest}",
        patient_id=patient_id,
        code=reading.code,
        effective=reading.time,
        value=Quantity.prevalidated(float(reading.value), reading.unit),
        status="final",
        category="vital-signs" if reading.code.code in _VITAL_CODES else None,
        device=f"Device/{reading.device_id}",
        encounter_id=None,
        alt_codes=(),
        provenance=provenance,
    )


def stored_device_records(payload: bytes | Mapping[str, Any]) -> list[Observation]:
    """The records of a stored envelope (:func:`envelope`; its bytes or its parsed JSON), mapped again exactly as the
    listener mapped them."""
    doc = orjson.loads(payload) if isinstance(payload, bytes) else payload
    reading = parse_reading(str(doc["payload"]).encode(), str(doc["topic"]))
    return [reading_observation(reading, str(doc["patient_id"]))]
