"""FHIR R4 resources (parsed JSON) to medtwin records.

Mapped: Patient, Observation (valueQuantity / valueCodeableConcept / valueString / valueInteger / valueBoolean,
components such as the blood-pressure panels 55284-4 and 85354-9), Condition, Encounter, MedicationRequest,
MedicationAdministration. Any other resource type, and an Observation whose value type medtwin does not model
(valueSampledData, valueRange, valueRatio, valuePeriod), comes back as :class:`Unmapped` so that the caller can
count it and keep it in the raw log. References are resolved through the bundle's ``fullUrl`` map
(``urn:uuid:...``), ``Type/id`` and absolute ``.../Type/id`` forms.

Conventions: the FHIR resource id is the medtwin record id (``patient_id``, ``observation_id``...), provenance is
(*source_system*, ``Type/id``). A quantity whose code has a canonical medtwin unit (``codes.CANONICAL_UNITS``) is
converted to it (an unparseable or incompatible unit is an error); other units are kept as written, and units
medtwin cannot parse are reported as warnings. A date without a time (``2020-01-05``, ``2020-01``, ``2020``) is
taken as midnight UTC of its first day; a time without a zone is an error (FHIR requires the zone).
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, cast

from medtwin import codes
from medtwin.errors import UnitError, ValidationError
from medtwin.interop.fhir.errors import FhirInputError
from medtwin.records import (
    Coding,
    Condition,
    Encounter,
    EncounterLocation,
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

__all__ = ["KNOWN_R4_TYPES", "MAPPED_TYPES", "ReferenceMap", "Unmapped", "map_resource", "parse_date", "parse_datetime"]

MAPPED_TYPES = frozenset(
    {"Patient", "Observation", "Condition", "Encounter", "MedicationRequest", "MedicationAdministration"}
)

# Every resource type of FHIR R4 (4.0.1): anything else in ``resourceType`` is an error, not "unmapped".
KNOWN_R4_TYPES = frozenset(
    """Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic
    Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry
    ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication
    CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage
    CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric
    DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis
    Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence
    EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group
    GuidanceResponse HealthcareService ImagingStudy Immunization ImmunizationEvaluation
    ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice Library Linkage List Location Measure
    MeasureReport Media Medication MedicationAdministration MedicationDispense MedicationKnowledge
    MedicationRequest MedicationStatement MedicinalProduct MedicinalProductAuthorization
    MedicinalProductContraindication MedicinalProductIndication MedicinalProductIngredient
    MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged
    MedicinalProductPharmaceutical MedicinalProductUndesirableEffect MessageDefinition MessageHeader
    MolecularSequence NamingSystem NutritionOrder Observation ObservationDefinition OperationDefinition
    OperationOutcome Organization OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation
    Person PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse
    RelatedPerson RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
    RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
    StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid SubstancePolymer
    SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification SupplyDelivery
    SupplyRequest Task TerminologyCapabilities TestReport TestScript ValueSet VerificationResult
    VisionPrescription""".split()  # noqa: SIM905
)

ReferenceMap = Mapping[str, tuple[str, str]]
"""fullUrl (or ``Type/id``) -> (resource type, resource id), built from a bundle's entries."""

