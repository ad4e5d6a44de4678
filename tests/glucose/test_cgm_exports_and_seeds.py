"""CGM export formats (Dexcom Clarity, FreeStyle Libre, Nightscout, Timestamp/Glucose tables), the shipped sample,
per-patient sensor seeds (batched == separate runs in simglucose's mode), and the glucose the simulations return.

The format fixtures are the real Hall 2018 readings of tests/fixtures/cgm/hall2018_subject1.csv written in each
device's layout (tests/fixtures/cgm/make_export_formats.py): every format must give the metrics of those readings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.errors import ValidationError
from medtwin.glucose import (
    DormandPrince,
    cgm_metrics,
    load_cohort,
    member_sensor_seeds,
    run_scenario,
    simulate_open_loop,
)
from medtwin.glucose.devices import CGMSensor, InsulinPump, pump_spec, sensor_spec
from medtwin.glucose.scenarios import make_controller
from medtwin.glucose.simulation import ClosedLoopResult, meal_matrix, simulate_closed_loop
from medtwin.interop.cgm import read_cgm_file

FIXTURES = Path(__file__).parent.parent / "fixtures" / "cgm"
SAMPLE = Path(__file__).parents[2] / "src" / "medtwin" / "data" / "cgm" / "hall2018_subject1_clarity_mmol.csv"
runner = CliRunner()


def original(first: str, last: str) -> dict[str, float]:
    """Metrics of the recorded mg/dL readings between two dates (the truth every format must reproduce)."""
    frame = pd.read_csv(FIXTURES / "hall2018_subject1.csv")
    t = pd.to_datetime(frame["time"])
    sel = (t >= first) & (t < last)
    minutes = ((t[sel] - t[sel].min()).dt.total_seconds() / 60).to_numpy()
    return cgm_metrics(minutes, frame["gl"][sel].to_numpy(dtype=float)).to_dict()


@pytest.mark.parametrize(
    ("name", "fmt", "window", "tolerance_mg_dl"),
    [
        ("subject1_nightscout_entries.json", "Nightscout entries JSON", ("2015-06-14", "2015-06-15"), 0.0),
        ("subject1_nightscout_entries.csv", "Nightscout entries CSV", ("2015-06-14", "2015-06-15"), 0.0),
        ("subject1_timestamp_mmol.csv", "CSV table", ("2015-06-14", "2015-06-15"), 0.9),  # 0.1 mmol/L = 1.8 mg/dL
    ],
)
def test_each_export_format_gives_the_metrics_of_the_recorded_readings(
    name: str, fmt: str, window: tuple[str, str], tolerance_mg_dl: float
) -> None:
    readings = read_cgm_file(FIXTURES / name)
    assert readings.format == fmt
    assert readings.signal == "CGM (sensor glucose)"
    got = cgm_metrics(readings.time_min, readings.glucose_mg_dl).to_dict()
    want = original(*window)
    assert got["n_readings"] == want["n_readings"]
    assert got["mean_mg_dl"] == pytest.approx(want["mean_mg_dl"], abs=tolerance_mg_dl + 1e-9)
    assert got["tir_pct"] == pytest.approx(want["tir_pct"], abs=1.0 if tolerance_mg_dl else 1e-9)


def test_nightscout_json_skips_meter_entries_and_says_so() -> None:
    readings = read_cgm_file(FIXTURES / "subject1_nightscout_entries.json")
    assert readings.notes == ("1 entr(y/ies) of other types (mbg, cal) not used",)
    assert readings.glucose_column == "sgv"
    assert readings.unit == "mg/dL"


def test_dexcom_clarity_sample_is_shipped_and_read_in_mmol() -> None:
    readings = read_cgm_file(SAMPLE)
    assert (readings.format, readings.unit, readings.glucose_column) == (
        "Dexcom Clarity CSV", "mmol/L", "Glucose Value (mmol/L)"
    )  # fmt: skip
    assert readings.notes == ("3 non-reading row(s) (patient, device, alerts, events) not used",)
    got = cgm_metrics(readings.time_min, readings.glucose_mg_dl).to_dict()
    want = original("2015-06-13", "2015-06-16")
    assert got["n_readings"] == want["n_readings"] == 775
    assert got["mean_mg_dl"] == pytest.approx(want["mean_mg_dl"], abs=0.9)
    assert (SAMPLE.parent / "SOURCES.md").read_text().count("CC BY 4.0") >= 1


def test_clarity_low_and_high_rows(tmp_path: Path) -> None:
    text = SAMPLE.read_text().splitlines()
    for row, word in ((4, "Low"), (5, "High")):
        cells = text[row].split(",")
        cells[7] = word  # Glucose Value
        text[row] = ",".join(cells)
    path = tmp_path / "clarity.csv"
    path.write_text("\n".join(text) + "\n")
    readings = read_cgm_file(path)
    assert readings.limit_readings == {"low": 1, "high": 1}
    assert readings.glucose_mg_dl[0] == 40.0
    assert readings.glucose_mg_dl[1] == 400.0


def test_freestyle_libre_reads_historic_readings_and_infers_the_date_order(tmp_path: Path) -> None:
    readings = read_cgm_file(FIXTURES / "subject1_libre_mmol.csv")
    assert readings.format == "FreeStyle Libre CSV"
    assert readings.notes[0] == "timestamps read as d-m-Y"  # 13-06-2015: the day comes first
    assert "10 scan reading(s) (Record Type 1) not used" in readings.notes[1]
    raw = pd.read_csv(FIXTURES / "subject1_libre_mmol.csv", skiprows=1)
    assert readings.glucose_mg_dl.size == int((raw["Record Type"] == 0).sum())
    assert readings.time_min[-1] - readings.time_min[0] > 4 * 1440 - 60  # five days read in the right order
    # a short export whose days are all <= 12 cannot tell day-month from month-day: say so, and take the option
    lines = (FIXTURES / "subject1_libre_mmol.csv").read_text().splitlines()
    early = [lines[0], lines[1], *(line for line in lines[2:] if line.split(",")[2].startswith(("10-06", "11-06")))]
    short = tmp_path / "libre_short.csv"
    short.write_text("\n".join(early) + "\n")
    with pytest.raises(ValidationError, match="give --date-order dmy or mdy"):
        read_cgm_file(short)
    assert read_cgm_file(short, date_order="dmy").time_min[-1] < 2 * 1440
    wrong = read_cgm_file(short, date_order="mdy")  # 10-06 read as 6 October: a 31-day span, not 2 days
    assert wrong.time_min[-1] > 20 * 1440


def test_a_stated_unit_that_contradicts_the_option_is_refused() -> None:
    with pytest.raises(ValidationError, match="--unit mg/dL contradicts the column 'Glucose \\(mmol/L\\)'"):
        read_cgm_file(FIXTURES / "subject1_timestamp_mmol.csv", unit="mg/dL")
    with pytest.raises(ValidationError, match="fixed columns"):
        read_cgm_file(SAMPLE, column="gl")


def test_metrics_cli_names_format_and_signal() -> None:
    result = runner.invoke(app, ["glucose", "metrics", str(SAMPLE), "--unit", "mmol/L", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["format"], data["signal"], data["unit"]) == ("Dexcom Clarity CSV", "CGM (sensor glucose)", "mmol/L")
    table = runner.invoke(app, ["glucose", "metrics", str(FIXTURES / "subject1_libre_mmol.csv")])
    assert "FreeStyle Libre CSV; signal: CGM (sensor glucose), column 'Historic Glucose mmol/L' in mmol/L" in (
        table.stdout
    )


# -- sensor seeds ------------------------------------------------------------------------------------------------
def test_member_sensor_seeds() -> None:
    assert member_sensor_seeds(3, 5) == [5, 6, 7]
    assert member_sensor_seeds(3, 5, mode="patient") == [5, 5, 5]
    assert member_sensor_seeds(2, 5, explicit=[9, 4]) == [9, 4]
    with pytest.raises(ValidationError, match="one per member"):
        member_sensor_seeds(3, 5, explicit=[1])
    with pytest.raises(ValidationError, match="seed mode"):
        member_sensor_seeds(3, 5, mode="simglucose")


def test_patient_seed_mode_makes_a_batched_run_equal_per_patient_runs() -> None:
    """simglucose seeds each patient's sensor on its own: member i of a batch must equal that patient run alone."""
    names = ["adult#001", "adult#002", "child#003"]
    batched = run_scenario(names, seed=7, seed_mode="patient")
    for i, name in enumerate(names):
        alone = run_scenario([name], seed=7)
        np.testing.assert_array_equal(batched.cgm_mg_dl[:, i], alone.cgm_mg_dl[:, 0])
        np.testing.assert_array_equal(batched.bg_mg_dl[:, i], alone.bg_mg_dl[:, 0])
    offset = run_scenario(names, seed=7)  # the default: member i uses seed + i, so member 1 is not "alone"
    alone2 = run_scenario(["adult#002"], seed=7)
    assert np.max(np.abs(offset.cgm_mg_dl[:, 1] - alone2.cgm_mg_dl[:, 0])) > 1.0
    explicit = run_scenario(names, seed=7, sensor_seeds=[7, 8, 9])
    np.testing.assert_array_equal(explicit.cgm_mg_dl, offset.cgm_mg_dl)


