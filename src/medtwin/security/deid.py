"""De-identified export for research: HIPAA Safe Harbor, 45 CFR 164.514(b)(2).

:func:`deidentify_patient` returns a patient's record as FHIR R4 resources (built by
:mod:`medtwin.interop.fhir.writer`) with the 18 Safe Harbor identifiers removed; ``medtwin export --deidentify``
writes them as a Bundle, and the researcher role's views use the same function. Field by field (the letters are
those of 164.514(b)(2)(i)):

* (A) names: Patient.name dropped; every Reference.display dropped (Synthea puts the patient's and clinicians'
  names there); free text (``text``, ``note``, ``valueString``, ``description``) dropped;
* (B) geography smaller than a state: Patient.address reduced to the first three digits of the ZIP code, and to
  ``000`` for the 17 three-digit ZIPs whose areas held 20,000 people or fewer (:data:`RESTRICTED_ZIP3`, HHS guidance
  from the 2000 census); street, city, county, full ZIP dropped;
* (C) dates: every date and time (birth, death, admission, discharge, effective, onset, authored, issued, period,
  ...) is shifted by the patient's secret offset (:meth:`medtwin.crypto.Keyring.date_shift_days`: 1 to 365 days
  back, the same for every date of one patient, so intervals are kept). ``dates="year"`` instead keeps the year only
  (the literal Safe Harbor rule: shifted dates are a de-identification practice beyond it, so choose ``"year"`` where
  the literal rule is required). Ages over 89: the birth date is dropped and the Patient carries the
  age-group extension ``90 or older``; (a person's age is never published over 89);
* (D)-(H), (J)-(R) telephone, fax, email, SSN, MRN, health plan, account, certificate/licence, vehicle, device
  identifiers and serial numbers, URLs, IP addresses, biometric identifiers, photographs: every ``identifier``
  element dropped, ``telecom`` dropped, ``photo`` dropped, ``url``-valued references outside the bundle dropped;
* (R) any other unique identifying number or code: resource ids and references are replaced by research ids,
  ``rs-`` + HMAC of the platform id under the keyring's secret (consistent within and across exports, not
  reversible without the secret; the platform id is itself a keyed pseudonym). The FHIR resources kept whole
  (claims, immunizations, ...) are not exported: their free text cannot be checked field by field.

What stays: codes (LOINC, SNOMED, RxNorm), values and units, gender, ZIP3, shifted times.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any, Literal

from medtwin.crypto import Keyring
from medtwin.errors import ValidationError
from medtwin.interop.fhir.writer import to_fhir
from medtwin.records import Patient
from medtwin.store import Store

__all__ = [
    "AGE_90_EXTENSION",
    "RESTRICTED_ZIP3",
    "age_on",
    "deidentified_bundle",
    "deidentify_patient",
    "research_id",
    "zip3",
]

RESTRICTED_ZIP3 = frozenset(
    ("036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878", "879", "884", "890",
     "893")
)  # fmt: skip
"""Three-digit ZIP codes whose areas held 20,000 people or fewer (HHS Safe Harbor guidance, 2000 census): published
as ``000``."""

AGE_90_EXTENSION = "urn:medtwin:deid:age-group"
_FREE_TEXT = ("text", "note", "valueString", "description", "comment", "div")
_DROPPED = ("identifier", "telecom", "photo", "name", "contact", "link", "generalPractitioner", "managingOrganization")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")
_YEAR_MONTH = re.compile(r"^\d{4}(-\d{2})?$")
_ZIP = re.compile(r"\b(\d{5})(?:-\d{4})?\b")


def research_id(keyring: Keyring, platform_id: str) -> str:
    """The research id of a platform id: ``rs-`` + 16 hex digits of HMAC-SHA-256 under the keyring's secret."""
    import hmac

    return "rs-" + hmac.new(keyring.subkey("research-id"), platform_id.encode(), "sha256").hexdigest()[:16]


def zip3(address: str | None) -> str | None:
    """The Safe Harbor ZIP of an address: its ZIP code's first three digits (``000`` for a restricted area), or
    None when the address holds no 5-digit ZIP code (the last one in the text is taken)."""
    if not address:
        return None
    found = _ZIP.findall(address)
    if not found:
        return None
    first3 = found[-1][:3]
    return "000" if first3 in RESTRICTED_ZIP3 else first3


