"""The FHIR R4 facade under ``/fhir``: capability statement, read and search, batch/transaction and create.

Reads serve the store's records as FHIR R4 (:func:`medtwin.interop.fhir.to_fhir`): Patient, Observation, Encounter,
Condition, MedicationRequest, MedicationAdministration, Flag (alerts about a patient), DetectedIssue (other events)
and the Consent resources kept whole. Searches answer ``Bundle`` ``searchset`` pages with ``self`` and ``next``
links (``_count``, ``_offset``); Observation adds ``code`` (``system|code``, comma = any of), ``date`` ranges
(``ge``/``gt``/``le``/``lt``/``eq``) and ``_sort=date|-date``. Writes (``POST /fhir`` with a Bundle, ``POST
/fhir/{type}`` with a resource) go through the ingest path of ``medtwin ingest`` (:func:`~medtwin.interop.fhir.
ingest_document`): the same structure validation, the same raw inbound log, errors as an OperationOutcome whose
issues carry the element path. Every search parameter of a patient's data needs ``patient`` (or the token's launch
patient).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from medtwin.errors import ValidationError
from medtwin.interop.fhir import FhirLimits, ParsedPayload, ingest_document, parse_datetime, to_fhir
from medtwin.records import Event, Patient, Record, new_id
from medtwin.security.erasure import PatientNotFoundError, erase_patient
from medtwin.security.principal import Principal
from medtwin.server.errors import ApiError, FhirJSON, fhir_responses, not_found
from medtwin.server.guard import caller, patient_access, platform_of, require, source_of
from medtwin.server.queries import ObservationQuery, in_date_range, parse_date_param, record_by_id, search_observations
from medtwin.server.research_view import research_resource, research_resources
from medtwin.store import schema

__all__ = ["FHIR_ID", "SEARCH_TYPES", "capability_statement", "check_id", "router", "search_candidates", "searchset"]

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
"""R4's id syntax: ids outside it are refused (400) before any lookup."""

SEARCH_TYPES = (
    "Observation",
    "Encounter",
    "Condition",
    "MedicationRequest",
    "MedicationAdministration",
    "Flag",
    "DetectedIssue",
    "Consent",
)
_RECORD_KIND = {
    "Observation": "Observation",
    "Encounter": "Encounter",
    "Condition": "Condition",
    "MedicationRequest": "MedicationRequest",
    "MedicationAdministration": "MedicationAdministration",
    "Flag": "Event",
    "DetectedIssue": "Event",
}
_MAX_COUNT = 1000


def check_id(value: str, what: str) -> None:
    """400 unless *value* is a valid FHIR id (guards against path tricks such as ``..``)."""
    if not FHIR_ID.match(value) or value in (".", ".."):
        raise ApiError(400, "invalid", f"{what}: {value[:80]!r} is not a valid FHIR id ([A-Za-z0-9-.], 1-64)")


def _fhir_type(record: Record) -> str:
    if isinstance(record, Event):
        return "Flag" if record.kind == "alert" and record.patient_id else "DetectedIssue"
    return type(record).__name__


def capability_statement(base_url: str) -> dict[str, Any]:
    """The server's R4 CapabilityStatement (what ``GET /fhir/metadata`` answers)."""
    params = {
        "Patient": [("name", "string"), ("identifier", "token"), ("birthdate", "date"), ("gender", "token")],
        "Observation": [("patient", "reference"), ("code", "token"), ("date", "date")],
    }
    resources = []
    for rtype in ("Patient", *SEARCH_TYPES):
        interactions = [{"code": "read"}, {"code": "search-type"}, {"code": "create"}]
        if rtype == "Patient":
            interactions.append({"code": "delete"})
        search = [{"name": n, "type": t} for n, t in params.get(rtype, [("patient", "reference")])]
        search += [{"name": "_count", "type": "number"}]
        resources.append({"type": rtype, "interaction": interactions, "searchParam": search})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "publisher": "medtwin",
        "kind": "instance",
        "software": {"name": "medtwin"},
        "implementation": {"description": "medtwin FHIR R4 facade", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "OAuth2 bearer tokens with SMART v2 scopes; see /.well-known/smart-configuration",
                },
                "resource": resources,
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
            }
        ],
    }


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def searchset(request: Request, resources: Sequence[dict[str, Any]], total: int, count: int, offset: int) -> Any:
    """A ``searchset`` Bundle of one page, with ``self`` and (when more remain) ``next`` links."""
    base = _base(request)
    query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_offset", "access_token")]
    path = str(request.url.path)
    links = [
        {
            "relation": "self",
            "url": f"{str(request.base_url).rstrip('/')}{path}?{urlencode([*query, ('_offset', str(offset))])}",
        }
    ]
    if offset + len(resources) < total:
        nxt = urlencode([*query, ("_offset", str(offset + count))])
        links.append({"relation": "next", "url": f"{str(request.base_url).rstrip('/')}{path}?{nxt}"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }


def _int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, "invalid", f"{name}={value[:40]!r}: expected a whole number") from None
    if not low <= number <= high:
        raise ApiError(400, "invalid", f"{name}={number}: must be between {low} and {high}")
    return number


