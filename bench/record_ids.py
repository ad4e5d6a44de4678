"""Record ids: random UUID4 against time-ordered UUIDv7 (``medtwin.records.new_id``) as a table grows.

The twin worker stores events and NEWS2 Observations in groups, under the write lock the MLLP listener waits for.
With random ids every insert lands on a random leaf of a primary-key index that keeps growing, so each commit
writes (and each WAL checkpoint copies and syncs) more distinct pages the longer the service runs. This writes the
same events, in groups of 100 (the worker's group at 500 msg/s), into two fresh SQLite files that differ only in
how the ids are made, and prints, per step of the table's growth, the WAL pages each commit wrote and the CPU per
event; the ratio is UUID4 / UUIDv7.

    .venv/bin/python bench/record_ids.py              # 300,000 events per file
    .venv/bin/python bench/record_ids.py --quick      # 60,000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medtwin.records import Event, new_id
from medtwin.store import Store

GROUP = 100


def events(n: int, start: int, make_id: Callable[[], str]) -> list[Event]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Event(
            kind="derived",
            code="news2",
            time=base + timedelta(seconds=i),
            message=f"NEWS2 {i % 9} (low)",
            patient_id=f"pt-{i % 50:016x}",
            severity="low",
            data={"total": i % 9, "level": "low", "scores": {"pulse": 1, "spo2": 0}, "missing": []},
            source="bench",
            event_id=make_id(),
        )
        for i in range(start, start + n)
    ]


def wal_frames(path: Path) -> int:
    """Frames in the WAL file now (its size past the 32-byte header, in 4,096 + 24-byte frames)."""
    wal = Path(f"{path}-wal")
    return max(0, (wal.stat().st_size - 32) // (4096 + 24)) if wal.exists() else 0


def run(kind: str, make_id: Callable[[], str], total: int, step: int, folder: Path) -> list[tuple[int, float, float]]:
    """(events in the table, WAL pages per commit, CPU us per event) for each *step* events written."""
    path = folder / f"{kind}.db"
    store = Store(f"sqlite:///{path}")
    raw = sqlite3.connect(path)
    out = []
    try:
        written = 0
        while written < total:
            pages = 0
            cpu = time.process_time()
            for start in range(written, written + step, GROUP):
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # an empty log: the next commit's frames alone
                store.add_events(events(GROUP, start, make_id))
                pages += wal_frames(path)
            cpu = time.process_time() - cpu
            written += step
            out.append((written, pages / (step / GROUP), cpu / step * 1e6))
    finally:
        raw.close()
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="60,000 events per file")
    parser.add_argument("--total", type=int, default=300_000)
    args = parser.parse_args()
    total = 60_000 if args.quick else args.total
    step = total // 5
    print(f"record ids {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs (shared machine: numbers are noisy); groups of {GROUP} events")  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="medtwin-ids-"))
    try:
        random_ids = run("uuid4", lambda: uuid.uuid4().hex, total, step, folder)
        ordered_ids = run("uuidv7", new_id, total, step, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{'events in the table':>20}  {'WAL pages / commit (uuid4 / v7)':>32}  {'CPU us / event (uuid4 / v7)':>28}")
    for (n, pages4, cpu4), (_, pages7, cpu7) in zip(random_ids, ordered_ids, strict=True):
        print(f"{n:>20,}  {pages4:>12.1f} / {pages7:<6.1f} = {pages4 / pages7:4.2f}x  "
              f"{cpu4:>11.1f} / {cpu7:<6.1f} = {cpu4 / cpu7:4.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
