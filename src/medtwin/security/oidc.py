"""Trust an external OpenID Connect issuer: its discovery document, its JWKS, the tokens it signs, and the claims
that say who a user is to medtwin.

A hospital plugs in its own identity provider: ``{issuer}/.well-known/openid-configuration`` names the ``jwks_uri``
and the browser sign-in's endpoints (OpenID Connect Discovery 1.0, section 3); the keys are fetched from there and
kept by ``kid``; a token signed with a key not seen yet makes one new fetch (key rotation), at most every
``min_refetch_s`` seconds (a flood of tokens with made-up key ids costs no more than that). The role, wards and
care teams are read from claims as a :class:`ClaimMapping` says (Keycloak realm roles, Entra app roles, Okta
groups...); a user whose claims map to no medtwin role is refused (``insufficient_scope``). Verified tokens are
cached until expiry. :class:`OidcSettings` is the whole configuration (``medtwin serve --oidc-config FILE``).
"""

from __future__ import annotations

import hmac
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from medtwin.errors import MedtwinError, ValidationError
from medtwin.security.accounts import ROLES
from medtwin.security.principal import Principal
from medtwin.security.scopes import parse_scopes
from medtwin.security.tokens import TokenError

__all__ = ["ClaimMapping", "OidcSettings", "OidcVerifier"]

