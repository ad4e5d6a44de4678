"""The external issuer's configuration and claim mapping: how Keycloak-, Entra- and Okta-style claims become a
medtwin role, wards and care teams, and what a wrong configuration file says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medtwin.errors import ValidationError
from medtwin.security.oidc import ClaimMapping, OidcSettings
from medtwin.security.tokens import TokenError


def _claims(**extra: Any) -> dict[str, Any]:
    return {"iss": "https://idp.example.org", "sub": "u-1", "exp": 2_000_000_000, "preferred_username": "ada", **extra}


def test_the_default_mapping_reads_medtwin_claims() -> None:
    claims = _claims(medtwin_role="nurse", wards=["W1"], teams=["cardio"], scope="openid user/*.rs")
    p = ClaimMapping().principal(claims)
    assert (p.role, p.wards, p.teams, p.username) == ("nurse", frozenset({"W1"}), frozenset({"cardio"}), "ada")
    assert p.scopes.permits("Observation", "r")
    assert not p.scopes.permits("Observation", "c")
    assert ClaimMapping().principal(_claims(medtwin_role=["offline", "clinician"])).role == "clinician"


def test_keycloak_realm_roles_and_groups_map_in_the_configured_order() -> None:
    mapping = ClaimMapping(role_claim="realm_access.roles", roles=(("medtwin-doctor", "clinician"),
                           ("medtwin-nurse", "nurse")), wards_claim="groups", ward_prefix="/wards/",
                           teams_claim="groups", team_prefix="/teams/")  # fmt: skip
    claims = _claims(realm_access={"roles": ["offline_access", "medtwin-nurse", "medtwin-doctor"]},
                     groups=["/wards/WARD-A", "/wards/", "/teams/renal", "/staff"])  # fmt: skip
    p = mapping.principal(claims)
    assert p.role == "clinician"  # the first pair of the mapping the user has wins, not the claim's order
    assert p.wards == frozenset({"WARD-A"})  # "/wards/" alone names no ward
    assert p.teams == frozenset({"renal"})


def test_an_entra_style_url_claim_name_with_dots_is_read_whole() -> None:
    mapping = ClaimMapping(role_claim="https://medtwin.example.org/roles", roles=(("Pharmacy.User", "pharmacist"),),
                           username_claim="upn")  # fmt: skip
    p = mapping.principal(_claims(**{"https://medtwin.example.org/roles": ["Pharmacy.User"], "upn": "ada@example.org"}))
    assert (p.role, p.username) == ("pharmacist", "ada@example.org")


def test_a_user_with_no_mapped_role_is_refused_with_what_was_seen() -> None:
    mapping = ClaimMapping(role_claim="groups", roles=(("medtwin-nurses", "nurse"),))
    with pytest.raises(TokenError, match=r"no medtwin role: claim 'groups' holds \['visitors'\]") as err:
        mapping.principal(_claims(groups=["visitors"]))
    assert err.value.error == "insufficient_scope"
    with pytest.raises(TokenError, match="no medtwin role"):  # without a table, the value must be a role name
        ClaimMapping().principal(_claims(medtwin_role="superuser"))
    with pytest.raises(TokenError, match="no subject"):
        ClaimMapping().principal({"medtwin_role": "nurse"})


def test_the_default_scope_applies_only_to_a_token_without_smart_scopes() -> None:
    mapping = ClaimMapping(default_scope="user/*.rs")
    plain = mapping.principal(_claims(medtwin_role="nurse", scope="openid profile"))
    assert plain.scopes.permits("Patient", "r")
    assert "openid" in plain.scopes.other
    narrow = mapping.principal(_claims(medtwin_role="nurse", scope="openid user/Observation.r"))
    assert not narrow.scopes.permits("Patient", "r")  # the token's own SMART scopes are never widened


def test_a_mapping_to_an_unknown_role_or_a_bad_scope_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="'boss' is not one of admin, clinician"):
        ClaimMapping(roles=(("Chiefs", "boss"),))
    with pytest.raises(ValidationError):
        ClaimMapping(default_scope="user/*.xyz")


EXAMPLE = """
[oidc]
issuer = "https://login.example.org/realms/hospital"
audience = "medtwin-api"
client_id = "medtwin-web"
name = "St Elsewhere sign-in"

[oidc.claims]
role = "realm_access.roles"
wards = "groups"
ward_prefix = "/wards/"
default_scope = "user/*.cruds"

