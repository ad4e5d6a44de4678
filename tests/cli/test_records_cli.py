"""The records commands: ingest, patients, patient, export, and the ingest demo."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fhirclient.models.bundle import Bundle as R4Bundle
from rich.console import Console
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.cli.records import run_ingest_demo, sample_bundles
from medtwin.records import Patient, Provenance
from medtwin.store import Store

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
    assert report["totals"]["inserted"] == 46 + 27  # records, and the resources kept whole (Claim, ...)
    assert report["totals"]["unmapped"]["Claim"] == 8

    listed = runner.invoke(app, ["patients", "--db", db, "--json"])
    assert listed.exit_code == 0, listed.output
    patients = json.loads(listed.stdout)
    with Store(db) as store:  # the FHIR id is the MRN in Synthea: the medtwin id is keyed (docs/security-data.md)
        pid = store.keyring.pseudonym.fhir(LIZ_ID)
    assert [p["patient_id"] for p in patients] == [pid]
    assert patients[0]["birth_date"] == "1986-11-28"

    shown = runner.invoke(app, ["patient", pid[:8], "--db", db, "--json"])  # a unique prefix is enough
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    assert detail["patient_id"] == pid
    by_mrn = runner.invoke(app, ["patient", LIZ_ID, "--db", db, "--json"])  # the MRN (blind index), the FHIR id
    assert json.loads(by_mrn.stdout)["patient_id"] == pid
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
    assert len(bundle["entry"]) == 46 + 27  # records as FHIR, and the resources kept whole

    out = tmp_path / "liz.json"
    assert runner.invoke(app, ["export", LIZ_ID, "--db", db, "--out", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["entry"][0]["resource"]["id"] == pid


def test_ingest_table_and_failure_exit_code(db: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "Observation", "id": "x"}')
    result = runner.invoke(app, ["ingest", str(FIXTURES / "patient-example.json"), str(bad), "--db", db])
    assert result.exit_code == 1
    assert "FHIR ingest" in result.stdout
    assert "rejected:" in result.stdout
    # the console wraps long lines at spaces (where depends on the temporary path's length): compare without them
    expected = "bad.json: Observation/x: Observation.code: missing required element"
    assert "".join(expected.split()) in "".join(result.stdout.split())


def test_missing_path_and_unknown_patient(db: str) -> None:
    missing = runner.invoke(app, ["ingest", "/nonexistent/file.json", "--db", db])
    assert missing.exit_code == 1
    assert "no such file or folder" in missing.stdout
    no_database = runner.invoke(app, ["patient", "nobody", "--db", db])  # a read command creates no database
    assert no_database.exit_code == 1
    assert "no database at" in no_database.stdout
    assert not Path(db.removeprefix("sqlite:///")).exists()
    assert runner.invoke(app, ["ingest", str(FIXTURES / "patient-example.json"), "--db", db]).exit_code == 0
    unknown = runner.invoke(app, ["patient", "nobody", "--db", db])
    assert unknown.exit_code == 1
    assert "no patient with id 'nobody'" in unknown.stdout


def test_ingest_json_reports_a_missing_path_on_stdout(db: str, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["ingest", "/nonexistent/file.json", "--db", db, "--json"])
    assert missing.exit_code == 1
    summary = json.loads(missing.stdout)
    assert summary["ok"] is False
    assert summary["error"] == "no such file or folder: /nonexistent/file.json"
    assert summary["files"] == []
    assert summary["totals"]["files"] == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(app, ["ingest", str(empty), "--db", db, "--json"])
    assert nothing.exit_code == 1
    assert json.loads(nothing.stdout)["error"].startswith("no FHIR files")
    unopenable = runner.invoke(
        app, ["ingest", str(FIXTURES / "patient-example.json"), "--db", f"sqlite:///{tmp_path}/no/x.db", "--json"]
    )
    assert unopenable.exit_code == 1
    assert json.loads(unopenable.stdout)["error"].startswith("cannot create database")


def _store_with_patients(db: str, ids: list[str]) -> None:
    with Store(db) as store:
        store.write([Patient(patient_id=i, provenance=Provenance(source_system="t", source_id=i)) for i in ids])


def test_patient_prefix_is_resolved_by_a_query_not_by_loading_everyone(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store_with_patients(db, ["pat-1", "pat-2", "p%t-3", "p_t-4", "PAT-5"])

    def load_all(self: Store) -> list[Patient]:
        raise AssertionError("Store.patients() must not be used to resolve a prefix")

    monkeypatch.setattr(Store, "patients", load_all)
    one = runner.invoke(app, ["patient", "p%", "--db", db, "--json"])
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["patient_id"] == "p%t-3"
    assert json.loads(runner.invoke(app, ["patient", "p_", "--db", db, "--json"]).stdout)["patient_id"] == "p_t-4"
    assert json.loads(runner.invoke(app, ["patient", "PA", "--db", db, "--json"]).stdout)["patient_id"] == "PAT-5"
    ambiguous = runner.invoke(app, ["patient", "pat", "--db", db])
    assert ambiguous.exit_code == 1
    assert "'pat' matches 2 patients (pat-1, pat-2); give more of the id" in ambiguous.stdout
    exported = runner.invoke(app, ["export", "pat-", "--db", db])
    assert exported.exit_code == 1
    assert "matches 2 patients" in exported.stderr  # stdout is reserved for the bundle
    unknown = runner.invoke(app, ["patient", "p-", "--db", db])
    assert unknown.exit_code == 1
    assert "no patient with id 'p-'" in unknown.stdout


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


def _lab(obs_id: str, code: str, value: float, unit: str, when: str) -> dict[str, object]:
    return {
        "fullUrl": f"urn:uuid:{obs_id}",
        "resource": {
            "resourceType": "Observation",
            "id": obs_id,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "urn:uuid:lab-patient"},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        },
    }


def test_patient_shows_synthea_blood_labs(db: str, tmp_path: Path) -> None:
    """Synthea codes glucose as 2339-0 (blood) and creatinine as 38483-4 (blood): both are the latest labs."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:lab-patient", "resource": {"resourceType": "Patient", "id": "lab-patient"}},
            _lab("g1", "2339-0", 91.0, "mg/dL", "2020-01-01T08:00:00Z"),
            _lab("g2", "2339-0", 104.0, "mg/dL", "2020-06-01T08:00:00Z"),
            _lab("c1", "38483-4", 1.1, "mg/dL", "2020-06-01T08:00:00Z"),
        ],
    }
    path = tmp_path / "labs.json"
    path.write_text(json.dumps(bundle))
    assert runner.invoke(app, ["ingest", str(path), "--db", db]).exit_code == 0
    shown = runner.invoke(app, ["patient", "lab-patient", "--db", db, "--json"])
    assert shown.exit_code == 0, shown.output
    latest = json.loads(shown.stdout)["latest"]
    assert latest["2339-0"]["value"] == {"value": 104.0, "unit": "mg/dL"}
    assert latest["38483-4"]["value"] == {"value": 1.1, "unit": "mg/dL"}
    table = runner.invoke(app, ["patient", "lab-patient", "--db", db])
    assert "104 mg/dL" in table.stdout


