"""Security (floor 3): the audit chain (:mod:`medtwin.security.audit`), erasure, de-identification; identities,
tokens, scopes and policy (issue 15, see docs/security.md)."""

__all__: list[str] = []