[oidc.claims.roles]
"medtwin-doctor" = "clinician"
"medtwin-nurse" = "nurse"
"""


def test_the_documented_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "oidc.toml"
    path.write_text(EXAMPLE)
    s = OidcSettings.from_file(path)
    assert (s.issuer, s.audience, s.client_id, s.name) == ("https://login.example.org/realms/hospital", "medtwin-api",
                                                           "medtwin-web", "St Elsewhere sign-in")  # fmt: skip
    assert s.claims.roles == (("medtwin-doctor", "clinician"), ("medtwin-nurse", "nurse"))
    assert (s.claims.role_claim, s.claims.wards_claim, s.claims.ward_prefix) == ("realm_access.roles", "groups",
                                                                                 "/wards/")  # fmt: skip
    assert s.claims.teams_claim == "teams"  # not given: the default
    assert s.scope == "openid profile"
    assert s.builtin_signin is True
    path.write_text(EXAMPLE.replace('name = "St', 'builtin_signin = false\nname = "St'))
    assert OidcSettings.from_file(path).builtin_signin is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[oidc]\nclient_id = "x"\n', r"oidc.toml \[oidc\]: issuer is required"),
        ('[oidc]\nissuer = "https://i"\nclientid = "x"\n', r"unknown key 'clientid'"),
        ('[oidc]\nissuer = "https://i"\n[oidc.claims]\nrole_claim = "r"\n', r"unknown key claims.'role_claim'"),
        ('[oidc]\nissuer = "https://i"\n[oidc.claims.roles]\nChiefs = "boss"\n', r"'boss' is not one of"),
        ('[oidc]\nissuer = "https://i"\n[oidc.claims]\nroles = "nurse"\n', r"claims.roles must be a table"),
        ('[oidc]\nissuer = "ldap://i"\n', r"an http\(s\) URL is required"),
        ('[oidc]\nissuer = "https://i"\nclient_id = 5\n', r"client_id must be a non-empty string, not 5"),
        ('[oidc]\nissuer = "https://i"\nbuiltin_signin = "no"\n', r"builtin_signin must be true or false"),
        ("[store]\nurl = 'sqlite://'\n", r"no \[oidc\] table"),
        ("[oidc\n", r"oidc.toml: "),
    ],
)
def test_a_wrong_file_says_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "oidc.toml"
    path.write_text(text)
    with pytest.raises(ValidationError, match=message):
        OidcSettings.from_file(path)


def test_the_example_in_docs_security_md_is_valid(tmp_path: Path) -> None:
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert len(blocks) == 1
    path = tmp_path / "oidc.toml"
    path.write_text(blocks[0])
    s = OidcSettings.from_file(path)
    assert s.client_id == "medtwin-web"
    assert s.claims.roles[0] == ("medtwin-doctor", "clinician")
    p = s.claims.principal(_claims(realm_access={"roles": ["medtwin-pharmacy"]}, groups=["/wards/W2", "/teams/t"]))
    assert (p.role, p.wards, p.teams) == ("pharmacist", frozenset({"W2"}), frozenset({"t"}))
    assert p.scopes.permits("MedicationRequest", "c")  # the default scope (the role limits it again in the policy)


def test_serve_takes_one_source_of_the_external_issuer(tmp_path: Path) -> None:
    from medtwin.cli.serve import _oidc_settings

    path = tmp_path / "oidc.toml"
    path.write_text(EXAMPLE)
    overridden = _oidc_settings(path, None, "medtwin", "other-client")
    assert overridden is not None
    assert (overridden.client_id, overridden.audience) == ("other-client", "medtwin-api")  # the file's audience
    assert overridden.claims.roles == (("medtwin-doctor", "clinician"), ("medtwin-nurse", "nurse"))
    assert _oidc_settings(None, "https://i", "aud", None) == OidcSettings("https://i", "aud")
    assert _oidc_settings(None, None, "medtwin", None) is None
    with pytest.raises(ValidationError, match="give one"):
        _oidc_settings(path, "https://i", "medtwin", None)
    with pytest.raises(ValidationError, match="needs --oidc-issuer"):
        _oidc_settings(None, None, "medtwin", "web")


def test_an_unreachable_issuer_is_asked_again_only_after_a_pause() -> None:
    import httpx

    from medtwin.security.oidc import OidcVerifier

    calls: list[str] = []
    up = False

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        if not up:
            return httpx.Response(503)
        return httpx.Response(200, json={"issuer": "https://idp.example.org", "jwks_uri": "https://idp.example.org/k"})

    now = [1000.0]
    http = httpx.Client(transport=httpx.MockTransport(answer))
    verifier = OidcVerifier("https://idp.example.org", "medtwin", http=http, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(TokenError, match="cannot read"):
            verifier.discovery()
    assert len(calls) == 1  # the failure is remembered, not retried on every page
    up = True
    now[0] += 31.0
    assert verifier.discovery()["jwks_uri"] == "https://idp.example.org/k"
    assert verifier.discovery()["jwks_uri"] == "https://idp.example.org/k"
    assert len(calls) == 2  # read once, then kept


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_serve_and_demo_refuse_a_wrong_file_before_starting(tmp_path: Path, command: str) -> None:
    from typer.testing import CliRunner

    from medtwin.cli import app

    path = tmp_path / "oidc.toml"
    path.write_text('[oidc]\nissuer = "https://i"\n[oidc.claims.roles]\nChiefs = "boss"\n')
    result = CliRunner().invoke(app, [command, "--oidc-config", str(path), "--port", "0"])
    assert result.exit_code != 0
    assert "'boss' is not one of" in result.output
