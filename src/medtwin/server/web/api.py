"""The web app's JSON endpoints (``/app/api/...``): what each screen shows, under the API's access rules.

Every endpoint authenticates the bearer token (:func:`medtwin.server.guard.caller`), checks the role and scopes
(:func:`~medtwin.server.guard.require`) and the care relationship for each patient
(:func:`~medtwin.server.guard.patient_access`: a patient outside the caller's care is "not found"; a clinician may
break the glass by stating a reason in ``X-Break-Glass-Reason``, audited and flagged for review), and appends an
audit record of what was read or written. Researchers get no identified screen here: they read de-identified data
through the API's research views. The computations are in :mod:`medtwin.server.web.data`.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from medtwin.errors import MedtwinError
from medtwin.security.accounts import ROLES, AccountError, CurrentPasswordError, PasswordPolicyError
from medtwin.security.principal import Principal
from medtwin.security.scopes import parse_scopes
from medtwin.security.tokens import TokenError
from medtwin.server.errors import ApiError, JSONBody, not_found
from medtwin.server.guard import caller, patient_access, platform_of, require, source_of
from medtwin.server.oauth import audit_password_change
from medtwin.server.web import data, dosing_entry

__all__ = ["CLIENT_ID", "router"]

router = APIRouter(prefix="/app/api", tags=["web app"], include_in_schema=False)

CLIENT_ID = "medtwin-web"
"""The web app's OAuth client id (a public client: authorization code + PKCE)."""
_CLINICAL = ("admin", "clinician", "nurse", "pharmacist")


def _identified_only(principal: Principal) -> None:
    if principal.role not in _CLINICAL:
        raise ApiError(403, "forbidden", f"this screen shows identified patient data, which the {principal.role} "
                                         "role does not see (use the de-identified research views)")  # fmt: skip


def _admin_only(principal: Principal) -> None:
    if principal.role != "admin":
        raise ApiError(403, "forbidden", "administration is for the admin role")


async def _patient(request: Request, principal: Principal, patient_id: str, resource: str, action: str,
                   what: str) -> None:  # fmt: skip
    if len(patient_id) > 64 or not patient_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ApiError(400, "invalid", "patient id: letters, digits, '-', '_', '.' (at most 64)")
    _identified_only(principal)
    await require(request, principal, resource, action, what)
    access = await patient_access(request, principal, patient_id, resource, action, what)
    if access is not None and access.deidentify:  # pragma: no cover - researchers are refused above
        raise not_found(what)
    store = platform_of(request).store
    if await run_in_threadpool(store.patient, patient_id) is None:
        raise not_found(what)  # as a denial answers: a caller cannot tell "not there" from "not yours"


def _idle_s(request: Request) -> int:
    platform = platform_of(request)
    override = platform.extra.get("web.idle_s")
    return int(override) if override is not None else int(platform.settings.idle_timeout_s)


@router.get("/config")
async def config(request: Request) -> JSONBody:
    """What the browser needs before sign-in: client id, idle timeout, the built-in issuer's endpoints and, when an
    external OpenID Connect issuer is configured with a web client id, its endpoints from its discovery document
    (no secret: both are public clients with PKCE), and whether the page offers the built-in sign-in."""
    platform = platform_of(request)
    external = await _external_config(platform)
    oidc = platform.settings.oidc
    # the built-in sign-in is offered unless configured away, and always while the external issuer is unreachable
    builtin = external is None or not external["available"] or oidc is None or oidc.builtin_signin
    return JSONBody({
        "client_id": CLIENT_ID, "idle_s": _idle_s(request), "security": platform.settings.security,
        "authorize": "/oauth/authorize", "token": "/oauth/token", "revoke": "/oauth/revoke",
        "scope": "openid user/*.cruds", "external": external,
        "builtin": builtin,
    })  # fmt: skip


