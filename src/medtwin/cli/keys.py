"""`medtwin keys`: the keys of encryption at rest (show where they come from, rotate the master key)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from sqlalchemy import func, select

from medtwin.cli.console import make_console
from medtwin.cli.records import DbOption, JsonOption, fail, open_existing, print_json, store_errors
from medtwin.errors import MedtwinError
from medtwin.security.rotation import rotate_master_key
from medtwin.store import schema

__all__ = ["app"]

app = typer.Typer(help="Keys of encryption at rest: status, rotate the master key.", no_args_is_help=True)


@app.command("status")
def status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Where the keyring comes from, its master keys, and how many data keys the database holds."""
    console = make_console(stderr=as_json)
    with store_errors(console), open_existing(db, console) as store:
        with store.engine.connect() as conn:
            t = schema.patient_keys
            stmt = select(t.c.master_key_id, func.count()).group_by(t.c.master_key_id)
            by_master: dict[str, int] = {str(k): int(v) for k, v in conn.execute(stmt)}
        ring = store.keyring
    source = str(ring.path) if ring.path else "$MEDTWIN_MASTER_KEY (or a keyring of this process)"
    doc = {
        "source": source,
        "current_master_key": ring.current[0],
        "master_keys": [k for k, _ in ring.master_keys],
        "data_keys_by_master_key": by_master,
    }
    if as_json:
        print_json(doc)
        return
    out = make_console()
    out.print(f"keyring: {escape(source)}")
    out.print(f"current master key: {ring.current[0]} ({len(ring.master_keys)} held)")
    for k, v in by_master.items():
        out.print(f"  {v} data keys wrapped by {escape(k)}")


@app.command("rotate")
def rotate(
    db: DbOption = None,
    keep_old: Annotated[bool, typer.Option("--keep-old", help="Keep the retired master keys in the key file.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Make a new master key current and re-wrap every data key under it (the data is not re-encrypted)."""
    console = make_console(stderr=as_json)
    with store_errors(console), open_existing(db, console) as store:
        try:
            report = rotate_master_key(store, keep_old=keep_old)
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    if as_json:
        print_json({"new_key_id": report.new_key_id, "retired": list(report.retired), "rewrapped": report.rewrapped})
        return
    make_console().print(
        f"master key {report.new_key_id} is current; {report.rewrapped} data keys re-wrapped"
        + (f"; retired {', '.join(report.retired)}" if report.retired else "")
    )