_DATETIME = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<time>\d{2}:\d{2}(:\d{2}(\.\d+)?)?)(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_UNIT_HOURS = {"s": 1 / 3600, "min": 1 / 60, "h": 1.0, "d": 24.0, "wk": 168.0}
_ANALYTE = {
    codes.GLUCOSE_BLOOD.code: "glucose",
    codes.GLUCOSE_SERUM.code: "glucose",
    codes.GLUCOSE_INTERSTITIAL.code: "glucose",
    codes.CREATININE_SERUM.code: "creatinine",
}
_UNSUPPORTED_VALUES = ("valueSampledData", "valueRange", "valueRatio", "valuePeriod", "valueAttachment")


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A resource medtwin does not turn into a record: its type (or type and reason) for the report."""

    label: str


@dataclass(slots=True)
class _Ctx:
    source_system: str
    refs: ReferenceMap
    rtype: str
    rid: str
    warnings: list[str] = field(default_factory=list)
    patient_id_for: Callable[[str], str] | None = None

    def pid(self, fhir_id: str) -> str:
        """The medtwin patient id of the FHIR Patient *fhir_id* (keyed by the store's secret when given)."""
        return fhir_id if self.patient_id_for is None else self.patient_id_for(fhir_id)

    def fail(self, fld: str, problem: str) -> FhirInputError:
        return FhirInputError(problem, resource=f"{self.rtype}/{self.rid}", field=f"{self.rtype}.{fld}")


def parse_datetime(text: object, *, where: str = "dateTime") -> datetime:
    """A FHIR ``dateTime`` / ``instant`` as an aware UTC datetime (dates alone mean midnight UTC)."""
    if not isinstance(text, str):
        raise ValidationError(f"{where}: expected a date/time string, got {text!r}")
    m = _DATETIME.match(text)
    if m is None:
        raise ValidationError(f"{where}: {text!r} is not a FHIR date/time")
    try:
        if m["time"] is None:
            return datetime(int(m["y"]), int(m["m"] or 1), int(m["d"] or 1), tzinfo=UTC)
        if m["tz"] is None:
            raise ValidationError(f"{where}: {text!r} has a time but no time zone (FHIR requires one)")
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError(f"{where}: {text!r} is not a valid date/time ({exc})") from exc


def parse_date(text: object, *, where: str = "date") -> date:
    """A FHIR ``date`` (partial dates mean the first day of the month / year)."""
    if not isinstance(text, str) or "T" in text:
        raise ValidationError(f"{where}: {text!r} is not a FHIR date")
    return parse_datetime(text, where=where).date()


def _dt(ctx: _Ctx, res: Mapping[str, Any], key: str) -> datetime | None:
    value = res.get(key)
    if value is None:
        return None
    try:
        return parse_datetime(value, where="")
    except ValidationError as exc:
        raise ctx.fail(key, str(exc).lstrip(": ")) from None


def _coding(c: Mapping[str, Any]) -> Coding | None:
    system, code = c.get("system"), c.get("code")
    if not system or not code:
        return None
    return Coding(system=system, code=str(code), display=c.get("display"))


def _codings(cc: Any) -> list[Coding]:
    if not isinstance(cc, dict) or not isinstance(cc.get("coding"), list):
        return []
    return [c for c in (_coding(x) for x in cc["coding"] if isinstance(x, dict)) if c is not None]


def _first_coding(cc: Any, prefer: str | None = None) -> Coding | None:
    found = _codings(cc)
    if prefer is not None:
        for c in found:
            if c.system == prefer:
                return c
    return found[0] if found else None


def _required_coding(ctx: _Ctx, res: Mapping[str, Any], key: str, prefer: str | None = None) -> Coding:
    if key not in res:
        raise ctx.fail(key, "missing required element")
    coding = _first_coding(res[key], prefer)
    if coding is None:
        raise ctx.fail(key, "no coding with both system and code")
    return coding


def _ref(ctx: _Ctx, res: Mapping[str, Any], key: str, expect: str | None = None) -> str | None:
    """The id of the resource *res[key]* refers to (through the bundle's fullUrl map when needed)."""
    value = res.get(key)
    if value is None:
        return None
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str) or not ref:
        raise ctx.fail(f"{key}.reference", f"expected a reference string, got {value!r}")
    if ref in ctx.refs:
        rtype, rid = ctx.refs[ref]
    elif ref.startswith("urn:"):
        raise ctx.fail(f"{key}.reference", f"{ref} does not resolve to any entry of the bundle")
    elif ref.startswith("#"):
        return ref[1:]
    else:
        parts = ref.rstrip("/").split("/")
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) < 2:
            raise ctx.fail(f"{key}.reference", f"{ref!r} is not a Type/id reference")
        rtype, rid = parts[-2], parts[-1]
    if expect is not None and rtype != expect:
        raise ctx.fail(f"{key}.reference", f"{ref} refers to a {rtype}, expected a {expect}")
    return rid


def _status(ctx: _Ctx, res: Mapping[str, Any]) -> str:
    status = res.get("status")
    if not isinstance(status, str) or not status:
        raise ctx.fail("status", "missing required element")
    return status


def _subject(ctx: _Ctx, res: Mapping[str, Any], key: str = "subject") -> str:
    pid = _ref(ctx, res, key, expect="Patient")
    if pid is None:
        raise ctx.fail(key, "missing required element (the patient)")
    return ctx.pid(pid)


