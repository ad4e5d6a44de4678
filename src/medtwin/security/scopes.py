"""SMART App Launch v2 scopes: ``patient/Observation.rs``, ``user/*.cruds``, ``system/Observation.c``.

A scope names a context (``patient``: the one patient of the token's launch context; ``user``: what the user may
see; ``system``: a backend service), a FHIR resource type (or ``*``) and the permitted interactions as a subset of
``cruds`` written in that order (create, read, update, delete, search). SMART v1 ``.read`` (= ``rs``), ``.write``
(= ``cud``) and ``.*`` (= ``cruds``) are accepted. Granular v2 scopes with a query (``patient/Observation.rs?
category=...``) grant nothing here (medtwin does not filter by category yet): they are ignored, never widened.
Source: SMART App Launch 2.0.0, "Scopes and Launch Context" (http://hl7.org/fhir/smart-app-launch/scopes-and-
launch-context.html).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medtwin.errors import ValidationError

__all__ = ["ACTIONS", "Scope", "ScopeSet", "parse_scope", "parse_scopes"]

ACTIONS = "cruds"
"""The interactions in SMART v2 order: create, read, update, delete, search."""

_CONTEXTS = ("patient", "user", "system")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)$")
_NON_RESOURCE = frozenset(
    ("openid", "fhirUser", "profile", "offline_access", "online_access", "launch", "launch/patient", "launch/encounter")
)


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource scope: *context* (patient/user/system), *resource* type or ``*``, *actions* (subset of cruds)."""

    context: str
    resource: str
    actions: frozenset[str]

    def permits(self, resource: str, action: str) -> bool:
        """True when this scope grants *action* (one of ``cruds``) on *resource*."""
        return (self.resource == "*" or self.resource == resource) and action in self.actions


def parse_scope(text: str) -> Scope | None:
    """The resource scope *text* stands for; None for a non-resource scope (``openid``, ``launch/patient``...) and
    for a v2 granular scope with a query (ignored: it must not grant more than it says).

    Raises
    ------
    ValidationError
        A malformed resource scope (``patient/Observation.xyz``, ``doctor/*.r``, ``.sr``: letters out of order).
    """
    if text in _NON_RESOURCE or "?" in text:
        return None
    match = _SCOPE.match(text)
    if match is None:
        raise ValidationError(
            f"scope {text!r}: expected context/Type.permissions, e.g. patient/Observation.rs (context one of "
            f"{', '.join(_CONTEXTS)}; permissions a subset of cruds in that order)"
        )
    context, resource, perms = match.groups()
    perms = _V1.get(perms, perms)
    order = [ACTIONS.find(p) for p in perms]
    if -1 in order or order != sorted(order) or len(set(order)) != len(order):
        raise ValidationError(f"scope {text!r}: permissions {perms!r} must be a subset of 'cruds' in that order")
    return Scope(context, resource, frozenset(perms))


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """The resource scopes of a token, and its other scopes (``openid``, ``launch/patient``, ...)."""

    scopes: tuple[Scope, ...]
    other: frozenset[str]

    def permits(self, resource: str, action: str, *, context: str | None = None) -> bool:
        """True when some scope (of *context*, when given) grants *action* on *resource*."""
        return any(s.permits(resource, action) and (context is None or s.context == context) for s in self.scopes)

    def contexts_for(self, resource: str, action: str) -> frozenset[str]:
        """The contexts (patient/user/system) of the scopes that grant *action* on *resource*."""
        return frozenset(s.context for s in self.scopes if s.permits(resource, action))

    def text(self) -> str:
        """The scopes as the space-separated string a token carries (resource scopes in canonical form)."""
        parts = [f"{s.context}/{s.resource}.{''.join(a for a in ACTIONS if a in s.actions)}" for s in self.scopes]
        return " ".join([*sorted(self.other), *parts])

    def narrowed_to(self, allowed: ScopeSet) -> ScopeSet:
        """The scopes of this set that *allowed* covers entirely (a client asks for no more than it was granted)."""
        kept = tuple(
            s
            for s in self.scopes
            if any(
                a.context == s.context and a.resource in ("*", s.resource) and s.actions <= a.actions
                for a in allowed.scopes
            )
        )
        return ScopeSet(kept, self.other & (allowed.other | {"openid", "offline_access", "launch/patient"}))


def parse_scopes(text: str) -> ScopeSet:
    """The :class:`ScopeSet` of a space-separated scope string (empty: no scope).

    Raises
    ------
    ValidationError
        One of the scopes is malformed (its text is named).
    """
    scopes: list[Scope] = []
    other: set[str] = set()
    for word in text.split():
        scope = parse_scope(word)
        if scope is None:
            if "?" not in word:
                other.add(word)
        elif scope not in scopes:
            scopes.append(scope)
    return ScopeSet(tuple(scopes), frozenset(other))
