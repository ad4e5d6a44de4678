"""CPU per poll of the raw inbound log: ``medtwin.store.accepted_after`` against the query plan it had before.

The twin worker (``medtwin.twin.worker``) polls the log several times a second for the accepted messages after its
cursor. Without table statistics SQLite's planner served ``raw_id > ? AND status = 'accepted'`` from the
``(status, received)`` index: every poll scanned every accepted row of the log and sorted the matches, so its cost
grew with the log (the latency drift of long soaks). ``accepted_after`` now reads the primary-key range after the
cursor. Baseline: the same SELECT with that index forced (``INDEXED BY``), which is the plan SQLite chose before.

    .venv/bin/python bench/raw_log_poll.py [--rows 50000 300000 1000000]
    .venv/bin/python bench/raw_log_poll.py --quick      # 50,000 and 300,000 rows
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from medtwin.interop.mllp import CONTENT_TYPE
from medtwin.store import Store, accepted_after

BATCH = 500  # the worker's poll size
POLLS = 20
BEFORE = (
    "SELECT raw_id, received, content_type, payload FROM raw_inbound INDEXED BY ix_raw_inbound_status_received "
    "WHERE raw_id > ? AND status = 'accepted' AND content_type = ? ORDER BY raw_id LIMIT ?"
)


def _fill(path: Path, rows: int) -> None:
    with Store(f"sqlite:///{path}"):
        pass  # the schema
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO raw_inbound (source_system, source_id, content_type, received, status, record_count, payload) "
        "VALUES (?, ?, ?, ?, 'accepted', 9, ?)",
        ((f"MON{i % 32}", f"MSG{i}", CONTENT_TYPE, now, b"x" * 900) for i in range(rows)),
    )
    conn.commit()
    conn.close()


def _cpu_ms(poll: Callable[[], object]) -> float:
    poll()  # warm the page cache
    started = time.process_time()
    for _ in range(POLLS):
        poll()
    return (time.process_time() - started) / POLLS * 1e3


def _measure(rows: int) -> tuple[float, float]:
    """CPU ms per poll of the last BATCH rows of a log of *rows* accepted messages: (before, accepted_after)."""
    folder = Path(tempfile.mkdtemp(prefix="medtwin-poll-"))
    try:
        path = folder / "log.db"
        _fill(path, rows)
        position = rows - BATCH
        raw = sqlite3.connect(path)
        old = _cpu_ms(lambda: raw.execute(BEFORE, (position, CONTENT_TYPE, BATCH)).fetchall())
        raw.close()
        store = Store(f"sqlite:///{path}")
        assert len(accepted_after(store, position, content_type=CONTENT_TYPE, limit=BATCH)) == BATCH
        new = _cpu_ms(lambda: accepted_after(store, position, content_type=CONTENT_TYPE, limit=BATCH))
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return old, new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 300_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="50,000 and 300,000 rows")
    args = parser.parse_args()
    if args.quick:
        args.rows = [50_000, 300_000]
    machine = platform.processor() or platform.machine()
    print(f"raw log poll benchmark {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}, "
          f"SQLite {sqlite3.sqlite_version}; CPU per poll of the last {BATCH} accepted messages")  # fmt: skip
    print(f"{'accepted rows':>14} {'before (status index) ms':>25} {'accepted_after ms':>18} {'ratio':>7}")
    for rows in args.rows:
        old, new = _measure(rows)
        print(f"{rows:>14,} {old:>25.2f} {new:>18.2f} {old / new:>6.1f}x")


if __name__ == "__main__":
    main()
