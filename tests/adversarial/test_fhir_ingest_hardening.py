"""Issue 13 D: FHIR ingest validates R4 structure, keeps every valid resource whole, survives wrong JSON types and
huge input, stays linear, and lets two processes set up a fresh database together."""

from __future__ import annotations

import collections
import copy
import gc
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest

from medtwin.interop.fhir import FhirLimits, ingest_file, ingest_paths, parse_payload, patient_bundle
from medtwin.interop.fhir.r4_structure import generate_tables, validate_resource
from medtwin.store import Store

SAMPLES = sorted(Path(str(resources.files("medtwin").joinpath("data/samples"))).glob("*.json"))
LIZ = Path(__file__).parent.parent / "fixtures" / "fhir" / "synthea_liz_conn.json"


def liz() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(LIZ.read_text())
    return data


def entry_of(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    resource: dict[str, Any] = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)
    return resource


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from medtwin.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_shipped_r4_tables_are_what_fhirclient_gives() -> None:
    shipped = json.loads(resources.files("medtwin.interop.fhir").joinpath("r4_structure.json").read_text())
    assert shipped == generate_tables()
    assert len(shipped["resources"]) == 146  # every R4 (4.0.1) resource type


def test_unknown_elements_refuse_the_bundle_naming_the_element(tmp_path: Path) -> None:
    bundle = liz()
    entry_of(bundle, "Observation")["effectivePeriod"] = {"start": "2020-01-01", "stop": "2020-01-02"}
    entry_of(bundle, "Observation").pop("effectiveDateTime")
    path = tmp_path / "unknown.json"
    path.write_text(json.dumps(bundle))
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        report = ingest_file(store, path)
        assert report.status == "rejected"
        assert "Observation.effectivePeriod.stop: unknown element" in report.errors[0]
        assert store.counts()["observations"] == 0  # it stored 320 records before


@pytest.mark.parametrize(
    ("change", "path", "problem"),
    [
        ({"status": 5}, "Observation.status", "expected a string (string), got a number"),
        ({"category": {"text": "x"}}, "Observation.category", "expected an array (the element repeats)"),
        ({"code": [{"text": "x"}]}, "Observation.code", "expected one value, got an array"),
        ({"valueString": "a", "valueBoolean": True}, "Observation.valueBoolean", "only one value[x] is allowed"),
        ({"issued": "2020-01-01"}, "Observation.issued", "'2020-01-01' is not an R4 instant"),
        ({"interpretation": []}, "Observation.interpretation", "an empty array"),
        ({"note": [{"text": None}]}, "Observation.note[0].text", "expected a string (string), got null"),
    ],
)
def test_r4_types_cardinality_and_choices_are_checked(change: dict[str, Any], path: str, problem: str) -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "pulse"},
        **change,
    }
    errors, _ = validate_resource(observation)
    assert [(e.path, e.problem[: len(problem)]) for e in errors] == [(path, problem)]


def test_required_elements_are_checked() -> None:
    errors, _ = validate_resource({"resourceType": "Observation", "id": "o1", "code": {"text": "x"}})
    assert [str(e) for e in errors] == ["Observation.status: missing required element"]


