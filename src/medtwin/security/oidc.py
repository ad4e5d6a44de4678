"""Trust an external OpenID Connect issuer: its discovery document, its JWKS, and the tokens it signs.

A hospital plugs in its own identity provider: ``{issuer}/.well-known/openid-configuration`` names the ``jwks_uri``
(OpenID Connect Discovery 1.0, section 4); the keys are fetched from there and kept by ``kid``; a token signed with
a key not seen yet makes one new fetch (key rotation), at most every ``min_refetch_s`` seconds (a flood of tokens
with made-up key ids costs no more than that). The role, scopes, wards and teams are read from claims
(``role_claim``, ``scope`` or ``scp``, ``wards``, ``teams``, ``patient``). Verified tokens are cached until expiry.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from medtwin.security.principal import Principal
from medtwin.security.tokens import TokenError, principal_from_claims

__all__ = ["OidcVerifier"]

_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


class OidcVerifier:
    """Verifies the access tokens of the external issuer *issuer* for *audience*.

    *http*: an ``httpx.Client`` (tests pass one bound to their loopback issuer; the default has a 5 s timeout and
    verifies TLS certificates).
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        role_claim: str = "medtwin_role",
        http: httpx.Client | None = None,
        min_refetch_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = 50_000,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.role_claim = role_claim
        self.http = http or httpx.Client(timeout=5.0)
        self.min_refetch_s = min_refetch_s
        self.clock = clock
        self.cache_size = cache_size
        self._keys: dict[str, Any] = {}
        self._jwks_uri: str | None = None
        self._fetched = -1e18
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    def _discover(self) -> str:
        if self._jwks_uri is None:
            url = f"{self.issuer}/.well-known/openid-configuration"
            try:
                doc = self.http.get(url).raise_for_status().json()
            except (httpx.HTTPError, ValueError) as exc:
                raise TokenError("temporarily_unavailable", f"cannot read {url}: {exc}") from None
            if doc.get("issuer", "").rstrip("/") != self.issuer or not isinstance(doc.get("jwks_uri"), str):
                raise TokenError("server_error", f"{url}: the issuer or jwks_uri does not match {self.issuer}")
            self._jwks_uri = doc["jwks_uri"]
        return self._jwks_uri

    def _fetch_keys(self) -> None:
        now = self.clock()
        if now - self._fetched < self.min_refetch_s:
            return
        self._fetched = now
        uri = self._discover()
        try:
            jwks = self.http.get(uri).raise_for_status().json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TokenError("temporarily_unavailable", f"cannot read the issuer's keys at {uri}: {exc}") from None
        keys: dict[str, Any] = {}
        for jwk in jwks.get("keys", []):
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) and jwk.get("use", "sig") == "sig":
                try:
                    keys[jwk["kid"]] = jwt.PyJWK(jwk)
                except jwt.PyJWTError:
                    continue  # a key of a type we cannot use (e.g. an encryption key) is not a signing key
        self._keys = keys

    def _key(self, kid: str) -> Any:
        key = self._keys.get(kid)
        if key is None:
            with self._lock:
                self._fetch_keys()
            key = self._keys.get(kid)
        if key is None:
            raise TokenError(
                "invalid_token", f"the token is signed with key {kid!r}, which the issuer does not publish"
            )
        return key

    def verify(self, token: str) -> Principal:
        """The :class:`Principal` of a valid token of the external issuer.

        Raises
        ------
        TokenError
            ``invalid_token`` for a bad, expired or foreign token.
        """
        now = self.clock()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires <= now:
                self._cache.pop(token, None)
                raise TokenError("invalid_token", "the access token has expired")
            return cached
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token", f"the access token is not a JWT ({exc})") from None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenError("invalid_token", "the access token names no key (kid)")
        key = self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=_ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token", f"the access token is not valid ({exc})") from None
        principal = principal_from_claims(claims, role_claim=self.role_claim)
        if principal.expires <= now:
            raise TokenError("invalid_token", "the access token has expired")
        with self._lock:
            self._cache[token] = principal
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return principal
