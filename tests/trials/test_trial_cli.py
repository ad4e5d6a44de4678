"""`medtwin trial ...`: run, power, check, examples; reports written as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from medtwin.cli import app

SPEC = """
[trial]
name = "cli-test"
kind = "glucose"
seed = 9
description = "small"

[population]
source = "fitted"
size = 24
therapy = "sampled"

[scenario]
days = 1
run_in_days = 1

[[arms]]
name = "standard"
control = true

[[arms]]
name = "basal-only"
controller = "basal"

[endpoints]
primary = "tir_pct"
secondary = ["lbgi"]

[power]
sizes = [8, 16]
replicates = 20
pool = 30
"""


def _spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "trial.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_run_writes_the_report_files(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["trial", "run", str(spec), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "enrolled 24" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["trial"]["seed"] == 9
    assert report["primary_endpoint"] == "tir_pct"
    assert [f["stage"] for f in report["flow"]][:1] == ["screened"]
    primary = report["primary"][0]
    methods = [e["method"] for e in primary["estimates"]]
    assert methods == ["difference", "ancova", "procova"]
    # basal insulin alone cannot cover meals: time in range falls
    assert primary["estimates"][0]["estimate"] < -10
    assert "prognostic_rho_control" in primary
    assert "measured_variance_ratio_procova" in primary
    patients = pd.read_csv(out / "patients.csv")
    assert len(patients) == 24
    assert set(patients["arm"]) == {"standard", "basal-only"}
    assert "prognostic:tir_pct" in patients.columns
    assert "baseline:tir_pct" in patients.columns
    assert (out / "spec.toml").read_text() == SPEC
    for png in ("consort.png", "forest.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    again = CliRunner().invoke(app, ["trial", "run", str(spec), "--json"])
    rerun = json.loads(again.output)
    assert rerun["comparisons"] == report["comparisons"]  # same spec and seed, same numbers


def test_power_writes_curves(tmp_path: Path) -> None:
    out = tmp_path / "power"
    result = CliRunner().invoke(app, ["trial", "power", str(_spec(tmp_path)), "-o", str(out), "--replicates", "10"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "power.json").read_text())
    assert data["replicates"] == 10
    curves = data["studies"][0]["curves"]
    assert [c["method"] for c in curves] == ["difference", "ancova", "procova"]
    assert all(len(c["simulated"]) == 2 for c in curves)
    assert (out / "power.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["trial", "power", str(_spec(tmp_path)), "--replicates", "2"])
    assert bad.exit_code != 0
    assert ">= 10" in bad.output


def test_check_examples_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["trial", "examples"])
    assert listed.exit_code == 0
    assert "vancomycin-mipd" in listed.output
    checked = runner.invoke(app, ["trial", "check", "glucose-target-120"])
    assert checked.exit_code == 0
    assert "prognostic known-parameters" in checked.output
    typo = _spec(tmp_path, SPEC.replace("run_in_days", "run_in_day"))
    failed = runner.invoke(app, ["trial", "run", str(typo)])
    assert failed.exit_code == 1
    assert "did you mean 'run_in_days'?" in " ".join(failed.output.split())
    missing = runner.invoke(app, ["trial", "run", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 1
    assert "does not exist" in " ".join(missing.output.split())
