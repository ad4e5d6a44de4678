"""The glucose twin's data from stored records (CGM Observations, insulin administrations, carbohydrate)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from medtwin import codes
from medtwin.interop.glucose_records import (
    ATC,
    CARBOHYDRATE_INTAKE,
    is_insulin,
    load_therapy_data,
    therapy_data_from_records,
)
from medtwin.records import Coding, MedicationAdministration, Observation, Quantity
from medtwin.store import Store

T0 = datetime(2024, 2, 1, 6, 0, tzinfo=UTC)
ASPART = Coding(system=ATC, code="A10AB05", display="insulin aspart")
GLARGINE = Coding(system=ATC, code="A10AE04", display="insulin glargine")
PARACETAMOL = Coding(system=ATC, code="N02BE01", display="paracetamol")


def _obs(code: Coding, minutes: float, value: float | None, unit: str, **kw: object) -> Observation:
    q = None if value is None else Quantity(value=value, unit=unit)
    return Observation(patient_id="p1", code=code, effective=T0 + timedelta(minutes=minutes), value=q, **kw)  # type: ignore[arg-type]


def _records() -> tuple[list[Observation], list[MedicationAdministration]]:
    obs = [_obs(codes.GLUCOSE_INTERSTITIAL, 5 * i, 120.0 + i, "mg/dL") for i in range(12)]
    obs += [
        _obs(codes.GLUCOSE_INTERSTITIAL, 61, 7.0, "mmol/L"),
        _obs(codes.GLUCOSE_INTERSTITIAL, 62, 130.0, "kg"),
        _obs(codes.GLUCOSE_INTERSTITIAL, 63, 130.0, "mg/dL", status="entered-in-error"),
        _obs(CARBOHYDRATE_INTAKE, 10, 45.0, "g"),
        _obs(codes.BODY_WEIGHT, -10_000, 70.0, "kg"),
        _obs(codes.BODY_WEIGHT, -100, 72.5, "kg"),
        _obs(codes.GLUCOSE_BLOOD, 20, 150.0, "mg/dL"),
    ]
    adm = [
        MedicationAdministration(administration_id="b1", patient_id="p1", medication=ASPART,
                                 start=T0 + timedelta(minutes=12), dose=Quantity(value=4.0, unit="U")),
        MedicationAdministration(administration_id="r1", patient_id="p1", medication=ASPART, start=T0,
                                 end=T0 + timedelta(minutes=30), rate=Quantity(value=0.8, unit="U/h")),
        MedicationAdministration(administration_id="g1", patient_id="p1", medication=GLARGINE,
                                 start=T0 + timedelta(minutes=30), dose=Quantity(value=24.0, unit="U")),
        MedicationAdministration(administration_id="x1", patient_id="p1", medication=PARACETAMOL, start=T0,
                                 dose=Quantity(value=500.0, unit="mg")),
        MedicationAdministration(administration_id="b2", patient_id="p1", medication=ASPART,
                                 start=T0 + timedelta(minutes=40), dose=Quantity(value=3.0, unit="mg")),
        MedicationAdministration(administration_id="b3", patient_id="p1", medication=ASPART,
                                 start=T0 + timedelta(minutes=50), dose=Quantity(value=2.0, unit="U"),
                                 status="not-done"),
    ]  # fmt: skip
    return obs, adm


def test_records_become_therapy_data_with_every_problem_reported() -> None:
    obs, adm = _records()
    d = therapy_data_from_records(obs, adm)
    assert d.start == T0
    assert d.body_weight_kg == 72.5  # the latest weight
    assert d.cgm_t_min.size == 13
    assert d.cgm_mg_dl[-1] == pytest.approx(7.0 * 18.0156, rel=1e-4)
    np.testing.assert_array_equal(d.carbs_g, [45.0])
    np.testing.assert_array_equal(d.bolus_u, [4.0])
    # pump basal 0.8 U/h until 30 min, then glargine 24 U spread as 1 U/h
    np.testing.assert_allclose(d.basal_rate_at(np.array([0.0, 29.0, 31.0])), [0.8, 0.8, 1.0])
    reasons = {s.where: s.reason for s in d.skipped}
    assert any("kg" in r for w, r in reasons.items() if w.startswith("Observation"))
    assert "status entered-in-error" in reasons.values()
    assert "MedicationAdministration b2" in reasons
    assert "not insulin units" in reasons["MedicationAdministration b2"]
    assert reasons["MedicationAdministration b3"] == "status not-done"
    assert not any("x1" in w for w in reasons)  # other medications are not the glucose twin's business
    assert is_insulin(Coding(system="http://snomed.info/sct", code="1", display="Insulin lispro"))
    assert not is_insulin(PARACETAMOL)


def test_load_from_the_store(tmp_path: Path) -> None:
    obs, adm = _records()
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.write([*obs, *adm])
        d = load_therapy_data(store, "p1", since=T0, until=T0 + timedelta(hours=2))
        assert d.cgm_t_min.size == 13
        assert d.body_weight_kg == 72.5
        np.testing.assert_array_equal(d.bolus_u, [4.0])
        later = load_therapy_data(store, "p1", since=T0 + timedelta(minutes=20), body_weight_kg=60.0)
        assert later.body_weight_kg == 60.0
        assert later.cgm_t_min[0] == 0.0
        assert later.bolus_u.size == 0
