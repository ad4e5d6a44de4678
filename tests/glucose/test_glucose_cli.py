"""`medtwin glucose simulate` and `medtwin glucose metrics` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.cli.glucose import parse_meal
from medtwin.errors import ValidationError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
runner = CliRunner()


def test_simulate_json_csv_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "run.csv"
    png = tmp_path / "trace.png"
    agp = tmp_path / "agp.png"
    res = runner.invoke(
        app,
        ["glucose", "simulate", "-p", "adult#001", "-p", "child#002", "--meal", "07:00=45", "--meal", "12:00=70",
         "--meal", "18:00=80", "--seed", "1", "-o", str(out), "--plot", str(png), "--agp", str(agp), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["patients"] == 2
    assert report["rhs_evaluations"] == 4 * 1440
    assert [m["patient"] for m in report["members"]] == ["adult#001", "child#002"]
    assert 100 < report["members"][0]["mean_mg_dl"] < 200
    frame = pd.read_csv(out)
    assert len(frame) == 2 * 1440
    assert frame.time.iloc[0] == "2018-01-01 00:01:00+00:00"
    assert frame.loc[frame.patient == "adult#001", "cho_announced_g"].sum() == pytest.approx(195.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert agp.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_parquet_table_and_errors(tmp_path: Path) -> None:
    out = tmp_path / "run.parquet"
    res = runner.invoke(app, ["glucose", "simulate", "-p", "adolescent#003", "--controller", "basal", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "adolescent#003" in res.stdout
    assert len(pd.read_parquet(out)) == 1440
    bad = runner.invoke(app, ["glucose", "simulate", "-p", "adult#099"])
    assert bad.exit_code == 1
    assert "unknown virtual patient" in " ".join(bad.output.split())
    bad_meal = runner.invoke(app, ["glucose", "simulate", "--meal", "7h=45"])
    assert bad_meal.exit_code == 1
    assert "HH:MM=grams" in " ".join(bad_meal.output.split())


def test_metrics_on_real_cgm_file() -> None:
    res = runner.invoke(app, ["glucose", "metrics", str(FIXTURES / "cgm" / "hall2018_subject1.csv"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["glucose_column"] == "gl"
    m = data["subjects"]["Subject 1"]
    assert m["n_readings"] == 2915
    assert 120 < m["mean_mg_dl"] < 128
    table = runner.invoke(app, ["glucose", "metrics", str(FIXTURES / "cgm" / "hall2018_subject1.csv")])
    assert table.exit_code == 0
    assert "Subject 1" in table.stdout


def test_metrics_errors(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["glucose", "metrics", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1
    assert "no such file" in " ".join(missing.output.split())
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    res = runner.invoke(app, ["glucose", "metrics", str(bad)])
    assert res.exit_code == 1
    assert "need a time column" in " ".join(res.output.split())


def test_parse_meal() -> None:
    assert parse_meal("07:30=45") == (450.0, 45.0)
    with pytest.raises(ValidationError):
        parse_meal("25:00=10")
