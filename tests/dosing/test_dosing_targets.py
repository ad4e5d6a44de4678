"""Exposure targets: time to a threshold, combined targets, and setting them from a case file or the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.dosing import (
    CaseError,
    Target,
    analyze_case,
    dose_for_target,
    load_case,
    load_model,
    maintenance_doses,
    parse_case,
    parse_target,
    steady_state_metrics,
)
from medtwin.errors import ValidationError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pk"
runner = CliRunner()

# Buelga 2005 is one-compartment: CL = 1.08 * CrCL(L/h), V = 0.98 * WT, so steady state has a closed form
BUELGA_COV = {"CRCL": 4.8, "WT": 70.0}
CL = 1.08 * 4.8
V = 0.98 * 70.0
K = CL / V


def css_infusion(t: float, dose: float, tau: float, tinf: float) -> float:
    """One-compartment steady-state concentration after the end of a zero-order infusion."""
    rate = dose / tinf
    peak = rate / CL * (1 - math.exp(-K * tinf)) / (1 - math.exp(-K * tau))
    return peak * math.exp(-K * (t - tinf))


def crossing_time(dose: float, tau: float, tinf: float, threshold: float) -> float:
    return tinf + math.log(css_infusion(tinf, dose, tau, tinf) / threshold) / K


def test_time_to_threshold_at_steady_state_matches_the_one_compartment_closed_form() -> None:
    m = load_model("buelga2005_vancomycin")
    eta0 = np.zeros((1, 2))
    out = steady_state_metrics(
        m,
        BUELGA_COV,
        amount_mg=1000.0,
        interval_h=12.0,
        duration_h=1.0,
        etas=eta0,
        metrics=("time_to_threshold_ss", "trough_ss"),
        threshold_mg_l=15.0,
    )
    expected = crossing_time(1000.0, 12.0, 1.0, 15.0)
    assert 1.0 < expected < 12.0
    assert out["time_to_threshold_ss"][0] == pytest.approx(expected, abs=1e-3)
    assert out["trough_ss"][0] == pytest.approx(css_infusion(12.0, 1000.0, 12.0, 1.0), rel=1e-9)


def test_dose_for_a_time_to_threshold_target_is_exact() -> None:
    m = load_model("buelga2005_vancomycin")
    eta0 = np.zeros((1, 2))
    target = Target(metric="time_to_threshold_ss", value=10.0, threshold_mg_l=10.0)
    proposed = maintenance_doses(start_h=0.0, amount_mg=1.0, interval_h=12.0, n_doses=1, duration_h=1.0)
    dose = float(dose_for_target(m, BUELGA_COV, [], proposed, target, eta0)[0])
    # at the solved dose the concentration is exactly the threshold 10 h after each dose starts
    assert css_infusion(10.0, dose, 12.0, 1.0) == pytest.approx(10.0, rel=1e-9)
    assert crossing_time(dose, 12.0, 1.0, 10.0) == pytest.approx(10.0, rel=1e-9)


def test_time_to_threshold_edge_cases() -> None:
    m = load_model("buelga2005_vancomycin")
    eta = np.array([[0.0, 0.0], [-2.0, 0.0]])  # the second patient clears the drug slowly
    out = steady_state_metrics(
        m,
        BUELGA_COV,
        amount_mg=1000.0,
        interval_h=12.0,
        duration_h=1.0,
        etas=eta,
        metrics=("time_to_threshold_ss",),
        threshold_mg_l=1.0,
    )["time_to_threshold_ss"]
    assert out[0] == math.inf  # trough above 1 mg/L: the threshold is never reached
    low = steady_state_metrics(
        m,
        BUELGA_COV,
        amount_mg=10.0,
        interval_h=12.0,
        duration_h=1.0,
        etas=np.zeros((1, 2)),
        metrics=("time_to_threshold_ss",),
        threshold_mg_l=10.0,
    )["time_to_threshold_ss"]
    assert low[0] == 1.0  # already below the threshold at the end of the infusion
    # monotone: a larger dose takes longer to fall to the same threshold
    times = [
        steady_state_metrics(
            m,
            BUELGA_COV,
            amount_mg=d,
            interval_h=24.0,
            duration_h=1.0,
            etas=np.zeros((1, 2)),
            metrics=("time_to_threshold_ss",),
            threshold_mg_l=5.0,
        )["time_to_threshold_ss"][0]
        for d in (500.0, 1000.0, 2000.0)
    ]
    assert times[0] < times[1] < times[2]


def test_time_to_threshold_target_errors() -> None:
    m = load_model("buelga2005_vancomycin")
    eta0 = np.zeros((1, 2))
    with pytest.raises(ValidationError, match="threshold_mg_l"):
        Target(metric="time_to_threshold_ss", value=10.0)
    target = Target(metric="time_to_threshold_ss", value=14.0, threshold_mg_l=10.0)
    proposed = maintenance_doses(start_h=0.0, amount_mg=1.0, interval_h=12.0, n_doses=1, duration_h=1.0)
    with pytest.raises(ValidationError, match="within the dosing interval"):
        dose_for_target(m, BUELGA_COV, [], proposed, target, eta0)


def gentamicin_case(**target: Any) -> dict[str, Any]:
    return {
        "patient_id": "genta-1",
        "model": "xuan2003_gentamicin",
        "covariates": {"crcl": 80, "weight_kg": 70, "age_y": 55},
        "doses": [],
        "levels": [],
        "target": target,
        "regimen": {"start_h": 0, "intervals_h": [24], "increment_mg": 10, "max_rate_mg_h": 1000},
    }


def test_case_file_time_to_threshold_target_drives_the_proposal() -> None:
    case = parse_case(gentamicin_case(metric="time_to_threshold_ss", value=18, low=16, high=20, threshold_mg_l=1))
    assert case.target.threshold_mg_l == 1.0
    report = analyze_case(case, n_samples=300)
    rec = report.recommended
    t_map = rec.metrics["time_to_threshold_ss"]["value"]
    assert 16.0 <= t_map <= 20.0  # the rounded dose still meets the target at the MAP estimate
    assert rec.exact_amount_mg == pytest.approx(rec.amount_mg, abs=5.0)
    assert 0.0 < rec.pta < 1.0
    text = report.to_text()
    assert "time from dose start to the threshold" in text
    assert "threshold 1 mg/L" in text
    # JSON is standard even when some samples never reach the threshold (inf -> null)
    json.dumps(report.to_dict(), allow_nan=False)


def test_combined_target_counts_only_samples_meeting_every_criterion() -> None:
    base = {"metric": "auc24_ss", "low": 400, "high": 600}
    plain = analyze_case(load_case(FIXTURES / "case_a.json"), n_samples=300)
    data = json.loads((FIXTURES / "case_a.json").read_text())
    data["target"] = {**base, "also": [{"metric": "trough_ss", "high": 15}]}
    combined = analyze_case(parse_case(data), n_samples=300)
    by_tau = {p.interval_h: p for p in plain.proposals}
    for p in combined.proposals:
        assert p.pta <= by_tau[p.interval_h].pta
    data["target"] = {**base, "also": [{"metric": "trough_ss", "high": 0.001}]}
    impossible = analyze_case(parse_case(data), n_samples=300)
    assert all(p.pta == 0.0 for p in impossible.proposals)
    assert "and also: trough_ss <= 15" in combined.to_text()
    assert combined.to_dict()["target"]["also"] == [{"metric": "trough_ss", "low": 0.0, "high": 15.0}]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"metric": "time_to_threshold_ss", "value": 18}, "needs threshold_mg_l"),
        ({"metric": "time_to_threshold", "value": 18}, "unknown metric 'time_to_threshold'; did you mean 'time_to_"),
        ({"metric": "auc24_ss", "value": 500, "treshold_mg_l": 1}, "unknown keys.*did you mean 'threshold_mg_l'"),
        ({"metric": "auc24_ss", "value": 500, "also": [{"metric": "trough_ss", "hihg": 5}]}, "did you mean 'high'"),
        ({"metric": "auc24_ss", "value": 500, "also": [{"metric": "auc", "high": 5}]}, "constraints use"),
        ({"metric": "auc24_ss", "value": 500, "also": [{"metric": "trough_ss"}]}, "give 'low', 'high'"),
        ({"metric": "auc24_ss", "value": 500, "also": [{"metric": "trough_ss", "low": 20, "high": 10}]}, "low < high"),
    ],
)
def test_bad_targets_raise_clear_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(CaseError, match=message):
        parse_target(raw)


def test_csv_case_sets_a_time_to_threshold_target_with_a_constraint(tmp_path: Path) -> None:
    csv = tmp_path / "genta.csv"
    csv.write_text(
        "record,name,value,unit,low,high,threshold_mg_l\n"
        "model,xuan2003_gentamicin,,,,,\n"
        "covariate,crcl,80,mL/min,,,\n"
        "covariate,weight_kg,70,,,,\n"
        "target,time_to_threshold_ss,18,,16,20,1\n"
        "target_also,peak_ss,,,,30,\n"
        "regimen,intervals_h,24,,,,\n"
    )
    case = load_case(csv)
    assert case.target.metric == "time_to_threshold_ss"
    assert case.target.threshold_mg_l == 1.0
    assert case.target.constraints[0].metric == "peak_ss"
    assert case.target.constraints[0].high == 30.0


def test_cli_target_and_also_override_the_case_target(tmp_path: Path) -> None:
    path = tmp_path / "genta.json"
    path.write_text(json.dumps(gentamicin_case(metric="auc24_ss", low=70, high=100)))
    result = runner.invoke(
        app,
        [
            "dose",
            str(path),
            "--json",
            "--samples",
            "200",
            "--target",
            "time_to_threshold_ss=16-20,threshold_mg_l=1",
            "--also",
            "peak_ss>=10",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target"]["metric"] == "time_to_threshold_ss"
    assert data["target"]["threshold_mg_l"] == 1.0
    assert data["target"]["also"] == [{"metric": "peak_ss", "low": 10.0, "high": None}]
    assert 16.0 <= data["recommended"]["metrics"]["time_to_threshold_ss"]["value"] <= 20.0
    bad = runner.invoke(app, ["dose", str(path), "--target", "trough_ss"])
    assert bad.exit_code == 2
    assert "METRIC=VALUE" in bad.output


def test_cli_also_alone_extends_the_case_target() -> None:
    result = runner.invoke(
        app, ["dose", str(FIXTURES / "case_a.json"), "--json", "--samples", "200", "--also", "trough_ss=5-15"]
    )
    assert result.exit_code == 0, result.output
    target = json.loads(result.stdout)["target"]
    assert (target["metric"], target["value"], target["low"], target["high"]) == ("auc24_ss", 500.0, 400.0, 600.0)
    assert target["also"] == [{"metric": "trough_ss", "low": 5.0, "high": 15.0}]
    bad = runner.invoke(app, ["dose", str(FIXTURES / "case_a.json"), "--also", "trough_ss<20"])
    assert bad.exit_code == 2
    assert "METRIC<=HIGH" in bad.output


def test_gentamicin_fixture_case_runs_from_the_cli() -> None:
    # the README tour example
    result = runner.invoke(app, ["dose", str(FIXTURES / "case_gentamicin.json"), "--samples", "200"])
    assert result.exit_code == 0, result.output
    assert "threshold 1 mg/L" in result.output
    assert "and also: peak_ss >= 10" in result.output
    assert "PROPOSAL:" in result.output


def test_csv_case_sets_an_auc_window_target(tmp_path: Path) -> None:
    csv = tmp_path / "window.csv"
    csv.write_text(
        "record,name,value,unit,time_h,duration_h,start_h,end_h\n"
        "model,goti2018_vancomycin,,,,,,\n"
        "covariate,crcl,65,mL/min,,,,\n"
        "covariate,weight_kg,70,,,,,\n"
        "dose,,2000,mg,0,2,,\n"
        "target,auc,400,,,,48,72\n"
    )
    case = load_case(csv)
    assert (case.target.metric, case.target.start_h, case.target.end_h) == ("auc", 48.0, 72.0)