def age_on(birth: date, day: date) -> int:
    """Completed years between *birth* and *day*."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _shift_text(value: str, days: int, mode: str) -> str | None:
    if _DATE.match(value):
        d = date.fromisoformat(value)
        return str(d.year) if mode == "year" else (d + timedelta(days=days)).isoformat()
    if _DATETIME.match(value):
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return str(t.year) if mode == "year" else (t + timedelta(days=days)).isoformat()
    if _YEAR_MONTH.match(value) and len(value) > 4:
        return value[:4]  # a year-month cannot be shifted by days exactly: the year only
    return None


class _Scrub:
    def __init__(self, keyring: Keyring, patient_id: str, days: int, mode: str) -> None:
        self.keyring = keyring
        self.patient_id = patient_id
        self.days = days
        self.mode = mode

    def ref(self, reference: str) -> str | None:
        parts = reference.split("/")
        if len(parts) != 2 or reference.startswith(("http:", "https:", "urn:")):
            return None  # an absolute URL (an identifier, R/N): dropped
        return f"{parts[0]}/{research_id(self.keyring, parts[1])}"

    def walk(self, node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                if k in _DROPPED or k in _FREE_TEXT:
                    continue
                if k == "display" and "reference" in node:
                    continue
                if k == "reference" and isinstance(v, str):
                    new = self.ref(v)
                    if new is not None:
                        out[k] = new
                    continue
                if k == "id" and isinstance(v, str):
                    out[k] = research_id(self.keyring, v)
                    continue
                scrubbed = self.walk(v, k)
                if scrubbed is not None and scrubbed != {} and scrubbed != []:
                    out[k] = scrubbed
            return out
        if isinstance(node, list):
            return [x for x in (self.walk(v, key) for v in node) if x is not None and x != {}]
        if isinstance(node, str):
            shifted = _shift_text(node, self.days, self.mode)
            return node if shifted is None else shifted
        return node


def _patient_resource(patient: Patient, scrub: _Scrub, today: date) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Patient", "id": research_id(scrub.keyring, patient.patient_id)}
    if patient.gender:
        out["gender"] = patient.gender
    if patient.birth_date is not None:
        end = patient.deceased.date() if patient.deceased else today
        if age_on(patient.birth_date, end) > 89:
            out["extension"] = [{"url": AGE_90_EXTENSION, "valueString": "90 or older"}]
        else:
            shifted = _shift_text(patient.birth_date.isoformat(), scrub.days, scrub.mode)
            if shifted is not None:
                out["birthDate"] = shifted
    if patient.deceased is not None:
        shifted = _shift_text(patient.deceased.isoformat(), scrub.days, scrub.mode)
        out["deceasedDateTime" if scrub.mode == "shift" else "deceasedBoolean"] = (
            shifted if scrub.mode == "shift" else True
        )
    z = zip3(patient.identity.address if patient.identity else None)
    if z is not None:
        out["address"] = [{"postalCode": z}]
    return out


def deidentify_patient(
    store: Store,
    patient_id: str,
    *,
    dates: Literal["shift", "year"] = "shift",
    today: date | None = None,
) -> list[dict[str, Any]]:
    """The de-identified FHIR R4 resources of *patient_id* (Patient first), see the module doc.

    Raises
    ------
    ValidationError
        No such patient, or *dates* is not ``"shift"`` or ``"year"``.
    """
    if dates not in ("shift", "year"):
        raise ValidationError(f"deidentify_patient: dates must be 'shift' or 'year', got {dates!r}")
    patient = store.patient(patient_id)
    if patient is None:
        raise ValidationError(f"deidentify_patient: no patient {patient_id!r}")
    scrub = _Scrub(store.keyring, patient_id, store.keyring.date_shift_days(patient_id), dates)
    out = [_patient_resource(patient, scrub, today or date.today())]
    records: list[Any] = [
        *store.encounters(patient_id),
        *store.conditions(patient_id),
        *store.observations(patient_id),
        *store.medication_requests(patient_id),
        *store.medication_administrations(patient_id),
    ]
    for record in records:
        out.append(scrub.walk(to_fhir(record)))
    return out


def deidentified_bundle(
    store: Store, patient_ids: list[str], *, dates: Literal["shift", "year"] = "shift"
) -> dict[str, Any]:
    """A FHIR ``collection`` Bundle of the de-identified records of *patient_ids* (no timestamp: a time of export
    is not needed and would be a date)."""
    entries = [{"resource": res} for pid in patient_ids for res in deidentify_patient(store, pid, dates=dates)]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}