def test_unopenable_database_and_unwritable_export_fail_cleanly(db: str, tmp_path: Path) -> None:
    for command in (
        ["patients"],
        ["patient", "x"],
        ["export", "x"],
        ["ingest", str(FIXTURES / "patient-example.json")],
    ):
        res = runner.invoke(app, [*command, "--db", f"sqlite:///{tmp_path}/no/such/dir/x.db"])
        assert res.exit_code == 1, res.output
        assert isinstance(res.exception, SystemExit), res.output
        expected = "cannot create database" if command[0] == "ingest" else "no database at"
        assert f"error: {expected}" in " ".join(res.output.split())
    assert runner.invoke(app, ["ingest", str(FIXTURES / "patient-example.json"), "--db", db]).exit_code == 0
    res = runner.invoke(app, ["export", "example", "--db", db, "--out", str(tmp_path / "no" / "x.json")])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), res.output
    assert "cannot write" in " ".join(res.output.split())


def test_bracketed_text_in_data_is_shown_not_read_as_markup(db: str, tmp_path: Path) -> None:
    """UCUM units ([lb_av], [in_i]) and drug names carry brackets; rich must print them, not parse them as tags."""
    patient = {
        "resourceType": "Patient",
        "id": "br1",
        "name": [{"use": "official", "family": "Smith [/b]", "given": ["Jo"]}],
    }
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1", "display": "Disorder [/usp] x"}]},
        "subject": {"reference": "Patient/br1"},
        "onsetDateTime": "2020-01-01",
    }  # fmt: skip
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}, {"resource": condition}]}
        )
    )
    bad = tmp_path / "bad.json"
    weight: Any = _lab("w1", "8867-4", 150.0, "[lb_av]", "2020-01-01T08:00:00Z")["resource"]
    weight["subject"] = {"reference": "Patient/br1"}
    bad.write_text(json.dumps(weight))
    ingested = runner.invoke(app, ["ingest", str(good), str(bad), "--db", db])
    assert ingested.exit_code == 0, ingested.output  # valid R4: kept whole, with a warning naming the unit
    assert "unit '[lb_av]'" in "".join(ingested.output.split("\n"))
    listed = runner.invoke(app, ["patients", "--db", db])
    assert listed.exit_code == 0, listed.output
    assert "Smith [/b]" in listed.output
    shown = runner.invoke(app, ["patient", "br1", "--db", db])
    assert shown.exit_code == 0, shown.output
    assert "Disorder [/usp] x" in shown.output


def test_a_folder_without_fhir_files_is_an_error_not_an_empty_success(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "Patient.ndjson.gz").write_bytes(b"\x1f\x8b")  # compressed bulk export: not read, so say so
    res = runner.invoke(app, ["ingest", str(folder), "--db", db])
    assert res.exit_code == 1, res.output
    assert "no FHIR files" in " ".join(res.output.split())
