"""`medtwin listen` logs to stderr with each line's time (ISO 8601, UTC) and logger: a warning of the MQTT listener
(the broker dropped it, it reconnected) is told when it happened (before: no logging was configured, so warnings
came bare through Python's last-resort handler and INFO records were lost); --log-level sets the threshold."""

from __future__ import annotations

import io
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.interop.test_mqtt_wire import ScriptedBroker
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.cli.log_stderr import log_to_stderr
from medtwin.store import Store

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (DEBUG|INFO|WARNING|ERROR) ([\w.]+): (.*)$")


def _serve_twice(broker: ScriptedBroker, reconnected: threading.Event) -> None:
    """Accept the listener's session, drop it after the SUBACK, then take its reconnect and keep it."""
    for connection in (1, 2):
        conn = broker.session(present=connection == 2)
        if connection == 1:
            conn.close()
    reconnected.set()


def _listen(tmp_path: Path, *options: str) -> tuple[str, datetime, datetime, int]:
    """`medtwin listen --mqtt` against a broker that drops it once: its stderr, when it ran, the broker's port."""
    broker = ScriptedBroker()
    reconnected = threading.Event()
    server = threading.Thread(target=_serve_twice, args=(broker, reconnected), daemon=True)
    server.start()
    db = f"sqlite:///{tmp_path / 'log.db'}"
    Store(db).close()
    began = datetime.now(UTC)
    listen = subprocess.Popen(
        [sys.executable, "-c", "from medtwin.cli import main; main()", "listen", "--mqtt",
         f"mqtt://127.0.0.1:{broker.port}", "--db", db, "--quiet", "--twin-workers", "1", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert reconnected.wait(60), "medtwin listen did not reconnect"
        time.sleep(0.3)  # its reconnect warning is written after the SUBACK went out
        listen.send_signal(signal.SIGTERM)
        _, err = listen.communicate(timeout=60)
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.communicate()
        broker.close()
    assert listen.returncode == 0, err
    return err, began, datetime.now(UTC), broker.port


def test_listener_warnings_reach_stderr_with_utc_time_and_logger(tmp_path: Path) -> None:
    err, began, ended, port = _listen(tmp_path)
    records = [m.groups() for m in map(LINE.match, err.splitlines()) if m]
    mqtt = [(when, level, text) for when, level, logger, text in records if logger == "medtwin.interop.mqtt"]
    where = f"127.0.0.1:{port}"
    assert [(level, text.split(" (")[0].split(" after ")[0]) for _, level, text in mqtt] == [
        ("WARNING", f"MQTT connection to {where} lost"),
        ("WARNING", f"MQTT listener reconnected to {where}"),
    ], err
    for when, _, _ in mqtt:
        stamp = datetime.fromisoformat(when)
        assert began.replace(microsecond=0) <= stamp <= ended, (when, began, ended)


def test_log_level_error_keeps_the_warnings_out_and_a_bad_level_is_refused(tmp_path: Path) -> None:
    err, _, _, _ = _listen(tmp_path, "--log-level", "ERROR")
    assert "medtwin.interop.mqtt" not in err, err
    result = CliRunner().invoke(app, ["listen", "--log-level", "loud"])
    assert result.exit_code == 2
    assert "--log-level 'loud': one of debug, info, warning, error" in result.output


def test_log_to_stderr_restores_the_root_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the block, INFO records of any logger go to the stderr of the moment, formatted; after it, the root logger
    is as it was."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    with log_to_stderr("info"):
        logging.getLogger("medtwin.test").info("inside")
        logging.getLogger("medtwin.test").debug("below the level")
    assert (root.level, root.handlers) == before
    [line] = stream.getvalue().splitlines()
    m = LINE.match(line)
    assert m is not None, line
    assert m.groups()[1:] == ("INFO", "medtwin.test", "inside")


def test_serve_refuses_a_bad_log_level() -> None:
    result = CliRunner().invoke(app, ["serve", "--log-level", "chatty"])
    assert result.exit_code == 1
    assert "--log-level 'chatty': one of debug, info, warning, error" in result.output
