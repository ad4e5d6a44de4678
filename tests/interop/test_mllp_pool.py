"""Several MLLP listener processes on one port (medtwin.interop.mllp_pool, `medtwin listen --processes`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from medtwin.errors import ValidationError
from medtwin.interop.mllp import MllpClient, MllpConfig, MllpServer
from medtwin.interop.mllp_pool import ListenerPool
from medtwin.store import SharedWriteLock, Store, load_cursor
from medtwin.twin.worker import listener_store

from .test_mllp_crash import finish, message, start_listener

CONNECTIONS = 24
PER_CONNECTION = 10


async def send_over_connections(
    port: int, first: int = 0, connections: int = CONNECTIONS, ssl_context: ssl.SSLContext | None = None
) -> list[str]:
    """Each connection sends its own messages, then resends the previous connection's first one (which may
    have been stored by another process); returns the MSA codes."""

    async def one(c: int) -> list[str]:
        async with await MllpClient.connect("127.0.0.1", port, ssl_context=ssl_context, timeout_s=30) as client:
            codes = []
            indices = [first + c * PER_CONNECTION + k for k in range(PER_CONNECTION)]
            if c:
                indices.append(first + (c - 1) * PER_CONNECTION)  # a resend
            for i in indices:
                ack = await client.send(message(i))
                codes.append(ack.split("MSA|", 1)[1][:2])
            return codes

    results = await asyncio.gather(*(one(c) for c in range(connections)))
    return [code for codes in results for code in codes]


def migrated(tmp_path: Path) -> str:
    """The URL of a new, migrated SQLite file (so the listeners start fast)."""
    db_url = f"sqlite:///{tmp_path / 'pool.db'}"
    Store(db_url).close()
    return db_url


def stop(proc: subprocess.Popen[str], *, group_interrupt: bool = False) -> tuple[str, dict[str, Any]]:
    """Stop `medtwin listen` with SIGTERM (or Ctrl-C to its process group); its output and its summary."""
    if group_interrupt:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole process group
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        finish(proc)
    assert proc.returncode == 0, out
    return out, json.loads(out.split("stopped: ", 1)[1].replace("\n", ""))


def children_of(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if "resource_tracker" not in " ".join(p.cmdline())]


@pytest.mark.timeout(180)
def test_listen_with_two_processes_stores_each_message_once_and_the_twins_see_all(tmp_path: Path) -> None:
    db_url = migrated(tmp_path)
    proc, port = start_listener(db_url, processes=2)
    try:
        codes = asyncio.run(send_over_connections(port))
    finally:
        _, summary = stop(proc)
    assert codes == ["AA"] * (CONNECTIONS * PER_CONNECTION + CONNECTIONS - 1)
    assert summary["accepted"] == CONNECTIONS * PER_CONNECTION
    assert summary["duplicates"] == CONNECTIONS - 1
    assert summary["processes"] == 2
    assert summary["process_errors"] == []
    by_process = summary["accepted_by_process"]
    assert len(by_process) == 2
    assert sum(by_process) == CONNECTIONS * PER_CONNECTION
    assert min(by_process) > 0  # the kernel spread the connections over both processes

    store = Store(db_url)
    try:
        accepted = store.raw_log(status="accepted", limit=10_000)
        assert sorted(e.source_id for e in accepted) == sorted(f"CR-{i:05d}" for i in range(len(accepted)))
        assert len(accepted) == CONNECTIONS * PER_CONNECTION
        assert len(store.raw_log(status="duplicate", limit=10_000)) == CONNECTIONS - 1
        # one twin worker followed the log written by both processes: it read up to the last message
        assert load_cursor(store, "twin-runtime") == max(e.raw_id for e in accepted)
    finally:
        store.close()


@pytest.mark.timeout(180)
def test_kill_9_of_listen_stops_its_listener_processes_and_a_restart_serves_again(tmp_path: Path) -> None:
    db_url = migrated(tmp_path)
    proc, port = start_listener(db_url, processes=3)
    try:
        children = children_of(proc.pid)
        assert len(children) == 3  # two more listeners and the twin worker
        assert set(asyncio.run(send_over_connections(port, connections=6))) == {"AA"}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        finish(proc)
    _, alive = psutil.wait_procs(children, timeout=20)
    assert alive == []  # they noticed their parent's death and left the port
    proc, port = start_listener(db_url, processes=2)
    try:
        codes = asyncio.run(send_over_connections(port, connections=6))  # the same messages again: resends
    finally:
        stop(proc)
    assert set(codes) == {"AA"}
    store = Store(db_url)
    try:
        assert len(store.raw_log(status="accepted", limit=10_000)) == 6 * PER_CONNECTION
    finally:
        store.close()


def test_a_listener_process_that_dies_is_started_again(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'pool-revive.db'}"

    async def main() -> tuple[list[str], int, int, list[dict[str, object]]]:
        store, lock = listener_store(db_url)
        assert lock is not None
        config = MllpConfig(port=0, reuse_port=True)
        server = MllpServer(store, config)
        pool = ListenerPool(db_url, config, extra=1, write_lock=lock)
        loop = asyncio.get_running_loop()
        try:
            port = await server.start()
            await loop.run_in_executor(None, pool.start, port)
            (child,) = [p for p, _ in pool._children]
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
            alive_after_kill = pool.alive()
            revived = await loop.run_in_executor(None, pool.revive)
            codes = await send_over_connections(port)  # 24 connections: some reach the new process
        finally:
            stats = await loop.run_in_executor(None, pool.stop)
            await server.close()
            store.close()
        return codes, alive_after_kill, revived, stats

    codes, alive_after_kill, revived, stats = asyncio.run(main())
    assert alive_after_kill == 0
    assert revived == 1
    assert set(codes) == {"AA"}
    assert len(stats) == 1
    assert "error" not in stats[0]
    assert int(str(stats[0]["accepted"])) > 0  # the new process took connections


@pytest.mark.parametrize(
    ("url", "why"),
    [("postgresql://127.0.0.1/test", "needs SQLite"), ("sqlite://", "in-memory database cannot be shared")],
)
def test_a_pool_is_refused_where_it_could_lose_order_or_data(url: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        ListenerPool(url, MllpConfig(), extra=1, write_lock=SharedWriteLock())


def test_a_pool_needs_at_least_one_more_process(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 1"):
        ListenerPool(f"sqlite:///{tmp_path / 'x.db'}", MllpConfig(), extra=0, write_lock=SharedWriteLock())


def test_stop_returns_at_once_for_a_pool_never_started(tmp_path: Path) -> None:
    pool = ListenerPool(f"sqlite:///{tmp_path / 'x.db'}", MllpConfig(), extra=2, write_lock=SharedWriteLock())
    started = time.monotonic()
    assert pool.stop() == []
    assert time.monotonic() - started < 1
    assert pool.alive() == 0


@pytest.mark.timeout(180)
def test_every_listener_process_serves_tls(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    proc, port = start_listener(migrated(tmp_path), 2, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        client = ssl.create_default_context(cafile=str(cert))
        codes = asyncio.run(send_over_connections(port, ssl_context=client))
    finally:
        out, summary = stop(proc)
    assert set(codes) == {"AA"}
    assert summary["process_errors"] == [], out
    assert min(summary["accepted_by_process"]) > 0  # the child loaded the certificate and served TLS too


@pytest.mark.timeout(180)
def test_ctrl_c_stops_listen_its_listener_processes_and_its_worker_cleanly(tmp_path: Path) -> None:
    proc, port = start_listener(migrated(tmp_path), processes=2, new_session=True)
    try:
        codes = asyncio.run(send_over_connections(port, connections=8))
    finally:
        out, summary = stop(proc, group_interrupt=True)
    assert set(codes) == {"AA"}
    assert "Traceback" not in out
    assert "twin runtime worker:" not in out  # the worker reported instead of dying on the interrupt
    assert summary["process_errors"] == []
    assert summary["accepted"] == 8 * PER_CONNECTION
    assert summary["events"] is not None


def test_a_child_that_cannot_bind_the_port_fails_the_start_with_its_reason(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # bound without SO_REUSEPORT: nobody can share this port
    taken.listen()
    port = taken.getsockname()[1]
    db_url = migrated(tmp_path)
    store, lock = listener_store(db_url)
    assert lock is not None
    pool = ListenerPool(db_url, MllpConfig(port=port), extra=1, write_lock=lock)
    try:
        with pytest.raises(RuntimeError, match=r"failed to start: OSError.*(in use|address)"):
            pool.start(port)
        assert pool.alive() == 0
    finally:
        pool.stop()
        store.close()
        taken.close()


def test_every_listener_process_audits_the_senders_it_refuses(tmp_path: Path) -> None:
    """A refused sender is an audit event whichever process the kernel gave its connection to (before, the extra
    processes only logged theirs): 24 connections spread over 2 processes, 24 ``refused-sender`` records."""
    from medtwin.security.audit import AuditTrail

    senders = tmp_path / "senders.toml"
    senders.write_text('[senders]\nSOMEONE-ELSE = ["127.0.0.1/32"]\n')  # ICU1, the fixture's facility, is not listed
    db_url = migrated(tmp_path)
    proc, port = start_listener(db_url, 2, "--senders", str(senders))

    async def refused(connections: int) -> list[str]:
        async def one(c: int) -> str:
            async with await MllpClient.connect("127.0.0.1", port, timeout_s=30) as client:
                ack = await client.send(message(c))
            return ack.split("MSA|", 1)[1][:2]

        return list(await asyncio.gather(*(one(c) for c in range(connections))))

    try:
        codes = asyncio.run(refused(24))
    finally:
        out, summary = stop(proc)
    assert codes == ["AR"] * 24
    assert summary["process_errors"] == [], out
    store = Store(db_url)
    trail = AuditTrail(store)
    try:
        records = trail.records(action="refused-sender")
        assert len(records) == 24
        assert {r.event.actor for r in records} == {"ICU1"}
        assert all(r.event.outcome == "denied" and "not an allowed sender" in (r.event.detail or "") for r in records)
        assert trail.verify().ok
        assert store.raw_log(status=None, limit=100) == []  # nothing of a refused sender is stored
    finally:
        trail.close()
        store.close()
