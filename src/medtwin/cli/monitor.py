"""Top-level `medtwin` commands of the monitor area: listen, monitors, news2, alerts, demo."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import signal
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from medtwin.errors import MedtwinError, ValidationError
from medtwin.monitoring import mews_score, news2_score, qsofa_score
from medtwin.monitoring.virtual import PROFILES, virtual_ward
from medtwin.records import Event

__all__ = ["register", "short_id"]

T = TypeVar("T")
_SUPERVISE_S = 1.0  # how often `medtwin listen` looks for a listener process that died
_SEVERITY_STYLE = {"high": "bold red", "medium": "red", "low-medium": "yellow", "low": "green"}


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run *main* on uvloop where installed (see :func:`medtwin.interop.mllp.run`)."""
    from medtwin.interop.mllp import run

    return run(main)


def _open_store(db: str | None) -> Any:
    from medtwin.cli.records import open_existing

    return open_existing(db)  # these commands read alerts: never a new, empty database


def short_id(event_id: str) -> str:
    """What `medtwin alerts list` shows of an alert id: its last 8 characters. Ids are time-ordered UUIDs
    (``medtwin.records.new_id``) whose first characters are the time, shared by alerts raised together; the
    tail is random. `alerts ack` / `resolve` take the whole id, a unique prefix, or this tail."""
    return event_id[-8:]


def _print_event(console: Console, event: Event) -> None:
    style = _SEVERITY_STYLE.get(event.severity or "", "white")
    console.print(
        f"[dim]{event.time:%Y-%m-%d %H:%M}[/dim] [{style}]{(event.severity or '').upper():>10}[/{style}] "
        f"{event.patient_id}  [bold]{event.code}[/bold]  {event.message}  [dim]{short_id(event.event_id)}[/dim]"
    )


def print_alert(event: Event) -> None:
    """Print *event* if it is an alert (used in the twin runtime's worker process, hence module level)."""
    if event.kind == "alert":
        _print_event(Console(), event)


