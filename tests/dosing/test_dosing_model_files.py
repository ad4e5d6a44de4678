"""Model files cannot be silently wrong: strict keys, schema, unused etas, bounded expressions, one-line errors.

Each mistake of issue 14 (a pharmacometrician adding a model) is written into a copy of a small model file; the
loader must refuse it with one line naming the file, the field and the problem, and `medtwin dose check` must print
that line (exit 2, no traceback).  Also: `dose check` output, `dose models PATH`, a model without random effects
through `medtwin dose`, a model path relative to the case file, point targets and parameter units in the report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.dosing import ModelError, analyze_case, load_case, load_model, parse_case
from medtwin.dosing.expressions import MAX_DEPTH, ExpressionError, compile_expression
from medtwin.dosing.modelfile import infer_parameter_units

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pk"
runner = CliRunner()

GOOD = """\
schema = 1

[model]
id = "t1"
drug = "example drug"
title = "a 2-compartment test model"
citation = "none: test"
doi = "none"
unverified = ["everything: made-up numbers"]

[covariates.WT]
unit = "kg"
from = "weight_kg"
valid = [40.0, 150.0]
typical = 70.0

[parameters]
CL = "5 * (WT / 70)**0.75 * exp(ETA_CL)"
V1 = "40 * (WT / 70) * exp(ETA_V1)"
Q = "6.5"
V2 = "30"

[structure]
compartments = 2
k10 = "CL / V1"
k12 = "Q / V1"
k21 = "Q / V2"
central_volume = "V1"

[omega]
etas = ["ETA_CL", "ETA_V1"]
variance = [0.1, 0.05]

