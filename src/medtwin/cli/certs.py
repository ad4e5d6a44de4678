"""`medtwin certs dev`: a development CA with server and client certificates (MLLP over TLS, HTTPS)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medtwin.cli.console import make_console
from medtwin.cli.records import fail
from medtwin.security.certs import make_dev_certificates

__all__ = ["app"]

app = typer.Typer(help="Development certificates.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Development certificates (`medtwin certs dev`)."""


@app.command("dev")
def dev(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the PEM files to.")] = Path("certs"),
    client: Annotated[
        list[str] | None, typer.Option("--client", help="A sending facility (MSH-4) to issue a client certificate for.")
    ] = None,
    server_name: Annotated[
        list[str] | None, typer.Option("--server-name", help="Extra DNS name of the server.")
    ] = None,
) -> None:
    """Make a development CA, a server certificate (localhost) and client certificates; not for production."""
    console = make_console(stderr=True)
    try:
        made = make_dev_certificates(out, clients=client or ["DEV-FACILITY"], server_names=server_name or [])
    except OSError as exc:
        raise fail(console, f"cannot write certificates to {str(out)!r}: {exc.strerror or exc}") from None
    show = make_console()
    show.print(f"CA: {escape(str(made.ca_cert))}  server: {escape(str(made.server_cert))} + key")
    for name, (cert, _key) in made.clients.items():
        show.print(f"client {escape(name)}: {escape(str(cert))} + key")
    show.print(
        f"medtwin listen --tls-cert {made.server_cert} --tls-key {made.server_key} --client-ca {made.ca_cert}",
        highlight=False,
    )
