"""The web app's pages and JSON endpoints without a browser: access rules, break-glass, audit, dosing proposals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medtwin.server import Platform, ServerSettings, create_app
from medtwin.server.web.seed import create_users, find_patient, seed_records
from medtwin.store import Store

PASSWORD = "web-api-test-pw"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Platform, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("webapi")
    store = Store(f"sqlite:///{folder / 'web.db'}")
    settings = ServerSettings(issuer="http://127.0.0.1:9", argon2_time_cost=1, argon2_memory_kib=1024,
                              rate_per_s=None)  # fmt: skip
    platform = Platform.open(settings, store)
    seed_records(store, now=datetime.now(UTC), glucose=False, accounts=platform.accounts)
    create_users(platform.accounts, password=PASSWORD)
    names = {p.identity.display_name: p.patient_id for p in store.patients() if p.identity}
    client = TestClient(create_app(platform))
    try:
        yield client, platform, names
    finally:
        client.close()
        platform.close()
        store.close()


def _token(client: TestClient, user: str) -> dict[str, str]:
    r = client.post("/oauth/token", data={"grant_type": "password", "username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": "Bearer " + r.json()["access_token"]}


def test_pages_are_shells_with_a_strict_policy(web: Any) -> None:
    client, _, _ = web
    page = client.get("/app/ward")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-eval" not in csp
    assert '<script src="/app/static/ward.js" defer>' in page.text
    assert "Alberto" not in page.text  # no patient data in a page
    js = client.get("/app/static/vendor/plotly.min.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert len(js.content) > 1_000_000
    assert client.get("/app/static/../../pyproject.toml").status_code == 404
    assert client.get("/app/static/nosuch.js").status_code == 404
    assert client.get("/app/patient/%3Cscript%3E").status_code == 404
    assert client.get("/app/api/ward").status_code == 401  # data needs a token
    assert client.get("/app/api/config").json()["client_id"] == "medtwin-web"


def test_the_board_lists_the_users_ward_only(web: Any) -> None:
    client, _, names = web
    kim = client.get("/app/api/ward", headers=_token(client, "nurse.kim")).json()
    assert {r["name"] for r in kim["rows"]} == {"Alberto Atencio", "Liz Conn"}
    alberto = next(r for r in kim["rows"] if r["name"] == "Alberto Atencio")
    assert alberto["vitals"]["hr"]["stale"] is True  # three hours old
    assert alberto["news2"]["total"] is None  # stale values are not scored
    ali = client.get("/app/api/ward", headers=_token(client, "nurse.ali")).json()
    assert ali["rows"] == []
    rows = client.get("/app/api/ward/rows", params={"ids": ",".join(names.values())},
                      headers=_token(client, "nurse.kim")).json()["rows"]  # fmt: skip
    assert {r["name"] for r in rows} == {"Alberto Atencio", "Liz Conn"}  # others left out


def test_outside_the_care_relationship_is_not_found_and_break_glass_is_for_clinicians(web: Any) -> None:
    client, _platform, names = web
    chet = names["Chet Thompson"]  # on no ward, in no care team
    nurse = _token(client, "nurse.ali")
    assert client.get(f"/app/api/patient/{names['Alberto Atencio']}", headers=nurse).status_code == 404
    glass = {"X-Break-Glass-Reason": "emergency on the next ward"}
    assert client.get(f"/app/api/patient/{chet}", headers={**nurse, **glass}).status_code == 404
    doctor = _token(client, "dr.lee")
    assert client.get(f"/app/api/patient/{chet}", headers=doctor).status_code == 404
    opened = client.get(f"/app/api/patient/{chet}", headers={**doctor, **glass})
    assert opened.status_code == 200
    assert opened.json()["name"] == "Chet Thompson"
    admin = _token(client, "admin")
    audit = client.get("/app/api/admin/audit", headers=admin).json()
    assert audit["verify"]["ok"] is True
    assert any(r["purpose"] == "emergency on the next ward" for r in audit["break_glass"])
    assert client.get("/app/api/admin/audit", headers=doctor).status_code == 403


def test_a_researcher_gets_no_identified_screen(web: Any) -> None:
    client, _, names = web
    researcher = _token(client, "res.olsen")
    for path in (f"/app/api/patient/{names['Liz Conn']}", "/app/api/ward", "/app/api/patients",
                 f"/app/api/ward/row/{names['Liz Conn']}"):  # fmt: skip
        r = client.get(path, headers=researcher)
        assert r.status_code == 403, path
        assert "Liz" not in r.text
    assert client.get("/app/api/hospital", headers=researcher).status_code in (200,)


def test_dosing_options_and_an_audited_proposal(web: Any) -> None:
    client, platform, names = web
    pid = names["Alberto Atencio"]
    pharmacist = _token(client, "pharm.diaz")
    view = client.get(f"/app/api/patient/{pid}/dosing", headers=pharmacist)
    assert view.status_code == 200, view.text
    body = view.json()
    assert [p["interval_h"] for p in body["proposals"]] == [8, 12, 24]
    assert all("auc24_ss" in p["metrics"] for p in body["proposals"])
    assert [lv["value"] for lv in body["levels"]] == [12.0, 9.5]
    made = client.post(f"/app/api/patient/{pid}/dosing/propose", json={"interval_h": 24}, headers=pharmacist)
    assert made.status_code == 201, made.text
    stored = [m for m in platform.store.medication_requests(pid) if m.intent == "proposal"]
    assert [m.interval_h for m in stored] == [24]
    platform.audit.flush()
    assert any(r.event.action == "create" and r.event.resource.startswith("MedicationRequest/")
               for r in platform.audit.records(patient_id=pid))  # fmt: skip
    bad = client.post(f"/app/api/patient/{pid}/dosing/propose", json={"interval_h": 7}, headers=pharmacist)
    assert bad.status_code == 422
    assert "7 h" in bad.json()["message"]
    nurse = _token(client, "nurse.kim")  # nurses may not create MedicationRequests
    assert client.post(f"/app/api/patient/{pid}/dosing/propose", json={}, headers=nurse).status_code == 403


def test_admin_assigns_a_care_team_and_the_policy_follows(web: Any) -> None:
    client, _, names = web
    chet = names["Chet Thompson"]
    admin, nurse = _token(client, "admin"), _token(client, "nurse.ali")
    r = client.post("/app/api/admin/careteams", json={"team": "team-b", "patient_id": chet}, headers=admin)
    assert r.status_code == 200
    assert client.post("/app/api/admin/careteams", json={"team": "x"}, headers=admin).status_code == 400
    assert client.post("/app/api/admin/careteams", json={"team": "x", "patient_id": chet},
                       headers=nurse).status_code == 403  # fmt: skip
    teams = client.get("/app/api/admin/careteams", headers=admin).json()["assignments"]
    assert {"team": "team-b", "patient_id": chet, "name": "Chet Thompson"} in teams
    users = client.get("/app/api/admin/users", headers=admin).json()["users"]
    assert {u["username"]: u["role"] for u in users}["res.olsen"] == "researcher"


def test_glucose_panel_without_cgm_data_says_so(web: Any) -> None:
    client, _, names = web
    r = client.get(f"/app/api/patient/{names['Luigi Wiegand']}/glucose", headers=_token(client, "dr.lee"))
    assert r.status_code == 200
    assert r.json()["trace"] is None
    w = client.post(f"/app/api/patient/{names['Luigi Wiegand']}/glucose/whatif", json={"bolus_scale": 1.2},
                    headers=_token(client, "dr.lee"))  # fmt: skip
    assert w.status_code == 404
    assert "no glucose twin" in w.json()["message"]


def test_find_patient_names_the_missing_one() -> None:
    with pytest.raises(KeyError):
        find_patient({"Liz Conn": "x"}, "Nobody")
