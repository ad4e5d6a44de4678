"""Top-level `medtwin` commands of the monitor area: listen, monitors, news2 (and the alerts group, cli.alerts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from medtwin.cli import alerts
from medtwin.cli.console import make_console
from medtwin.cli.log_stderr import check_log_level, log_to_stderr
from medtwin.cli.mqtt_options import (
    MQTT_URL_HELP,
    MqttCaOption,
    MqttCertOption,
    MqttKeyOption,
    MqttPasswordFileOption,
    broker_or_exit,
)
from medtwin.errors import ValidationError
from medtwin.monitoring import mews_score, news2_score, qsofa_score
from medtwin.monitoring.virtual import virtual_ward

if TYPE_CHECKING:
    from medtwin.interop.group_commit import StoredBatch
    from medtwin.interop.mqtt_broker import MqttBroker
    from medtwin.interop.mqtt_wire import MqttAccessError
    from medtwin.store.leases import HeldLease
    from medtwin.twin import TwinRuntime

__all__ = ["listen_for", "listen_mqtt", "register", "run_loop"]

T = TypeVar("T")
_SUPERVISE_S = 1.0  # how often `medtwin listen` looks for a listener process that died


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run *main* on uvloop where installed (see :func:`medtwin.interop.mllp.run`)."""
    from medtwin.interop.mllp import run

    return run(main)


