"""Canonical, immutable records that twins consume and produce (floor 0: no I/O).

Every record is a frozen, slotted, keyword-only dataclass. Times are timezone-aware and normalised to UTC on
construction; a naive datetime is refused. Direct identifiers of a patient (names, MRN, address, phone) live in
:class:`PatientIdentity`, apart from the clinical :class:`Patient` record, so that clinical data can be keyed by a
pseudonymous ``patient_id`` alone. Each record carries an optional :class:`Provenance` (source system + source id),
which the store uses to make loading idempotent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, TypeAlias

from medtwin.errors import ValidationError

__all__ = [
    "Coding",
    "Condition",
    "Encounter",
    "EncounterLocation",
    "Event",
    "EventKind",
    "EventStatus",
    "FrozenMap",
    "Identifier",
    "MedicationAdministration",
    "MedicationRequest",
    "Observation",
    "ObservationComponent",
    "ObservationValue",
    "Patient",
    "PatientIdentity",
    "Provenance",
    "Quantity",
    "Record",
    "new_id",
    "utc",
]


def utc(value: datetime, *, field_name: str = "time") -> datetime:
    """Return *value* converted to UTC; refuse a naive datetime (its zone would be a guess)."""
    if not isinstance(value, datetime):
        raise ValidationError(f"{field_name}: expected a datetime, got {type(value).__name__} {value!r}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValidationError(
            f"{field_name}: datetime {value.isoformat()} has no time zone; medtwin needs timezone-aware times"
        )
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None, field_name: str) -> datetime | None:
    return None if value is None else utc(value, field_name=field_name)


def new_id() -> str:
    """A new identifier: a time-ordered UUID, version 7 (RFC 9562, section 5.7), as 32 hex digits.

    48 bits of Unix time in milliseconds, then the version, 74 random bits and the variant. Ids made later sort
    later, so a database inserts them near the end of its primary-key index; random UUID4 ids land on a random page
    of an index that keeps growing (events, the twins' NEWS2 observations), which spreads every commit and
    checkpoint over more and more pages (docs/store.md, "Record ids").
    """
    millis = time.time_ns() // 1_000_000 & _MILLIS_MASK
    rand = int.from_bytes(os.urandom(10), "big")  # 80 random bits: the top 12 are rand_a, the low 62 rand_b
    return f"{millis << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | rand & _RAND_B_MASK:032x}"


_MILLIS_MASK = (1 << 48) - 1
_RAND_B_MASK = (1 << 62) - 1


def _require(value: str, field_name: str, record: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{record}.{field_name}: a non-empty string is required, got {value!r}")


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Coding:
    """A code from a code system (LOINC, SNOMED CT, UCUM, ISO/IEEE 11073 MDC, ...)."""

    system: str
    code: str
    display: str | None = None

    def __post_init__(self) -> None:
        _require(self.system, "system", "Coding")
        _require(self.code, "code", "Coding")

    def same_concept(self, other: Coding) -> bool:
        """True when *other* has the same system and code (display text is ignored)."""
        return self.system == other.system and self.code == other.code


@dataclass(frozen=True, slots=True, kw_only=True)
class Quantity:
    """A numeric value with its UCUM unit code (``"mg/dL"``, ``"/min"``, ``"Cel"``...)."""

    value: float
    unit: str

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise ValidationError(f"Quantity.value: a number is required, got {self.value!r}")
        if self.value != self.value:
            raise ValidationError("Quantity.value: NaN is not a measurement")
        if not isinstance(self.unit, str):
            raise ValidationError(f"Quantity.unit: a UCUM unit string is required, got {self.unit!r}")
        _set(self, "value", float(self.value))

    @classmethod
    def prevalidated(cls, value: float, unit: str) -> Quantity:
        """A Quantity from a finite float and a unit string its caller has checked, without ``__post_init__``
        (hot mappers; the constructor's result for the same arguments compares equal)."""
        obj: Any = _QuantitySlots()  # as in Observation.prevalidated
        obj.value = value
        obj.unit = unit
        obj.__class__ = cls
        quantity: Quantity = obj
        return quantity


@dataclass(frozen=True, slots=True, kw_only=True)
class Provenance:
    """Where a record came from: the source system and the record's id there (the idempotency key)."""

    source_system: str
    source_id: str

    def __post_init__(self) -> None:
        _require(self.source_system, "source_system", "Provenance")
        _require(self.source_id, "source_id", "Provenance")

    @classmethod
    def prevalidated(cls, source_system: str, source_id: str) -> Provenance:
        """A Provenance from two strings its caller knows are non-empty, without ``__post_init__`` (hot mappers)."""
        obj: Any = _ProvenanceSlots()  # as in Observation.prevalidated
        obj.source_system = source_system
        obj.source_id = source_id
        obj.__class__ = cls
        provenance: Provenance = obj
        return provenance


@dataclass(frozen=True, slots=True, kw_only=True)
class Identifier:
    """A business identifier (MRN, SSN, driver's licence...) with the system that issued it."""

    system: str | None
    value: str
    type_code: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientIdentity:
    """Direct identifiers of a patient, kept apart from clinical data (encrypted at rest by the store)."""

    identifiers: tuple[Identifier, ...] = ()
    family: str | None = None
    given: tuple[str, ...] = ()
    telecom: tuple[str, ...] = ()
    address: str | None = None

    @property
    def display_name(self) -> str:
        """Given names then family name, or an empty string when none is known."""
        return " ".join([*self.given, *([self.family] if self.family else [])])


@dataclass(frozen=True, slots=True, kw_only=True)
class Patient:
    """A patient: pseudonymous id and clinical demographics, with the identity as a separate part."""

    patient_id: str
    gender: Literal["male", "female", "other", "unknown"] | None = None
    birth_date: date | None = None
    deceased: datetime | None = None
    identity: PatientIdentity | None = None
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        _require(self.patient_id, "patient_id", "Patient")
        if self.gender not in (None, "male", "female", "other", "unknown"):
            raise ValidationError(f"Patient.gender: {self.gender!r} is not one of male/female/other/unknown")
        _set(self, "deceased", _utc_or_none(self.deceased, "Patient.deceased"))

    @classmethod
    def prevalidated(
        cls,
        *,
        patient_id: str,
        gender: Literal["male", "female", "other", "unknown"] | None,
        birth_date: date | None,
        deceased: datetime | None,
        identity: PatientIdentity | None,
        provenance: Provenance | None,
    ) -> Patient:
        """A Patient from values its caller has already checked, without ``__post_init__`` (hot mappers only).

        The caller guarantees a non-empty *patient_id*, a valid *gender*, and *deceased* None or aware in UTC.
        """
        obj: Any = _PatientSlots()  # as in Observation.prevalidated
        obj.patient_id = patient_id
        obj.gender = gender
        obj.birth_date = birth_date
        obj.deceased = deceased
        obj.identity = identity
        obj.provenance = provenance
        obj.__class__ = cls
        patient: Patient = obj
        return patient

    def age_years(self, at: datetime) -> float | None:
        """Age in years (365.25-day years) at *at*, or None when the birth date is unknown."""
        if self.birth_date is None:
            return None
        born = datetime(self.birth_date.year, self.birth_date.month, self.birth_date.day, tzinfo=UTC)
        return (utc(at) - born) / timedelta(days=365.25)


ObservationValue: TypeAlias = Quantity | Coding | str | None


def _check_value(value: object, where: str) -> None:
    if value is not None and not isinstance(value, Quantity | Coding | str):
        raise ValidationError(f"{where}: value must be a Quantity, Coding, str or None, got {type(value).__name__}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservationComponent:
    """One component of an observation (e.g. systolic pressure inside a blood-pressure panel)."""

    code: Coding
    value: ObservationValue = None

    def __post_init__(self) -> None:
        _check_value(self.value, f"ObservationComponent({self.code.code}).value")


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """A measurement or assessment about a patient at a point in time."""

    patient_id: str
    code: Coding
    effective: datetime
    value: ObservationValue = None
    components: tuple[ObservationComponent, ...] = ()
    status: str = "final"
    category: str | None = None
    device: str | None = None
    encounter_id: str | None = None
    observation_id: str = field(default_factory=new_id)
    alt_codes: tuple[Coding, ...] = ()
    derived_from: tuple[str, ...] = ()
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        _require(self.patient_id, "patient_id", "Observation")
        _require(self.observation_id, "observation_id", "Observation")
        _set(
            self,
            "effective",
            utc(self.effective, field_name=f"Observation({self.code.code}).effective"),
        )
        _check_value(self.value, f"Observation({self.code.code}).value")
        _set(self, "components", tuple(self.components))
        _set(self, "alt_codes", tuple(self.alt_codes))
        _set(self, "derived_from", tuple(self.derived_from))

    @classmethod
    def prevalidated(
        cls,
        *,
        patient_id: str,
        code: Coding,
        effective: datetime,
        value: ObservationValue,
        status: str,
        category: str | None,
        device: str | None,
        encounter_id: str | None,
        observation_id: str,
        alt_codes: tuple[Coding, ...],
        provenance: Provenance | None,
    ) -> Observation:
        """An Observation built from values its caller has already checked, without ``__post_init__``.

        For mappers on a hot path only (``medtwin.interop.hl7v2``): the caller guarantees what the constructor
        would check and normalise, namely non-empty *patient_id* and *observation_id*, *effective* aware and in
        UTC (``tzinfo`` is ``datetime.UTC``), *value* a Quantity, Coding, str or None, and *alt_codes* a tuple.
        Everything else should call the constructor. No components, no ``derived_from``.
        """
        # Filled as a plain slotted object, then given its class: the frozen dataclass's __init__ (or even its slot
        # descriptors) would cost three times as much. _ObservationSlots has Observation's exact slot layout, which
        # is what CPython requires to assign __class__.
        obj: Any = _ObservationSlots()
        obj.patient_id = patient_id
        obj.code = code
        obj.effective = effective
        obj.value = value
        obj.components = ()
        obj.status = status
        obj.category = category
        obj.device = device
        obj.encounter_id = encounter_id
        obj.observation_id = observation_id
        obj.alt_codes = alt_codes
        obj.derived_from = ()
        obj.provenance = provenance
        obj.__class__ = cls
        observation: Observation = obj
        return observation

    def has_code(self, coding: Coding) -> bool:
        """True when the primary code or any alternative code is the same concept as *coding*."""
        return self.code.same_concept(coding) or any(c.same_concept(coding) for c in self.alt_codes)

    def component(self, coding: Coding) -> ObservationComponent | None:
        """The first component coded as *coding*, or None."""
        return next((c for c in self.components if c.code.same_concept(coding)), None)


class _PatientSlots:
    """Patient's slots, mutable and unchecked: the object :meth:`Patient.prevalidated` fills."""

    __slots__ = Patient.__slots__


class _ObservationSlots:
    """Observation's slots, mutable and unchecked: the object :meth:`Observation.prevalidated` fills."""

    __slots__ = Observation.__slots__


class _QuantitySlots:
    """Quantity's slots, mutable and unchecked: the object :meth:`Quantity.prevalidated` fills."""

    __slots__ = Quantity.__slots__


class _ProvenanceSlots:
    """Provenance's slots, mutable and unchecked: the object :meth:`Provenance.prevalidated` fills."""

    __slots__ = Provenance.__slots__


@dataclass(frozen=True, slots=True, kw_only=True)
class EncounterLocation:
    """A stay in one unit (ED, ward, ICU...) during an encounter."""

    unit: str
    start: datetime
    end: datetime | None = None
    bed: str | None = None

    def __post_init__(self) -> None:
        _require(self.unit, "unit", "EncounterLocation")
        _set(self, "start", utc(self.start, field_name="EncounterLocation.start"))
        _set(self, "end", _utc_or_none(self.end, "EncounterLocation.end"))
        if self.end is not None and self.end < self.start:
            raise ValidationError(f"EncounterLocation({self.unit}): end {self.end} is before start {self.start}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Encounter:
    """A contact between a patient and the hospital (emergency visit, inpatient stay, ambulatory visit).

    ``disposition`` is where the patient went when the encounter ended (FHIR R4
    ``Encounter.hospitalization.dischargeDisposition``, HL7 v2 PV1-36 discharge disposition, table 0112);
    see the ``DISCHARGE_*`` codings in :mod:`medtwin.codes`. None when unknown or still open.
    """

    encounter_id: str
    patient_id: str
    status: str
    class_code: str
    start: datetime
    end: datetime | None = None
    locations: tuple[EncounterLocation, ...] = ()
    type: Coding | None = None
    reason: Coding | None = None
    disposition: Coding | None = None
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        _require(self.encounter_id, "encounter_id", "Encounter")
        _require(self.patient_id, "patient_id", "Encounter")
        _set(self, "start", utc(self.start, field_name=f"Encounter({self.encounter_id}).start"))
        _set(self, "end", _utc_or_none(self.end, f"Encounter({self.encounter_id}).end"))
        if self.end is not None and self.end < self.start:
            raise ValidationError(f"Encounter({self.encounter_id}): end {self.end} is before start {self.start}")
        _set(self, "locations", tuple(self.locations))

    @property
    def length_of_stay_h(self) -> float | None:
        """Length of stay in hours, or None while the encounter is open."""
        return None if self.end is None else (self.end - self.start) / timedelta(hours=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """A problem or diagnosis."""

    condition_id: str
    patient_id: str
    code: Coding
    clinical_status: str = "active"
    onset: datetime | None = None
    abatement: datetime | None = None
    recorded: datetime | None = None
    encounter_id: str | None = None
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        _require(self.condition_id, "condition_id", "Condition")
        _require(self.patient_id, "patient_id", "Condition")
        for name in ("onset", "abatement", "recorded"):
            _set(self, name, _utc_or_none(getattr(self, name), f"Condition.{name}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class MedicationRequest:
    """An order or a proposal for a medication regimen."""

    request_id: str
    patient_id: str
    medication: Coding
    intent: Literal["proposal", "plan", "order", "original-order", "instance-order"] = "order"
    status: str = "active"
    authored: datetime | None = None
    dose: Quantity | None = None
    route: Coding | None = None
    interval_h: float | None = None
    infusion_duration_h: float | None = None
    rate: Quantity | None = None
    start: datetime | None = None
    number_of_doses: int | None = None
    note: str | None = None
    encounter_id: str | None = None
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        _require(self.request_id, "request_id", "MedicationRequest")
        _require(self.patient_id, "patient_id", "MedicationRequest")
        _set(self, "authored", _utc_or_none(self.authored, "MedicationRequest.authored"))
        _set(self, "start", _utc_or_none(self.start, "MedicationRequest.start"))
        for name in ("interval_h", "infusion_duration_h"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValidationError(f"MedicationRequest.{name}: must be positive, got {value}")
        if self.dose is not None and self.dose.value < 0:
            raise ValidationError(f"MedicationRequest.dose: negative amount {self.dose.value} {self.dose.unit}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MedicationAdministration:
    """A dose actually given: amount, route, and for infusions the rate and the start/end times."""

    administration_id: str
    patient_id: str
    medication: Coding
    start: datetime
    end: datetime | None = None
    dose: Quantity | None = None
    route: Coding | None = None
    rate: Quantity | None = None
    status: str = "completed"
    encounter_id: str | None = None
    request_id: str | None = None
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        _require(self.administration_id, "administration_id", "MedicationAdministration")
        _require(self.patient_id, "patient_id", "MedicationAdministration")
        _set(self, "start", utc(self.start, field_name="MedicationAdministration.start"))
        _set(self, "end", _utc_or_none(self.end, "MedicationAdministration.end"))
        if self.end is not None and self.end < self.start:
            raise ValidationError(f"MedicationAdministration({self.administration_id}): end is before start")
        if self.dose is not None and self.dose.value < 0:
            raise ValidationError(
                f"MedicationAdministration({self.administration_id}).dose: negative amount {self.dose.value}"
            )

    @property
    def infusion_duration_h(self) -> float | None:
        """Infusion duration in hours (end - start), or None for a bolus / unknown end."""
        if self.end is None or self.end == self.start:
            return None
        return (self.end - self.start) / timedelta(hours=1)


class FrozenMap(Mapping[str, Any]):
    """A read-only, picklable, hashable-by-identity mapping for record payloads."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items: dict[str, Any] = dict(items or {})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"

    def __reduce__(self) -> tuple[type[FrozenMap], tuple[dict[str, Any]]]:
        return (FrozenMap, (self._items,))


EventKind: TypeAlias = Literal["alert", "derived", "recommendation"]
EventStatus: TypeAlias = Literal["active", "acknowledged", "resolved"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something a twin produced: an alert, a derived value or a recommendation."""

    kind: EventKind
    code: str
    time: datetime
    message: str
    patient_id: str | None = None
    severity: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    status: EventStatus = "active"
    source: str | None = None
    event_id: str = field(default_factory=new_id)
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("alert", "derived", "recommendation"):
            raise ValidationError(f"Event.kind: {self.kind!r} is not alert/derived/recommendation")
        if self.status not in ("active", "acknowledged", "resolved"):
            raise ValidationError(f"Event.status: {self.status!r} is not active/acknowledged/resolved")
        _require(self.code, "code", "Event")
        _set(self, "time", utc(self.time, field_name=f"Event({self.code}).time"))
        _set(self, "data", FrozenMap(self.data))


Record: TypeAlias = Patient | Observation | Encounter | Condition | MedicationRequest | MedicationAdministration | Event
