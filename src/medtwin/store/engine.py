"""How the store opens its database: the SQLAlchemy engine, SQLite's per-connection settings, the write
transaction and its lock, and readable reasons for connection errors (used by :class:`medtwin.store.Store`)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from medtwin.store.config import StoreConfigError

__all__ = [
    "SqliteSettings",
    "WriteLock",
    "WriteTransaction",
    "is_memory_url",
    "make_engine",
    "prepare_sqlite_file",
    "reason",
    "safe_url",
    "shorten",
    "sqlite_file",
]


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """SQLite pragmas set on every new connection (see :class:`medtwin.store.Store` for what each is for)."""

    cache_mib: int = 64
    autocheckpoint: int = 10000
    synchronous: str = "FULL"


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any, settings: SqliteSettings) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={settings.synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # 64 MiB page cache (default 2 MiB): the primary-key and provenance indexes of a busy store stay in memory
        cursor.execute(f"PRAGMA cache_size={-1024 * int(settings.cache_mib)}")
        # checkpoint every ~40 MiB of WAL (default ~4 MiB): a stream rewrites the same index leaves in every commit,
        # and a checkpoint copies each page once however many commits changed it (docs/store.md, "Write path")
        # (far more when a background thread checkpoints: medtwin.store.checkpoint)
        cursor.execute(f"PRAGMA wal_autocheckpoint={int(settings.autocheckpoint)}")
    finally:
        cursor.close()


def shorten(text: str, most: int = 160) -> str:
    """*text*, or its start and end around "..." when longer than *most* characters (for messages)."""
    return text if len(text) <= most else f"{text[: most * 2 // 3]}...{text[-(most // 3) :]}"


def safe_url(url: str) -> str:
    """*url* with any password masked (and a very long one shortened), for messages."""
    try:
        return shorten(make_url(url).render_as_string(hide_password=True))
    except ArgumentError:
        return shorten(repr(url))


def reason(exc: Exception) -> str:
    """The first line of the driver's message (SQLAlchemy appends the SQL and a help link)."""
    if isinstance(exc, ArgumentError) and "Could not parse" in str(exc):
        return "not a database URL (e.g. sqlite:///medtwin.db or postgresql+psycopg://user@host:5432/db)"
    if isinstance(exc, NoSuchModuleError):
        return f"unknown database kind ({exc}); use sqlite:/// or postgresql+psycopg://"
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def is_memory_url(url: str) -> bool:
    """Whether *url* names an in-memory SQLite database (one connection, no file)."""
    return url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite *url* as SQLite will open it (None: not SQLite, in memory, or a URI filename)."""
    if not url.startswith("sqlite") or is_memory_url(url):
        return None
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.query.get("uri") or not parsed.database:
        return None
    return parsed.database


def _slash_hint(url: str, path: str) -> str:
    """A hint for ``sqlite:///path`` (relative to the current folder) where ``sqlite:////path`` (absolute) was meant."""
    try:
        folder = os.path.dirname("/" + path)
        if os.path.isabs(path) or not (os.path.exists("/" + path) or (folder != "/" and os.path.isdir(folder))):
            return ""
    except OSError:
        return ""
    scheme, short = url.split(":", 1)[0], shorten(path)
    return (
        f" ({scheme}:///{short} is a path relative to the current folder {shorten(os.getcwd())!r}; "
        f"for the absolute path /{short} write {scheme}:////{short})"
    )


def prepare_sqlite_file(url: str, *, create: bool) -> None:
    """Check the database file of a SQLite *url*; with *create*, make a missing one, readable by its owner only.

    SQLite would create a missing file with the process's umask (typically world-readable, 0644) and without a
    word; a database holds health data, so medtwin creates it 0600 (SQLite gives its -wal and -shm files the same
    mode), and a command that only reads (*create* False) refuses a path where no database exists instead of making
    an empty one.

    Raises
    ------
    StoreConfigError
        No database there (and *create* is False), a folder where the file should be, or the file cannot be
        created (missing folder, permission, name too long), with a hint when ``sqlite:///`` was likely meant as an
        absolute path.
    """
    path = sqlite_file(url)
    if path is None:
        return
    shown = safe_url(url)
    try:
        if os.path.isdir(path):
            raise StoreConfigError(f"cannot open database {shown}: that is a folder, not a database file")
        if os.path.exists(path):
            return
    except OSError as exc:  # a name too long for the file system, say
        raise StoreConfigError(f"cannot open database {shown}: {exc.strerror or exc}") from None
    if not create:
        raise StoreConfigError(
            f"no database at {shorten(path)!r}; commands that only read never create one: check the path, "
            "or load data first (medtwin ingest / medtwin listen)" + _slash_hint(url, path)
        )
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # another process made it in between: fine
        return
    except OSError as exc:
        why = {errno.ENOENT: "its folder does not exist", errno.ENAMETOOLONG: "the path is too long"}.get(
            exc.errno or 0, exc.strerror or str(exc)
        )
        hint = "" if exc.errno == errno.ENAMETOOLONG else _slash_hint(url, path)
        raise StoreConfigError(f"cannot create database {shown}: {why}" + hint) from None


def make_engine(url: str, settings: SqliteSettings) -> Engine:
    if url.startswith("sqlite"):
        memory = is_memory_url(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
        )
        event.listen(engine, "connect", lambda conn, record: _set_sqlite_pragmas(conn, record, settings))
        return engine
    return create_engine(url, pool_pre_ping=True)


class WriteLock(Protocol):
    """What a write transaction takes: a threading.Lock or a :class:`medtwin.store.locks.SharedWriteLock`."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class JoinedTransaction:
    """A statement run on the thread's open transaction (a :meth:`medtwin.store.Store.unit_of_work`, or a write
    in progress): it uses that connection, and whoever opened the transaction commits or rolls it back."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def __enter__(self) -> Connection:
        return self._conn

    def __exit__(self, *exc: Any) -> None:
        return None


class WriteTransaction:
    """A write transaction, serialised by *lock* when the database has a single writer."""

    def __init__(self, engine: Engine, lock: WriteLock | None) -> None:
        self._engine = engine
        self._lock = lock
        self._ctx: Any = None

    def __enter__(self) -> Connection:
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._ctx = self._engine.begin()
            conn: Connection = self._ctx.__enter__()
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        return conn

    def __exit__(self, *exc: Any) -> None:
        try:
            self._ctx.__exit__(*exc)
        finally:
            if self._lock is not None:
                self._lock.release()