def _page(count: str | None, offset: str | None) -> tuple[int, int]:
    return _int_param(count, "_count", 50, 1, _MAX_COUNT), _int_param(offset, "_offset", 0, 0, 10**9)


def _patient_param(patient: str | None, principal: Principal) -> str:
    pid = patient or principal.patient
    if pid is None:
        raise ApiError(400, "invalid", "the search needs a patient parameter (patient=<id>)")
    pid = pid.removeprefix("Patient/")
    check_id(pid, "patient")
    return pid


_RESPONSES = fhir_responses(200)


# -- capability ---------------------------------------------------------------------------------------------------
@router.get(
    "/metadata", response_class=FhirJSON, responses=fhir_responses(200), summary="CapabilityStatement (no token needed)"
)
async def metadata(request: Request) -> FhirJSON:
    """The server's FHIR R4 CapabilityStatement."""
    return FhirJSON(capability_statement(_base(request)))


# -- Patient ------------------------------------------------------------------------------------------------------
def _identity_text(p: Patient) -> tuple[str, set[str]]:
    ident = p.identity
    if ident is None:
        return "", set()
    name = " ".join([*ident.given, ident.family or ""]).lower()
    ids = {i.value for i in ident.identifiers} | {f"{i.system}|{i.value}" for i in ident.identifiers if i.system}
    return name, ids


def patient_matches(
    p: Patient, name: str | None, identifier: str | None, birthdate: str | None, gender: str | None
) -> bool:
    """True when patient *p* matches every given search value (name: part of a name, case-insensitive)."""
    text, ids = _identity_text(p)
    if name is not None and name.lower() not in text:
        return False
    if identifier is not None and identifier not in ids:
        return False
    if gender is not None and p.gender != gender:
        return False
    if birthdate is not None:
        born = (
            None
            if p.birth_date is None
            else datetime(p.birth_date.year, p.birth_date.month, p.birth_date.day, tzinfo=UTC)
        )
        try:
            bound = parse_date_param(birthdate)
        except ValidationError as exc:
            raise ApiError(400, "invalid", str(exc).replace("date=", "birthdate=")) from None
        if not in_date_range(born, [bound]):
            return False
    return True


def search_candidates(store: Any, identifier: str | None) -> list[Patient]:
    """The patients a search must look at: with an *identifier* (``value`` or ``system|value``) only those the
    store's keyed blind index finds for it (identifiers are encrypted at rest, so the index is the only way to look
    one up without decrypting every patient); otherwise every patient."""
    if identifier is None:
        return list(store.patients())
    system, bar, value = identifier.partition("|")
    if not bar:
        system, value = "", identifier
    if not value:
        raise ApiError(400, "invalid", f"identifier={identifier[:80]!r}: expected value or system|value")
    found = (store.patient(pid) for pid in store.find_patients(value, system or None))
    return [p for p in found if p is not None]