def test_simulate_cli_seed_options(tmp_path: Path) -> None:
    def member_means(*extra: str) -> list[float]:
        args = ["glucose", "simulate", "-p", "adult#001", "-p", "adult#002", "--signal", "cgm", "--json", *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return [m["mean_mg_dl"] for m in json.loads(result.stdout)["members"]]

    def alone(name: str, seed: int) -> float:
        result = runner.invoke(
            app, ["glucose", "simulate", "-p", name, "--signal", "cgm", "--seed", str(seed), "--json"]
        )
        return float(json.loads(result.stdout)["members"][0]["mean_mg_dl"])

    assert member_means("--seed", "3", "--seed-mode", "patient") == [alone("adult#001", 3), alone("adult#002", 3)]
    assert member_means("--sensor-seeds", "3,11") == [alone("adult#001", 3), alone("adult#002", 11)]
    bad = runner.invoke(app, ["glucose", "simulate", "--sensor-seeds", "3,x"])
    assert bad.exit_code == 1
    assert "expected integers" in bad.output
    wrong_count = runner.invoke(app, ["glucose", "simulate", "-p", "adult#001", "--sensor-seeds", "3,4"])
    assert wrong_count.exit_code == 1
    assert "2 given for 1 member(s)" in wrong_count.output


# -- what the simulations return ---------------------------------------------------------------------------------
def test_open_loop_returns_glucose_and_takes_the_accurate_solver_from_medtwin_glucose() -> None:
    cohort = load_cohort(["adult#001", "adult#002"])
    cho = np.zeros((120, 2))
    cho[10:22] = 5.0
    insulin = np.tile(cohort.basal_u_per_min, (120, 1))
    fast = simulate_open_loop(cohort, cho, insulin)
    exact = simulate_open_loop(cohort, cho, insulin, solver=DormandPrince(rtol=1e-8, atol=1e-10))
    vg = cohort.params["Vg"]
    np.testing.assert_allclose(fast.bg_mg_dl, fast.states[:, :, 12] / vg)
    np.testing.assert_allclose(fast.plasma_glucose_mg_dl, fast.states[:, :, 3] / vg)
    assert fast.bg_mg_dl.shape == (121, 2)
    assert np.max(np.abs(fast.bg_mg_dl - exact.bg_mg_dl)) < 0.5  # the compiled RK4 against the reference
    assert exact.rhs_evaluations > fast.rhs_evaluations


def test_closed_loop_result_has_states() -> None:
    cohort = load_cohort(["adult#001", "child#001"])
    minutes = 360
    meals = meal_matrix(minutes, [(60.0, 50.0)], cohort.size)

    def run(record: bool) -> ClosedLoopResult:
        return simulate_closed_loop(
            cohort,
            minutes=minutes,
            meals=meals,
            controller=make_controller("basal-bolus", cohort),
            sensor=CGMSensor(sensor_spec("Dexcom"), [1, 2]),
            pump=InsulinPump(pump_spec("Insulet")),
            record_states=record,
        )

    fused, recorded = run(False), run(True)
    assert fused.states is None
    states = recorded.states
    assert states is not None
    assert states.shape == (minutes + 1, 2, 13)
    np.testing.assert_allclose(states[:, :, 12] / cohort.params["Vg"], recorded.bg_mg_dl)
    np.testing.assert_allclose(recorded.bg_mg_dl, fused.bg_mg_dl, atol=1e-9)
    np.testing.assert_allclose(fused.final_states, states[-1], rtol=1e-9, atol=1e-9)