def _endpoint(doc: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise TokenError("server_error", f"the discovery document's {key} is {value!r}, not an http(s) URL")
    return value


async def _external_config(platform: Any) -> dict[str, Any] | None:
    settings = platform.settings.oidc
    if settings is None or not settings.client_id or platform.oidc is None:
        return None
    out: dict[str, Any] = {"name": settings.name, "issuer": platform.oidc.issuer, "available": False}
    try:
        doc = await run_in_threadpool(platform.oidc.discovery)
        out.update(authorize=_endpoint(doc, "authorization_endpoint", required=True),
                   token=_endpoint(doc, "token_endpoint", required=True),
                   revoke=_endpoint(doc, "revocation_endpoint", required=False),
                   end_session=_endpoint(doc, "end_session_endpoint", required=False))  # fmt: skip
    except TokenError as exc:
        out["error"] = str(exc)
        return out
    out.update(available=True, client_id=settings.client_id, scope=settings.scope, redirect_uri=settings.redirect_uri,
               post_logout_redirect_uri=settings.post_logout_redirect_uri)  # fmt: skip
    return out


def _me(principal: Principal, *, local_issuer: str | None = None) -> dict[str, Any]:
    """Who the token names; *local_account*: whether the user signs in with a password of medtwin's own (the
    built-in issuer's user token), which the account page then offers to change."""
    local = principal.issuer == local_issuer and principal.username is not None and principal.role != "device"
    return {"subject": principal.subject, "username": principal.username, "role": principal.role,
            "wards": sorted(principal.wards), "teams": sorted(principal.teams), "issuer": principal.issuer,
            "local_account": local}  # fmt: skip


@router.post("/signin/external")
async def signin_external(request: Request) -> JSONBody:
    """Finish a sign-in with the external issuer: the browser sends the access token it got (``Authorization:
    Bearer``) with the ID token and the nonce it sent (``{"id_token", "nonce"}``). The ID token's signature, issuer,
    audience (the web client), expiry and nonce are checked, and the access token must be the same user's; a user
    whose claims map to no medtwin role is refused with 403. Every outcome is audited as a ``login``."""
    platform = platform_of(request)
    settings = platform.settings.oidc
    if settings is None or not settings.client_id or platform.oidc is None:
        raise ApiError(404, "not-found", "no external OpenID Connect issuer is configured for the web app")
    verifier = platform.oidc
    source = source_of(request)
    what = f"oidc:{verifier.issuer}"
    body = await _json(request)
    id_token, nonce = body.get("id_token"), body.get("nonce")
    header = request.headers.get("authorization", "")
    access = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not isinstance(id_token, str) or not isinstance(nonce, str) or not access:
        raise ApiError(400, "invalid", 'an access token (Authorization: Bearer) and {"id_token", "nonce"} are needed')
    client_id = settings.client_id
    try:
        id_claims = await run_in_threadpool(lambda: verifier.verify_id_token(id_token, client_id=client_id,
                                                                             nonce=nonce))  # fmt: skip
    except TokenError as exc:
        await platform.record(None, "login", what, outcome="denied", source=source, detail=f"ID token: {exc}")
        raise ApiError(401, exc.error, f"sign-in refused: {exc}") from None
    subject = str(id_claims["sub"])
    name = id_claims.get(verifier.claims.username_claim)
    who = Principal(subject, "none", parse_scopes(""), username=name if isinstance(name, str) else None)
    try:
        principal = await run_in_threadpool(platform.verify, access)
        if principal.issuer != verifier.issuer or principal.subject != subject:
            raise TokenError("invalid_token", "the access token is not of the ID token's user and issuer")
    except TokenError as exc:
        await platform.record(who, "login", what, outcome="denied", source=source, detail=f"access token: {exc}")
        if exc.error == "insufficient_scope":  # the claims read and what they held are in the audit record
            raise ApiError(403, "access-denied", f"Your account {who.username or subject!r} at {settings.name} has no "
                                                 "medtwin role. Ask your administrator to give you one "
                                                 "(a clinical role, your wards and care teams).") from None  # fmt: skip
        raise ApiError(401, exc.error, f"sign-in refused: {exc}") from None
    await platform.record(principal, "login", f"user:{principal.username or subject}", source=source,
                          detail=f"external OpenID Connect sign-in ({verifier.issuer})")  # fmt: skip
    return JSONBody(_me(principal))


@router.post("/signout/external")
async def signout_external(request: Request, principal: Principal = Depends(caller)) -> JSONBody:
    """Sign out an external issuer's user: this API refuses the access token (and its session's, ``sid``) from now
    on; the browser then ends the session at the issuer (its ``end_session_endpoint``). Audited as ``logout``."""
    platform = platform_of(request)
    if platform.oidc is None or principal.issuer != platform.oidc.issuer:
        raise ApiError(400, "invalid", "this is not a token of the external issuer (use /oauth/revoke)")
    header = request.headers.get("authorization", "")
    await run_in_threadpool(platform.revoke_external, header[7:].strip(), principal)
    await platform.record(principal, "logout", "session", source=source_of(request),
                          detail=f"external OpenID Connect sign-out ({platform.oidc.issuer})")  # fmt: skip
    return JSONBody({"revoked": True})


@router.get("/me")
async def me(request: Request, principal: Principal = Depends(caller)) -> JSONBody:
    """Who is signed in (the token's subject, role, wards and care teams, and whether the password is medtwin's)."""
    return JSONBody(_me(principal, local_issuer=platform_of(request).settings.issuer))


@router.post("/me/password")
async def change_own_password(request: Request, principal: Principal = Depends(caller)) -> JSONBody:
    """The signed-in user changes their own password (``{"current_password", "new_password"}``) with
    :meth:`medtwin.security.accounts.Accounts.change_password`: the current password is checked, the new one must
    pass the policy (NIST SP 800-63B 5.1.1.2: 8 to 256 characters, not the user name, not the current one), and
    every other session of the user ends while this one goes on. Audited as an ``update`` of the user, refusals
    included, never with a password. 403 ``wrong-password`` for a wrong current password, 400 ``password-policy``
    naming the rule, 409 when the account's password is not medtwin's (the hospital's identity provider)."""
    platform = platform_of(request)
    body = await _json(request)
    current, new = body.get("current_password"), body.get("new_password")
    if not isinstance(current, str) or not isinstance(new, str) or not current:
        raise ApiError(400, "invalid", 'the body needs {"current_password", "new_password"} (two strings)')
    found = None
    if principal.issuer == platform.settings.issuer and principal.client_id != principal.subject:
        found = await run_in_threadpool(platform.accounts.user, principal.subject)
    if found is None or found.user_id != principal.subject:
        raise ApiError(409, "conflict", "this sign-in has no medtwin password to change (an account of the "
                                        "hospital's identity provider changes its password there)")  # fmt: skip
    user, how = found, "web app account page"
    try:
        _, ended = await run_in_threadpool(lambda: platform.accounts.change_password(
            user.username, current, new, keep_session=principal.session_id))  # fmt: skip
    except CurrentPasswordError:
        await audit_password_change(request, user, by=principal, refused="wrong current password", how=how)
        raise ApiError(403, "wrong-password", "current_password: this is not your current password") from None
    except PasswordPolicyError as exc:
        await audit_password_change(request, user, by=principal, refused=str(exc), how=how)
        raise ApiError(400, "password-policy", f"new_password: {exc}") from None
    except AccountError as exc:  # an administrator reset it meanwhile
        await audit_password_change(request, user, by=principal, refused=str(exc), how=how)
        raise ApiError(409, "conflict", str(exc)) from None
    await audit_password_change(request, user, by=principal, ended=ended, how=how)
    return JSONBody({"changed": True, "other_sessions_ended": ended})


def _row(store: Any, pid: str, unit: str | None, bed: str | None, now: datetime) -> dict[str, Any]:
    return data.board_row(store, pid, unit=unit, bed=bed, now=now)


@router.get("/ward")
async def ward(request: Request, unit: str | None = Query(None, max_length=80),
               principal: Principal = Depends(caller)) -> JSONBody:  # fmt: skip
    """The ward board: every patient with an open encounter on the caller's wards (admins and pharmacists: every
    ward, or *unit*), or in the caller's care teams."""
    _identified_only(principal)
    what = "Patient?ward=" + (unit or ",".join(sorted(principal.wards)) or "*")
    await require(request, principal, "Observation", "s", what)
    platform = platform_of(request)
    store = platform.store
    if principal.role in ("admin", "pharmacist"):
        wards: list[str] | None = None if unit is None else [unit]
    else:
        wards = sorted(principal.wards) if unit is None else [w for w in principal.wards if w == unit]
    listed: list[tuple[str, str | None, str | None]] = list(await run_in_threadpool(data.ward_patients, store, wards))
    if principal.teams:
        team_ids = platform.accounts.patients_of(sorted(principal.teams))
        seen = {pid for pid, _, _ in listed}
        everyone = {pid: (u, b) for pid, u, b in await run_in_threadpool(data.ward_patients, store, None)}
        listed += [(pid, *everyone.get(pid, (None, None))) for pid in sorted(team_ids - seen)]
    rows = []
    now = datetime.now(UTC)
    for pid, unit_name, bed in listed:
        access = await patient_access(request, principal, pid, "Observation", "s", what, raise_denied=False,
                                      audit_denied=False)  # fmt: skip
        if access is None or access.deidentify:
            continue
        rows.append(await run_in_threadpool(_row, store, pid, unit_name, bed, now))
    await platform.record(principal, "search", what, source=source_of(request), detail=f"{len(rows)} patients")
    units = sorted({u for _, u, _ in await run_in_threadpool(data.ward_patients, store, None) if u})
    return JSONBody({"wards": wards, "all_units": units if principal.role in ("admin", "pharmacist") else None,
                     "rows": rows, "at": now.isoformat()})  # fmt: skip


@router.get("/ward/row/{patient_id}")
async def ward_row(request: Request, patient_id: str, principal: Principal = Depends(caller)) -> JSONBody:
    """One board row (the board fetches it when the live stream says the patient changed)."""
    what = f"Patient/{patient_id}/board"
    await _patient(request, principal, patient_id, "Observation", "r", what)
    platform = platform_of(request)
    store = platform.store
    where = await run_in_threadpool(lambda: data.ward_of(store.encounters(patient_id)))
    row = await run_in_threadpool(lambda: data.board_row(store, patient_id, unit=where[0] if where else None,
                                                         bed=where[1] if where else None))  # fmt: skip
    await platform.record(principal, "read", what, patient_id=patient_id, source=source_of(request))
    return JSONBody(row)


@router.get("/ward/rows")
async def ward_rows(request: Request, ids: str = Query(..., max_length=40_000),
                    principal: Principal = Depends(caller)) -> JSONBody:  # fmt: skip
    """Several board rows at once (comma-separated patient ids, at most 500): the board's live refresh, without the
    NEWS2 trend (the board appends the new score to the trend it has). A patient the caller may not see is left out
    (audited as a denial)."""
    import asyncio

    _identified_only(principal)
    wanted = list(dict.fromkeys(i for i in ids.split(",") if i))[:500]
    what = "Patient?board-rows"
    await require(request, principal, "Observation", "r", what)
    platform = platform_of(request)
    store = platform.store
    allowed = []
    for pid in wanted:
        if len(pid) > 64:
            continue
        access = await patient_access(request, principal, pid, "Observation", "r", f"Patient/{pid}/board",
                                      raise_denied=False)  # fmt: skip
        if access is not None and not access.deidentify:
            allowed.append(pid)

    def read() -> list[dict[str, Any]]:
        out = []
        for pid in allowed:
            where = data.ward_of(store.encounters(pid))
            out.append(data.board_row(store, pid, unit=where[0] if where else None, bed=where[1] if where else None,
                                      trend=False))  # fmt: skip
        return out

    rows = await run_in_threadpool(read)
    source = source_of(request)
    await asyncio.gather(*(platform.record(principal, "read", f"Patient/{pid}/board", patient_id=pid, source=source)
                           for pid in allowed))  # fmt: skip
    return JSONBody({"rows": rows})


@router.get("/patients")
async def patients(request: Request, q: str | None = Query(None, max_length=100),
                   principal: Principal = Depends(caller)) -> JSONBody:  # fmt: skip
    """Patients the caller reaches (name or MRN containing *q*), for the patient list."""
    _identified_only(principal)
    what = "Patient?list"
    await require(request, principal, "Patient", "s", what)
    platform = platform_of(request)
    store = platform.store
    found = await run_in_threadpool(store.patients)
    encounters = await run_in_threadpool(store.encounters)
    open_units: dict[str, str] = {}
    for e in encounters:
        if e.end is None and e.locations:
            open_units[e.patient_id] = e.locations[-1].unit
    out = []
    needle = (q or "").strip().lower()
    for p in found:
        name, mrn = data._name(p) or "", data._mrn(p) or ""
        if needle and needle not in name.lower() and needle not in mrn.lower():
            continue
        access = await patient_access(request, principal, p.patient_id, "Patient", "s", what, raise_denied=False,
                                      audit_denied=False)  # fmt: skip
        if access is None or access.deidentify:
            continue
        out.append({"id": p.patient_id, "name": name, "mrn": mrn, "gender": p.gender,
                    "birth_date": p.birth_date.isoformat() if p.birth_date else None,
                    "unit": open_units.get(p.patient_id)})  # fmt: skip
    await platform.record(principal, "search", what, source=source_of(request), detail=f"{len(out)} listed")
    return JSONBody({"patients": out})


@router.get("/patient/{patient_id}")
async def patient(request: Request, patient_id: str, hours: float = Query(24.0, gt=0, le=24 * 30),
                  principal: Principal = Depends(caller)) -> JSONBody:  # fmt: skip
    """The patient page: summary, vitals and NEWS2 series, alert timeline, record summary."""
    what = f"Patient/{patient_id}"
    await _patient(request, principal, patient_id, "Patient", "r", what)
    platform = platform_of(request)
    try:
        view = await run_in_threadpool(data.patient_view, platform.store, patient_id, hours=hours)
    except KeyError:
        raise not_found(what) from None
    await platform.record(principal, "read", what, patient_id=patient_id, source=source_of(request),
                          detail="web: patient page")  # fmt: skip
    return JSONBody(view)


@router.get("/patient/{patient_id}/glucose")
async def glucose(request: Request, patient_id: str, principal: Principal = Depends(caller)) -> JSONBody:
    """CGM trace, AGP bands, consensus metrics."""
    what = f"Observation?patient={patient_id}&code=glucose"
    await _patient(request, principal, patient_id, "Observation", "s", what)
    platform = platform_of(request)
    view = await run_in_threadpool(data.glucose_view, platform.store, patient_id)
    await platform.record(principal, "search", what, patient_id=patient_id, source=source_of(request))
    return JSONBody(view)


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApiError(400, "invalid", f"{key}: a number is required")
    try:
        return float(value)
    except ValueError:
        raise ApiError(400, "invalid", f"{key}: {value!r} is not a number") from None


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "invalid", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "the body must be a JSON object")
    return body


