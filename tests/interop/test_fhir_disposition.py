"""Encounter.hospitalization.dischargeDisposition <-> Encounter.disposition, valid against fhirclient R4 strict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fhirclient.models.encounter import Encounter as R4Encounter

from medtwin import codes
from medtwin.interop.fhir import map_resource, to_fhir
from medtwin.records import Coding, Encounter, EncounterLocation, Provenance

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def enc(disposition: Coding | None) -> Encounter:
    return Encounter(
        encounter_id="e1",
        patient_id="p1",
        status="finished",
        class_code="EMER",
        start=T0,
        end=T0 + timedelta(hours=2),
        locations=(EncounterLocation(unit="ED", start=T0, end=T0 + timedelta(hours=2)),),
        disposition=disposition,
        provenance=Provenance(source_system="fhir", source_id="Encounter/e1"),
    )


@pytest.mark.parametrize(
    "disposition",
    [
        codes.DISCHARGE_HOME,
        codes.DISCHARGE_OTHER_HCF,
        codes.DISCHARGE_HOSPICE,
        codes.DISCHARGE_AGAINST_ADVICE,
        codes.DISCHARGE_EXPIRED,
        codes.DISCHARGE_OTHER,
        codes.DISCHARGE_LWBS,
    ],
    ids=lambda c: c.code,
)
def test_disposition_is_written_valid_r4_and_read_back(disposition: Coding) -> None:
    resource = to_fhir(enc(disposition))
    assert resource["hospitalization"]["dischargeDisposition"]["coding"][0] == {
        "system": disposition.system,
        "code": disposition.code,
        "display": disposition.display,
    }
    parsed = R4Encounter(resource, strict=True)
    assert parsed.hospitalization.dischargeDisposition.coding[0].code == disposition.code
    assert map_resource(resource) == enc(disposition)


def test_no_disposition_writes_no_hospitalization() -> None:
    resource = to_fhir(enc(None))
    assert "hospitalization" not in resource
    R4Encounter(resource, strict=True)
    assert map_resource(resource) == enc(None)


def test_codes_match_the_fhir_r4_discharge_disposition_code_system() -> None:
    system = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
    got = {
        c.code: c.display
        for c in (
            codes.DISCHARGE_HOME,
            codes.DISCHARGE_OTHER_HCF,
            codes.DISCHARGE_HOSPICE,
            codes.DISCHARGE_AGAINST_ADVICE,
            codes.DISCHARGE_EXPIRED,
            codes.DISCHARGE_OTHER,
        )
        if c.system == system
    }
    # FHIR R4 (4.0.1) CodeSystem discharge-disposition: code -> display.
    assert got == {
        "home": "Home",
        "other-hcf": "Other healthcare facility",
        "hosp": "Hospice",
        "aadvice": "Left against advice",
        "exp": "Expired",
        "oth": "Other",
    }


def test_synthea_style_disposition_without_display_is_read() -> None:
    resource = to_fhir(enc(None))
    resource["hospitalization"] = {
        "dischargeDisposition": {"coding": [{"system": "http://www.nubc.org/patient-discharge", "code": "01"}]}
    }
    R4Encounter(resource, strict=True)
    got = map_resource(resource)
    assert isinstance(got, Encounter)
    assert got.disposition == Coding(system="http://www.nubc.org/patient-discharge", code="01")
