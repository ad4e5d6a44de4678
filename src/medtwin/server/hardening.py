"""Transport hardening as one ASGI middleware: security headers, request size limit, per-client rate limit.

* Security headers on every answer: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, a
  ``Content-Security-Policy`` that allows nothing (an API serves no pages to frame or scripts to run; the login
  form of the authorization-code flow allows its own form only), ``Referrer-Policy: no-referrer``,
  ``Cache-Control: no-store`` (patient data must not stay in shared caches), and ``Strict-Transport-Security``
  when serving HTTPS.
* A body larger than ``max_body_bytes`` is refused with 413 before the application reads it: at once when
  ``Content-Length`` says so, and as soon as a chunked body passes the limit.
* Rate limit: a token bucket per client (the bearer token, else the source address): ``rate_per_s`` requests a
  second on average, bursts of ``burst``; past it, 429 with ``Retry-After`` (seconds).

Written as plain ASGI (not Starlette's ``BaseHTTPMiddleware``) so that it costs microseconds per request.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from medtwin.server.errors import ApiError, operation_outcome

__all__ = ["Hardening", "RateLimiter"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BASE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_CSP_API = b"default-src 'none'; frame-ancestors 'none'"
_CSP_FORM = b"default-src 'none'; form-action 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class RateLimiter:
    """Token buckets keyed by client: *rate_per_s* refill, *burst* capacity; at most *max_clients* kept."""

    def __init__(
        self, rate_per_s: float, burst: int, *, max_clients: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Take one token for *key*: 0.0 when allowed, else the seconds until one is available."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= self.max_clients and key not in self._buckets:
            full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
            for k in full or list(self._buckets)[: self.max_clients // 10]:
                del self._buckets[k]
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class Hardening:
    """Wraps the application *app* (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        limiter: RateLimiter | None,
        https: bool = False,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limiter = limiter
        self.https = https
        self.fastapi: Any = None  # the FastAPI application inside, set by create_app

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str, headers: list[Any]) -> None:
        fhir = str(scope.get("path", "")).startswith("/fhir")
        if fhir:
            body = orjson.dumps(operation_outcome(status, message))
            media = b"application/fhir+json"
        else:
            code = "too-many-requests" if status == 429 else "too-large"
            body = orjson.dumps({"error": code, "message": message})
            media = b"application/json"
        start = [
            (b"content-type", media),
            (b"content-length", str(len(body)).encode()),
            *headers,
            *_BASE_HEADERS,
            (b"content-security-policy", _CSP_API),
        ]
        await send({"type": "http.response.start", "status": status, "headers": start})
        await send({"type": "http.response.body", "body": body})

    def _client_key(self, scope: Scope) -> str:
        auth = _header(scope, b"authorization")
        if auth:
            return "t:" + hashlib.blake2b(auth, digest_size=12).hexdigest()
        query = scope.get("query_string", b"")
        if b"access_token=" in query:  # the live stream's token in the URL (browsers cannot set headers there)
            return "q:" + hashlib.blake2b(query, digest_size=12).hexdigest()
        client = scope.get("client")
        return "a:" + (str(client[0]) if client else "?")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.limiter is not None:
            wait = self.limiter.take(self._client_key(scope))
            if wait > 0.0:
                if kind == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": "rate limit"})
                    return
                retry = str(max(1, math.ceil(wait)))
                await self._refuse(
                    scope, send, 429, f"rate limit exceeded; retry after {retry} s", [(b"retry-after", retry.encode())]
                )
                return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(scope, send, 400, "Content-Length is not a number", [])
                return
            if size > limit:
                await self._refuse(scope, send, 413, f"request body of {size} bytes is over the limit of {limit}", [])
                return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLargeError(413, "too-large", f"request body is over the limit of {limit} bytes")
            return message

        started = False
        form = str(scope.get("path", "")).startswith("/oauth/authorize")

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.extend(_BASE_HEADERS)
                if not any(k.lower() == b"content-security-policy" for k, _ in headers):  # a web page sets its own
                    headers.append((b"content-security-policy", _CSP_FORM if form else _CSP_API))
                if self.https:
                    headers.append(_HSTS)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLargeError:
            if not started:
                await self._refuse(scope, send, 413, f"request body is over the limit of {limit} bytes", [])
        except Exception:
            if too_large and not started:
                await self._refuse(scope, send, 413, f"request body is over the limit of {limit} bytes", [])
                return
            raise


class _BodyTooLargeError(ApiError):
    """Raised inside the application's receive when the body passes the limit (answered 413 by the app's handler
    of :class:`ApiError`, or here when it escapes the application)."""
