"""The canonical record model (medtwin.records)."""

from __future__ import annotations

import dataclasses
import pickle
import time
import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.records import (
    Encounter,
    EncounterLocation,
    Event,
    MedicationAdministration,
    Observation,
    ObservationComponent,
    Patient,
    PatientIdentity,
    Quantity,
    new_id,
)

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=2)))


def test_times_are_normalised_to_utc() -> None:
    obs = Observation(patient_id="p1", code=codes.HEART_RATE, effective=T0, value=Quantity(value=72, unit="/min"))
    assert obs.effective.utcoffset() == timedelta(0)
    assert obs.effective.hour == 6
    assert isinstance(obs.value, Quantity)
    assert obs.value.value == 72.0


def test_naive_datetimes_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match=r"Observation\(8867-4\)\.effective.*no time zone"):
        Observation(patient_id="p1", code=codes.HEART_RATE, effective=datetime(2024, 1, 1))


def test_records_are_immutable() -> None:
    obs = Observation(patient_id="p1", code=codes.HEART_RATE, effective=T0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        obs.patient_id = "p2"  # type: ignore[misc]


def test_blood_pressure_panel_components() -> None:
    panel = Observation(
        patient_id="p1",
        code=codes.BLOOD_PRESSURE_PANEL,
        effective=T0,
        components=(
            ObservationComponent(code=codes.SYSTOLIC_BP, value=Quantity(value=120, unit="mm[Hg]")),
            ObservationComponent(code=codes.DIASTOLIC_BP, value=Quantity(value=80, unit="mm[Hg]")),
        ),
    )
    systolic = panel.component(codes.SYSTOLIC_BP)
    assert systolic is not None
    assert systolic.value == Quantity(value=120.0, unit="mm[Hg]")
    assert panel.component(codes.HEART_RATE) is None


def test_identity_is_separate_from_clinical_patient() -> None:
    identity = PatientIdentity(family="Chalmers", given=("Peter", "James"))
    patient = Patient(patient_id="p1", gender="male", birth_date=date(1974, 12, 25), identity=identity)
    assert patient.identity is not None
    assert patient.identity.display_name == "Peter James Chalmers"
    assert dataclasses.replace(patient, identity=None).identity is None
    assert patient.age_years(datetime(2024, 12, 25, tzinfo=UTC)) == pytest.approx(50.0, abs=0.01)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Patient(patient_id=""), "patient_id"),
        (lambda: Patient(patient_id="p", gender="m"), "gender"),  # type: ignore[arg-type]
        (lambda: Quantity(value=float("nan"), unit="mg"), "NaN"),
        (lambda: Quantity(value="7", unit="mg"), "number"),  # type: ignore[arg-type]
        (
            lambda: Encounter(
                encounter_id="e",
                patient_id="p",
                status="finished",
                class_code="IMP",
                start=T0,
                end=T0 - timedelta(hours=1),
            ),
            "before start",
        ),
        (
            lambda: MedicationAdministration(
                administration_id="a",
                patient_id="p",
                medication=codes.VANCOMYCIN_SERUM,
                start=T0,
                dose=Quantity(value=-1, unit="mg"),
            ),
            "negative",
        ),
        (lambda: Event(kind="alarm", code="x", time=T0, message="m"), "kind"),  # type: ignore[arg-type]
    ],
)
def test_invalid_records_raise_specific_errors(build: object, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        build()  # type: ignore[operator]


def test_encounter_and_infusion_durations() -> None:
    enc = Encounter(
        encounter_id="e1",
        patient_id="p1",
        status="finished",
        class_code="IMP",
        start=T0,
        end=T0 + timedelta(hours=30),
        locations=(EncounterLocation(unit="ICU", start=T0, end=T0 + timedelta(hours=6)),),
    )
    assert enc.length_of_stay_h == pytest.approx(30.0)
    admin = MedicationAdministration(
        administration_id="a1",
        patient_id="p1",
        medication=codes.VANCOMYCIN_SERUM,
        start=T0,
        end=T0 + timedelta(hours=2),
        dose=Quantity(value=1000, unit="mg"),
    )
    assert admin.infusion_duration_h == pytest.approx(2.0)


def test_event_data_is_read_only_and_picklable() -> None:
    event = Event(kind="alert", code="news2.high", time=T0, message="NEWS2 7", data={"score": 7})
    with pytest.raises(TypeError):
        event.data["score"] = 8  # type: ignore[index]
    clone = pickle.loads(pickle.dumps(event))
    assert clone == event
    assert dict(clone.data) == {"score": 7}


def test_new_ids_are_uuid7_and_sort_by_the_time_they_were_made() -> None:
    first = [new_id() for _ in range(200)]
    time.sleep(0.003)  # into a later millisecond
    later = new_id()
    for value in [*first, later]:
        parsed = uuid.UUID(value)
        assert len(value) == 32
        assert parsed.hex == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    assert len(set(first)) == len(first)  # 74 random bits: no collision within a millisecond
    assert max(first) < later  # made later, sorts later: inserted at the end of a primary-key index
    millis = int(later[:12], 16)
    assert abs(millis / 1000 - time.time()) < 5  # the leading 48 bits are Unix time in milliseconds
    assert Event(kind="alert", code="x", time=datetime(2026, 1, 1, tzinfo=UTC), message="m").event_id[12] == "7"
