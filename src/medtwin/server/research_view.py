"""What the researcher role sees of a FHIR resource: no direct identifier of the patient.

Removed: the patient's ``identifier``, ``name``, ``telecom``, ``address``, ``photo``, ``contact`` and
``link``; the birth date is reduced to its year, and to ``1900`` past age 89 (HIPAA Safe Harbor 164.514(b)(2)(i)(C):
ages over 89 are aggregated); every resource loses its ``identifier`` (source ids) and ``text``; display names in
references are dropped. Patient ids are already pseudonymous. Dates of care are not shifted here: medtwin's full
de-identification for research export (per-patient date shift, ZIP3) is ``medtwin export --deidentify``
(issue 15, data-protection half), which this view is to call once merged (docs/security.md, "Not done").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["research_view"]

_PATIENT_IDENTIFIERS = ("identifier", "name", "telecom", "address", "photo", "contact", "link")


def _strip_displays(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _strip_displays(v) for k, v in value.items() if not (k == "display" and "reference" in value)}
        return out
    if isinstance(value, list):
        return [_strip_displays(v) for v in value]
    return value


def research_view(resource: dict[str, Any], *, today: datetime | None = None) -> dict[str, Any]:
    """A copy of *resource* without the patient's direct identifiers (see the module docstring)."""
    out = {k: _strip_displays(v) for k, v in resource.items() if k not in ("identifier", "text")}
    if resource.get("resourceType") == "Patient":
        for key in _PATIENT_IDENTIFIERS:
            out.pop(key, None)
        birth = resource.get("birthDate")
        if isinstance(birth, str) and len(birth) >= 4 and birth[:4].isdigit():
            year = int(birth[:4])
            now = (today or datetime.now(UTC)).year
            out["birthDate"] = "1900" if now - year > 89 else f"{year:04d}"
        if "deceasedDateTime" in out:
            out["deceasedBoolean"] = True
            del out["deceasedDateTime"]
    return out