@router.post("/patient/{patient_id}/glucose/whatif")
async def glucose_whatif(request: Request, patient_id: str, principal: Principal = Depends(caller)) -> JSONBody:
    """The twin's replay of the recorded days under the recorded therapy and under a changed one (bolus and basal
    scale, bolus shift, meal size)."""
    what = f"Patient/{patient_id}/glucose-twin/what-if"
    await _patient(request, principal, patient_id, "Observation", "r", what)
    body = await _json(request)
    args = {k: _number(body, k, d) for k, d in (("bolus_scale", 1.0), ("basal_scale", 1.0), ("bolus_shift_min", 0.0),
                                                 ("meal_scale", 1.0))}  # fmt: skip
    platform = platform_of(request)
    try:
        out = await run_in_threadpool(
            lambda: data.glucose_whatif(platform.store, patient_id, bolus_scale=args["bolus_scale"],
                                        basal_scale=args["basal_scale"], bolus_shift_min=args["bolus_shift_min"],
                                        meal_scale=args["meal_scale"])
        )  # fmt: skip
    except KeyError:
        raise ApiError(404, "not-found", "this patient has no glucose twin") from None
    except MedtwinError as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    await platform.record(principal, "read", what, patient_id=patient_id, source=source_of(request),
                          detail=f"what-if {args}")  # fmt: skip
    return JSONBody(out)


