"""The FHIR R4 facade: every response validated with fhirclient's R4 models; search semantics; writes through ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from .conftest import Api, make_api, seed_patient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"


def valid_r4(resource: dict[str, Any]) -> dict[str, Any]:
    """*resource*, after checking it against fhirclient's R4 (4.0.1) model of its type (strict)."""
    FHIRElementFactory.instantiate(resource["resourceType"], resource)
    return resource


def _admin(api: Api) -> dict[str, str]:
    return api.headers(api.token("admin"))


def _load_liz(api: Api) -> str:
    """Post the Synthea bundle of Liz Conn; her medtwin (keyed, pseudonymous) patient id."""
    data = (FIXTURES / "synthea_liz_conn.json").read_bytes()
    r = api.client.post("/fhir", content=data, headers={**_admin(api), "Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    body = valid_r4(r.json())
    assert body["type"] == "transaction-response"
    assert all(e["response"]["status"] == "201 Created" for e in body["entry"])
    found = api.client.get("/fhir/Patient", params={"name": "Conn"}, headers=_admin(api)).json()
    (entry,) = found["entry"]
    return str(entry["resource"]["id"])


def test_metadata_is_a_valid_capability_statement(api: Api) -> None:
    r = api.client.get("/fhir/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
    cap = valid_r4(r.json())
    types = {res["type"] for res in cap["rest"][0]["resource"]}
    assert {
        "Patient",
        "Observation",
        "Encounter",
        "Condition",
        "MedicationRequest",
        "MedicationAdministration",
        "Flag",
        "DetectedIssue",
    } <= types


def test_a_bundle_posted_is_readable_and_searchable_as_valid_r4(api: Api) -> None:
    LIZ = _load_liz(api)
    h = _admin(api)
    patient = valid_r4(api.client.get(f"/fhir/Patient/{LIZ}", headers=h).json())
    assert patient["name"][0]["family"] == "Conn"
    for rtype in (
        "Observation",
        "Encounter",
        "Condition",
        "MedicationRequest",
        "MedicationAdministration",
        "Flag",
        "DetectedIssue",
    ):
        r = api.client.get(f"/fhir/{rtype}", params={"patient": LIZ}, headers=h)
        assert r.status_code == 200, (rtype, r.text)
        bundle = valid_r4(r.json())
        assert bundle["type"] == "searchset"
        for entry in bundle.get("entry", []):
            assert entry["resource"]["resourceType"] == rtype
            if rtype != "Flag":
                ref = entry["resource"].get("subject") or entry["resource"].get("patient")
                assert ref == {"reference": f"Patient/{LIZ}"}
    found = api.client.get("/fhir/Patient", params={"name": "conn"}, headers=h).json()
    assert [e["resource"]["id"] for e in valid_r4(found)["entry"]] == [LIZ]
    assert api.client.get("/fhir/Patient", params={"identifier": "999-34-1238"}, headers=h).json()["total"] == 1
    assert api.client.get("/fhir/Patient", params={"birthdate": "1986-11"}, headers=h).json()["total"] == 1
    assert api.client.get("/fhir/Patient", params={"birthdate": "1987"}, headers=h).json()["total"] == 0


def test_identifier_search_goes_through_the_blind_index_without_decrypting_everyone(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FHIR ``identifier`` and the REST ``mrn`` look the patient up by the keyed blind index: no patient list is read
    (identities are encrypted at rest: that would decrypt every patient)."""
    seeded = [seed_patient(api.store, f"mrn-{i}", ward=None, index=i) for i in range(3)]
    target = seeded[1]

    def refuse() -> None:
        raise AssertionError("an identifier search must not read every patient")

    monkeypatch.setattr(api.store, "patients", refuse)
    h = _admin(api)

    def ids(params: dict[str, str]) -> list[str]:
        r = api.client.get("/fhir/Patient", params=params, headers=h)
        assert r.status_code == 200, r.text
        return [e["resource"]["id"] for e in valid_r4(r.json()).get("entry", [])]

    assert ids({"identifier": target.mrn}) == [target.patient_id]
    assert ids({"identifier": f"urn:mrn|{target.mrn}"}) == [target.patient_id]
    assert ids({"identifier": f"urn:other|{target.mrn}"}) == []
    assert ids({"identifier": "MRN-0000"}) == []
    assert ids({"identifier": target.mrn, "name": seeded[0].name.split()[1]}) == []  # every parameter must match
    r = api.client.get("/fhir/Patient", params={"identifier": "urn:mrn|"}, headers=h)
    assert r.status_code == 400
    assert "identifier" in r.json()["issue"][0]["diagnostics"]
    listed = api.client.get("/api/patients", params={"mrn": target.mrn}, headers=h).json()["patients"]
    assert [p["id"] for p in listed] == [target.patient_id]


def test_observation_paging_follows_next_links_without_gaps_or_repeats(api: Api) -> None:
    LIZ = _load_liz(api)
    h = _admin(api)
    everything = api.client.get("/fhir/Observation", params={"patient": LIZ, "_count": 1000}, headers=h).json()
    total = everything["total"]
    assert total == len(everything["entry"]) >= 30
    seen: list[str] = []
    url: str | None = f"/fhir/Observation?patient={LIZ}&_count=7"
    pages = 0
    while url is not None:
        page = valid_r4(api.client.get(url, headers=h).json())
        assert page["total"] == total
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = None if not nxt else (lambda u: f"{u.path}?{u.query}")(urlsplit(nxt[0]))
        pages += 1
    assert seen == [e["resource"]["id"] for e in everything["entry"]]
    assert pages == -(-total // 7)


def test_observation_date_ranges_sort_and_code(api: Api) -> None:
    LIZ = _load_liz(api)
    h = _admin(api)
    allobs = api.client.get("/fhir/Observation", params={"patient": LIZ, "_count": 1000}, headers=h).json()["entry"]
    times = sorted({e["resource"]["effectiveDateTime"] for e in allobs})
    assert len(times) >= 3  # three visits
    for query, keep in (
        (f"date=ge{times[1][:10]}&date=le{times[1][:10]}", lambda d: d == times[1][:10]),
        (f"date=ge{times[1][:10]}", lambda d: d >= times[1][:10]),
        (f"date=lt{times[1][:7]}", lambda d: d < times[1][:7]),
        (f"date={times[0][:4]}", lambda d: d[:4] == times[0][:4]),
    ):
        r = api.client.get(f"/fhir/Observation?patient={LIZ}&{query}&_count=1000", headers=h).json()
        got = [e["resource"]["effectiveDateTime"][:10] for e in r.get("entry", [])]
        expected = [t[:10] for t in (e["resource"]["effectiveDateTime"] for e in allobs) if keep(t[:10])]
        assert got == expected, query
        assert 0 < len(got) < len(allobs), query
    desc = api.client.get(f"/fhir/Observation?patient={LIZ}&_sort=-date&_count=1000", headers=h).json()["entry"]
    stamps = [e["resource"]["effectiveDateTime"] for e in desc]
    assert stamps == sorted(stamps, reverse=True)
    code = allobs[0]["resource"]["code"]["coding"][0]
    coded = api.client.get(
        "/fhir/Observation",
        params={"patient": LIZ, "code": f"{code['system']}|{code['code']}", "_count": 1000},
        headers=h,
    ).json()
    assert coded["total"] >= 1
    assert all(any(c["code"] == code["code"] for c in e["resource"]["code"]["coding"]) for e in coded["entry"])
    one = coded["entry"][0]["resource"]
    assert valid_r4(api.client.get(f"/fhir/Observation/{one['id']}", headers=h).json()) == one


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("date=xx2024", "date='xx2024'"),
        ("date=ne2024", "prefix 'ne'"),
        ("_count=0", "_count=0"),
        ("_count=abc", "_count='abc'"),
        ("_sort=name", "_sort='name'"),
        ("code=http://loinc.org|", "expected system|code"),
    ],
)
def test_bad_search_parameters_are_400_operation_outcomes_naming_them(api: Api, query: str, needle: str) -> None:
    r = api.client.get(f"/fhir/Observation?patient=pt-x&{query}", headers=_admin(api))
    assert r.status_code == 400
    outcome = valid_r4(r.json())
    assert needle in outcome["issue"][0]["diagnostics"]


def test_an_invalid_bundle_is_refused_whole_with_element_paths_and_logged(api: Api) -> None:
    bundle = orjson.loads((FIXTURES / "synthea_liz_conn.json").read_bytes())
    bundle["entry"][3]["resource"]["status"] = 42
    bundle["entry"][5]["resource"]["bogusElement"] = "x"
    before = api.store.counts()
    r = api.client.post("/fhir", content=orjson.dumps(bundle), headers=_admin(api))
    assert r.status_code == 400
    outcome = valid_r4(r.json())
    paths = {e for issue in outcome["issue"] for e in issue.get("expression", [])}
    assert any(p.endswith(".status") for p in paths), outcome
    assert any("bogusElement" in p for p in paths), outcome
    after = api.store.counts()
    assert {k: v for k, v in after.items() if k != "raw_inbound"} == {
        k: v for k, v in before.items() if k != "raw_inbound"
    }
    rejected = api.store.raw_log(status="rejected")
    assert len(rejected) == 1
    assert "status" in (rejected[0].reason or "")


@pytest.mark.parametrize(
    ("body", "path", "needle"),
    [
        (b"{not json", "/fhir", "not valid JSON"),
        (b'{"resourceType": "Patient", "id": "p1"}', "/fhir", "takes a Bundle"),
        (b'{"resourceType": "Patient", "id": "p1"}', "/fhir/Observation", "does not match the URL"),
        (b"[1, 2]", "/fhir/Patient", "JSON object"),
        (b"", "/fhir/Patient", "no body"),
        (b'{"resourceType": "Patient", "id": "../../x"}', "/fhir/Patient", "not a valid FHIR id"),
    ],
)
def test_bad_writes_are_4xx_with_a_clear_message_and_store_nothing(
    api: Api, body: bytes, path: str, needle: str
) -> None:
    before = api.store.counts()
    r = api.client.post(path, content=body, headers=_admin(api))
    assert 400 <= r.status_code < 500
    assert needle in r.text
    assert api.store.counts()["patients"] == before["patients"]


def test_create_a_single_resource_assigns_an_id_and_answers_201(api: Api) -> None:
    seeded = seed_patient(api.store, "c1", ward=None, index=1)
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{seeded.patient_id}"},
        "effectiveDateTime": "2026-11-02T10:00:00Z",
        "valueQuantity": {"value": 91, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    r = api.client.post("/fhir/Observation", content=orjson.dumps(obs), headers=_admin(api))
    assert r.status_code == 201, r.text
    created = valid_r4(r.json())
    assert r.headers["location"].endswith(f"/fhir/Observation/{created['id']}")
    assert len(api.store.observations(seeded.patient_id)) == 2
    again = api.client.post("/fhir/Observation", content=orjson.dumps(created), headers=_admin(api))
    assert again.status_code == 200  # the same bytes again: stored once
    assert len(api.store.observations(seeded.patient_id)) == 2


def test_the_facade_runs_on_postgresql_too(any_store_url: str, tmp_path: Path) -> None:
    made = make_api(any_store_url, tmp_path)
    try:
        LIZ = _load_liz(made)
        h = _admin(made)
        r = made.client.get("/fhir/Observation", params={"patient": LIZ, "date": "ge2000", "_count": 5}, headers=h)
        bundle = valid_r4(r.json())
        assert bundle["total"] >= 30
        assert len(bundle["entry"]) == 5
        assert valid_r4(made.client.get(f"/fhir/Patient/{LIZ}", headers=h).json())["id"] == LIZ
    finally:
        made.close()


def test_admins_erase_a_patient_and_nobody_else_can(api: Api) -> None:
    seeded = seed_patient(api.store, "erase-me", ward="W1", index=3)
    url = f"/fhir/Patient/{seeded.patient_id}"
    clinician = api.headers(api.token("clinician", wards=("W1",)))
    assert api.client.delete(url, headers=clinician).status_code == 403
    assert api.store.patient(seeded.patient_id) is not None
    r = api.client.delete(url, headers=_admin(api))
    assert r.status_code == 200, r.text
    assert valid_r4(r.json())["issue"][0]["severity"] == "information"
    assert api.store.patient(seeded.patient_id) is None
    assert api.store.observations(seeded.patient_id) == []
    assert api.client.get(url, headers=_admin(api)).status_code == 404
    assert api.client.delete(url, headers=_admin(api)).status_code == 404  # already gone: as for any missing id
    audit = api.platform.audit
    assert audit is not None
    audit.flush()
    erased = audit.records(action="erase")
    assert [e.event.patient_id for e in erased] == [seeded.patient_id]
    assert audit.verify().ok


def test_the_twin_state_and_news2_forecast_of_a_patient(api: Api) -> None:
    from datetime import timedelta

    from medtwin import codes
    from medtwin.records import Observation, Quantity
    from medtwin.twin import PatientTwin

    from .conftest import T0

    seeded = seed_patient(api.store, "twin", ward="W1", index=4)
    twin = PatientTwin(seeded.patient_id)
    for minutes, rr in ((0, 14), (30, 22), (60, 26)):  # a rising respiratory rate: NEWS2 0, 2, 3
        at = T0 + timedelta(minutes=minutes)
        twin.observe([Observation(patient_id=seeded.patient_id, code=codes.RESPIRATORY_RATE, effective=at,
                                  value=Quantity(value=rr, unit="/min"))])  # fmt: skip
    api.store.save_snapshot(twin.twin_id, twin.snapshot(), T0 + timedelta(minutes=60))
    expected = twin.forecast(timedelta(hours=2))
    assert expected is not None
    r = api.client.get(f"/api/patients/{seeded.patient_id}/twin", params={"horizon_h": 2}, headers=_admin(api))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["forecast"]["expected_news2"] == round(expected.expected_total, 2)
    assert body["forecast"]["slope_per_h"] > 0
    assert body["forecast"]["points"] == 3
    assert body["state"]["last_news2"][0] == 3
