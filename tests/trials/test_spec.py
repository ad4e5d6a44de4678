"""Trial specs are strict: unknown keys and values are refused with the closest known word; examples parse."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from medtwin.trials import SpecError, example_specs, load_spec, parse_spec
from medtwin.trials.protocol import DosingArm, GlucoseArm, GlucoseScenario

GLUCOSE: dict[str, Any] = {
    "trial": {"name": "t", "kind": "glucose", "seed": 3},
    "population": {"source": "fitted", "size": 10},
    "scenario": {"days": 2, "run_in_days": 1},
    "arms": [{"name": "a", "control": True}, {"name": "b", "target_mg_dl": 120}],
}


def _with(path: str, value: Any, base: dict[str, Any] = GLUCOSE) -> dict[str, Any]:
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    node[last] = value
    return data


def test_every_example_parses_and_is_listed() -> None:
    names = example_specs()
    assert {"glucose-target-120", "glucose-crossover-30", "vancomycin-mipd", "glucose-hybrid-matched"} <= set(names)
    for name in names:
        spec = load_spec(name)
        assert spec.text
        assert spec.name == name


def test_defaults_of_a_minimal_glucose_spec() -> None:
    spec = parse_spec(GLUCOSE)
    assert spec.design == "parallel"
    assert spec.control == 0
    assert spec.primary == "tir_pct"
    assert isinstance(spec.scenario, GlucoseScenario)
    assert spec.scenario.sensor == "Dexcom"
    assert spec.analysis.baseline == "run_in"
    assert spec.analysis.prognostic == "known-parameters"
    assert spec.allocation.ratio == (1, 1)
    assert isinstance(spec.arms[1], GlucoseArm)
    assert spec.arms[1].target_mg_dl == 120


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("scenario.run_in_day", 7, "unknown key 'run_in_day' (did you mean 'run_in_days'?)"),
        ("trial.kind", "glucos", "did you mean 'glucose'?"),
        ("arms.1.controller", "basal_bolus", "did you mean 'basal-bolus'?"),
        ("arms.1.target_mg_dll", 120, "did you mean 'target_mg_dl'?"),
        ("endpoints.primary", "tir", "did you mean 'tir_pct'?"),
        ("endpoints.secondary", ["tbr54"], "did you mean 'tbr54_pct'?"),
        ("scenario.days", "14", "expected a whole number"),
        ("scenario.days", 0, "must be [1, 365]"),
        ("arms.1.cr_scale", -1, "must be in [0.1, 10]"),
        ("scenario.sensor", "Dexcomm", "unknown CGM sensor"),
        ("population.groups", {"adults": 1}, "did you mean 'adult'?"),
        ("analysis.methods", ["procova", "anova"], "did you mean 'ancova'?"),
        ("population.include", [{"variable": "parameter:BWW", "min": 1}], "did you mean 'BW'?"),
        ("population.exclude", [{"variable": "baseline:tir_pct"}], "give 'above', 'below' or both"),
        ("allocation.ratio", [1, 1.5], "whole numbers"),
        ("allocation.block_size", 3, "not a multiple"),
        ("allocation.method", "stratified", "needs [[allocation.strata]]"),
        ("power.pool", 10, "must hold the largest trial"),
        ("analysis.prognostic", "none", "PROCOVA needs a prognostic model"),
        ("scenario.meals", [{"time": "25:00", "carbs_g": 40}], "not a time of day"),
        ("nonsense", 1, "unknown key 'nonsense'"),
    ],
)
def test_mistakes_are_refused_with_where_and_what(path: str, value: Any, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_with(path, value), source="trial.toml")
    assert message in str(err.value)
    assert "trial.toml" in str(err.value)


def test_design_rules() -> None:
    crossover = _with("trial.design", "crossover")
    assert parse_spec(crossover).analysis.methods == ("difference",)
    crossover["analysis"] = {"methods": ["difference", "ancova"]}
    with pytest.raises(SpecError, match="paired differences only"):
        parse_spec(crossover)
    crossover["analysis"] = {"methods": ["difference"]}
    crossover["allocation"] = {"ratio": [1, 1]}
    with pytest.raises(SpecError, match="remove \\[allocation\\]"):
        parse_spec(crossover)
    no_run_in = _with("scenario.run_in_days", 0)
    with pytest.raises(SpecError, match="ANCOVA needs a baseline"):
        parse_spec(no_run_in)
    with pytest.raises(SpecError, match="at least two"):
        parse_spec(_with("arms", [{"name": "a"}]))
    with pytest.raises(SpecError, match="only one arm can be the control"):
        parse_spec(_with("arms.1.control", True))
    with pytest.raises(SpecError, match="unique"):
        parse_spec(_with("arms.1.name", "a"))
    with pytest.raises(SpecError, match="'matched' twins are built from the run-in"):
        parse_spec(
            _with(
                "analysis",
                {"prognostic": "matched", "methods": ["difference", "procova"]},
                _with("scenario.run_in_days", 0),
            )
        )
    original = _with("population", {"source": "original", "size": 5})
    with pytest.raises(SpecError, match="takes 'patients'"):
        parse_spec(original)


def test_dosing_specs() -> None:
    spec = load_spec("vancomycin-mipd")
    assert spec.kind == "dosing"
    assert spec.population.model == "goti2018_vancomycin"
    mipd = spec.arms[1]
    assert isinstance(mipd, DosingArm)
    assert mipd.tdm is not None
    assert mipd.tdm.method == "map"
    assert {"CRCL", "weight_kg", "age_y"} <= set(spec.population.variables)
    raw = copy.deepcopy(spec.raw)
    raw["population"]["covariates"]["weight"] = 70
    with pytest.raises(SpecError, match="did you mean 'weight_kg'"):
        parse_spec(raw)
    raw = copy.deepcopy(spec.raw)
    raw["population"]["covariates"]["age_y"] = {"distribution": "gamma", "mean": 50}
    with pytest.raises(SpecError, match="'gamma' is not one of normal, lognormal, uniform"):
        parse_spec(raw)
    raw = copy.deepcopy(spec.raw)
    raw["population"]["model"] = "goti2019_vancomycin"
    with pytest.raises(SpecError, match="unknown model"):
        parse_spec(raw)
    raw = copy.deepcopy(spec.raw)
    raw["arms"][1]["tdm"] = {"after_doses": 3, "method": "bayes"}
    with pytest.raises(SpecError, match="'bayes' is not one of map, trough-ratio"):
        parse_spec(raw)


def test_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[trial\nname = 1", encoding="utf-8")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="not a file, and not an example"):
        load_spec("no-such-example")
    good = tmp_path / "good.toml"
    good.write_text(
        (Path(load_spec("glucose-crossover-30").source).name and load_spec("glucose-crossover-30").text),
        encoding="utf-8",
    )
    assert load_spec(good).source == str(good)
