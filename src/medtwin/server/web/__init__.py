"""The clinician and command-centre web app, served by ``medtwin serve`` on the same origin as the API.

Server-rendered page shells (Jinja2 templates) with a little JavaScript of our own: the pages hold no patient data;
the browser signs in with the built-in issuer's authorization-code flow with PKCE (public client ``medtwin-web``)
and reads every screen's data from ``/app/api/...`` with its bearer token, under the same access rules and audit as
the rest of the API (:mod:`medtwin.server.web.api`). Live updates come over the API's Server-Sent Events stream.
Charts are drawn by Plotly.js, served from the installed ``plotly`` Python package (nothing from a CDN).
See docs/web.md.
"""

from __future__ import annotations

from typing import Any

from medtwin.server.web.api import CLIENT_ID
from medtwin.server.web.api import router as api_router
from medtwin.server.web.pages import PAGE_CSP
from medtwin.server.web.pages import router as page_router

__all__ = ["CLIENT_ID", "PAGE_CSP", "install", "register_client"]


def install(app: Any) -> None:
    """Add the web app's pages, static files and JSON endpoints to the FastAPI application *app*; register the
    web app's OAuth client for the server's own origin (its issuer URL) when it is not registered yet."""
    app.include_router(page_router)
    app.include_router(api_router)
    platform = getattr(app.state, "platform", None)
    issuer = getattr(getattr(platform, "settings", None), "issuer", "")
    if platform is not None and str(issuer).startswith(("http://", "https://")):
        origins = [issuer]
        if "://127.0.0.1:" in issuer:
            origins.append(issuer.replace("://127.0.0.1:", "://localhost:"))
        register_client(platform.accounts, origins)


def register_client(accounts: Any, origins: list[str]) -> None:
    """Register the web app's public OAuth client with its ``/app/callback`` redirect at each of *origins*
    (``http://127.0.0.1:8000``...); an existing registration is left as it is."""
    if accounts.client(CLIENT_ID) is not None:
        return
    uris = [f"{o.rstrip('/')}/app/callback" for o in origins]
    accounts.add_client(CLIENT_ID, "clinician", "openid user/*.cruds", redirect_uris=uris, public=True)
