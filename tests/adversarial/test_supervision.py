"""Issue 13 C: nothing of a killed listener survives it. Its children (the twin worker, more listener processes)
notice its death and stop, and a write lock held by the dead process is released, so no child is left blocked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from medtwin.store import Store

PCD = (Path(__file__).parent.parent / "fixtures" / "hl7v2" / "authored_ORU_R01_vitals_pcd01_mdc_v26.hl7").read_bytes()

_HOLDER = """
import sys, time
from datetime import UTC, datetime
from medtwin.store import RawMessage, SharedWriteLock, Store
from medtwin.store.locks import lock_path_for
from medtwin.twin import RuntimeProcess

db, path, payload = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
lock = SharedWriteLock(lock_path_for(path))
store = Store(db, write_lock=lock.yielding())
worker = RuntimeProcess(db, write_lock=lock)
worker.start()
raw = RawMessage(source_system="BEDSIDE_MON@ICU1", source_id="HELD-1", payload=payload,
                 content_type="x-application/hl7-v2+er7", received=datetime.now(UTC))
store.write([], raw)
lock.acquire()  # and never let go: the worker's next write waits for this process
print(worker.pid, flush=True)
time.sleep(600)
"""


def _gone_within(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes still alive after *seconds*."""
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    return alive


@pytest.mark.timeout(120)
def test_a_worker_waiting_for_a_lock_held_by_its_killed_parent_exits(tmp_path: Path) -> None:
    """The listener is killed (-9) while it holds the write lock the twin worker waits for: the lock dies with it
    (an flock; it was a semaphore, and the worker waited forever, orphaned), and the worker, seeing its parent
    gone, stops within the grace period."""
    db_file = tmp_path / "held.db"
    payload = tmp_path / "message.hl7"
    payload.write_bytes(PCD)
    Store(f"sqlite:///{db_file}").close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, f"sqlite:///{db_file}", str(db_file), str(payload)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert holder.stdout is not None
    try:
        worker = psutil.Process(int(holder.stdout.readline()))
        time.sleep(2.0)  # the worker has read the message and waits for the lock to store its outputs and cursor
        holder.kill()
        holder.wait(30)
        assert _gone_within([worker], 30) == [], "the twin worker outlived its killed parent"
    finally:
        holder.kill()
        holder.stdout.close()
        if _group_alive(holder.pid):  # nothing may be left behind, even when the test fails
            os.killpg(holder.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    return any(_pgid(p) == pgid for p in psutil.process_iter())


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, psutil.Error):
        return None


@pytest.mark.timeout(180)
def test_nothing_of_a_killed_listener_survives(tmp_path: Path) -> None:
    """kill -9 of `medtwin listen --processes 2`: its listener process, its twin worker and multiprocessing's
    resource tracker all end (each used to be left behind by every `make test`)."""
    db_url = f"sqlite:///{tmp_path / 'killed.db'}"
    Store(db_url).close()
    command = [sys.executable, "-c", "from medtwin.cli import main; main()", "listen", "--port", "0", "--quiet"]
    proc = subprocess.Popen(
        [*command, "--db", db_url, "--processes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"},
    )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if re.search(r"listening on 127\.0\.0\.1:(\d+)", line) or not line:
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2, children  # a listener process and the twin worker (and a resource tracker)
        proc.kill()
        proc.wait(30)
        alive = _gone_within(children, 30)
        assert alive == [], f"survived their killed parent: {[p.cmdline()[-1][:60] for p in alive]}"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
