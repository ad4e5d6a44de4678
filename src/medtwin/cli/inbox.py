"""`medtwin inbox`: the raw inbound log and its dead letters, for interface engineers (list, show, retry)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from medtwin.cli.console import make_console
from medtwin.cli.records import DbOption, JsonOption, fail, open_existing, print_json, store_errors
from medtwin.errors import MedtwinError
from medtwin.interop.inbox import retry_rejected
from medtwin.store import RawLogEntry

__all__ = ["app"]

app = typer.Typer(help="The raw inbound log: dead letters, conflicts, retries.", no_args_is_help=True)

_STATUSES = ("rejected", "accepted", "unmapped", "duplicate", "all")


def _entry_json(e: RawLogEntry, *, payload: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "raw_id": e.raw_id,
        "received": e.received.isoformat(),
        "status": e.status,
        "source_system": e.source_system,
        "source_id": e.source_id,
        "content_type": e.content_type,
        "records": e.record_count,
        "reason": e.reason,
        "related_raw_id": e.related_raw_id,
        "relation": e.relation,
    }
    if payload and e.payload is not None:
        out["payload"] = e.payload.decode("utf-8", errors="replace")
    return out


@app.command("list")
def list_entries(
    status: Annotated[str, typer.Option(help=f"One of {', '.join(_STATUSES)}.")] = "rejected",
    conflicts: Annotated[bool, typer.Option("--conflicts", help="Only resends kept as conflicts.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Entries shown, newest first.")] = 20,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List raw inbound entries, newest first (default: the dead letters)."""
    console = make_console(stderr=as_json)
    if status not in _STATUSES:
        raise fail(console, f"--status: {status!r} is not one of {', '.join(_STATUSES)}")
    with store_errors(console), open_existing(db, console) as store:
        entries = store.raw_log(
            None if status == "all" else status, limit, relation="conflict-of" if conflicts else None
        )
    if as_json:
        print_json([_entry_json(e) for e in entries])
        return
    table = Table(title=f"{len(entries)} {'conflicting resends' if conflicts else status} entries")
    for col in ("raw id", "received", "status", "source", "key", "records", "reason"):
        table.add_column(col, overflow="fold")
    for e in entries:
        related = f" ({e.relation} {e.related_raw_id})" if e.relation else ""
        table.add_row(
            str(e.raw_id),
            e.received.strftime("%Y-%m-%d %H:%M:%S"),
            e.status + related,
            escape(e.source_system[:40]),
            escape(e.source_id[:60]),
            str(e.record_count),
            escape((e.reason or "")[:120]),
        )
    make_console().print(table)


@app.command("show")
def show(
    raw_id: Annotated[int, typer.Argument(help="The raw id (`medtwin inbox list`).")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one entry: its reason, its payload and its history (duplicates, conflicts, retries)."""
    console = make_console(stderr=as_json)
    with store_errors(console), open_existing(db, console) as store:
        entry = store.raw_entry(raw_id)
        if entry is None:
            raise fail(console, f"no raw entry {raw_id} (see `medtwin inbox list --status all`)")
        history = store.raw_related(raw_id)
        origin = store.raw_entry(entry.related_raw_id) if entry.related_raw_id is not None else None
    if as_json:
        print_json(
            {
                **_entry_json(entry, payload=True),
                "refers_to": _entry_json(origin) if origin is not None else None,
                "history": [_entry_json(e) for e in history],
            }
        )
        return
    out = make_console()
    out.print(f"[bold]raw entry {entry.raw_id}[/bold]: {entry.status}, received {entry.received.isoformat()}")
    out.print(f"source {escape(entry.source_system)}  key {escape(entry.source_id)}  ({entry.content_type})")
    out.print(f"records: {entry.record_count}")
    if origin is not None:
        out.print(f"{entry.relation} raw entry {origin.raw_id} ({origin.status}, {origin.received.isoformat()})")
    if entry.reason:
        out.print(f"[yellow]reason:[/yellow] {escape(entry.reason)}")
    for e in history:
        out.print(f"  raw entry {e.raw_id}: {e.relation} this one, {e.status}, {e.received.isoformat()}")
    text = (entry.payload or b"").decode("utf-8", errors="replace")
    out.print("[bold]payload[/bold]" + (" (none: a duplicate keeps no copy)" if not text else ":"))
    if text:
        out.print(escape(text.replace("\r\n", "\n").replace("\r", "\n")), highlight=False, soft_wrap=True)


@app.command("retry")
def retry(
    raw_id: Annotated[int, typer.Argument(help="The raw id of a rejected entry.")],
    payload: Annotated[Path | None, typer.Option("--payload", help="A corrected payload to use instead.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Process a rejected entry again (after a fix); the original stays, the retry is a new entry naming it."""
    console = make_console(stderr=as_json)
    data = None
    if payload is not None:
        try:
            data = payload.read_bytes()
        except OSError as exc:
            raise fail(console, f"cannot read {payload}: {exc.strerror or exc}") from None
    with store_errors(console), open_existing(db, console) as store:
        try:
            outcomes = retry_rejected(store, raw_id, payload=data)
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
    if as_json:
        print_json([_outcome_json(o) for o in outcomes])
    else:
        for o in outcomes:
            colour = "green" if o.status in ("accepted", "unmapped", "duplicate") else "red"
            console.print(f"raw entry {o.raw_id}: [{colour}]{o.status}[/{colour}], {o.records} records"
                          + (f"; {escape(o.reason)}" if o.reason and o.status == "rejected" else ""))  # fmt: skip
    if any(o.status == "rejected" for o in outcomes):
        raise typer.Exit(1)


def _outcome_json(o: Any) -> dict[str, Any]:
    return {"raw_id": o.raw_id, "status": o.status, "records": o.records, "reason": o.reason}
