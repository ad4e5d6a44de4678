"""`medtwin audit`: check the audit chain (verify), write it as FHIR AuditEvent (export), list break-glass
events for review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import func, select

from medtwin.cli.console import make_console
from medtwin.cli.records import DbOption, JsonOption, fail, open_existing, print_json, store_errors
from medtwin.errors import MedtwinError
from medtwin.security.audit import AuditRecord, AuditTrail, VerifyResult
from medtwin.store import Store, schema

__all__ = ["app"]

app = typer.Typer(help="The audit chain: verify, export (FHIR AuditEvent), review break-glass.", no_args_is_help=True)

KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--signing-key",
        help="The Ed25519 key that signs checkpoints (default: $MEDTWIN_AUDIT_KEY_FILE or <database>.audit-key).",
    ),
]


def _records(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.audit_log)).scalar_one())


def _record_json(r: AuditRecord) -> dict[str, Any]:
    e = r.event
    return {
        "seq": r.seq,
        "time": e.time.isoformat(),
        "actor": e.actor,
        "role": e.role,
        "action": e.action,
        "resource": e.resource,
        "patient_id": e.patient_id,
        "outcome": e.outcome,
        "source": e.source,
        "purpose": e.purpose,
        "detail": e.detail,
    }


@app.command("verify")
def verify(db: DbOption = None, signing_key: KeyOption = None, as_json: JsonOption = False) -> None:
    """Check the chain, its signed checkpoints and the head file; name the first bad record (exit 1 if any)."""
    console = make_console(stderr=as_json)
    with store_errors(console), open_existing(db, console) as store:
        try:
            result = AuditTrail(store, signing_key, create_key=False).verify()
        except MedtwinError as exc:
            if _records(store) == 0:  # nothing audited yet: no signing key was ever needed
                result = VerifyResult(True, None, "no audit records yet")
            else:
                raise fail(console, str(exc)) from None
    if as_json:
        print_json(
            {"ok": result.ok, "first_bad_seq": result.first_bad_seq, "reason": result.reason,
             "records": result.records, "checkpoints": result.checkpoints}
        )  # fmt: skip
    elif result.ok:
        make_console().print(f"[green]audit chain intact[/green]: {result.reason}")
    else:
        console.print(f"[red]audit chain broken at record {result.first_bad_seq}[/red]: {escape(result.reason)}")
    if not result.ok:
        raise typer.Exit(code=1)


@app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (FHIR Bundle, collection).")],
    db: DbOption = None,
    signing_key: KeyOption = None,
) -> None:
    """Write the audit chain as FHIR R4 AuditEvent resources (BALP-style) in a collection Bundle."""
    console = make_console(stderr=True)
    with store_errors(console), open_existing(db, console) as store:
        try:
            events = AuditTrail(store, signing_key, create_key=False).export_fhir()
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": e} for e in events]}
    try:
        out.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    except OSError as exc:
        raise fail(console, f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    make_console().print(f"{len(events)} AuditEvent resources written to {escape(str(out))}")


@app.command("review")
def review(db: DbOption = None, signing_key: KeyOption = None, as_json: JsonOption = False) -> None:
    """List the break-glass events (access outside the care relationship, with the reason given) for review."""
    console = make_console(stderr=as_json)
    with store_errors(console), open_existing(db, console) as store:
        try:
            records = AuditTrail(store, signing_key, create_key=False).review()
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    if as_json:
        print_json([_record_json(r) for r in records])
        return
    table = Table(title=f"{len(records)} break-glass events")
    for col in ("seq", "time", "actor", "role", "patient", "resource", "reason", "source"):
        table.add_column(col, overflow="fold")
    for r in records:
        e = r.event
        table.add_row(
            str(r.seq), e.time.strftime("%Y-%m-%d %H:%M:%S"), escape(e.actor), escape(e.role),
            escape(e.patient_id or ""), escape(e.resource), escape(e.purpose or e.detail or ""), escape(e.source),
        )  # fmt: skip
    make_console().print(table)
