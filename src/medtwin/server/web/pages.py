"""The web app's pages (Jinja2 templates rendered on the server) and its static files.

A page is a shell: layout, navigation, headings and empty regions that the page's script fills from
``/app/api/...`` with the signed-in user's token. No patient data is ever rendered into a page, so a page needs no
authentication of its own and the browser's back/forward cache holds nothing sensitive. Every page answers with a
Content-Security-Policy that allows scripts, styles and connections to this origin only (:data:`PAGE_CSP`).
Plotly.js is read from the installed ``plotly`` package (``plotly/package_data/plotly.min.js``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from medtwin.security.tokens import TokenError

__all__ = ["PAGES", "PAGE_CSP", "page_csp", "router"]

router = APIRouter(include_in_schema=False)

PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "object-src 'none'")  # fmt: skip
"""The pages' policy. Inline styles are allowed because Plotly.js sets style attributes on the SVG it draws;
no inline script, no other origin (but the external OpenID Connect issuer's, for connections only: the browser
exchanges its authorization code at that issuer's token endpoint, :func:`page_csp`)."""


def _origin(url: object) -> str | None:
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


async def page_csp(request: Request) -> str:
    """:data:`PAGE_CSP`, with ``connect-src`` widened to the external issuer's token and revocation endpoints when
    the web app signs in with one (their origins, from its discovery document)."""
    platform = getattr(request.app.state, "platform", None)
    settings = getattr(getattr(platform, "settings", None), "oidc", None)
    verifier = getattr(platform, "oidc", None)
    if settings is None or not settings.client_id or verifier is None:
        return PAGE_CSP
    origins = {_origin(verifier.issuer)}
    try:
        doc = await run_in_threadpool(verifier.discovery)
    except TokenError:
        doc = {}
    origins |= {_origin(doc.get(k)) for k in ("token_endpoint", "revocation_endpoint")}
    extra = " ".join(sorted(o for o in origins if o))
    return PAGE_CSP.replace("connect-src 'self'", f"connect-src 'self' {extra}")


#: path -> (template, title, script, roles that see it in the navigation)
PAGES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "ward": ("ward.html", "Ward board", "ward.js", ("admin", "clinician", "nurse", "pharmacist")),
    "patients": ("patients.html", "Patients", "patients.js", ("admin", "clinician", "nurse", "pharmacist")),
    "hospital": (
        "hospital.html",
        "Hospital",
        "hospital.js",
        ("admin", "clinician", "nurse", "pharmacist", "researcher"),
    ),
    "research": ("research.html", "Research", "research.js", ("researcher", "admin")),
    "admin": ("admin.html", "Administration", "admin.js", ("admin",)),
}
_STATIC = ("app.css", "app.js", "charts.js", "ward.js", "patients.js", "patient.js", "hospital.js", "research.js",
           "admin.js", "login.js", "callback.js", "account.js")  # fmt: skip
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(loader=PackageLoader("medtwin.server.web", "templates"), autoescape=select_autoescape(),
                       trim_blocks=True, lstrip_blocks=True)  # fmt: skip


async def _page(request: Request, template: str, *, status: int = 200, **context: object) -> HTMLResponse:
    nav = [(path, title, roles) for path, (_, title, _, roles) in PAGES.items()]
    html = _env().get_template(template).render(nav=nav, **context)
    return HTMLResponse(html, status, headers={"Content-Security-Policy": await page_csp(request)})


@router.get("/")
async def root() -> Response:
    """The web app."""
    return RedirectResponse("/app/", status_code=307)


@router.get("/app")
@router.get("/app/")
async def home(request: Request) -> Response:
    """The signed-in user's home page (chosen by role in the browser)."""
    return await _page(request, "home.html", title="medtwin", script="app.js", page="home")


@router.get("/app/login")
async def login(request: Request) -> Response:
    """Sign-in: starts the authorization-code flow with PKCE."""
    return await _page(request, "login.html", title="Sign in", script="login.js", page="login")


@router.get("/app/callback")
async def callback(request: Request) -> Response:
    """Where the issuer sends the browser back with the authorization code."""
    return await _page(request, "callback.html", title="Signing in", script="callback.js", page="callback")


@router.get("/app/account")
async def account(request: Request) -> Response:
    """The signed-in user's account: who they are, and the change of their own password (every role; reached from
    the header, not the navigation)."""
    return await _page(request, "account.html", title="Your account", script="account.js", page="account")


@router.get("/app/patient/{patient_id}")
async def patient_page(request: Request, patient_id: str) -> Response:
    """A patient's twin page (the id is checked here; the data is read, and access decided, by the API)."""
    if not _ID.match(patient_id):
        return await _page(request, "message.html", status=404, title="Not found", script="app.js", page="error",
                     message="No such page.")  # fmt: skip
    return await _page(request, "patient.html", title="Patient", script="patient.js", page="patient",
                       patient_id=patient_id)  # fmt: skip


@router.get("/app/static/vendor/plotly.min.js")
async def plotly_js() -> Response:
    """Plotly.js from the installed plotly package."""
    return FileResponse(_plotly_path(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


@router.get("/app/static/{name}")
async def static(name: str) -> Response:
    """The app's own stylesheet and scripts."""
    if name not in _STATIC:
        return Response("not found", 404, media_type="text/plain")
    path = resources.files("medtwin.server.web").joinpath("static", name)
    media = "text/css" if name.endswith(".css") else "text/javascript"
    return Response(path.read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"})


@router.get("/app/{page}")
async def named_page(request: Request, page: str) -> Response:
    """The ward board, patient list, hospital, research and administration pages."""
    entry = PAGES.get(page)
    if entry is None:
        return await _page(request, "message.html", status=404, title="Not found", script="app.js", page="error",
                     message="No such page.")  # fmt: skip
    template, title, script, roles = entry
    return await _page(request, template, title=title, script=script, page=page, roles=roles)


@lru_cache(maxsize=1)
def _plotly_path() -> Path:
    import plotly  # type: ignore[import-untyped]

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():  # pragma: no cover - a broken plotly install
        raise FileNotFoundError(f"{path}: plotly.min.js is missing from the installed plotly package")
    return path
