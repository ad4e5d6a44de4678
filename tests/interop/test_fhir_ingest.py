"""FHIR files -> store: idempotency, transaction semantics per bundle, raw log, NDJSON streaming."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medtwin.crypto import generate_keyring
from medtwin.interop.fhir import fhir_files, ingest_file, ingest_paths
from medtwin.store import Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
LIZ = FIXTURES / "synthea_liz_conn.json"
LIZ_RECORDS = 46  # Patient 1 + Observation 36 + Encounter 7 + Condition 1 + MedicationRequest 1
LIZ_UNMAPPED = 27  # not mapped to records, kept whole as FHIR resources (Claim 8, ExplanationOfBenefit 7, ...)
LIZ_STORED = LIZ_RECORDS + LIZ_UNMAPPED


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'fhir.db'}") as s:
        yield s


def _liz() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(LIZ.read_text())
    return data


def test_bundle_ingest_is_idempotent_and_logged(store: Store) -> None:
    first = ingest_file(store, LIZ)
    assert (first.status, first.inserted, first.duplicates, first.resources) == ("ok", LIZ_STORED, 0, 73)
    assert sum(first.unmapped.values()) == LIZ_UNMAPPED
    counts = store.counts()
    second = ingest_file(store, LIZ)
    assert (second.status, second.inserted) == ("duplicate", 0)
    assert store.counts() == {**counts, "raw_inbound": counts["raw_inbound"] + 1}
    accepted = store.raw_log(status="accepted")
    assert len(accepted) == 1
    assert accepted[0].payload == LIZ.read_bytes()
    assert accepted[0].record_count == LIZ_STORED
    assert accepted[0].reason is not None
    assert "Claim=8" in accepted[0].reason
    assert "ExplanationOfBenefit=7" in accepted[0].reason
    assert len(store.raw_log(status="duplicate")) == 1


def test_same_resources_in_another_file_are_not_stored_twice(store: Store, tmp_path: Path) -> None:
    ingest_file(store, LIZ)
    other = tmp_path / "liz-again.json"
    data = _liz()
    data["id"] = "a-different-bundle"
    other.write_text(json.dumps(data))
    report = ingest_file(store, other)
    assert (report.status, report.inserted, report.duplicates) == ("ok", 0, LIZ_STORED)
    assert store.counts()["observations"] == 36


def test_bad_bundle_writes_nothing_and_other_files_continue(store: Store, tmp_path: Path) -> None:
    data = _liz()
    bad = copy.deepcopy(data)
    idx = next(i for i, e in enumerate(bad["entry"]) if e["resource"]["resourceType"] == "Condition")
    bad["entry"][idx]["resource"]["code"] = "diabetes"  # not R4: a CodeableConcept is an object
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_bad.json").write_text(json.dumps(bad))
    (folder / "b_not_json.json").write_text('{"resourceType": "Bundle", ')
    (folder / "c_good.json").write_text(json.dumps(data))
    report = ingest_paths(store, [folder])
    assert [f.status for f in report.files] == ["rejected", "rejected", "ok"]
    assert not report.ok
    cond_id = bad["entry"][idx]["resource"]["id"]
    assert report.files[0].errors == [
        f"{folder / 'a_bad.json'}: entry {idx} (Condition/{cond_id}): Condition.code: expected an object "
        "(CodeableConcept), got a string"
    ]
    assert report.files[1].errors[0].startswith(f"{folder / 'b_not_json.json'}: invalid JSON")
    assert report.files[2].inserted == LIZ_STORED  # nothing of the bad copy had been stored
    rejected = store.raw_log(status="rejected")
    assert len(rejected) == 2
    assert {r.reason for r in rejected} == {report.files[0].errors[0], report.files[1].errors[0]}
    totals = report.as_dict()["totals"]
    assert (totals["files"], totals["rejected_files"], totals["inserted"]) == (3, 2, LIZ_STORED)


def test_single_resources_and_unmapped_files(store: Store) -> None:
    ok = ingest_file(store, FIXTURES / "observation-example-bloodpressure.json")
    assert (ok.status, ok.inserted) == ("ok", 1)
    kept = ingest_file(store, FIXTURES / "auditevent-example.json")  # a type medtwin does not map: kept whole
    assert (kept.status, kept.inserted, dict(kept.unmapped)) == ("ok", 1, {"AuditEvent": 1})
    logged = store.raw_log(status="accepted")
    assert len(logged) == 2
    assert logged[0].payload == (FIXTURES / "auditevent-example.json").read_bytes()


def test_reingesting_an_unmapped_file_is_a_duplicate(store: Store) -> None:
    """Synthea's hospitalInformation/practitionerInformation files hold only unmapped resources (kept whole): a
    second load must not store another copy of their bytes (idempotent raw log)."""
    path = FIXTURES / "auditevent-example.json"
    assert ingest_file(store, path).status == "ok"
    again = ingest_file(store, path)
    assert (again.status, again.ok, sum(again.unmapped.values())) == ("duplicate", True, 0)
    assert len(store.raw_log(status="accepted")) == 1
    duplicate = store.raw_log(status="duplicate")
    assert len(duplicate) == 1
    assert duplicate[0].payload == b""
    assert store.raw_seen(duplicate[0].source_system, duplicate[0].source_id) is not None


def _ndjson_lines() -> list[str]:
    """Liz Conn's resources as bulk-export NDJSON: one resource a line, references as Type/id."""
    data = _liz()
    rewrite = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in data["entry"]}
    lines = []
    for e in data["entry"]:
        text = json.dumps(e["resource"])
        for full_url, ref in rewrite.items():
            text = text.replace(f'"{full_url}"', f'"{ref}"')
        lines.append(text)
    return lines


