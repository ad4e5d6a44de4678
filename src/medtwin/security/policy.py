"""Authorization: SMART scopes intersected with roles, the care relationship, consent and break-glass.

A request is allowed when all of these hold (docs/security.md, "Policy"):

1. the caller's role permits the interaction on the resource type (:data:`ROLE_PERMISSIONS`) and one of the token's
   scopes grants it (:mod:`medtwin.security.scopes`); a grant by ``patient/`` scopes alone is limited to the
   token's launch patient;
2. the caller reaches the patient (:data:`REACH`): admins, pharmacists and devices every patient; clinicians and
   nurses the patients of their care teams and of their wards (the unit of the patient's open encounter);
   researchers every patient who has not opted out of research, de-identified;
3. no active FHIR Consent of the patient denies it (:mod:`medtwin.security.consent`).

Break-glass: a clinician who states a reason reaches a patient outside their care relationship, and past a
patient-privacy consent deny: always allowed, always audited (action ``break-glass``) and flagged for review.
The role and scope part of a decision depends on the token only and is computed once per token; what the policy
knows about a patient (care teams, ward, consents) is cached for ``ttl_s`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from medtwin.security.consent import ConsentRequest, consent_decision
from medtwin.security.principal import Principal

__all__ = ["PATIENT_TYPES", "REACH", "ROLE_PERMISSIONS", "Access", "PatientFacts", "Policy"]

PATIENT_TYPES = (
    "Patient",
    "Observation",
    "Encounter",
    "Condition",
    "MedicationRequest",
    "MedicationAdministration",
    "Flag",
    "DetectedIssue",
    "Consent",
)
"""The resource types of a patient's compartment that the API serves."""

ROLE_PERMISSIONS: Mapping[str, Mapping[str, str]] = {
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
        "Flag": "rs",
        "MedicationRequest": "crus",
        "MedicationAdministration": "rs",
        "DetectedIssue": "rs",
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
"""What each role may do (letters of ``cruds``) per resource type; ``*`` is any type not listed."""

REACH: Mapping[str, str] = {
    "admin": "all",
    "clinician": "care",
    "nurse": "care",
    "pharmacist": "all",
    "researcher": "research",
    "device": "all",
}
"""Which patients each role reaches: ``all``, ``care`` (care teams and wards), ``research`` (de-identified, minus
research opt-outs)."""


@dataclass(frozen=True, slots=True)
class Access:
    """A decision about one patient: *allowed*, why (*reason*, for the audit record, never for the caller), whether
    it was a *break_glass* access and whether the caller sees the data *deidentified*."""

    allowed: bool
    reason: str
    break_glass: bool = False
    deidentify: bool = False


class PatientFacts(Protocol):
    """What the policy reads about a patient (the server reads it from the store)."""

    def care_of(self, patient_id: str) -> tuple[frozenset[str], str | None]:
        """The patient's care teams and current ward (None: not on a ward)."""
        ...

    def consents(self, patient_id: str) -> Sequence[Mapping[str, Any]]:
        """The patient's FHIR Consent resources."""
        ...


def role_permits(role: str, resource: str, action: str) -> bool:
    """True when *role* may do *action* (a letter of ``cruds``) on *resource*."""
    table = ROLE_PERMISSIONS.get(role)
    if table is None:
        return False
    perms = table.get(resource, table.get("*", ""))
    return action in perms


class Policy:
    """Decides requests against *facts* about patients (cached *ttl_s* seconds per patient)."""

    def __init__(self, facts: PatientFacts, *, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.facts = facts
        self.ttl_s = ttl_s
        self.clock = clock
        self._care: dict[str, tuple[float, tuple[frozenset[str], str | None]]] = {}
        self._consents: dict[str, tuple[float, Sequence[Mapping[str, Any]]]] = {}
        self._lock = threading.Lock()

    def may(self, principal: Principal, resource: str, action: str) -> bool:
        """Role and scopes: may *principal* do *action* on *resource* at all (for some patient)? Memoized."""
        key = (resource, action)
        found = principal.decisions.get(key)
        if found is None:
            found = role_permits(principal.role, resource, action) and principal.scopes.permits(resource, action)
            principal.decisions[key] = found
        return found

    def invalidate(self, patient_id: str | None = None) -> None:
        """Forget what is cached about *patient_id* (every patient when None): after a write of their consents."""
        with self._lock:
            if patient_id is None:
                self._care.clear()
                self._consents.clear()
            else:
                self._care.pop(patient_id, None)
                self._consents.pop(patient_id, None)

    def _cached_care(self, patient_id: str) -> tuple[frozenset[str], str | None]:
        now = self.clock()
        hit = self._care.get(patient_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = self.facts.care_of(patient_id)
        with self._lock:
            self._care[patient_id] = (now, value)
        return value

    def _cached_consents(self, patient_id: str) -> Sequence[Mapping[str, Any]]:
        now = self.clock()
        hit = self._consents.get(patient_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = self.facts.consents(patient_id)
        with self._lock:
            self._consents[patient_id] = (now, value)
        return value

    def in_care(self, principal: Principal, patient_id: str) -> bool:
        """True when *patient_id* is in one of *principal*'s care teams or on one of their wards."""
        teams, ward = self._cached_care(patient_id)
        return bool(teams & principal.teams) or (ward is not None and ward in principal.wards)

    def patient_access(
        self,
        principal: Principal,
        patient_id: str,
        resource: str,
        action: str,
        *,
        at: datetime,
        break_glass: str | None = None,
    ) -> Access:
        """The decision for *principal* doing *action* on *resource* of patient *patient_id* at time *at*."""
        if not self.may(principal, resource, action):
            return Access(False, f"role {principal.role} or the token's scopes do not permit {resource}.{action}")
        contexts = principal.scopes.contexts_for(resource, action)
        if contexts == {"patient"} and principal.patient != patient_id:
            return Access(False, "patient-context scope for another patient")
        reach = REACH.get(principal.role, "none")
        glass = False
        if reach == "care" and not self.in_care(principal, patient_id):
            if principal.role == "clinician" and break_glass:
                glass = True
            else:
                return Access(False, "patient outside the caller's care teams and wards")
        elif reach not in ("all", "care", "research"):
            return Access(False, f"role {principal.role} reaches no patient")
        purpose = "research" if reach == "research" else "care"
        consents = self._cached_consents(patient_id)
        if consents:
            request = ConsentRequest(principal.actor_ids, principal.role, action, resource, at, purpose)
            if consent_decision(consents, request) == "deny":
                if purpose == "care" and principal.role == "clinician" and break_glass:
                    glass = True
                else:
                    return Access(False, f"denied by the patient's consent ({purpose})")
        reason = f"break-glass: {break_glass}" if glass else "permitted"
        return Access(True, reason, break_glass=glass, deidentify=reach == "research")
