"""The platform's own JSON API: health, patients, a patient's twin and NEWS2 forecast, alerts.

Same access rules as the FHIR facade (:mod:`medtwin.server.guard`): patients are listed with their name, MRN and
birth date only where the caller may see identity (not researchers); a patient the caller may not see is "not
found"; alerts are listed for the patients the caller reaches, and acknowledging or resolving one is an update of
its Flag.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from medtwin.records import Event, Patient
from medtwin.security.policy import REACH, Access
from medtwin.security.principal import Principal
from medtwin.server.errors import ERROR_RESPONSES, ApiError, JSONBody, not_found
from medtwin.server.fhir_api import check_id, patient_matches, search_candidates
from medtwin.server.guard import caller, patient_access, platform_of, require, source_of
from medtwin.server.queries import record_by_id
from medtwin.server.research_view import research_resources
from medtwin.twin import PatientTwin

__all__ = ["patient_summary", "router"]

router = APIRouter(tags=["platform"])
_RESPONSES: dict[int | str, dict[str, Any]] = dict(ERROR_RESPONSES)
_STATUSES = ("active", "acknowledged", "resolved")


@router.get("/health", summary="Liveness")
async def health() -> JSONBody:
    """The process is up."""
    return JSONBody({"status": "ok"})


@router.get("/ready", summary="Readiness: the database answers", responses={503: {"description": "Not ready"}})
async def ready(request: Request) -> JSONBody:
    """Ready when the store answers a query."""
    platform = platform_of(request)

    def probe() -> None:
        with platform.store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await run_in_threadpool(probe)
    except Exception as exc:  # any database failure means "not ready", said plainly
        return JSONBody({"status": "unavailable", "reason": type(exc).__name__}, 503)
    return JSONBody({"status": "ready"})


def _mrn(p: Patient) -> str | None:
    ident = p.identity
    if ident is None or not ident.identifiers:
        return None
    return next((i.value for i in ident.identifiers if i.type_code == "MR"), ident.identifiers[0].value)


def patient_summary(store: Any, p: Patient, access: Access) -> dict[str, Any]:
    """A patient as the JSON API lists it (the de-identified Patient's fields for a researcher)."""
    if access.deidentify:
        (view,) = research_resources(store, p.patient_id, "Patient")
        return {
            "id": p.patient_id,
            "research_id": view["id"],
            "gender": view.get("gender"),
            "birth_date": view.get("birthDate"),
        }
    ident = p.identity
    return {
        "id": p.patient_id,
        "name": ident.display_name if ident else None,
        "mrn": _mrn(p),
        "birth_date": p.birth_date.isoformat() if p.birth_date else None,
        "gender": p.gender,
    }


@router.get("/api/patients", responses=_RESPONSES, summary="List or search patients")
async def list_patients(
    request: Request,
    name: str | None = Query(None, max_length=200),
    mrn: str | None = Query(None, max_length=200),
    birthdate: str | None = Query(None, max_length=40),
    limit: int = Query(100, ge=1, le=1000),
    principal: Principal = Depends(caller),
) -> JSONBody:
    """Patients the caller may see, matching name (part of), MRN and birth date when given."""
    platform = platform_of(request)
    what = "Patient?list"
    await require(request, principal, "Patient", "s", what)
    if principal.role == "researcher" and (name or mrn or birthdate):
        raise ApiError(403, "forbidden", "researchers see de-identified data: no search by name, MRN or birth date")
    patients = await run_in_threadpool(search_candidates, platform.store, mrn)
    out: list[dict[str, Any]] = []
    for p in patients:
        if not patient_matches(p, name, mrn, birthdate, None):
            continue
        access = await patient_access(
            request, principal, p.patient_id, "Patient", "s", what, raise_denied=False, audit_denied=False
        )
        if access is not None:
            out.append(patient_summary(platform.store, p, access))
        if len(out) >= limit:
            break
    await platform.record(principal, "search", what, source=source_of(request), detail=f"{len(out)} listed")
    return JSONBody({"patients": out})


@router.get("/api/patients/{patient_id}", responses=_RESPONSES, summary="One patient")
async def get_patient(request: Request, patient_id: str, principal: Principal = Depends(caller)) -> JSONBody:
    """One patient (identity where the caller may see it)."""
    check_id(patient_id, "patient id")
    what = f"Patient/{patient_id}"
    await require(request, principal, "Patient", "r", what)
    access = await patient_access(request, principal, patient_id, "Patient", "r", what)
    assert access is not None
    platform = platform_of(request)
    patient = platform.store.patient(patient_id)
    if patient is None:
        raise not_found(what)
    await platform.record(principal, "read", what, patient_id=patient_id, source=source_of(request))
    return JSONBody(patient_summary(platform.store, patient, access))


@router.get("/api/patients/{patient_id}/twin", responses=_RESPONSES, summary="Twin state and NEWS2 forecast")
async def twin_state(
    request: Request,
    patient_id: str,
    horizon_h: float = Query(4.0, gt=0, le=48),
    principal: Principal = Depends(caller),
) -> JSONBody:
    """The patient's twin as last saved by the twin runtime: latest vitals, NEWS2, open alerts, and the NEWS2
    total extrapolated *horizon_h* hours ahead (linear trend with residual SD; null with under 3 scores)."""
    check_id(patient_id, "patient id")
    what = f"Patient/{patient_id}/twin"
    await require(request, principal, "Observation", "r", what)
    if REACH.get(principal.role) == "research":  # its times and state are identifiable: never de-identified here
        raise ApiError(403, "forbidden", "the twin's live state is not available de-identified (researcher role)")
    await patient_access(request, principal, patient_id, "Observation", "r", what)
    platform = platform_of(request)
    snap = platform.store.latest_snapshot(f"patient:{patient_id}")
    if snap is None:
        if platform.store.patient(patient_id) is None:
            raise not_found(what)
        await platform.record(principal, "read", what, patient_id=patient_id, source=source_of(request))
        return JSONBody({"patient_id": patient_id, "snapshot_at": None, "state": None, "forecast": None})
    at, blob = snap
    twin = PatientTwin.restore(blob)
    forecast = twin.forecast(timedelta(hours=horizon_h))
    await platform.record(principal, "read", what, patient_id=patient_id, source=source_of(request))
    return JSONBody(
        {
            "patient_id": patient_id,
            "snapshot_at": at.isoformat(),
            "state": twin.vitals.state(),
            "forecast": None
            if forecast is None
            else {
                "at": forecast.at.isoformat(),
                "horizon_h": horizon_h,
                "expected_news2": round(forecast.expected_total, 2),
                "slope_per_h": round(forecast.slope_per_h, 3),
                "residual_sd": round(forecast.residual_sd, 3),
                "points": forecast.points,
                "method": "least-squares line over the NEWS2 trend window, clipped to 0-20",
            },
        }
    )


def alert_json(e: Event) -> dict[str, Any]:
    """An alert as the JSON API and the live stream show it (pseudonymous patient id, no identity)."""
    return {
        "id": e.event_id,
        "kind": e.kind,
        "patient_id": e.patient_id,
        "code": e.code,
        "severity": e.severity,
        "status": e.status,
        "time": e.time.isoformat(),
        "message": e.message,
        "revision": e.data.get("revision", 1),
    }


@router.get("/api/alerts", responses=_RESPONSES, summary="List alerts")
async def list_alerts(
    request: Request,
    status: str = Query("active", pattern="^(active|acknowledged|resolved|all)$"),
    patient: str | None = Query(None, max_length=64),
    principal: Principal = Depends(caller),
) -> JSONBody:
    """Alerts of the patients the caller reaches (of *status*, or all), oldest first."""
    platform = platform_of(request)
    what = "Flag?" + (f"patient={patient}" if patient else "all")
    await require(request, principal, "Flag", "s", what)
    if patient is not None:
        check_id(patient, "patient")
    events = await run_in_threadpool(platform.store.events, patient, "alert", None if status == "all" else status)
    visible: dict[str, bool] = {}
    out = []
    for e in events:
        if e.patient_id is None:
            continue
        if e.patient_id not in visible:
            access = await patient_access(
                request, principal, e.patient_id, "Flag", "s", what, raise_denied=False, audit_denied=False
            )
            visible[e.patient_id] = access is not None
        if visible[e.patient_id]:
            out.append(alert_json(e))
    await platform.record(
        principal, "search", what, patient_id=patient, source=source_of(request), detail=f"{len(out)} alert(s)"
    )
    return JSONBody({"alerts": out})


async def _set_status(request: Request, alert_id: str, status: str, principal: Principal) -> JSONBody:
    check_id(alert_id, "alert id")
    what = f"Flag/{alert_id}"
    await require(request, principal, "Flag", "u", what)
    platform = platform_of(request)
    event = record_by_id(platform.store, "Event", alert_id)
    if event is None or event.kind != "alert" or event.patient_id is None:
        raise not_found(what)
    await patient_access(request, principal, event.patient_id, "Flag", "u", what)
    updated = await run_in_threadpool(platform.store.update_event_status, alert_id, status, principal.subject)
    await platform.record(
        principal, "update", what, patient_id=event.patient_id, source=source_of(request), detail=f"status -> {status}"
    )
    return JSONBody(alert_json(updated))


@router.post("/api/alerts/{alert_id}/acknowledge", responses=_RESPONSES, summary="Acknowledge an alert")
async def acknowledge(request: Request, alert_id: str, principal: Principal = Depends(caller)) -> JSONBody:
    """Mark the alert acknowledged (an escalation makes it active again)."""
    return await _set_status(request, alert_id, "acknowledged", principal)


@router.post("/api/alerts/{alert_id}/resolve", responses=_RESPONSES, summary="Resolve an alert")
async def resolve(request: Request, alert_id: str, principal: Principal = Depends(caller)) -> JSONBody:
    """Mark the alert resolved."""
    return await _set_status(request, alert_id, "resolved", principal)
