"""Security fixtures: a store URL on SQLite, and on PostgreSQL when one is reachable (as tests/store)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from medtwin.store import Store

PG_URL = os.environ.get("MEDTWIN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _pg_reason() -> str | None:
    """None when PostgreSQL is reachable, else why not."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dev dependency
        return "psycopg is not installed"
    try:
        with psycopg.connect(_pg_dsn(PG_URL), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {str(exc).strip()[:120]})"


_PG_UNAVAILABLE = _pg_reason()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database URL for an empty store: a SQLite file, or a fresh PostgreSQL schema dropped afterwards (its key
    file and audit signing key in the test's folder, not under ~/.config)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if _PG_UNAVAILABLE is not None:
        pytest.skip(_PG_UNAVAILABLE)
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(tmp_path / "pg.keys"))
    monkeypatch.setenv("MEDTWIN_AUDIT_KEY_FILE", str(tmp_path / "pg.audit-key"))
    import psycopg

    schema = f"medtwin_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_dsn(PG_URL), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(_pg_dsn(PG_URL), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open, migrated, empty store."""
    s = Store(store_url)
    try:
        yield s
    finally:
        s.close()


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