@router.get("/patient/{patient_id}/dosing")
async def dosing(request: Request, patient_id: str, principal: Principal = Depends(caller)) -> JSONBody:
    """Vancomycin doses and levels, MAP fit and prediction band, regimen options."""
    what = f"MedicationAdministration?patient={patient_id}&dosing"
    await _patient(request, principal, patient_id, "MedicationAdministration", "s", what)
    platform = platform_of(request)
    try:
        out = await run_in_threadpool(data.dosing_view, platform.store, patient_id)
    except KeyError:
        raise ApiError(404, "not-found", "this patient has no vancomycin course in the record") from None
    except MedtwinError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    await platform.record(principal, "read", what, patient_id=patient_id, source=source_of(request))
    return JSONBody(out)


def _entry(body: Any) -> dosing_entry.Entry:
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "the entered data must be a JSON object")
    try:
        return dosing_entry.parse_entry(body)
    except dosing_entry.EntryError as exc:
        raise ApiError(400, "invalid", f"entered dosing data refused (nothing computed or stored): {exc}",
                       issues=exc.issues) from None  # fmt: skip


@router.post("/patient/{patient_id}/dosing/entered")
async def dosing_entered(request: Request, patient_id: str, principal: Principal = Depends(caller)) -> JSONBody:
    """The dosing panel of an entered case: the record's doses and levels plus entered ones (and an entered weight
    or creatinine), MAP fit, band, regimen options. Nothing is written into the record
    (:mod:`medtwin.server.web.dosing_entry`)."""
    what = f"MedicationAdministration?patient={patient_id}&dosing&entered"
    await _patient(request, principal, patient_id, "MedicationAdministration", "s", what)
    entry = _entry(await _json(request))
    platform = platform_of(request)
    try:
        out = await run_in_threadpool(dosing_entry.entered_view, platform.store, patient_id, entry)
    except MedtwinError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    await platform.record(principal, "read", what, patient_id=patient_id, source=source_of(request),
                          detail=f"entered case: {entry.n_rows} entered value(s), include_record="
                                 f"{entry.include_record}")  # fmt: skip
    return JSONBody(out)


