"""`medtwin users add|list|passwd|set|disable|enable|assign`: the people who use the API server.

Passwords are read from a prompt (or ``--password-stdin`` for scripts), never from the command line, where other
users of the machine could read them in the process list. A password set here is the administrator's, so the user
must choose their own at their next sign-in (``password_change_required``); ``--no-force-change`` leaves it valid,
for a service account whose password lives in a script or a secret store and that signs in with the ``password``
grant.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from medtwin.cli.console import make_console
from medtwin.cli.records import DbOption, JsonOption, fail, open_existing, print_json, store_errors
from medtwin.errors import MedtwinError
from medtwin.security.accounts import ROLES, Accounts

__all__ = ["app"]

app = typer.Typer(
    help="API users: add, list, passwd, set, disable, enable; assign patients to care teams.", no_args_is_help=True
)

RoleOption = Annotated[str, typer.Option("--role", help=f"One of {', '.join(ROLES)}.")]
NoForceOption = Annotated[
    bool,
    typer.Option(
        "--no-force-change",
        help="Do not make the user change this password at the next sign-in (a scripted service account).",
    ),
]


def _password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


@app.command("add")
def users_add(
    username: str = typer.Argument(..., help="Login name."),
    role: RoleOption = "clinician",
    ward: list[str] = typer.Option([], "--ward", help="A ward (unit) whose patients the user looks after; repeat."),
    team: list[str] = typer.Option([], "--team", help="A care team the user belongs to; repeat."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
    no_force_change: NoForceOption = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a user (argon2id password hash; the password is asked for, or read from stdin); the user must change it
    at the first sign-in unless --no-force-change."""
    console = make_console(stderr=as_json)
    password = _password(password_stdin)
    with store_errors(console), open_existing(db, console) as store:
        try:
            user = Accounts(store.engine).add_user(
                username, password, role, wards=ward, teams=team, password_change_required=not no_force_change
            )
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    if as_json:
        print_json(
            {
                "user_id": user.user_id,
                "username": user.username,
                "role": user.role,
                "wards": list(user.wards),
                "teams": list(user.teams),
                "password_change_required": user.password_change_required,
            }
        )
    else:
        then = "; the password must be changed at the first sign-in" if user.password_change_required else ""
        console.print(f"added {escape(user.username)} ({user.role}) id {user.user_id}{then}", highlight=False)


@app.command("list")
def users_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List the users (never their password hashes)."""
    console = make_console(stderr=as_json)
    with store_errors(console), open_existing(db, console) as store:
        users = Accounts(store.engine).users()
    if as_json:
        print_json(
            [
                {
                    "user_id": u.user_id,
                    "username": u.username,
                    "role": u.role,
                    "wards": list(u.wards),
                    "teams": list(u.teams),
                    "disabled": u.disabled,
                    "password_change_required": u.password_change_required,
                    "created": u.created.isoformat(),
                }
                for u in users
            ]
        )
        return
    table = Table(title=f"{len(users)} user(s)", title_justify="left")
    for column in ("user", "role", "wards", "teams", "status", "id"):
        table.add_column(column)
    for u in users:
        table.add_row(
            escape(u.username),
            u.role,
            escape(", ".join(u.wards)),
            escape(", ".join(u.teams)),
            ("disabled" if u.disabled else "active") + (", must change password" if u.password_change_required else ""),
            u.user_id,
        )
    console.print(table)


@app.command("passwd")
def users_passwd(
    username: str = typer.Argument(..., help="Login name."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the new password from standard input."),
    no_force_change: NoForceOption = False,
    db: DbOption = None,
) -> None:
    """Set a user's password (argon2id hash; asked for twice, or read from stdin) and end all the user's sessions;
    the user must change it at the next sign-in unless --no-force-change."""
    console = make_console()
    password = _password(password_stdin)
    with store_errors(console), open_existing(db, console) as store:
        try:
            user, ended = Accounts(store.engine).set_password(
                username, password, password_change_required=not no_force_change
            )
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    then = "; it must be changed at the next sign-in" if user.password_change_required else ""
    console.print(
        f"password of {escape(user.username)} changed; {ended} session(s) ended (refresh tokens revoked){then}",
        highlight=False,
    )


def _name_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [n.strip() for n in value.split(",") if n.strip()]


@app.command("set")
def users_set(
    username: str = typer.Argument(..., help="Login name."),
    role: str | None = typer.Option(None, "--role", help=f"New role, one of {', '.join(ROLES)}."),
    wards: str | None = typer.Option(None, "--wards", help="The user's wards, comma-separated ('' for none)."),
    teams: str | None = typer.Option(None, "--teams", help="The user's care teams, comma-separated ('' for none)."),
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a user's role, wards or care teams (what is not given stays); issued tokens keep their claims until
    they are refreshed or expire."""
    console = make_console(stderr=as_json)
    with store_errors(console), open_existing(db, console) as store:
        try:
            user = Accounts(store.engine).update_user(
                username, role=role, wards=_name_list(wards), teams=_name_list(teams)
            )
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    if as_json:
        print_json({"user_id": user.user_id, "username": user.username, "role": user.role,
                    "wards": list(user.wards), "teams": list(user.teams)})  # fmt: skip
    else:
        console.print(
            f"{escape(user.username)}: role {user.role}, wards {escape(', '.join(user.wards) or '-')}, "
            f"teams {escape(', '.join(user.teams) or '-')}",
            highlight=False,
        )


def _set_disabled(username: str, disabled: bool, db: str | None) -> None:
    console = make_console()
    with store_errors(console), open_existing(db, console) as store:
        try:
            user = Accounts(store.engine).set_disabled(username, disabled)
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    state = "disabled (no new login or refresh; issued access tokens end at their expiry)" if disabled else "enabled"
    console.print(f"{escape(user.username)}: {state}", highlight=False)


@app.command("disable")
def users_disable(username: str = typer.Argument(..., help="Login name."), db: DbOption = None) -> None:
    """Disable a user: no new login, no refresh."""
    _set_disabled(username, True, db)


@app.command("enable")
def users_enable(username: str = typer.Argument(..., help="Login name."), db: DbOption = None) -> None:
    """Enable a disabled user again."""
    _set_disabled(username, False, db)


@app.command("assign")
def users_assign(
    team: str = typer.Argument(..., help="Care team name."),
    patient_id: str = typer.Argument(..., help="Pseudonymous patient id."),
    remove: bool = typer.Option(False, "--remove", help="Take the patient out of the team's care."),
    db: DbOption = None,
) -> None:
    """Put a patient in a care team's care (its clinicians and nurses then see the patient)."""
    console = make_console()
    with store_errors(console), open_existing(db, console) as store:
        if store.patient(patient_id) is None:
            raise fail(console, f"no patient with id {patient_id!r}")
        accounts = Accounts(store.engine)
        try:
            (accounts.unassign if remove else accounts.assign)(team, patient_id)
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    console.print(
        f"{'removed' if remove else 'assigned'} {patient_id} {'from' if remove else 'to'} team {escape(team)}",
        highlight=False,
    )
