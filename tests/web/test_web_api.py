"""The web app's pages and JSON endpoints without a browser: access rules, break-glass, audit, dosing proposals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from medtwin.server import Platform, ServerSettings, create_app
from medtwin.server.web.seed import create_users, find_patient, seed_records
from medtwin.store import Store
from medtwin.store.access_tables import users

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


# -- dosing panel: entered doses and levels ---------------------------------------------------------------------------
def _iso_ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat()


def _entered(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "drug": "vancomycin",
        "doses": [{"time": _iso_ago(14), "amount_mg": 1000, "duration_h": 1},
                  {"time": _iso_ago(2), "amount_mg": 1000, "duration_h": 1}],
        "levels": [{"time": _iso_ago(2.5), "value_mg_l": 11.5}],
        "weight_kg": 82, "scr_mg_dl": 1.1,
    }  # fmt: skip
    body.update(over)
    return body


def _proposals(store: Store, pid: str) -> list[Any]:
    return [m for m in store.medication_requests(pid) if m.intent == "proposal"]


def test_an_entered_case_without_a_course_gives_regimen_options_and_writes_nothing(web: Any) -> None:
    client, platform, names = web
    pid = names["Chet Thompson"]  # no vancomycin course in the record
    pharmacist = _token(client, "pharm.diaz")
    assert client.get(f"/app/api/patient/{pid}/dosing", headers=pharmacist).status_code == 404
    before = (len(platform.store.observations(pid)), len(platform.store.medication_administrations(pid)))
    r = client.post(f"/app/api/patient/{pid}/dosing/entered", json=_entered(), headers=pharmacist)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["source"] for d in body["doses"]] == ["entered", "entered"]
    assert [(lv["source"], lv["value"]) for lv in body["levels"]] == [("entered", 11.5)]
    assert [p["interval_h"] for p in body["proposals"]] == [8, 12, 24]
    assert all(0 < p["metrics"]["auc24_ss"]["value"] < 2000 for p in body["proposals"])
    assert body["covariates"]["WT"] == 82  # the entered weight (kg)
    # Cockcroft-Gault (male) from the entered creatinine and weight and the age from the record's birth date
    born = platform.store.patient(pid).birth_date
    first = datetime.fromisoformat(body["doses"][0]["time"]).date()
    age = first.year - born.year - ((first.month, first.day) < (born.month, born.day))
    assert platform.store.patient(pid).gender == "male"
    assert body["covariates"]["CRCL"] == pytest.approx((140 - age) * 82 / (72 * 1.1))
    assert any("entered in the web app (not in the record): weight_kg 82 kg" in n for n in body["notes"])
    assert body["entered"] == {"doses": 2, "levels": 1, "weight_kg": 82.0, "scr_mg_dl": 1.1, "include_record": True}
    after = (len(platform.store.observations(pid)), len(platform.store.medication_administrations(pid)))
    assert after == before  # entered values are not written into the record
    # more drug in the same hours, a higher predicted exposure of the current regimen's fit: the fit uses the entry
    more = client.post(f"/app/api/patient/{pid}/dosing/entered", headers=pharmacist,
                       json=_entered(levels=[{"time": _iso_ago(2.5), "value_mg_l": 23.0}])).json()  # fmt: skip
    assert more["parameters"] != body["parameters"]


def test_entered_rows_join_the_records_course(web: Any) -> None:
    client, _, names = web
    pid = names["Alberto Atencio"]  # two recorded levels (12.0, 9.5)
    pharmacist = _token(client, "pharm.diaz")
    r = client.post(f"/app/api/patient/{pid}/dosing/entered", headers=pharmacist,
                    json={"levels": [{"time": _iso_ago(0.5), "value_mg_l": 14.0}]})  # fmt: skip
    assert r.status_code == 200, r.text
    levels = r.json()["levels"]
    assert sorted((lv["source"], lv["value"]) for lv in levels) == [("entered", 14.0), ("record", 9.5),
                                                                     ("record", 12.0)]  # fmt: skip
    alone = client.post(f"/app/api/patient/{pid}/dosing/entered", headers=pharmacist,
                        json=_entered(include_record=False)).json()  # fmt: skip
    assert {lv["source"] for lv in alone["levels"]} == {"entered"}


@pytest.mark.parametrize(
    ("change", "where", "why"),
    [
        ({"doses": [{"time": "yesterday", "amount_mg": 1000}]}, "doses[0].time", "not an ISO 8601"),
        ({"doses": [{"time": "2026-12-01T08:00", "amount_mg": 1000}]}, "doses[0].time", "no time zone"),
        ({"doses": [{"time": "2999-01-01T08:00Z", "amount_mg": 1000}]}, "doses[0].time", "in the future"),
        ({"doses": [{"time": "2026-12-01T08:00Z", "amount_mg": 100000}]}, "doses[0].amount_mg", "plausible range"),
        ({"doses": [{"time": "2026-12-01T08:00Z", "amount_mg": "lots"}]}, "doses[0].amount_mg", "not a number"),
        (
            {"doses": [{"time": "2026-12-01T08:00Z", "amount_mg": 1000, "duration_h": -1}]},
            "doses[0].duration_h",
            "plausible range",
        ),
        ({"levels": [{"time": "2026-12-01T08:00Z", "value_mg_l": 0}]}, "levels[0].value_mg_l", "plausible range"),
        ({"levels": [{"time": "2026-12-01T08:00Z"}]}, "levels[0].value_mg_l", "number in mg/L is required"),
        ({"weight_kg": 8000}, "weight_kg", "plausible range"),
        ({"scr_mg_dl": 110}, "scr_mg_dl", "plausible range"),
        ({"drug": "aspirin"}, "drug", "no model in the library"),
        ({"doses": "1000 mg"}, "doses", "a list of rows"),
        ({"doses": [], "levels": [], "weight_kg": None, "scr_mg_dl": None}, "entry", "nothing entered"),
    ],
)
def test_entered_data_is_refused_row_by_row_and_nothing_is_stored(web: Any, change: dict[str, Any], where: str,
                                                                  why: str) -> None:  # fmt: skip
    client, platform, names = web
    pid = names["Chet Thompson"]
    pharmacist = _token(client, "pharm.diaz")
    stored = len(_proposals(platform.store, pid))
    r = client.post(f"/app/api/patient/{pid}/dosing/entered", json=_entered(**change), headers=pharmacist)
    assert r.status_code == 400, r.text
    issues = r.json()["issues"]
    assert [i["path"] for i in issues] == [where]
    assert why in issues[0]["problem"]
    p = client.post(f"/app/api/patient/{pid}/dosing/propose", json={"entered": _entered(**change)},
                    headers=pharmacist)  # fmt: skip
    assert p.status_code == 400
    assert len(_proposals(platform.store, pid)) == stored


def test_every_bad_row_is_named_at_once(web: Any) -> None:
    client, _, names = web
    bad = _entered(doses=[{"time": _iso_ago(3), "amount_mg": 1000}, {"time": "", "amount_mg": -5}])
    r = client.post(f"/app/api/patient/{names['Chet Thompson']}/dosing/entered", json=bad,
                    headers=_token(client, "pharm.diaz"))  # fmt: skip
    assert r.status_code == 400
    assert [i["path"] for i in r.json()["issues"]] == ["doses[1].time", "doses[1].amount_mg"]
    assert "nothing computed or stored" in r.json()["message"]


def test_an_entered_case_that_the_model_cannot_use_is_a_422(web: Any) -> None:
    client, _, names = web
    only_level = {"levels": [{"time": _iso_ago(1), "value_mg_l": 10}], "include_record": False}
    r = client.post(f"/app/api/patient/{names['Chet Thompson']}/dosing/entered", json=only_level,
                    headers=_token(client, "pharm.diaz"))  # fmt: skip
    assert r.status_code == 422
    assert "no vancomycin administration" in r.json()["message"]


def test_a_proposal_from_an_entered_case_is_stored_noted_and_audited(web: Any) -> None:
    client, platform, names = web
    pid = names["Chet Thompson"]
    doctor = _token(client, "dr.lee")  # a clinician outside the care relationship: not found without break-glass
    assert client.post(f"/app/api/patient/{pid}/dosing/entered", json=_entered(), headers=doctor).status_code == 404
    pharmacist = _token(client, "pharm.diaz")
    made = client.post(f"/app/api/patient/{pid}/dosing/propose", json={"interval_h": 12, "entered": _entered()},
                       headers=pharmacist)  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["from_entered"] is True
    stored = [m for m in _proposals(platform.store, pid) if m.request_id == made.json()["request_id"]]
    assert len(stored) == 1
    assert stored[0].interval_h == 12
    assert "from entered data: 2 dose(s), 1 level(s), weight, creatinine entered in the web app" in (
        stored[0].note or ""
    )
    platform.audit.flush()
    assert any(r.event.action == "create" and "from entered data" in (r.event.detail or "")
               for r in platform.audit.records(patient_id=pid))  # fmt: skip


@pytest.mark.parametrize(("user", "path", "status"), [
    ("res.olsen", "dosing/entered", 403),  # researchers get no identified screen
    ("nurse.kim", "dosing/propose", 403),  # nurses may not create MedicationRequests
    ("nurse.ali", "dosing/entered", 404),  # outside the nurse's ward
])  # fmt: skip
def test_entered_dosing_access(web: Any, user: str, path: str, status: int) -> None:
    client, _, names = web
    body = {"entered": _entered()} if path.endswith("propose") else _entered()
    r = client.post(f"/app/api/patient/{names['Alberto Atencio']}/{path}", json=body, headers=_token(client, user))
    assert r.status_code == status, r.text
    assert "Alberto" not in r.text


# -- admin: users, roles, care teams ----------------------------------------------------------------------------------
def test_admin_creates_a_user_who_signs_in_and_changes_their_access(web: Any) -> None:
    client, platform, _ = web
    admin = _token(client, "admin")
    made = client.post("/app/api/admin/users", headers=admin,
                       json={"username": "dr.new", "role": "clinician", "wards": "WARD-B, WARD-C"})  # fmt: skip
    assert made.status_code == 201, made.text
    body = made.json()
    assert (body["role"], body["wards"], body["teams"]) == ("clinician", ["WARD-B", "WARD-C"], [])
    initial = body["initial_password"]
    assert len(initial) >= 16
    with platform.store.engine.connect() as conn:
        stored = conn.execute(select(users.c.password_hash).where(users.c.username == "dr.new")).scalar_one()
    assert stored.startswith("$argon2id$")
    assert initial not in stored
    first = client.post("/oauth/token", data={"grant_type": "password", "username": "dr.new", "password": initial})
    assert first.status_code == 400  # an admin-made password must be changed by its user before any token
    assert "must be changed" in first.json()["error_description"]
    listed = {u["username"]: u for u in client.get("/app/api/admin/users", headers=admin).json()["users"]}
    assert listed["dr.new"]["password_change_required"] is True
    platform.accounts.change_password("dr.new", initial, "dr.new's own password")  # as the sign-in form does
    initial = "dr.new's own password"
    signin = client.post("/oauth/token", data={"grant_type": "password", "username": "dr.new", "password": initial})
    assert signin.status_code == 200
    assert client.get("/app/api/me", headers={"Authorization": "Bearer " + signin.json()["access_token"]}
                      ).json()["wards"] == ["WARD-B", "WARD-C"]  # fmt: skip
    changed = client.post("/app/api/admin/users/dr.new/access", headers=admin,
                          json={"role": "nurse", "teams": ["team-b"]})  # fmt: skip
    assert changed.status_code == 200, changed.text
    assert (changed.json()["role"], changed.json()["wards"], changed.json()["teams"]) == ("nurse", ["WARD-B", "WARD-C"],
                                                                                          ["team-b"])  # fmt: skip
    again = client.post("/oauth/token", data={"grant_type": "password", "username": "dr.new", "password": initial})
    assert client.get("/app/api/me", headers={"Authorization": "Bearer " + again.json()["access_token"]}
                      ).json()["role"] == "nurse"  # fmt: skip
    platform.audit.flush()
    trail = [r.event for r in platform.audit.records() if r.event.resource == f"User/{body['id']}"]
    assert [e.action for e in trail] == ["create", "update"]
    assert initial not in " ".join(e.detail or "" for e in trail)  # the password is never audited
    assert "role 'clinician' -> 'nurse'" in (trail[1].detail or "")


def test_admin_sets_a_password_and_bad_input_is_refused(web: Any) -> None:
    client, _, _ = web
    admin = _token(client, "admin")
    ok = client.post("/app/api/admin/users", headers=admin,
                     json={"username": "ph.set", "role": "pharmacist", "password": "a-long-password"})  # fmt: skip
    assert ok.status_code == 201
    assert "initial_password" not in ok.json()
    for body, status, words in [
        ({"username": "ph.set", "role": "pharmacist"}, 409, "already exists"),
        ({"username": "x1", "role": "surgeon"}, 400, "is not one of"),
        ({"username": "", "role": "nurse"}, 400, "username"),
        ({"username": "x2", "role": "nurse", "password": "short"}, 400, "at least 8"),
        ({"username": "x3", "role": "nurse", "wards": [""]}, 400, "wards[0]"),
        ({"username": "x4", "role": "nurse", "teams": 7}, 400, "teams"),
    ]:
        r = client.post("/app/api/admin/users", json=body, headers=admin)
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["message"], r.text
    assert client.post("/app/api/admin/users/nobody/access", json={"role": "nurse"}, headers=admin).status_code == 404
    assert client.post("/app/api/admin/users/ph.set/access", json={"role": "boss"}, headers=admin).status_code == 400
    assert client.post("/app/api/admin/users/ph.set/access", json={}, headers=admin).status_code == 400
    own = client.post("/app/api/admin/users/admin/access", json={"role": "nurse"}, headers=admin)
    assert own.status_code == 409
    assert "your own role" in own.json()["message"]
    names = {u["username"] for u in client.get("/app/api/admin/users", headers=admin).json()["users"]}
    assert not names & {"x1", "x2", "x3", "x4"}  # nothing made from a refused request


@pytest.mark.parametrize("user", ["dr.lee", "nurse.kim", "pharm.diaz", "res.olsen"])
def test_only_admins_manage_users(web: Any, user: str) -> None:
    client, _, _ = web
    who = _token(client, user)
    for path, body in [("/app/api/admin/users", {"username": f"sneak-{user}", "role": "admin", "password": "x" * 12}),
                       ("/app/api/admin/users/nurse.ali/access", {"role": "admin"})]:  # fmt: skip
        r = client.post(path, json=body, headers=who)
        assert r.status_code == 403, (path, r.text)
    assert client.post("/app/api/admin/users", json={"username": "anon", "role": "admin"}).status_code == 401
    admin = _token(client, "admin")
    users = {u["username"]: u for u in client.get("/app/api/admin/users", headers=admin).json()["users"]}
    assert f"sneak-{user}" not in users
    assert users["nurse.ali"]["role"] == "nurse"


# The new endpoints by role, from the rules as documented (docs/security.md "Policy", docs/web.md): the dosing panel
# is for the clinical roles within their reach (a nurse outside the ward: not found), a proposal needs
# MedicationRequest create (not nurses), researchers get no identified screen, user management is for admins only.
ACCESS = {  # user -> (entered case of Alberto (WARD-A), proposal from an entered case for Chet (no ward), users)
    "admin": (200, 201, 201),
    "dr.lee": (200, 404, 403),  # Chet is outside Dr Lee's wards and teams
    "nurse.kim": (200, 403, 403),
    "nurse.ali": (404, 403, 403),  # Alberto is on WARD-A, not nurse Ali's ward
    "pharm.diaz": (200, 201, 403),
    "res.olsen": (403, 403, 403),
}


@pytest.mark.parametrize("user", sorted(ACCESS))
def test_access_matrix_of_the_entered_dosing_and_user_endpoints(web: Any, user: str) -> None:
    client, _, names = web
    who = _token(client, user)
    got = (
        client.post(f"/app/api/patient/{names['Alberto Atencio']}/dosing/entered", json=_entered(), headers=who),
        client.post(f"/app/api/patient/{names['Chet Thompson']}/dosing/propose", json={"entered": _entered()},
                    headers=who),
        client.post("/app/api/admin/users", json={"username": f"m-{user}", "role": "nurse"}, headers=who),
    )  # fmt: skip
    assert tuple(r.status_code for r in got) == ACCESS[user], [r.text[:200] for r in got]
    for r in got:
        if r.status_code >= 400:
            assert "Alberto" not in r.text
            assert "Chet" not in r.text


def test_admin_resets_a_password_once_shown_sessions_end_and_the_audit_holds_no_password(web: Any) -> None:
    client, platform, _ = web
    admin = _token(client, "admin")
    made = client.post("/app/api/admin/users", json={"username": "nurse.reset", "role": "nurse",
                                                    "password": "first-password-1"}, headers=admin)  # fmt: skip
    assert made.status_code == 201, made.text
    platform.accounts.change_password("nurse.reset", "first-password-1", "own-password-1")  # the required change
    login = client.post("/oauth/token", data={"grant_type": "password", "username": "nurse.reset",
                                              "password": "own-password-1"})  # fmt: skip
    assert login.status_code == 200, login.text
    refresh = login.json()["refresh_token"]
    url = "/app/api/admin/users/nurse.reset/password"
    assert client.post(url, json={}).status_code == 401
    for who in ("pharm.diaz", "dr.lee", "nurse.kim", "res.olsen"):
        assert client.post(url, json={}, headers=_token(client, who)).status_code == 403, who
    assert client.post("/app/api/admin/users/nobody.here/password", json={}, headers=admin).status_code == 404
    assert client.post("/app/api/admin/users/admin/password", json={}, headers=admin).status_code == 409
    r = client.post(url, json={}, headers=admin)
    assert r.status_code == 200, r.text
    new_password = r.json()["new_password"]
    assert len(new_password) >= 16
    assert r.json()["sessions_ended"] == 1
    # the session opened before the reset cannot be refreshed; the old password no longer signs in; the new one does
    again = client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh})
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    old = client.post("/oauth/token", data={"grant_type": "password", "username": "nurse.reset",
                                            "password": "own-password-1"})  # fmt: skip
    assert old.status_code in (400, 401)
    assert "must be changed" not in old.text
    new = client.post("/oauth/token", data={"grant_type": "password", "username": "nurse.reset",
                                            "password": new_password})  # fmt: skip
    assert new.status_code == 400, new.text  # the reset password signs in only to be changed
    assert "must be changed" in new.json()["error_description"]
    assert r.json()["password_change_required"] is True
    listed = client.get("/app/api/admin/users", headers=admin).json()
    assert new_password not in json.dumps(listed)
    platform.audit.flush()
    user_id = r.json()["id"]
    records = list(platform.audit.records())
    resets = [
        x for x in records if x.event.resource == f"User/{user_id}" and "password reset" in (x.event.detail or "")
    ]
    assert len(resets) == 1
    assert all(new_password not in repr(x) for x in records)


# -- a user's own password ------------------------------------------------------------------------------------------
def _sign_in(client: TestClient, user: str, password: str) -> dict[str, str]:
    r = client.post("/oauth/token", data={"grant_type": "password", "username": user, "password": password})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_user_changes_their_own_password_and_their_other_sessions_end(web: Any) -> None:
    client, platform, _ = web
    platform.accounts.add_user("nurse.self", "my first password", "nurse", wards=["WARD-A"])
    here, elsewhere = _sign_in(client, "nurse.self", "my first password"), _sign_in(client, "nurse.self",
                                                                                     "my first password")  # fmt: skip
    me = {"Authorization": "Bearer " + here["access_token"]}
    assert client.get("/app/api/me", headers=me).json()["local_account"] is True
    url = "/app/api/me/password"
    assert client.post(url, json={"current_password": "my first password", "new_password": "x" * 12}).status_code == 401
    assert client.post(url, json={"new_password": "x" * 12}, headers=me).status_code == 400
    wrong = client.post(url, json={"current_password": "not my password", "new_password": "my second password"},
                        headers=me)  # fmt: skip
    assert (wrong.status_code, wrong.json()["error"]) == (403, "wrong-password")
    assert "current_password" in wrong.json()["message"]
    for new, words in [("short", "at least 8 characters are needed, this one has 5"),
                       ("y" * 257, "at most 256 characters"),
                       ("NURSE.SELF", "this is the user name"),
                       ("my first password", "the new password is the current one")]:  # fmt: skip
        r = client.post(url, json={"current_password": "my first password", "new_password": new}, headers=me)
        assert (r.status_code, r.json()["error"]) == (400, "password-policy"), r.text
        assert words in r.json()["message"]
        assert "no other rule" in r.json()["message"]
    assert _sign_in(client, "nurse.self", "my first password")  # nothing was changed by the refusals
    ok = client.post(url, json={"current_password": "my first password", "new_password": "my second password"},
                     headers=me)  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"changed": True, "other_sessions_ended": 2}  # elsewhere, and the check sign-in above
    assert client.get("/app/api/me", headers=me).status_code == 200  # this session goes on ...
    assert client.post("/oauth/token", data={"grant_type": "refresh_token",
                                             "refresh_token": here["refresh_token"]}).status_code == 200  # fmt: skip
    stolen = client.post("/oauth/token", data={"grant_type": "refresh_token",
                                               "refresh_token": elsewhere["refresh_token"]})  # fmt: skip
    assert stolen.status_code == 400
    assert "password changed" in stolen.json()["error_description"]
    deadline = time.monotonic() + 15  # the other session's access token is refused once revocations are re-read
    while (
        client.get("/app/api/me", headers={"Authorization": "Bearer " + elsewhere["access_token"]}).status_code != 401
    ):
        assert time.monotonic() < deadline, "the other session's access token is still accepted"
        time.sleep(0.2)
    old = client.post("/oauth/token", data={"grant_type": "password", "username": "nurse.self",
                                            "password": "my first password"})  # fmt: skip
    assert old.status_code == 400
    assert _sign_in(client, "nurse.self", "my second password")
    platform.audit.flush()
    user = platform.accounts.user("nurse.self")
    assert user is not None
    trail = [x.event for x in platform.audit.records() if x.event.resource == f"User/{user.user_id}"]
    assert [(e.action, e.outcome, e.actor) for e in trail] == [("update", "denied", user.user_id)] * 5 + [
        ("update", "success", user.user_id)]  # fmt: skip
    assert "wrong current password" in (trail[0].detail or "")
    assert "account page" in (trail[-1].detail or "")
    assert "2 other session(s) ended" in (trail[-1].detail or "")
    for record in platform.audit.records():
        for secret in ("my first password", "my second password", "not my password"):
            assert secret not in repr(record.event)


def test_a_sign_in_without_a_medtwin_password_has_none_to_change(web: Any) -> None:
    client, platform, _ = web
    from medtwin.security.scopes import parse_scopes
    from medtwin.security.tokens import TokenService

    ghost = platform.tokens.issue(TokenService.grant("no-such-user", "clinician", parse_scopes("user/*.rs"),
                                                     username="ghost"))  # fmt: skip
    r = client.post("/app/api/me/password", json={"current_password": "whatever1", "new_password": "whatever2"},
                    headers={"Authorization": "Bearer " + ghost["access_token"]})  # fmt: skip
    assert r.status_code == 409
    assert "identity provider" in r.json()["message"]


def test_an_admin_made_user_gets_no_token_until_the_change_and_then_it_is_cleared(web: Any) -> None:
    client, platform, _ = web
    admin = _token(client, "admin")
    made = client.post("/app/api/admin/users", headers=admin, json={"username": "ph.first", "role": "pharmacist"})
    initial = made.json()["initial_password"]
    assert made.json()["password_change_required"] is True
    refused = client.post("/oauth/token", data={"grant_type": "password", "username": "ph.first",
                                                "password": initial})  # fmt: skip
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
    assert "must be changed" in refused.json()["error_description"]
    platform.accounts.change_password("ph.first", initial, "pharmacy first own")
    listed = {u["username"]: u for u in client.get("/app/api/admin/users", headers=admin).json()["users"]}
    assert listed["ph.first"]["password_change_required"] is False
    assert _sign_in(client, "ph.first", "pharmacy first own")
    reset = client.post("/app/api/admin/users/ph.first/password", json={}, headers=admin)
    assert reset.json()["password_change_required"] is True  # a reset is forced to change again
    again = client.post("/oauth/token", data={"grant_type": "password", "username": "ph.first",
                                              "password": reset.json()["new_password"]})  # fmt: skip
    assert again.status_code == 400
    assert "must be changed" in again.json()["error_description"]