def _quantity(ctx: _Ctx, q: Any, fld: str, code: Coding | None = None) -> Quantity:
    if not isinstance(q, dict):
        raise ctx.fail(fld, f"expected a Quantity, got {q!r}")
    value = q.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.fail(f"{fld}.value", f"expected a number, got {value!r}")
    unit = q.get("code") if q.get("system") in (None, codes.UCUM) and q.get("code") else q.get("unit")
    if unit is None:
        unit = "1"
    if not isinstance(unit, str):
        raise ctx.fail(f"{fld}.unit", f"expected a unit string, got {unit!r}")
    canonical = codes.canonical_unit(code) if code is not None else None
    if canonical is not None:
        if unit != canonical:
            target = codes.normalise_to_loinc(code) if code is not None else None
            analyte = _ANALYTE.get(target.code) if target is not None else None
            try:
                value = codes.convert(float(value), unit, canonical, analyte=analyte)
            except UnitError as exc:
                where = f"{code.system}|{code.code}" if code is not None else "this code"
                raise ctx.fail(f"{fld}.code", f"unit {unit!r} cannot be used for {where}: {exc}") from None
            unit = canonical
    elif not _parses(unit):
        ctx.warnings.append(
            f"{ctx.rtype}/{ctx.rid} {fld}: unit {unit!r} is not UCUM medtwin can parse; kept as written"
        )
    return Quantity(value=value, unit=unit)


def _parses(unit: str) -> bool:
    try:
        codes.conversion_factor(unit, unit)
    except UnitError:
        return False
    return True


def _obs_value(ctx: _Ctx, res: Mapping[str, Any], code: Coding, fld_prefix: str = "") -> ObservationValue:
    if "valueQuantity" in res:
        return _quantity(ctx, res["valueQuantity"], fld_prefix + "valueQuantity", code)
    if "valueCodeableConcept" in res:
        coding = _first_coding(res["valueCodeableConcept"])
        if coding is None:
            text = res["valueCodeableConcept"].get("text")
            if isinstance(text, str):
                return text
            raise ctx.fail(fld_prefix + "valueCodeableConcept", "no coding with both system and code, and no text")
        return coding
    if "valueString" in res:
        return str(res["valueString"])
    if "valueInteger" in res:
        return _quantity(ctx, {"value": res["valueInteger"], "code": "1"}, fld_prefix + "valueInteger", code)
    if "valueBoolean" in res:
        return "true" if res["valueBoolean"] else "false"
    if "valueDateTime" in res:
        return str(res["valueDateTime"])
    if "valueTime" in res:
        return str(res["valueTime"])
    return None


def _patient(ctx: _Ctx, res: Mapping[str, Any]) -> Patient:
    gender = res.get("gender")
    if gender not in (None, "male", "female", "other", "unknown"):
        raise ctx.fail("gender", f"{gender!r} is not one of male/female/other/unknown")
    birth = res.get("birthDate")
    try:
        birth_date = None if birth is None else parse_date(birth, where="")
    except ValidationError as exc:
        raise ctx.fail("birthDate", str(exc).lstrip(": ")) from None
    names = res.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    identity = PatientIdentity(
        identifiers=tuple(
            Identifier(system=i.get("system"), value=str(i["value"]), type_code=_type_code(i))
            for i in res.get("identifier") or ()
            if i.get("value") is not None and not str(i.get("system", "")).startswith("urn:medtwin:source:")
        ),
        family=name.get("family"),
        given=tuple(name.get("given") or ()),
        telecom=tuple(str(t["value"]) for t in res.get("telecom") or () if t.get("value")),
        address=_address(res.get("address") or []),
    )
    return Patient(
        patient_id=ctx.pid(ctx.rid),
        gender=gender,
        birth_date=birth_date,
        deceased=_dt(ctx, res, "deceasedDateTime"),
        identity=identity,
        provenance=Provenance(source_system=ctx.source_system, source_id=f"Patient/{ctx.pid(ctx.rid)}"),
    )


def _type_code(identifier: Mapping[str, Any]) -> str | None:
    for c in (identifier.get("type") or {}).get("coding") or ():
        if c.get("code"):
            return str(c["code"])
    return None


def _address(addresses: list[Mapping[str, Any]]) -> str | None:
    if not addresses:
        return None
    a = addresses[0]
    if a.get("text"):
        return str(a["text"])
    parts = [*a.get("line", ()), a.get("city"), " ".join(x for x in (a.get("state"), a.get("postalCode")) if x)]
    parts.append(a.get("country"))
    return ", ".join(p for p in parts if p) or None


def _has_comparator(element: Any) -> bool:
    """True when *element* (a resource or component) has a ``valueQuantity`` with a comparator (``<``, ``>=``...)."""
    quantity = element.get("valueQuantity") if isinstance(element, Mapping) else None
    return isinstance(quantity, Mapping) and quantity.get("comparator") is not None


