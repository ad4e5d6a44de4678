"""`medtwin serve`: the API server on uvicorn; with ``--mllp PORT`` also the MLLP listener and the twin runtime.

One command starts the platform: HL7 v2 in over MLLP, the twins scoring it in their own process, and the API
(FHIR R4, alerts, live events) on HTTP(S), all on one store. Ctrl-C (or SIGTERM) stops every part.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medtwin.cli.console import make_console
from medtwin.cli.log_stderr import check_log_level, log_to_stderr
from medtwin.cli.records import fail
from medtwin.errors import MedtwinError, ValidationError

if TYPE_CHECKING:
    from medtwin.security.oidc import OidcSettings

__all__ = ["app", "serve_for"]

app = typer.Typer(help="API server (FHIR R4 facade, OAuth2, live events); --mllp adds the listener and twins.")


def _uvicorn_server(config: Any) -> Any:
    """A uvicorn server that leaves signals to this command (it stops when ``should_exit`` is set)."""
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        def install_signal_handlers(self) -> None:  # uvicorn before 0.29
            return None

    return _Server(config)


async def serve_for(
    settings: Any,
    db: str | None,
    host: str,
    port: int,
    *,
    mllp_port: int | None = None,
    tls: tuple[str | None, str | None] = (None, None),
    seconds: float | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    on_mllp_ready: Callable[[int], None] | None = None,
    quiet: bool = True,
    service_heap: bool = False,
) -> dict[str, Any]:
    """Run the API (and with *mllp_port* the MLLP listener + twin runtime) until *stop* is set or *seconds* pass.

    *service_heap*: this process is the service (``medtwin serve``), not a caller's: its start-up objects are frozen
    out of the garbage collector's sight (:func:`medtwin.service.prepare_service_heap`).
    """
    import uvicorn

    from medtwin.cli.monitor import listen_for
    from medtwin.server import Platform, create_app
    from medtwin.service import prepare_service_heap

    platform = Platform.open(settings, db)
    asgi = create_app(platform, close_platform=True)
    config = uvicorn.Config(
        asgi,
        host=host,
        port=port,
        ssl_certfile=tls[0],
        ssl_keyfile=tls[1],
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_keep_alive=5,
    )
    server = _uvicorn_server(config)
    if service_heap:
        # a request that waits for its audit batch keeps its objects alive meanwhile: with the default collector
        # thresholds that set off 830 young and 7 full collections in 8 s of bench/api_load.py's closed loop with
        # security on (about 0.3 ms a request), against 38 and 0 with it off (docs/benchmarks.md)
        prepare_service_heap()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    console = make_console()

    async def watch() -> None:
        deadline = None if seconds is None else loop.time() + seconds
        while not stop.is_set():
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if deadline is not None and loop.time() >= deadline:
                stop.set()
        server.should_exit = True

    async def announce() -> None:
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.05)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
            scheme = "https" if tls[0] else "http"
            console.print(
                f"API on {scheme}://{host}:{bound} (OpenAPI at /openapi.json) store={platform.store.url}",
                highlight=False,
            )
            if on_ready is not None:
                on_ready(bound)

    tasks: list[Any] = [server.serve(), watch(), announce()]
    if mllp_port is not None:
        tasks.append(
            listen_for(
                db,
                host,
                mllp_port,
                None,
                console,
                max_connections=64,
                quiet=quiet,
                stop=stop,
                freshness_minutes=60.0,
                runtime_mode="process",
                on_ready=on_mllp_ready,
            )
        )
    try:
        results = await asyncio.gather(*tasks)
    finally:
        stop.set()
        server.should_exit = True
    summary: dict[str, Any] = {"api": "stopped"}
    if mllp_port is not None:
        summary["mllp"] = results[-1]
    return summary


def _oidc_settings(path: Path | None, issuer: str | None, audience: str, client_id: str | None) -> OidcSettings | None:
    """The external issuer of ``--oidc-config`` or ``--oidc-issuer`` (not both); ``--oidc-client-id`` overrides the
    file's client id."""
    from dataclasses import replace

    from medtwin.security.oidc import OidcSettings

    if path is not None and issuer is not None:
        raise ValidationError("--oidc-config and --oidc-issuer: give one (the file names the issuer)")
    if path is not None:
        settings = OidcSettings.from_file(path)
        return settings if client_id is None else replace(settings, client_id=client_id)
    if issuer is not None:
        return OidcSettings(issuer, audience, client_id=client_id)
    if client_id is not None:
        raise ValidationError("--oidc-client-id needs --oidc-issuer or --oidc-config")
    return None


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="HTTP(S) port of the API (0 = any free port)."),
    db: str | None = typer.Option(
        None, help="Database URL (default: $MEDTWIN_DATABASE_URL, medtwin.toml, ./medtwin.db)."
    ),
    mllp: int | None = typer.Option(
        None, "--mllp", help="Also run the MLLP listener on this port and the twin runtime."
    ),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate chain: serve HTTPS (see `medtwin certs dev`)."),
    tls_key: Path | None = typer.Option(None, help="PEM private key of --tls-cert."),
    issuer: str | None = typer.Option(None, help="This server's issuer URL, the tokens' iss (default: its base URL)."),
    oidc_issuer: str | None = typer.Option(None, help="Also trust this external OpenID Connect issuer."),
    oidc_audience: str = typer.Option("medtwin", help="The audience the external issuer's tokens must name."),
    oidc_client_id: str | None = typer.Option(
        None, help="The web app's client id at the external issuer: the sign-in page offers sign-in with it."
    ),
    oidc_config: Path | None = typer.Option(
        None, help="TOML file with an [oidc] table: issuer, client id, claim mapping (docs/security.md)."
    ),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="An origin allowed by CORS (none by default)."),
    max_body_mb: float = typer.Option(16.0, min=0.001, help="Largest request body accepted, in MiB."),
    rate_limit: float = typer.Option(50.0, min=0.0, help="Requests per second per client (0 = no limit)."),
    idle_minutes: float = typer.Option(15.0, min=1.0, help="A session idle this long ends (no refresh)."),
    minutes: float | None = typer.Option(None, help="Stop after this many minutes (default: until Ctrl-C)."),
    log_level: str = typer.Option(
        "info", "--log-level", help="Log to stderr from this level up (UTC time, logger): debug, info, warning, error."
    ),
) -> None:
    """The API server: FHIR R4 facade, patients, twins, alerts, live events (SSE, WebSocket), OAuth2 + SMART."""
    from medtwin.cli.monitor import run_loop
    from medtwin.server import ServerSettings

    console = make_console(stderr=True)
    if (tls_cert is None) != (tls_key is None):
        raise fail(console, "--tls-cert and --tls-key go together")
    https = tls_cert is not None
    try:
        oidc = _oidc_settings(oidc_config, oidc_issuer, oidc_audience, oidc_client_id)
        level = check_log_level(log_level)
    except (MedtwinError, ValueError) as exc:
        raise fail(console, str(exc)) from None
    settings = ServerSettings(
        issuer=issuer or f"{'https' if https else 'http'}://{host}:{port}",
        oidc=oidc,
        cors_origins=tuple(cors_origin),
        max_body_bytes=int(max_body_mb * (1 << 20)),
        rate_per_s=rate_limit or None,
        idle_timeout_s=int(idle_minutes * 60),
        https=https,
    )
    try:
        with log_to_stderr(level):  # uvicorn's own loggers keep their handlers (they do not propagate)
            run_loop(
                serve_for(
                    settings,
                    db,
                    host,
                    port,
                    mllp_port=mllp,
                    tls=(str(tls_cert) if tls_cert else None, str(tls_key) if tls_key else None),
                    seconds=None if minutes is None else minutes * 60,
                    quiet=False,
                    service_heap=True,
                )
            )
    except (MedtwinError, OSError) as exc:
        raise fail(console, str(exc)) from None
