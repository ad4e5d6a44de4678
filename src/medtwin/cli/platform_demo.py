"""`medtwin demo`: the whole platform in one command, in the browser.

Creates an embedded SQLite database in a fresh temporary folder (or ``--data-dir``), loads the sample patients
shipped with medtwin, gives one a CGM record and a personal glucose twin and one a vancomycin course with levels,
creates demo users (printed with their passwords), and starts the API server with the web app, the MLLP listener
with the twin runtime, and virtual bedside monitors whose patients are admitted to two wards over HL7 v2 ADT (some
deteriorate over minutes: sepsis, hypoxia). It prints the URL. Ctrl-C (or ``--minutes``) stops every part: the
server, the listener, the twin worker process and the monitors; a temporary folder is removed.

The terminal-only story of earlier releases is ``medtwin demo-terminal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medtwin.cli.console import heading, make_console
from medtwin.cli.records import fail
from medtwin.errors import MedtwinError

if TYPE_CHECKING:
    from medtwin.security.oidc import OidcSettings

__all__ = ["free_port", "register", "run_platform_demo"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on *host* now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _admit_and_monitor(host: str, mllp_port: int, ward: list[Any], *, minutes: float | None, interval_s: float,
                             time_scale: float, console: Any) -> Any:  # fmt: skip
    from medtwin.interop.mllp import MllpClient
    from medtwin.interop.virtual_feed import run_virtual_monitors
    from medtwin.server.web.seed import adt_a01, now_utc, ward_beds

    now = now_utc()
    async with await MllpClient.connect(host, mllp_port) as client:
        for i, (patient, (unit, bed)) in enumerate(zip(ward, ward_beds(len(ward)), strict=True)):
            ack = await client.send(adt_a01(patient, unit, bed, at=now, control_id=f"ADT{now:%H%M%S}{i:04d}"))
            if "|AA|" not in ack and "MSA|AA" not in ack:
                console.print(f"admission of {patient.key} was not accepted: {ack[:200]!r}", highlight=False)
    duration = 365 * 24 * 3600.0 if minutes is None else minutes * 60.0
    return await run_virtual_monitors(host, mllp_port, ward, interval_s=interval_s, duration_s=duration,
                                      time_scale=time_scale, resend_grace_s=2.0)  # fmt: skip


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel *task* until it is done (Python 3.11's ``wait_for`` can swallow one cancellation)."""
    while task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait({task}, timeout=0.5)
    if task is not None and not task.cancelled():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()


async def run_platform_demo(
    *,
    data_dir: Path,
    host: str,
    port: int,
    mllp_port: int,
    minutes: float | None,
    monitors: bool,
    patients: int,
    time_scale: float,
    interval_s: float,
    console: Any,
    glucose: bool = True,
    stop: asyncio.Event | None = None,
    on_ready: Any = None,
    password: str | None = None,
    idle_s: float | None = None,
    oidc: OidcSettings | None = None,
) -> dict[str, Any]:
    """Seed *data_dir*'s database (first run only), then serve the platform until *stop* or *minutes*; *oidc*
    (:class:`medtwin.security.oidc.OidcSettings`): also sign in with that external issuer."""
    from medtwin.cli.serve import serve_for
    from medtwin.monitoring.virtual import virtual_ward
    from medtwin.security.accounts import Accounts
    from medtwin.server import ServerSettings
    from medtwin.server.web import register_client
    from medtwin.server.web.seed import create_users, now_utc, seed_records
    from medtwin.store import Store

    db_path = data_dir / "medtwin.db"
    url = f"sqlite:///{db_path.resolve()}"
    fresh = not db_path.exists()
    origin = f"http://{host}:{port}"
    store = Store(url)
    users = []
    try:
        accounts = Accounts(store.engine)
        if fresh:
            heading(console, "loading the sample patients")
            console.print("4 Synthea sample patients; a CGM record and a glucose twin (fitting takes ~10-20 s), a "
                          "vancomycin course with levels, two ward admissions", highlight=False)  # fmt: skip
            seed_records(store, now=now_utc(), glucose=glucose, accounts=accounts)
        users = create_users(accounts, password=password)
        register_client(accounts, [origin, origin.replace("://127.0.0.1:", "://localhost:")])
    finally:
        store.close()

    stop = stop or asyncio.Event()
    settings = ServerSettings(issuer=origin, idle_timeout_s=int(idle_s) if idle_s else 900, oidc=oidc)
    mllp_ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    api_ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def set_once(fut: asyncio.Future[Any], value: int) -> None:
        if not fut.done():
            fut.set_result(value)

    server: asyncio.Task[Any] = asyncio.create_task(serve_for(settings, url, host, port, mllp_port=mllp_port, stop=stop,
                                           on_ready=lambda p: set_once(api_ready, p),
                                           on_mllp_ready=lambda p: set_once(mllp_ready, p), quiet=True,
                                           seconds=None if minutes is None else minutes * 60))  # fmt: skip
    feed_task: asyncio.Task[Any] | None = None
    try:
        first: set[asyncio.Future[Any]] = {server, api_ready}
        done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if server in done:  # it stopped (or failed) before it was ready
            return {"api": server.result(), "users": users}
        bound_mllp = await asyncio.wait_for(mllp_ready, 60)
        heading(console, "medtwin platform")
        console.print(f"Open [bold]{origin}/app/[/bold] in a browser.   (API: {origin}/openapi.json; MLLP listener on "
                      f"{host}:{bound_mllp}; data in {data_dir})")  # fmt: skip
        if users:
            console.print("Demo users (user / password / role):", highlight=False)
            for u in users:
                where = ", ".join(u.wards + u.teams)
                console.print(f"  {u.username:<11} {u.password:<16} {u.role}{f' ({where})' if where else ''}",
                              highlight=False)  # fmt: skip
        else:
            console.print("Demo users exist from an earlier run in this data folder (their passwords were printed "
                          "then).", highlight=False)  # fmt: skip
        if monitors:
            ward = virtual_ward(patients, start=now_utc(), seed=7)
            profiles = ", ".join(p.profile for p in ward)
            console.print(f"{patients} virtual monitored patients on WARD-A/WARD-B ({profiles}), one reading every "
                          f"{interval_s:g} s, {time_scale:g}x simulated time", highlight=False)  # fmt: skip
            feed_task = asyncio.create_task(_admit_and_monitor(host, bound_mllp, ward, minutes=minutes,
                                                               interval_s=interval_s, time_scale=time_scale,
                                                               console=console))  # fmt: skip
        console.print("Ctrl-C stops everything." if minutes is None else f"Stops by itself after {minutes:g} min.",
                      highlight=False)  # fmt: skip
        if on_ready is not None:
            on_ready({"origin": origin, "mllp_port": bound_mllp, "users": users, "url": url})
        stopping: asyncio.Task[Any] = asyncio.create_task(stop.wait())
        watched: set[asyncio.Task[Any]] = {server, stopping}
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        await _cancel(feed_task)  # the monitors first, while the listener still answers them
        feed_task = None
        summary = await server
    finally:
        stop.set()
        await _cancel(feed_task)
        if not server.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(server, 30)
    return {"api": summary, "users": users}