def _observation(ctx: _Ctx, res: Mapping[str, Any]) -> Observation | Unmapped:
    for key in _UNSUPPORTED_VALUES:
        if key in res:
            return Unmapped(f"Observation({key})")
    # medtwin's Quantity has no comparator: "<0.3" must not become the exact value 0.3
    if _has_comparator(res):
        return Unmapped("Observation(valueQuantity.comparator)")
    all_codes = _codings(res.get("code"))
    if "code" not in res:
        raise ctx.fail("code", "missing required element")
    if not all_codes:
        raise ctx.fail("code", "no coding with both system and code")
    primary = next((c for c in all_codes if c.system == codes.LOINC), all_codes[0])
    effective = _dt(ctx, res, "effectiveDateTime") or _dt(ctx, res, "effectiveInstant")
    if effective is None and isinstance(res.get("effectivePeriod"), Mapping):
        effective = _dt(ctx, res["effectivePeriod"], "start")
    if effective is None:
        effective = _dt(ctx, res, "issued")
    if effective is None:
        raise ctx.fail("effective[x]", "missing (medtwin needs the time of the observation)")
    components = []
    for i, comp in enumerate(res.get("component") or ()):
        unsupported = next((k for k in _UNSUPPORTED_VALUES if k in comp), None)
        if unsupported is not None:
            return Unmapped(f"Observation(component.{unsupported})")
        if _has_comparator(comp):
            return Unmapped("Observation(component.valueQuantity.comparator)")
        ccode = _first_coding(comp.get("code"), prefer=codes.LOINC)
        if ccode is None:
            raise ctx.fail(f"component[{i}].code", "no coding with both system and code")
        components.append(ObservationComponent(code=ccode, value=_obs_value(ctx, comp, ccode, f"component[{i}].")))
    category = None
    for cat in res.get("category") or ():
        coding = _first_coding(cat)
        if coding is not None:
            category = coding.code
            break
    device = res.get("device")
    return Observation(
        patient_id=_subject(ctx, res),
        code=primary,
        effective=effective,
        value=_obs_value(ctx, res, primary),
        components=tuple(components),
        status=_status(ctx, res),
        category=category,
        device=(device.get("display") or _ref(ctx, res, "device")) if isinstance(device, dict) else None,
        encounter_id=_ref(ctx, res, "encounter", expect="Encounter"),
        observation_id=ctx.rid,
        alt_codes=tuple(c for c in all_codes if c is not primary),
        derived_from=tuple(
            rid
            for i, d in enumerate(res.get("derivedFrom") or ())
            if (rid := _ref(ctx, {f"derivedFrom[{i}]": d}, f"derivedFrom[{i}]")) is not None
        ),
        provenance=Provenance(source_system=ctx.source_system, source_id=f"Observation/{ctx.rid}"),
    )


def _condition(ctx: _Ctx, res: Mapping[str, Any]) -> Condition:
    status = _first_coding(res.get("clinicalStatus"))
    return Condition(
        condition_id=ctx.rid,
        patient_id=_subject(ctx, res),
        code=_required_coding(ctx, res, "code", prefer=codes.SNOMED),
        clinical_status=status.code if status else "active",
        onset=_dt(ctx, res, "onsetDateTime"),
        abatement=_dt(ctx, res, "abatementDateTime"),
        recorded=_dt(ctx, res, "recordedDate"),
        encounter_id=_ref(ctx, res, "encounter", expect="Encounter"),
        provenance=Provenance(source_system=ctx.source_system, source_id=f"Condition/{ctx.rid}"),
    )


