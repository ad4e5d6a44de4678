"""`medtwin clients add`: the OAuth clients of the API server (devices, services, browser apps).

A confidential client's secret is printed once, when it is created; only its argon2id hash is stored.
"""

from __future__ import annotations

import typer
from rich.markup import escape

from medtwin.cli.console import make_console
from medtwin.cli.records import DbOption, JsonOption, fail, open_existing, print_json, store_errors
from medtwin.errors import MedtwinError
from medtwin.security.accounts import ROLES, Accounts

__all__ = ["app"]

app = typer.Typer(help="OAuth clients of the API (devices, services, browser apps).", no_args_is_help=True)


@app.callback()
def clients() -> None:
    """OAuth clients of the API (devices, services, browser apps)."""


@app.command("add")
def clients_add(
    client_id: str = typer.Argument(..., help="Client id (e.g. monitor-ward3)."),
    role: str = typer.Option("device", "--role", help=f"One of {', '.join(ROLES)}."),
    scope: str = typer.Option("system/Observation.c", "--scope", help="Scopes it may be granted (SMART v2)."),
    redirect_uri: list[str] = typer.Option([], "--redirect-uri", help="Allowed redirect URI (browser apps)."),
    public: bool = typer.Option(False, "--public", help="A public client (no secret; authorization code + PKCE)."),
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register an OAuth client; prints its secret once (store it in the device's secret store)."""
    console = make_console(stderr=as_json)
    with store_errors(console), open_existing(db, console) as store:
        try:
            client, secret = Accounts(store.engine).add_client(
                client_id, role, scope, redirect_uris=redirect_uri, public=public
            )
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    if as_json:
        print_json(
            {"client_id": client.client_id, "role": client.role, "scopes": client.scopes, "client_secret": secret}
        )
        return
    console.print(f"client {escape(client.client_id)} ({client.role}) scopes: {escape(client.scopes)}", highlight=False)
    if secret is not None:
        console.print(f"client secret (shown once): {secret}", highlight=False)