@router.post("/patient/{patient_id}/dosing/propose")
async def propose(request: Request, patient_id: str, principal: Principal = Depends(caller)) -> JSONBody:
    """Store the chosen regimen as a MedicationRequest proposal (intent ``proposal``, status ``draft``), audited;
    with ``"entered": {...}`` (the body of ``dosing/entered``), the regimen of that entered case."""
    what = f"MedicationRequest?patient={patient_id}&proposal"
    await _patient(request, principal, patient_id, "MedicationRequest", "c", what)
    body = await _json(request)
    interval = body.get("interval_h")
    interval_h = None if interval is None else _number(body, "interval_h", 0.0)
    entry = None if body.get("entered") is None else _entry(body["entered"])
    platform = platform_of(request)
    try:
        if entry is None:
            records = await run_in_threadpool(
                lambda: data.dosing_proposal_records(platform.store, patient_id, interval_h=interval_h)
            )
        else:
            records = await run_in_threadpool(
                lambda: dosing_entry.entered_proposal_records(platform.store, patient_id, entry, interval_h=interval_h)
            )
    except KeyError:
        raise ApiError(404, "not-found", "this patient has no vancomycin course in the record") from None
    except MedtwinError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    await run_in_threadpool(platform.store.write, records)
    request_record = records[0]
    from_entered = "" if entry is None else f", from entered data ({entry.n_rows} value(s))"
    await platform.record(principal, "create", f"MedicationRequest/{request_record.request_id}",
                          patient_id=patient_id, source=source_of(request),
                          detail=f"dosing proposal {request_record.dose.value:g} mg every "
                                 f"{request_record.interval_h:g} h" + from_entered)  # fmt: skip
    return JSONBody({"request_id": request_record.request_id, "intent": request_record.intent,
                     "status": request_record.status, "dose_mg": request_record.dose.value,
                     "interval_h": request_record.interval_h, "note": request_record.note,
                     "from_entered": entry is not None}, 201)  # fmt: skip


