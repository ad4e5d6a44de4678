"""Pharmacy messages: RAS^O17 administrations (ORC + RXA + RXR) and RDE^O11 orders (ORC + RXE + TQ1).

HL7 v2.5.1 chapter 4A. What is read:

- RXA (administration): RXA-3 start and RXA-4 end of the administration (an infusion lasts from one to the other),
  RXA-5 the administered code (CWE ``code^text^system``: SNOMED CT ``SCT``, RxNorm ``RXN``...), RXA-6 amount and
  RXA-7 units (a mass unit such as ``mg`` or ``g``), RXA-20 completion status (``CP`` complete, ``PA`` partial,
  ``RE`` refused and ``NA`` not administered are ``not-done``) and RXA-21 action (``D`` delete:
  ``entered-in-error``). The order it fulfils is ORC-2 (placer) or ORC-3 (filler).
- RXE (order): RXE-2 give code, RXE-3 amount and RXE-5 units, RXE-23/24 the give rate (an infusion's duration is
  amount / rate); TQ1-3 repeat pattern ``Q<n>H`` (the interval), TQ1-7 start. ORC-1 ``CA``/``DC`` orders are
  ``cancelled``/``stopped``; ORC-2 is the request id.

Each record's id comes from the message's key and the segment's position, as for OBX results, so a resent message
maps to the same ids.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import datetime

from medtwin import codes
from medtwin.interop.hl7v2.obx import coding_of
from medtwin.interop.hl7v2.parser import Hl7MappingError, Segment
from medtwin.records import Coding, MedicationAdministration, MedicationRequest, Provenance, Quantity

__all__ = ["PHARMACY_SEGMENTS", "administrations", "orders"]

PHARMACY_SEGMENTS = frozenset({"RXA", "RXR", "RXE", "RXO", "RXC", "RXD", "RXG", "CDM"})
_NOT_DONE = {"RE", "NA"}
_REPEAT = re.compile(r"^Q(\d+(?:\.\d+)?)H$", re.IGNORECASE)
_IV = Coding(system=codes.SNOMED, code="47625008", display="Intravenous route")
_ROUTES = {"IV": _IV}


def _amount(value: str, unit_comps: list[str], where: str) -> Quantity:
    try:
        number = float(value)
    except ValueError:
        raise Hl7MappingError(f"{where}: amount {value[:40]!r} is not a number", error_code="102",
                              location=where) from None  # fmt: skip
    if number < 0 or number != number:
        raise Hl7MappingError(f"{where}: amount {value[:40]!r} must be >= 0", error_code="102", location=where)
    unit = unit_comps[0] if unit_comps and unit_comps[0] else ""
    if not unit:
        raise Hl7MappingError(f"{where}: the amount has no unit", error_code="101", location=where)
    return Quantity(value=number, unit=codes.to_ucum(unit) or unit)


def _order_id(orc: Segment | None) -> str | None:
    if orc is None:
        return None
    return orc.field(2) or orc.field(3) or None


def administrations(
    segments: list[Segment],
    patient_id: str,
    when: Callable[[str, str], datetime],
    provenance: Callable[[str], Provenance],
    stable_id: Callable[[Provenance, datetime], str],
) -> list[MedicationAdministration]:
    """The MedicationAdministrations of a RAS^O17's segments (ORC groups with RXA and optional RXR)."""
    out: list[MedicationAdministration] = []
    orc: Segment | None = None
    n = 0
    for seg in segments:
        if seg.name == "ORC":
            orc = seg
            continue
        if seg.name == "RXR" and out:  # the route of the administration before it
            route = seg.components(1)
            if route and route[0]:
                coded = _ROUTES.get(route[0].upper()) or coding_of(route, "RXR^1")
                out[-1] = dataclasses.replace(out[-1], route=coded)
            continue
        if seg.name != "RXA":
            continue
        n += 1
        where = f"RXA[{n}]"
        start = when(seg.field(3), f"{where}^3")
        end = when(seg.field(4), f"{where}^4") if seg.field(4) else None
        if end is not None and end <= start:
            end = None
        medication = coding_of(seg.components(5), f"{where}^5")
        dose = _amount(seg.field(6), seg.components(7), f"{where}^6")
        completion = seg.field(20).upper()
        status = "not-done" if completion in _NOT_DONE else "in-progress" if completion == "PA" else "completed"
        if seg.field(21).upper() == "D":
            status = "entered-in-error"
        prov = provenance(f"RXA{n}")
        out.append(MedicationAdministration(
            administration_id=stable_id(prov, start), patient_id=patient_id, medication=medication, start=start,
            end=end, dose=dose, status=status, request_id=_order_id(orc), provenance=prov,
        ))  # fmt: skip
    return out


def orders(
    segments: list[Segment],
    patient_id: str,
    when: Callable[[str, str], datetime],
    provenance: Callable[[str], Provenance],
) -> list[MedicationRequest]:
    """The MedicationRequests (intent ``order``) of a RDE^O11's segments (ORC groups with RXE and TQ1)."""
    out: list[MedicationRequest] = []
    orc: Segment | None = None
    interval: float | None = None
    start: datetime | None = None
    n = 0
    for seg in segments:
        if seg.name == "ORC":
            orc, interval, start = seg, None, None
            continue
        if seg.name == "TQ1":
            match = _REPEAT.match(seg.field(3))
            interval = float(match.group(1)) if match else None
            start = when(seg.field(7), "TQ1^7") if seg.field(7) else None
            if out and out[-1].interval_h is None:
                out[-1] = dataclasses.replace(out[-1], interval_h=interval, start=start)
            continue
        if seg.name != "RXE":
            continue
        n += 1
        where = f"RXE[{n}]"
        medication = coding_of(seg.components(2), f"{where}^2")
        dose = _amount(seg.field(3), seg.components(5), f"{where}^3")
        rate = None
        duration = None
        if seg.field(23):
            rate = _amount(seg.field(23), seg.components(24), f"{where}^23")
            try:
                per_h = codes.convert(rate.value, rate.unit, "mg/h")
                duration = codes.convert(dose.value, dose.unit, "mg") / per_h if per_h > 0 else None
            except Exception:  # a rate in other units: kept as given, the duration unknown
                duration = None
        control = orc.field(1).upper() if orc is not None else ""
        status = {"CA": "cancelled", "DC": "stopped", "HD": "on-hold"}.get(control, "active")
        request_id = _order_id(orc) or f"{provenance(f'RXE{n}').source_id}"
        authored = when(orc.field(9), "ORC^9") if orc is not None and orc.field(9) else start
        out.append(MedicationRequest(
            request_id=request_id, patient_id=patient_id, medication=medication, intent="order", status=status,
            authored=authored, dose=dose, route=_IV if rate is not None else None, interval_h=interval,
            infusion_duration_h=duration, rate=rate, start=start, provenance=provenance(f"RXE{n}"),
        ))  # fmt: skip
    return out
