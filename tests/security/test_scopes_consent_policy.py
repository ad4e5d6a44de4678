"""SMART v2 scopes, FHIR Consent evaluation and the policy's decisions, on their own (no server)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from medtwin.errors import ValidationError
from medtwin.security.consent import ConsentRequest, consent_decision, is_research_opt_out
from medtwin.security.policy import Policy, role_permits
from medtwin.security.principal import Principal
from medtwin.security.scopes import parse_scope, parse_scopes

AT = datetime(2026, 12, 7, 9, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"


def test_scope_syntax_v2_and_v1() -> None:
    s = parse_scope("patient/Observation.rs")
    assert s is not None
    assert s.context == "patient"
    assert s.actions == {"r", "s"}
    assert parse_scope("user/*.cruds") is not None
    assert parse_scope("user/*.cruds").actions == set("cruds")
    assert parse_scope("system/Observation.c").actions == {"c"}  # type: ignore[union-attr]
    assert parse_scope("patient/Observation.read").actions == {"r", "s"}  # type: ignore[union-attr]
    assert parse_scope("user/Patient.write").actions == {"c", "u", "d"}  # type: ignore[union-attr]
    assert parse_scope("openid") is None
    assert parse_scope("launch/patient") is None
    assert parse_scope("patient/Observation.rs?category=vital-signs") is None  # granular: never widened


@pytest.mark.parametrize(
    "bad", ["patient/Observation.sr", "doctor/*.r", "user/Observation.x", "user/Obs.rr", "patient/Observation"]
)
def test_malformed_scopes_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValidationError, match=r"scope"):
        parse_scope(bad)


def test_scope_sets_permit_and_narrow() -> None:
    scopes = parse_scopes("openid patient/Observation.rs user/Encounter.r")
    assert scopes.permits("Observation", "s")
    assert not scopes.permits("Observation", "c")
    assert scopes.contexts_for("Observation", "r") == {"patient"}
    assert not scopes.permits("Patient", "r")
    allowed = parse_scopes("system/Observation.crs")
    assert parse_scopes("system/Observation.c system/Patient.r").narrowed_to(allowed).text() == "system/Observation.c"


def _consent(provision: dict[str, Any], scope: str = "patient-privacy", status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": scope}]},
        "provision": provision,
    }


def _req(
    role: str = "nurse",
    action: str = "r",
    resource: str = "Observation",
    actor: str = "Practitioner/u1",
    purpose: str = "care",
) -> ConsentRequest:
    return ConsentRequest(frozenset({actor}), role, action, resource, AT, purpose)


def test_the_r4_example_not_them_denies_that_practitioner_only() -> None:
    example = json.loads((EXAMPLES / "consent-example-notThem.json").read_text())
    assert consent_decision([example], _req(actor="Practitioner/f204")) == "deny"
    assert consent_decision([example], _req(actor="Practitioner/f001")) is None
    assert consent_decision([example], _req(actor="Practitioner/f204", action="c")) == "deny"  # correct


def test_provisions_by_role_class_period_and_nesting() -> None:
    by_role = _consent(
        {"type": "deny", "actor": [{"role": {"coding": [{"system": "urn:medtwin:role", "code": "pharmacist"}]}}]}
    )
    assert consent_decision([by_role], _req(role="pharmacist")) == "deny"
    assert consent_decision([by_role], _req(role="nurse")) is None
    by_class = _consent(
        {"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]}
    )
    assert consent_decision([by_class], _req(resource="Condition")) == "deny"
    assert consent_decision([by_class], _req(resource="Observation")) is None
    expired = _consent({"type": "deny", "period": {"start": "2020-01-01", "end": "2021-01-01"}})
    assert consent_decision([expired], _req()) is None
    nested = _consent({"type": "deny", "provision": [{"type": "permit", "class": [{"code": "Observation"}]}]})
    assert consent_decision([nested], _req(resource="Observation")) == "permit"
    assert consent_decision([nested], _req(resource="Condition")) == "deny"
    assert consent_decision([_consent({"type": "deny"}, status="inactive")], _req()) is None
    assert consent_decision([nested, by_class], _req(resource="Condition")) == "deny"  # a deny wins


def test_research_opt_out_is_for_research_only() -> None:
    opt_out = _consent({"type": "deny"}, scope="research")
    assert is_research_opt_out([opt_out], AT)
    assert consent_decision([opt_out], _req(role="clinician")) is None
    assert consent_decision([opt_out], _req(role="researcher", purpose="research")) == "deny"


class Facts:
    def __init__(self) -> None:
        self.teams: dict[str, frozenset[str]] = {"p-team": frozenset({"t1"})}
        self.wards: dict[str, str] = {"p-ward": "W1"}
        self.consent: dict[str, list[dict[str, Any]]] = {}
        self.reads = 0

    def care_of(self, patient_id: str) -> tuple[frozenset[str], str | None]:
        self.reads += 1
        return self.teams.get(patient_id, frozenset()), self.wards.get(patient_id)

    def consents(self, patient_id: str) -> Sequence[Mapping[str, Any]]:
        return self.consent.get(patient_id, [])


def _who(role: str, scope: str = "user/*.cruds", **kw: Any) -> Principal:
    return Principal(subject=f"u-{role}", role=role, scopes=parse_scopes(scope), **kw)


def test_policy_care_relationship_break_glass_and_caching() -> None:
    facts = Facts()
    policy = Policy(facts, ttl_s=60, clock=lambda: 0.0)
    nurse = _who("nurse", teams=frozenset({"t1"}), wards=frozenset({"W9"}))
    assert policy.patient_access(nurse, "p-team", "Observation", "r", at=AT).allowed
    assert not policy.patient_access(nurse, "p-ward", "Observation", "r", at=AT).allowed
    ward_nurse = _who("nurse", wards=frozenset({"W1"}))
    assert policy.patient_access(ward_nurse, "p-ward", "Observation", "r", at=AT).allowed
    doc = _who("clinician")
    assert not policy.patient_access(doc, "p-ward", "Patient", "r", at=AT).allowed
    glass = policy.patient_access(doc, "p-ward", "Patient", "r", at=AT, break_glass="arrest")
    assert glass.allowed
    assert glass.break_glass
    assert not policy.patient_access(nurse, "p-ward", "Patient", "r", at=AT, break_glass="x").allowed
    reads = facts.reads
    policy.patient_access(ward_nurse, "p-ward", "Observation", "r", at=AT)
    assert facts.reads == reads  # cached


def test_policy_scopes_intersect_roles() -> None:
    policy = Policy(Facts())
    assert role_permits("device", "Observation", "c")
    assert not role_permits("device", "Observation", "r")
    device = _who("device", "system/*.cruds")
    assert policy.patient_access(device, "any", "Observation", "c", at=AT).allowed
    assert not policy.patient_access(device, "any", "Patient", "r", at=AT).allowed
    admin_narrow = _who("admin", "user/Encounter.rs")
    assert not policy.patient_access(admin_narrow, "any", "Patient", "r", at=AT).allowed
    launched = _who("admin", "patient/*.rs", patient="p1")
    assert policy.patient_access(launched, "p1", "Observation", "s", at=AT).allowed
    assert not policy.patient_access(launched, "p2", "Observation", "s", at=AT).allowed
    researcher = _who("researcher")
    decision = policy.patient_access(researcher, "any", "Observation", "r", at=AT)
    assert decision.allowed
    assert decision.deidentify
    assert not policy.patient_access(researcher, "any", "Observation", "c", at=AT).allowed
