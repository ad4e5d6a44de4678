"""Map parsed HL7 v2 messages to medtwin records: ORU^R01 vital signs -> Observations, ADT^A0x -> Encounter + Patient.

Vital signs arrive coded in LOINC (``LN``) or in ISO/IEEE 11073-10101 MDC codes (IHE PCD-01 "Communicate PCD
Data", ``MDC``); MDC codes are normalised to the LOINC concept (the MDC coding is kept in ``alt_codes``), and
values are converted to medtwin's canonical unit for the concept with :func:`medtwin.codes.convert`. MDC unit codes
(``264864`` MDC_DIM_BEAT_PER_MIN...) are mapped to their UCUM equivalents first.

Patients are keyed by a pseudonymous id derived from the first PID-3 identifier (see
:func:`pseudonymous_patient_id`); names, identifiers and address go to the separate :class:`PatientIdentity`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from functools import lru_cache

from medtwin import codes
from medtwin.errors import UnitError, ValidationError
from medtwin.interop.hl7v2.parser import Hl7Message, Hl7ParseError, Segment, parse_hl7_datetime
from medtwin.records import (
    Coding,
    Encounter,
    EncounterLocation,
    Identifier,
    Observation,
    Patient,
    PatientIdentity,
    Provenance,
    Quantity,
    Record,
)

__all__ = [
    "CODING_SYSTEMS",
    "KNOWN_SEGMENTS",
    "MDC_UNITS",
    "Hl7MappingError",
    "MappedMessage",
    "map_message",
    "pseudonymous_patient_id",
]


class Hl7MappingError(Hl7ParseError):
    """A well-formed message whose content cannot become records (unknown patient, bad value, bad unit)."""


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

# Segments this mapper reads or knowingly ignores; others are reported as unknown (they stay in the raw log).
KNOWN_SEGMENTS = frozenset(
    {"MSH", "SFT", "UAC", "EVN", "PID", "PD1", "NK1", "PV1", "PV2", "ORC", "OBR", "OBX", "NTE", "TQ1", "TQ2", "SPM",
     "AL1", "DG1", "PR1", "GT1", "IN1", "IN2", "IN3", "ROL", "DB1", "ARV", "PRT", "ACC", "UB1", "UB2", "PDA",
     "OH1", "OH2", "OH3", "OH4", "GP1", "GP2", "IAM", "IAR", "ERR", "MSA", "CTI", "TXA"}
)  # fmt: skip

_OBX_STATUS = {"F": "final", "C": "corrected", "R": "preliminary", "P": "preliminary", "W": "entered-in-error"}
_PATIENT_CLASS = {"E": "EMER", "I": "IMP", "O": "AMB", "P": "PRENC", "R": "AMB", "B": "OBSENC", "N": "AMB"}
_GENDER: dict[str, str] = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
_ADT_EVENTS = {"A01", "A02", "A03", "A04", "A08", "A11", "A12", "A13", "A28", "A31"}
_ADMIT_EVENTS = {"A01", "A04", ""}  # events whose PV1-3 location holds from the admit time (PV1-44)


def pseudonymous_patient_id(system: str | None, value: str) -> str:
    """A stable pseudonymous patient id for the identifier (*system*, *value*): ``pt-`` + 16 hex digits of SHA-256.

    The same MRN always gives the same id, so observations from different feeds join up, while the id itself
    reveals no direct identifier.
    """
    digest = hashlib.sha256(f"{system or ''}|{value}".encode()).hexdigest()
    return f"pt-{digest[:16]}"


@dataclass(frozen=True, slots=True)
class MappedMessage:
    """The records one message yields, plus what the mapper noticed (unknown segments, skipped results)."""

    message: Hl7Message
    records: tuple[Record, ...]
    patient_id: str | None
    unknown_segments: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    supported: bool = True

    @property
    def observations(self) -> list[Observation]:
        """The Observation records only."""
        return [r for r in self.records if isinstance(r, Observation)]


@dataclass(slots=True)
class _Ctx:
    message: Hl7Message
    assume_tz: tzinfo
    patient_id_for: Callable[[str | None, str], str]
    notes: list[str] = field(default_factory=list)
    source_system: str = ""
    control_id: str = ""

    def when(self, value: str, where: str) -> datetime:
        return parse_hl7_datetime(value, assume_tz=self.assume_tz, where=where)


def map_message(
    message: Hl7Message,
    *,
    assume_tz: tzinfo = UTC,
    patient_id_for: Callable[[str | None, str], str] = pseudonymous_patient_id,
) -> MappedMessage:
    """Turn a parsed message into records.

    ORU^R01 (and R30/R31/R32) -> Patient + Observations; ADT^A01/A02/A03/A04/A08 (and A11-A13, A28, A31) ->
    Patient (+ Encounter when PV1 is present). Any other type gives ``supported=False`` and no records (the
    message is still kept in the raw log). Times without an offset are read in *assume_tz*.

    Raises
    ------
    Hl7MappingError
        A required value is missing or invalid (no PID-3, non-numeric NM value, a unit that cannot be converted).
    """
    try:
        return _map(message, assume_tz, patient_id_for)
    except Hl7ParseError:
        raise
    except ValidationError as exc:  # a record refused the value (NaN, end before start, ...): say where
        raise Hl7MappingError(f"{message.message_type}^{message.trigger_event}: {exc}", error_code="102") from None


def _map(message: Hl7Message, assume_tz: tzinfo, patient_id_for: Callable[[str | None, str], str]) -> MappedMessage:
    ctx = _Ctx(message, assume_tz, patient_id_for, source_system=message.source_system, control_id=message.control_id)
    unknown = tuple(sorted({s.name for s in message.segments if s.name not in KNOWN_SEGMENTS and s.name[0] != "Z"}))
    unknown += tuple(sorted({s.name for s in message.segments if s.name[0] == "Z"}))
    mtype, event = message.message_type, message.trigger_event
    records: list[Record] = []
    patient_id: str | None = None
    if mtype == "ORU" and event in ("R01", "R30", "R31", "R32", ""):
        patient = _patient(ctx)
        patient_id = patient.patient_id
        records.append(patient)
        records.extend(_observations(ctx, patient_id))
    elif mtype == "ADT" and (event in _ADT_EVENTS or event == ""):
        patient = _patient(ctx)
        patient_id = patient.patient_id
        records.append(patient)
        encounter = _encounter(ctx, patient_id, event)
        if encounter is not None:
            records.append(encounter)
    else:
        return MappedMessage(message, (), None, unknown, (f"message type {mtype}^{event} is not mapped",), False)
    return MappedMessage(message, tuple(records), patient_id, unknown, tuple(ctx.notes))


def _provenance(ctx: _Ctx, suffix: str) -> Provenance:
    return Provenance(source_system=ctx.source_system, source_id=f"{ctx.control_id}/{suffix}")


def _stable_id(provenance: Provenance, when: datetime) -> str:
    """A record id from its time and provenance: a resent message maps to the same ids, and ids of a live feed
    increase with time, so a database inserts them near the end of its primary-key index instead of at random."""
    key = f"{provenance.source_system}|{provenance.source_id}".encode()
    millis = max(0, int(when.timestamp() * 1000))
    return f"{millis:012x}{hashlib.blake2b(key, digest_size=10).hexdigest()}"


def _patient(ctx: _Ctx) -> Patient:
    pid = ctx.message.first("PID")
    if pid is None:
        raise Hl7MappingError("PID segment is required to know the patient", error_code="100", location="PID")
    identifiers: list[Identifier] = []
    for rep in range(len(pid.repetitions(3))):
        comps = pid.components(3, repetition=rep)
        if comps and comps[0]:
            identifiers.append(
                Identifier(
                    system=comps[3] if len(comps) > 3 and comps[3] else None,
                    value=comps[0],
                    type_code=comps[4] if len(comps) > 4 and comps[4] else None,
                )
            )
    if not identifiers:
        legacy = pid.field(2)
        if not legacy:
            raise Hl7MappingError("PID-3 (patient identifier list) is empty", error_code="101", location="PID^1^3")
        identifiers.append(Identifier(system=None, value=legacy))
    mrn = next((i for i in identifiers if i.type_code == "MR"), identifiers[0])
    patient_id = ctx.patient_id_for(mrn.system, mrn.value)
    name = pid.components(5)
    family = name[0] if name and name[0] else None
    given = tuple(n for n in name[1:3] if n) if len(name) > 1 else ()
    telecom = tuple(t for rep in range(len(pid.repetitions(13))) if (t := pid.field(13, repetition=rep)))
    address = " ".join(p for p in pid.components(11)[:5] if p) or None
    identity = PatientIdentity(
        identifiers=tuple(identifiers), family=family, given=given, telecom=telecom, address=address
    )
    gender = _GENDER.get(pid.field(8).upper()) if pid.field(8) else None
    birth: date | None = None
    if raw_birth := pid.field(7):
        try:
            birth = ctx.when(raw_birth, "PID^1^7").date()
        except Hl7ParseError:
            ctx.notes.append(f"PID-7 birth date {raw_birth!r} is not a date; left unknown")
    deceased = ctx.when(pid.field(29), "PID^1^29") if pid.field(29) else None
    return Patient(
        patient_id=patient_id,
        gender=gender,  # type: ignore[arg-type]
        birth_date=birth,
        deceased=deceased,
        identity=identity,
        provenance=_provenance(ctx, "PID"),
    )


def _coding(comps: list[str], where: str) -> Coding:
    code = comps[0] if comps else ""
    if not code:
        raise Hl7MappingError(f"{where}: the identifier has no code", error_code="101", location=where)
    system_name = comps[2] if len(comps) > 2 else ""
    system = CODING_SYSTEMS.get(system_name.upper(), f"urn:hl7v2:table-0396:{system_name or 'unknown'}")
    return Coding(system=system, code=code, display=(comps[1] if len(comps) > 1 and comps[1] else None))


def _unit(comps: list[str]) -> str:
    if not comps or not comps[0]:
        return ""
    system = comps[2].upper() if len(comps) > 2 else ""
    if system == "MDC" or (comps[0].isdigit() and comps[0] in MDC_UNITS):
        return MDC_UNITS.get(comps[0], comps[0])
    return comps[0]


def _observations(ctx: _Ctx, patient_id: str) -> list[Observation]:
    message = ctx.message
    pv1 = message.first("PV1")
    encounter_id = pv1.field(19) if pv1 is not None and pv1.field(19) else None
    obr_time: str = ""
    device: str | None = None
    msh_time = message.msh.field(7)
    sending_application = message.sending_application or None
    out: list[Observation] = []
    for index, seg in enumerate(message.segments):
        if seg.name == "OBR":
            obr_time = seg.field(7)
            continue
        if seg.name != "OBX":
            continue
        set_id = seg.field(1) or str(index)
        where = f"OBX[{set_id}]"
        status_code = seg.field(11).upper()
        if status_code in ("X", "D"):
            ctx.notes.append(f"{where}: result status {status_code} (no value / deleted); skipped")
            continue
        value_type = seg.field(2).upper()
        raw_values = seg.repetitions(5)
        if not raw_values or not raw_values[0]:
            ctx.notes.append(f"{where}: OBX-5 is empty; skipped")
            continue
        identifier = seg.components(3)
        if not identifier or not identifier[0]:
            ctx.notes.append(f"{where}: OBX-3 has no code; an unidentified result cannot be used, skipped")
            continue
        coding, alt, target, vital = _concept(tuple(identifier))
        value: Quantity | Coding | str
        if value_type in ("NM", "SN"):
            value = _quantity(seg, value_type, coding, target, where)
        elif value_type in ("CWE", "CE", "CNE", "CF"):
            value = _coding(seg.components(5), f"{where}^5")
        else:
            value = seg.field(5)
        when_raw = seg.field(14) or obr_time or msh_time
        effective = ctx.when(when_raw, f"{where}^14")
        device = seg.field(18) or device
        provenance = _provenance(ctx, f"OBX-{set_id}-{seg.field(4)}")
        out.append(
            Observation(
                observation_id=_stable_id(provenance, effective),
                patient_id=patient_id,
                code=coding,
                effective=effective,
                value=value,
                status=_OBX_STATUS.get(status_code, "final"),
                category="vital-signs" if vital else None,
                device=device or sending_application,
                encounter_id=encounter_id,
                alt_codes=alt,
                provenance=provenance,
            )
        )
    return out


_VITAL_CODES = frozenset(c.code for c in codes.VITAL_SIGNS) | {
    codes.MEAN_BP.code,
    codes.PULSE_RATE_OXIMETRY.code,
    codes.INHALED_OXYGEN_CONCENTRATION.code,
    codes.INHALED_OXYGEN_FLOW.code,
}


@lru_cache(maxsize=2048)
def _concept(identifier: tuple[str, ...]) -> tuple[Coding, tuple[Coding, ...], str | None, bool]:
    """OBX-3 components -> (coding normalised to LOINC, original MDC coding if any, canonical unit, is a vital sign).

    Cached: a monitor feed repeats a handful of identifiers, and the records are immutable, so they can be shared.
    """
    coding = _coding(list(identifier), "OBX^3")
    alt: tuple[Coding, ...] = ()
    loinc = codes.normalise_to_loinc(coding)
    if loinc is not coding:
        alt, coding = (coding,), loinc
    return coding, alt, codes.canonical_unit(coding), coding.code in _VITAL_CODES


def _quantity(seg: Segment, value_type: str, coding: Coding, target: str | None, where: str) -> Quantity:
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
            f"{where}: OBX-5 {text!r} is not a number (value type {value_type})", error_code="102", location=where
        ) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise Hl7MappingError(f"{where}: OBX-5 {text!r} is not a finite number", error_code="102", location=where)
    unit = _unit(seg.components(6))
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


def _encounter(ctx: _Ctx, patient_id: str, event: str) -> Encounter | None:
    pv1 = ctx.message.first("PV1")
    if pv1 is None:
        return None
    evn = ctx.message.first("EVN")
    event_time_raw = (evn.field(2) if evn is not None else "") or ctx.message.msh.field(7)
    event_time = ctx.when(event_time_raw, "EVN^1^2")
    start = ctx.when(pv1.field(44), "PV1^1^44") if pv1.field(44) else event_time
    end: datetime | None = None
    if pv1.field(45):
        end = ctx.when(pv1.field(45), "PV1^1^45")
    elif event == "A03":
        end = event_time
    if end is not None and end < start:
        ctx.notes.append(f"PV1-45 discharge {end.isoformat()} precedes admission {start.isoformat()}; end dropped")
        end = None
    status = {"A03": "finished", "A04": "arrived", "A11": "cancelled", "A13": "in-progress"}.get(event, "in-progress")
    visit = pv1.field(19)
    encounter_id = visit or f"{patient_id}/{ctx.message.control_id}"
    locations: list[EncounterLocation] = []
    point = pv1.components(3)
    if point and point[0]:
        # An admission or registration places the patient from the admit time; any other event (A02 transfer,
        # A03 discharge, A08 update...) says where the patient is at its event time. The store merges the stays
        # of successive versions (medtwin.store.versions), joining consecutive ones in the same unit and bed.
        loc_start = start if event in _ADMIT_EVENTS else max(event_time, start)
        if end is not None and loc_start > end:
            loc_start = end
        bed = "/".join(p for p in point[1:3] if p) or None
        locations.append(EncounterLocation(unit=point[0], start=loc_start, end=end, bed=bed))
    return Encounter(
        encounter_id=encounter_id,
        patient_id=patient_id,
        status=status,
        class_code=_PATIENT_CLASS.get(pv1.field(2).upper(), pv1.field(2) or "UNK"),
        start=start,
        end=end,
        locations=tuple(locations),
        disposition=_disposition(pv1.components(36)),
        provenance=_provenance(ctx, f"PV1-{event or 'ADT'}"),
    )


_V2_TABLE_0112 = "http://terminology.hl7.org/CodeSystem/v2-0112"
_DISPOSITIONS = {
    c.code: c
    for c in (
        codes.DISCHARGE_HOME,
        codes.DISCHARGE_OTHER_HCF,
        codes.DISCHARGE_HOSPICE,
        codes.DISCHARGE_AGAINST_ADVICE,
        codes.DISCHARGE_EXPIRED,
        codes.DISCHARGE_OTHER,
        codes.DISCHARGE_LWBS,
    )
}


def _disposition(pv1_36: list[str]) -> Coding | None:
    """PV1-36 discharge disposition (user-defined table 0112).

    A FHIR discharge-disposition code (``home``, ``other-hcf``, ``hosp``, ``aadvice``, ``exp``, ``oth``) or
    ``lwbs`` maps to the medtwin coding; any other site-local value is kept as a table-0112 coding.
    """
    value = pv1_36[0].strip() if pv1_36 else ""
    if not value:
        return None
    known = _DISPOSITIONS.get(value.lower())
    if known is not None:
        return known
    display = pv1_36[1].strip() if len(pv1_36) > 1 and pv1_36[1].strip() else None
    return Coding(system=_V2_TABLE_0112, code=value, display=display)