@router.get("/Patient", response_class=FhirJSON, responses=_RESPONSES, summary="Search patients")
async def search_patients(
    request: Request,
    name: str | None = Query(None, max_length=200),
    identifier: str | None = Query(None, max_length=200),
    birthdate: str | None = Query(None, max_length=40),
    gender: str | None = Query(None, max_length=20),
    count: str | None = Query(None, alias="_count"),
    offset: str | None = Query(None, alias="_offset"),
    principal: Principal = Depends(caller),
) -> FhirJSON:
    """Patients the caller may see that match every given parameter (identity parameters: not for researchers)."""
    platform = platform_of(request)
    what = "Patient?" + urlencode(
        {k: v for k, v in (("name", name), ("identifier", identifier), ("birthdate", birthdate)) if v}
    )
    await require(request, principal, "Patient", "s", what)
    size, start = _page(count, offset)
    if principal.role == "researcher" and (name or identifier or birthdate):
        await platform.record(
            principal,
            "denied",
            what,
            outcome="denied",
            source=source_of(request),
            detail="identity search by a researcher",
        )
        raise ApiError(
            403,
            "forbidden",
            "researchers see de-identified data: search by name, identifier or birth date is not available to them",
        )
    patients = await run_in_threadpool(search_candidates, platform.store, identifier)
    found: list[dict[str, Any]] = []
    for p in patients:
        if not patient_matches(p, name, identifier, birthdate, gender):
            continue
        access = await patient_access(
            request, principal, p.patient_id, "Patient", "s", what, raise_denied=False, audit_denied=False
        )
        if access is not None:
            found.append(
                research_resources(platform.store, p.patient_id, "Patient")[0] if access.deidentify else to_fhir(p)
            )
    page = found[start : start + size]
    await platform.record(principal, "search", what, source=source_of(request), detail=f"{len(found)} match(es)")
    return FhirJSON(searchset(request, page, len(found), size, start))


@router.get("/Patient/{patient_id}", response_class=FhirJSON, responses=_RESPONSES, summary="Read a patient")
async def read_patient(request: Request, patient_id: str, principal: Principal = Depends(caller)) -> FhirJSON:
    """One patient (de-identified for researchers)."""
    check_id(patient_id, "Patient id")
    what = f"Patient/{patient_id}"
    await require(request, principal, "Patient", "r", what)
    access = await patient_access(request, principal, patient_id, "Patient", "r", what)
    assert access is not None
    platform = platform_of(request)
    patient = platform.store.patient(patient_id)
    if patient is None:
        raise not_found(what)
    await platform.record(
        principal,
        "read",
        what,
        patient_id=patient_id,
        source=source_of(request),
        purpose="research" if access.deidentify else None,
    )
    return FhirJSON(
        research_resources(platform.store, patient_id, "Patient")[0] if access.deidentify else to_fhir(patient)
    )


@router.delete(
    "/Patient/{patient_id}",
    response_class=FhirJSON,
    responses=_RESPONSES,
    summary="Erase a patient (GDPR Art. 17; admins)",
)
async def erase(request: Request, patient_id: str, principal: Principal = Depends(caller)) -> FhirJSON:
    """Erase the patient: records, twin state, raw payloads, and their data key (crypto-shredding); audited as
    ``erase`` in the same transaction (:func:`medtwin.security.erasure.erase_patient`)."""
    check_id(patient_id, "Patient id")
    what = f"Patient/{patient_id}"
    await require(request, principal, "Patient", "d", what)
    await patient_access(request, principal, patient_id, "Patient", "d", what)
    platform = platform_of(request)
    try:
        report = await run_in_threadpool(
            erase_patient,
            platform.store,
            patient_id,
            actor=principal.subject,
            role=principal.role,
            source=source_of(request),
            reason=request.headers.get("x-erasure-reason"),
            trail=platform.audit,
        )
    except PatientNotFoundError:
        raise not_found(what) from None
    platform.policy.invalidate(patient_id)
    removed = sum(report.removed.values())
    message = f"erased: {removed} row(s), data key destroyed: {report.key_destroyed}"
    return FhirJSON(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": message}],
        }
    )


