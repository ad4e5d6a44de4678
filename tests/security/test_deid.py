"""De-identification (HIPAA Safe Harbor, 164.514(b)(2)), field by field."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from medtwin.codes import HEART_RATE
from medtwin.interop.fhir import ingest_paths
from medtwin.records import Identifier, Observation, Patient, PatientIdentity, Provenance, Quantity
from medtwin.security.deid import RESTRICTED_ZIP3, deidentified_bundle, deidentify_patient, research_id, zip3
from medtwin.store import Store

SAMPLE = Path(__file__).parent.parent / "fixtures" / "fhir" / "synthea_liz_conn.json"


def _old_patient(store: Store, pid: str, born: date, address: str) -> None:
    p = Patient(patient_id=pid, gender="male", birth_date=born,
                identity=PatientIdentity(identifiers=(Identifier(system="H", value="MRN-42", type_code="MR"),),
                                         family="Oldman", given=("Abe",), telecom=("617-555-0199", "abe@example.org"),
                                         address=address))  # fmt: skip
    obs = Observation(
        patient_id=pid,
        code=HEART_RATE,
        effective=datetime(2024, 3, 10, 8, 30, tzinfo=UTC),
        value=Quantity(value=72, unit="/min"),
        provenance=Provenance(source_system="dev-7", source_id=f"SN-{pid}"),
    )
    store.write([p, obs])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'd.db'}")
    yield s
    s.close()


def test_zip3_rule() -> None:
    assert zip3("12 Oak St, Boston, MA 02139") == "021"
    assert zip3("PO Box 1, Hanover NH 03601-1234") == "036" if "036" not in RESTRICTED_ZIP3 else "000"
    assert all(zip3(f"x {z}45") == "000" for z in RESTRICTED_ZIP3)
    assert len(RESTRICTED_ZIP3) == 17
    assert zip3("no zip here") is None
    assert zip3(None) is None


def test_patient_fields(store: Store) -> None:
    _old_patient(store, "pt-old", date(1930, 5, 6), "1 Elm St, Springfield, VT 05901")  # 059: restricted
    _old_patient(store, "pt-young", date(1980, 7, 1), "2 Oak Ave, Cambridge, MA 02139-4307")
    old, *_ = deidentify_patient(store, "pt-old", today=date(2026, 12, 7))
    young, young_obs = deidentify_patient(store, "pt-young", today=date(2026, 12, 7))
    # (A) names, (D-F) phone/email, (H) MRN, (R) ids: none of them
    for res in (old, young):
        text = orjson.dumps(res).decode()
        for s in ("Oldman", "Abe", "617-555-0199", "abe@example.org", "MRN-42", "pt-old", "pt-young", "Elm", "Oak"):
            assert s not in text
        assert set(res) <= {"resourceType", "id", "gender", "birthDate", "extension", "address", "deceasedDateTime"}
    # (C) ages over 89: no birth date at all, the age group instead
    assert "birthDate" not in old
    assert old["extension"][0]["valueString"] == "90 or older"
    # (C) other birth dates: shifted by the patient's secret offset (1-365 days back)
    shift = store.keyring.date_shift_days("pt-young")
    assert -365 <= shift <= -1
    assert young["birthDate"] == date.fromordinal(date(1980, 7, 1).toordinal() + shift).isoformat()
    # (B) geography: ZIP3 only, restricted ones 000
    assert old["address"] == [{"postalCode": "000"}]
    assert young["address"] == [{"postalCode": "021"}]
    # (R) research ids are consistent and not the platform id
    assert young["id"] == research_id(store.keyring, "pt-young")
    assert young["id"].startswith("rs-")
    assert young_obs["subject"]["reference"] == f"Patient/{young['id']}"
    # observation: time shifted by the same offset, device identifier (provenance) gone, value kept
    assert young_obs["effectiveDateTime"].startswith(
        date.fromordinal(date(2024, 3, 10).toordinal() + shift).isoformat()
    )
    assert "identifier" not in young_obs
    assert young_obs["valueQuantity"]["value"] == 72


def test_year_only_mode(store: Store) -> None:
    _old_patient(store, "pt-y", date(1980, 7, 1), "x 02139")
    patient, obs = deidentify_patient(store, "pt-y", dates="year", today=date(2026, 12, 7))
    assert patient["birthDate"] == "1980"
    assert obs["effectiveDateTime"] == "2024"


def test_synthea_patient_has_no_identifier_left(store: Store) -> None:
    ingest_paths(store, [SAMPLE])
    [pid] = store.patient_ids()
    bundle = deidentified_bundle(store, [pid])
    text = orjson.dumps(bundle).decode()
    source = orjson.loads(SAMPLE.read_bytes())
    pat = next(e["resource"] for e in source["entry"] if e["resource"]["resourceType"] == "Patient")
    secrets = [pat["id"], pat["birthDate"], *(i["value"] for i in pat["identifier"]),
               *(n["family"] for n in pat["name"]), *(t["value"] for t in pat.get("telecom", [])),
               *(line for a in pat.get("address", []) for line in a.get("line", []))]  # fmt: skip
    for s in secrets:
        assert s not in text, s
    assert len(bundle["entry"]) > 40  # the patient, encounters, conditions, observations, medications
    # every encounter's start is the source's, shifted by the patient's offset (intervals kept)
    shift = store.keyring.date_shift_days(pid)
    exported = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    encounters = [e["resource"] for e in source["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert encounters
    for enc in encounters:
        start = datetime.fromisoformat(enc["period"]["start"])
        mine = exported[research_id(store.keyring, enc["id"])]
        assert datetime.fromisoformat(mine["period"]["start"]) == start + timedelta(days=shift)


def test_export_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medtwin.cli import app

    db = tmp_path / "x.db"
    s = Store(f"sqlite:///{db}")
    _old_patient(s, "pt-c", date(1980, 7, 1), "x 02139")
    s.close()
    out = tmp_path / "deid.json"
    r = CliRunner().invoke(app, ["export", "--deidentify", "--db", f"sqlite:///{db}", "-o", str(out)])
    assert r.exit_code == 0, r.output
    bundle = orjson.loads(out.read_bytes())
    assert bundle["entry"][0]["resource"]["address"] == [{"postalCode": "021"}]
    assert b"Oldman" not in out.read_bytes()
