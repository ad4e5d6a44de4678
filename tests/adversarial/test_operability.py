"""Issue 13 E: units checked against UCUM, no made-up devices or coding systems, lab results in `medtwin patient`,
`medtwin inbox list|show|retry`, and read commands that never create a database and fail with clear errors."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from medtwin import codes
from medtwin.cli import app
from medtwin.interop import hl7v2
from medtwin.interop.fhir import to_fhir
from medtwin.interop.mllp import CONTENT_TYPE
from medtwin.records import Observation, Quantity
from medtwin.store import RawMessage, Store

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7v2"
runner = CliRunner()


def mapped(name: str, replace: tuple[bytes, bytes] | None = None) -> hl7v2.MappedMessage:
    payload = (FIXTURES / name).read_bytes()
    if replace is not None:
        payload = payload.replace(*replace)
    return hl7v2.map_message(hl7v2.parse_payload(payload)[0])


def test_obx6_units_are_mapped_to_ucum_or_not_labelled_ucum() -> None:
    lab = {o.code.code: o for o in mapped("msfhirconv_LAB-ORU-1.hl7").observations}
    assert lab["11273-0"].value == Quantity(value=4.06, unit="10*12/L")  # "tera.l-1"
    assert lab["11125-2"].value == Quantity(value=221.0, unit="10*9/L")  # "giga.l-1"
    assert to_fhir(lab["11273-0"])["valueQuantity"]["system"] == codes.UCUM
    odd = mapped("msfhirconv_LAB-ORU-1.hl7", (b"|221|giga.l-1|", b"|221|cells per hpf|")).observations
    (cells,) = [o for o in odd if o.code.code == "11125-2"]
    assert to_fhir(cells)["valueQuantity"] == {"value": 221.0, "unit": "cells per hpf"}  # no UCUM label
    notes = mapped("msfhirconv_LAB-ORU-1.hl7", (b"|221|giga.l-1|", b"|221|cells per hpf|")).notes
    assert "OBX[5]: OBX-6 unit 'cells per hpf' is not UCUM; kept as written" in notes


def test_the_sending_application_is_not_a_device() -> None:
    assert {o.device for o in mapped("authored_ORU_R01_vitals_pcd01_mdc_v26.hl7").observations} == {None}
    with_device = mapped(
        "authored_ORU_R01_vitals_pcd01_mdc_v26.hl7", (b"|R|||20250301103000+0000", b"|R|||20250301103000+0000||||MON-7")
    )
    assert {o.device for o in with_device.observations} == {"MON-7"}  # OBX-18, the equipment instance


def test_a_malformed_obx3_gives_no_coding_system_with_spaces() -> None:
    message = mapped("pythonhl7_sample_hl7.hl7")
    systems = {o.code.system for o in message.observations}
    assert systems == {"urn:hl7v2:table-0396:unknown"}
    assert not any(" " in s for s in systems)
    assert any("OBX-3.3 'POST 12H CFST:MCNC:PT:SER/PLAS:QN' is not a coding-system name" in n for n in message.notes)


def _lab_store(tmp_path: Path) -> tuple[str, str]:
    db = f"sqlite:///{tmp_path / 'lab.db'}"
    message = mapped("msfhirconv_LAB-ORU-1.hl7")
    with Store(db) as store:
        store.write(list(message.records))
    assert message.patient_id is not None
    return db, message.patient_id


def test_patient_shows_lab_results(tmp_path: Path) -> None:
    db, patient = _lab_store(tmp_path)
    shown = runner.invoke(app, ["patient", patient, "--db", db], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "Results" in shown.output
    for name in ("HEMATOCRIT", "PLATELETS", "NEUTROPHILS/100 LEUKOCYTES"):
        assert name in shown.output
    as_json = json.loads(runner.invoke(app, ["patient", patient, "--db", db, "--json"]).stdout)
    assert {r["code"] for r in as_json["results"]} >= {"20570-8", "11125-2", "23761-0"}


def _rejected_hl7(store: Store, payload: bytes, reason: str) -> int:
    raw = RawMessage(
        source_system="BEDSIDE_MON@ICU1",
        source_id="PCD-000042#rejected-1",
        payload=payload,
        content_type=CONTENT_TYPE,
        received=datetime.now(UTC),
        status="rejected",
        reason=reason,
    )
    return store.reject(raw, reason)


def test_inbox_lists_shows_and_retries_a_dead_letter_keeping_its_history(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'inbox.db'}"
    good = (FIXTURES / "authored_ORU_R01_vitals_pcd01_mdc_v26.hl7").read_bytes()
    broken = good.replace(b"PID|||MRN-4711^^^DT_HOSP^MR|", b"PID||||")
    with Store(db) as store:
        dead = _rejected_hl7(store, broken, "HL7 101: PID-3 (patient identifier list) is empty")
    listed = runner.invoke(app, ["inbox", "list", "--db", db, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [e["raw_id"] for e in json.loads(listed.stdout)] == [dead]
    failed = runner.invoke(app, ["inbox", "retry", str(dead), "--db", db])  # not fixed yet: rejected again
    assert failed.exit_code == 1
    corrected = tmp_path / "corrected.hl7"
    corrected.write_bytes(good)
    fixed = runner.invoke(app, ["inbox", "retry", str(dead), "--db", db, "--payload", str(corrected), "--json"])
    assert fixed.exit_code == 0, fixed.output
    (outcome,) = json.loads(fixed.stdout)
    assert (outcome["status"], outcome["records"]) == ("accepted", 7)
    shown = json.loads(runner.invoke(app, ["inbox", "show", str(dead), "--db", db, "--json"]).stdout)
    assert shown["status"] == "rejected"  # the original is kept as it was
    assert [(h["relation"], h["status"]) for h in shown["history"]] == [
        ("retry-of", "rejected"),
        ("retry-of", "accepted"),
    ]
    with Store(db) as store:
        assert len(store.observations(store.patients()[0].patient_id)) == 6
    text = runner.invoke(app, ["inbox", "show", str(outcome["raw_id"]), "--db", db], env={"COLUMNS": "200"})
    assert f"retry-of raw entry {dead}" in text.output
    assert "OBX|1|NM|147842" in text.output


def test_inbox_lists_conflicting_resends(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'conflicts.db'}"
    with Store(db) as store:
        now = datetime.now(UTC)
        first = store.write(
            [], RawMessage(source_system="A", source_id="X", payload=b"1", content_type="t", received=now)
        )
        again = RawMessage(source_system="A", source_id="X#conflict-1", payload=b"2", content_type="t", received=now,
                           related_raw_id=first.raw_id, relation="conflict-of")  # fmt: skip
        store.write([], again)
    listed = json.loads(
        runner.invoke(app, ["inbox", "list", "--conflicts", "--status", "all", "--db", db, "--json"]).stdout
    )
    assert [(e["source_id"], e["related_raw_id"]) for e in listed] == [("X#conflict-1", first.raw_id)]


def test_read_commands_never_create_a_database_and_hint_at_absolute_paths(tmp_path: Path) -> None:
    db_file = tmp_path / "real.db"
    Store(f"sqlite:///{db_file}").close()
    for command in (["patients"], ["patient", "x"], ["export", "x"], ["alerts", "list"], ["inbox", "list"]):
        missing = tmp_path / "typo.db"
        res = runner.invoke(app, [*command, "--db", f"sqlite:///{missing}"], env={"COLUMNS": "300"})
        assert res.exit_code == 1, (command, res.output)
        assert "no database at" in " ".join(res.output.split())
        assert not missing.exists()
    three_slashes = f"sqlite:///{str(db_file).lstrip('/')}"  # relative to the current folder: a common slip
    res = runner.invoke(app, ["patients", "--db", three_slashes], env={"COLUMNS": "300"})
    assert res.exit_code == 1
    assert f"write sqlite:////{str(db_file).lstrip('/')}" in " ".join(res.output.split())


def test_clear_errors_instead_of_tracebacks(tmp_path: Path) -> None:
    db_file = tmp_path / "e.db"
    Store(f"sqlite:///{db_file}").close()
    read_only = f"sqlite:///file:{db_file}?mode=ro&uri=true"
    fhir = Path(__file__).parent.parent / "fixtures" / "fhir" / "patient-example.json"
    cases: list[tuple[list[str], str]] = [
        (["ingest", str(fhir), "--db", read_only], "database error: attempt to write a readonly database"),
        (["patient", "p" * 50_000, "--db", f"sqlite:///{db_file}"], "a patient id has 1 to 200 characters"),
        (["patients", "--db", f"sqlite:///{tmp_path}/{'d' * 300}/{'x' * 5000}.db"], "no database at"),
        (["ingest", str(fhir), "--db", f"sqlite:///{tmp_path}/{'x' * 5000}.db"], "the path is too long"),
    ]
    for command, expected in cases:
        res = runner.invoke(app, command, env={"COLUMNS": "400"})
        assert res.exit_code == 1, res.output
        assert isinstance(res.exception, SystemExit), (command[0], res.exception)
        assert expected in " ".join(res.output.split()), res.output[:500]


def test_database_files_are_created_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    with Store(f"sqlite:///{path}") as store:
        store.write([Observation(patient_id="p", code=codes.HEART_RATE, effective=datetime.now(UTC),
                                 value=Quantity(value=60.0, unit="/min"))])  # fmt: skip
        made = [p for p in tmp_path.iterdir() if p.name.startswith("private.db")]
        assert {p.name for p in made} >= {"private.db", "private.db-wal"}
        for p in made:
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p.name