# -- other types --------------------------------------------------------------------------------------------------
def _read_route(rtype: str) -> Callable[..., Any]:
    async def read(request: Request, resource_id: str, principal: Principal = Depends(caller)) -> FhirJSON:
        check_id(resource_id, f"{rtype} id")
        what = f"{rtype}/{resource_id}"
        await require(request, principal, rtype, "r", what)
        platform = platform_of(request)
        if rtype == "Consent":
            t = schema.fhir_resources
            stmt = select(t.c.body, t.c.patient_id).where(
                t.c.resource_type == "Consent", t.c.resource_id == resource_id
            )
            with platform.store.engine.connect() as conn:
                row = conn.execute(stmt).first()
            body = None if row is None or row.patient_id is None else platform.store.keys.open_text(row.body)
            if row is None or body is None:
                raise not_found(what)
            resource, patient_id = orjson.loads(body), str(row.patient_id)
        else:
            record = record_by_id(platform.store, _RECORD_KIND[rtype], resource_id)
            if record is None or _fhir_type(record) != rtype or record.patient_id is None:
                raise not_found(what)
            resource, patient_id = to_fhir(record), record.patient_id
        access = await patient_access(request, principal, patient_id, rtype, "r", what)
        assert access is not None
        await platform.record(
            principal,
            "read",
            what,
            patient_id=patient_id,
            source=source_of(request),
            purpose="research" if access.deidentify else None,
        )
        if access.deidentify:
            deidentified = research_resource(platform.store, patient_id, rtype, resource_id)
            if deidentified is None:  # a type the de-identified record does not carry
                raise not_found(what)
            resource = deidentified
        return FhirJSON(resource)

    read.__name__ = f"read_{rtype.lower()}"
    read.__doc__ = f"One {rtype} (of a patient the caller may see)."
    return read


def _records_of(platform: Any, rtype: str, patient_id: str) -> list[dict[str, Any]]:
    store = platform.store
    if rtype == "Encounter":
        return [to_fhir(r) for r in store.encounters(patient_id)]
    if rtype == "Condition":
        return [to_fhir(r) for r in store.conditions(patient_id)]
    if rtype == "MedicationRequest":
        return [to_fhir(r) for r in store.medication_requests(patient_id)]
    if rtype == "MedicationAdministration":
        return [to_fhir(r) for r in store.medication_administrations(patient_id)]
    if rtype in ("Flag", "DetectedIssue"):
        return [to_fhir(e) for e in store.events(patient_id=patient_id) if _fhir_type(e) == rtype]
    if rtype == "Consent":
        return [dict(c) for c in platform.policy.facts.consents(patient_id)]
    raise ValueError(rtype)


def _search_route(rtype: str) -> Callable[..., Any]:
    async def search(
        request: Request,
        patient: str | None = Query(None, max_length=80),
        code: str | None = Query(None, max_length=400),
        date: list[str] | None = Query(None),
        sort: str | None = Query(None, alias="_sort", max_length=20),
        count: str | None = Query(None, alias="_count"),
        offset: str | None = Query(None, alias="_offset"),
        principal: Principal = Depends(caller),
    ) -> FhirJSON:
        pid = _patient_param(patient, principal)
        what = f"{rtype}?patient={pid}"
        await require(request, principal, rtype, "s", what)
        size, start = _page(count, offset)
        try:
            dates = tuple(parse_date_param(d) for d in date or ())
        except ValidationError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        if sort not in (None, "date", "-date"):
            raise ApiError(400, "invalid", f"_sort={sort!r}: supported are date and -date")
        if code is not None and rtype != "Observation":
            raise ApiError(400, "invalid", f"code: not a search parameter of {rtype} here (Observation only)")
        platform = platform_of(request)
        access = await patient_access(request, principal, pid, rtype, "s", what, raise_denied=False)
        if access is None:  # denied: the same answer as a patient without such resources
            return FhirJSON(searchset(request, [], 0, size, start))
        if access.deidentify:  # the de-identified record: dates are shifted, so ranges apply to shifted dates
            found = research_resources(platform.store, pid, rtype)
            if code:
                wanted = {_code_token(t)[1] for t in code.split(",")}
                found = [r for r in found if wanted & {c.get("code") for c in r.get("code", {}).get("coding", [])}]
            if dates:
                found = [r for r in found if in_date_range(_resource_date(r), list(dates))]
            if sort == "-date":
                found.reverse()
            total, page = len(found), found[start : start + size]
        elif rtype == "Observation":
            codes = tuple(_code_token(t) for t in code.split(",")) if code else ()
            query = ObservationQuery(pid, codes, dates, sort == "-date", size, start)
            total, observations = search_observations(platform.store, query)
            page = [to_fhir(o) for o in observations]
        else:
            found = _records_of(platform, rtype, pid)
            if dates:
                found = [r for r in found if in_date_range(_resource_date(r), list(dates))]
            if sort == "-date":
                found.reverse()
            total, page = len(found), found[start : start + size]
        await platform.record(
            principal,
            "search",
            what,
            patient_id=pid,
            source=source_of(request),
            purpose="research" if access.deidentify else None,
            detail=f"{total} match(es)",
        )
        return FhirJSON(searchset(request, page, total, size, start))

    search.__name__ = f"search_{rtype.lower()}"
    search.__doc__ = f"Search {rtype} of one patient (patient=<id>)."
    return search


