"""The medtwin API server (floor 3): FastAPI on uvicorn, FHIR R4 facade, platform JSON API, live events.

:func:`create_app` builds the ASGI application over a :class:`Platform` (store, accounts, tokens, policy, audit).
``medtwin serve`` runs it (docs/security.md, docs/api.md).
"""

from medtwin.server.app import create_app
from medtwin.server.platform import UNSECURED, Platform, ServerSettings

__all__ = ["UNSECURED", "Platform", "ServerSettings", "create_app"]
