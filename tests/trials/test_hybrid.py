"""Hybrid mode: participants' run-in CGM builds matched twins whose predictions adjust the real analysis.

The "real" participants here are the 30 original UVA/Padova subjects (their CGM files written as a real trial's
would be); their twins come from a library of sampled virtual patients, never from the participants' own
parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.errors import ValidationError
from medtwin.glucose import run_scenario, summary_metrics_batch
from medtwin.trials import hybrid_analysis, parse_spec, read_outcomes, read_run_in
from medtwin.trials.glucose_arms import glucose_endpoints

SPEC: dict[str, Any] = {
    "trial": {"name": "h", "kind": "glucose", "seed": 4},
    "population": {"source": "fitted", "size": 40, "groups": {"adult": 1, "adolescent": 1, "child": 1}},
    "scenario": {"days": 2, "run_in_days": 2, "signal": "cgm"},
    "arms": [{"name": "standard", "control": True}, {"name": "intensified", "target_mg_dl": 120}],
    "endpoints": {"primary": "tir_pct", "secondary": ["gmi_pct"]},
    "analysis": {"prognostic": "matched", "library_size": 150, "neighbours": 10},
}
EFFECT = 3.0


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    out = tmp_path_factory.mktemp("hybrid")
    run_in = run_scenario("all", days=2, randomize_meals=True, seed=101)
    t = np.arange(0, 2880, 5)
    rows = [
        {"id": f"P{i:02d}", "t_min": float(m), "glucose_mg_dl": float(run_in.cgm_mg_dl[m, i])}
        for i in range(30)
        for m in t
    ]
    rows.append({"id": "P00", "t_min": "n/a", "glucose_mg_dl": 100.0})  # an unreadable row is counted
    pd.DataFrame(rows).to_csv(out / "runin.csv", index=False)
    trial = run_scenario("all", days=2, randomize_meals=True, seed=202)
    ends = glucose_endpoints(summary_metrics_batch(trial.cgm_mg_dl[1:]))
    arm = np.where(np.arange(30) % 2 == 0, "standard", "intensified")
    frame = pd.DataFrame(
        {
            "id": [f"P{i:02d}" for i in range(30)],
            "arm": arm,
            "tir_pct": ends["tir_pct"] + EFFECT * (arm == "intensified"),
            "gmi_pct": ends["gmi_pct"],
        }
    )
    frame.to_csv(out / "outcomes.csv", index=False)
    spec_path = out / "spec.toml"
    return out / "runin.csv", out / "outcomes.csv", spec_path


def test_twins_from_run_in_cgm_supply_the_prognostic_covariate(files: tuple[Path, Path, Path]) -> None:
    spec = parse_spec(SPEC)
    baseline, skipped = read_run_in(files[0])
    assert skipped == 1
    assert len(baseline.ids) == 30
    ids, arm, outcomes = read_outcomes(files[1], spec)
    result = hybrid_analysis(spec, baseline, ids, arm, outcomes, skipped_rows=skipped)
    tir = result.estimates["tir_pct"]["intensified"]
    by = {e.method: e for e in tir}
    assert set(by) == {"difference", "ancova", "procova"}
    # the twins were matched from a library, not built from the participants' own parameters, yet predict
    assert result.rho_control["tir_pct"] > 0.4
    assert by["procova"].se < by["difference"].se
    assert by["procova"].covariates == ("prognostic:tir_pct", "run_in:tir_pct")
    # the prognostic score is the mean control outcome of each participant's matched library twins
    assert result.prognostic["tir_pct"].shape == (30,)
    assert np.all((result.prognostic["tir_pct"] >= 0) & (result.prognostic["tir_pct"] <= 100))
    assert result.to_dict()["participants"] == 30


def test_matched_twin_averages_the_nearest_library_patients() -> None:
    from medtwin.trials import BaselineData, MatchedTwin

    library = {f: np.arange(10.0) for f in ("mean_mg_dl", "tir_pct")}
    twin = MatchedTwin(library, {"tir_pct": np.arange(10.0) * 10}, neighbours=3, features=("mean_mg_dl", "tir_pct"))
    pred = twin.predict(
        BaselineData(ids=("x",), run_in={"mean_mg_dl": np.array([4.2]), "tir_pct": np.array([4.2])}), ["tir_pct"]
    )
    assert pred["tir_pct"][0] == pytest.approx(40.0)  # neighbours 3, 4, 5
    with pytest.raises(ValidationError, match="neighbours must be in"):
        MatchedTwin(library, {"tir_pct": np.zeros(10)}, neighbours=11, features=("mean_mg_dl",))
    with pytest.raises(ValidationError, match="no control outcomes for"):
        twin.predict(BaselineData(ids=("x",), run_in=library), ["gmi_pct"])


def test_hybrid_files_are_checked(tmp_path: Path, files: tuple[Path, Path, Path]) -> None:
    spec = parse_spec(SPEC)
    frame = pd.read_csv(files[1])
    frame.loc[0, "arm"] = "placebo"
    bad_arm = tmp_path / "arm.csv"
    frame.to_csv(bad_arm, index=False)
    with pytest.raises(ValidationError, match="arms \\['placebo'\\] are not in the spec"):
        read_outcomes(bad_arm, spec)
    missing = tmp_path / "missing.csv"
    pd.read_csv(files[1]).drop(columns=["gmi_pct"]).to_csv(missing, index=False)
    with pytest.raises(ValidationError, match="no column for endpoint 'gmi_pct'"):
        read_outcomes(missing, spec)
    fewer = tmp_path / "fewer.csv"
    pd.read_csv(files[1]).iloc[:-1].to_csv(fewer, index=False)
    ids, arm, outcomes = read_outcomes(fewer, spec)
    baseline, _ = read_run_in(files[0])
    with pytest.raises(ValidationError, match="without both run-in and outcomes: \\['P29'\\]"):
        hybrid_analysis(spec, baseline, ids, arm, outcomes)
    no_glucose = tmp_path / "runin.csv"
    pd.DataFrame({"id": ["a"], "t_min": [0]}).to_csv(no_glucose, index=False)
    with pytest.raises(ValidationError, match="need a glucose column"):
        read_run_in(no_glucose)


def test_hybrid_cli(tmp_path: Path, files: tuple[Path, Path, Path]) -> None:
    spec_file = tmp_path / "hybrid.toml"
    spec_file.write_text(
        '[trial]\nname = "h"\nkind = "glucose"\nseed = 4\n'
        '[population]\nsource = "fitted"\nsize = 40\ngroups = { adult = 1, adolescent = 1, child = 1 }\n'
        '[scenario]\ndays = 2\nrun_in_days = 2\nsignal = "cgm"\n'
        '[[arms]]\nname = "standard"\ncontrol = true\n[[arms]]\nname = "intensified"\ntarget_mg_dl = 120\n'
        '[endpoints]\nprimary = "tir_pct"\nsecondary = ["gmi_pct"]\n'
        '[analysis]\nprognostic = "matched"\nlibrary_size = 150\nneighbours = 10\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        app, ["trial", "hybrid", str(spec_file), "--run-in", str(files[0]), "--outcomes", str(files[1]), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"participants": 30' in result.output
    assert '"skipped_run_in_rows": 1' in result.output
