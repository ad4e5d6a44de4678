"""OBX results: coding systems (HL7 table 0396), MDC units, and one OBX's concept and numeric value.

Shared by the general mapper and its plain-ORU shortcut (:mod:`medtwin.interop.hl7v2.mapping`). Vital signs arrive
coded in LOINC (``LN``) or in ISO/IEEE 11073-10101 MDC codes (IHE PCD-01); MDC codes are normalised to the LOINC
concept, and values are converted to medtwin's canonical unit for the concept with :func:`medtwin.codes.convert`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from medtwin import codes
from medtwin.errors import UnitError
from medtwin.interop.hl7v2.parser import Hl7MappingError, Segment
from medtwin.records import Coding, Quantity

__all__ = [
    "CODING_SYSTEMS",
    "MDC_UNITS",
    "OBX_STATUS",
    "UNKNOWN_SYSTEM",
    "coding_of",
    "coding_system",
    "concept_of",
    "quantity_of",
    "unit_of",
]

# HL7 table 0396 coding-system names -> URIs.
CODING_SYSTEMS: dict[str, str] = {
    "LN": codes.LOINC,
    "LOINC": codes.LOINC,
    "SCT": codes.SNOMED,
    "SNM": codes.SNOMED,
    "SNOMED": codes.SNOMED,
    "SNOMED-CT": codes.SNOMED,
    "MDC": codes.MDC,
    "UCUM": codes.UCUM,
}

# ISO/IEEE 11073-10101 dimension codes (partition 4) used by IHE PCD-01 -> UCUM.
MDC_UNITS: dict[str, str] = {
    "264864": "/min",  # MDC_DIM_BEAT_PER_MIN
    "264928": "/min",  # MDC_DIM_RESP_PER_MIN
    "262688": "%",  # MDC_DIM_PERCENT
    "266016": "mm[Hg]",  # MDC_DIM_MMHG
    "268192": "Cel",  # MDC_DIM_DEGC
    "266560": "[degF]",  # MDC_DIM_FAHR
    "265216": "L/min",  # MDC_DIM_L_PER_MIN
    "262656": "1",  # MDC_DIM_DIMLESS
}

# OBX-11 result status -> Observation.status
OBX_STATUS = {"F": "final", "C": "corrected", "R": "preliminary", "P": "preliminary", "W": "entered-in-error"}


UNKNOWN_SYSTEM = "urn:hl7v2:table-0396:unknown"
# a name of HL7 table 0396 (LN, SCT, 99zzz, L, local names such as XYZ): letters, digits and a few marks, no spaces
_SYSTEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def coding_system(name: str) -> tuple[str, bool]:
    """(URI of the coding system named *name* in a CWE/CE third component, whether the name was usable).

    Known names map to their URIs (``LN`` -> LOINC...), an OID to ``urn:oid:``, another table-0396 style name to
    ``urn:hl7v2:table-0396:<name>``. Text that cannot be a system name (spaces, colons: a component shifted by a
    malformed OBX-3, e.g. ``POST 12H CFST:MCNC:PT:SER/PLAS:QN``) gives :data:`UNKNOWN_SYSTEM` and False, so no URI
    holds spaces.
    """
    known = CODING_SYSTEMS.get(name.upper())
    if known is not None:
        return known, True
    if not name:
        return UNKNOWN_SYSTEM, True
    if _OID.match(name):
        return f"urn:oid:{name}", True
    if _SYSTEM_NAME.match(name):
        return f"urn:hl7v2:table-0396:{name}", True
    return UNKNOWN_SYSTEM, False


def coding_of(comps: list[str], where: str) -> Coding:
    """The Coding of CWE/CE components ``code^text^system`` (*where* names the field in errors).

    Raises
    ------
    Hl7MappingError
        The code is empty.
    """
    code = comps[0] if comps else ""
    if not code:
        raise Hl7MappingError(f"{where}: the identifier has no code", error_code="101", location=where)
    system, _ = coding_system(comps[2] if len(comps) > 2 else "")
    return Coding(system=system, code=code, display=(comps[1] if len(comps) > 1 and comps[1] else None))


def unit_of(comps: list[str]) -> str:
    """The unit of OBX-6 components, or "" when none is given: an MDC dimension code translated to UCUM, a common
    non-UCUM spelling to its UCUM code (:func:`medtwin.codes.to_ucum`); anything else as written."""
    if not comps or not comps[0]:
        return ""
    system = comps[2].upper() if len(comps) > 2 else ""
    if system == "MDC" or (comps[0].isdigit() and comps[0] in MDC_UNITS):
        return MDC_UNITS.get(comps[0], comps[0])
    return codes.to_ucum(comps[0]) or comps[0]


_VITAL_CODES = frozenset(c.code for c in codes.VITAL_SIGNS) | {
    codes.MEAN_BP.code,
    codes.PULSE_RATE_OXIMETRY.code,
    codes.INHALED_OXYGEN_CONCENTRATION.code,
    codes.INHALED_OXYGEN_FLOW.code,
}


def concept_of(identifier: tuple[str, ...]) -> tuple[Coding, tuple[Coding, ...], str | None, bool]:
    """OBX-3 components -> (coding normalised to LOINC, original MDC coding if any, canonical unit, is a vital sign).

    Cached: a monitor feed repeats a handful of identifiers, and the records are immutable, so they can be shared
    (identifiers of more than 512 characters are not cached: a hostile feed must not fill the cache with them).
    """
    if sum(map(len, identifier)) > 512:
        return _concept(identifier)
    return _cached_concept(identifier)


def _concept(identifier: tuple[str, ...]) -> tuple[Coding, tuple[Coding, ...], str | None, bool]:
    coding = coding_of(list(identifier), "OBX^3")
    alt: tuple[Coding, ...] = ()
    loinc = codes.normalise_to_loinc(coding)
    if loinc is not coding:
        alt, coding = (coding,), loinc
    return coding, alt, codes.canonical_unit(coding), coding.code in _VITAL_CODES


_cached_concept = lru_cache(maxsize=2048)(_concept)


def quantity_of(seg: Segment, value_type: str, coding: Coding, target: str | None, where: str) -> Quantity:
    """The NM or SN value of the OBX *seg* (of concept *coding*), converted to the canonical unit *target*.

    Raises
    ------
    Hl7MappingError
        Not a finite number, a comparator other than ``=``, no unit where one is needed, or a unit that does not
        convert to *target*.
    """
    if value_type == "SN":
        comps = seg.components(5)
        comparator = comps[0] if comps else ""
        if comparator not in ("", "="):
            raise Hl7MappingError(
                f"{where}: structured numeric with comparator {comparator!r} is not an exact value",
                error_code="102",
                location=f"{where}^5",
            )
        text = comps[1] if len(comps) > 1 else ""
    else:
        text = seg.field(5)
    try:
        number = float(text)
    except ValueError:
        raise Hl7MappingError(
            f"{where}: OBX-5 {text[:40]!r} is not a number (value type {value_type})",
            error_code="102",
            location=f"{where}^5",
        ) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise Hl7MappingError(
            f"{where}: OBX-5 {text[:40]!r} is not a finite number", error_code="102", location=f"{where}^5"
        )
    unit = unit_of(seg.components(6))
    if target is None or unit == target:
        return Quantity(value=number, unit=unit or target or "1")
    if not unit:
        raise Hl7MappingError(
            f"{where}: OBX-6 unit is empty but {coding.code} needs one (expected {target!r})",
            error_code="101",
            location=f"{where}^6",
        )
    try:
        return Quantity(value=codes.convert(number, unit, target), unit=target)
    except UnitError as exc:
        raise Hl7MappingError(f"{where}: {exc}", error_code="102", location=f"{where}^6") from None