# -- hospital ------------------------------------------------------------------------------------------------------
def _hospital_role(principal: Principal) -> None:
    if principal.role not in (*_CLINICAL, "researcher"):
        raise ApiError(403, "forbidden", f"the hospital view is not available to the {principal.role} role")


@router.get("/hospital")
async def hospital(request: Request, horizon_h: int = Query(72, ge=24, le=72),
                   principal: Principal = Depends(caller)) -> JSONBody:  # fmt: skip
    """Census by unit and the occupancy forecast of the example hospital (no patient data)."""
    _hospital_role(principal)
    platform = platform_of(request)
    reps = int(platform.extra.get("web.hospital_reps", 40))
    out = await run_in_threadpool(lambda: data.hospital_view(horizon_h=horizon_h, n_reps=reps))
    await platform.record(principal, "read", "Hospital/forecast", source=source_of(request))
    return JSONBody(out)


@router.post("/hospital/whatif")
async def hospital_whatif(request: Request, principal: Principal = Depends(caller)) -> JSONBody:
    """Baseline and one scenario (beds, staffing, surge) side by side."""
    _hospital_role(principal)
    body = await _json(request)
    platform = platform_of(request)
    reps = int(platform.extra.get("web.whatif_reps", 8))
    try:
        out = await run_in_threadpool(lambda: data.hospital_whatif(body, n_reps=reps))
    except (MedtwinError, ValueError, TypeError) as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    await platform.record(principal, "read", "Hospital/what-if", source=source_of(request), detail=str(body)[:200])
    return JSONBody(out)


# -- administration --------------------------------------------------------------------------------------------------
@router.get("/admin/users")
async def admin_users(request: Request, principal: Principal = Depends(caller)) -> JSONBody:
    """Users and roles."""
    _admin_only(principal)
    platform = platform_of(request)
    users = await run_in_threadpool(platform.accounts.users)
    await platform.record(principal, "search", "User?all", source=source_of(request))
    return JSONBody({"users": [_user_json(u) for u in users], "roles": list(ROLES)})


def _user_json(u: Any) -> dict[str, Any]:
    return {"id": u.user_id, "username": u.username, "role": u.role, "wards": list(u.wards), "teams": list(u.teams),
            "disabled": u.disabled, "password_change_required": u.password_change_required}  # fmt: skip


def _name_list(body: dict[str, Any], key: str) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str):  # the form's comma-separated field
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "invalid", f"{key}: a list of names (or one comma-separated string) is required")
    return value


@router.post("/admin/users")
async def admin_create_user(request: Request, principal: Principal = Depends(caller)) -> JSONBody:
    """Create a user (``{"username", "role", "password"?, "wards"?, "teams"?}``) with an argon2id password hash
    (:meth:`medtwin.security.accounts.Accounts.add_user`, as ``medtwin users add``). Without a password, a random
    initial password is made and answered once (it is not stored or audited in clear); either way the user must
    change it at their first sign-in. Audited as ``create``."""
    _admin_only(principal)
    body = await _json(request)
    username, role, password = body.get("username"), body.get("role"), body.get("password")
    if not isinstance(username, str) or not username.strip():
        raise ApiError(400, "invalid", "username: a name is required")
    if not isinstance(role, str):
        raise ApiError(400, "invalid", "role: one of " + ", ".join(ROLES))
    if password is not None and not isinstance(password, str):
        raise ApiError(400, "invalid", "password: a string (or leave it out for a random initial password, shown once)")
    wards, teams = _name_list(body, "wards") or [], _name_list(body, "teams") or []
    generated = None if password else secrets.token_urlsafe(12)
    initial: str = password or generated or ""
    platform = platform_of(request)
    try:
        user = await run_in_threadpool(lambda: platform.accounts.add_user(
            username.strip(), initial, role, wards=wards, teams=teams, password_change_required=True))  # fmt: skip
    except AccountError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except MedtwinError as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    how = "initial password generated" if generated else "password set by the admin"
    await platform.record(principal, "create", f"User/{user.user_id}", source=source_of(request),
                          detail=f"user {user.username}: role {user.role}, wards {list(user.wards)}, teams "
                                 f"{list(user.teams)}, {how}, to be changed at the first sign-in")  # fmt: skip
    out = _user_json(user)
    if generated is not None:
        out["initial_password"] = generated
    return JSONBody(out, 201)


