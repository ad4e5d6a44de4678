"""The records commands: ingest, patients, patient, export, and the ingest demo."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from fhirclient.models.bundle import Bundle as R4Bundle
from rich.console import Console
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.cli.records import run_ingest_demo, sample_bundles

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
LIZ_ID = "ee9f8dd8-72d2-4769-8020-89e504b1504b"

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def test_ingest_then_list_show_and_export(db: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(FIXTURES / "synthea_liz_conn.json"), "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["totals"]["inserted"] == 46
    assert report["totals"]["unmapped"]["Claim"] == 8

    listed = runner.invoke(app, ["patients", "--db", db, "--json"])
    assert listed.exit_code == 0, listed.output
    patients = json.loads(listed.stdout)
    assert [p["patient_id"] for p in patients] == [LIZ_ID]
    assert patients[0]["birth_date"] == "1986-11-28"

    shown = runner.invoke(app, ["patient", LIZ_ID[:8], "--db", db, "--json"])  # a unique prefix is enough
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    assert detail["patient_id"] == LIZ_ID
    assert len(detail["conditions"]) == 1
    assert len(detail["medications"]) == 1
    bp = detail["latest"]["55284-4"]
    assert {c["code"] for c in bp["components"]} == {"8480-6", "8462-4"}

    table = runner.invoke(app, ["patient", LIZ_ID, "--db", db])
    assert table.exit_code == 0, table.output
    assert "Latest vitals and labs" in table.stdout

    exported = runner.invoke(app, ["export", LIZ_ID, "--db", db])
    assert exported.exit_code == 0, exported.output
    bundle = json.loads(exported.stdout)
    R4Bundle(bundle, strict=True)
    assert len(bundle["entry"]) == 46

    out = tmp_path / "liz.json"
    assert runner.invoke(app, ["export", LIZ_ID, "--db", db, "--out", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["entry"][0]["resource"]["id"] == LIZ_ID


def test_ingest_table_and_failure_exit_code(db: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "Observation", "id": "x"}')
    result = runner.invoke(app, ["ingest", str(FIXTURES / "patient-example.json"), str(bad), "--db", db])
    assert result.exit_code == 1
    assert "FHIR ingest" in result.stdout
    assert "rejected:" in result.stdout
    assert "bad.json: Observation/x: Observation.code: missing required element" in result.stdout.replace("\n", "")


def test_missing_path_and_unknown_patient(db: str) -> None:
    missing = runner.invoke(app, ["ingest", "/nonexistent/file.json", "--db", db])
    assert missing.exit_code == 1
    assert "no such file or folder" in missing.stdout
    unknown = runner.invoke(app, ["patient", "nobody", "--db", db])
    assert unknown.exit_code == 1
    assert "no patient with id 'nobody'" in unknown.stdout


def test_ingest_demo_loads_the_bundled_samples(tmp_path: Path) -> None:
    assert len(sample_bundles()) == 4
    buffer = io.StringIO()
    store = run_ingest_demo(Console(file=buffer, width=200), db_dir=tmp_path / "demo")
    try:
        assert len(store.patients()) == 4
        assert store.counts()["observations"] == 35 + 59 + 36 + 31  # INVENTORY.csv Observation counts
    finally:
        store.close()
    text = buffer.getvalue()
    assert "Chet Thompson (deceased)" in text
    assert "Sample patients" in text
    # Running it again stores nothing new.
    again = run_ingest_demo(Console(file=io.StringIO(), width=200), db_dir=tmp_path / "demo")
    try:
        assert again.counts()["observations"] == 161
    finally:
        again.close()


def test_ingest_folder_with_progress(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    for src in sample_bundles()[:2]:
        shutil.copy(src, folder / src.name)
    result = runner.invoke(app, ["ingest", str(folder), "--db", db])
    assert result.exit_code == 0, result.output
    assert "2 files" in result.stdout
