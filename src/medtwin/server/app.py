"""The FastAPI application: routes, error answers, hardening, and the lifecycle of its :class:`Platform`.

``create_app(platform)`` wires an opened platform in; ``medtwin serve`` opens one from its options and runs the app
on uvicorn (HTTPS with ``--tls-cert/--tls-key``). OpenAPI is published at ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from medtwin.server import fhir_api, oauth, rest, stream, web
from medtwin.server.errors import ApiError, error_response
from medtwin.server.hardening import Hardening, RateLimiter
from medtwin.server.platform import Platform

__all__ = ["create_app"]


def _is_fhir(request: Request) -> bool:
    return request.url.path.startswith("/fhir")


def _validation_message(exc: RequestValidationError) -> tuple[str, list[tuple[str | None, str]]]:
    issues: list[tuple[str | None, str]] = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        issues.append((where or None, str(err.get("msg", "invalid"))))
    summary = "; ".join(f"{p}: {m}" if p else m for p, m in issues) or "invalid request"
    return summary, issues


def create_app(platform: Platform, *, close_platform: bool = False) -> Any:
    """The ASGI application serving *platform* (closed with the app when *close_platform*).

    Returns the hardened ASGI app (security headers, size limit, rate limit around FastAPI); the FastAPI object
    is its ``fastapi`` attribute.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            broker = platform.extra.get("broker")
            if broker is not None:
                broker.close()
            if close_platform:
                platform.close()

    api = FastAPI(
        title="medtwin",
        version="0.1.0",
        description="medtwin platform API: FHIR R4 facade, patients, twins, alerts, live events. OAuth2 bearer "
        "tokens with SMART v2 scopes.",
        lifespan=lifespan,
    )
    api.state.platform = platform

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc, fhir=_is_fhir(request))

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        summary, issues = _validation_message(exc)
        return error_response(ApiError(400, "invalid", summary, issues=issues), fhir=_is_fhir(request))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "error")
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        return error_response(ApiError(exc.status_code, code, message), fhir=_is_fhir(request))

    api.include_router(rest.router)
    api.include_router(fhir_api.router)
    api.include_router(oauth.router)
    api.include_router(stream.router)
    web.install(api)  # the web app: pages under /app, their JSON under /app/api (medtwin.server.web)
    app: Any = api
    settings = platform.settings
    if settings.cors_origins:  # closed by default: no Access-Control-Allow-Origin at all
        app = CORSMiddleware(
            app,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=False,
        )
    limiter = RateLimiter(settings.rate_per_s, settings.rate_burst) if settings.rate_per_s else None
    hardened = Hardening(app, max_body_bytes=settings.max_body_bytes, limiter=limiter, https=settings.https)
    hardened.fastapi = api
    return hardened