[error]
model = "combined1"
additive_sd_mg_l = 1.0
proportional_sd = 0.2
"""


def write_model(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edited(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


def test_the_good_file_loads_with_units_from_the_structure(tmp_path: Path) -> None:
    m = load_model(write_model(tmp_path, GOOD))
    assert m.parameter_units == {"CL": "L/h", "V1": "L", "Q": "L/h", "V2": "L"}
    assert m.typical_covariates() == {"WT": 70.0}
    assert infer_parameter_units(m) == m.parameter_units


# (edit of the good file, the words the one-line error must contain)
MISTAKES = [
    # misspelt error terms: before, the term silently became 0 and the fit changed
    (
        ("proportional_sd = 0.2", "proportinal_sd = 0.2"),
        ["[error]", "'proportinal_sd'", "did you mean 'proportional_sd'"],
    ),
    (("additive_sd_mg_l = 1.0", "additive_sd = 1.0"), ["[error]", "'additive_sd'", "did you mean 'additive_sd_mg_l'"]),
    (("additive_sd_mg_l = 1.0", "additve_sd_mg_l = 1.0"), ["did you mean 'additive_sd_mg_l'"]),
    # unknown keys that were ignored
    (('k21 = "Q / V2"', 'k21 = "Q / V2"\nk20 = "0.1"'), ["[structure]", "unknown key 'k20'", "did you mean"]),
    (("compartments = 2", "compartment = 2"), ["[structure]", "'compartment'", "did you mean 'compartments'"]),
    (("unverified = [", "unverfied = ["), ["[model]", "'unverfied'", "did you mean 'unverified'"]),
    (("typical = 70.0", "typicl = 70.0"), ["[covariates.WT]", "did you mean 'typical'"]),
    (("[omega]\n", '[omega]\ncv_to_variance = "log"\n'), ["[omega].cv_to_variance", "only used with 'cv_percent'"]),
    # the error model's terms must match its kind
    (("proportional_sd = 0.2\n", ""), ["combined1 error model needs proportional_sd"]),
    (('model = "combined1"', 'model = "additive"'), ["additive error model has no proportional term"]),
    # an eta declared but used by no parameter changes the fit through Omega
    (
        (
            'etas = ["ETA_CL", "ETA_V1"]\nvariance = [0.1, 0.05]',
            'etas = ["ETA_CL", "ETA_V1", "ETA_Q"]\nvariance = [0.1, 0.05, 0.2]',
        ),
        ["[omega].etas: ETA_Q declared but used by no expression"],
    ),
    (("variance = [0.1, 0.05]", "variance = [0.1, 0.05, 0.2]"), ["Omega has shape"]),
    # the schema line
    (("schema = 1\n", ""), ["missing 'schema = 1'"]),
    (("schema = 1", "schema = 2"), ["schema = 2 is not supported", "reads schema 1"]),
    # expressions
    (('Q = "6.5"', 'Q = "5 / 0"'), ["[parameters].Q", "'5 / 0' is not a finite number"]),
    (('Q = "6.5"', 'Q = "10**10**10"'), ["[parameters].Q", "not a finite number"]),
    (('Q = "6.5"', 'Q = "' + "9" * 400 + '"'), ["[parameters].Q", "too large for a double"]),
    (('Q = "6.5"', 'Q = "(-8) ** 0.5"'), ["[parameters].Q", "not a finite number", "fractional power of a negative"]),
    (('Q = "6.5"', 'Q = "' + "+".join(["1"] * 2000) + '"'), ["[parameters].Q", "too long"]),
    (('Q = "6.5"', 'Q = "' + "+".join(["1"] * 300) + '"'), ["[parameters].Q", "too large"]),
    (('Q = "6.5"', 'Q = "' + "**".join(["1.0001"] * 200) + '"'), ["[parameters].Q"]),
    (('Q = "6.5"', 'Q = "' + "exp(" * 120 + "0" + ")" * 120 + '"'), ["[parameters].Q", "nested too deeply"]),
    (('V2 = "30"', 'V2 = "30 * (WT / 70)^0.5"'), ["[parameters].V2", "use **", "not a power"]),
    (('V2 = "30"', 'V2 = "30 * ln(WT)"'), ["[parameters].V2", "unknown function ln()", "use log"]),
    (('V2 = "30"', 'V2 = "30 if WT > 70 else 40"'), ["[parameters].V2", "if/else", "is not allowed"]),
    (('V2 = "30"', 'V2 = "30 * WTT"'), ["[parameters].V2", "undefined names ['WTT']", "did you mean 'WT'"]),
    # values that are not expressions
    (("valid = [40.0, 150.0]", 'valid = "ab"'), ["[covariates.WT].valid", "expected [low, high]"]),
    (("valid = [40.0, 150.0]", "valid = [150.0, 40.0]"), ["[covariates.WT].valid", "low must be below high"]),
    (("typical = 70.0", 'typical = 70.0\ndefault = "seventy"'), ["[covariates.WT].default", "expected a number"]),
    (('unit = "kg"', 'unit = "kilogram"'), ["[covariates.WT].unit"]),
    (("compartments = 2", "compartments = 4"), ["[structure].compartments", "must be 1, 2 or 3"]),
    (('central_volume = "V1"', 'central_volume = "V1 - 100"'), ["central_volume", "not valid"]),
    (("[structure]", '[units]\nV1 = "L/h"\n\n[structure]'), ["[units].V1", "makes V1 a L quantity"]),
]


@pytest.mark.parametrize(("edit", "words"), MISTAKES, ids=[f"{i}:{m[0][1][:24]}" for i, m in enumerate(MISTAKES)])
def test_each_mistake_is_one_line_naming_file_and_field(
    tmp_path: Path, edit: tuple[str, str], words: list[str]
) -> None:
    path = write_model(tmp_path, edited(*edit))
    with pytest.raises(ModelError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    assert message.count(str(path)) == 1, message
    for word in words:
        assert word in message, (word, message)
    # the CLI prints the same line, exit code 2, no traceback
    result = runner.invoke(app, ["dose", "check", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {message}"
    assert "Traceback" not in result.output


def test_expression_limits_are_enforced_without_recursion() -> None:
    deep = "abs(" * (MAX_DEPTH + 5) + "1" + ")" * (MAX_DEPTH + 5)
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression(deep, where="f")
    chain = "**".join(["2"] * 300)
    with pytest.raises(ExpressionError, match="f: expression too large"):
        compile_expression(chain, where="f")
    # IEEE evaluation: the value is refused, no ZeroDivisionError / OverflowError escapes
    for text in ("5 / 0", "10**10**10", "(-8) ** 0.5", "log(0 - 1)", "WT / ZERO"):
        expr = compile_expression(text, where="f")
        with pytest.raises(ExpressionError, match="not a finite number"):
            expr.evaluate({"WT": np.float64(70.0), "ZERO": np.float64(0.0)})
    assert compile_expression("max(2, 3) + min(1, 0)").evaluate({}) == 3.0


def test_a_division_by_zero_for_one_patient_names_the_field(tmp_path: Path) -> None:
    path = write_model(tmp_path, edited('V2 = "30"', 'V2 = "30 * 70 / (WT - 50)"'))
    m = load_model(path)  # fine for the typical patient (70 kg)
    with pytest.raises(ModelError, match=r"\[parameters\]\.V2: .* is not a finite number for WT=50") as caught:
        m.system({"WT": 50.0}, np.zeros((1, 2)))
    assert str(caught.value).count(str(path)) == 1


def test_dose_check_prints_what_it_understood(tmp_path: Path) -> None:
    path = write_model(tmp_path, GOOD)
    result = runner.invoke(app, ["dose", "check", str(path), "--covariate", "WT=80"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{path}: schema 1, valid" in out
    assert "WT [kg]  case field weight_kg; valid 40-150; used 80" in out
    assert re.search(r"CL = 5 \* \(WT / 70\)\*\*0\.75 \* exp\(ETA_CL\)\n\s+\[L/h\]  etas: ETA_CL;  typical 5\.52", out)
    assert "Q = 6.5\n         [L/h]  etas: none (no between-patient variability)" in out
    assert "ETA_CL       0.1         0   (CV 32.4 % if log-normal)" in out
    assert "Error model: combined1: SD = a + b * f (summed SDs), a = 1 mg/L, b = 0.2" in out
    assert "one dose of 1000 mg IV over 1 h" in out
    data = json.loads(runner.invoke(app, ["dose", "check", str(path), "--json"]).stdout)
    assert data["covariates"][0] | {"options": {}} == data["covariates"][0]
    assert [p["unit"] for p in data["parameters"]] == ["L/h", "L", "L/h", "L"]
    assert data["omega"]["matrix"] == [[0.1, 0.0], [0.0, 0.05]]
    # AUC24 at steady state of the typical patient is 24/tau * dose / CL (mass balance)
    assert data["steady_state"]["auc24_ss"] == pytest.approx(2000.0 / 5.0, rel=1e-9)
    bad = runner.invoke(app, ["dose", "check", str(path), "--covariate", "WGT=80"])
    assert bad.exit_code == 2
    assert "did you mean 'WT'" in bad.stderr


def test_dose_models_accepts_paths(tmp_path: Path) -> None:
    write_model(tmp_path, GOOD, "a.toml")
    write_model(tmp_path, edited('id = "t1"', 'id = "t2"').replace("schema = 1\n", ""), "b.toml")
    result = runner.invoke(app, ["dose", "models", str(tmp_path)])
    assert result.exit_code == 2  # one of the two is refused, and says why
    assert result.stdout.startswith("t1 ")
    assert "b.toml: missing 'schema = 1'" in result.stderr
    ok = runner.invoke(app, ["dose", "models", str(tmp_path / "a.toml"), "--json"])
    assert ok.exit_code == 0
    assert json.loads(ok.stdout)[0]["id"] == "t1"


def no_eta_model(tmp_path: Path) -> Path:
    text = edited('CL = "5 * (WT / 70)**0.75 * exp(ETA_CL)"', 'CL = "5 * (WT / 70)**0.75"')
    text = text.replace('V1 = "40 * (WT / 70) * exp(ETA_V1)"', 'V1 = "40 * (WT / 70)"')
    text = text.replace('etas = ["ETA_CL", "ETA_V1"]\nvariance = [0.1, 0.05]', "etas = []")
    return write_model(tmp_path, text, "noeta.toml")


def test_a_model_without_random_effects_runs_through_medtwin_dose(tmp_path: Path) -> None:
    no_eta_model(tmp_path)
    case = {
        "patient_id": "p1",
        "model": "noeta.toml",  # relative to the case file's folder, not to the current one
        "covariates": {"weight_kg": 70},
        "doses": [{"time_h": 0, "amount": 500, "duration_h": 1, "interval_h": 12, "additional": 2}],
        "levels": [{"time_h": 11, "value": 3.0}],
        "target": {"metric": "auc24_ss", "low": 150, "high": 250},
    }
    (tmp_path / "case.json").write_text(json.dumps(case))
    result = runner.invoke(app, ["dose", str(tmp_path / "case.json"), "--samples", "100"])
    assert result.exit_code == 0, result.output
    assert "has no random effects (etas = []): measured levels cannot individualise it" in result.stdout
    assert "Levels (not fitted" in result.stdout
    assert "CL = 5 L/h (no random effect in the model" in result.stdout
    report = analyze_case(load_case(tmp_path / "case.json"), n_samples=100)
    assert report.fit is None
    assert report.samples.shape == (100, 0)
    assert report.recommended.pta in (0.0, 1.0)  # every sample is the typical patient


def test_relative_model_path_is_resolved_against_the_case_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cases"
    folder.mkdir()
    no_eta_model(folder)
    (folder / "case.json").write_text(json.dumps({"model": "noeta.toml", "covariates": {"weight_kg": 70}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_case(folder / "case.json").model.id == "t1"
    with pytest.raises(ModelError, match=r"noeta\.toml does not exist"):  # a mapping has no folder: cwd
        parse_case({"model": "noeta.toml", "covariates": {"weight_kg": 70}})


def test_point_target_hit_exactly_is_not_outside_target(tmp_path: Path) -> None:
    no_eta_model(tmp_path)
    base = {"model": str(tmp_path / "noeta.toml"), "covariates": {"weight_kg": 70}}
    probe = analyze_case(parse_case(base | {"target": {"metric": "trough_ss", "value": 5}}), n_samples=100)
    exact = next(p for p in probe.proposals if p.interval_h == 12)
    value = exact.metrics["trough_ss"]["value"]  # the trough this candidate's dose gives
    report = analyze_case(parse_case(base | {"target": {"metric": "trough_ss", "value": value}}), n_samples=100)
    hit = next(p for p in report.proposals if p.interval_h == 12)
    assert hit.amount_mg == exact.amount_mg
    assert hit.in_target
    assert report.recommended is hit
    text = report.to_text()
    assert "[outside target]" not in text
    assert "PTA 0%" not in text
    assert "+0.0% from" in text
    assert "a point target: no acceptable range given" in text
    assert report.to_dict()["recommended"]["pta"] is None  # not a number: JSON null


def test_report_parameters_have_units_and_explain_fixed_ones() -> None:
    report = analyze_case(load_case(FIXTURES / "case_a.json"), n_samples=200)
    text = report.to_text()
    assert re.search(r"CL = [\d.]+ L/h \([\d.]+ - [\d.]+\)", text)
    assert re.search(r"V1 = [\d.]+ L \(", text)
    assert "Q = 6.5 L/h (no random effect in the model: the same for every patient" in text
    params = report.to_dict()["parameters"]
    assert params["Q"]["unit"] == "L/h"
    assert params["Q"]["random_effect"] is False
    assert params["CL"]["random_effect"] is True
