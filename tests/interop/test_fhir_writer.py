"""Records -> FHIR R4: every record type, validated against fhirclient's R4 (4.0.1) models, and round trips."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhirclient.models.bundle import Bundle as R4Bundle
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.interop.fhir import ingest_file, map_resource, patient_bundle, to_fhir
from medtwin.records import (
    Coding,
    Condition,
    Encounter,
    EncounterLocation,
    Event,
    Identifier,
    MedicationAdministration,
    MedicationRequest,
    Observation,
    ObservationComponent,
    Patient,
    PatientIdentity,
    Provenance,
    Quantity,
    Record,
)
from medtwin.store import Store

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
VANCOMYCIN = Coding(system="http://www.nlm.nih.gov/research/umls/rxnorm", code="11124", display="Vancomycin")
IV = Coding(system=codes.SNOMED, code="47625008", display="Intravenous route")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"


def validate_r4(resource: dict[str, Any]) -> None:
    """Raise when *resource* is not valid against fhirclient's R4 model of its type (strict)."""
    FHIRElementFactory.instantiate(resource["resourceType"], resource)


def prov(rtype: str, rid: str) -> Provenance:
    return Provenance(source_system="fhir", source_id=f"{rtype}/{rid}")


def record_set() -> list[Record]:
    """One of every record type, with every optional part filled; provenance as the FHIR reader would set it."""
    return [
        Patient(
            patient_id="p1",
            gender="female",
            birth_date=date(1950, 5, 17),
            deceased=T0 + timedelta(days=3),
            identity=PatientIdentity(
                identifiers=(Identifier(system="urn:mrn", value="MRN-1", type_code="MR"),),
                family="Doe",
                given=("Jane", "Q"),
                telecom=("555-0100", "jane@example.org"),
                address="1 Main St, Springfield",
            ),
            provenance=prov("Patient", "p1"),
        ),
        Observation(
            patient_id="p1",
            code=codes.BLOOD_PRESSURE_PANEL,
            effective=T0,
            components=(
                ObservationComponent(code=codes.SYSTOLIC_BP, value=Quantity(value=120, unit="mm[Hg]")),
                ObservationComponent(code=codes.DIASTOLIC_BP, value=Quantity(value=80, unit="mm[Hg]")),
            ),
            category="vital-signs",
            encounter_id="e1",
            observation_id="obs-bp",
            alt_codes=(codes.BLOOD_PRESSURE_PANEL_OLD,),
            provenance=prov("Observation", "obs-bp"),
        ),
        Observation(
            patient_id="p1",
            code=codes.NEWS2_TOTAL,
            effective=T0 + timedelta(minutes=1),
            value=Quantity(value=7, unit="{score}"),
            category="survey",
            device="medtwin NEWS2",
            observation_id="obs-news2",
            derived_from=("obs-bp", "obs-acvpu"),
            provenance=prov("Observation", "obs-news2"),
        ),
        Observation(
            patient_id="p1",
            code=codes.LEVEL_OF_CONSCIOUSNESS,
            effective=T0,
            value=codes.ACVPU["C"],
            observation_id="obs-acvpu",
            provenance=prov("Observation", "obs-acvpu"),
        ),
        Encounter(
            encounter_id="e1",
            patient_id="p1",
            status="in-progress",
            class_code="IMP",
            start=T0 - timedelta(hours=5),
            locations=(
                EncounterLocation(unit="ED", start=T0 - timedelta(hours=5), end=T0 - timedelta(hours=2)),
                EncounterLocation(unit="ICU", start=T0 - timedelta(hours=2)),
            ),
            type=Coding(system=codes.SNOMED, code="183452005", display="Emergency hospital admission"),
            reason=Coding(system=codes.SNOMED, code="91302008", display="Sepsis"),
            provenance=prov("Encounter", "e1"),
        ),
        Condition(
            condition_id="c1",
            patient_id="p1",
            code=Coding(system=codes.SNOMED, code="91302008", display="Sepsis"),
            clinical_status="resolved",
            onset=T0 - timedelta(days=1),
            abatement=T0 + timedelta(days=2),
            recorded=T0,
            encounter_id="e1",
            provenance=prov("Condition", "c1"),
        ),
        MedicationRequest(
            request_id="mr1",
            patient_id="p1",
            medication=VANCOMYCIN,
            intent="proposal",
            status="draft",
            authored=T0,
            dose=Quantity(value=1250, unit="mg"),
            route=IV,
            interval_h=12.0,
            infusion_duration_h=1.5,
            rate=Quantity(value=833.3, unit="mg/h"),
            start=T0 + timedelta(hours=1),
            number_of_doses=4,
            note="AUC24 target 400-600 mg.h/L",
            encounter_id="e1",
            provenance=prov("MedicationRequest", "mr1"),
        ),
        MedicationAdministration(
            administration_id="ma1",
            patient_id="p1",
            medication=VANCOMYCIN,
            start=T0,
            end=T0 + timedelta(hours=1),
            dose=Quantity(value=1000, unit="mg"),
            route=IV,
            rate=Quantity(value=1000, unit="mg/h"),
            encounter_id="e1",
            request_id="mr1",
            provenance=prov("MedicationAdministration", "ma1"),
        ),
        Event(
            kind="alert",
            code="news2-high",
            time=T0,
            message="NEWS2 7: urgent response",
            patient_id="p1",
            severity="high",
            data={"score": 7},
            source="news2",
            event_id="ev-alert",
        ),
        Event(
            kind="recommendation",
            code="vancomycin-dose",
            time=T0,
            message="Give 1250 mg q12h",
            patient_id="p1",
            severity="moderate",
            event_id="ev-rec",
        ),
        Event(kind="derived", code="map", time=T0, message="MAP 65", patient_id="p1", event_id="ev-derived"),
    ]