def test_ndjson_streams_in_chunks_and_rejects_bad_lines_alone(store: Store, tmp_path: Path) -> None:
    lines = _ndjson_lines()
    lines.insert(10, '{"resourceType": "Observation", "id": "broken"')
    path = tmp_path / "export.ndjson"
    path.write_text("\n".join(lines) + "\n\n")
    report = ingest_file(store, path, chunk_lines=20)
    assert report.status == "partial"
    assert report.errors[0].startswith(f"{path}: line 11: invalid JSON")
    assert len(report.errors) == 1
    assert (report.inserted, sum(report.unmapped.values())) == (LIZ_STORED, LIZ_UNMAPPED)
    assert len(store.raw_log(status="accepted")) == 4  # 74 lines in chunks of 20
    assert len(store.raw_log(status="rejected")) == 1
    again = ingest_file(store, path, chunk_lines=20)
    assert again.inserted == 0
    assert store.counts()["observations"] == 36


def test_ndjson_matches_the_bundle(tmp_path: Path) -> None:
    path = tmp_path / "export.ndjson"
    path.write_text("\n".join(_ndjson_lines()))
    ring = generate_keyring()  # one keyring: the same FHIR Patient gets the same keyed id in both stores
    with (
        Store(f"sqlite:///{tmp_path / 'a.db'}", keyring=ring) as a,
        Store(f"sqlite:///{tmp_path / 'b.db'}", keyring=ring) as b,
    ):
        assert ingest_file(a, path).ok
        assert ingest_file(b, LIZ).ok
        pid = a.patients()[0].patient_id
        assert a.patients() == b.patients()
        assert a.observations(pid) == b.observations(pid)
        assert a.encounters(pid) == b.encounters(pid)


def test_fhir_files_expands_folders_and_names_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.json", "sub/a.ndjson", "notes.txt"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in fhir_files([tmp_path])] == ["b.json", "a.ndjson"]
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json: no such file"):
        fhir_files([tmp_path / "nowhere.json"])


def test_json_with_a_utf8_byte_order_mark_is_read(store: Store, tmp_path: Path) -> None:
    """Windows tools write a BOM in front of JSON; the bytes are still valid FHIR JSON (RFC 8259 8.1 allows
    a parser to ignore it)."""
    bom = b"\xef\xbb\xbf"
    bundle = tmp_path / "bom.json"
    bundle.write_bytes(bom + (FIXTURES / "observation-example-heart-rate.json").read_bytes())
    ndjson = tmp_path / "bom.ndjson"
    line = json.dumps(json.loads((FIXTURES / "observation-example-satO2.json").read_text()))
    ndjson.write_bytes(bom + line.encode() + b"\r\n")
    report = ingest_paths(store, [bundle, ndjson])
    assert report.ok, report.as_dict()
    assert report.total("inserted") == 2


