"""Security fixtures: a store URL on SQLite, and on PostgreSQL when one is reachable (tests/store's fixtures), and
a fresh PostgreSQL schema for the file-bytes and erasure tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.store.conftest import _PG_UNAVAILABLE, PG_URL, _pg_dsn, store, store_url

__all__ = ["pg_schema", "store", "store_url"]


@pytest.fixture
def pg_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, str]]:
    """(store URL, schema name, libpq DSN) of a fresh PostgreSQL schema, dropped afterwards; skipped with the
    reason when PostgreSQL is not reachable."""
    if _PG_UNAVAILABLE is not None:
        pytest.skip(_PG_UNAVAILABLE)
    import psycopg

    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(tmp_path / "pg.keys"))
    monkeypatch.setenv("MEDTWIN_AUDIT_KEY_FILE", str(tmp_path / "pg.audit-key"))
    name = f"medtwin_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_dsn(PG_URL), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}", name, _pg_dsn(PG_URL)
    finally:
        with psycopg.connect(_pg_dsn(PG_URL), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')
