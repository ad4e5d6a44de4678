"""FHIR R4 -> records: Synthea bundles, official examples, conversions, and errors that name where."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from medtwin import codes
from medtwin.interop.fhir import FhirInputError, Unmapped, map_resource, parse_datetime, parse_payload
from medtwin.records import Coding, Condition, Encounter, MedicationRequest, Observation, Patient, Quantity

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
LIZ_ID = "ee9f8dd8-72d2-4769-8020-89e504b1504b"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def liz() -> dict[str, Any]:
    data: dict[str, Any] = load("synthea_liz_conn.json")
    return data


def test_synthea_bundle_maps_every_supported_resource_and_counts_the_rest(liz: dict[str, Any]) -> None:
    parsed = parse_payload(liz, file="liz.json")
    kinds: dict[str, int] = {}
    for r in parsed.records:
        kinds[type(r).__name__] = kinds.get(type(r).__name__, 0) + 1
    # INVENTORY.csv of the shared Synthea data: Observation=36; Encounter=7; Patient=1; Condition=1; MedicationRequest=1
    assert kinds == {"Patient": 1, "Observation": 36, "Encounter": 7, "Condition": 1, "MedicationRequest": 1}
    assert dict(parsed.unmapped) == {
        "Claim": 8,
        "ExplanationOfBenefit": 7,
        "Immunization": 4,
        "Procedure": 3,
        "DiagnosticReport": 2,
        "Organization": 1,
        "Practitioner": 1,
        "CarePlan": 1,
    }
    assert parsed.resources == 73
    assert parsed.warnings == []


def test_synthea_patient_and_references(liz: dict[str, Any]) -> None:
    records = parse_payload(liz).records
    patient = next(r for r in records if isinstance(r, Patient))
    assert patient.patient_id == LIZ_ID
    assert (patient.gender, patient.birth_date, patient.deceased) == ("female", date(1986, 11, 28), None)
    assert patient.identity is not None
    assert patient.identity.family is not None
    assert patient.identity.family.startswith("Conn")
    assert patient.provenance is not None
    assert patient.provenance.source_id == f"Patient/{LIZ_ID}"
    encounter_ids = {r.encounter_id for r in records if isinstance(r, Encounter)}
    for r in records:
        if isinstance(r, Observation | Condition | MedicationRequest | Encounter):
            assert r.patient_id == LIZ_ID  # urn:uuid: subject references resolved to the Patient's id
        if isinstance(r, Observation):
            assert r.encounter_id in encounter_ids


def test_synthea_blood_pressure_panel_has_systolic_and_diastolic(liz: dict[str, Any]) -> None:
    panels = [
        r
        for r in parse_payload(liz).records
        if isinstance(r, Observation) and r.code.same_concept(codes.BLOOD_PRESSURE_PANEL_OLD)
    ]
    assert len(panels) == 3  # INVENTORY.csv: BP panel 55284-4=3
    for bp in panels:
        systolic, diastolic = bp.component(codes.SYSTOLIC_BP), bp.component(codes.DIASTOLIC_BP)
        assert systolic is not None
        assert diastolic is not None
        assert isinstance(systolic.value, Quantity)
        assert isinstance(diastolic.value, Quantity)
        assert systolic.value.unit == diastolic.value.unit == "mm[Hg]"
        assert systolic.value.value > diastolic.value.value


def test_official_blood_pressure_example_85354_9() -> None:
    obs = map_resource(load("observation-example-bloodpressure.json"))
    assert isinstance(obs, Observation)
    assert obs.code.same_concept(codes.BLOOD_PRESSURE_PANEL)
    assert obs.patient_id == "example"
    assert obs.effective == datetime(2012, 9, 17, tzinfo=UTC)  # a date alone: midnight UTC
    systolic, diastolic = obs.component(codes.SYSTOLIC_BP), obs.component(codes.DIASTOLIC_BP)
    assert systolic is not None
    assert diastolic is not None
    assert systolic.value == Quantity(value=107, unit="mm[Hg]")
    assert diastolic.value == Quantity(value=60, unit="mm[Hg]")


def test_official_heart_rate_and_spo2_examples() -> None:
    hr = map_resource(load("observation-example-heart-rate.json"))
    assert isinstance(hr, Observation)
    assert hr.value == Quantity(value=44, unit="/min")  # the UCUM code wins over the display unit "beats/minute"
    spo2 = map_resource(load("observation-example-satO2.json"))
    assert isinstance(spo2, Observation)
    assert spo2.value == Quantity(value=95, unit="%")
    assert spo2.effective == datetime(2014, 12, 5, 8, 30, 10, tzinfo=UTC)  # +01:00 converted to UTC
    assert spo2.code.code == "2708-6"
    assert {c.code for c in spo2.alt_codes} == {"59408-5", "150456"}


def test_unmodelled_types_are_unmapped_not_dropped() -> None:
    assert map_resource(load("auditevent-example.json")) == Unmapped("AuditEvent")
    # the label names the value type that is not modelled (it used to say only "component value type")
    sampled = Unmapped("Observation(component.valueSampledData)")
    assert map_resource(load("observation-example-sample-data.json")) == sampled


def _obs(**extra: Any) -> dict[str, Any]:
    """A valid heart-rate Observation; keyword arguments replace elements (None removes one)."""
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": codes.LOINC, "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-01T10:00:00+02:00",
        "valueQuantity": {"value": 80, "system": codes.UCUM, "code": "/min"},
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def test_values_are_converted_to_the_canonical_unit() -> None:
    glucose = map_resource(
        _obs(
            code={"coding": [{"system": codes.LOINC, "code": "2345-7"}]},
            valueQuantity={"value": 5.5, "unit": "mmol/L", "system": codes.UCUM, "code": "mmol/L"},
        )
    )
    assert isinstance(glucose, Observation)
    assert isinstance(glucose.value, Quantity)
    assert glucose.value.unit == "mg/dL"
    assert glucose.value.value == pytest.approx(5.5 * 18.0156, rel=1e-4)
    temp = map_resource(
        _obs(
            code={"coding": [{"system": codes.LOINC, "code": "8310-5"}]},
            valueQuantity={"value": 98.6, "system": codes.UCUM, "code": "[degF]"},
        )
    )
    assert isinstance(temp, Observation)
    assert isinstance(temp.value, Quantity)
    assert temp.value.unit == "Cel"
    assert temp.value.value == pytest.approx(37.0)


def test_other_value_types() -> None:
    coded = map_resource(
        _obs(valueQuantity=None, valueCodeableConcept={"coding": [{"system": codes.SNOMED, "code": "248234008"}]})
    )
    assert isinstance(coded, Observation)
    assert coded.value == Coding(system=codes.SNOMED, code="248234008")
    text = map_resource(_obs(valueQuantity=None, valueString="alert"))
    assert isinstance(text, Observation)
    assert text.value == "alert"
    assert map_resource(_obs(valueRatio={})) == Unmapped("Observation(valueRatio)")


def test_medication_request_proposal_with_infusion_timing() -> None:
    mr = map_resource(
        {
            "resourceType": "MedicationRequest",
            "id": "mr1",
            "status": "draft",
            "intent": "proposal",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "11124"}]
            },
            "subject": {"reference": "Patient/p1"},
            "authoredOn": "2024-03-01T08:00:00Z",
            "dosageInstruction": [
                {
                    "timing": {
                        "repeat": {
                            "frequency": 2,
                            "period": 1,
                            "periodUnit": "d",
                            "duration": 90,
                            "durationUnit": "min",
                            "count": 4,
                            "boundsPeriod": {"start": "2024-03-01T09:00:00Z"},
                        }
                    },
                    "route": {"coding": [{"system": codes.SNOMED, "code": "47625008"}]},
                    "doseAndRate": [
                        {
                            "doseQuantity": {"value": 1250, "system": codes.UCUM, "code": "mg"},
                            "rateQuantity": {"value": 833.3, "system": codes.UCUM, "code": "mg/h"},
                        }
                    ],
                }
            ],
        }
    )
    assert isinstance(mr, MedicationRequest)
    assert (mr.intent, mr.interval_h, mr.infusion_duration_h, mr.number_of_doses) == ("proposal", 12.0, 1.5, 4)
    assert mr.dose == Quantity(value=1250, unit="mg")
    assert mr.rate == Quantity(value=833.3, unit="mg/h")
    assert mr.start == datetime(2024, 3, 1, 9, tzinfo=UTC)


def test_parse_datetime_forms() -> None:
    assert parse_datetime("2020") == datetime(2020, 1, 1, tzinfo=UTC)
    assert parse_datetime("2020-05") == datetime(2020, 5, 1, tzinfo=UTC)
    assert parse_datetime("2020-05-06T07:08:09.123Z") == datetime(2020, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    assert parse_datetime("2020-05-06T07:08:09-05:00") == datetime(2020, 5, 6, 12, 8, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"resourceType": "Observatoin"}, r"Observatoin/o1: resourceType: unknown resourceType 'Observatoin'"),
        ({"subject": None}, r"Observation/o1: Observation.subject: missing required element"),
        ({"status": None}, r"Observation/o1: Observation.status: missing required element"),
        ({"effectiveDateTime": "2024-13-45"}, r"Observation.effectiveDateTime: '2024-13-45' is not a valid date"),
        (
            {"effectiveDateTime": "2024-01-01T10:00:00"},
            r"Observation.effectiveDateTime: .* has a time but no time zone",
        ),
        ({"effectiveDateTime": "yesterday"}, r"Observation.effectiveDateTime: 'yesterday' is not a FHIR date/time"),
        (
            {"valueQuantity": {"value": 80, "unit": "beats per minute"}},
            r"Observation.valueQuantity.code: unit 'beats per minute' cannot be used",
        ),
        ({"valueQuantity": {"value": "80", "code": "/min"}}, r"Observation.valueQuantity.value: expected a number"),
        ({"code": {"text": "pulse"}}, r"Observation.code: no coding with both system and code"),
        ({"subject": {"reference": "urn:uuid:nowhere"}}, r"urn:uuid:nowhere does not resolve to any entry"),
        ({"subject": {"reference": "Group/g1"}}, r"Observation.subject.reference: Group/g1 refers to a Group"),
        # malformed structure names the field, not a Python AttributeError
        ({"code": {"coding": "8867-4"}}, r"Observation/o1: Observation.code: no coding with both system and code"),
        ({"code": {"coding": ["8867-4"]}}, r"Observation/o1: Observation.code: no coding with both system and code"),
        ({"id": 123}, r"Observation: Observation.id: expected a string id, got 123"),
        (
            {"valueQuantity": {"value": 80, "code": "furlongs"}},
            r"unit 'furlongs' cannot be used for http://loinc.org\|8867-4: ",
        ),
    ],
)
def test_bad_resources_name_the_resource_and_field(change: dict[str, Any], expected: str) -> None:
    resource = _obs(**change)
    with pytest.raises(FhirInputError, match=expected):
        map_resource(resource)


def test_errors_in_a_bundle_name_file_entry_resource_and_field(liz: dict[str, Any]) -> None:
    bad = copy.deepcopy(liz)
    idx = next(i for i, e in enumerate(bad["entry"]) if e["resource"]["resourceType"] == "Observation")
    obs_id = bad["entry"][idx]["resource"]["id"]
    bad["entry"][idx]["resource"]["effectiveDateTime"] = "2019-02-30T10:00:00Z"
    with pytest.raises(FhirInputError) as info:
        parse_payload(bad, file="liz.json")
    assert str(info.value).startswith(f"liz.json: entry {idx} (Observation/{obs_id}): Observation.effectiveDateTime:")
    assert (info.value.file, info.value.entry, info.value.field) == ("liz.json", idx, "Observation.effectiveDateTime")


def test_every_bad_entry_of_a_bundle_is_reported(liz: dict[str, Any]) -> None:
    bad = copy.deepcopy(liz)
    for e in bad["entry"]:
        if e["resource"]["resourceType"] == "Encounter":
            del e["resource"]["class"]
    with pytest.raises(FhirInputError, match=r"Encounter.class: missing required element .*\(and 6 more problem"):
        parse_payload(bad, file="liz.json")


@pytest.mark.parametrize(
    ("entry", "kind"), [({}, "a JSON object"), ("x", "a JSON string"), (None, "null"), (3, "a JSON number")]
)
def test_bundle_entry_must_be_a_list(entry: Any, kind: str) -> None:
    with pytest.raises(FhirInputError, match=rf"^b.json: Bundle.entry: must be a list of entries, got {kind}$") as info:
        parse_payload({"resourceType": "Bundle", "type": "collection", "entry": entry}, file="b.json")
    assert (info.value.file, info.value.field) == ("b.json", "Bundle.entry")


def test_unknown_resource_type_at_top_level() -> None:
    with pytest.raises(FhirInputError, match=r"x.json: Bogus/1: resourceType: unknown resourceType 'Bogus'"):
        parse_payload({"resourceType": "Bogus", "id": "1"}, file="x.json")


def test_a_value_with_a_comparator_is_not_stored_as_an_exact_number() -> None:
    """FHIR `valueQuantity.comparator` ("<0.3 mg/dL" creatinine, ">14 %" HbA1c): medtwin's Quantity has no
    comparator, and storing "<0.3" as 0.3 would be a wrong value, so such observations are unmapped (kept in the
    raw log and counted), like the other value types medtwin does not model."""
    below = _obs(valueQuantity={"value": 30, "comparator": "<", "system": codes.UCUM, "code": "/min"})
    assert map_resource(below) == Unmapped("Observation(valueQuantity.comparator)")
    panel = _obs(
        code={"coding": [{"system": codes.LOINC, "code": "85354-9"}]},
        valueQuantity=None,
        component=[
            {
                "code": {"coding": [{"system": codes.LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 250, "comparator": ">", "system": codes.UCUM, "code": "mm[Hg]"},
            }
        ],
    )
    assert map_resource(panel) == Unmapped("Observation(component.valueQuantity.comparator)")
    exact = map_resource(_obs(valueQuantity={"value": 30, "system": codes.UCUM, "code": "/min"}))
    assert isinstance(exact, Observation)
    assert exact.value == Quantity(value=30.0, unit="/min")


def test_conflicting_copies_of_one_resource_in_a_bundle_are_warned_about() -> None:
    """Records are unique on Type/id, so the first copy wins; a second copy with other content must not vanish
    without a word (an identical copy is harmless and not reported)."""
    first = _obs(id="dup")
    changed = _obs(id="dup", valueQuantity={"value": 99, "system": codes.UCUM, "code": "/min"})
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": first}, {"resource": copy.deepcopy(first)}, {"resource": changed}],
    }
    parsed = parse_payload(bundle, file="b.json")
    assert parsed.warnings == [
        "b.json: entry 2 (Observation/dup): same Observation/dup as entry 0 with different content; entry 0 is kept"
    ]
