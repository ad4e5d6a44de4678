"""`medtwin demo-terminal`: sample patients ingested, then live monitoring of virtual patients, then the alert list.

Every run tells the whole story again: it works in a fresh folder ``.medtwin-demo/run-<UTC time>/`` (the five
most recent runs are kept, older ones deleted), so no twin resumes from an earlier run's snapshots and no record
is a duplicate of one stored before. With ``--db`` the live part goes to that database instead, and the virtual
patients get MRNs unique to the run (``VM<hhmmss>-0001``...) for the same reason.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from medtwin.cli.alerts import list_alerts
from medtwin.cli.console import heading, make_console
from medtwin.cli.monitor import listen_for, run_loop
from medtwin.cli.records import DEMO_DIR, run_ingest_demo
from medtwin.monitoring.virtual import PROFILES, virtual_ward

__all__ = ["KEEP_RUNS", "new_run_folder", "register"]

#: Demo runs kept under .medtwin-demo/ (older ones are deleted when a new run starts).
KEEP_RUNS = 5


def new_run_folder(root: Path = DEMO_DIR, *, now: datetime | None = None, keep: int = KEEP_RUNS) -> Path:
    """A fresh ``run-<UTC time>`` folder under *root*; only the *keep* most recent runs (this one included) stay."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"run-{stamp}"
    n = 1
    while folder.exists():  # two runs in one second
        n += 1
        folder = root / f"run-{stamp}-{n}"
    folder.mkdir()
    runs = sorted((p for p in root.glob("run-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in runs[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def register(app: typer.Typer) -> None:
    """Add `medtwin demo-terminal` to the top-level *app*."""

    @app.command("demo-terminal")
    def demo(
        minutes: float = typer.Option(1.0, min=0.05, help="How long the live part runs (real minutes)."),
        patients: int = typer.Option(4, min=1, help="Virtual patients (stable, sepsis, hypoxic, post-op, ...)."),
        db: str | None = typer.Option(None, help="Database URL for the live part (default: the run's folder)."),
        time_scale: float = typer.Option(720.0, help="Simulated seconds per real second (720: 12 min per second)."),
        interval: float = typer.Option(0.5, min=0.01, help="Seconds between readings of one monitor."),
        pseudonymous: bool = typer.Option(
            False, "--pseudonymous", help="Show pseudonymous patient ids only (no name, MRN, location)."
        ),
    ) -> None:
        """Ingest the sample patients, monitor virtual patients live (alerts print as they fire), list the alerts."""
        console = make_console()
        started = datetime.now(UTC)
        folder = new_run_folder(now=started)
        ingest_store = run_ingest_demo(console, folder)
        live_db = db or ingest_store.url
        ingest_store.close()
        from medtwin.interop.virtual_feed import run_virtual_monitors

        prefix = "VM" if db is None else f"VM{started:%H%M%S}"
        ward = virtual_ward(patients, start=started, seed=int(started.timestamp()) % 1000, key_prefix=prefix)
        heading(console, "live monitoring")
        console.print(
            f"{patients} virtual patients ({', '.join(p.profile for p in ward)}); {minutes:g} min at "
            f"{time_scale:g}x simulated time; profiles: {', '.join(PROFILES)}; store {live_db}",
            highlight=False,
        )

        async def run() -> tuple[dict[str, Any], Any]:
            stop = asyncio.Event()
            ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            listener = asyncio.create_task(
                listen_for(
                    live_db,
                    "127.0.0.1",
                    0,
                    None,
                    console,
                    max_connections=max(64, patients + 8),
                    max_connections_per_peer=max(64, patients + 8),  # every virtual monitor is on this host
                    quiet=False,
                    stop=stop,
                    on_ready=ready.set_result,
                    pseudonymous=pseudonymous,
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
        heading(console, "summary")
        console.print(
            f"messages sent {feed.sent}, acknowledged {feed.acked}, negative {feed.negative}; "
            f"stored {summary['accepted']} messages ({summary['records']} records), "
            f"duplicates {summary['duplicates']}, rejected {summary['rejected']}; "
            f"events {summary['events']}; ACK latency p50 {lat[len(lat) // 2] * 1e3:.1f} ms, "
            f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f} ms",
            highlight=False,
        )
        list_alerts(live_db, None, "active", pseudonymous, False, console)
        console.print(f"list them again with: medtwin alerts list --db {live_db}", highlight=False)
