"""A risk equation's result for one patient as a FHIR R4 RiskAssessment.

``status`` is ``final`` for a result computed from the patient's own values, ``preliminary`` when a value was
flagged (bounded, or a published "missing" term used), and ``cannot-be-obtained`` when the equation refused (the
reasons go to ``note``). ``method`` names the equation (medtwin code system, with its citation and DOI as text);
``basis`` references every record the inputs came from; ``prediction`` carries the probability over
``whenRange`` (years, UCUM ``a``) or, for a points score, the points in ``rationale`` and the band as
``qualitativeRisk``; ``note`` holds the per-factor explanation and the reasons; ``mitigation`` the what-ifs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from medtwin import codes

__all__ = ["RISK_METHOD_SYSTEM", "risk_assessment"]

RISK_METHOD_SYSTEM = "https://medtwin.dev/fhir/CodeSystem/risk-equation"
_RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
_BANDS = {
    "low": "low",
    "slightly elevated": "moderate",
    "intermediate": "moderate",
    "moderate": "moderate",
    "high": "high",
    "very high": "high",
    "not high": "low",
}


def _instant(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def risk_assessment(
    *,
    assessment_id: str,
    patient_id: str,
    occurrence: datetime,
    method_code: str,
    method_text: str,
    outcome_text: str,
    horizon_years: float | None,
    probability: float | None,
    points: float | None = None,
    band: str | None = None,
    basis: list[str] | None = None,
    notes: list[str] | None = None,
    mitigation: str | None = None,
    flagged: bool = False,
) -> dict[str, Any]:
    """The RiskAssessment resource (R4 JSON) for one equation's result."""
    refused = probability is None and points is None
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": assessment_id,
        "status": "cannot-be-obtained" if refused else ("preliminary" if flagged else "final"),
        "subject": {"reference": f"Patient/{patient_id}"},
        "occurrenceDateTime": _instant(occurrence),
        "method": {"coding": [{"system": RISK_METHOD_SYSTEM, "code": method_code}], "text": method_text},
        "code": {"coding": [{"system": codes.MEDTWIN, "code": "risk-prediction", "display": "Risk prediction"}]},
    }
    if basis:
        resource["basis"] = [{"reference": ref} for ref in basis]
    if not refused:
        prediction: dict[str, Any] = {"outcome": {"text": outcome_text}}
        if probability is not None:
            prediction["probabilityDecimal"] = round(float(probability), 6)
        if band is not None and band in _BANDS:
            prediction["qualitativeRisk"] = {
                "coding": [{"system": _RISK_PROBABILITY, "code": _BANDS[band]}],
                "text": band,
            }
        if points is not None:
            prediction["rationale"] = f"{points:g} points"
        if horizon_years is not None:
            prediction["whenRange"] = {
                "high": {"value": horizon_years, "unit": "years", "system": codes.UCUM, "code": "a"}
            }
        resource["prediction"] = [prediction]
    if notes:
        resource["note"] = [{"text": "\n".join(notes)}]
    if mitigation:
        resource["mitigation"] = mitigation
    return resource