async def _listen(
    db: str | None,
    host: str,
    port: int,
    seconds: float | None,
    console: Console,
    *,
    max_connections: int,
    quiet: bool,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    freshness_minutes: float = 60.0,
    runtime_mode: str = "process",
    service_heap: bool = False,
    processes: int = 1,
    tls_files: tuple[str | None, str | None] = (None, None),
    max_connections_per_peer: int | None = None,
) -> dict[str, Any]:
    from medtwin.interop.mllp import MllpConfig, MllpServer
    from medtwin.interop.mllp_pool import ListenerPool, server_ssl_context
    from medtwin.service import prepare_service_heap
    from medtwin.twin import RuntimeProcess, TwinRuntime
    from medtwin.twin.worker import listener_store

    if runtime_mode not in ("process", "thread"):
        raise ValidationError(f"--runtime: {runtime_mode!r} is not one of process, thread")
    if processes < 1:
        raise ValidationError(f"--processes: at least 1, got {processes}")
    if processes > 1 and runtime_mode == "thread":  # the thread sees only its own process's messages
        raise ValidationError("--processes above 1 needs --runtime process (a runtime thread would miss the messages "
                              "the other listener processes store)")  # fmt: skip
    ssl_context = server_ssl_context(*tls_files)  # PEM files (cert, key); every listener process loads them
    # listeners and worker take turns fairly on one write lock; this process checkpoints for all of them
    store, write_lock = listener_store(db, shared_lock=runtime_mode == "process" or processes > 1)
    config = MllpConfig(
        host=host,
        port=port,
        max_connections=max_connections,
        max_connections_per_peer=max_connections_per_peer,
        ssl_context=ssl_context,
        reuse_port=processes > 1,
    )
    pool: ListenerPool | None = None
    if processes > 1:  # refused (PostgreSQL, in-memory) before anything is started
        assert write_lock is not None
        try:
            pool = ListenerPool(
                db, config, extra=processes - 1, write_lock=write_lock, tls_cert=tls_files[0], tls_key=tls_files[1]
            )
        except BaseException:
            store.close()
            raise
    loop = asyncio.get_running_loop()
    freshness = timedelta(minutes=freshness_minutes)
    runtime: TwinRuntime | None = None
    worker: RuntimeProcess | None = None
    if runtime_mode == "thread":
        runtime = TwinRuntime(store, freshness=freshness)
        if not quiet:
            runtime.subscribe(print_alert)
        runtime.start()
    else:  # the twins follow the store's raw log in their own process (medtwin.twin.worker)
        worker = RuntimeProcess(db, freshness=freshness, on_event=None if quiet else print_alert, write_lock=write_lock)
        try:
            await loop.run_in_executor(None, worker.start)
        except BaseException:
            store.close()
            raise
    on_stored = None if runtime is None else (lambda b: runtime.offer(b.records, b.received_monotonic))
    server = MllpServer(store, config, on_stored=on_stored)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    events: int | None = None
    if service_heap:  # this process is the service (`medtwin listen`), not a caller's (medtwin.service)
        prepare_service_heap()
    try:
        bound = await server.start()
        if pool is not None:
            await loop.run_in_executor(None, pool.start, bound)
        console.print(
            f"listening on {host}:{bound} (MLLP{', TLS' if ssl_context else ''}) store={store.url}; "
            f"{processes} listener process{'es' if processes > 1 else ''}; "
            f"twin runtime: {'own process' if worker is not None else 'thread'}",
            highlight=False,
        )
        if on_ready is not None:
            on_ready(bound)
        deadline = None if seconds is None else loop.time() + seconds
        while not stop.is_set() and (deadline is None or loop.time() < deadline):
            wait = _SUPERVISE_S if deadline is None else max(0.0, min(_SUPERVISE_S, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if pool is not None and not stop.is_set():
                await loop.run_in_executor(None, pool.revive)  # a listener process that died is started again
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        children = [] if pool is None else await loop.run_in_executor(None, pool.stop)
        await server.close()
        if runtime is not None:
            await loop.run_in_executor(None, runtime.close)
            events = runtime.events_published
        if worker is not None:
            report = await loop.run_in_executor(None, worker.stop)
            if "error" in report:
                console.print(f"[red]twin runtime worker: {report['error']}[/red]")
            events = report.get("events")
        store.close()
    stats = server.stats
    counters = ("accepted", "duplicates", "rejected", "unmapped", "errors", "records")
    summary: dict[str, Any] = {
        name: getattr(stats, name) + sum(int(child.get(name, 0)) for child in children) for name in counters
    }
    summary["events"] = events
    if pool is not None:
        summary["processes"] = processes
        summary["accepted_by_process"] = [stats.accepted, *(int(child.get("accepted", 0)) for child in children)]
        summary["process_errors"] = [child["error"] for child in children if "error" in child]
        summary["processes_revived"] = pool.revived
    return summary


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level *app*."""

    @app.command("listen")
    def listen(
        port: int = typer.Option(2575, help="TCP port (0 = any free port)."),
        host: str = typer.Option("127.0.0.1", help="Address to bind."),
        db: str | None = typer.Option(
            None, help="Database URL (default: $MEDTWIN_DATABASE_URL, medtwin.toml, ./medtwin.db)."
        ),
        minutes: float | None = typer.Option(None, help="Stop after this many minutes (default: until Ctrl-C)."),
        max_connections: int = typer.Option(64, help="Concurrent connections accepted."),
        max_connections_per_peer: int | None = typer.Option(
            None, min=1, help="Concurrent connections from one address (default: half of --max-connections)."
        ),
        tls_cert: str | None = typer.Option(None, help="PEM certificate chain: serve MLLP over TLS."),
        tls_key: str | None = typer.Option(None, help="PEM private key of --tls-cert."),
        quiet: bool = typer.Option(False, help="Do not print alerts as they fire."),
        freshness_minutes: float = typer.Option(60.0, min=1.0, help="Vitals older than this are not combined."),
        runtime: str = typer.Option(
            "process", help="Twin runtime: 'process' (own process, follows the stored log) or 'thread'."
        ),
        processes: int = typer.Option(
            1,
            min=1,
            help="Listener processes sharing the port (SO_REUSEPORT; SQLite): more store more messages per second "
            "on a machine with cores to spare. --max-connections is per process.",
        ),
    ) -> None:
        """MLLP listener + twin runtime on the configured store: stores HL7 v2, acknowledges, raises alerts."""
        console = Console()
        try:
            summary = run_loop(
                _listen(
                    db,
                    host,
                    port,
                    None if minutes is None else minutes * 60,
                    console,
                    max_connections=max_connections,
                    max_connections_per_peer=max_connections_per_peer,
                    quiet=quiet,
                    freshness_minutes=freshness_minutes,
                    runtime_mode=runtime,
                    service_heap=True,
                    processes=processes,
                    tls_files=(tls_cert, tls_key),
                )
            )
        except ValidationError as exc:  # a refused option combination: say which, no traceback
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        console.print(f"stopped: {json.dumps(summary)}", highlight=False)

    @app.command("monitors")
    def monitors(
        port: int = typer.Option(2575, help="Listener port."),
        host: str = typer.Option("127.0.0.1", help="Listener address."),
        patients: int = typer.Option(4, min=1, help="Number of virtual patients (profiles cycle)."),
        interval: float = typer.Option(1.0, min=0.001, help="Seconds between readings of one monitor."),
        minutes: float = typer.Option(1.0, min=0.0, help="How long to run."),
        time_scale: float = typer.Option(60.0, min=0.0, help="Simulated seconds per real second."),
        seed: int = typer.Option(0, help="Random seed of the vital-sign noise."),
        resend_grace: float = typer.Option(10.0, min=0.0, help="Seconds to keep resending unacknowledged messages."),
    ) -> None:
        """Virtual bedside monitors: send ORU^R01 vital signs over MLLP (stable, sepsis, hypoxic, post-op)."""
        from medtwin.interop.virtual_feed import run_virtual_monitors

        ward = virtual_ward(patients, start=datetime.now(UTC), seed=seed)
        console = Console()
        console.print(f"{patients} monitors -> {host}:{port} ({', '.join(p.profile for p in ward)})", highlight=False)
        stats = run_loop(
            run_virtual_monitors(
                host,
                port,
                ward,
                interval_s=interval,
                duration_s=minutes * 60,
                time_scale=time_scale,
                resend_grace_s=resend_grace,
            )
        )
        lat = sorted(stats.ack_latencies_s) or [0.0]
        console.print(
            f"sent {stats.sent}, acknowledged {stats.acked}, negative {stats.negative}, resends {stats.resends}; "
            f"ACK p50 {lat[len(lat) // 2] * 1e3:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f} ms",
            highlight=False,
        )
        if stats.acked == 0:
            raise typer.Exit(1)

    @app.command("news2")
    def news2(
        rr: float | None = typer.Option(None, "--rr", help="Respiration rate /min."),
        spo2: float | None = typer.Option(None, "--spo2", help="SpO2 %."),
        oxygen: bool | None = typer.Option(None, "--oxygen/--air", help="On supplemental oxygen, or on air."),
        sbp: float | None = typer.Option(None, "--sbp", help="Systolic blood pressure mmHg."),
        pulse: float | None = typer.Option(None, "--pulse", help="Pulse /min."),
        acvpu: str | None = typer.Option(None, "--acvpu", help="Consciousness: A, C (new confusion), V, P or U."),
        temp: float | None = typer.Option(None, "--temp", help="Temperature degC."),
        scale: int = typer.Option(1, "--scale", min=1, max=2, help="SpO2 scale (2: hypercapnic respiratory failure)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Score one set of vitals: NEWS2 (RCP 2017) with qSOFA and MEWS alongside."""
        try:
            r = news2_score(
                respiration_rate_per_min=rr,
                spo2_percent=spo2,
                on_oxygen=oxygen,
                systolic_bp_mm_hg=sbp,
                pulse_per_min=pulse,
                consciousness=acvpu,
                temperature_c=temp,
                spo2_scale=2 if scale == 2 else 1,
            )
            q = qsofa_score(respiration_rate_per_min=rr, systolic_bp_mm_hg=sbp, acvpu=acvpu)
            m = mews_score(
                systolic_bp_mm_hg=sbp,
                heart_rate_per_min=pulse,
                respiration_rate_per_min=rr,
                temperature_c=temp,
                avpu=acvpu,
            )
        except ValidationError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        result = {
            "news2": {
                "total": r.total,
                "level": r.level,
                "scores": r.scores,
                "missing": list(r.missing),
                "complete": r.complete,
                "spo2_scale": r.spo2_scale,
            },
            "qsofa": {"total": q.total, "positive": q.positive, "missing": list(q.missing)},
            "mews": {"total": m.total, "high_risk": m.high_risk, "missing": list(m.missing)},
        }
        if as_json:
            typer.echo(json.dumps(result, indent=2))
            return
        console = Console()
        table = Table(title=f"NEWS2 {r.total} - {r.level} clinical response" + ("" if r.complete else " (partial)"))
        table.add_column("parameter")
        table.add_column("points", justify="right")
        for name, points in r.scores.items():
            table.add_row(name, "missing" if points is None else str(points))
        console.print(table)
        console.print(f"qSOFA {q.total}/3{' positive' if q.positive else ''}; MEWS {m.total}", highlight=False)

    alerts_app = typer.Typer(help="List and acknowledge alerts.", no_args_is_help=True)
    app.add_typer(alerts_app, name="alerts")

    @alerts_app.command("list")
    def alerts_list(
        db: str | None = typer.Option(None, help="Database URL."),
        patient: str | None = typer.Option(None, help="Only this patient id."),
        status: str | None = typer.Option("active", help="active, acknowledged, resolved, or 'all'."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List alert events (newest last)."""
        store = _open_store(db)
        try:
            events = store.events(patient_id=patient, kind="alert", status=None if status == "all" else status)
        finally:
            store.close()
        if as_json:
            payload = [
                {
                    "event_id": e.event_id,
                    "patient_id": e.patient_id,
                    "code": e.code,
                    "severity": e.severity,
                    "status": e.status,
                    "time": e.time.isoformat(),
                    "message": e.message,
                }
                for e in events
            ]
            typer.echo(json.dumps(payload, indent=2))
            return
        console = Console()
        for e in events:
            _print_event(console, e)
        console.print(f"{len(events)} alert(s)", highlight=False)

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
        db: str | None = typer.Option(None, help="Database URL."),
        by: str | None = typer.Option(None, help="Who acknowledges."),
    ) -> None:
        """Acknowledge an alert (an escalation will still fire)."""
        _set_status(event_id, "acknowledged", db, by)

    @alerts_app.command("resolve")
    def alerts_resolve(
        event_id: str = typer.Argument(..., help="Alert id, a unique prefix, or the short id the list shows."),
        db: str | None = typer.Option(None, help="Database URL."),
        by: str | None = typer.Option(None, help="Who resolves."),
    ) -> None:
        """Mark an alert resolved."""
        _set_status(event_id, "resolved", db, by)

    @app.command("demo")
    def demo(
        minutes: float = typer.Option(1.0, min=0.05, help="How long the live part runs."),
        patients: int = typer.Option(4, min=1, help="Virtual patients (stable, sepsis, hypoxic, post-op, ...)."),
        db: str | None = typer.Option(None, help="Database URL."),
        time_scale: float = typer.Option(720.0, help="Simulated seconds per real second (720: 12 min per second)."),
        interval: float = typer.Option(0.5, min=0.01, help="Seconds between readings of one monitor."),
    ) -> None:
        """Ingest demo, then an MLLP listener + virtual bedside monitors; alerts are printed as they fire."""
        console = Console()
        with contextlib.suppress(ImportError, AttributeError):
            records_cli = importlib.import_module("medtwin.cli.records")
            ingest_demo = getattr(records_cli, "run_ingest_demo", None)
            if callable(ingest_demo):
                demo_store = ingest_demo(console)
                if db is None:  # the live part goes into the same database as the ingested sample patients
                    db = getattr(demo_store, "url", None)
                demo_store.close()
        from medtwin.interop.virtual_feed import run_virtual_monitors

        ward = virtual_ward(patients, start=datetime.now(UTC), seed=int(time.time()) % 1000)
        console.rule("live monitoring")
        console.print(
            f"{patients} virtual patients ({', '.join(p.profile for p in ward)}); {minutes:g} min at "
            f"{time_scale:g}x simulated time; profiles: {', '.join(PROFILES)}",
            highlight=False,
        )

        async def run() -> tuple[dict[str, Any], Any]:
            stop = asyncio.Event()
            ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            listener = asyncio.create_task(
                _listen(
                    db,
                    "127.0.0.1",
                    0,
                    None,
                    console,
                    max_connections=max(64, patients + 8),
                    max_connections_per_peer=max(64, patients + 8),  # every virtual monitor is on this host
                    quiet=False,
                    stop=stop,
                    on_ready=ready.set_result,
                )
            )
            port = await ready
            try:
                feed = await run_virtual_monitors(
                    "127.0.0.1", port, ward, interval_s=interval, duration_s=minutes * 60, time_scale=time_scale
                )
            finally:
                stop.set()
                summary = await listener
            return summary, feed

        summary, feed = run_loop(run())
        lat = sorted(feed.ack_latencies_s) or [0.0]
        console.rule("summary")
        console.print(
            f"messages sent {feed.sent}, acknowledged {feed.acked}, negative {feed.negative}; "
            f"stored {summary['accepted']} messages ({summary['records']} records), "
            f"duplicates {summary['duplicates']}, rejected {summary['rejected']}; "
            f"events {summary['events']}; ACK latency p50 {lat[len(lat) // 2] * 1e3:.1f} ms, "
            f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f} ms",
            highlight=False,
        )
        console.print("list alerts with: medtwin alerts list" + (f" --db {db}" if db else ""), highlight=False)
