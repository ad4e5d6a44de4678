"""Case files (JSON, CSV), bad-input handling, the report and the `medtwin dose` CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from medtwin import codes
from medtwin.cli import app
from medtwin.dosing import CaseError, analyze_case, load_case, parse_case, to_records
from medtwin.records import MedicationRequest, Observation

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pk"
runner = CliRunner()


def case_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "case_a.json").read_text())
    data.update(changes)
    return data


def test_json_case_converts_units_and_matches_case_a_fit() -> None:
    case = load_case(FIXTURES / "case_a.json")
    assert case.doses[0].amount_mg == 2000.0  # given as 2 g
    assert any("converted 2 g to 2000 mg" in n for n in case.notes)
    assert case.covariates == {"CRCL": 65.0, "WT": 70.0, "DIAL": 0.0}
    report = analyze_case(case, n_samples=300)
    assert report.fit is not None
    np.testing.assert_allclose(report.fit.eta, [0.08208, 0.06122, 0.06286], atol=1e-5)
    rec = report.recommended
    assert rec.amount_mg % 250 == 0
    assert 400 <= rec.metrics["auc24_ss"]["value"] <= 600
    assert 0.0 <= rec.pta <= 1.0
    json.dumps(report.to_dict())  # serializable


def test_csv_case_derives_cockcroft_gault() -> None:
    case = load_case(FIXTURES / "case_a.csv")
    # female, 60 y, 70 kg, SCr 0.95: (80 * 70) / (72 * 0.95) * 0.85
    assert case.covariates["CRCL"] == pytest.approx(80 * 70 / (72 * 0.95) * 0.85)
    assert case.patient_id == "case-a-csv"
    assert [lv.observation_id for lv in case.levels] == ["obs-1", "obs-2"]
    assert case.regimen.intervals_h == (12.0, 24.0)


def test_crcl_in_l_per_h_is_converted() -> None:
    cov = {"crcl": {"value": 3.9, "unit": "L/h"}, "weight_kg": 70, "dialysis": 0}
    case = parse_case(case_dict(covariates=cov))
    assert case.covariates["CRCL"] == pytest.approx(65.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"levels": [{"time_h": -1, "value": 5.0}]}, "before the first dose"),
        ({"doses": [{"time_h": 0, "amount": -500, "duration_h": 1}]}, "negative amount"),
        ({"covariates": {"crcl": 65, "dialysis": 0}}, "missing covariate 'weight_kg'"),
        ({"doses": [{"time_h": 0, "amount": {"value": 1, "unit": "mL/min"}}]}, "cannot convert"),
        ({"doses": [{"time": "2026-11-01T08:00:00", "amount": 1000}], "origin": None, "levels": []}, "no time zone"),
        ({"target": {"metric": "auc", "value": 400}}, "start_h and end_h"),
        ({"model": "nosuchmodel"}, "unknown model"),
        (
            {"doses": [{"time_h": 0, "amount": 1000, "duraton_h": 1}]},
            r"unknown keys \['duraton_h'\]; did you mean 'dur",
        ),
    ],
)
def test_bad_cases_raise_clear_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(CaseError if "model" not in changes else Exception, match=message):
        parse_case(case_dict(**changes))


def test_csv_case_with_a_misspelt_record_type_names_the_closest(tmp_path: Path) -> None:
    path = tmp_path / "case.csv"
    path.write_text("record,name,time_h,value,unit\nmodel,goti2018_vancomycin,,,\ndoze,,0,1000,mg\n")
    with pytest.raises(CaseError, match=r"case.csv:3: unknown record type 'doze'; did you mean 'dose'\?"):
        load_case(path)


def test_out_of_range_covariate_and_implausible_dose_are_warned() -> None:
    cov = {"crcl": 65, "weight_kg": 260, "dialysis": 0, "age_y": 12}
    doses = [{"time_h": 0, "amount": 2, "duration_h": 2}, {"time_h": 24.2, "amount": 1000, "duration_h": 2}]
    case = parse_case(case_dict(covariates=cov, doses=doses))
    text = " ".join(case.warnings)
    assert "WT = 260 kg is outside the validity range [33.0, 255.0]" in text
    assert "age_y = 12 is outside" in text
    assert "implausibly small" in text
    report = analyze_case(case, n_samples=200)
    assert "WARNINGS" in report.to_text()


def test_a_priori_case_proposes_a_loading_dose() -> None:
    case = parse_case(case_dict(doses=[], levels=[], regimen={"intervals_h": [12]}))
    report = analyze_case(case, n_samples=200)
    assert report.fit is None
    assert report.loading_dose is not None
    assert report.loading_dose["amount_mg"] > report.recommended.amount_mg


def test_records_are_a_proposal_with_derived_observations() -> None:
    report = analyze_case(load_case(FIXTURES / "case_a.json"), n_samples=200)
    records = to_records(report)
    req = records[0]
    assert isinstance(req, MedicationRequest)
    assert req.intent == "proposal"
    assert req.dose is not None
    assert req.dose.unit == "mg"
    obs = [r for r in records if isinstance(r, Observation)]
    # medtwin's own code system: no LOINC code exists for a model-predicted exposure
    assert {o.code for o in obs} == {codes.PREDICTED_AUC24, codes.PREDICTED_TROUGH, codes.PREDICTED_PEAK}
    assert {o.code.system for o in obs} == {"https://medtwin.dev/fhir/CodeSystem/medtwin"}
    assert all(o.derived_from == ("obs-lvl-1", "obs-lvl-2") for o in obs)


def test_cli_models_lists_the_library() -> None:
    result = runner.invoke(app, ["dose", "models"])
    assert result.exit_code == 0, result.output
    assert "goti2018_vancomycin" in result.output
    assert "xuan2003_gentamicin" in result.output


def test_cli_report_text_json_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "plot.png"
    result = runner.invoke(app, ["dose", str(FIXTURES / "case_a.json"), "--samples", "200", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "PROPOSAL:" in result.output
    assert "goti2018_vancomycin" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["dose", "report", str(FIXTURES / "case_a.csv"), "--json", "--samples", "200"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"]["id"] == "goti2018_vancomycin"
    assert data["recommended"]["interval_h"] in (12.0, 24.0)


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(case_dict(levels=[{"time_h": -3, "value": 4.0}])))
    result = runner.invoke(app, ["dose", str(bad)])
    assert result.exit_code == 2
    assert "before the first dose" in result.output
    warn = tmp_path / "warn.json"
    warn.write_text(json.dumps(case_dict(covariates={"crcl": 65, "weight_kg": 260})))
    result = runner.invoke(app, ["dose", str(warn), "--strict"])
    assert result.exit_code == 2
    assert "validity range" in result.output


def test_cli_fhir_bundle_validates_with_fhirclient_r4(tmp_path: Path) -> None:
    from fhirclient.models.bundle import Bundle
    from fhirclient.models.medicationrequest import MedicationRequest as FhirMedicationRequest
    from fhirclient.models.observation import Observation as FhirObservation

    out = tmp_path / "proposal.json"
    result = runner.invoke(app, ["dose", str(FIXTURES / "case_a.json"), "--samples", "200", "--fhir", str(out)])
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text())
    Bundle(bundle, strict=True)
    kinds = []
    for entry in bundle["entry"]:
        res = entry["resource"]
        kinds.append(res["resourceType"])
        if res["resourceType"] == "MedicationRequest":
            FhirMedicationRequest(res, strict=True)
            assert res["intent"] == "proposal"
            assert res["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["unit"] == "mg"
        else:
            FhirObservation(res, strict=True)
            assert {d["reference"] for d in res["derivedFrom"]} == {
                "Observation/obs-lvl-1",
                "Observation/obs-lvl-2",
            }
    assert kinds == ["MedicationRequest", "Observation", "Observation", "Observation"]


def test_crcl_given_in_l_per_h_without_unit_is_flagged() -> None:
    # 3.9 is CrCL in L/h (65 mL/min) typed without a unit: read as mL/min it is out of range
    case = parse_case(case_dict(covariates={"crcl": 3.9, "weight_kg": 70, "dialysis": 0}))
    assert any("CRCL = 3.9 mL/min is outside the validity range" in w for w in case.warnings)