def register(app: typer.Typer) -> None:
    """Add `medtwin demo` to the top-level *app*."""

    @app.command("demo")
    def demo(
        minutes: float | None = typer.Option(None, min=0.05, help="Stop by itself after this many minutes."),
        no_monitors: bool = typer.Option(False, "--no-monitors", help="No virtual bedside monitors."),
        port: int = typer.Option(8000, help="HTTP port of the web app and API (0 = any free port)."),
        mllp_port: int = typer.Option(0, help="MLLP port (0 = any free port)."),
        data_dir: Path | None = typer.Option(None, help="Keep the database here (default: a temporary folder)."),
        patients: int = typer.Option(8, min=1, max=500, help="Virtual monitored patients."),
        time_scale: float = typer.Option(60.0, min=1.0, help="Simulated seconds per real second of the monitors."),
        interval: float = typer.Option(1.0, min=0.05, help="Seconds between readings of one monitor."),
        host: str = typer.Option("127.0.0.1", help="Address to bind."),
        no_glucose_twin: bool = typer.Option(
            False, "--no-glucose-twin", help="Skip fitting the glucose twin (faster)."
        ),
        oidc_config: Path | None = typer.Option(
            None, help="Also sign in with the external OpenID Connect issuer of this TOML file's [oidc] table."
        ),
    ) -> None:
        """The whole platform in the browser: web app, API, MLLP listener, twins, virtual monitors, demo users."""
        from medtwin.cli.monitor import run_loop
        from medtwin.security.oidc import OidcSettings

        console = make_console()
        try:
            oidc = None if oidc_config is None else OidcSettings.from_file(oidc_config)
        except MedtwinError as exc:
            raise fail(console, str(exc)) from None
        temp = data_dir is None
        folder = Path(tempfile.mkdtemp(prefix="medtwin-demo-")) if data_dir is None else data_dir
        folder.mkdir(parents=True, exist_ok=True)
        try:
            run_loop(run_platform_demo(
                data_dir=folder, host=host, port=port or free_port(host), mllp_port=mllp_port, minutes=minutes,
                monitors=not no_monitors, patients=patients, time_scale=time_scale, interval_s=interval,
                console=console, glucose=not no_glucose_twin, oidc=oidc))  # fmt: skip
        except (MedtwinError, OSError) as exc:
            raise fail(console, str(exc)) from None
        except KeyboardInterrupt:  # pragma: no cover - the signal handler normally stops it first
            pass
        finally:
            if temp:
                shutil.rmtree(folder, ignore_errors=True)
        console.print("medtwin demo stopped" + ("" if temp else f"; data kept in {folder}"), highlight=False)