def _encounter(ctx: _Ctx, res: Mapping[str, Any]) -> Encounter:
    period = res.get("period") or {}
    start = _dt(ctx, period, "start")
    if start is None:
        raise ctx.fail("period.start", "missing (medtwin needs the start of the encounter)")
    cls = res.get("class")
    if not isinstance(cls, dict) or not cls.get("code"):
        raise ctx.fail("class", "missing required element (class.code, e.g. EMER, IMP, AMB)")
    locations = []
    for i, loc in enumerate(res.get("location") or ()):
        target = loc.get("location") or {}
        unit = target.get("display") or _ref(ctx, {"location": target}, "location")
        lp = loc.get("period") or {}
        lstart = _dt(ctx, lp, "start") or start
        if unit is None:
            raise ctx.fail(f"location[{i}].location", "missing (needs a display or a reference)")
        locations.append(EncounterLocation(unit=unit, start=lstart, end=_dt(ctx, lp, "end")))
    try:
        return Encounter(
            encounter_id=ctx.rid,
            patient_id=_subject(ctx, res),
            status=_status(ctx, res),
            class_code=str(cls["code"]),
            start=start,
            end=_dt(ctx, period, "end"),
            locations=tuple(locations),
            type=_first_coding((res.get("type") or [None])[0]),
            reason=_first_coding((res.get("reasonCode") or [None])[0]),
            disposition=_first_coding((res.get("hospitalization") or {}).get("dischargeDisposition")),
            provenance=Provenance(source_system=ctx.source_system, source_id=f"Encounter/{ctx.rid}"),
        )
    except ValidationError as exc:
        if isinstance(exc, FhirInputError):
            raise
        raise ctx.fail("period", str(exc)) from None


def _medication(ctx: _Ctx, res: Mapping[str, Any], contained: Mapping[str, Any]) -> Coding:
    if "medicationCodeableConcept" in res:
        return _required_coding(ctx, res, "medicationCodeableConcept")
    if "medicationReference" in res:
        ref = res["medicationReference"].get("reference", "")
        med = contained.get(ref)
        if med is not None:
            coding = _first_coding(med.get("code"))
            if coding is not None:
                return coding
        display = res["medicationReference"].get("display")
        if display:
            return Coding(system="urn:medtwin:medication-text", code=str(display), display=str(display))
        raise ctx.fail("medicationReference", f"{ref!r} is not a Medication in this bundle (and has no display)")
    raise ctx.fail("medication[x]", "missing required element")


def _hours(ctx: _Ctx, value: Any, unit: Any, fld: str) -> float | None:
    if value is None:
        return None
    if unit not in _UNIT_HOURS:
        raise ctx.fail(fld, f"unit {unit!r} is not one of {', '.join(_UNIT_HOURS)}")
    return float(value) * _UNIT_HOURS[unit]


def _medication_request(ctx: _Ctx, res: Mapping[str, Any], contained: Mapping[str, Any]) -> MedicationRequest:
    intent = res.get("intent")
    if intent not in ("proposal", "plan", "order", "original-order", "instance-order"):
        raise ctx.fail("intent", f"{intent!r} is not proposal/plan/order/original-order/instance-order")
    dosage = (res.get("dosageInstruction") or [{}])[0]
    rep = (dosage.get("timing") or {}).get("repeat") or {}
    interval_h = _hours(ctx, rep.get("period"), rep.get("periodUnit"), "dosageInstruction[0].timing.repeat.period")
    if interval_h is not None and rep.get("frequency"):
        interval_h /= float(rep["frequency"])
    dr = (dosage.get("doseAndRate") or [{}])[0]
    where = "dosageInstruction[0].doseAndRate[0]."
    bounds = rep.get("boundsPeriod") or {}
    notes = [str(n["text"]) for n in res.get("note") or () if n.get("text")]
    return MedicationRequest(
        request_id=ctx.rid,
        patient_id=_subject(ctx, res),
        medication=_medication(ctx, res, contained),
        intent=intent,
        status=_status(ctx, res),
        authored=_dt(ctx, res, "authoredOn"),
        dose=_quantity(ctx, dr["doseQuantity"], where + "doseQuantity") if "doseQuantity" in dr else None,
        route=_first_coding(dosage.get("route")),
        interval_h=interval_h,
        infusion_duration_h=_hours(
            ctx, rep.get("duration"), rep.get("durationUnit"), "dosageInstruction[0].timing.repeat.duration"
        ),
        rate=_quantity(ctx, dr["rateQuantity"], where + "rateQuantity") if "rateQuantity" in dr else None,
        start=_dt(ctx, bounds, "start"),
        number_of_doses=int(rep["count"]) if rep.get("count") is not None else None,
        note="\n".join(notes) or None,
        encounter_id=_ref(ctx, res, "encounter", expect="Encounter"),
        provenance=Provenance(source_system=ctx.source_system, source_id=f"MedicationRequest/{ctx.rid}"),
    )


