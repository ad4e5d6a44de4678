"""One twin worker set per store, whichever runtime runs it: ``medtwin listen --runtime thread`` holds the consumer's
lease as the worker processes do (a runtime thread beside a worker set processed every message twice)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import update
from tests.twin.test_twin_worker import feed
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.interop.mllp import MllpClient
from medtwin.store import Store, schema
from medtwin.store.leases import ConsumerBusyError
from medtwin.twin import LogFollower, RuntimeProcess
from medtwin.twin.worker import DEFAULT_CONSUMER

runner = CliRunner()
REFUSED = "error: the twin workers of consumer 'twin-runtime' already run on"


class ThreadModeListen:
    """``medtwin listen --runtime thread`` (:func:`medtwin.cli.monitor.listen_for`) in a thread of this process."""

    def __init__(self, db: str, lease_s: float) -> None:
        self.db, self.lease_s = db, lease_s
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.summary: dict[str, Any] = {}
        self.port = 0
        self.console = io.StringIO()
        self.thread = threading.Thread(target=self._run, name="thread-mode-listen", daemon=True)
        self.thread.start()
        assert self.ready.wait(60), "the thread-mode listener did not start"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        from medtwin.cli.monitor import listen_for, run_loop

        async def main() -> dict[str, Any]:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            console = Console(file=self.console, width=400)
            return await listen_for(self.db, "127.0.0.1", 0, None, console, max_connections=8, quiet=True,
                                    stop=self.stop, on_ready=self._bound, runtime_mode="thread",
                                    lease_s=self.lease_s)  # fmt: skip

        try:
            self.summary = run_loop(main())
        except BaseException as exc:  # raised in the test's thread
            self.error = exc
            self.ready.set()

    def _bound(self, port: int) -> None:
        self.port = port
        self.ready.set()

    def send(self, payloads: list[bytes]) -> list[str]:
        """Send *payloads* one after the other; their ACKs."""

        async def main() -> list[str]:
            async with await MllpClient.connect("127.0.0.1", self.port, timeout_s=30) as client:
                return [await client.send(p) for p in payloads]

        return asyncio.run(main())

    def close(self) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        assert not self.thread.is_alive()


class LossSaid(logging.Handler):
    """Sets :attr:`lost` once a holder's renewal has found its lease taken over (medtwin.store.leases says so)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lost = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "was taken over" in record.getMessage():
            self.lost.set()


def listen(db: str, runtime: str) -> Any:
    return runner.invoke(
        app, ["listen", "--port", "0", "--quiet", "--db", db, "--runtime", runtime, "--minutes", "0.1"]
    )


def test_a_thread_mode_listen_is_refused_while_a_worker_process_set_holds_the_lease(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    Store(db).close()
    workers = RuntimeProcess(db, lease_s=3.0)  # renewed every second: the refusal comes at once, not after 30 s
    workers.start()
    try:
        result = listen(db, "thread")
    finally:
        assert "error" not in workers.stop()
    assert result.exit_code == 2, result.output
    assert REFUSED in result.output
    assert "listening on" not in result.output


@pytest.mark.parametrize("runtime", ["thread", "process"])
def test_a_thread_mode_listen_holds_the_lease_until_it_stops(tmp_path: Path, runtime: str) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    Store(db).close()
    first = ThreadModeListen(db, lease_s=3.0)
    try:
        result = listen(db, runtime)  # a second listen, either runtime: refused, naming this process
        assert result.exit_code == 2, result.output
        assert REFUSED in result.output
        assert f"pid {os.getpid()} " in result.output
        assert "listening on" not in result.output
        workers = RuntimeProcess(db, lease_s=3.0)
        with pytest.raises(ConsumerBusyError, match="already run on"):
            workers.start()
        assert workers.pids == []
    finally:
        first.close()
    assert first.error is None
    with Store(db) as store:  # given up when it stopped: the next set takes the lease at once
        assert LogFollower(store, holder="the next listen").lease.holder == "the next listen"


@pytest.mark.parametrize("taken_over", [False, True])
def test_a_runtime_thread_whose_lease_was_taken_over_takes_no_more_messages(tmp_path: Path, taken_over: bool) -> None:
    db = f"sqlite:///{tmp_path / 'w.db'}"
    Store(db).close()
    listening = ThreadModeListen(db, lease_s=0.6)
    said = LossSaid()
    logging.getLogger("medtwin.store.leases").addHandler(said)
    try:
        if taken_over:  # as if it had stalled past its lease and another set had started
            with Store(db) as store, store._transaction() as conn:
                t = schema.consumer_leases
                conn.execute(update(t).where(t.c.consumer == DEFAULT_CONSUMER).values(holder="another set"))
            assert said.lost.wait(30)  # its next renewal (every 0.2 s) finds the lease lost
        acks = listening.send(feed(8))
    finally:
        logging.getLogger("medtwin.store.leases").removeHandler(said)
        listening.close()
    assert listening.error is None
    assert all("MSA|AA|" in ack for ack in acks)  # stored and acknowledged either way: the other set follows them
    assert listening.summary["accepted"] == 8
    if taken_over:
        assert listening.summary["events"] == 0
        assert "was taken over by another worker set" in listening.console.getvalue()
    else:
        assert listening.summary["events"] > 0  # the same messages raise events in a runtime thread that holds it
