"""FHIR R4 Consent enforcement: permit/deny provisions by actor, role, action, data class and period.

A consent applies to the request's purpose through ``Consent.scope``: ``research`` consents govern the researcher
role (a ``deny`` there is the patient's research opt-out); ``patient-privacy`` and ``treatment`` consents govern
every role. Only ``status = active`` consents count. A provision matches a request when each of its restrictions
that is present matches: ``period`` contains the time, some ``actor`` names the caller (its ``reference`` is
``Practitioner/<user>``, ``Device/<client>`` ... with the caller's id, or its ``role`` has a coding with system
:data:`ROLE_SYSTEM` and the caller's role as code), some ``action`` coding is one the request performs (read and
search are ``access``/``use``/``disclose``; create, update and delete are ``collect``/``correct``), some ``class``
coding is the FHIR resource type. The decision of a matching provision is its ``type`` (a root provision without
one is a ``deny``: such consents record a restriction, as the R4 example ``consent-example-notThem`` does), and a
matching nested provision overrides its parent (the most specific rule wins). Across consents a deny wins.
See docs/security.md ("Consent").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medtwin.errors import ValidationError
from medtwin.interop.fhir import parse_datetime

__all__ = ["ROLE_SYSTEM", "ConsentRequest", "consent_decision", "is_research_opt_out"]

ROLE_SYSTEM = "urn:medtwin:role"
"""The code system of medtwin's roles in ``Consent.provision.actor.role`` (codes: admin, clinician, nurse...)."""

_READ_ACTIONS = frozenset(("access", "use", "disclose"))
_WRITE_ACTIONS = frozenset(("collect", "correct"))
_PURPOSE_SCOPES = {"research": frozenset(("research",)), "care": frozenset(("patient-privacy", "treatment"))}


@dataclass(frozen=True, slots=True)
class ConsentRequest:
    """What a consent is asked about: who (*actor_ids*: ``Practitioner/u1``-style references of the caller), with
    which *role*, doing *action* (one of ``cruds``) on *resource* (a FHIR type) at *at*, for *purpose*
    (``care`` or ``research``)."""

    actor_ids: frozenset[str]
    role: str
    action: str
    resource: str
    at: datetime
    purpose: str = "care"


def _codes(concepts: Any) -> set[str]:
    out: set[str] = set()
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        if isinstance(concept, Mapping):
            for coding in concept.get("coding", []) if isinstance(concept.get("coding"), list) else []:
                if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                    out.add(coding["code"])
    return out


def _in_period(period: Any, at: datetime) -> bool:
    if not isinstance(period, Mapping):
        return True
    try:
        start = parse_datetime(period["start"], where="Consent.provision.period.start") if "start" in period else None
        end = parse_datetime(period["end"], where="Consent.provision.period.end") if "end" in period else None
    except ValidationError:  # an unreadable period: the provision is not applied (structure validation refuses it)
        return False
    return (start is None or start <= at) and (end is None or at <= end)


def _actor_matches(actors: Any, request: ConsentRequest) -> bool:
    if not isinstance(actors, list) or not actors:
        return True
    for actor in actors:
        if not isinstance(actor, Mapping):
            continue
        ref = actor.get("reference")
        if isinstance(ref, Mapping) and ref.get("reference") in request.actor_ids:
            return True
        role = actor.get("role")
        if isinstance(role, Mapping):
            for coding in role.get("coding", []) if isinstance(role.get("coding"), list) else []:
                if (
                    isinstance(coding, Mapping)
                    and coding.get("system") == ROLE_SYSTEM
                    and coding.get("code") == request.role
                ):
                    return True
    return False


def _action_matches(actions: Any, request: ConsentRequest) -> bool:
    if not isinstance(actions, list) or not actions:
        return True
    wanted = _READ_ACTIONS if request.action in "rs" else _WRITE_ACTIONS
    return bool(_codes(actions) & wanted)


def _class_matches(classes: Any, request: ConsentRequest) -> bool:
    if not isinstance(classes, list) or not classes:
        return True
    return any(isinstance(c, Mapping) and c.get("code") == request.resource for c in classes)


def _matches(provision: Mapping[str, Any], request: ConsentRequest) -> bool:
    return (
        _in_period(provision.get("period"), request.at)
        and _actor_matches(provision.get("actor"), request)
        and _action_matches(provision.get("action"), request)
        and _class_matches(provision.get("class"), request)
    )


def _evaluate(provision: Any, request: ConsentRequest, default: str) -> str | None:
    if not isinstance(provision, Mapping) or not _matches(provision, request):
        return None
    decision = provision.get("type") if provision.get("type") in ("permit", "deny") else default
    nested = provision.get("provision")
    for child in nested if isinstance(nested, list) else []:
        found = _evaluate(child, request, "deny" if decision == "permit" else "permit")
        if found is not None:
            decision = found
    return str(decision)


def _applies(consent: Mapping[str, Any], request: ConsentRequest) -> bool:
    if consent.get("resourceType") != "Consent" or consent.get("status") != "active":
        return False
    return bool(_codes(consent.get("scope")) & _PURPOSE_SCOPES.get(request.purpose, frozenset()))


def consent_decision(consents: Iterable[Mapping[str, Any]], request: ConsentRequest) -> str | None:
    """``"deny"``, ``"permit"`` or None (no consent speaks to *request*) over the patient's *consents* (FHIR JSON)."""
    decisions = [_evaluate(c.get("provision"), request, "deny") for c in consents if _applies(c, request)]
    if "deny" in decisions:
        return "deny"
    return "permit" if "permit" in decisions else None


def is_research_opt_out(consents: Sequence[Mapping[str, Any]], at: datetime) -> bool:
    """True when the patient's consents deny research use of their data at *at* (any resource, any researcher)."""
    request = ConsentRequest(frozenset(), "researcher", "r", "Patient", at, purpose="research")
    return consent_decision(consents, request) == "deny"