def test_a_valid_resource_medtwin_cannot_map_is_kept_with_a_warning(tmp_path: Path) -> None:
    """A not-done Observation has no effective[x] (optional in R4): the bundle used to be rejected whole."""
    bundle = liz()
    observation = entry_of(bundle, "Observation")
    observation["status"] = "cancelled"
    observation.pop("effectiveDateTime")
    observation.pop("issued", None)
    observation.pop("valueQuantity", None)
    observation["dataAbsentReason"] = {"text": "not done"}
    path = tmp_path / "not-done.json"
    path.write_text(json.dumps(bundle))
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        report = ingest_file(store, path)
        assert report.status == "ok", report.errors
        assert any(f"(Observation/{observation['id']}): kept as FHIR JSON" in w for w in report.warnings)
        assert store.counts()["observations"] == 35
        patient = store.keyring.pseudonym.fhir(entry_of(bundle, "Patient")["id"])  # FHIR ids are keyed (issue 15)
        kept = [orjson.loads(b) for b in store.kept_resources(patient)]
        assert any(r["resourceType"] == "Observation" and r["id"] == observation["id"] for r in kept)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda b: entry_of(b, "Patient").__setitem__("contained", True), "Patient.contained: expected an array"),
        (lambda b: entry_of(b, "Patient").__setitem__("contained", 5), "Patient.contained: expected an array"),
        (lambda b: b["entry"][0].__setitem__("fullUrl", 5), "Bundle.entry[0].fullUrl: expected a string"),
    ],
)
def test_wrong_json_types_are_clear_errors_and_the_run_goes_on(change: Any, problem: str, tmp_path: Path) -> None:
    """`medtwin ingest --json good.json bad.json`: no traceback, the JSON summary on stdout, the good file committed,
    the bad one logged as rejected (the earlier good file was lost with the crash)."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = liz()
    (folder / "a_good.json").write_text(json.dumps(good))
    bad = copy.deepcopy(good)
    for e in bad["entry"]:
        e["resource"]["id"] = "x-" + e["resource"]["id"]
    change(bad)
    (folder / "b_bad.json").write_text(json.dumps(bad))
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    done = run_cli("ingest", str(folder), "--db", db, "--json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert [f["status"] for f in summary["files"]] == ["ok", "rejected"]
    assert problem in summary["files"][1]["errors"][0]
    with Store(db) as store:
        assert store.counts()["patients"] == 1
        (rejected,) = store.raw_log("rejected")
        assert problem in (rejected.reason or "")


def test_size_limits_are_clear_errors(tmp_path: Path) -> None:
    limits = FhirLimits(max_file_bytes=300_000, max_line_bytes=50_000, max_string_chars=10_000)
    huge_string = liz()
    entry_of(huge_string, "Patient")["name"][0]["family"] = "x" * 20_000
    (tmp_path / "string.json").write_text(json.dumps(huge_string))
    big = liz()
    big["entry"] = big["entry"] * 4  # about 700 KB
    (tmp_path / "big.json").write_text(json.dumps(big))
    long_line = entry_of(liz(), "Patient")
    long_line["name"][0]["family"] = "y" * 60_000
    line = json.dumps(long_line)
    (tmp_path / "lines.ndjson").write_text(line + "\n" + json.dumps(entry_of(liz(), "Patient")) + "\n")
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        report = ingest_paths(store, [tmp_path], limits=limits)
        by_name = {Path(f.path).name: f for f in report.files}
        assert (
            "Patient.name[0].family: a string of 20000 characters, over the limit of 10000"
            in (by_name["string.json"].errors[0])
        )
        assert "bytes, over the limit of 300000 for one JSON file" in by_name["big.json"].errors[0]
        assert "line 1: a line of" in by_name["lines.ndjson"].errors[0]
        assert by_name["lines.ndjson"].inserted == 1  # the next line is ingested
        kept = {len(e.payload or b"") for e in store.raw_log("rejected")}
        # over a size limit: the first 4 KiB are kept; refused for its content (within the limits): kept whole
        assert kept == {4096, (tmp_path / "string.json").stat().st_size}


def _medications_bundle(n: int) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p"}},
    ]
    for i in range(n):
        entries.append(
            {
                "fullUrl": f"urn:uuid:m{i}",
                "resource": {"resourceType": "Medication", "id": f"m{i}", "code": {"coding": [
                    {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": str(1000 + i)}]}},
            }
        )  # fmt: skip
        entries.append(
            {
                "fullUrl": f"urn:uuid:r{i}",
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": f"r{i}",
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": "urn:uuid:p"},
                    "medicationReference": {"reference": f"urn:uuid:m{i}"},
                },
            }
        )
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def test_medications_and_their_requests_are_read_in_linear_time() -> None:
    """N Medications + N MedicationRequests: 8k took 1.7 s and 24k 9.1 s (each request copied every Medication).
    An order-of-growth check, not a timing goal: 8x the resources cost ~8x the CPU when linear and ~64x when
    quadratic; the bound (24x) sits a factor 3 from both, with the collector off so that its passes over the growing
    heap do not count (under load a 4x step with a bound of 8 failed at 8.04)."""

    def cpu(n: int) -> float:
        bundle = _medications_bundle(n)
        best = float("inf")
        for _ in range(2):
            payload = copy.deepcopy(bundle)
            gc.collect()
            gc.disable()
            try:
                started = time.process_time()
                parsed = parse_payload(payload)
                best = min(best, time.process_time() - started)
            finally:
                gc.enable()
            assert len(parsed.records) == n + 1
        return best

    small, large = cpu(1_000), cpu(8_000)
    assert large / small < 24, f"{small:.3f} s -> {large:.3f} s for 8x the resources"  # linear: ~8; quadratic: ~64


def test_two_ingests_on_a_fresh_sqlite_file_do_not_race_the_schema(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fresh.db'}"
    command = [sys.executable, "-c", "from medtwin.cli import main; main()", "ingest", "--db", db, "--json"]
    runs = [subprocess.Popen([*command, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for path in SAMPLES[:2]]  # fmt: skip
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-500:] for _, err in outputs]
    with Store(db) as store:
        assert store.counts()["patients"] == 2


def _normalised(bundle: dict[str, Any], pseudonym: Any = None) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """The bundle's resources by type, with references inside it rewritten to Type/id (the documented
    normalisation of kept resources); with *pseudonym* (a store's ``keyring.pseudonym.fhir``) the Patient's id
    and the references to it become the keyed patient id, without their display (docs/security-data.md)."""
    refs = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    for full_url, ref in refs.items():
        text = text.replace(f'"{full_url}"', f'"{ref}"')
    resources = json.loads(text)
    if pseudonym is not None:
        for res in resources:
            if res["resourceType"] == "Patient":
                old, res["id"] = res["id"], pseudonym(res["id"])
                _rekey(resources, f"Patient/{old}", f"Patient/{res['id']}")
    out: dict[str, dict[tuple[str, str], dict[str, Any]]] = collections.defaultdict(dict)
    for res in resources:
        out[res["resourceType"]][(res["resourceType"], res["id"])] = res
    return out


def _rekey(node: Any, old: str, new: str) -> None:
    if isinstance(node, dict):
        if node.get("reference") == old:
            node["reference"] = new
            node.pop("display", None)
        for v in node.values():
            _rekey(v, old, new)
    elif isinstance(node, list):
        for v in node:
            _rekey(v, old, new)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name.split("_")[0])
def test_export_returns_what_was_ingested_type_by_type(sample: Path, tmp_path: Path) -> None:
    """Every Synthea sample: the patient's export holds, type by type, the resources that were ingested; those
    medtwin does not map (Claim, Immunization, Procedure, ...) exactly as they came (references normalised), the
    mapped ones (Patient, Encounter, Condition, Observation, MedicationRequest) with the same ids."""
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        ingested = _normalised(json.loads(sample.read_text()), store.keyring.pseudonym.fhir)
        assert ingest_file(store, sample).ok
        (patient,) = store.patients()
        exported = _normalised(patient_bundle(store, patient.patient_id))
    assert {t: len(v) for t, v in exported.items()} == {t: len(v) for t, v in ingested.items()}
    mapped = {"Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "MedicationAdministration"}
    for rtype, items in ingested.items():
        if rtype in mapped:
            assert exported[rtype].keys() == items.keys()
        else:
            assert exported[rtype] == items, rtype