async def listen_for(
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
    pseudonymous: bool = False,
    max_connections_per_peer: int | None = None,
    client_ca: str | None = None,
    senders: str | None = None,
    twin_workers: int = 1,
    lease_s: float | None = None,
) -> dict[str, Any]:
    """Run the MLLP listener and the twin runtime until *stop* is set or *seconds* pass; returns the counts.

    Alerts are printed as they fire (unless *quiet*) with the patient's name, MRN and location from the store, or
    the pseudonymous id only with *pseudonymous* (:class:`medtwin.cli.alerts.AlertPrinter`). Senders are
    authenticated (:mod:`medtwin.interop.mllp_auth`): by client certificate with *client_ca*, by the allow-list in
    the *senders* file, else from this host only; a refused sender is recorded in the audit chain. *twin_workers*:
    the twin worker processes (each owns a shard of the patients: medtwin.twin.worker) with ``--runtime process``.

    One twin worker set follows a store: the worker processes, or the runtime thread, hold the consumer's lease
    (:mod:`medtwin.store.leases`; renewed every third of *lease_s*, default ``DEFAULT_LEASE_S``), and another set
    holding it refuses this one with :class:`~medtwin.store.leases.ConsumerBusyError` before a message is accepted.
    """
    from pathlib import Path

    from medtwin.interop.mllp import MllpConfig, MllpServer
    from medtwin.interop.mllp_auth import LOOPBACK_ONLY, SenderPolicy, load_senders
    from medtwin.interop.mllp_pool import ListenerPool, server_ssl_context
    from medtwin.security.audit import SenderRefusals
    from medtwin.service import prepare_service_heap
    from medtwin.store.leases import DEFAULT_LEASE_S, ConsumerLease, HeldLease, new_holder
    from medtwin.twin import RuntimeProcess, TwinRuntime
    from medtwin.twin.worker import DEFAULT_CONSUMER, listener_store

    if runtime_mode not in ("process", "thread"):
        raise ValidationError(f"--runtime: {runtime_mode!r} is not one of process, thread")
    if processes < 1:
        raise ValidationError(f"--processes: at least 1, got {processes}")
    if twin_workers < 1:
        raise ValidationError(f"--twin-workers: at least 1, got {twin_workers}")
    if twin_workers > 1 and runtime_mode == "thread":
        raise ValidationError("--twin-workers above 1 needs --runtime process (the thread is one runtime)")
    if processes > 1 and runtime_mode == "thread":  # the thread sees only its own process's messages
        raise ValidationError("--processes above 1 needs --runtime process (a runtime thread would miss the messages "
                              "the other listener processes store)")  # fmt: skip
    if client_ca is not None and tls_files[0] is None:
        raise ValidationError("--client-ca needs --tls-cert and --tls-key (mutual TLS)")
    if senders is not None:
        policy = load_senders(Path(senders), tls=client_ca is not None)
    else:
        policy = SenderPolicy(tls=True) if client_ca is not None else LOOPBACK_ONLY
    ssl_context = server_ssl_context(tls_files[0], tls_files[1], client_ca)  # every listener process loads them
    # listeners and worker take turns fairly on one write lock; this process checkpoints for all of them
    store, write_lock = listener_store(db, shared_lock=runtime_mode == "process" or processes > 1)
    config = MllpConfig(
        host=host,
        port=port,
        max_connections=max_connections,
        max_connections_per_peer=max_connections_per_peer,
        ssl_context=ssl_context,
        reuse_port=processes > 1,
        senders=policy,
    )
    pool: ListenerPool | None = None
    if processes > 1:  # refused (PostgreSQL, in-memory) before anything is started
        assert write_lock is not None
        try:
            pool = ListenerPool(
                db,
                config,
                extra=processes - 1,
                write_lock=write_lock,
                tls_cert=tls_files[0],
                tls_key=tls_files[1],
                client_ca=client_ca,
                refusals=SenderRefusals,  # every listener process audits the senders it refuses
            )
        except BaseException:
            store.close()
            raise
    loop = asyncio.get_running_loop()
    freshness = timedelta(minutes=freshness_minutes)
    lease_s = DEFAULT_LEASE_S if lease_s is None else lease_s
    runtime: TwinRuntime | None = None
    worker: RuntimeProcess | None = None
    lease: HeldLease | None = None
    printer = None if quiet else alerts.AlertPrinter(db, pseudonymous=pseudonymous)
    if runtime_mode == "thread":
        # the thread is a worker set too: beside another (a `medtwin listen` of either runtime on this store) every
        # message would reach the twins twice; it holds the consumer's lease as a RuntimeProcess does, taken before
        # anything starts, and the twins take no more messages once another set has taken it over
        held = ConsumerLease(DEFAULT_CONSUMER, new_holder(), lease_s)
        try:
            lease = await loop.run_in_executor(None, lambda: HeldLease(store, held, wait_s=held.lease_s))
        except BaseException:
            store.close()
            raise
        runtime = TwinRuntime(store, freshness=freshness)
        if printer is not None:
            runtime.subscribe(printer)
        runtime.start()
    else:  # the twins follow the store's raw log in their own process (medtwin.twin.worker)
        worker = RuntimeProcess(db, freshness=freshness, on_event=printer, write_lock=write_lock, workers=twin_workers,
                                lease_s=lease_s)  # fmt: skip
        try:
            await loop.run_in_executor(None, worker.start)
        except BaseException:
            store.close()
            raise
    on_stored = None if runtime is None or lease is None else _offer_while_held(runtime, lease)
    refused = SenderRefusals(store)  # queued: the event loop does not wait for the commit
    server = MllpServer(store, config, on_stored=on_stored, on_refused=refused)
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
            f"twin runtime: {_workers_text(twin_workers) if worker is not None else 'thread'}",
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
        if lease is not None:
            await loop.run_in_executor(None, _give_up, lease, console)
        if worker is not None:
            report = await loop.run_in_executor(None, worker.stop)
            if "error" in report:
                console.print(f"[red]twin runtime worker: {report['error']}[/red]")
            events = report.get("events")
        refused.close()
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


