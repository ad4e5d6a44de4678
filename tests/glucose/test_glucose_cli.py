"""`medtwin glucose simulate` and `medtwin glucose metrics` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result
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


def test_simulate_summary_names_its_signal_and_matches_metrics_on_that_column(tmp_path: Path) -> None:
    """The summary used to be true BG while `metrics` on the CSV reads the sensor column: both now say which."""
    out = tmp_path / "run.csv"
    means = {}
    for signal, column in (("bg", "bg_mg_dl"), ("cgm", "cgm_mg_dl")):
        res = runner.invoke(
            app, ["glucose", "simulate", "-p", "adult#001", "--signal", signal, "-o", str(out), "--json"]
        )
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert (report["signal"], report["signal_column"]) == (signal, column)
        metrics = runner.invoke(app, ["glucose", "metrics", str(out), "--column", column, "--json"])
        assert metrics.exit_code == 0, metrics.output
        subject = json.loads(metrics.stdout)["subjects"]["adult#001"]
        assert report["members"][0]["mean_mg_dl"] == pytest.approx(subject["mean_mg_dl"], abs=1e-3)
        assert report["members"][0]["tir_pct"] == pytest.approx(subject["tir_pct"], abs=1e-3)
        means[signal] = report["cohort_mean_mg_dl"]
    assert means["bg"] != means["cgm"]  # the sensor noise is there: the two signals are not the same
    guessed = json.loads(runner.invoke(app, ["glucose", "metrics", str(out), "--json"]).stdout)
    assert guessed["glucose_column"] == "cgm_mg_dl"  # what `metrics` reads by default, as the docs say
    table = runner.invoke(app, ["glucose", "simulate", "-p", "adult#001", "--controller", "basal"])
    assert table.exit_code == 0, table.output
    assert "summary of blood glucose (simulated, noise-free model BG) (bg_mg_dl)" in " ".join(table.stdout.split())
    cgm_table = runner.invoke(app, ["glucose", "simulate", "-p", "adult#001", "--signal", "cgm"])
    assert "summary of CGM (sensor glucose), with the sensor's noise (cgm_mg_dl)" in " ".join(cgm_table.stdout.split())
    # and metrics says which signal it read, in JSON and in the table
    assert guessed["signal"] == "CGM (sensor glucose)"
    assert "the file also has bg_mg_dl" in guessed["notes"][0]
    on_bg = runner.invoke(app, ["glucose", "metrics", str(out), "--column", "bg_mg_dl"])
    assert "signal: blood glucose (simulated, noise-free model BG), column 'bg_mg_dl'" in " ".join(on_bg.stdout.split())
    bad = runner.invoke(app, ["glucose", "simulate", "--signal", "smbg"])
    assert bad.exit_code != 0


def test_simulate_parquet_table_and_errors(tmp_path: Path) -> None:
    out = tmp_path / "run.parquet"
    res = runner.invoke(app, ["glucose", "simulate", "-p", "adolescent#003", "--controller", "basal", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "adolescent#003" in res.stdout
    assert len(pd.read_parquet(out)) == 1440
    upper = runner.invoke(app, ["glucose", "simulate", "-p", "ADOLESCENT#003", "--controller", "basal", "--json"])
    assert upper.exit_code == 0, upper.output
    assert "adolescent#003" in upper.stdout
    assert "ADOLESCENT#003" not in upper.stdout  # the canonical name is reported
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
    assert "not a known CGM export" in " ".join(res.output.split())
    assert "give --column / --time-column" in " ".join(res.output.split())


def test_parse_meal() -> None:
    assert parse_meal("07:30=45") == (450.0, 45.0)
    with pytest.raises(ValidationError):
        parse_meal("25:00=10")


def _clean_failure(res: Result, *needles: str) -> None:
    """A CLI failure with exit 1, an ``error:`` message naming *needles*, and no traceback."""
    output = " ".join(res.output.split())
    assert res.exit_code == 1, output
    assert isinstance(res.exception, SystemExit), output
    assert "error:" in output
    for needle in needles:
        assert needle in output


def test_metrics_unreadable_files_fail_cleanly(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    _clean_failure(runner.invoke(app, ["glucose", "metrics", str(empty)]), "empty.csv")
    broken = tmp_path / "broken.csv"
    broken.write_text('time,gl\n2020-01-01 00:00,100\n"2020-01-01 00:05,110\n')
    _clean_failure(runner.invoke(app, ["glucose", "metrics", str(broken)]), "broken.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    _clean_failure(runner.invoke(app, ["glucose", "metrics", str(binary)]), "binary.csv")
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("time,gl\n")
    _clean_failure(runner.invoke(app, ["glucose", "metrics", str(not_parquet)]), "x.parquet")


def test_metrics_counts_skipped_rows(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(
        "time,gl\n2020-01-01 00:00,100\nnot a time,120\n2020-01-01 00:10,abc\n2020-01-01 00:15,130\n"
        "2020-01-01 00:20,110\n"
    )
    res = runner.invoke(app, ["glucose", "metrics", str(mixed), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["skipped_rows"] == 2
    assert data["subjects"]["all"]["n_readings"] == 3
    table = runner.invoke(app, ["glucose", "metrics", str(mixed)])
    assert table.exit_code == 0, table.output
    assert "2 row(s) skipped" in " ".join(table.output.split())


def test_metrics_keeps_replicated_members_apart(tmp_path: Path) -> None:
    out = tmp_path / "rep.csv"
    sim = runner.invoke(
        app, ["glucose", "simulate", "-p", "adult#001", "--replicate", "2", "--randomize-meals", "-o", str(out)]
    )
    assert sim.exit_code == 0, sim.output
    res = runner.invoke(app, ["glucose", "metrics", str(out), "--json"])
    assert res.exit_code == 0, res.output
    subjects = json.loads(res.stdout)["subjects"]
    assert len(subjects) == 2
    assert all(m["n_readings"] == 1440 for m in subjects.values())
    means = sorted(m["mean_mg_dl"] for m in subjects.values())
    assert means[0] != means[1]  # different meals: two traces, not one merged
    assert set(subjects) == {"adult#001 (member 0)", "adult#001 (member 1)"}
    table = runner.invoke(app, ["glucose", "metrics", str(out)])
    assert table.stdout.count("(member") == 2  # labels are not eaten as rich markup


def test_metrics_in_mmol_per_litre(tmp_path: Path) -> None:
    mg = tmp_path / "mg.csv"
    mg.write_text("time,gl\n" + "".join(f"2020-01-01 00:{5 * i:02d},{90 + 10 * i}\n" for i in range(10)))
    mmol = tmp_path / "mmol.csv"
    mmol.write_text(
        "time,glucose_mmol_l\n"
        + "".join(f"2020-01-01 00:{5 * i:02d},{(90 + 10 * i) / 18.016:.6f}\n" for i in range(10))
    )
    ref = json.loads(runner.invoke(app, ["glucose", "metrics", str(mg), "--json"]).stdout)["subjects"]["all"]
    res = runner.invoke(app, ["glucose", "metrics", str(mmol), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["unit"] == "mmol/L"
    assert got["subjects"]["all"]["mean_mg_dl"] == pytest.approx(ref["mean_mg_dl"], rel=1e-3)
    assert got["subjects"]["all"]["tir_pct"] == pytest.approx(ref["tir_pct"])
    explicit = runner.invoke(app, ["glucose", "metrics", str(mmol), "--column", "glucose_mmol_l", "--unit", "mmol/L"])
    assert explicit.exit_code == 0, explicit.output
    # mmol/L values read as mg/dL would be a safety bug (all "hypoglycaemia"): refused with a hint
    plain = tmp_path / "plain.csv"
    plain.write_text(mmol.read_text().replace("glucose_mmol_l", "glucose"))
    _clean_failure(runner.invoke(app, ["glucose", "metrics", str(plain)]), "--unit mmol/L")
    _clean_failure(runner.invoke(app, ["glucose", "metrics", str(mg), "--unit", "furlongs"]), "furlongs")
    _clean_failure(runner.invoke(app, ["glucose", "metrics", str(mg), "--unit", "mmol/L"]), "are they mg/dL?")


def test_simulate_bad_start_and_unwritable_outputs_fail_before_simulating(tmp_path: Path) -> None:
    _clean_failure(runner.invoke(app, ["glucose", "simulate", "--start", "garbage"]), "--start", "garbage")
    missing_dir = tmp_path / "no" / "such"
    _clean_failure(
        runner.invoke(app, ["glucose", "simulate", "-o", str(missing_dir / "x.csv")]), "--output", "no such folder"
    )
    _clean_failure(
        runner.invoke(app, ["glucose", "simulate", "--plot", str(missing_dir / "x.png")]), "--plot", "no such folder"
    )
    _clean_failure(
        runner.invoke(app, ["glucose", "simulate", "--agp", str(missing_dir / "a.png")]), "--agp", "no such folder"
    )


def test_error_messages_with_brackets_are_printed_verbatim() -> None:
    res = runner.invoke(
        app, ["glucose", "metrics", str(FIXTURES / "cgm" / "hall2018_subject1.csv"), "--column", "gl [/mmol]"]
    )
    _clean_failure(res, "column 'gl [/mmol]' not in the file")


def test_metrics_table_days_are_days_of_data_not_the_span(tmp_path: Path) -> None:
    """Subject 1636-69-001 of the Hall data wore the sensor 6 days over 423: the table said 423.5 days."""
    day = [f"{h:02d}:{m:02d}" for h in range(24) for m in range(0, 60, 5)]
    rows = [f"2020-01-01 {t},110" for t in day] + [f"2020-03-01 {t},130" for t in day]
    path = tmp_path / "two_sessions.csv"
    path.write_text("time,gl\n" + "\n".join(rows) + "\n")
    table = runner.invoke(app, ["glucose", "metrics", str(path)])
    assert table.exit_code == 0, table.output
    row = next(line for line in table.stdout.splitlines() if line.startswith("│ all"))
    cells = [c.strip() for c in row.split("│")]
    assert cells[1:4] == ["all", "2.0", "120.0"]  # 2 days of data (over a 61-day span), mean 120


def test_simulate_table_says_when_it_lists_only_some_members() -> None:
    res = runner.invoke(app, ["glucose", "simulate", "-p", "all", "--replicate", "2", "--no-noise"])
    assert res.exit_code == 0, res.output
    assert "first 50 of 60 members shown" in " ".join(res.stdout.split())


def test_metrics_reads_dexcom_low_and_high_as_the_sensor_limits(tmp_path: Path) -> None:
    """Dexcom exports write "Low" (< 40 mg/dL) and "High" (> 400 mg/dL); dropping them hid hypoglycaemia."""
    values = ["100", "Low", "LOW", "60", "High", "120"]
    path = tmp_path / "dexcom.csv"
    path.write_text("time,glucose\n" + "".join(f"2020-01-01 00:{5 * i:02d},{v}\n" for i, v in enumerate(values)))
    res = runner.invoke(app, ["glucose", "metrics", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["skipped_rows"] == 0
    assert data["limit_readings"] == {"low": 2, "high": 1}
    m = data["subjects"]["all"]
    assert m["n_readings"] == 6
    assert m["mean_mg_dl"] == pytest.approx((100 + 40 + 40 + 60 + 400 + 120) / 6)
    assert m["tbr_level2_pct"] == pytest.approx(100 * 2 / 6)
    table = runner.invoke(app, ["glucose", "metrics", str(path)])
    assert "2 Low read as 40 mg/dL, 1 High as 400 mg/dL" in " ".join(table.output.split())


def test_negative_seed_is_a_usage_error_naming_the_option() -> None:
    res = runner.invoke(app, ["glucose", "simulate", "--seed", "-1"])
    assert res.exit_code == 2
    assert "--seed" in res.output
