"""The web app's sign-in with an external OpenID Connect issuer, without a browser: the config the browser reads,
the sign-in check (ID token signature, audience, nonce; the access token of the same user), the claim mapping to a
role and wards, the denial of a user with no medtwin role, sign-out, and the audit of each. The issuer is a
loopback provider with its own keys (tests/web/oidc_issuer.py); the browser flow is in test_browser.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medtwin.security.oidc import ClaimMapping, OidcSettings
from medtwin.server import Platform, ServerSettings, create_app
from medtwin.server.web.seed import seed_records
from medtwin.store import Store

from .oidc_issuer import LoopbackIdP

KEYCLOAK_CLAIMS = ClaimMapping(role_claim="realm_access.roles", roles=(("medtwin-doctor", "clinician"),
                               ("medtwin-nurse", "nurse")), wards_claim="groups", ward_prefix="/wards/",
                               teams_claim="groups", team_prefix="/teams/", default_scope="user/*.cruds")  # fmt: skip


class Web:
    def __init__(self, idp: LoopbackIdP, folder: Any, *, client_id: str | None = "medtwin-web",
                 builtin_signin: bool = True) -> None:  # fmt: skip
        self.idp = idp
        self.store = Store(f"sqlite:///{folder / 'ext.db'}")
        oidc = OidcSettings(idp.url, client_id=client_id, name="Test Hospital IdP", claims=KEYCLOAK_CLAIMS,
                            builtin_signin=builtin_signin)  # fmt: skip
        settings = ServerSettings(issuer="http://127.0.0.1:9", rate_per_s=None, oidc=oidc, argon2_time_cost=1,
                                  argon2_memory_kib=1024, audit_key_path=str(folder / "audit.key"))  # fmt: skip
        self.platform = Platform.open(settings, self.store)
        assert self.platform.oidc is not None
        self.platform.oidc.min_refetch_s = 0.0
        self.client = TestClient(create_app(self.platform))

    def signin(self, access: str, id_token: str, nonce: str) -> Any:
        return self.client.post("/app/api/signin/external", headers={"Authorization": "Bearer " + access},
                                json={"id_token": id_token, "nonce": nonce})  # fmt: skip

    def audit(self) -> list[Any]:
        assert self.platform.audit is not None
        self.platform.audit.flush()
        return [r.event for r in self.platform.audit.records()]

    def close(self) -> None:
        self.client.close()
        self.platform.close()
        self.store.close()


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def web(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    idp = LoopbackIdP(alg=request.param)
    made = Web(idp, tmp_path_factory.mktemp("ext"))
    seed_records(made.store, now=datetime.now(UTC), glucose=False, accounts=made.platform.accounts)
    try:
        yield made
    finally:
        made.close()
        idp.close()


def test_the_config_names_the_external_issuers_endpoints_from_its_discovery_document(web: Web) -> None:
    config = web.client.get("/app/api/config").json()
    assert config["builtin"] is True  # offered beside it unless configured away
    ext = config["external"]
    assert ext["available"] is True
    assert ext["name"] == "Test Hospital IdP"
    assert ext["client_id"] == "medtwin-web"
    assert ext["authorize"] == web.idp.url + "/authorize"
    assert ext["token"] == web.idp.url + "/token"
    assert ext["end_session"] == web.idp.url + "/logout"
    assert ext["revoke"] == web.idp.url + "/revoke"
    assert ext["scope"] == "openid profile"
    # the page lets the browser reach the issuer's token endpoint, and nothing else beyond this origin
    csp = web.client.get("/app/login").headers["content-security-policy"]
    assert f"connect-src 'self' {web.idp.url};" in csp
    assert "script-src 'self';" in csp


def test_a_signed_in_external_user_gets_the_mapped_role_and_wards(web: Web) -> None:
    idp = web.idp
    access = idp.access_token("kim.ext")
    r = web.signin(access, idp.id_token("kim.ext", nonce="n-123"), "n-123")
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["role"] == "nurse"
    assert me["wards"] == ["WARD-A"]
    assert me["username"] == "kim.ext"
    board = web.client.get("/app/api/ward", headers={"Authorization": "Bearer " + access})
    assert board.status_code == 200, board.text
    assert {row["name"] for row in board.json()["rows"]} == {"Alberto Atencio", "Liz Conn"}  # WARD-A only
    lee = web.signin(idp.access_token("lee.ext"), idp.id_token("lee.ext", nonce="n-9"), "n-9").json()
    assert lee["role"] == "clinician"  # medtwin-doctor comes first in the mapping's order
    assert lee["teams"] == ["cardiology"]
    logins = [e for e in web.audit() if e.action == "login" and e.outcome == "success"]
    assert any(e.resource == "user:kim.ext" and e.role == "nurse" and "OpenID Connect" in (e.detail or "")
               for e in logins)  # fmt: skip


@pytest.mark.parametrize("case", ["wrong-nonce", "no-nonce", "other-client", "other-user", "untrusted-issuer",
                                  "forged-key", "expired"])  # fmt: skip
def test_a_bad_sign_in_is_refused_and_audited(web: Web, case: str) -> None:
    idp = web.idp
    access, id_token, nonce = idp.access_token("kim.ext"), idp.id_token("kim.ext", nonce="good"), "good"
    stranger = None
    if case == "wrong-nonce":
        nonce = "another-sign-in"
    elif case == "no-nonce":
        id_token = idp.sign({k: v for k, v in _claims(id_token).items() if k != "nonce"})
    elif case == "other-client":
        id_token = idp.id_token("kim.ext", nonce="good", aud="another-app")
    elif case == "other-user":
        access = idp.access_token("lee.ext")
    elif case == "untrusted-issuer":  # a provider with the same users and claims, but not the one configured
        stranger = LoopbackIdP(alg=idp.alg)
        access, id_token = stranger.access_token("kim.ext"), stranger.id_token("kim.ext", nonce="good")
    elif case == "forged-key":  # claims of the trusted issuer, signed by another key under the trusted key's id
        stranger = LoopbackIdP(alg=idp.alg)
        stranger.kid = idp.kid
        id_token = stranger.sign({**_claims(id_token), "iss": idp.url})
    else:
        id_token = idp.id_token("kim.ext", nonce="good", exp=1)
    try:
        before = len(web.audit())
        r = web.signin(access, id_token, nonce)
        assert r.status_code == 401, r.text
        assert "Alberto" not in r.text
        denied = [e for e in web.audit()[before:] if e.action == "login"]
        assert [e.outcome for e in denied] == ["denied"]
        if case == "wrong-nonce":
            assert "nonce" in r.json()["message"]
    finally:
        if stranger is not None:
            stranger.close()


def _claims(token: str) -> dict[str, Any]:
    import jwt

    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def test_a_token_of_an_untrusted_issuer_reads_nothing(web: Web) -> None:
    stranger = LoopbackIdP(alg=web.idp.alg)
    try:
        r = web.client.get("/app/api/ward", headers={"Authorization": "Bearer " + stranger.access_token("kim.ext")})
        assert r.status_code == 401
    finally:
        stranger.close()


def test_a_user_with_no_medtwin_role_is_denied_clearly_and_audited(web: Web) -> None:
    idp = web.idp
    access = idp.access_token("visitor")
    before = len(web.audit())
    r = web.signin(access, idp.id_token("visitor", nonce="v"), "v")
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["error"] == "access-denied"
    assert "no medtwin role" in body["message"]
    assert "Test Hospital IdP" in body["message"]
    denied = [e for e in web.audit()[before:] if e.action == "login"]
    assert len(denied) == 1
    assert denied[0].outcome == "denied"
    assert denied[0].actor.startswith("idp-")  # the provider's subject, so the denial can be traced to a person
    assert "realm_access.roles" in (denied[0].detail or "")
    assert web.client.get("/app/api/me", headers={"Authorization": "Bearer " + access}).status_code == 403


def test_sign_out_makes_the_api_refuse_the_external_token(web: Web) -> None:
    idp = web.idp
    access = idp.access_token("kim.ext", sid="session-7")
    same_session = idp.access_token("kim.ext", sid="session-7")  # as the provider would issue at a refresh
    other_session = idp.access_token("kim.ext", sid="session-8")
    auth = {"Authorization": "Bearer " + access}
    assert web.client.get("/app/api/me", headers=auth).status_code == 200
    r = web.client.post("/app/api/signout/external", headers=auth)
    assert r.status_code == 200, r.text
    assert web.client.get("/app/api/me", headers=auth).status_code == 401
    assert web.client.get("/app/api/me", headers={"Authorization": "Bearer " + same_session}).status_code == 401
    assert web.client.get("/app/api/me", headers={"Authorization": "Bearer " + other_session}).status_code == 200
    assert any(e.action == "logout" and "OpenID Connect" in (e.detail or "") for e in web.audit())


def test_without_a_web_client_id_the_issuer_is_trusted_but_not_offered(tmp_path: Any) -> None:
    idp = LoopbackIdP()
    web = Web(idp, tmp_path, client_id=None)
    try:
        assert web.client.get("/app/api/config").json()["external"] is None
        assert web.client.get("/app/login").headers["content-security-policy"].count("127.0.0.1") == 0
        r = web.signin(idp.access_token("kim.ext"), idp.id_token("kim.ext", nonce="n"), "n")
        assert r.status_code == 404
        me = web.client.get("/app/api/me", headers={"Authorization": "Bearer " + idp.access_token("kim.ext")})
        assert me.status_code == 200
        assert me.json()["role"] == "nurse"
    finally:
        web.close()
        idp.close()


def test_the_page_can_offer_the_provider_only(tmp_path: Any) -> None:
    idp = LoopbackIdP()
    web = Web(idp, tmp_path, builtin_signin=False)
    try:
        config = web.client.get("/app/api/config").json()
        assert config["builtin"] is False
        assert config["external"]["available"] is True
    finally:
        web.close()
        idp.close()


def test_an_unreachable_issuer_is_shown_as_unavailable(tmp_path: Any) -> None:
    idp = LoopbackIdP()
    idp.close()  # nobody answers at its address now
    web = Web(idp, tmp_path, builtin_signin=False)
    try:
        config = web.client.get("/app/api/config").json()
        assert config["builtin"] is True  # configured away, but the provider cannot be reached: offered anyway
        ext = config["external"]
        assert ext["available"] is False
        assert "cannot read" in ext["error"]
        assert "authorize" not in ext
        assert web.client.get("/app/login").status_code == 200  # the built-in sign-in still works
    finally:
        web.close()
