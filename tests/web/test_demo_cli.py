"""`medtwin demo` as a user runs it: it prints the URL and the demo users, serves the web app, and stops by itself
(``--minutes``) leaving no process behind."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import psutil
from typer.testing import CliRunner

from medtwin.cli import app


def _children() -> list[str]:
    """Command lines of this process's children, but multiprocessing's resource tracker (one per process, by
    design alive until the process exits)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in cmd:
            out.append(cmd)
    return out


def test_demo_prints_url_and_users_serves_and_stops_cleanly(tmp_path: Path) -> None:
    runner = CliRunner()
    seen: dict[str, int] = {}

    def probe() -> None:  # while the demo runs: the web app answers on the printed port
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            db = tmp_path / "data" / "medtwin.db"
            if db.exists():
                for conn in psutil.Process().net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.ip == "127.0.0.1":
                        try:
                            r = httpx.get(f"http://127.0.0.1:{conn.laddr.port}/app/login", timeout=1)
                        except httpx.HTTPError:
                            continue
                        if r.status_code == 200 and "Sign in to medtwin" in r.text:
                            seen["port"] = conn.laddr.port
                            return
            time.sleep(0.3)

    watcher = threading.Thread(target=probe, daemon=True)
    watcher.start()
    result = runner.invoke(app, ["demo", "--minutes", "0.15", "--no-monitors", "--no-glucose-twin", "--port", "0",
                                 "--data-dir", str(tmp_path / "data")])  # fmt: skip
    watcher.join(5)
    assert result.exit_code == 0, result.output
    url = re.search(r"Open (http://127\.0\.0\.1:(\d+)/app/)", result.output)
    assert url is not None, result.output
    assert seen.get("port") == int(url.group(2))
    for user in ("admin", "dr.lee", "nurse.kim", "nurse.ali", "pharm.diaz", "res.olsen"):
        assert re.search(rf"^\s+{re.escape(user)}\s+\S{{8,}}\s+\w+", result.output, flags=re.M), user
    assert "medtwin demo stopped; data kept in" in result.output
    assert _children() == []  # the twin worker process is gone
    again = runner.invoke(app, ["demo", "--minutes", "0.05", "--no-monitors", "--port", "0",
                                "--data-dir", str(tmp_path / "data")])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "Demo users exist from an earlier run" in again.output  # the data folder is reused, not seeded twice
