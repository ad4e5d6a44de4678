"""SQLite query plans of the store's growing tables: the hot reads use the index meant for them.

SQLite's planner has no table statistics here (no ANALYZE), and for ``status = ?`` it prefers a status index, which
for a common status means a scan of most of the table. These tests read the plan (EXPLAIN QUERY PLAN, with the
statement's own parameters) of each read that runs often or on a table that only grows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event

from medtwin.store import Store, accepted_after

from .test_store_cursors import raw


def _plans(store: Store, run: Callable[[], object], table: str) -> list[str]:
    """SQLite's query plan of each SELECT on *table* that *run* executes (EXPLAIN QUERY PLAN, same parameters)."""
    seen: list[tuple[str, Any]] = []

    def grab(conn: object, cursor: object, statement: str, parameters: Any, context: object, many: bool) -> None:
        if statement.lstrip().startswith("SELECT") and f"FROM {table}" in statement:
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", grab)
    try:
        run()
    finally:
        event.remove(store.engine, "before_cursor_execute", grab)
    with store.engine.connect() as conn:
        return [" / ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + s, p)) for s, p in seen]


def test_log_reads_do_not_scan_every_accepted_row(tmp_path: Path) -> None:
    # SQLite's planner, without statistics, preferred the (status, received) index for ``status = 'accepted'``:
    # every poll of the twin worker then scanned the whole accepted log and sorted it (26 ms of CPU per poll at
    # 300,000 rows, growing with the log), and so did the lookup of a resent message's original
    store = Store(f"sqlite:///{tmp_path}/plan.db")
    try:
        store.write([], raw("A"))
        hl7 = "x-application/hl7-v2+er7"
        (poll,) = _plans(store, lambda: accepted_after(store, 0, content_type=hl7), "raw_inbound")
        assert "USING INTEGER PRIMARY KEY (rowid>?)" in poll, poll
        assert "TEMP B-TREE" not in poll, poll
        # a sharded worker's poll (its patients' entries up to the log's end) reads the same primary-key range
        (sharded,) = _plans(
            store, lambda: accepted_after(store, 0, content_type=hl7, shard=(1, 2), through=9), "raw_inbound"
        )
        assert "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in sharded, sharded
        assert "TEMP B-TREE" not in sharded, sharded
        lookups = _plans(store, lambda: store.write([], raw("A")), "raw_inbound")  # a resend in a new transaction
        original = [p for p in lookups if "source" in p]
        assert original, lookups
        assert all("ix_raw_inbound_source" in p for p in original), lookups
        (first,) = accepted_after(store, 0)
        assert store.raw_log(status="duplicate")[0].reason == f"resend of accepted raw_id {first.raw_id}"
    finally:
        store.close()


def test_one_patients_events_of_a_status_are_read_by_the_patient_index(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/plan.db")
    try:
        (one,) = _plans(store, lambda: store.events(patient_id="P1", kind="alert", status="resolved"), "events")
        assert "ix_events_patient_time" in one, one
        (every,) = _plans(store, lambda: store.events(kind="alert", status="active"), "events")
        assert "ix_events_status_time" in every, every  # all patients' active alerts: the status index is right
    finally:
        store.close()