def _code_token(token: str) -> tuple[str | None, str]:
    system, bar, value = token.partition("|")
    if not bar:
        return None, token
    if not value:
        raise ApiError(400, "invalid", f"code={token!r}: expected system|code or code")
    return (system or None), value


_DATE_FIELDS = ("effectiveDateTime", "onsetDateTime", "authoredOn", "identifiedDateTime", "dateTime")


def _resource_date(resource: dict[str, Any]) -> datetime | None:
    value: Any = next((resource[k] for k in _DATE_FIELDS if k in resource), None)
    if value is None:
        for k in ("period", "effectivePeriod"):
            if isinstance(resource.get(k), dict):
                value = resource[k].get("start")
                break
    try:
        return None if value is None else parse_datetime(value)
    except ValidationError:
        return None


for _rtype in SEARCH_TYPES:
    router.add_api_route(
        f"/{_rtype}",
        _search_route(_rtype),
        methods=["GET"],
        response_class=FhirJSON,
        responses=_RESPONSES,
        summary=f"Search {_rtype}",
    )
    router.add_api_route(
        f"/{_rtype}/{{resource_id}}",
        _read_route(_rtype),
        methods=["GET"],
        response_class=FhirJSON,
        responses=_RESPONSES,
        summary=f"Read {_rtype}",
    )


# -- writes -------------------------------------------------------------------------------------------------------
def _write_targets(parsed: ParsedPayload) -> list[tuple[str, str | None]]:
    """(FHIR type, patient id or None) of everything a parsed document would store."""
    out: list[tuple[str, str | None]] = []
    for record in parsed.records:
        out.append((_fhir_type(record), record.patient_id))
    for kept in parsed.kept:
        out.append((kept.resource_type, kept.patient_id))
    return out


def _checker(request: Request, principal: Principal, denials: list[str]) -> Callable[[ParsedPayload], None]:
    """The authorization of a write, run on the parsed document before anything is stored (in a worker thread)."""
    platform = platform_of(request)

    def check(parsed: ParsedPayload) -> None:
        if not platform.settings.security:
            return
        targets = _write_targets(parsed)
        created = {pid for rtype, pid in targets if rtype == "Patient" and pid}
        for rtype, _ in targets:
            if not platform.policy.may(principal, rtype, "c"):
                denials.append(f"role/scope: {rtype}.c")
                raise ApiError(
                    403, "forbidden", f"your role ({principal.role}) and token scopes do not permit create on {rtype}"
                )
        now = datetime.now(UTC)
        for pid in sorted({pid for _, pid in targets if pid}):
            if pid in created and platform.store.patient(pid) is None:
                continue  # a new patient: its creator needed Patient.c, checked above
            for rtype in sorted({t for t, p in targets if p == pid}):
                access = platform.policy.patient_access(principal, pid, rtype, "c", at=now)
                if not access.allowed:
                    denials.append(f"patient {pid}: {access.reason}")
                    raise ApiError(
                        403,
                        "forbidden",
                        "you may not write to the record of a patient named in this "
                        "request (outside your care, or denied by consent)",
                    )

    return check