def test_reingesting_ndjson_with_a_bad_line_still_reports_it(store: Store, tmp_path: Path) -> None:
    """A JSON file that was rejected is rejected again on every run; an NDJSON file with a bad line must not
    turn into a clean "duplicate" (exit 0) on the second run while that line was never loaded."""
    lines = _ndjson_lines()
    lines.insert(3, '{"resourceType": "Observation", "id": "broken"')
    path = tmp_path / "export.ndjson"
    path.write_text("\n".join(lines) + "\n")
    first = ingest_file(store, path, chunk_lines=20)
    counts = store.counts()
    again = ingest_file(store, path, chunk_lines=20)
    assert (again.status, again.ok, again.inserted) == ("partial", False, 0)
    assert again.errors == first.errors
    assert store.counts()["observations"] == counts["observations"]
    assert len(store.raw_log(status="accepted")) == 4  # the good chunks are not stored twice
    clean = tmp_path / "clean.ndjson"
    clean.write_text("\n".join(_ndjson_lines()) + "\n")
    assert ingest_file(store, clean).status == "ok"
    assert ingest_file(store, clean).status == "duplicate"


def test_ndjson_line_holding_a_bundle_is_expanded_with_its_transaction_semantics(store: Store, tmp_path: Path) -> None:
    """Some exporters put a whole Bundle on one NDJSON line: its entries are ingested (urn:uuid references
    resolved within it), and a bad entry rejects that line's bundle only, never as an unmapped "Bundle"."""
    good = _liz()
    bad = copy.deepcopy(good)
    idx = next(i for i, e in enumerate(bad["entry"]) if e["resource"]["resourceType"] == "Observation")
    obs_id = bad["entry"][idx]["resource"]["id"]
    bad["entry"][idx]["resource"]["effectiveDateTime"] = "2019-02-30T10:00:00Z"
    for e in bad["entry"]:  # other ids, so that a leak of the bad bundle's records would be visible
        e["resource"]["id"] = "x-" + e["resource"]["id"]
    heart_rate = json.loads((FIXTURES / "observation-example-heart-rate.json").read_text())
    heart_rate["subject"] = {"reference": f"Patient/{good['entry'][0]['resource']['id']}"}
    path = tmp_path / "bundles.ndjson"
    path.write_text("\n".join(json.dumps(x) for x in (good, bad, heart_rate)) + "\n")
    report = ingest_file(store, path)
    assert "Bundle" not in report.unmapped
    assert (report.inserted, sum(report.unmapped.values())) == (LIZ_STORED + 1, LIZ_UNMAPPED)
    assert report.resources == len(good["entry"]) + 1 + 1  # the bad line counts once, as a rejected line
    assert report.status == "partial"
    assert report.errors == [
        f"{path}: line 2: entry {idx} (Observation/x-{obs_id}): Observation.effectiveDateTime: "
        "'2019-02-30T10:00:00Z' is not an R4 dateTime"
    ]
    assert store.counts()["patients"] == 1  # nothing of the bad line's bundle was written
    assert store.counts()["observations"] == 36 + 1
    rejected = store.raw_log(status="rejected")
    assert [r.source_id.rsplit("#", 1)[1] for r in rejected] == ["line=2"]
    again = ingest_file(store, path)
    assert (again.inserted, again.errors) == (0, report.errors)


def test_bundle_entry_that_is_not_a_list_is_rejected(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "odd.json"
    path.write_text('{"resourceType": "Bundle", "type": "collection", "entry": {}}')
    report = ingest_file(store, path)
    assert report.status == "rejected"
    assert report.errors == [f"{path}: Bundle.entry: must be a list of entries, got a JSON object"]
    assert store.counts()["patients"] == 0
    empty = tmp_path / "empty.json"
    empty.write_text('{"resourceType": "Bundle", "type": "collection", "entry": []}')
    assert ingest_file(store, empty).ok  # an empty list is a valid, empty bundle
