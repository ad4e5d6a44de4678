"""`medtwin users ...`, `medtwin clients add` and `medtwin serve` (with --mllp: one command, the whole platform)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.security.accounts import Accounts
from medtwin.store import Store

from .conftest import seed_patient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7v2"


def test_users_add_list_disable_and_assign(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'u.db'}"
    with Store(db) as store:
        pid = seed_patient(store, "u1", ward="W1", index=1).patient_id
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "users",
            "add",
            "ada",
            "--role",
            "nurse",
            "--ward",
            "W1",
            "--team",
            "t1",
            "--password-stdin",
            "--db",
            db,
            "--json",
        ],
        input="long enough pw\n",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["role"] == "nurse"
    r = runner.invoke(
        app, ["users", "add", "ada", "--role", "nurse", "--password-stdin", "--db", db], input="long enough pw\n"
    )
    assert r.exit_code == 1
    assert "already exists" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(
        app, ["users", "add", "bob", "--role", "surgeon", "--password-stdin", "--db", db], input="long enough pw\n"
    )
    assert r.exit_code == 1
    assert "not one of" in r.output
    listed = json.loads(runner.invoke(app, ["users", "list", "--db", db, "--json"]).stdout)
    assert [(u["username"], u["wards"], u["disabled"]) for u in listed] == [("ada", ["W1"], False)]
    assert "password_hash" not in json.dumps(listed)
    assert "argon2" not in json.dumps(listed)
    assert runner.invoke(app, ["users", "disable", "ada", "--db", db]).exit_code == 0
    assert runner.invoke(app, ["users", "assign", "t1", pid, "--db", db]).exit_code == 0
    bad = runner.invoke(app, ["users", "assign", "t1", "pt-nope", "--db", db])
    assert bad.exit_code == 1
    assert "no patient" in bad.output
    with Store(db) as store:
        accounts = Accounts(store.engine)
        assert accounts.authenticate("ada", "long enough pw") is None  # disabled
        assert accounts.teams_of(pid) == {"t1"}


def test_users_passwd_ends_the_sessions_and_never_echoes_the_password(tmp_path: Path) -> None:
    from medtwin.security.scopes import parse_scopes
    from medtwin.security.tokens import SigningKey, TokenError, TokenService

    db = f"sqlite:///{tmp_path / 'p.db'}"
    Store(db).close()
    runner = CliRunner()
    add = runner.invoke(app, ["users", "add", "ada", "--role", "nurse", "--password-stdin", "--db", db],
                        input="first password\n")  # fmt: skip
    assert add.exit_code == 0, add.output
    with Store(db) as store:
        user = Accounts(store.engine).user("ada")
        assert user is not None
        tokens = TokenService(store.engine, SigningKey.generate())
        refresh = tokens.issue(TokenService.grant(user.user_id, "nurse", parse_scopes("user/*.rs")), refresh=True)
    r = runner.invoke(app, ["users", "passwd", "ada", "--password-stdin", "--db", db], input="second password\n")
    assert r.exit_code == 0, r.output
    assert "1 session(s) ended" in r.output
    assert "second password" not in r.output
    with Store(db) as store:
        accounts = Accounts(store.engine)
        assert accounts.authenticate("ada", "first password") is None
        assert accounts.authenticate("ada", "second password") is not None
        with pytest.raises(TokenError, match="password reset"):
            TokenService(store.engine, SigningKey.generate()).refresh(refresh["refresh_token"])
    # the prompt asks twice, hidden; a mismatch is asked again, the password is never printed
    prompted = runner.invoke(app, ["users", "passwd", "ada", "--db", db],
                             input="third password\nthird passwrd\nthird password\nthird password\n")  # fmt: skip
    assert prompted.exit_code == 0, prompted.output
    assert "third password" not in prompted.output
    assert "0 session(s) ended" in prompted.output
    short = runner.invoke(app, ["users", "passwd", "ada", "--password-stdin", "--db", db], input="short\n")
    assert short.exit_code == 1
    assert "at least 8" in short.output
    unknown = runner.invoke(app, ["users", "passwd", "bob", "--password-stdin", "--db", db], input="long enough\n")
    assert unknown.exit_code == 1
    assert "no user named 'bob'" in unknown.output
    with Store(db) as store:
        assert Accounts(store.engine).authenticate("ada", "third password") is not None


def test_a_password_set_by_the_cli_must_be_changed_unless_no_force_change(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    Store(db).close()
    runner = CliRunner()
    add = runner.invoke(
        app, ["users", "add", "ada", "--password-stdin", "--db", db, "--json"], input="first password\n"
    )
    assert add.exit_code == 0, add.output
    assert json.loads(add.stdout)["password_change_required"] is True
    svc = runner.invoke(app, ["users", "add", "svc.lab", "--role", "device", "--no-force-change", "--password-stdin",
                              "--db", db], input="a service password\n")  # fmt: skip
    assert svc.exit_code == 0, svc.output
    assert "must be changed" not in svc.output
    listed = {u["username"]: u for u in json.loads(runner.invoke(app, ["users", "list", "--db", db, "--json"]).stdout)}
    assert (listed["ada"]["password_change_required"], listed["svc.lab"]["password_change_required"]) == (True, False)
    table = runner.invoke(app, ["users", "list", "--db", db])
    assert "must change password" in table.output
    with Store(db) as store:
        Accounts(store.engine).change_password("ada", "first password", "ada's own password")
    passwd = runner.invoke(app, ["users", "passwd", "ada", "--password-stdin", "--db", db], input="reset password\n")
    assert "must be changed at the next sign-in" in passwd.output
    kept = runner.invoke(app, ["users", "passwd", "svc.lab", "--no-force-change", "--password-stdin", "--db", db],
                         input="rotated service password\n")  # fmt: skip
    assert kept.exit_code == 0
    assert "must be changed" not in kept.output
    with Store(db) as store:
        accounts = Accounts(store.engine)
        assert accounts.user("ada").password_change_required  # type: ignore[union-attr]
        assert not accounts.user("svc.lab").password_change_required  # type: ignore[union-attr]


def test_users_set_changes_role_wards_and_teams(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 's.db'}"
    Store(db).close()
    runner = CliRunner()
    add = runner.invoke(app, ["users", "add", "ada", "--role", "nurse", "--ward", "W1", "--team", "t1",
                              "--password-stdin", "--db", db], input="long enough pw\n")  # fmt: skip
    assert add.exit_code == 0, add.output
    r = runner.invoke(app, ["users", "set", "ada", "--role", "clinician", "--wards", "W2, W3", "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) | {"user_id": None} == {"user_id": None, "username": "ada", "role": "clinician",
                                                        "wards": ["W2", "W3"], "teams": ["t1"]}  # fmt: skip
    cleared = runner.invoke(app, ["users", "set", "ada", "--teams", "", "--db", db])
    assert cleared.exit_code == 0, cleared.output
    with Store(db) as store:
        user = Accounts(store.engine).user("ada")
        assert user is not None
        assert (user.role, user.wards, user.teams) == ("clinician", ("W2", "W3"), ())
    for args, said in ((["--role", "surgeon"], "not one of"), ([], "nothing to change")):
        bad = runner.invoke(app, ["users", "set", "ada", *args, "--db", db])
        assert bad.exit_code == 1, args
        assert said in bad.output
    assert "no user named" in runner.invoke(app, ["users", "set", "bob", "--role", "nurse", "--db", db]).output


def test_clients_add_prints_the_secret_once(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    Store(db).close()
    runner = CliRunner()
    r = runner.invoke(app, ["clients", "add", "monitor-3", "--scope", "system/Observation.c", "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    with Store(db) as store:
        assert Accounts(store.engine).authenticate_client("monitor-3", out["client_secret"]) is not None
    bad = runner.invoke(app, ["clients", "add", "x", "--scope", "system/Observation.xyz", "--db", db])
    assert bad.exit_code == 1
    assert "cruds" in bad.output


def test_serve_with_mllp_runs_the_whole_platform(tmp_path: Path) -> None:
    """One command: MLLP in, twins in their own process, the API out; an ORU stored over MLLP is readable by API."""
    from medtwin.cli.serve import serve_for
    from medtwin.interop.mllp_framing import frame
    from medtwin.security.scopes import parse_scopes
    from medtwin.security.tokens import SigningKey, TokenService
    from medtwin.server import ServerSettings

    db = f"sqlite:///{tmp_path / 'platform.db'}"
    ports: dict[str, int] = {}
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def run() -> None:
        nonlocal stop, loop
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        settings = ServerSettings(
            rate_per_s=None, jwt_key_path=str(tmp_path / "jwt.pem"), audit_key_path=str(tmp_path / "audit.key")
        )
        try:
            loop.run_until_complete(
                serve_for(
                    settings,
                    db,
                    "127.0.0.1",
                    0,
                    mllp_port=0,
                    stop=stop,
                    seconds=120,
                    on_ready=lambda p: ports.setdefault("api", p),
                    on_mllp_ready=lambda p: ports.setdefault("mllp", p),
                )
            )
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while "api" not in ports or "mllp" not in ports:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.1)
    base = f"http://127.0.0.1:{ports['api']}"
    assert httpx.get(f"{base}/ready", timeout=10).json() == {"status": "ready"}
    assert httpx.get(f"{base}/fhir/metadata", timeout=10).status_code == 200
    message = (FIXTURES / "authored_ORU_R01_vitals_loinc_v251.hl7").read_bytes().replace(b"\r\n", b"\r")
    with socket.create_connection(("127.0.0.1", ports["mllp"]), timeout=30) as sock:
        sock.sendall(frame(message))
        ack = sock.recv(4096)
    assert b"MSA|CA|VS-000123" in ack  # commit accept (the message asks for enhanced acknowledgements)
    with Store(db, migrate=False) as store:
        key = SigningKey.load_or_create(tmp_path / "jwt.pem")
        tokens = TokenService(store.engine, key)
        admin = tokens.issue(TokenService.grant("root", "admin", parse_scopes("user/*.cruds")))["access_token"]
    h = {"Authorization": f"Bearer {admin}"}
    (patient,) = httpx.get(f"{base}/api/patients", headers=h, timeout=10).json()["patients"]
    assert patient["mrn"] == "MRN-4711"
    bundle = httpx.get(f"{base}/fhir/Observation", params={"patient": patient["id"]}, headers=h, timeout=10).json()
    codes = {e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]}
    # the message's seven vital signs (and the NEWS2 the twin runtime derives from them, once it has run)
    assert {"8867-4", "9279-1", "59408-5", "8480-6", "8462-4", "8310-5", "80288-4"} <= codes
    assert loop is not None
    assert stop is not None
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=120)
    assert not thread.is_alive()