async def _ingest(request: Request, principal: Principal, data: bytes, what: str) -> tuple[Any, list[str]]:
    platform = platform_of(request)
    denials: list[str] = []
    try:
        result = await run_in_threadpool(
            ingest_document,
            platform.store,
            data,
            name=what,
            source_system="fhir-api",
            limits=FhirLimits(max_file_bytes=platform.settings.max_body_bytes),
            check=_checker(request, principal, denials),
        )
    except ApiError:
        await platform.record(
            principal, "denied", what, outcome="denied", source=source_of(request), detail="; ".join(denials) or None
        )
        raise
    if result.problems:
        issues = [(p.field, str(p)) for p in result.problems]
        await platform.record(
            principal,
            "create",
            what,
            outcome="error",
            source=source_of(request),
            detail=f"rejected: {len(issues)} problem(s); raw_id {result.raw_id}",
        )
        raise ApiError(400, "invalid", f"{what}: rejected, nothing stored ({len(issues)} problem(s))", issues=issues)
    targets = _write_targets(result.parsed) if result.parsed is not None else []
    for pid in sorted({p for _, p in targets if p}):
        types = ",".join(sorted({t for t, p in targets if p == pid}))
        await platform.record(
            principal,
            "create",
            f"{types} ({what})",
            patient_id=pid,
            source=source_of(request),
            detail=f"{result.report.status}; raw_id {result.raw_id}",
        )
        if "Consent" in types:
            platform.policy.invalidate(pid)
    return result, [f"{t}/{p}" for t, p in targets]


async def _json_body(request: Request) -> Any:
    data = await request.body()
    if not data:
        raise ApiError(400, "invalid", "the request has no body (expected FHIR JSON)")
    try:
        return data, orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid", f"the body is not valid JSON ({exc})") from None


_BODY = {"requestBody": {"required": True, "content": {"application/fhir+json": {"schema": {"type": "object"}}}}}


@router.post(
    "", response_class=FhirJSON, responses=_RESPONSES, openapi_extra=_BODY, summary="Batch or transaction Bundle"
)
async def post_bundle(request: Request, principal: Principal = Depends(caller)) -> FhirJSON:
    """Store a Bundle through the ingest path: all of it, or (any invalid entry) none of it."""
    data, doc = await _json_body(request)
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise ApiError(
            400, "invalid", "POST /fhir takes a Bundle (resourceType 'Bundle'); post a single resource to /fhir/{type}"
        )
    result, _ = await _ingest(request, principal, data, "Bundle")
    kind = "batch-response" if doc.get("type") == "batch" else "transaction-response"
    entries = []
    for entry in doc.get("entry") or []:
        res = entry.get("resource") if isinstance(entry, dict) else None
        location = f"{res.get('resourceType')}/{res.get('id')}" if isinstance(res, dict) and res.get("id") else None
        response: dict[str, Any] = {"status": "200 OK" if result.report.status == "duplicate" else "201 Created"}
        if location:
            response["location"] = location
        entries.append({"response": response})
    return FhirJSON({"resourceType": "Bundle", "type": kind, "entry": entries})


@router.post(
    "/{resource_type}",
    response_class=FhirJSON,
    responses=fhir_responses(200, 201),
    openapi_extra=_BODY,
    status_code=201,
    summary="Create a resource",
)
async def post_resource(request: Request, resource_type: str, principal: Principal = Depends(caller)) -> FhirJSON:
    """Store one resource of *resource_type* through the ingest path (an id is assigned when it has none)."""
    if not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", resource_type) or resource_type == "Bundle":
        raise ApiError(400, "invalid", f"{resource_type[:64]!r} is not a resource type that can be created here")
    _, doc = await _json_body(request)
    if not isinstance(doc, dict):
        raise ApiError(400, "invalid", "the body must be a JSON object (a FHIR resource)")
    if doc.get("resourceType") != resource_type:
        raise ApiError(
            400,
            "invalid",
            f"resourceType {doc.get('resourceType')!r} does not match the URL ({resource_type})",
            issues=[("resourceType", "does not match the URL")],
        )
    if "id" not in doc:
        doc["id"] = new_id()
    elif not isinstance(doc["id"], str) or not FHIR_ID.match(doc["id"]):
        raise ApiError(
            400,
            "invalid",
            f"{resource_type}.id: not a valid FHIR id",
            issues=[(f"{resource_type}.id", "not a valid FHIR id")],
        )
    result, _ = await _ingest(request, principal, orjson.dumps(doc), f"{resource_type}/{doc['id']}")
    status = 200 if result.report.status == "duplicate" else 201
    return FhirJSON(doc, status, headers={"Location": f"{_base(request)}/{resource_type}/{doc['id']}"})
