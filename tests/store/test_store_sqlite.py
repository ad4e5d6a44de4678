"""SQLite specifics: WAL journal and full synchronous commits (durable before the ACK)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from medtwin.store import Store


def test_sqlite_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'x.db'}") as s, s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_in_memory_database_keeps_its_tables() -> None:
    with Store("sqlite://") as s:
        assert s.counts()["observations"] == 0