def _medication_administration(
    ctx: _Ctx, res: Mapping[str, Any], contained: Mapping[str, Any]
) -> MedicationAdministration:
    start = _dt(ctx, res, "effectiveDateTime")
    end = None
    if start is None and isinstance(res.get("effectivePeriod"), Mapping):
        start = _dt(ctx, res["effectivePeriod"], "start")
        end = _dt(ctx, res["effectivePeriod"], "end")
    if start is None:
        raise ctx.fail("effective[x]", "missing required element")
    dosage = res.get("dosage") or {}
    request = res.get("request")
    return MedicationAdministration(
        administration_id=ctx.rid,
        patient_id=_subject(ctx, res),
        medication=_medication(ctx, res, contained),
        start=start,
        end=end,
        dose=_quantity(ctx, dosage["dose"], "dosage.dose") if "dose" in dosage else None,
        route=_first_coding(dosage.get("route")),
        rate=_quantity(ctx, dosage["rateQuantity"], "dosage.rateQuantity") if "rateQuantity" in dosage else None,
        status=_status(ctx, res),
        encounter_id=_ref(ctx, res, "context", expect="Encounter"),
        request_id=_ref(ctx, {"request": request}, "request") if request else None,
        provenance=Provenance(source_system=ctx.source_system, source_id=f"MedicationAdministration/{ctx.rid}"),
    )


def map_resource(
    resource: Any,
    *,
    source_system: str = "fhir",
    refs: ReferenceMap | None = None,
    medications: Mapping[str, Any] | None = None,
    warnings: list[str] | None = None,
    fallback_id: str | None = None,
    patient_id_for: Callable[[str], str] | None = None,
) -> Record | Unmapped:
    """The medtwin record for one FHIR R4 *resource* (a parsed JSON object), or :class:`Unmapped`.

    Parameters
    ----------
    resource
        The resource as parsed JSON.
    source_system
        Provenance source system of the records.
    refs
        fullUrl -> (type, id) of the enclosing bundle's entries, for ``urn:uuid:`` references.
    medications
        Medication resources by reference string (``urn:uuid:...``, ``Medication/id``, ``#id``).
    warnings
        A list that receives non-fatal notes (units kept as written).
    fallback_id
        The id to use when the resource has none (e.g. the uuid of its ``fullUrl``).
    patient_id_for
        FHIR Patient id -> medtwin patient id (the store's keyed pseudonym: a FHIR logical id is often the MRN
        itself, Synthea's is); None keeps the FHIR id.

    Raises
    ------
    FhirInputError
        Naming the resource and field when it is not valid input.
    """
    if not isinstance(resource, dict):
        raise FhirInputError(f"expected a JSON object, got {type(resource).__name__}")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise FhirInputError("missing resourceType", field="resourceType")
    rid = resource.get("id") or fallback_id
    if rid is not None and not isinstance(rid, str):
        raise FhirInputError(f"expected a string id, got {rid!r}", resource=str(rtype), field=f"{rtype}.id")
    if rtype not in KNOWN_R4_TYPES:
        raise FhirInputError(f"unknown resourceType {rtype!r}", resource=f"{rtype}/{rid}", field="resourceType")
    if rtype not in MAPPED_TYPES:
        return Unmapped(rtype)
    if not isinstance(rid, str) or not rid:
        raise FhirInputError("missing id (and no fullUrl to take it from)", resource=rtype, field=f"{rtype}.id")
    ctx = _Ctx(source_system=source_system, refs=refs or {}, rtype=rtype, rid=rid, patient_id_for=patient_id_for)
    # its own contained Medications, then the bundle's: looked up, never copied (a copy of the bundle's for each
    # MedicationRequest made N Medications + N MedicationRequests take quadratic time)
    own = {
        f"#{c['id']}": c
        for c in (resource.get("contained") or ())
        if isinstance(c, dict) and c.get("resourceType") == "Medication" and c.get("id")
    }
    contained: Mapping[str, Any] = ChainMap(own, cast("dict[str, Any]", medications)) if medications else own
    try:
        record: Record | Unmapped
        if rtype == "Patient":
            record = _patient(ctx, resource)
        elif rtype == "Observation":
            record = _observation(ctx, resource)
        elif rtype == "Condition":
            record = _condition(ctx, resource)
        elif rtype == "Encounter":
            record = _encounter(ctx, resource)
        elif rtype == "MedicationRequest":
            record = _medication_request(ctx, resource, contained)
        else:
            record = _medication_administration(ctx, resource, contained)
    except FhirInputError:
        raise
    except (ValidationError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FhirInputError(f"{type(exc).__name__}: {exc}", resource=f"{rtype}/{rid}") from exc
    if warnings is not None:
        warnings.extend(ctx.warnings)
    return record
