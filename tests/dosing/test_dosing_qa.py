"""User-acceptance QA of the dosing twin: each test pins a bug found while using `medtwin dose` as a pharmacist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.dosing import CaseError, analyze_case, parse_case

runner = CliRunner()


def cg_case(**covariates: Any) -> dict[str, Any]:
    """A Goti vancomycin case with Cockcroft-Gault inputs (SCr given by the caller)."""
    covs: dict[str, Any] = {"age_y": 60, "sex": "male", "weight_kg": 80} | covariates
    return {
        "patient_id": "qa",
        "model": "goti2018_vancomycin",
        "covariates": covs,
        "doses": [{"time_h": 0, "amount": 1000, "duration_h": 1, "interval_h": 12, "additional": 3}],
        "levels": [{"time_h": 47.5, "value": 12}],
    }


def test_scr_unit_conversion_is_stated_in_the_notes() -> None:
    case = parse_case(cg_case(scr={"value": 600, "unit": "umol/L"}, dialysis=1))
    # 600 umol/L / 88.42 = 6.786 mg/dL; CrCL = 80 * 80 / (72 * 6.786) = 13.1 mL/min
    assert any("scr" in n and "600 umol/L" in n and "6.78" in n and "mg/dL" in n for n in case.notes), case.notes


def test_scr_floor_of_the_goti_erratum_is_stated() -> None:
    # 82-year-old woman, SCr 0.6 mg/dL: the erratum raises SCr to 1 mg/dL (age > 65 y)
    case = parse_case(cg_case(age_y=82, sex="female", weight_kg=55, scr=0.6))
    assert case.covariates["CRCL"] == pytest.approx((140 - 82) * 55 / 72 * 0.85)
    assert any("floor" in n and "0.6" in n for n in case.notes), case.notes


def test_no_scr_floor_note_when_the_floor_does_not_apply() -> None:
    case = parse_case(cg_case(age_y=60, scr=0.6))
    assert not any("floor" in n for n in case.notes)


def test_cockcroft_gault_cap_is_stated() -> None:
    # 45 y, 150 kg, SCr 1.1: CG = 95 * 150 / 79.2 = 180 mL/min, capped at 150 by the model
    case = parse_case(cg_case(age_y=45, weight_kg=150, scr=1.1))
    assert case.covariates["CRCL"] == 150.0
    assert any("capped at 150" in n and "179.9" in n for n in case.notes), case.notes


def test_covariate_series_with_iso_times_and_no_origin_is_a_clear_error() -> None:
    data = cg_case(
        scr=[
            {"time": "2026-11-01T08:00:00Z", "value": 1.0, "unit": "mg/dL"},
            {"time": "2026-11-02T08:00:00Z", "value": 2.0, "unit": "mg/dL"},
        ]
    )
    with pytest.raises(CaseError, match="origin"):
        parse_case(data, source="case.json")


def test_mixing_hours_and_datetimes_without_origin_is_refused() -> None:
    # dose at time_h 0, level as a datetime: without an origin the level would silently become t=0
    data = cg_case(scr=1.0)
    data["levels"] = [{"time": "2026-11-02T07:30:00Z", "value": 12}]
    with pytest.raises(CaseError, match="origin"):
        parse_case(data, source="case.json")


def test_covariate_series_with_iso_times_uses_the_origin() -> None:
    data = cg_case(
        scr=[
            {"time": "2026-11-01T08:00:00Z", "value": 1.0, "unit": "mg/dL"},
            {"time": "2026-11-02T14:00:00+02:00", "value": 2.0, "unit": "mg/dL"},
        ]
    )
    data["origin"] = "2026-11-01T08:00:00Z"
    case = parse_case(data)
    series = case.covariates["CRCL"]
    assert not isinstance(series, float)
    assert series.times_h == (0.0, 28.0)


def test_negative_level_error_names_the_file_and_entry() -> None:
    data = cg_case(scr=1.0)
    data["levels"] = [{"time_h": 2, "value": -3}]
    with pytest.raises(CaseError, match=r"case\.json: levels\[0\].*negative"):
        parse_case(data, source="case.json")


def test_level_value_may_be_a_quantity_object() -> None:
    data = cg_case(scr=1.0)
    data["levels"] = [{"time_h": 47.5, "value": {"value": 12, "unit": "ug/mL"}}]
    case = parse_case(data)
    assert case.levels[0].value_mg_l == 12.0


def test_crcl_without_unit_that_looks_like_l_per_h_is_warned() -> None:
    # 4.2 L/h (= 70 mL/min) typed without a unit reads as 4.2 mL/min, inside Goti's range [4, 150]
    case = parse_case(cg_case(crcl=4.2))
    assert any("CrCL 4.2" in w and "L/h" in w for w in case.warnings), case.warnings
    case_ok = parse_case(cg_case(crcl={"value": 4.2, "unit": "mL/min"}))
    assert not any("L/h" in w for w in case_ok.warnings)


def test_scr_without_unit_that_looks_like_umol_per_l_is_warned() -> None:
    case = parse_case(cg_case(scr=84))
    assert any("SCr 84" in w and "umol/L" in w for w in case.warnings), case.warnings


def test_text_and_json_reports_state_covariate_units() -> None:
    data = cg_case(scr=1.0)
    data["model"] = "buelga2005_vancomycin"  # CrCL in L/h
    report = analyze_case(parse_case(data), n_samples=200)
    assert "CRCL=5.333 L/h" in report.to_text()  # 88.89 mL/min
    assert report.to_dict()["covariate_units"]["CRCL"] == "L/h"


def test_cli_error_for_a_series_without_origin_exits_2(tmp_path: Path) -> None:
    data = cg_case(scr=[{"time": "2026-11-01T08:00:00Z", "value": 1.0}, {"time": "2026-11-02T08:00:00Z", "value": 2}])
    path = tmp_path / "case.json"
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["dose", str(path)])
    assert result.exit_code == 2
    assert "origin" in result.output


@pytest.mark.parametrize(
    ("section", "entry", "key"),
    [
        ("doses", {"time_h": 0, "amount": 1000, "duration": 2}, "duration"),  # would silently be a bolus
        ("levels", {"time_h": 47.5, "value": 12, "units": "ug/mL"}, "units"),  # would silently be mg/L
    ],
)
def test_unknown_keys_in_doses_and_levels_are_errors(section: str, entry: dict[str, Any], key: str) -> None:
    data = cg_case(scr=1.0)
    data[section] = [entry]
    with pytest.raises(CaseError, match=rf"case\.json: {section}\[0\].*{key}"):
        parse_case(data, source="case.json")


def test_unknown_top_level_and_regimen_keys_are_errors() -> None:
    data = cg_case(scr=1.0)
    data["level"] = data.pop("levels")  # typo: the fit would silently be a priori
    with pytest.raises(CaseError, match=r"case\.json.*'level'"):
        parse_case(data, source="case.json")
    data = cg_case(scr=1.0) | {"regimen": {"interval_h": [12]}}
    with pytest.raises(CaseError, match=r"case\.json: regimen.*'interval_h'"):
        parse_case(data, source="case.json")


def test_underscore_keys_are_comments() -> None:
    data = cg_case(scr=1.0) | {"_comment": "ward 7"}
    data["doses"][0]["_note"] = "given late"
    assert parse_case(data).doses[0].amount_mg == 1000.0


def test_fractional_additional_doses_are_refused() -> None:
    data = cg_case(scr=1.0)
    data["doses"][0]["additional"] = 2.7
    with pytest.raises(CaseError, match=r"additional.*whole number"):
        parse_case(data, source="case.json")


@pytest.mark.parametrize(("text", "expected"), [("false", False), ("0", False), ("true", True), ("yes", True)])
def test_boolean_text_is_read_as_a_boolean(text: str, expected: bool) -> None:
    data = cg_case(scr=1.0)
    data["regimen"] = {"loading_dose": text}
    data["doses"][0]["steady_state"] = text
    case = parse_case(data)
    assert case.regimen.loading_dose is expected
    assert case.doses[0].steady_state is expected


def test_boolean_nonsense_is_refused() -> None:
    data = cg_case(scr=1.0) | {"regimen": {"loading_dose": "maybe"}}
    with pytest.raises(CaseError, match=r"loading_dose.*'maybe'"):
        parse_case(data, source="case.json")


def test_csv_regimen_loading_dose_false(tmp_path: Path) -> None:
    path = tmp_path / "case.csv"
    path.write_text(
        "record,name,time_h,value,unit,duration_h\n"
        "model,goti2018_vancomycin,,,,\n"
        "covariate,crcl,,60,mL/min,\n"
        "covariate,weight_kg,,70,kg,\n"
        "regimen,loading_dose,,false,,\n"
    )
    from medtwin.dosing import load_case

    assert load_case(path).regimen.loading_dose is False


def test_unknown_covariate_field_is_warned() -> None:
    case = parse_case(cg_case(scr=1.0, dialyis=1))  # typo of 'dialysis': the model default 0 is used
    assert any("dialyis" in w for w in case.warnings), case.warnings
    case2 = parse_case(cg_case(scr=1.0, height_cm=180))  # a known field this model does not use: a note
    assert not any("height_cm" in w for w in case2.warnings)
    assert any("height_cm" in n and "not used" in n for n in case2.notes)


def test_crcl_without_unit_in_an_object_is_warned_too() -> None:
    case = parse_case(cg_case(crcl={"value": 4.2}))
    assert any("CrCL 4.2" in w and "L/h" in w for w in case.warnings), case.warnings


CSV_HEAD = "record,name,time_h,time,value,unit,duration_h,interval_h,additional\n"


def test_csv_time_varying_creatinine(tmp_path: Path) -> None:
    from medtwin.dosing import load_case

    path = tmp_path / "case.csv"
    path.write_text(
        CSV_HEAD + "model,goti2018_vancomycin,,,,,,,\n"
        "covariate,age_y,,,58,,,,\n"
        "covariate,sex,,,male,,,,\n"
        "covariate,weight_kg,,,90,kg,,,\n"
        "covariate,scr,0,,0.9,mg/dL,,,\n"
        "covariate,scr,36,,2.4,mg/dL,,,\n"
        "dose,,0,,1500,mg,1.5,12,5\n"
        "level,L1,71.5,,28,mg/L,,,\n"
    )
    crcl = load_case(path).covariates["CRCL"]
    assert not isinstance(crcl, float)
    assert crcl.times_h == (0.0, 36.0)
    assert crcl.at(40.0) == pytest.approx((140 - 58) * 90 / (72 * 2.4))


def test_csv_duplicate_untimed_covariate_is_an_error(tmp_path: Path) -> None:
    from medtwin.dosing import load_case

    path = tmp_path / "case.csv"
    path.write_text(
        CSV_HEAD + "model,goti2018_vancomycin,,,,,,,\n"
        "covariate,weight_kg,,,90,kg,,,\n"
        "covariate,weight_kg,,,95,kg,,,\n"
        "covariate,crcl,,,60,mL/min,,,\n"
    )
    with pytest.raises(CaseError, match=r"case\.csv:4.*weight_kg.*twice"):
        load_case(path)


def test_oral_dose_for_an_iv_model_names_the_file_and_dose() -> None:
    data = cg_case(scr=1.0)
    data["doses"] = [{"time_h": 0, "amount": 1000, "route": "oral"}]
    with pytest.raises(CaseError, match=r"case\.json: doses\[0\].*oral.*goti2018_vancomycin"):
        parse_case(data, source="case.json")


def _a_priori_report() -> Any:
    data = {
        "patient_id": "apriori",
        "model": "goti2018_vancomycin",
        "origin": "2026-11-01T08:00:00Z",
        "covariates": {"crcl": 80, "weight_kg": 90},
        "target": {"metric": "auc24_ss", "low": 400, "high": 600},
        "regimen": {"start_h": 0, "intervals_h": [12]},
    }
    report = analyze_case(parse_case(data), n_samples=200)
    assert report.loading_dose is not None
    return report


def test_loading_dose_text_fhir_and_plot_agree() -> None:
    from datetime import UTC, datetime, timedelta

    from medtwin.dosing import to_records
    from medtwin.records import MedicationRequest

    report = _a_priori_report()
    ld = report.loading_dose
    maintenance_start = ld["maintenance_start_h"]
    assert maintenance_start == 12.0
    text = report.to_text()
    assert f"first maintenance dose at t={maintenance_start:g} h" in text
    requests = [r for r in to_records(report) if isinstance(r, MedicationRequest)]
    assert len(requests) == 2
    maintenance, loading = requests
    origin = datetime(2026, 11, 1, 8, tzinfo=UTC)
    assert maintenance.start == origin + timedelta(hours=maintenance_start)
    assert loading.dose is not None
    assert loading.dose.value == ld["amount_mg"]
    assert loading.number_of_doses == 1
    assert loading.interval_h is None
    assert loading.start == origin
    # the plotted band follows the loading dose: at 2.75 h (end of the 2750 mg infusion) the MAP
    # concentration is far above what the 750 mg maintenance dose alone would give (about 9 mg/L)
    t = report.band["time_h"]
    i_end = min(range(len(t)), key=lambda i: abs(t[i] - ld["duration_h"]))
    assert report.band["map"][i_end] > 25.0


@pytest.mark.parametrize(
    ("covariates", "field"),
    [({"crcl": -5, "weight_kg": 70}, "crcl"), ({"crcl": 60, "weight_kg": 0}, "weight_kg")],
)
def test_impossible_covariates_are_errors_not_extrapolation_warnings(covariates: dict[str, Any], field: str) -> None:
    data = cg_case() | {"covariates": covariates}
    with pytest.raises(CaseError, match=rf"case\.json: covariates\.{field}.*must be > 0"):
        parse_case(data, source="case.json")


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("increment_mg", 0, "> 0"),
        ("max_dose_mg", -5, "> 0"),
        ("max_rate_mg_h", 0, "> 0"),
        ("n_doses", 0, "> 0"),
        ("min_duration_h", -1, ">= 0"),
    ],
)
def test_impossible_regimen_options_are_errors(option: str, value: float, rule: str) -> None:
    data = cg_case(scr=1.0) | {"regimen": {option: value}}
    with pytest.raises(CaseError, match=rf"case\.json: regimen\.{option}.*{rule}"):
        parse_case(data, source="case.json")


def test_doses_must_be_a_list() -> None:
    data = cg_case(scr=1.0) | {"doses": {"time_h": 0, "amount": 1000}}
    with pytest.raises(CaseError, match=r"case\.json: 'doses' must be a list"):
        parse_case(data, source="case.json")


@pytest.mark.parametrize(("field", "value"), [("weight_kg", 0), ("scr", 0)])
def test_cockcroft_gault_input_errors_name_the_file(field: str, value: float) -> None:
    data = cg_case(scr=1.0)
    data["covariates"][field] = value
    with pytest.raises(CaseError, match=r"case\.json: covariates.*must be > 0"):
        parse_case(data, source="case.json")


def test_steady_state_uses_the_covariates_at_the_proposed_start_like_the_parameters() -> None:
    # SCr rises at t=60 h, after the proposed start (t=36 h): the report's CL (at the start) and
    # its steady-state AUC must describe the same patient (AUC24,ss = 24/tau * dose / CL)
    data = cg_case(scr=[{"time_h": 0, "value": 1.0}, {"time_h": 60, "value": 3.0}])
    data["doses"] = [{"time_h": 0, "amount": 1000, "duration_h": 1, "interval_h": 12, "additional": 2}]
    data["levels"] = [{"time_h": 35.5, "value": 12}]
    data["regimen"] = {"start_h": 36, "intervals_h": [12]}
    report = analyze_case(parse_case(data), n_samples=200)
    cl = report.parameters["CL"]["value"]
    assert report.current is not None
    assert report.current["metrics"]["auc24_ss"]["value"] == pytest.approx(24 / 12 * 1000 / cl, rel=1e-6)
    rec = report.recommended
    assert rec.metrics["auc24_ss"]["value"] == pytest.approx(24 / rec.interval_h * rec.amount_mg / cl, rel=1e-6)
    assert rec.exact_amount_mg == pytest.approx(500 * cl * rec.interval_h / 24, rel=1e-4)


# --- issue 4 leftovers: out-of-range candidates, interval choice, loading-dose JSON, dialysis ---


def _low_crcl_report() -> Any:
    # CrCL 30 mL/min, 70 kg, no levels: 250 mg q12h rounds to AUC24 about 337 (below 400-600)
    data = {
        "patient_id": "lowcrcl",
        "model": "goti2018_vancomycin",
        "covariates": {"crcl": {"value": 30, "unit": "mL/min"}, "weight_kg": 70},
        "target": {"metric": "auc24_ss", "low": 400, "high": 600},
        "regimen": {"start_h": 0, "intervals_h": [8, 12, 24], "loading_dose": False},
    }
    return analyze_case(parse_case(data), n_samples=200)


def test_rounded_candidate_outside_the_target_is_flagged_in_text_and_json() -> None:
    report = _low_crcl_report()
    by_tau = {p.interval_h: p for p in report.proposals}
    q12 = by_tau[12.0]
    assert q12.amount_mg == 250.0
    assert q12.metrics["auc24_ss"]["value"] < 400.0
    assert q12.in_target is False
    assert by_tau[24.0].in_target is True
    line = next(ln for ln in report.to_text().splitlines() if "q12h" in ln and "from t=" in ln)
    assert "outside target" in line
    assert not any("outside target" in ln for ln in report.to_text().splitlines() if "q24h" in ln)
    proposals = report.to_dict()["proposals"]
    assert [p["in_target"] for p in proposals] == [p.in_target for p in report.proposals]
    assert report.to_dict()["recommended"]["in_target"] is True


def _proposal(interval_h: float, auc: float, pta: float) -> Any:
    from medtwin.dosing import Proposal

    return Proposal(
        start_h=0.0,
        amount_mg=1000.0,
        exact_amount_mg=1000.0,
        interval_h=interval_h,
        duration_h=1.0,
        n_doses=1,
        metrics={"auc24_ss": {"value": auc, "p05": auc * 0.7, "p95": auc * 1.4}},
        pta=pta,
        in_target=400.0 <= auc <= 600.0,
    )


def _target() -> Any:
    from medtwin.dosing import TargetSpec

    return TargetSpec(metric="auc24_ss", value=500.0, low=400.0, high=600.0)


def test_an_out_of_range_candidate_is_never_recommended_over_an_in_range_one() -> None:
    from medtwin.dosing.report import choose_recommendation

    outside = _proposal(12.0, 395.0, 0.60)  # highest PTA, but its MAP AUC misses the range
    inside = _proposal(24.0, 598.0, 0.40)
    assert choose_recommendation([outside, inside], _target()) is inside
    # with no in-range candidate, the best of the rest is still proposed (and flagged)
    other = _proposal(8.0, 380.0, 0.30)
    assert choose_recommendation([outside, other], _target()) is outside


def test_interval_choice_ignores_pta_differences_within_5_points() -> None:
    from medtwin.dosing.report import choose_recommendation

    noisy_best = _proposal(8.0, 590.0, 0.52)
    centred = _proposal(12.0, 505.0, 0.48)  # within 5 points of the best PTA, closer to 500
    assert choose_recommendation([noisy_best, centred], _target()) is centred
    assert choose_recommendation([centred, noisy_best], _target()) is centred
    far_behind = _proposal(12.0, 505.0, 0.46)  # 6 points behind: PTA wins
    assert choose_recommendation([noisy_best, far_behind], _target()) is noisy_best
    # equally close to the midpoint: the longer interval (fewer administrations)
    q12, q24 = _proposal(12.0, 465.9, 0.385), _proposal(24.0, 465.9, 0.38)
    assert choose_recommendation([q12, q24], _target()) is q24


def test_recommendation_is_deterministic_under_the_fixed_seed() -> None:
    first, second = _low_crcl_report(), _low_crcl_report()
    assert first.to_dict()["recommended"] == second.to_dict()["recommended"]


def test_json_states_the_maintenance_start_after_a_loading_dose() -> None:
    report = _a_priori_report()
    rec = report.to_dict()["recommended"]
    assert next(iter(rec)) == "maintenance_start_h"
    assert rec["maintenance_start_h"] == report.loading_dose["maintenance_start_h"] == 12.0
    assert rec["start_h"] == report.loading_dose["start_h"] == 0.0
    assert "first maintenance dose at t=12 h" in report.to_text()


def test_json_maintenance_start_without_a_loading_dose_is_the_start() -> None:
    report = _low_crcl_report()
    assert report.loading_dose is None
    rec = report.to_dict()["recommended"]
    assert rec["maintenance_start_h"] == rec["start_h"] == 0.0


def test_dialysis_with_cockcroft_gault_is_warned() -> None:
    case = parse_case(cg_case(scr={"value": 600, "unit": "umol/L"}, dialysis=1))
    assert any("Cockcroft-Gault" in w and "dialysis" in w and "not modelled" in w for w in case.warnings)
    report = analyze_case(case, n_samples=200)
    assert any("Cockcroft-Gault" in w and "dialysis" in w for w in report.to_dict()["warnings"])
    assert "not meaningful on dialysis" in report.to_text()


def test_no_dialysis_warning_off_dialysis_or_with_a_measured_crcl() -> None:
    off = parse_case(cg_case(scr=1.0, dialysis=0))
    assert not any("dialysis" in w for w in off.warnings)
    measured = parse_case(cg_case(crcl={"value": 15, "unit": "mL/min"}, dialysis=1))
    assert not any("Cockcroft-Gault" in w for w in measured.warnings)
    assert not any("dialysis" in w for w in measured.warnings)  # a measured CrCL: a note, --strict still runs
    assert any("dialysis sessions are not modelled" in n for n in measured.notes)


def test_cli_dialysis_with_cockcroft_gault_warns_and_strict_refuses(tmp_path: Path) -> None:
    path = tmp_path / "case.json"
    path.write_text(json.dumps(cg_case(scr={"value": 600, "unit": "umol/L"}, dialysis=1)))
    result = runner.invoke(app, ["dose", str(path), "--json", "--samples", "200"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert any("not meaningful on dialysis" in w for w in out["warnings"])
    assert out["recommended"]["maintenance_start_h"] == out["recommended"]["start_h"]
    strict = runner.invoke(app, ["dose", str(path), "--strict"])
    assert strict.exit_code == 2
    assert "dialysis" in strict.output
