"""`medtwin glucose twin fit|replay|forecast|advise` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.glucose.identify import Posterior
from medtwin.glucose.personal_twin import BolusSettings, PersonalGlucoseTwin

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def twin_file(tmp_path: Path, twin_days: Any, twin_posterior: Posterior) -> Path:
    twin = PersonalGlucoseTwin(twin_days.data[0].window(0.0, 2880.0), twin_posterior,
                               bolus_settings=BolusSettings(cr_g_per_u=12.0, cf_mg_dl_per_u=15.0))  # fmt: skip
    path = tmp_path / "me.json"
    path.write_bytes(twin.snapshot())
    return path


def test_fit_writes_a_twin_and_a_plot(tmp_path: Path, twin_days: Any) -> None:
    csv = twin_days.data[0].window(0.0, 600.0).write_csv(tmp_path / "day.csv")
    out, png = tmp_path / "t.json", tmp_path / "fit.png"
    res = runner.invoke(app, ["glucose", "twin", "fit", str(csv), "--weight-kg", "102.3", "-o", str(out),
                              "--plot", str(png), "--max-steps", "250", "--allow-unconverged", "--json",
                              "--cr", "12", "--cf", "15"])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert set(report["parameters"]) >= {"Gb", "Vmx", "G0"}
    assert report["diagnostics"]["steps"] <= 250
    assert png.read_bytes()[:8] == PNG
    twin = PersonalGlucoseTwin.restore(out.read_bytes())
    assert twin.bolus_settings == BolusSettings(cr_g_per_u=12.0, cf_mg_dl_per_u=15.0)
    assert twin.data.cgm_t_min.size == report["data"]["readings"]


def test_fit_errors_are_clear(tmp_path: Path) -> None:
    res = runner.invoke(app, ["glucose", "twin", "fit", str(tmp_path / "nope.csv"), "--weight-kg", "70"])
    assert res.exit_code == 1
    assert "no such file" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("time,cgm_mg_dl,basal_u_h\n2024-01-01T00:00:00+00:00,100,1\n2024-01-01T00:05:00+00:00,101,\n")
    res = runner.invoke(app, ["glucose", "twin", "fit", str(bad)])
    assert res.exit_code == 1
    assert "--weight-kg is required" in res.output
    res = runner.invoke(app, ["glucose", "twin", "fit", str(bad), "--weight-kg", "70"])
    assert res.exit_code == 1
    assert "usable CGM readings" in res.output
    res = runner.invoke(app, ["glucose", "twin", "fit", str(tmp_path / "e.json"), "--weight-kg", "70"])
    assert res.exit_code == 1


def test_replay_forecast_advise(tmp_path: Path, twin_file: Path, twin_days: Any) -> None:
    png = tmp_path / "replay.png"
    res = runner.invoke(app, ["glucose", "twin", "replay", str(twin_file), "--bolus-scale", "1.3", "--name", "x1.3",
                              "--draws", "40", "--plot", str(png), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    replays = json.loads(res.stdout)["replays"]
    assert [r["therapy"]["name"] for r in replays] == ["recorded", "x1.3"]
    assert replays[1]["metrics"]["mean_mg_dl"]["median"] < replays[0]["metrics"]["mean_mg_dl"]["median"]
    assert png.read_bytes()[:8] == PNG
    res = runner.invoke(
        app, ["glucose", "twin", "replay", str(twin_file), "--controller", "basal-bolus", "--draws", "20"]
    )
    assert res.exit_code == 0, res.output
    assert "tir_pct" in res.stdout
    res = runner.invoke(app, ["glucose", "twin", "replay", str(twin_file), "--meal-scale", "1.5", "--draws", "20",
                              "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    recorded, bigger = json.loads(res.stdout)["replays"]
    assert bigger["therapy"]["meal_scale"] == 1.5
    assert bigger["metrics"]["mean_mg_dl"]["median"] > recorded["metrics"]["mean_mg_dl"]["median"]

    new = twin_days.data[0].window(2880.0, 3060.0).write_csv(tmp_path / "new.csv")
    fpng = tmp_path / "forecast.png"
    res = runner.invoke(app, ["glucose", "twin", "forecast", str(twin_file), str(new), "--plot", str(fpng), "--json"])
    assert res.exit_code == 0, res.output
    fc = json.loads(res.stdout)
    assert [h["minutes"] for h in fc["forecast"]["horizons"]] == [30, 60, 120]
    assert fc["forecast"]["at"].startswith("2024-01-03T03:00")
    assert fpng.read_bytes()[:8] == PNG
    state = json.loads(twin_file.read_bytes())["forecaster"]
    assert state["t_min"] == pytest.approx(3060.0)

    res = runner.invoke(app, ["glucose", "twin", "advise", str(twin_file), "--carbs", "60", "--json"])
    assert res.exit_code == 0, res.output
    advice = json.loads(res.stdout)
    # the twin's dose keeps P(< 70) <= 5 %, or, when no dose can, is the safest one
    if advice["feasible"]:
        assert advice["twin"]["hypo_probability"] <= 0.05
    calc_u, twin_u = advice["calculator"]["bolus_u"], advice["twin"]["bolus_u"]
    assert calc_u >= 0
    assert 0.6 * calc_u - 0.05 <= twin_u <= 1.3 * calc_u + 0.05  # the default policy: robust
    if twin_u != pytest.approx(calc_u):
        assert advice["twin"]["risk_index"] < advice["calculator"]["risk_index"]
    res = runner.invoke(
        app, ["glucose", "twin", "advise", str(twin_file), "--carbs", "60", "--policy", "guard", "--json"]
    )
    assert res.exit_code == 0, res.output
    guard = json.loads(res.stdout)
    assert guard["twin"]["hypo_probability"] <= guard["calculator"]["hypo_probability"]
    assert guard["twin"]["bolus_u"] <= guard["calculator"]["bolus_u"] + 1e-9
    res = runner.invoke(app, ["glucose", "twin", "advise", str(twin_file), "--carbs", "60", "--cr", "10"])
    assert res.exit_code == 0  # CF comes from the twin file
    res = runner.invoke(
        app, ["glucose", "twin", "advise", str(twin_file), "--carbs", "60", "--policy", "risk", "--json"]
    )
    assert res.exit_code == 0, res.output
    risk = json.loads(res.stdout)
    if risk["feasible"]:
        assert risk["twin"]["hypo_probability"] <= 0.05
    if risk["calculator"]["hypo_probability"] <= 0.05:  # the calculator's dose is a candidate of the risk policy
        assert risk["twin"]["risk_index"] <= risk["calculator"]["risk_index"] + 1e-9
    res = runner.invoke(
        app, ["glucose", "twin", "advise", str(twin_file), "--carbs", "60", "--policy", "calibrated", "--json"]
    )
    assert res.exit_code == 0, res.output
    cal = json.loads(res.stdout)
    assert cal["twin"]["bolus_u"] <= cal["calculator"]["bolus_u"] + 1e-9  # never more than the calculator
    if cal["calculator"]["hypo_probability"] <= 0.5:  # a low not more likely than not: the calculator's dose
        assert cal["twin"]["bolus_u"] == pytest.approx(cal["calculator"]["bolus_u"])
    res = runner.invoke(app, ["glucose", "twin", "advise", str(twin_file), "--carbs", "60", "--policy", "bold"])
    assert res.exit_code != 0
    assert "policy" in res.output


def test_commands_refuse_a_bad_twin_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "other"}')
    for args in (["replay", str(bad)], ["forecast", str(bad)], ["advise", str(bad), "--carbs", "20"]):
        res = runner.invoke(app, ["glucose", "twin", *args])
        assert res.exit_code == 1
        assert "not a glucose twin snapshot" in res.output


def test_replay_warns_when_the_twins_glucose_reaches_zero(twin_file: Path) -> None:
    res = runner.invoke(app, ["glucose", "twin", "replay", str(twin_file), "--bolus-scale", "6", "--name", "x6",
                              "--draws", "20"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stdout
    assert "reach 0 mg/dL" in " ".join(res.stdout.split())
    res = runner.invoke(app, ["glucose", "twin", "replay", str(twin_file), "--bolus-scale", "1.1", "--draws", "20"])
    assert res.exit_code == 0, res.output
    assert "warning:" not in res.stdout


def test_forecast_takes_low_readings_as_evidence_and_alerts(tmp_path: Path, twin_file: Path, twin_days: Any) -> None:
    from dataclasses import replace

    import numpy as np

    new = twin_days.data[0].window(2880.0, 3060.0)
    censored = np.zeros(new.cgm_t_min.size)
    censored[-8:] = 1.0  # the sensor reads Low for the last 24 minutes
    values = new.cgm_mg_dl.copy()
    values[-8:] = 39.0
    csv = replace(new, cgm_mg_dl=values, cgm_censored=censored).write_csv(tmp_path / "low.csv")
    assert csv.read_text().count(",Low,") == 8
    res = runner.invoke(app, ["glucose", "twin", "forecast", str(twin_file), str(csv), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["skipped_readings"] <= 1  # the reading at the twin's state only: the Lows are used
    assert any(a["code"] == "glucose-low-predicted" and a["status"] == "active" for a in report["alerts"])
    assert report["forecast"]["horizons"][0]["median_mg_dl"] < 70.0
