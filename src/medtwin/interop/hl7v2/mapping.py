"""Map parsed HL7 v2 messages to medtwin records: ORU^R01 results -> Observations, ADT^A0x -> Encounter + Patient,
RAS^O17 / RDE^O11 -> MedicationAdministrations / MedicationRequests.

Vital signs arrive coded in LOINC (``LN``) or in ISO/IEEE 11073-10101 MDC codes (IHE PCD-01 "Communicate PCD
Data", ``MDC``); MDC codes are normalised to the LOINC concept (the MDC coding is kept in ``alt_codes``), and
values are converted to medtwin's canonical unit for the concept with :func:`medtwin.codes.convert`. MDC unit codes
(``264864`` MDC_DIM_BEAT_PER_MIN...) are mapped to their UCUM equivalents first.

Patients are keyed by a pseudonymous id derived from the first PID-3 identifier (see
:func:`pseudonymous_patient_id`); names, identifiers and address go to the separate :class:`PatientIdentity`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Any

from medtwin import codes
from medtwin.crypto import PseudonymKey
from medtwin.errors import ValidationError
from medtwin.interop.hl7v2 import pharmacy
from medtwin.interop.hl7v2.obx import (
    CODING_SYSTEMS,
    MDC_UNITS,
    OBX_STATUS,
    coding_of,
    coding_system,
    concept_of,
    quantity_of,
)
from medtwin.interop.hl7v2.parser import (
    Hl7MappingError,
    Hl7Message,
    Hl7ParseError,
    Segment,
    parse_hl7_datetime,
    unescape,
)
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
    "SOURCE_ID_CHARS",
    "SOURCE_SYSTEM_CHARS",
    "Hl7MappingError",
    "MappedMessage",
    "RefusedResult",
    "bounded_key",
    "control_key",
    "map_message",
    "map_message_general",
    "pseudonymous_patient_id",
    "source_key",
]

SOURCE_SYSTEM_CHARS = 200  # the store's provenance and raw-log key columns (source_system, source_id)
SOURCE_ID_CHARS = 300  # of the 400 of source_id: room for the record suffix ("/OBR2/OBX-12-1.1.1.1@40")


def bounded_key(value: str, most: int) -> str:
    """*value* when it has at most *most* characters, else its start and its SHA-256: never cut into a collision.

    Two different long control ids (or senders) keep different keys; the same one always gets the same key.
    """
    if len(value) <= most:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()
    return f"{value[: most - len(digest) - 2]}#~{digest}"


def source_key(message: Hl7Message) -> str:
    """The sender's key (``MSH-3.1@MSH-4.1``) within the store's bound (:func:`bounded_key`)."""
    return bounded_key(message.source_system, SOURCE_SYSTEM_CHARS)


def control_key(message: Hl7Message, digest: str | None = None) -> str:
    """The idempotency key of *message* in its sender's namespace: MSH-10 within the store's bound.

    With *digest* (of a resend whose content differs from what is stored under the plain key) the key is qualified
    by it, so that the conflicting resend is kept beside the first (docs/hl7v2.md, "Duplicates and conflicting
    resends").
    """
    if digest is None:
        return bounded_key(message.control_id, SOURCE_ID_CHARS)
    suffix = f"#conflict-{digest[:16]}"
    return bounded_key(message.control_id, SOURCE_ID_CHARS - len(suffix)) + suffix


# Segments this mapper reads or knowingly ignores; others are reported as unknown (they stay in the raw log).
KNOWN_SEGMENTS = frozenset(
    {"MSH", "SFT", "UAC", "EVN", "PID", "PD1", "NK1", "PV1", "PV2", "ORC", "OBR", "OBX", "NTE", "TQ1", "TQ2", "SPM",
     "AL1", "DG1", "PR1", "GT1", "IN1", "IN2", "IN3", "ROL", "DB1", "ARV", "PRT", "ACC", "UB1", "UB2", "PDA",
     "OH1", "OH2", "OH3", "OH4", "GP1", "GP2", "IAM", "IAR", "ERR", "MSA", "CTI", "TXA"}
) | pharmacy.PHARMACY_SEGMENTS  # fmt: skip

_PATIENT_CLASS = {"E": "EMER", "I": "IMP", "O": "AMB", "P": "PRENC", "R": "AMB", "B": "OBSENC", "N": "AMB"}
_GENDER: dict[str, str] = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
_ADT_EVENTS = {"A01", "A02", "A03", "A04", "A08", "A11", "A12", "A13", "A28", "A31"}
_ADMIT_EVENTS = {"A01", "A04", ""}  # events whose PV1-3 location holds from the admit time (PV1-44)


pseudonymous_patient_id: PseudonymKey = PseudonymKey(secrets.token_bytes(32))
"""The default patient id of an identifier (*system*, *value*): ``pt-`` + 16 hex digits of HMAC-SHA-256 under a
random secret of this process (:class:`medtwin.crypto.PseudonymKey`). Stable within the process only: everything
that writes a store maps with the store's key instead (``patient_id_for=store.keyring.pseudonym``), so the ids of a
database are keyed by a secret kept outside it and the same MRN always gives the same id there. Until issue 15
this was an unkeyed SHA-256, which a list of candidate MRNs reversed (8 of 11 ids in 0.9 s)."""


@dataclass(frozen=True, slots=True)
class RefusedResult:
    """A result (OBX) of a message that could not be used: where (ERR-2), the HL7 table 0357 code and why."""

    location: str
    error_code: str
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class MappedMessage:
    """The records one message yields, plus what the mapper noticed (unknown segments, skipped results).

    ``refused`` holds one error per result (OBX) that could not be used (a value that is not a number, a unit of the
    wrong dimension, no unit where one is needed...): the other results are mapped, the message stays whole in the
    raw log, and the sender is told which results were refused. ``source_system`` and ``source_id`` are the keys
    the records' provenance uses (:func:`source_key`, :func:`control_key`), as the raw log must.
    """

    message: Hl7Message
    records: tuple[Record, ...]
    patient_id: str | None
    unknown_segments: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    supported: bool = True
    refused: tuple[RefusedResult, ...] = ()
    source_system: str = ""
    source_id: str = ""

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
    refused: list[RefusedResult] = field(default_factory=list)
    source_system: str = ""
    control_id: str = ""

    def when(self, value: str, where: str) -> datetime:
        return parse_hl7_datetime(value, assume_tz=self.assume_tz, where=where)


def map_message(
    message: Hl7Message,
    *,
    assume_tz: tzinfo = UTC,
    patient_id_for: Callable[[str | None, str], str] = pseudonymous_patient_id,
    key: str | None = None,
) -> MappedMessage:
    """Turn a parsed message into records.

    ORU^R01 (and R30/R31/R32) -> Patient + Observations; ADT^A01/A02/A03/A04/A08 (and A11-A13, A28, A31) ->
    Patient (+ Encounter when PV1 is present); RAS^O17 -> Patient + MedicationAdministrations and RDE^O11 ->
    Patient + MedicationRequests (:mod:`medtwin.interop.hl7v2.pharmacy`). Any other type gives ``supported=False``
    and no records (the message is still kept in the raw log). Times without an offset are read in *assume_tz*.
    *key*: the control key of the records' provenance (default :func:`control_key` of the message; the raw log's
    ``source_id`` of the entry when mapping a stored message again).

    A plain ORU^R01 (no repetition, escape or subcomponent in the MSH, PV1, OBR and OBX fields read) takes a
    shorter path with the same result; see :func:`map_message_general`.

    Raises
    ------
    Hl7MappingError
        A required value is missing or invalid (no PID-3, non-numeric NM value, a unit that cannot be converted).
    """
    try:
        mapped = _map_plain_oru(message, assume_tz, patient_id_for, key)
    except ValidationError:  # the general path raises the same error, or maps what the shortcut could not
        mapped = None
    return (
        mapped
        if mapped is not None
        else map_message_general(message, assume_tz=assume_tz, patient_id_for=patient_id_for, key=key)
    )


def map_message_general(
    message: Hl7Message,
    *,
    assume_tz: tzinfo = UTC,
    patient_id_for: Callable[[str | None, str], str] = pseudonymous_patient_id,
    key: str | None = None,
) -> MappedMessage:
    """:func:`map_message` without the plain-ORU shortcut: the reference that shortcut is tested against.

    Raises
    ------
    Hl7MappingError
        As :func:`map_message`.
    """
    try:
        return _map(message, assume_tz, patient_id_for, key)
    except Hl7ParseError:
        raise
    except ValidationError as exc:  # a record refused the value (NaN, end before start, ...): say where
        raise Hl7MappingError(f"{message.message_type}^{message.trigger_event}: {exc}", error_code="102") from None


def _map(
    message: Hl7Message, assume_tz: tzinfo, patient_id_for: Callable[[str | None, str], str], key: str | None
) -> MappedMessage:
    ctx = _Ctx(message, assume_tz, patient_id_for, source_system=source_key(message))
    ctx.control_id = key if key is not None else control_key(message)
    unknown = _unknown_segments(message)
    mtype, event = message.message_type, message.trigger_event
    records: list[Record] = []
    patient_id: str | None = None
    if mtype == "ORU" and event in ("R01", "R30", "R31", "R32", ""):
        patient = _patient(ctx)
        patient_id = patient.patient_id
        records.append(patient)
        records.extend(_observations(ctx, patient_id))
    elif (mtype, event) in (("RAS", "O17"), ("RDE", "O11")):
        patient = _patient(ctx)
        patient_id = patient.patient_id
        records.append(patient)
        segments = list(message.segments)
        if mtype == "RAS":
            records.extend(pharmacy.administrations(segments, patient_id, ctx.when,
                                                    lambda suffix: _provenance(ctx, suffix), _stable_id))  # fmt: skip
        else:
            records.extend(pharmacy.orders(segments, patient_id, ctx.when, lambda suffix: _provenance(ctx, suffix)))
    elif mtype == "ADT" and (event in _ADT_EVENTS or event == ""):
        patient = _patient(ctx)
        patient_id = patient.patient_id
        records.append(patient)
        encounter = _encounter(ctx, patient_id, event)
        if encounter is not None:
            records.append(encounter)
    else:
        note = f"message type {mtype}^{event} is not mapped"
        return MappedMessage(message, (), None, unknown, (note,), False, (), ctx.source_system, ctx.control_id)
    return MappedMessage(
        message,
        tuple(records),
        patient_id,
        unknown,
        tuple(ctx.notes),
        True,
        tuple(ctx.refused),
        ctx.source_system,
        ctx.control_id,
    )


def _unknown_segments(message: Hl7Message) -> tuple[str, ...]:
    """Names of the segments this mapper does not know, sorted, the Z-segments last."""
    names = {s.name for s in message.segments}
    if names <= KNOWN_SEGMENTS:
        return ()
    return tuple(sorted(n for n in names if n not in KNOWN_SEGMENTS and n[0] != "Z")) + tuple(
        sorted(n for n in names if n[0] == "Z")
    )


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
    patient_id, gender, birth, deceased, identity, notes = _patient_parts(pid, ctx.assume_tz, ctx.patient_id_for)
    ctx.notes.extend(notes)
    return Patient(
        patient_id=patient_id,
        gender=gender,  # type: ignore[arg-type]
        birth_date=birth,
        deceased=deceased,
        identity=identity,
        provenance=_provenance(ctx, "PID"),
    )


_PatientParts = tuple[str, str | None, date | None, datetime | None, PatientIdentity, tuple[str, ...]]


def _repetition_components(pid: Segment, number: int) -> list[list[str]]:
    """The unescaped components of every repetition of field *number*: one split per repetition (linear in the
    field's size; asking ``components(n, repetition=i)`` for each *i* split the field again each time, quadratic
    in the repetitions: 18.8 s for a PID-3 of 40,000 empty repetitions)."""
    d = pid.delimiters
    out: list[list[str]] = []
    for rep in pid.repetitions(number):
        if not rep:
            out.append([])
        elif d.escape not in rep and d.subcomponent not in rep:
            out.append(["" if c == '""' else c for c in rep.split(d.component)])
        else:
            out.append(
                ["" if (x := c.split(d.subcomponent)[0]) == '""' else unescape(x, d) for c in rep.split(d.component)]
            )
    return out


def _patient_parts(pid: Segment, assume_tz: tzinfo, patient_id_for: Callable[[str | None, str], str]) -> _PatientParts:
    """What a PID segment says: (patient id, gender, birth date, deceased time, identity, notes)."""
    notes: list[str] = []
    identifiers: list[Identifier] = []
    for comps in _repetition_components(pid, 3):
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
    patient_id = patient_id_for(mrn.system, mrn.value)
    name = pid.components(5)
    family = name[0] if name and name[0] else None
    given = tuple(n for n in name[1:3] if n) if len(name) > 1 else ()
    telecom = tuple(c[0] for c in _repetition_components(pid, 13) if c and c[0])
    address = " ".join(p for p in pid.components(11)[:5] if p) or None
    identity = PatientIdentity(
        identifiers=tuple(identifiers), family=family, given=given, telecom=telecom, address=address
    )
    gender = _GENDER.get(pid.field(8).upper()) if pid.field(8) else None
    birth: date | None = None
    if raw_birth := pid.field(7):
        try:
            birth = parse_hl7_datetime(raw_birth, assume_tz=assume_tz, where="PID^1^7").date()
        except Hl7ParseError:
            # the value is not quoted: notes become the raw log's reason, and a birth date is an identifier
            notes.append(f"PID-7 birth date ({len(raw_birth)} characters) is not a date; left unknown")
    deceased = parse_hl7_datetime(pid.field(29), assume_tz=assume_tz, where="PID^1^29") if pid.field(29) else None
    return patient_id, gender, birth, deceased, identity, tuple(notes)


_PSEUDONYMOUS_PATIENTS: dict[tuple[tuple[str, ...], str, str, tzinfo, PseudonymKey], _PatientParts] = {}


def _pseudonymous_patient_parts(pid: Segment, assume_tz: tzinfo, patient_id_for: PseudonymKey) -> _PatientParts:
    """:func:`_patient_parts` with the default patient id, cached: a feed repeats the PID of each patient.

    Keyed by the raw fields and the delimiters as text (hashing the Delimiters dataclass would cost a Python call).
    """
    if sum(map(len, pid.fields)) > _CACHED_CHARS:  # not kept: a hostile feed must not fill memory with huge PIDs
        return _patient_parts(pid, assume_tz, patient_id_for)
    d = pid.delimiters
    key = (pid.fields, d.field, d.component + d.repetition + d.escape + d.subcomponent, assume_tz, patient_id_for)
    parts = _PSEUDONYMOUS_PATIENTS.get(key)
    if parts is None:
        parts = _remember(_PSEUDONYMOUS_PATIENTS, key, _patient_parts(pid, assume_tz, patient_id_for))
    return parts


def _obx_key(group: int, set_id: str, sub_id: str, index: int, used: set[str]) -> str:
    """The provenance suffix of an OBX, unique in its message: ``OBX-<set id>-<sub id>``, prefixed ``OBR<n>/`` in
    the n-th OBR group from the second on (set ids start again in each group: a lab ORU^R01 with two OBR groups lost
    the second group's results as "duplicates"), and suffixed ``@<segment index>`` if a sender repeats one."""
    key = f"OBX-{set_id}-{sub_id}" if group < 2 else f"OBR{group}/OBX-{set_id}-{sub_id}"
    if key in used:
        key = f"{key}@{index}"
    used.add(key)
    return key


def _refusal(exc: ValidationError, where: str) -> RefusedResult:
    if isinstance(exc, Hl7MappingError):
        return RefusedResult(exc.location or where, exc.error_code, str(exc))
    return RefusedResult(where, "102", f"{where}: {exc}")


def _observations(ctx: _Ctx, patient_id: str) -> list[Observation]:
    message = ctx.message
    pv1 = message.first("PV1")
    encounter_id = bounded_key(pv1.field(19), SOURCE_SYSTEM_CHARS) if pv1 is not None and pv1.field(19) else None
    obr_time: str = ""
    msh_time = message.msh.field(7)
    group = 0
    used: set[str] = set()
    out: list[Observation] = []
    for index, seg in enumerate(message.segments):
        if seg.name == "OBR":
            obr_time = seg.field(7)
            group += 1
            continue
        if seg.name != "OBX":
            continue
        set_id = seg.field(1) or str(index)
        where = f"OBX[{set_id}]" if group < 2 else f"OBR[{group}]/OBX[{set_id}]"
        key = _obx_key(group, set_id, seg.field(4), index, used)
        status_code = seg.field(11).upper()
        if status_code in ("X", "D"):
            ctx.notes.append(f"{where}: result status {status_code} (no value / deleted); skipped")
            continue
        raw_values = seg.repetitions(5)
        if not raw_values or not raw_values[0]:
            ctx.notes.append(f"{where}: OBX-5 is empty; skipped")
            continue
        identifier = seg.components(3)
        if not identifier or not identifier[0]:
            ctx.notes.append(f"{where}: OBX-3 has no code; an unidentified result cannot be used, skipped")
            continue
        try:
            out.append(
                _observation(ctx, seg, tuple(identifier), where, key, obr_time or msh_time, patient_id, encounter_id)
            )
        except ValidationError as exc:  # this result is refused; the others are still stored
            ctx.refused.append(_refusal(exc, where))
    return out


def _observation(
    ctx: _Ctx,
    seg: Segment,
    identifier: tuple[str, ...],
    where: str,
    key: str,
    default_time: str,
    patient_id: str,
    encounter_id: str | None,
) -> Observation:
    coding, alt, target, vital = concept_of(identifier)
    if len(identifier) > 2 and not coding_system(identifier[2])[1]:
        ctx.notes.append(
            f"{where}: OBX-3.3 {identifier[2][:60]!r} is not a coding-system name; code {identifier[0]!r} kept with "
            "an unknown system"
        )
    value_type = seg.field(2).upper()
    value: Quantity | Coding | str
    if value_type in ("NM", "SN"):
        value = quantity_of(seg, value_type, coding, target, where)
        if not codes.is_ucum(value.unit):
            ctx.notes.append(f"{where}: OBX-6 unit {value.unit[:40]!r} is not UCUM; kept as written")
    elif value_type in ("CWE", "CE", "CNE", "CF"):
        value = coding_of(seg.components(5), f"{where}^5")
    else:
        value = seg.field(5)
    effective = ctx.when(seg.field(14) or default_time, f"{where}^14")
    provenance = Provenance(source_system=ctx.source_system, source_id=f"{ctx.control_id}/{key}")
    return Observation(
        observation_id=_stable_id(provenance, effective),
        patient_id=patient_id,
        code=coding,
        effective=effective,
        value=value,
        status=OBX_STATUS.get(seg.field(11).upper(), "final"),
        category="vital-signs" if vital else None,
        device=seg.field(18) or None,
        encounter_id=encounter_id,
        alt_codes=alt,
        provenance=provenance,
    )


# The plain-ORU shortcut. Its caches hold immutable values keyed by raw field text and the component delimiter
# (which decides how that text splits); each is emptied when it reaches _PLAIN_CACHE_SIZE entries.
_PLAIN_CACHE_SIZE = 4096
_CACHED_CHARS = 2048  # longer keys are computed each time, not cached (bounded memory whatever a sender sends)
_PLAIN_CONCEPTS: dict[tuple[str, str], tuple[Coding, tuple[Coding, ...], str | None, str | None] | None] = {}
_PLAIN_QUANTITIES: dict[tuple[str, str, str, str, str], Quantity] = {}
_PLAIN_CODED_VALUES: dict[tuple[str, str], Coding] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """Store *value* under *key* in one of the shortcut's caches (emptied first when full); return *value*."""
    if len(cache) >= _PLAIN_CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


_ORU_EVENTS = frozenset({"R01", "R30", "R31", "R32", ""})
_NO_FIELDS = ("",) * 20
_NOT_CACHED: Any = object()


def _map_plain_oru(
    message: Hl7Message,
    assume_tz: tzinfo,
    patient_id_for: Callable[[str | None, str], str],
    key: str | None = None,
) -> MappedMessage | None:
    """:func:`map_message_general` for a plain ORU^R01, or None when the message is not one.

    Plain: no repetition, escape or subcomponent delimiter and no ``""`` in MSH (past MSH-2), the first PV1, the
    OBRs and the OBXs, so that every value read there is its raw text up to the first component delimiter. The PID
    is read by the general code (cached per PID segment). An error raised here is raised again by the general
    path, which the caller then runs instead (and which maps the other results of a message with a refused one).
    """
    d = message.delimiters
    comp, sep = d.component, d.field
    segments = message.segments
    msh = segments[0]
    m = msh.fields + _NO_FIELDS  # m[n] is MSH-(n + 1)
    message_type, _, event = m[8].partition(comp)
    if message_type != "ORU" or event.partition(comp)[0] not in _ORU_EVENTS or msh.name != "MSH":
        return None  # (an escaped or repeated MSH-9 that reads ORU^R01 is mapped by the general path)
    read = [sep.join(msh.fields[2:])]
    pv1: Segment | None = None
    pid: Segment | None = None
    for seg in segments:
        name = seg.name
        if name == "OBX" or name == "OBR":
            read.append(sep.join(seg.fields))
        elif name == "PV1" and pv1 is None:
            pv1 = seg
            read.append(sep.join(seg.fields))
        elif name == "PID" and pid is None:
            pid = seg
    text = "\r".join(read)
    if d.repetition in text or d.escape in text or d.subcomponent in text or '""' in text:
        return None
    if pid is None:
        return None
    application, facility = m[2].partition(comp)[0], m[3].partition(comp)[0]
    source_system = f"{application}@{facility}" if facility else (application or "unknown")
    if len(source_system) > SOURCE_SYSTEM_CHARS:
        source_system = bounded_key(source_system, SOURCE_SYSTEM_CHARS)
    control_id = key if key is not None else m[9].partition(comp)[0]
    if len(control_id) > SOURCE_ID_CHARS and key is None:
        control_id = bounded_key(control_id, SOURCE_ID_CHARS)
    msh_time = m[6].partition(comp)[0]

    keyed = isinstance(patient_id_for, PseudonymKey)
    if keyed:
        parts = _pseudonymous_patient_parts(pid, assume_tz, patient_id_for)  # type: ignore[arg-type]
    else:
        parts = _patient_parts(pid, assume_tz, patient_id_for)
    patient_id, gender, birth, deceased, identity, patient_notes = parts
    notes = list(patient_notes)
    # the default patient id is never empty, the gender comes from _GENDER and times from parse_hl7_datetime (UTC)
    new_patient = Patient.prevalidated if keyed else Patient
    patient = new_patient(
        patient_id=patient_id,
        gender=gender,  # type: ignore[arg-type]
        birth_date=birth,
        deceased=deceased,
        identity=identity,
        provenance=Provenance.prevalidated(source_system, f"{control_id}/PID"),
    )
    records: list[Record] = [patient]

    visit = pv1.fields[19].partition(comp)[0] if pv1 is not None and len(pv1.fields) > 19 else ""
    encounter_id = bounded_key(visit, SOURCE_SYSTEM_CHARS) if visit else None
    source_prefix = f"{control_id}/"
    # _stable_id hashes f"{source_system}|{source_id}": hash the part shared by every OBX once, copy it per OBX
    id_hash = hashlib.blake2b(f"{source_system}|{source_prefix}".encode(), digest_size=10)
    times: dict[str, tuple[datetime, str]] = {}
    obr_time = ""
    group = 0
    used: set[str] = set()
    new_observation = Observation.prevalidated
    new_provenance = Provenance.prevalidated
    for index, seg in enumerate(segments):
        name = seg.name
        if name == "OBR":
            obr_time = seg.fields[7].partition(comp)[0] if len(seg.fields) > 7 else ""
            group += 1
            continue
        if name != "OBX":
            continue
        f = seg.fields
        if len(f) < 19:
            f = f + _NO_FIELDS[: 19 - len(f)]
        set_id = f[1].partition(comp)[0] or str(index)
        suffix = f"OBX-{set_id}-{f[4].partition(comp)[0]}"
        if suffix in used or group > 1:
            return None  # a repeated set id, a second OBR group: the general path keys them
        used.add(suffix)
        status_code = f[11].partition(comp)[0].upper()
        if status_code in ("X", "D"):
            notes.append(f"OBX[{set_id}]: result status {status_code} (no value / deleted); skipped")
            continue
        raw_value = f[5]
        if not raw_value:
            notes.append(f"OBX[{set_id}]: OBX-5 is empty; skipped")
            continue
        concept_key = (comp, f[3])
        concept = _PLAIN_CONCEPTS.get(concept_key, _NOT_CACHED)
        if concept is _NOT_CACHED:
            identifier = tuple(f[3].split(comp))
            if identifier[0] and not (len(identifier) > 2 and not coding_system(identifier[2])[1]):
                coding, alt, target, vital = concept_of(identifier)
                concept = (coding, alt, target, "vital-signs" if vital else None)
            else:  # no code, or a malformed system name: the general path says so
                concept = None
            if len(f[3]) <= _CACHED_CHARS:
                _remember(_PLAIN_CONCEPTS, concept_key, concept)
        if concept is None:
            return None
        coding, alt, target, category = concept
        value_type = f[2].partition(comp)[0].upper()
        value: Quantity | Coding | str
        if value_type in ("NM", "SN"):
            quantity_key = (comp, f[2], f[3], raw_value, f[6])
            quantity = _PLAIN_QUANTITIES.get(quantity_key)
            if quantity is None:
                quantity = quantity_of(seg, value_type, coding, target, f"OBX[{set_id}]")
                if not codes.is_ucum(quantity.unit):
                    return None  # the general path notes the unit
                if sum(map(len, quantity_key)) <= _CACHED_CHARS:
                    _remember(_PLAIN_QUANTITIES, quantity_key, quantity)
            value = quantity
        elif value_type in ("CWE", "CE", "CNE", "CF"):
            coded_key = (comp, raw_value)
            coded = _PLAIN_CODED_VALUES.get(coded_key)
            if coded is None:
                coded = coding_of(seg.components(5), f"OBX[{set_id}]^5")
                if len(raw_value) <= _CACHED_CHARS:
                    _remember(_PLAIN_CODED_VALUES, coded_key, coded)
            value = coded
        else:
            value = raw_value.partition(comp)[0]
        when_raw = f[14].partition(comp)[0] or obr_time or msh_time
        when = times.get(when_raw)
        if when is None:  # the OBXs of a message usually share one time: parse it and format its id prefix once
            effective = parse_hl7_datetime(when_raw, assume_tz=assume_tz, where=f"OBX[{set_id}]^14")
            when = times[when_raw] = (effective, f"{max(0, int(effective.timestamp() * 1000)):012x}")
        obx_hash = id_hash.copy()
        obx_hash.update(suffix.encode())
        records.append(
            new_observation(
                observation_id=when[1] + obx_hash.hexdigest(),
                patient_id=patient_id,
                code=coding,
                effective=when[0],
                value=value,
                status=OBX_STATUS.get(status_code, "final"),
                category=category,
                device=f[18].partition(comp)[0] or None,
                encounter_id=encounter_id,
                alt_codes=alt,
                provenance=new_provenance(source_system, source_prefix + suffix),
            )
        )
    return MappedMessage(
        message, tuple(records), patient_id, _unknown_segments(message), tuple(notes), True, (), source_system,
        control_id,
    )  # fmt: skip


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
    encounter_id = bounded_key(visit, SOURCE_SYSTEM_CHARS) if visit else f"{patient_id}/{ctx.control_id}"
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