@router.post("/admin/users/{username}/access")
async def admin_user_access(request: Request, username: str, principal: Principal = Depends(caller)) -> JSONBody:
    """Change a user's role, wards or care teams (``{"role"?, "wards"?, "teams"?}``); admins cannot change their
    own role (no lock-out by mistake). Issued tokens keep their claims until they expire; audited as ``update``."""
    _admin_only(principal)
    body = await _json(request)
    role = body.get("role")
    if role is not None and not isinstance(role, str):
        raise ApiError(400, "invalid", "role: one of " + ", ".join(ROLES))
    wards, teams = _name_list(body, "wards"), _name_list(body, "teams")
    platform = platform_of(request)
    before = await run_in_threadpool(platform.accounts.user, username)
    if before is None or before.username != username:
        raise ApiError(404, "not-found", f"no user named {username!r}")
    if role is not None and role != before.role and before.user_id == principal.subject:
        raise ApiError(409, "conflict", "you cannot change your own role (ask another admin)")
    try:
        user = await run_in_threadpool(lambda: platform.accounts.update_user(username, role=role, wards=wards,
                                                                             teams=teams))  # fmt: skip
    except AccountError as exc:
        raise ApiError(404, "not-found", str(exc)) from None
    except MedtwinError as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    changes = [f"{k} {getattr(before, k)!r} -> {getattr(user, k)!r}" for k in ("role", "wards", "teams")
               if getattr(before, k) != getattr(user, k)]  # fmt: skip
    await platform.record(principal, "update", f"User/{user.user_id}", source=source_of(request),
                          detail="; ".join(changes) or "no change")  # fmt: skip
    return JSONBody(_user_json(user))


@router.post("/admin/users/{username}/disabled")
async def admin_disable(request: Request, username: str, principal: Principal = Depends(caller)) -> JSONBody:
    """Disable (``{"disabled": true}``) or enable a user."""
    _admin_only(principal)
    body = await _json(request)
    platform = platform_of(request)
    try:
        user = await run_in_threadpool(platform.accounts.set_disabled, username, bool(body.get("disabled", True)))
    except MedtwinError as exc:
        raise ApiError(404, "not-found", str(exc)) from None
    await platform.record(principal, "update", f"User/{user.user_id}", source=source_of(request),
                          detail=f"disabled={user.disabled}")  # fmt: skip
    return JSONBody({"username": user.username, "disabled": user.disabled})


@router.post("/admin/users/{username}/password")
async def admin_reset_password(request: Request, username: str, principal: Principal = Depends(caller)) -> JSONBody:
    """Reset a user's password to a random one, answered once (``new_password``) to be handed to the user in person;
    the argon2id hash replaces the old one, every session of the user ends
    (:meth:`medtwin.security.accounts.Accounts.set_password`, as ``medtwin users passwd``) and the user must change
    it at their next sign-in. Audited as ``update`` without the password. An admin changes their own password on
    the account page (``POST /app/api/me/password``) or with ``medtwin users passwd`` (409 here: no lock-out)."""
    _admin_only(principal)
    platform = platform_of(request)
    before = await run_in_threadpool(platform.accounts.user, username)
    if before is None or before.username != username:
        raise ApiError(404, "not-found", f"no user named {username!r}")
    if before.user_id == principal.subject:
        raise ApiError(
            409,
            "conflict",
            "you cannot reset your own password here: change it on your account page "
            "(/app/account) or with `medtwin users passwd`",
        )
    password = secrets.token_urlsafe(12)
    try:
        user, ended = await run_in_threadpool(
            lambda: platform.accounts.set_password(username, password, password_change_required=True)
        )
    except AccountError as exc:
        raise ApiError(404, "not-found", str(exc)) from None
    await platform.record(principal, "update", f"User/{user.user_id}", source=source_of(request),
                          detail=f"user {user.username}: password reset by an admin (random password generated, "
                                 f"shown once, to be changed at the next sign-in); {ended} session(s) "
                                 "ended")  # fmt: skip
    return JSONBody({**_user_json(user), "new_password": password, "sessions_ended": ended})


