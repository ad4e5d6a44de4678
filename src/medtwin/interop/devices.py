"""Registered devices and the patient each is bound to, kept as FHIR R4 Device resources in the store.

A device is stored as a Device resource (``id`` the device id, ``type.text`` its kind, ``patient`` the reference
of the patient it is bound to, ``status`` active) through the store's kept FHIR resources, so it is exported with
the patient's record. Binding a device again to another patient replaces the resource; the earlier version stays
in the store's version history. The MQTT listener accepts readings only from registered, bound, active devices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from medtwin.errors import ValidationError
from medtwin.store import FhirResource, Store
from medtwin.store import schema as store_schema

__all__ = ["DeviceBinding", "bound_patient", "bound_patients", "list_devices", "register_device"]

_DEVICE_ID_CHARS = 64


@dataclass(frozen=True, slots=True)
class DeviceBinding:
    """A registered device: its id, kind (``cgm``, ``pulse-oximeter``...), the bound patient and its status."""

    device_id: str
    kind: str
    patient_id: str | None
    status: str


def _check_id(device_id: str) -> None:
    ok = device_id and len(device_id) <= _DEVICE_ID_CHARS and all(c.isalnum() or c in "-_." for c in device_id)
    if not ok:
        raise ValidationError(
            f"device id {device_id[:80]!r}: 1-{_DEVICE_ID_CHARS} letters, digits, '-', '_' or '.' (it is a topic level)"
        )


def register_device(store: Store, device_id: str, patient_id: str, *, kind: str = "cgm") -> DeviceBinding:
    """Register *device_id* (of *kind*) and bind it to *patient_id* (a stored patient); returns the binding."""
    _check_id(device_id)
    if store.patient(patient_id) is None:
        raise ValidationError(f"patient {patient_id!r} is not stored: bind devices to stored patients")
    body = {
        "resourceType": "Device",
        "id": device_id,
        "identifier": [{"system": "urn:medtwin:device", "value": device_id}],
        "status": "active",
        "type": {"text": kind},
        "patient": {"reference": f"Patient/{patient_id}"},
    }
    store.write([FhirResource(resource_type="Device", resource_id=device_id, body=json.dumps(body),
                              patient_id=patient_id)])  # fmt: skip
    return DeviceBinding(device_id, kind, patient_id, "active")


def _binding(body: str) -> DeviceBinding:
    doc = json.loads(body)
    reference = str((doc.get("patient") or {}).get("reference") or "")
    return DeviceBinding(
        device_id=str(doc["id"]),
        kind=str((doc.get("type") or {}).get("text") or ""),
        patient_id=reference.removeprefix("Patient/") or None,
        status=str(doc.get("status") or "unknown"),
    )


def list_devices(store: Store) -> list[DeviceBinding]:
    """Every registered device, by id."""
    t = store_schema.fhir_resources
    stmt = select(t.c.body).where(t.c.resource_type == "Device").order_by(t.c.resource_id)
    with store._reading() as conn:
        bodies = list(conn.execute(stmt).scalars())
    opened = (store.keys.open_text(b) for b in bodies)  # kept resources are sealed at rest (medtwin.crypto)
    return [_binding(body) for body in opened if body is not None]


def bound_patient(store: Store, device_id: str) -> str | None:
    """The patient *device_id* is bound to (None: not registered, unbound or not active)."""
    t = store_schema.fhir_resources
    stmt = select(t.c.body).where(t.c.resource_type == "Device", t.c.resource_id == device_id)
    with store._reading() as conn:
        sealed = conn.execute(stmt).scalar()
    body = store.keys.open_text(sealed) if sealed is not None else None  # None too once the patient's key is erased
    if body is None:
        return None
    binding = _binding(body)
    return binding.patient_id if binding.status == "active" else None


def bound_patients(store: Store, device_ids: Sequence[str]) -> dict[str, str | None]:
    """:func:`bound_patient` of each of *device_ids*, read in one query per 500 devices."""
    t = store_schema.fhir_resources
    out: dict[str, str | None] = dict.fromkeys(device_ids)
    ids = list(out)
    for start in range(0, len(ids), 500):
        stmt = select(t.c.resource_id, t.c.body).where(
            t.c.resource_type == "Device", t.c.resource_id.in_(ids[start : start + 500])
        )
        with store._reading() as conn:
            found = conn.execute(stmt).all()
        bodies = store.keys.open_texts([sealed for _, sealed in found])  # keys fetched together
        for (device_id, _), body in zip(found, bodies, strict=True):
            if body is not None:  # None once the patient's key is erased
                binding = _binding(body)
                out[device_id] = binding.patient_id if binding.status == "active" else None
    return out
