"""Who is calling: the identity a verified token stands for, with everything the policy needs (no DB lookup)."""

from __future__ import annotations

from dataclasses import dataclass, field

from medtwin.security.scopes import ScopeSet

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: *subject* (user id or client id), *role*, granted *scopes*, SMART launch context
    *patient*, the *wards* and *teams* whose patients a clinician or nurse looks after, the token's id (*token_id*)
    and session (*session_id*: the refresh-token family) and its expiry (*expires*, Unix seconds)."""

    subject: str
    role: str
    scopes: ScopeSet
    patient: str | None = None
    wards: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()
    client_id: str | None = None
    username: str | None = None
    token_id: str | None = None
    session_id: str | None = None
    expires: float = float("inf")
    issuer: str = "medtwin"
    decisions: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def actor_ids(self) -> frozenset[str]:
        """References that name this caller in a FHIR Consent (``Practitioner/<id>``, ``Device/<client>``...)."""
        ids = {f"Practitioner/{self.subject}", f"Device/{self.subject}", f"Organization/{self.subject}"}
        if self.username:
            ids.add(f"Practitioner/{self.username}")
        if self.client_id:
            ids.add(f"Device/{self.client_id}")
        return frozenset(ids)