@router.get("/admin/careteams")
async def admin_careteams(request: Request, principal: Principal = Depends(caller)) -> JSONBody:
    """Care-team membership (team, patient) with the patients' names."""
    from medtwin.store.access_tables import care_team_patients

    _admin_only(principal)
    platform = platform_of(request)

    def read() -> list[dict[str, Any]]:
        with platform.store.engine.connect() as conn:
            rows = list(conn.execute(select(care_team_patients.c.team, care_team_patients.c.patient_id)))
        out = []
        for team, pid in rows:
            p = platform.store.patient(pid)
            out.append({"team": team, "patient_id": pid, "name": None if p is None else data._name(p)})
        return sorted(out, key=lambda r: (r["team"], r["name"] or ""))

    teams = await run_in_threadpool(read)
    await platform.record(principal, "search", "CareTeam?all", source=source_of(request))
    return JSONBody({"assignments": teams})


@router.post("/admin/careteams")
async def admin_assign(request: Request, principal: Principal = Depends(caller)) -> JSONBody:
    """Assign (``{"team", "patient_id"}``) or, with ``"remove": true``, unassign a patient."""
    _admin_only(principal)
    body = await _json(request)
    team, pid = str(body.get("team", "")).strip(), str(body.get("patient_id", "")).strip()
    if not team or not pid:
        raise ApiError(400, "invalid", "team and patient_id are required")
    platform = platform_of(request)
    if await run_in_threadpool(platform.store.patient, pid) is None:
        raise not_found(f"Patient/{pid}")
    if body.get("remove"):
        await run_in_threadpool(platform.accounts.unassign, team, pid)
    else:
        await run_in_threadpool(platform.accounts.assign, team, pid)
    platform.policy.invalidate(pid)
    await platform.record(principal, "update", f"CareTeam/{team}", patient_id=pid, source=source_of(request),
                          detail="unassign" if body.get("remove") else "assign")  # fmt: skip
    return JSONBody({"team": team, "patient_id": pid, "assigned": not body.get("remove")})


@router.get("/admin/consents")
async def admin_consents(request: Request, principal: Principal = Depends(caller)) -> JSONBody:
    """Consent resources on record (FHIR Consent: status, scope, provision)."""
    from medtwin.store import schema

    _admin_only(principal)
    platform = platform_of(request)

    def read() -> list[dict[str, Any]]:
        import orjson

        t = schema.fhir_resources
        with platform.store.engine.connect() as conn:
            rows = list(conn.execute(select(t.c.patient_id, t.c.body).where(t.c.resource_type == "Consent")))
        out = []
        for pid, body in rows:
            c = orjson.loads(body)
            scope = ((c.get("scope") or {}).get("coding") or [{}])[0]
            provision = c.get("provision") or {}
            out.append({"patient_id": pid, "id": c.get("id"), "status": c.get("status"),
                        "scope": scope.get("code"), "provision": provision.get("type"),
                        "period": provision.get("period"), "date": c.get("dateTime")})  # fmt: skip
        return out

    consents = await run_in_threadpool(read)
    await platform.record(principal, "search", "Consent?all", source=source_of(request))
    return JSONBody({"consents": consents})


def _audit_json(r: Any) -> dict[str, Any]:
    e = r.event
    return {"seq": r.seq, "time": e.time.isoformat(), "actor": e.actor, "role": e.role, "action": e.action,
            "resource": e.resource, "patient_id": e.patient_id, "outcome": e.outcome, "source": e.source,
            "purpose": e.purpose, "detail": e.detail}  # fmt: skip


@router.get("/admin/audit")
async def admin_audit(request: Request, limit: int = Query(200, ge=1, le=2000),
                      principal: Principal = Depends(caller)) -> JSONBody:  # fmt: skip
    """The newest audit records, the chain's verification and the break-glass review list."""
    _admin_only(principal)
    platform = platform_of(request)
    trail = platform.audit
    if trail is None:
        return JSONBody({"enabled": False, "records": [], "verify": None, "break_glass": []})
    await run_in_threadpool(trail.flush)

    def read() -> dict[str, Any]:
        total = trail.count()
        records = trail.records(after=max(0, total - limit))
        result = trail.verify()
        glass = trail.review()
        return {"enabled": True, "total": total, "records": [_audit_json(r) for r in reversed(records)],
                "verify": {"ok": result.ok, "first_bad_seq": result.first_bad_seq, "reason": result.reason,
                           "records": result.records, "checkpoints": result.checkpoints},
                "break_glass": [_audit_json(r) for r in reversed(glass)]}  # fmt: skip

    out = await run_in_threadpool(read)
    await platform.record(principal, "search", "AuditEvent?all", source=source_of(request))
    return JSONBody(out)
