"""`medtwin alerts ...` and the alert lines that `medtwin listen` / `medtwin demo` print as alerts fire.

Alerts are stored under the patient's pseudonymous id (``pt-5ee5...``); a nurse acts on a name, an MRN and a
bed. Where the reader may see identity (the command line of someone with the store), each alert shows the
patient's name and MRN from the store's identity table and the ward and bed of the patient's current stay when
known; ``--pseudonymous`` shows the pseudonymous id only (screen sharing, a log that leaves the ward).
:func:`patient_label` does the lookup; :class:`AlertPrinter` prints live alerts in the twin runtime's process.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medtwin.cli.console import make_console
from medtwin.errors import MedtwinError
from medtwin.records import Event, Patient

__all__ = ["AlertPrinter", "PatientLabel", "list_alerts", "patient_label", "register", "short_id"]

_SEVERITY_STYLE = {"high": "bold red", "medium": "red", "low-medium": "yellow", "low": "green"}
_STATUSES = ("active", "acknowledged", "resolved")
PatientLabel = tuple[str, str]  # (name and MRN, ward and bed)


def short_id(event_id: str) -> str:
    """What `medtwin alerts list` shows of an alert id: its last 8 characters. Ids are time-ordered UUIDs
    (``medtwin.records.new_id``) whose first characters are the time, shared by alerts raised together; the
    tail is random. `alerts ack` / `resolve` take the whole id, a unique prefix, or this tail."""
    return event_id[-8:]


def _mrn(patient: Patient) -> str | None:
    identity = patient.identity
    if identity is None or not identity.identifiers:
        return None
    chosen = next((i for i in identity.identifiers if i.type_code == "MR"), identity.identifiers[0])
    return chosen.value


def patient_label(store: Any, patient_id: str | None) -> PatientLabel:
    """``("Ada Lovelace, MRN 12345", "WARD-3 bed 12")`` for *patient_id* from *store*; the pseudonymous id when
    the store has no identity for it, and ``""`` for an unknown location."""
    if patient_id is None:
        return "(no patient)", ""
    patient = store.patient(patient_id)
    if patient is None:
        return patient_id, ""
    name = patient.identity.display_name if patient.identity else ""
    mrn = _mrn(patient)
    who = ", ".join(p for p in (name, f"MRN {mrn}" if mrn else "") if p) or patient_id
    where = ""
    encounters = store.encounters(patient_id)
    current = next((e for e in reversed(encounters) if e.end is None), encounters[-1] if encounters else None)
    if current is not None and current.locations:
        stay = current.locations[-1]
        where = stay.unit + (f" bed {stay.bed}" if stay.bed else "")
    return who, where


def _change(event: Event) -> str:
    """``escalated from medium``, ``recurred`` or ``""`` for a first version."""
    if int(event.data.get("revision", 1)) <= 1:
        return ""
    parts = [f"escalated from {event.data['escalated_from']}"] if event.data.get("escalated_from") else []
    if event.data.get("recurred"):
        parts.append("recurred")
    return ", ".join(parts or ["updated"]) + f" at {str(event.data.get('updated', ''))[11:16]}"


def _line(event: Event, label: PatientLabel | None) -> str:
    style = _SEVERITY_STYLE.get(event.severity or "", "white")
    who = escape(event.patient_id or "") if label is None else f"[bold]{escape(label[0])}[/bold]"
    where = f" ({escape(label[1])})" if label and label[1] else ""
    update = _change(event)
    update = f" [dim]({update})[/dim]" if update else ""
    when = str(event.data["updated"])[:16].replace("T", " ") if update else f"{event.time:%Y-%m-%d %H:%M}"
    return (
        f"[dim]{when}[/dim] [{style}]{(event.severity or '').upper():>10}[/{style}] "
        f"{who}{where}  [bold]{event.code}[/bold]  {escape(event.message)}{update}  "
        f"[dim]{short_id(event.event_id)}[/dim]"
    )


class AlertPrinter:
    """Prints each alert event as it fires, with the patient's name, MRN and location unless *pseudonymous*.

    It runs in the twin runtime's process (so it is picklable: the store is opened there, on first use, read-only
    in spirit: no migration, no checkpoints) and remembers each patient's label.
    """

    def __init__(self, db: str | None, *, pseudonymous: bool = False) -> None:
        self.db = db
        self.pseudonymous = pseudonymous
        self._store: Any = None
        self._labels: dict[str, PatientLabel] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"db": self.db, "pseudonymous": self.pseudonymous}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["db"], pseudonymous=state["pseudonymous"])  # type: ignore[misc]

    def label(self, patient_id: str | None) -> PatientLabel | None:
        """The label shown for *patient_id* (None when pseudonymous or the store cannot be read)."""
        if self.pseudonymous or patient_id is None:
            return None
        cached = self._labels.get(patient_id)
        if cached is not None:
            return cached
        try:
            if self._store is None:
                from medtwin.store import Store

                self._store = Store(self.db, migrate=False, cache_mib=1, checkpoints_elsewhere=True)
            label = patient_label(self._store, patient_id)
        except MedtwinError:
            return None  # the alert still prints, with the pseudonymous id
        if label[0] != patient_id:  # keep looking while the identity is not stored yet
            self._labels[patient_id] = label
        return label

    def __call__(self, event: Event) -> None:
        if event.kind == "alert":
            make_console().print(_line(event, self.label(event.patient_id)), highlight=False)


def _open_store(db: str | None) -> Any:
    from medtwin.cli.records import open_existing

    return open_existing(db)  # these commands read alerts: never a new, empty database


def list_alerts(
    db: str | None, patient: str | None, status: str, pseudonymous: bool, as_json: bool, console: Console
) -> None:
    """Print the alerts of *status* (or ``all``) as a table (or JSON), and how many of other statuses are hidden."""
    if status != "all" and status not in _STATUSES:
        typer.echo(f"error: --status {status!r}: use {', '.join(_STATUSES)} or all", err=True)
        raise typer.Exit(2)
    store = _open_store(db)
    try:
        events = store.events(patient_id=patient, kind="alert", status=None if status == "all" else status)
        counts = store.event_counts(kind="alert", patient_id=patient)
        labels = {} if pseudonymous else {pid: patient_label(store, pid) for pid in {e.patient_id for e in events}}
    finally:
        store.close()
    hidden = {s: n for s, n in counts.items() if status != "all" and s != status and n}
    if as_json:
        payload = [
            {
                "event_id": e.event_id,
                "patient_id": e.patient_id,
                **({} if pseudonymous else {"patient": labels[e.patient_id][0], "location": labels[e.patient_id][1]}),
                "code": e.code,
                "severity": e.severity,
                "status": e.status,
                "time": e.time.isoformat(),
                "updated": e.data.get("updated"),
                "revision": e.data.get("revision", 1),
                "message": e.message,
            }
            for e in events
        ]
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{len(events)} {'' if status == 'all' else status + ' '}alert(s)", title_justify="left")
    located = any(label[1] for label in labels.values())  # a ward column only when some patient has one
    for column in ("raised", "severity", "patient", *(["where"] if located else []), "alert", "message", "status"):
        table.add_column(column)
    table.add_column("id")
    for e in events:
        style = _SEVERITY_STYLE.get(e.severity or "", "white")
        who, where = (e.patient_id or "", "") if pseudonymous else labels[e.patient_id]
        change = _change(e)
        updated = f" ({change}; version {e.data['revision']})" if change else ""
        table.add_row(
            f"{e.time:%Y-%m-%d %H:%M}",
            f"[{style}]{(e.severity or '').upper()}[/{style}]",
            escape(who),
            *([escape(where)] if located else []),
            e.code,
            escape(e.message) + updated,
            e.status,
            short_id(e.event_id),
        )
    console.print(table)
    if hidden:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(hidden.items()))
        console.print(f"not shown: {parts} (show them with --status all, or --status resolved)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `alerts` group (list, ack, resolve) to the top-level *app*."""
    alerts_app = typer.Typer(help="List, acknowledge and resolve alerts.", no_args_is_help=True)
    app.add_typer(alerts_app, name="alerts")

    @alerts_app.command("list")
    def alerts_list(
        db: str | None = typer.Option(None, help="Database URL (default: the configured store)."),
        patient: str | None = typer.Option(None, help="Only this patient (pseudonymous id)."),
        status: str = typer.Option("active", help="Which alerts: active, acknowledged, resolved, or all."),
        pseudonymous: bool = typer.Option(
            False, "--pseudonymous", help="Show pseudonymous patient ids only, no name, MRN or location."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List alerts, oldest first, with the patient's name, MRN and location; says how many are not shown."""
        list_alerts(db, patient, status, pseudonymous, as_json, make_console())

    def _set_status(event_id: str, new_status: str, db: str | None, by: str | None) -> None:
        store = _open_store(db)
        try:
            alerts = store.events(kind="alert")
            matches = [e for e in alerts if e.event_id == event_id] or [
                e for e in alerts if e.event_id.startswith(event_id) or e.event_id.endswith(event_id)
            ]
            if len(matches) != 1:
                typer.echo(f"error: {len(matches)} alerts match id {event_id!r} (give more characters)", err=True)
                raise typer.Exit(2)
            event = store.update_event_status(matches[0].event_id, new_status, by=by)
        except MedtwinError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            store.close()
        typer.echo(f"{event.event_id} {event.code} -> {event.status}")

    @alerts_app.command("ack")
    def alerts_ack(
        event_id: str = typer.Argument(..., help="Alert id, a unique prefix, or the short id the list shows."),
        db: str | None = typer.Option(None, help="Database URL (default: the configured store)."),
        by: str | None = typer.Option(None, help="Who acknowledges."),
    ) -> None:
        """Acknowledge an alert (an escalation makes it active again)."""
        _set_status(event_id, "acknowledged", db, by)

    @alerts_app.command("resolve")
    def alerts_resolve(
        event_id: str = typer.Argument(..., help="Alert id, a unique prefix, or the short id the list shows."),
        db: str | None = typer.Option(None, help="Database URL (default: the configured store)."),
        by: str | None = typer.Option(None, help="Who resolves."),
    ) -> None:
        """Mark an alert resolved."""
        _set_status(event_id, "resolved", db, by)
