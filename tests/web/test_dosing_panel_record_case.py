"""The web app's record dosing panel and ``medtwin dose --patient`` build the same case from the same record and
give the same numbers (one way to build a case from a record: :mod:`medtwin.dosing.record_case`)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medtwin import codes
from medtwin.cli import app
from medtwin.records import Coding, MedicationAdministration, Observation, Patient, Quantity
from medtwin.server.web import data
from medtwin.store import Store

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
VANCOMYCIN = Coding(system=codes.SNOMED, code="372735009", display="vancomycin")
CREATININE_BLOOD = codes.loinc("38483-4", "Creatinine [Mass/volume] in Blood")
PID = "pt-vanco-panel"


def _records() -> list[Any]:
    def dose(i: int, hours: float, infusion_h: float | None) -> MedicationAdministration:
        start = T0 + timedelta(hours=hours)
        end = None if infusion_h is None else start + timedelta(hours=infusion_h)
        return MedicationAdministration(administration_id=f"vanco-{i}", patient_id=PID, medication=VANCOMYCIN,
                                        start=start, end=end, dose=Quantity(value=1000.0, unit="mg"))  # fmt: skip

    def obs(oid: str, coding: Coding, hours: float, value: float, unit: str) -> Observation:
        return Observation(observation_id=oid, patient_id=PID, code=coding, effective=T0 + timedelta(hours=hours),
                           value=Quantity(value=value, unit=unit))  # fmt: skip

    # born 1961-11-20: 64 whole years at the first dose (64.95 as a fraction)
    return [
        Patient(patient_id=PID, gender="male", birth_date=date(1961, 11, 20)),
        dose(0, 0.0, 1.0),
        dose(1, 12.0, None),  # no end time recorded: a bolus, as record_case documents
        dose(2, 24.0, 1.5),
        obs("wt", codes.BODY_WEIGHT, -2.0, 82.0, "kg"),
        obs("scr", CREATININE_BLOOD, -1.0, 1.3, "mg/dL"),  # 38483-4 only: no 2160-0 in this record
        obs("lv1", codes.VANCOMYCIN_SERUM, 23.5, 14.0, "mg/L"),
        obs("lv2", codes.VANCOMYCIN_SERUM, 26.0, 31.0, "mg/L"),
    ]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('panel')) / 'panel.db'}"
    store = Store(url)
    try:
        store.write(_records())
    finally:
        store.close()
    return url


def test_the_record_panel_equals_medtwin_dose_patient(store_url: str) -> None:
    store = Store(store_url, create=False)
    try:
        panel = data.dosing_view(store, PID, n_samples=500)
    finally:
        store.close()
    result = CliRunner().invoke(app, ["dose", "--patient", PID, "--db", store_url, "--json", "--samples", "500",
                                      "--seed", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    cli = json.loads(result.output)
    assert panel["covariates"] == cli["covariates"]
    assert panel["parameters"] == cli["parameters"]
    assert panel["estimation"] == cli["estimation"]
    assert panel["level_fit"] == cli["levels"]
    assert panel["proposals"] == cli["proposals"]
    assert panel["recommended"] == cli["recommended"]
    assert panel["loading_dose"] == cli["loading_dose"]
    assert panel["notes"] == cli["notes"]
    # the record's values, read as record_case documents: creatinine 38483-4, whole years, no end time = a bolus
    assert any("scr 1.3 mg/dL from Observation scr" in n for n in panel["notes"])
    assert any("age 64 y at the first dose" in n for n in panel["notes"])
    assert panel["covariates"]["CRCL"] == pytest.approx((140 - 64) * 82.0 / (72 * 1.3), rel=1e-9)
    assert [d["duration_h"] for d in panel["doses"]] == [1.0, 0.0, 1.5]
    assert [d["source"] for d in panel["doses"]] == ["record"] * 3
    assert [(lv["time_h"], lv["value"], lv["id"]) for lv in panel["levels"]] == [
        (23.5, 14.0, "lv1"),
        (26.0, 31.0, "lv2"),
    ]
    assert panel["origin"] == T0.isoformat()


def test_a_record_without_vancomycin_has_no_panel(store_url: str) -> None:
    store = Store(store_url, create=False)
    try:
        with pytest.raises(KeyError):
            data.dosing_view(store, "pt-nobody")
    finally:
        store.close()
