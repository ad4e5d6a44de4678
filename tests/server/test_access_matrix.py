"""The access-control matrix: every endpoint x role x scope x care relationship x consent state.

The expected decision comes from :func:`expected`, an oracle written here from the policy as documented
(docs/security.md, "Policy"), independent of medtwin.security.policy's code. Each case asserts allowed or denied,
and that a denied answer carries no data of the patient (name, MRN, birth date, record ids): the leak count is 0.
A denied read of an existing patient is also compared with the read of a patient that does not exist: same status,
same body.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from medtwin.records import new_id

from .conftest import Api, Seeded, consent, make_api, seed_patient, store_consent

ROLES = ("admin", "clinician", "nurse", "pharmacist", "researcher", "device")
SCOPES = ("broad", "other-type", "patient-context")
CARE = ("in-care", "outside")
CONSENTS = ("none", "privacy-deny", "research-opt-out")
PRIVACY_DENIED_ROLES = ("clinician", "nurse", "pharmacist", "device")

# What each role may do, as docs/security.md states it (letters of cruds; "*" any other type).
ROLE_TABLE: dict[str, dict[str, str]] = {
    "admin": {"*": "cruds"},
    "clinician": {
        "*": "rs",
        "Patient": "crus",
        "Observation": "crus",
        "Condition": "crus",
        "Encounter": "crus",
        "MedicationRequest": "crus",
        "Consent": "crus",
        "Flag": "rus",
    },
    "nurse": {"*": "rs", "Observation": "crs", "MedicationAdministration": "crus", "Flag": "rus", "Consent": ""},
    "pharmacist": {
        "Patient": "rs",
        "Observation": "rs",
        "Condition": "rs",
        "Encounter": "rs",
        "MedicationAdministration": "rs",
        "Flag": "rs",
        "DetectedIssue": "rs",
        "MedicationRequest": "crus",
    },
    "researcher": {
        "Patient": "rs",
        "Observation": "rs",
        "Encounter": "rs",
        "Condition": "rs",
        "MedicationRequest": "rs",
        "MedicationAdministration": "rs",
    },
    "device": {"Observation": "c"},
}
CARE_BOUND = ("clinician", "nurse")  # reach only the patients of their care teams and wards


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # {pid}, {oid}, {aid}, {enc}, {cond}, {mr} are filled in
    resource: str
    action: str
    kind: str  # "read" (404 when denied), "search" (empty when denied), "write", "app" (the web app's screens)


ENDPOINTS = (
    Endpoint("fhir-patient-read", "GET", "/fhir/Patient/{pid}", "Patient", "r", "read"),
    Endpoint("fhir-observation-search", "GET", "/fhir/Observation?patient={pid}", "Observation", "s", "search"),
    Endpoint("fhir-observation-read", "GET", "/fhir/Observation/{oid}", "Observation", "r", "read"),
    Endpoint("fhir-encounter-search", "GET", "/fhir/Encounter?patient={pid}", "Encounter", "s", "search"),
    Endpoint("fhir-condition-search", "GET", "/fhir/Condition?patient={pid}", "Condition", "s", "search"),
    Endpoint("fhir-medreq-search", "GET", "/fhir/MedicationRequest?patient={pid}", "MedicationRequest", "s", "search"),
    Endpoint("fhir-flag-search", "GET", "/fhir/Flag?patient={pid}", "Flag", "s", "search"),
    Endpoint("api-patient", "GET", "/api/patients/{pid}", "Patient", "r", "read"),
    Endpoint("api-twin", "GET", "/api/patients/{pid}/twin", "Observation", "r", "read"),
    Endpoint("api-alerts", "GET", "/api/alerts?status=all&patient={pid}", "Flag", "s", "alerts"),
    Endpoint("api-alert-ack", "POST", "/api/alerts/{aid}/acknowledge", "Flag", "u", "read"),
    Endpoint("fhir-observation-create", "POST", "/fhir/Observation", "Observation", "c", "write"),
    Endpoint("fhir-encounter-read", "GET", "/fhir/Encounter/{enc}", "Encounter", "r", "read"),
    Endpoint("fhir-condition-read", "GET", "/fhir/Condition/{cond}", "Condition", "r", "read"),
    Endpoint("fhir-medreq-read", "GET", "/fhir/MedicationRequest/{mr}", "MedicationRequest", "r", "read"),
    Endpoint("fhir-flag-read", "GET", "/fhir/Flag/{aid}", "Flag", "r", "read"),
    Endpoint("api-alert-resolve", "POST", "/api/alerts/{aid}/resolve", "Flag", "u", "read"),
    # the web app's screens (medtwin.server.web.api): identified data for the clinical roles only; an answer past
    # the access check (200, or 400/404 about what this patient lacks) counts as allowed
    Endpoint("app-ward-row", "GET", "/app/api/ward/row/{pid}", "Observation", "r", "app"),
    Endpoint("app-patient", "GET", "/app/api/patient/{pid}", "Patient", "r", "app"),
    Endpoint("app-glucose", "GET", "/app/api/patient/{pid}/glucose", "Observation", "s", "app"),
    Endpoint("app-glucose-whatif", "POST", "/app/api/patient/{pid}/glucose/whatif", "Observation", "r", "app"),
    Endpoint("app-dosing", "GET", "/app/api/patient/{pid}/dosing", "MedicationAdministration", "s", "app"),
    Endpoint(
        "app-dosing-entered", "POST", "/app/api/patient/{pid}/dosing/entered", "MedicationAdministration", "s", "app"
    ),
    Endpoint("app-dosing-propose", "POST", "/app/api/patient/{pid}/dosing/propose", "MedicationRequest", "c", "app"),
)
CLINICAL_ROLES = ("admin", "clinician", "nurse", "pharmacist")  # the web app shows identified data to these only

# Routes that take a patient or record id and are not in ENDPOINTS, with where their access is tested instead.
ELSEWHERE = {
    "DELETE /fhir/Patient/{patient_id}": "admin-only erasure: tests/server/test_fhir_facade.py",
    "GET /fhir/MedicationAdministration/{resource_id}": "the same read route as the FHIR reads above (_read_route)",
    "GET /fhir/DetectedIssue/{resource_id}": "the same read route as the FHIR reads above (_read_route)",
    "GET /fhir/Consent/{resource_id}": "the same read route as the FHIR reads above (_read_route)",
    "POST /fhir/{resource_type}": "creation: fhir-observation-create above, the types in test_fhir_facade.py",
    "POST /app/api/admin/users/{username}/access": "admin only: tests/web/test_web_api.py",
    "POST /app/api/admin/users/{username}/disabled": "admin only: tests/web/test_web_api.py",
    "POST /app/api/admin/users/{username}/password": "admin only: tests/web/test_web_api.py",
    "GET /app/patient/{patient_id}": "a page shell without data (tests/web/test_web_api.py)",
    "GET /app/static/{name}": "static files",
    "GET /app/{page}": "page shells without data",
}


def scope_text(role: str, variant: str) -> str:
    context = "system" if role == "device" else "user"
    if variant == "broad":
        return f"{context}/*.cruds"
    if variant == "other-type":
        return f"{context}/Encounter.rs"
    return "launch/patient patient/*.cruds"


def expected(role: str, variant: str, ep: Endpoint, care: str, consent_state: str, token_patient: bool) -> bool:
    """The oracle: is this request allowed?"""
    table = ROLE_TABLE[role]
    if ep.kind == "app" and role not in CLINICAL_ROLES:
        return False
    if ep.action not in table.get(ep.resource, table.get("*", "")):
        return False
    if variant == "other-type" and not (ep.resource == "Encounter" and ep.action in "rs"):
        return False
    if variant == "patient-context" and not token_patient:
        return False
    if role in CARE_BOUND and care == "outside":
        return False
    if ep.name == "api-twin" and role == "researcher":  # the live twin state is not de-identified
        return False
    if consent_state == "privacy-deny" and role in PRIVACY_DENIED_ROLES:
        return False
    return not (consent_state == "research-opt-out" and role == "researcher")


@dataclass
class World:
    api: Api
    patients: dict[tuple[str, str], Seeded]  # (care, consent) -> patient


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("matrix")
    api = make_api(f"sqlite:///{tmp / 'matrix.db'}", tmp)
    patients: dict[tuple[str, str], Seeded] = {}
    for i, (care, state) in enumerate(itertools.product(CARE, CONSENTS)):
        key = f"{care}-{state}"
        # in care: half through the care team, half through the ward
        ward = "WARD-A" if care == "in-care" and i % 2 else "WARD-Z"
        seeded = seed_patient(api.store, key, ward=ward, index=i)
        if care == "in-care" and not i % 2:
            api.platform.accounts.assign("team-a", seeded.patient_id)
        if state == "privacy-deny":
            store_consent(api.store, consent(seeded.patient_id, "patient-privacy", PRIVACY_DENIED_ROLES))
        elif state == "research-opt-out":
            store_consent(api.store, consent(seeded.patient_id, "research"))
        patients[(care, state)] = seeded
    try:
        yield World(api, patients)
    finally:
        api.close()


def _observation(pid: str) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": new_id(),
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": "2026-11-02T10:00:00Z",
            "valueQuantity": {"value": 90, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        }
    )


def _call(world: World, ep: Endpoint, token: str, seeded: Seeded) -> Any:
    key = seeded.observation_id.removeprefix("obs-")  # seed_patient's ids: enc-KEY, cond-KEY, mr-KEY
    path = ep.path.format(
        pid=seeded.patient_id, oid=seeded.observation_id, aid=seeded.alert_id, enc=f"enc-{key}", cond=f"cond-{key}",
        mr=f"mr-{key}",
    )  # fmt: skip
    headers = world.api.headers(token)
    if ep.method == "POST" and ep.kind == "write":
        return world.api.client.post(path, content=_observation(seeded.patient_id), headers=headers)
    if ep.method == "POST" and ep.kind == "app":
        return world.api.client.post(path, json={}, headers=headers)
    return world.api.client.request(ep.method, path, headers=headers)


def _allowed(ep: Endpoint, response: Any, seeded: Seeded) -> bool:
    if ep.kind == "app":
        if response.status_code == 403:
            return False
        assert response.status_code in (200, 400, 404), (ep.name, response.status_code, response.text)
        return "not found (or you may not see it)" not in str(response.json().get("message", ""))
    if response.status_code in (403, 404):
        return False
    assert response.status_code in (200, 201), (ep.name, response.status_code, response.text)
    body = response.json()
    if ep.kind == "search":
        return int(body["total"]) > 0
    if ep.kind == "alerts":
        return bool(body["alerts"])
    return True


CASES = list(itertools.product(ROLES, SCOPES, CARE, CONSENTS))


@pytest.mark.parametrize(("role", "variant", "care", "consent_state"), CASES)
def test_access_matrix(world: World, role: str, variant: str, care: str, consent_state: str) -> None:
    seeded = world.patients[(care, consent_state)]
    context = world.patients[("in-care", "none")].patient_id  # the launch patient of patient-context tokens
    token = world.api.token(
        role,
        scope_text(role, variant),
        teams=("team-a",),
        wards=("WARD-A",),
        patient=context if variant == "patient-context" else None,
    )
    leaks: list[str] = []
    wrong: list[str] = []
    for ep in ENDPOINTS:
        stored = len(world.api.store.observations(seeded.patient_id))
        response = _call(world, ep, token, seeded)
        allowed = _allowed(ep, response, seeded)
        if ep.kind == "write" and not allowed:
            assert len(world.api.store.observations(seeded.patient_id)) == stored, "a denied write stored data"
        want = expected(role, variant, ep, care, consent_state, seeded.patient_id == context)
        if allowed != want:
            wrong.append(
                f"{ep.name}: allowed={allowed}, expected {want} ({response.status_code} {response.text[:200]})"
            )
        if not allowed:
            text = response.text
            leaks.extend(f"{ep.name}: {s!r}" for s in seeded.secrets if s in text)
            if ep.kind in ("read", "app"):
                gone = _missing(seeded)
                missing = _call(world, ep, token, gone)
                same_missing = (missing.status_code, _normalised(missing.text, gone))
                same_denied = (response.status_code, _normalised(text, seeded))
                if same_missing != same_denied:
                    leaks.append(f"{ep.name}: denied and missing answers differ: {text} / {missing.text}")
        elif role == "researcher" and ep.kind in ("read", "search") and ep.resource == "Patient":
            leaks.extend(f"{ep.name} (researcher): {s!r}" for s in seeded.secrets[:3] if s in response.text)
    assert wrong == [], "\n".join(wrong)
    assert leaks == [], "patient data leaked:\n" + "\n".join(leaks)


def _missing(seeded: Seeded) -> Seeded:
    return Seeded("pt-" + "0" * 16, "X Y", "none", "none", "obs-missing", "alert-missing")


def _normalised(text: str, seeded: Seeded) -> str:
    key = seeded.observation_id.removeprefix("obs-")
    for i in (seeded.patient_id, seeded.observation_id, seeded.alert_id, f"enc-{key}", f"cond-{key}", f"mr-{key}"):
        text = text.replace(i, "ID")
    return text


def test_every_route_with_a_patient_or_record_id_is_in_the_matrix_or_tested_elsewhere() -> None:
    """A new endpoint that takes an id cannot ship without its access rules tested (here or where ELSEWHERE says)."""
    from medtwin.server import fhir_api, oauth, rest, stream
    from medtwin.server.web import api, pages

    in_matrix = {(ep.method, ep.path.split("?")[0]) for ep in ENDPOINTS}
    placeholders = {"{pid}": "{patient_id}", "{oid}": "{resource_id}", "{enc}": "{resource_id}",
                    "{cond}": "{resource_id}", "{mr}": "{resource_id}"}  # fmt: skip
    covered = set()
    for method, path in in_matrix:
        for short, name in placeholders.items():
            path = path.replace(short, name)
        covered.add(f"{method} {path.replace('{aid}', '{alert_id}')}")
        covered.add(f"{method} {path.replace('{aid}', '{resource_id}')}")
    routes = {
        f"{method} {route.path}"
        for module in (rest, fhir_api, oauth, stream, api, pages)
        for route in module.router.routes
        if "{" in route.path
        for method in route.methods - {"HEAD"}
    }
    untested = sorted(routes - covered - set(ELSEWHERE))
    assert untested == [], f"routes taking an id with no access test: {untested}"
    assert sorted(set(ELSEWHERE) - routes) == [], "ELSEWHERE names routes that no longer exist"


def test_break_glass_opens_a_patient_outside_care_and_is_audited_for_review(world: World) -> None:
    seeded = world.patients[("outside", "privacy-deny")]
    token = world.api.token("clinician", teams=("team-a",), subject="dr-glass")
    url = f"/fhir/Patient/{seeded.patient_id}"
    assert world.api.client.get(url, headers=world.api.headers(token)).status_code == 404
    opened = world.api.client.get(url, headers=world.api.headers(token, **{"X-Break-Glass-Reason": "cardiac arrest"}))
    assert opened.status_code == 200
    assert opened.json()["id"] == seeded.patient_id
    nurse = world.api.token("nurse", subject="nurse-glass")
    refused = world.api.client.get(url, headers=world.api.headers(nurse, **{"X-Break-Glass-Reason": "curious"}))
    assert refused.status_code == 404  # break-glass is for clinicians
    world.api.platform.audit.flush()  # type: ignore[union-attr]
    review = world.api.platform.audit.review()  # type: ignore[union-attr]
    glass = [r.event for r in review if r.event.actor == "dr-glass"]
    assert glass
    assert glass[-1].action == "break-glass"
    assert glass[-1].purpose == "cardiac arrest"
    assert glass[-1].patient_id == seeded.patient_id


def test_every_request_of_patient_data_is_audited(world: World, tmp_path: Path) -> None:
    audit = world.api.platform.audit
    assert audit is not None
    before = audit.count()
    seeded = world.patients[("in-care", "none")]
    token = world.api.token("clinician", teams=("team-a",), subject="dr-audit")
    h = world.api.headers(token)
    world.api.client.get(f"/fhir/Patient/{seeded.patient_id}", headers=h)
    world.api.client.get(f"/fhir/Observation?patient={seeded.patient_id}", headers=h)
    world.api.client.get("/fhir/Patient/pt-outside-none-nope", headers=h)
    world.api.client.get("/fhir/Patient/x", headers={"Authorization": "Bearer nonsense"})
    audit.flush()
    events = [r.event for r in audit.records(after=before)]
    assert [(e.action, e.outcome) for e in events] == [
        ("read", "success"),
        ("search", "success"),
        ("denied", "denied"),
        ("denied", "denied"),
    ]
    assert events[0].patient_id == seeded.patient_id
    assert events[0].actor == "dr-audit"
    assert events[3].actor == "anonymous"
    assert audit.verify().ok
