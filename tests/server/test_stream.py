"""Live events over SSE and WebSocket: an alert committed by another process (as the twin worker does) reaches a
subscriber within 1 s, on SQLite (polled id cursor) and PostgreSQL (LISTEN/NOTIFY); a subscriber gets only the
patients it may see."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Api, LiveServer, make_api, seed_patient

# Another process stores two alerts as the twin worker would (one for a patient the subscriber may not see, then
# one it may), and prints the time its commit returned.
WRITER = """
import sys, time
from datetime import UTC, datetime
from medtwin.records import Event
from medtwin.store import Store
url, hidden, shown = sys.argv[1:4]
with Store(url, migrate=False) as store:
    now = datetime.now(UTC)
    store.add_events([Event(kind="alert", code="news2-high", time=now, message="NEWS2 7", patient_id=hidden,
                            severity="high")])
    store.add_events([Event(kind="alert", code="news2-high", time=now, message="NEWS2 8", patient_id=shown,
                            severity="high")])
    print(time.time())
"""


def _write_from_another_process(url: str, hidden: str, shown: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", WRITER, url, hidden, shown], capture_output=True, text=True, timeout=120, check=True
    )
    return float(done.stdout.split()[-1])


def _setup(url: str, tmp_path: Path, live: Callable[..., LiveServer]) -> tuple[Api, LiveServer, str, str, str]:
    api = make_api(url, tmp_path, stream_poll_s=0.1)
    shown = seed_patient(api.store, "s1", ward="W1", index=1).patient_id
    hidden = seed_patient(api.store, "s2", ward="W2", index=2).patient_id
    server = live(api.app)
    return api, server, api.token("nurse", wards=("W1",)), shown, hidden


def _wait_ready(api: Api) -> None:
    deadline = time.monotonic() + 10
    while "broker" not in api.platform.extra or not api.platform.extra["broker"].ready.is_set():
        assert time.monotonic() < deadline, "the event broker did not start"
        time.sleep(0.02)


def test_sse_delivers_a_committed_alert_within_one_second(
    any_store_url: str, tmp_path: Path, live: Callable[..., LiveServer]
) -> None:
    api, server, token, shown, hidden = _setup(any_store_url, tmp_path, live)
    got: queue.Queue[tuple[float, Any]] = queue.Queue()
    connected = threading.Event()

    def read() -> None:
        url = f"http://127.0.0.1:{server.port}/api/stream"
        with httpx.stream("GET", url, headers=api.headers(token), timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in r.iter_lines():
                if line.startswith(": medtwin"):
                    connected.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    got.put((time.time(), (event, json.loads(line[6:]))))
                    return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert connected.wait(10)
    _wait_ready(api)
    committed = _write_from_another_process(any_store_url, hidden, shown)
    arrived, (kind, data) = got.get(timeout=10)
    assert kind == "alert"
    assert data["patient_id"] == shown  # the other ward's alert was not sent to this nurse
    assert arrived - committed < 1.0, f"delivered {arrived - committed:.3f} s after the commit"
    api.client.close()
    api.close()


def test_websocket_delivers_the_same_events(tmp_path: Path, live: Callable[..., LiveServer]) -> None:
    from websockets.sync.client import connect

    url = f"sqlite:///{tmp_path / 'ws.db'}"
    api, server, token, shown, hidden = _setup(url, tmp_path, live)
    with connect(f"ws://127.0.0.1:{server.port}/api/ws?access_token={token}") as ws:
        _wait_ready(api)
        committed = _write_from_another_process(url, hidden, shown)
        message = json.loads(ws.recv(timeout=10))
        arrived = time.time()
    assert message["patient_id"] == shown
    assert message["kind"] == "alert"
    assert arrived - committed < 1.0
    api.close()


def test_the_stream_refuses_bad_tokens_and_researchers(tmp_path: Path, live: Callable[..., LiveServer]) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    api, server, _, _, _ = _setup(f"sqlite:///{tmp_path / 'r.db'}", tmp_path, live)
    base = f"http://127.0.0.1:{server.port}/api/stream"
    assert httpx.get(base, timeout=10).status_code == 401
    assert httpx.get(base, params={"access_token": "nope"}, timeout=10).status_code == 401
    researcher = api.token("researcher")
    assert httpx.get(base, headers=api.headers(researcher), timeout=10).status_code == 403
    with pytest.raises(InvalidStatus), connect(f"ws://127.0.0.1:{server.port}/api/ws?access_token=nope") as ws:
        ws.recv(timeout=5)
    api.close()
