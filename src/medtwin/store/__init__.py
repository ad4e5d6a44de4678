"""Persistence for medtwin (floor 2): records, raw inbound log, events and twin snapshots.

SQLite (WAL, ``synchronous=FULL``) is the embedded default; PostgreSQL is selected by a database URL
(``MEDTWIN_DATABASE_URL`` or ``[store] url`` in ``medtwin.toml``). The schema is managed by Alembic migrations
shipped in this package and applied on open. See docs/store.md.
"""

from medtwin.store import access_tables as access_tables  # registers the identity tables on the one metadata
from medtwin.store.batch import raw_digest
from medtwin.store.config import StoreConfigError, resolve_database_url
from medtwin.store.cursors import AcceptedMessage, accepted_after, last_raw_id, load_cursor, save_cursor
from medtwin.store.locks import SharedWriteLock
from medtwin.store.resources import FhirResource, PatientLinks
from medtwin.store.store import EventNotFoundError, RawLogEntry, RawMessage, Store, WriteResult

__all__ = [
    "AcceptedMessage",
    "EventNotFoundError",
    "FhirResource",
    "PatientLinks",
    "RawLogEntry",
    "RawMessage",
    "SharedWriteLock",
    "Store",
    "StoreConfigError",
    "WriteResult",
    "accepted_after",
    "last_raw_id",
    "load_cursor",
    "raw_digest",
    "resolve_database_url",
    "save_cursor",
]
