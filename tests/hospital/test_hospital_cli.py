"""`medtwin hospital ...`: generate -> calibrate -> forecast -> whatif -> report, and failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hospital_cli")
    result = runner.invoke(app, ["hospital", "generate", "--out", str(path / "adt.csv"), "--weeks", "3", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "encounters" in result.output
    return path


def test_calibrate_csv_writes_a_model(workdir: Path) -> None:
    model = workdir / "model.json"
    result = runner.invoke(
        app,
        ["hospital", "calibrate", "--csv", str(workdir / "adt.csv"), "--beds", "ICU=30", "--out", str(model)],
    )
    assert result.exit_code == 0, result.output
    assert "Medicine" in result.output
    data = json.loads(model.read_text())
    assert {u["name"]: u["beds"] for u in data["config"]["units"]}["ICU"] == 30
    as_json = runner.invoke(app, ["hospital", "calibrate", "--csv", str(workdir / "adt.csv"), "--json"])
    summary = json.loads(as_json.output)
    assert 150 < summary["ed_arrivals_per_day"] < 260
    assert set(summary["los_fits"]) == {"Medicine", "Surgery", "ICU"}


def test_forecast_from_census_csv_json_and_png(workdir: Path) -> None:
    png = workdir / "fan.png"
    result = runner.invoke(
        app,
        [
            "hospital", "forecast", "--census-csv", str(workdir / "adt.csv"), "--hours", "24",
            "--reps", "8", "--workers", "0", "--png", str(png), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["source"].startswith("census of")
    assert len(data["units"]["ICU"]["p50"]) == 24
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_forecast_and_whatif_engine_simpy_give_the_default_results(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medtwin.hospital import simpy_engine

    calls: list[int] = []
    original = simpy_engine.simulate_simpy

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(simpy_engine, "simulate_simpy", counting)
    forecast = [
        "hospital", "forecast", "--census-csv", str(workdir / "adt.csv"), "--hours", "12",
        "--reps", "3", "--workers", "0", "--json",
    ]  # fmt: skip
    default = runner.invoke(app, forecast)
    simpy = runner.invoke(app, [*forecast, "--engine", "simpy"])
    calendar = runner.invoke(app, [*forecast, "--engine", "calendar"])
    assert len(calls) == 3  # only the --engine simpy run used SimPy, once per replication
    assert default.exit_code == simpy.exit_code == calendar.exit_code == 0, simpy.output
    assert json.loads(simpy.output) == json.loads(default.output) == json.loads(calendar.output)
    whatif = [
        "hospital", "whatif", "--beds", "ICU=-3", "--weeks", "0.5", "--warmup-weeks", "0.25",
        "--reps", "2", "--workers", "0", "--json",
    ]  # fmt: skip
    default = runner.invoke(app, whatif)
    simpy = runner.invoke(app, [*whatif, "--engine", "simpy"])
    assert len(calls) == 3 + 4  # baseline and scenario x 2 replications
    assert default.exit_code == simpy.exit_code == 0, simpy.output
    assert json.loads(simpy.output) == json.loads(default.output)
    bad = runner.invoke(app, [*whatif, "--engine", "ciw"])
    assert bad.exit_code == 2
    assert "ciw" in bad.output


def test_forecast_table_without_census() -> None:
    result = runner.invoke(
        app, ["hospital", "forecast", "--hours", "12", "--reps", "4", "--workers", "0", "--at", "2026-03-02T08:00Z"]
    )
    assert result.exit_code == 0, result.output
    assert "modelled census" in result.output
    assert "+12h" in result.output


def test_whatif_flags_and_scenario_file(workdir: Path) -> None:
    scen = workdir / "scen.json"
    scen.write_text(json.dumps([{"name": "surge", "arrival_scale": 1.2}]))
    result = runner.invoke(
        app,
        [
            "hospital", "whatif", "--beds", "ICU=+4", "--scenario", str(scen), "--weeks", "1",
            "--warmup-weeks", "1", "--reps", "2", "--workers", "0", "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert list(data["scenarios"]) == ["baseline", "surge", "scenario"]
    icu = data["scenarios"]["scenario"]["occupancy_pct_ICU"]
    assert icu["diff_vs_baseline"] < 0
    table = runner.invoke(
        app,
        [
            "hospital",
            "whatif",
            "--beds",
            "ICU=+4",
            "--name",
            "icu+4",
            "--nurses",
            "ICU=16,16,14",
            "--weeks",
            "1",
            "--warmup-weeks",
            "1",
            "--reps",
            "2",
            "--workers",
            "0",
        ],
    )
    assert table.exit_code == 0, table.output
    # KPI names in words, cost with its currency and period (JSON keeps the keys and adds the labels)
    assert "Boarding, admission decision to bed, mean (h)" in table.output
    assert "Occupancy ICU (% of beds)" in table.output
    assert "Cost per week (EUR: staffed beds + nurse hours)" in table.output
    assert "boarding_mean_h" not in table.output
    assert data["labels"]["cost_per_week"] == "Cost per week (EUR: staffed beds + nurse hours)"
    cost = data["scenarios"]["scenario"]["cost_per_week"]["diff_vs_baseline"]
    assert cost == pytest.approx(4 * 7 * 550.0)  # 4 ICU beds at 550 EUR per staffed bed-day
    assert "icu+4" in table.output


def test_report(workdir: Path) -> None:
    out = workdir / "report.md"
    result = runner.invoke(app, ["hospital", "report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "## 2. Logic" in out.read_text()
    model = workdir / "model_for_report.json"
    runner.invoke(app, ["hospital", "calibrate", "--csv", str(workdir / "adt.csv"), "--out", str(model)])
    calibrated = runner.invoke(app, ["hospital", "report", "--model", str(model)])
    assert "calibrated from an admission history" in calibrated.output


def test_calibrate_from_store(workdir: Path) -> None:
    from medtwin.hospital import encounters_from_history, read_adt_csv
    from medtwin.store import Store

    url = f"sqlite:///{workdir / 'store.db'}"
    with Store(url) as store:
        store.write(encounters_from_history(read_adt_csv(workdir / "adt.csv")))
    result = runner.invoke(app, ["hospital", "calibrate", "--from-store", "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    from_csv = json.loads(
        runner.invoke(app, ["hospital", "calibrate", "--csv", str(workdir / "adt.csv"), "--json"]).output
    )
    from_store = json.loads(result.output)
    assert from_store["n_encounters"] == from_csv["n_encounters"]
    for unit, fit in from_csv["los_fits"].items():
        got = from_store["los_fits"][unit]
        assert got["n"] == fit["n"]
        assert got["duration"]["params"] == pytest.approx(fit["duration"]["params"], rel=1e-9)
    # Encounter.disposition carries LWBS through the store, so the store calibrates like the CSV
    assert from_csv["lwbs_fraction"] > 0
    assert from_store["lwbs_fraction"] == pytest.approx(from_csv["lwbs_fraction"])
    fc = runner.invoke(
        app,
        [
            "hospital",
            "forecast",
            "--from-store",
            "--db",
            url,
            "--hours",
            "6",
            "--reps",
            "3",
            "--workers",
            "0",
            "--json",
        ],
    )
    assert fc.exit_code == 0, fc.output
    n_open = len(read_adt_csv(workdir / "adt.csv").census())
    assert json.loads(fc.output)["source"] == f"census of {n_open} open stays"
    for unit, p in from_csv["admit_probabilities"].items():
        assert from_store["admit_probabilities"][unit] == pytest.approx(p, rel=1e-9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["calibrate"], "exactly one of --csv"),
        (["calibrate", "--csv", "nope.csv"], "cannot open"),
        (["calibrate", "--csv", "x.csv", "--beds", "ICU"], "UNIT=N"),
        (["forecast", "--at", "2026-03-02T08:00", "--workers", "0"], "no UTC offset"),
        (["whatif", "--workers", "0"], "no scenario"),
        (["whatif", "--nurses", "ICU=a,b", "--workers", "0"], "UNIT=N1,N2,N3"),
        (["whatif", "--beds", "Nowhere=+1", "--workers", "0"], "unknown unit"),
        (["forecast", "--model", "missing.json"], "cannot read model"),
    ],
)
def test_failures_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["hospital", *args])
    assert result.exit_code == 2
    assert message in result.output
