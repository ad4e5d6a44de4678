"""How the API answers errors: FHIR OperationOutcome under /fhir, a small JSON object elsewhere.

Every error names what was wrong and where (the parameter, the element path of a FHIR resource), and never
carries patient data: a patient the caller may not see and a patient that does not exist get the same answer
(:func:`not_found`), so an error cannot tell whether a patient exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from starlette.responses import Response

__all__ = [
    "ERROR_RESPONSES",
    "ApiError",
    "FhirJSON",
    "JSONBody",
    "error_response",
    "fhir_responses",
    "not_found",
    "operation_outcome",
]


class JSONBody(Response):
    """A JSON response rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class FhirJSON(JSONBody):
    """A FHIR JSON response (``application/fhir+json``)."""

    media_type = "application/fhir+json"


class ApiError(Exception):
    """An error answered with *status*: *code* (``not-found``, ``forbidden``, ``invalid``...), a *message*, and
    for FHIR input the located *issues* (element path, problem)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        issues: Sequence[tuple[str | None, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.issues = list(issues)
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    """The one answer for a resource that does not exist and for one the caller may not see: it names the type
    asked for (``Patient/...`` -> Patient), never the id, so an answer can carry nothing of a patient."""
    kind = what.split("/", 1)[0].split("?", 1)[0] or "resource"
    return ApiError(404, "not-found", f"{kind} not found (or you may not see it)")


_FHIR_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    413: "too-costly",
    422: "processing",
    429: "throttled",
    500: "exception",
}


def operation_outcome(status: int, message: str, issues: Sequence[tuple[str | None, str]] = ()) -> dict[str, Any]:
    """An R4 OperationOutcome: one issue per (element path, problem), or one issue with *message*."""
    code = _FHIR_CODES.get(status, "processing")
    found = [
        {"severity": "error", "code": code, "diagnostics": problem, **({"expression": [path]} if path else {})}
        for path, problem in issues
    ] or [{"severity": "error", "code": code, "diagnostics": message}]
    return {"resourceType": "OperationOutcome", "issue": found}


def error_response(exc: ApiError, *, fhir: bool) -> Response:
    """The response for *exc*: an OperationOutcome for FHIR paths, ``{"error", "message"}`` elsewhere."""
    if fhir:
        return FhirJSON(operation_outcome(exc.status, exc.message, exc.issues), exc.status, headers=exc.headers)
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if exc.issues:
        body["issues"] = [{"path": p, "problem": m} for p, m in exc.issues]
    return JSONBody(body, exc.status, headers=exc.headers)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad request: the message says which parameter or element, and why"},
    401: {"description": "No valid bearer token"},
    403: {"description": "The token's role or scopes do not permit this"},
    404: {"description": "Not found, or not visible to the caller (the two look the same)"},
    413: {"description": "Request body over the size limit"},
    429: {"description": "Too many requests from this client (see Retry-After)"},
}
"""The error answers every protected operation documents (OpenAPI)."""

_FHIR_OBJECT = {
    "schema": {"type": "object", "properties": {"resourceType": {"type": "string"}}, "required": ["resourceType"]}
}


def fhir_responses(*ok: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI answers of a FHIR operation: *ok* statuses and the errors, all FHIR JSON resources."""
    out: dict[int | str, dict[str, Any]] = {
        code: {"description": "A FHIR R4 resource", "content": {"application/fhir+json": _FHIR_OBJECT}} for code in ok
    }
    for code, doc in ERROR_RESPONSES.items():
        out[code] = {**doc, "content": {"application/fhir+json": _FHIR_OBJECT}}
    return out