def listen_mqtt(
    db: str | None,
    url: str | MqttBroker,
    topic: str,
    seconds: float | None,
    console: Console,
    *,
    quiet: bool,
    client_id: str = "medtwin-listener",
    freshness_minutes: float = 60.0,
    pseudonymous: bool = False,
    stop: threading.Event | None = None,
    twin_workers: int = 1,
) -> dict[str, Any]:
    """Store device readings from MQTT (QoS 1, persistent session, PUBACK after the commit) with the twin runtime
    following the store in *twin_workers* processes of its own, each owning a shard of the patients
    (medtwin.interop.mqtt, medtwin.twin.worker); returns the counts. *url*: an ``mqtt://`` URL or a broker with TLS
    and credentials (medtwin.interop.mqtt_broker). Raises ValidationError when the broker refuses this client, at
    the start or on a reconnect (credentials, authorization, certificates: retrying would not help)."""
    from medtwin.interop.mqtt import MqttListener
    from medtwin.interop.mqtt_broker import MqttBroker, broker_from_url
    from medtwin.twin import RuntimeProcess
    from medtwin.twin.worker import listener_store

    store, write_lock = listener_store(db, shared_lock=True)
    printer = None if quiet else alerts.AlertPrinter(db, pseudonymous=pseudonymous)
    worker = RuntimeProcess(db, freshness=timedelta(minutes=freshness_minutes), on_event=printer, write_lock=write_lock,
                            workers=twin_workers)  # fmt: skip
    stop = stop or threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    listener: MqttListener | None = None
    report: dict[str, Any] = {}
    refused: list[MqttAccessError] = []

    def give_up(exc: MqttAccessError) -> None:
        refused.append(exc)
        stop.set()

    try:
        broker = url if isinstance(url, MqttBroker) else broker_from_url(url)
        worker.start()
        listener = MqttListener(store, broker, topic, client_id=client_id, on_failure=give_up)
        listener.start()
        console.print(f"listening on {broker.url} topic {topic!r} (MQTT, QoS 1, session {client_id!r}) "
                      f"store={store.url}; "
                      f"twin runtime: {_workers_text(twin_workers)}", highlight=False)  # fmt: skip
        stop.wait(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stats = listener.stop() if listener is not None else None
        report = worker.stop()
        store.close()
    if "error" in report:
        console.print(f"[red]twin runtime worker: {report['error']}[/red]")
    if refused:
        raise ValidationError(f"{refused[0]}; stopped (what was received is stored and acknowledged)")
    return {"stored": 0 if stats is None else stats.stored, "duplicates": 0 if stats is None else stats.duplicates,
            "rejected": 0 if stats is None else stats.rejected, "acked": 0 if stats is None else stats.acked,
            "events": report.get("events")}  # fmt: skip


def _offer_while_held(runtime: TwinRuntime, lease: HeldLease) -> Callable[[StoredBatch], bool]:
    """The listener's hand-off to the runtime thread: each stored batch (False while its queue is full: the server
    offers again), until *lease* is lost (another worker set follows the log now, these messages included)."""

    def offer(batch: StoredBatch) -> bool:
        return lease.lost.is_set() or runtime.offer(batch.records, batch.received_monotonic)

    return offer


def _give_up(lease: HeldLease, console: Console) -> None:
    """Release the runtime thread's lease (said when it was lost; a lease that cannot be released expires)."""
    try:
        lease.release()
    except Exception as exc:  # the listener is stopped all the same; the lease runs out by itself
        console.print(f"[red]twin runtime thread: cannot give up the lease of {lease.lease.consumer!r} ({exc}); it "
                      f"expires in {lease.lease.lease_s:.0f} s[/red]")  # fmt: skip
    if lease.lost.is_set():
        console.print(f"[red]twin runtime thread: the lease of {lease.lease.consumer!r} was taken over by another "
                      "worker set; these twins took no messages after that (that set follows the stored log)"
                      "[/red]")  # fmt: skip


def _workers_text(workers: int) -> str:
    return "own process" if workers == 1 else f"{workers} worker processes (patients sharded)"


def _partial_score(name: str, total: int, missing: tuple[str, ...], suffix: str) -> str:
    """``qSOFA 1/3`` or, with missing inputs, ``qSOFA >= 1/3 (missing: sbp, acvpu)``: a lower bound, said so."""
    if not missing:
        return f"{name} {total}{suffix}"
    return f"{name} >= {total}{suffix} (missing: {', '.join(missing)})"


def register(app: typer.Typer) -> None:
    """Add this module's commands (and the alerts group) to the top-level *app*."""
    alerts.register(app)

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
        client_ca: str | None = typer.Option(
            None, help="PEM CA of the senders' client certificates: mutual TLS, MSH-4 must be named by the certificate."
        ),
        senders: str | None = typer.Option(
            None, help="TOML allow-list: [senders] FACILITY = [networks]. Default: senders on this host only."
        ),
        quiet: bool = typer.Option(False, help="Do not print alerts as they fire."),
        pseudonymous: bool = typer.Option(
            False, "--pseudonymous", help="Print alerts with pseudonymous patient ids only (no name, MRN, location)."
        ),
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
        mqtt: str | None = typer.Option(
            None, "--mqtt", help=f"Listen to an MQTT broker instead: device readings, QoS 1. {MQTT_URL_HELP}"
        ),
        mqtt_ca: str | None = MqttCaOption,
        mqtt_cert: str | None = MqttCertOption,
        mqtt_key: str | None = MqttKeyOption,
        mqtt_password_file: str | None = MqttPasswordFileOption,
        topic: str = typer.Option("devices/+/obs", "--topic", help="With --mqtt: the topic filter to subscribe to."),
        client_id: str = typer.Option(
            "medtwin-listener", "--client-id", help="With --mqtt: the persistent session's client id."
        ),
        twin_workers: int | None = typer.Option(
            None,
            "--twin-workers",
            min=1,
            max=64,
            help="Twin worker processes (--runtime process), each owning a shard of the patients: the twins' work on "
            "several cores (docs/living-twin.md). Default: 2 with --mqtt, else 1.",
        ),
        log_level: str = typer.Option(
            "info",
            "--log-level",
            help="Log to stderr from this level up (UTC time, logger): debug, info, warning, error.",
        ),
    ) -> None:
        """MLLP listener + twin runtime on the configured store: stores HL7 v2, acknowledges, raises alerts.

        With --mqtt: device readings from an MQTT broker instead (docs/living-twin.md)."""
        from medtwin.store.leases import ConsumerBusyError
        from medtwin.twin.worker import DEFAULT_WORKERS

        try:
            level = check_log_level(log_level)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        with log_to_stderr(level):  # the listener's warnings (a broker lost, a reconnect) with their time
            console = make_console()
            if twin_workers is None:  # MQTT wearables: the twins' filter is the limit, so both cores (living-twin.md)
                twin_workers = DEFAULT_WORKERS if mqtt is not None else 1
            if mqtt is None and (mqtt_ca or mqtt_cert or mqtt_key or mqtt_password_file):
                typer.echo(
                    "error: --mqtt-ca, --mqtt-cert, --mqtt-key and --mqtt-password-file go with --mqtt", err=True
                )
                raise typer.Exit(2)
            if mqtt is not None:
                broker = broker_or_exit(mqtt, mqtt_ca, mqtt_cert, mqtt_key, mqtt_password_file)
                try:
                    summary = listen_mqtt(db, broker, topic, None if minutes is None else minutes * 60, console,
                                          quiet=quiet, client_id=client_id, freshness_minutes=freshness_minutes,
                                          pseudonymous=pseudonymous, twin_workers=twin_workers)  # fmt: skip
                except (ValidationError, ConsumerBusyError, RuntimeError) as exc:
                    typer.echo(f"error: {exc}", err=True)
                    raise typer.Exit(2) from exc
                console.print(f"stopped: {json.dumps(summary)}", highlight=False)
                return
            try:
                summary = run_loop(
                    listen_for(
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
                        pseudonymous=pseudonymous,
                        client_ca=client_ca,
                        senders=senders,
                        twin_workers=twin_workers,
                    )
                )
            except (ValidationError, ConsumerBusyError) as exc:  # a refused option combination, or another worker set
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
        console = make_console()
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
        """Score one set of vitals: NEWS2 (RCP 2017) with qSOFA and MEWS alongside; missing vitals are marked."""
        given: dict[str, object] = {"--rr": rr, "--spo2": spo2, "--oxygen/--air": oxygen, "--sbp": sbp}
        given |= {"--pulse": pulse, "--acvpu": acvpu, "--temp": temp}
        if all(v is None for v in given.values()):
            typer.echo(
                "error: no vital signs given: nothing to score. Give some of " + ", ".join(given)
                + ", e.g. medtwin news2 --rr 21 --spo2 97 --air --sbp 100 --pulse 95 --acvpu A --temp 38.5",
                err=True,
            )  # fmt: skip
            raise typer.Exit(2)
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
            "qsofa": {"total": q.total, "positive": q.positive, "missing": list(q.missing), "complete": not q.missing},
            "mews": {"total": m.total, "high_risk": m.high_risk, "missing": list(m.missing), "complete": not m.missing},
        }
        if as_json:
            typer.echo(json.dumps(result, indent=2))
            return
        console = make_console()
        partial = "" if r.complete else f" - PARTIAL: {len(r.missing)} of {len(r.scores)} missing: a lower bound"
        table = Table(title=f"NEWS2 {r.total} - {r.level} clinical response{partial}", title_justify="left")
        table.add_column("parameter")
        table.add_column("points", justify="right")
        for name, points in r.scores.items():
            table.add_row(name, "[yellow]MISSING[/yellow]" if points is None else str(points))
        console.print(table)
        console.print(f"{_partial_score('qSOFA', q.total, q.missing, '/3')}{' positive' if q.positive else ''}; "
                      f"{_partial_score('MEWS', m.total, m.missing, '')}", highlight=False)  # fmt: skip