_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """The claim *name*: a top-level claim of that exact name (``https://example.org/roles``), else a dotted path
    into nested objects (``realm_access.roles``, ``resource_access.medtwin.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """How the claims of an external token become a medtwin :class:`Principal`.

    *role_claim*: the claim holding the user's role(s), a name or a dotted path (``realm_access.roles``).
    *roles*: (value at the identity provider, medtwin role) pairs in order of precedence: the first pair whose value
    the user has gives the role; empty: the claim must hold a medtwin role name itself. *wards_claim* and
    *teams_claim*: the claims listing the user's wards and care teams; with *ward_prefix* (*team_prefix*) only the
    values starting with it count, the prefix removed (one ``groups`` claim can carry both: ``/wards/WARD-A``,
    ``/teams/cardiology``). *username_claim*: the name shown and audited. *default_scope*: SMART scopes granted when
    the token carries none (identity providers seldom issue SMART scopes; the role still limits what they allow).
    """

    role_claim: str = "medtwin_role"
    roles: tuple[tuple[str, str], ...] = ()
    wards_claim: str = "wards"
    ward_prefix: str = ""
    teams_claim: str = "teams"
    team_prefix: str = ""
    username_claim: str = "preferred_username"
    default_scope: str = ""

    def __post_init__(self) -> None:
        for value, role in self.roles:
            if role not in ROLES:
                raise ValidationError(f"role mapping {value!r} -> {role!r}: {role!r} is not one of {', '.join(ROLES)}")
        parse_scopes(self.default_scope)  # a malformed default scope is a configuration error, found at start

    def role_of(self, claims: Mapping[str, Any]) -> str | None:
        """The medtwin role *claims* map to, or None."""
        values = _strings(_claim(claims, self.role_claim))
        if self.roles:
            return next((role for value, role in self.roles if value in values), None)
        return next((v for v in values if v in ROLES), None)

    def _names(self, claims: Mapping[str, Any], name: str, prefix: str) -> frozenset[str]:
        values = _strings(_claim(claims, name))
        return frozenset(v[len(prefix) :] for v in values if v.startswith(prefix) and len(v) > len(prefix))

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        """The :class:`Principal` of a verified token's *claims*.

        Raises
        ------
        TokenError
            ``invalid_token``: no subject or a malformed scope; ``insufficient_scope``: the claims map to no
            medtwin role (a user the identity provider knows but medtwin does not).
        """
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise TokenError("invalid_token", "the token has no subject (sub)")
        username = _claim(claims, self.username_claim)
        username = username if isinstance(username, str) else None
        role = self.role_of(claims)
        if role is None:
            seen = _strings(_claim(claims, self.role_claim))
            expected = [v for v, _ in self.roles] if self.roles else list(ROLES)
            raise TokenError(
                "insufficient_scope",
                f"user {username or subject!r} has no medtwin role: claim {self.role_claim!r} holds "
                f"{seen[:10]!r}, none of {expected!r}",
            )
        scope = claims.get("scope", claims.get("scp", ""))
        if isinstance(scope, list):
            scope = " ".join(str(s) for s in scope)
        try:
            scopes = parse_scopes(str(scope))
            if not scopes.scopes and self.default_scope:
                scopes = parse_scopes(" ".join([*sorted(scopes.other), self.default_scope]))
        except MedtwinError as exc:
            raise TokenError("invalid_token", str(exc)) from None
        patient = claims.get("patient")
        client_id = claims.get("client_id", claims.get("azp"))
        return Principal(
            subject=subject,
            role=role,
            scopes=scopes,
            patient=patient if isinstance(patient, str) else None,
            wards=self._names(claims, self.wards_claim, self.ward_prefix),
            teams=self._names(claims, self.teams_claim, self.team_prefix),
            client_id=client_id if isinstance(client_id, str) else None,
            username=username,
            token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
            session_id=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
            expires=float(claims.get("exp", float("inf"))),
            issuer=str(claims.get("iss", "")),
        )


_CLAIM_KEYS = {"role": "role_claim", "wards": "wards_claim", "ward_prefix": "ward_prefix", "teams": "teams_claim",
               "team_prefix": "team_prefix", "username": "username_claim",
               "default_scope": "default_scope"}  # fmt: skip
_OIDC_KEYS = (
    "issuer",
    "audience",
    "client_id",
    "redirect_uri",
    "post_logout_redirect_uri",
    "name",
    "scope",
    "builtin_signin",
    "claims",
)


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """The external OpenID Connect issuer medtwin trusts, and the web app's sign-in with it.

    *issuer*: its URL (the tokens' ``iss``; discovery at ``{issuer}/.well-known/openid-configuration``).
    *audience*: the ``aud`` its access tokens must name. *claims*: the :class:`ClaimMapping`. *client_id*: the web
    app's public client registered at the issuer (authorization code + PKCE); without it the API trusts the issuer's
    tokens but the sign-in page offers no button for it. *redirect_uri*: the callback registered there (default: the
    app's ``/app/callback`` on the origin it is served from); *post_logout_redirect_uri* likewise (default
    ``/app/login``). *name*: the button's label ("Sign in with *name*"). *scope*: what the app asks for.
    *builtin_signin*: False: the sign-in page offers the external issuer only (medtwin's own accounts still sign
    in through the API's OAuth endpoints, e.g. an administrator's local account).
    """

    issuer: str
    audience: str = "medtwin"
    claims: ClaimMapping = field(default_factory=ClaimMapping)
    client_id: str | None = None
    redirect_uri: str | None = None
    post_logout_redirect_uri: str | None = None
    name: str = "your organisation's sign-in"
    scope: str = "openid profile"
    builtin_signin: bool = True

    def __post_init__(self) -> None:
        if not self.issuer.startswith(("https://", "http://")):
            raise ValidationError(f"oidc issuer {self.issuer!r}: an http(s) URL is required")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], where: str) -> OidcSettings:
        """The settings of an ``[oidc]`` table (*where* names it in errors).

        Raises
        ------
        ValidationError
            An unknown key, a value of the wrong type, an unknown role, no issuer.
        """

        def text(key: str, value: Any) -> str:
            if not isinstance(value, str) or not value:
                raise ValidationError(f"{where}: {key} must be a non-empty string, not {value!r}")
            return value

        for key in table:
            if key not in _OIDC_KEYS:
                raise ValidationError(f"{where}: unknown key {key!r} (known: {', '.join(_OIDC_KEYS)})")
        if "issuer" not in table:
            raise ValidationError(f"{where}: issuer is required")
        raw_claims = table.get("claims", {})
        if not isinstance(raw_claims, Mapping):
            raise ValidationError(f"{where}: claims must be a table")
        mapping: dict[str, Any] = {}
        for key, value in raw_claims.items():
            if key == "roles":
                if not isinstance(value, Mapping):
                    raise ValidationError(f'{where}: claims.roles must be a table of "IdP value" = "role"')
                mapping["roles"] = tuple((str(k), text(f"claims.roles.{k}", v)) for k, v in value.items())
            elif key in _CLAIM_KEYS:
                mapping[_CLAIM_KEYS[key]] = value if key.endswith("prefix") and value == "" else text(
                    f"claims.{key}", value)  # fmt: skip
            else:
                known = ", ".join([*_CLAIM_KEYS, "roles"])
                raise ValidationError(f"{where}: unknown key claims.{key!r} (known: {known})")
        try:
            claims = ClaimMapping(**mapping)
            values: dict[str, Any] = {k: text(k, v) for k, v in table.items() if k not in ("claims", "builtin_signin")}
            if "builtin_signin" in table:
                if not isinstance(table["builtin_signin"], bool):
                    raise ValidationError(f"builtin_signin must be true or false, not {table['builtin_signin']!r}")
                values["builtin_signin"] = table["builtin_signin"]
            return cls(claims=claims, **values)
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> OidcSettings:
        """The ``[oidc]`` table of the TOML file *path* (docs/security.md shows one).

        Raises
        ------
        ValidationError
            The file cannot be read or parsed, or its ``[oidc]`` table is wrong (the file and key are named).
        """
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValidationError(f"{path}: {exc}") from None
        table = doc.get("oidc")
        if not isinstance(table, Mapping):
            raise ValidationError(f"{path}: no [oidc] table")
        return cls.from_mapping(table, f"{path} [oidc]")


class OidcVerifier:
    """Verifies the tokens of the external issuer *issuer*: access tokens for *audience*, ID tokens for a client.

    *claims*: how a token's claims become a :class:`Principal`. *http*: an ``httpx.Client`` (tests pass one bound
    to their loopback issuer; the default has a 5 s timeout and verifies TLS certificates).
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        claims: ClaimMapping | None = None,
        http: httpx.Client | None = None,
        min_refetch_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = 50_000,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.claims = claims or ClaimMapping()
        self.http = http or httpx.Client(timeout=5.0)
        self.min_refetch_s = min_refetch_s
        self.clock = clock
        self.cache_size = cache_size
        self._keys: dict[str, Any] = {}
        self._discovery: dict[str, Any] | None = None
        self._discovery_failed: tuple[float, TokenError] | None = None
        self._fetched = -1e18
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: OidcSettings, **kwargs: Any) -> OidcVerifier:
        """The verifier of *settings*' issuer, audience and claim mapping."""
        return cls(settings.issuer, settings.audience, claims=settings.claims, **kwargs)

    def discovery(self) -> dict[str, Any]:
        """The issuer's discovery document (read once; after a failure, read again no sooner than
        ``min_refetch_s`` seconds or 30 s later, whichever is less: an unreachable issuer does not make every page
        of the web app wait for its timeout).

        Raises
        ------
        TokenError
            ``temporarily_unavailable``: it cannot be read; ``server_error``: it names another issuer or no JWKS.
        """
        doc = self._discovery
        if doc is not None:
            return doc
        failed = self._discovery_failed
        if failed is not None and self.clock() - failed[0] < min(self.min_refetch_s, 30.0):
            raise failed[1]
        url = f"{self.issuer}/.well-known/openid-configuration"
        try:
            try:
                got = self.http.get(url).raise_for_status().json()
            except (httpx.HTTPError, ValueError) as exc:
                raise TokenError("temporarily_unavailable", f"cannot read {url}: {exc}") from None
            if not isinstance(got, dict):
                raise TokenError("server_error", f"{url}: not a JSON object")
            if str(got.get("issuer", "")).rstrip("/") != self.issuer or not isinstance(got.get("jwks_uri"), str):
                raise TokenError("server_error", f"{url}: the issuer or jwks_uri does not match {self.issuer}")
        except TokenError as exc:
            self._discovery_failed = (self.clock(), exc)
            raise
        self._discovery = got
        return got

    def _fetch_keys(self) -> None:
        now = self.clock()
        if now - self._fetched < self.min_refetch_s:
            return
        self._fetched = now
        uri = str(self.discovery()["jwks_uri"])
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

    def _decode(self, token: str, audience: str, what: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token", f"the {what} is not a JWT ({exc})") from None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenError("invalid_token", f"the {what} names no key (kid)")
        key = self._key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=_ALGORITHMS,
                audience=audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token", f"the {what} is not valid ({exc})") from None
        if float(claims["exp"]) <= self.clock():
            raise TokenError("invalid_token", f"the {what} has expired")
        return claims

    def verify(self, token: str) -> Principal:
        """The :class:`Principal` of a valid access token of the external issuer.

        Raises
        ------
        TokenError
            ``invalid_token`` for a bad, expired or foreign token; ``insufficient_scope`` for a valid token of a
            user whose claims map to no medtwin role.
        """
        now = self.clock()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires <= now:
                self._cache.pop(token, None)
                raise TokenError("invalid_token", "the access token has expired")
            return cached
        principal = self.claims.principal(self._decode(token, self.audience, "access token"))
        with self._lock:
            self._cache[token] = principal
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return principal

    def verify_id_token(self, token: str, *, client_id: str, nonce: str) -> dict[str, Any]:
        """The claims of a valid ID token issued to *client_id* for the sign-in that sent *nonce* (OpenID Connect
        Core 1.0, 3.1.3.7: signature, ``iss``, ``aud`` (and ``azp`` when there are several), ``exp``, ``nonce``).

        Raises
        ------
        TokenError
            ``invalid_token``: the token is bad, expired, for another client, or its nonce is not *nonce* (a
            replayed or injected ID token).
        """
        claims = self._decode(token, client_id, "ID token")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
            raise TokenError("invalid_token", f"the ID token names several audiences but azp is not {client_id!r}")
        got = claims.get("nonce")
        if not nonce or not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise TokenError("invalid_token", "the ID token's nonce does not match this sign-in (replayed token?)")
        return claims