@pytest.mark.parametrize("record", record_set(), ids=lambda r: type(r).__name__)
def test_every_record_type_is_valid_r4(record: Record) -> None:
    resource = to_fhir(record)
    validate_r4(resource)
    assert resource["id"]


def test_medication_request_proposal_carries_the_regimen() -> None:
    mr = next(r for r in record_set() if isinstance(r, MedicationRequest))
    res = to_fhir(mr)
    assert res["intent"] == "proposal"
    dosage = res["dosageInstruction"][0]
    assert dosage["timing"]["repeat"] == {
        "frequency": 1,
        "period": 12.0,
        "periodUnit": "h",
        "duration": 1.5,
        "durationUnit": "h",
        "boundsPeriod": {"start": "2024-03-01T09:00:00Z"},
        "count": 4,
    }
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 1250.0,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert dosage["doseAndRate"][0]["rateQuantity"]["code"] == "mg/h"
    assert dosage["route"]["coding"][0]["code"] == "47625008"


def test_observation_components_and_derived_from() -> None:
    records = record_set()
    bp, news2 = to_fhir(records[1]), to_fhir(records[2])
    assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6", "8462-4"]
    assert [c["valueQuantity"]["value"] for c in bp["component"]] == [120.0, 80.0]
    assert news2["derivedFrom"] == [{"reference": "Observation/obs-bp"}, {"reference": "Observation/obs-acvpu"}]


def test_events_become_flags_or_detected_issues() -> None:
    alert, rec, derived = (to_fhir(r) for r in record_set()[-3:])
    assert (alert["resourceType"], alert["status"], alert["subject"]) == ("Flag", "active", {"reference": "Patient/p1"})
    assert alert["code"]["text"] == "NEWS2 7: urgent response"
    assert alert["extension"][0]["valueString"] == '{"score":7}'
    assert (rec["resourceType"], rec["status"], rec["severity"]) == ("DetectedIssue", "preliminary", "moderate")
    assert (derived["resourceType"], derived["status"]) == ("DetectedIssue", "final")
    orphan = to_fhir(Event(kind="alert", code="feed-down", time=T0, message="monitor feed lost"))
    validate_r4(orphan)
    assert orphan["resourceType"] == "DetectedIssue"
    assert "patient" not in orphan


def test_resolved_alert_flag_is_inactive() -> None:
    alert = record_set()[-3]
    assert isinstance(alert, Event)
    assert to_fhir(dataclasses.replace(alert, status="resolved"))["status"] == "inactive"


def test_to_fhir_refuses_non_records() -> None:
    with pytest.raises(ValidationError, match="str is not a medtwin record"):
        to_fhir("Patient/1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "record", [r for r in record_set() if not isinstance(r, Event)], ids=lambda r: type(r).__name__
)
def test_write_then_read_gives_the_same_record(record: Record) -> None:
    assert map_resource(to_fhir(record)) == record


def test_patient_bundle_from_records_is_valid_r4() -> None:
    bundle = patient_bundle([*record_set(), dataclasses.replace(record_set()[1], patient_id="p2")], "p1")
    R4Bundle(bundle, strict=True)
    for entry in bundle["entry"]:
        validate_r4(entry["resource"])
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types.count("Observation") == 3  # the other patient's observation is left out
    assert bundle["entry"][0]["fullUrl"] == "https://medtwin.invalid/fhir/Patient/p1"
    with pytest.raises(ValidationError, match="no Patient record with id 'nobody'"):
        patient_bundle(record_set(), "nobody")


def test_synthea_patient_exports_and_reimports_unchanged(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'a.db'}") as first:
        assert ingest_file(first, FIXTURES / "synthea_liz_conn.json").ok
        pid = first.patients()[0].patient_id
        bundle = patient_bundle(first, pid)
        R4Bundle(bundle, strict=True)
        for entry in bundle["entry"]:
            validate_r4(entry["resource"])
        exported = tmp_path / "export.json"
        exported.write_bytes(orjson.dumps(bundle))
        with Store(f"sqlite:///{tmp_path / 'b.db'}") as second:
            report = ingest_file(second, exported)
            assert report.ok
            assert report.inserted == len(bundle["entry"]) == 46 + 27  # records, and the resources kept whole
            assert second.patients() == first.patients()
            assert second.observations(pid) == first.observations(pid)
            assert second.encounters(pid) == first.encounters(pid)
            assert second.conditions(pid) == first.conditions(pid)
            assert second.medication_requests(pid) == first.medication_requests(pid)
