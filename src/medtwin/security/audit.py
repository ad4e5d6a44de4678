"""The audit trail: an append-only hash chain of :class:`AuditEvent` rows with Ed25519-signed checkpoints.

Every read and write of patient data, every login, token refresh and denied request is one event (who, role,
what, which patient: pseudonymous id only, when, outcome, source address, purpose of use). Rows live in the
store's ``audit_log`` table (revision 0010); each row's ``hash`` is SHA-256 over the previous row's hash and the
row's canonical content, so changing, deleting, inserting or reordering a row breaks the chain from that row on.

A chain alone does not show that its *end* was cut off (nor a forged row appended at the end, since SHA-256 needs
no key). So every appended batch also writes a **checkpoint**: the sequence number and hash of the new head,
signed with an Ed25519 key that is not in the database, into ``audit_checkpoints`` in the same transaction.
Verification (:meth:`AuditTrail.verify`) requires every row to be covered by a signed checkpoint and every
checkpoint's hash to be the chain's hash at its sequence number. Rows deleted at the end *together with their
checkpoints* leave a shorter chain that is still consistent, so the newest checkpoint is also kept outside the
database, in a *head file* (``<signing key>.head``, replaced atomically and fsync'd), and verification fails when
the head file is ahead of the log. An attacker who can write the database but holds neither the signing key nor
the head file cannot hide a change. Ship the head file (or the checkpoints) to a separate host for stronger
protection: someone with the signing key can re-sign a rewritten chain.

**What truncation is detected, and when.** The head file is written by a thread of its own at most every
*head_interval_s* (1 s by default), after the batch it names has committed, and at once by :meth:`AuditTrail.flush`
and :meth:`AuditTrail.close`: its disk syncs (the file and its folder: several milliseconds on a busy disk, and most
of a transaction's CPU) are then off every request's path and paid about once a second, not once a transaction. So:

* a cut that removes any record up to the one the head file names is reported by ``medtwin audit verify``;
* while the trail is open, every append first checks that the database still ends with (or continues past) the
  record this trail committed last, with the same hash; if not, the append fails with :class:`AuditIntegrityError`
  (the requests it audits fail with it: nothing is answered unaudited) and the cut is logged. So a cut of the
  newest records is also caught at the next append, before any new record can take their numbers;
* not detected: the records appended during the last *head_interval_s* before the process ended without
  :meth:`AuditTrail.close` (a crash, ``kill -9``), if an intruder deletes exactly those rows and their checkpoints
  before the trail is opened again. *head_interval_s* = 0 writes the head file within every batch's append, before
  its events are acknowledged (no such window; about 1 ms of CPU and two more disk syncs per transaction).

Crash durability of the events themselves does not depend on the head file: an event is acknowledged only after
the database transaction holding it (its row and the signed checkpoint) has committed.

**Batched and durable.** :meth:`AuditTrail.record` hands the event to one writer thread and waits until the batch
holding it has committed (group commit: every caller waiting at the same moment shares one transaction and one
disk sync, SQLite ``synchronous=FULL`` / PostgreSQL commit). So an event is on disk when ``record`` returns, and
the request it audits answers after that: a crash loses no event whose request was answered.
:meth:`AuditTrail.record_nowait` returns a future instead (for an asyncio server: ``await
asyncio.wrap_future(trail.record_nowait(e))`` or :meth:`AuditTrail.arecord`); :meth:`AuditTrail.record_many_nowait`
queues several events as one unit with one future (the API server's gathered events).

Several processes may append to one chain (a server and ``medtwin patient erase``): the append runs in a write
transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-level advisory lock), which reads the head and
appends after it.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Engine, func, select, text

from medtwin.errors import MedtwinError, ValidationError
from medtwin.service import drain_batch
from medtwin.store import Store, schema
from medtwin.store.engine import is_memory_url, sqlite_file

__all__ = [
    "ACTIONS",
    "GENESIS",
    "OUTCOMES",
    "AuditEvent",
    "AuditIntegrityError",
    "AuditRecord",
    "AuditTrail",
    "SenderRefusals",
    "VerifyResult",
    "default_signing_key_path",
    "load_signing_key",
    "to_fhir",
]

ACTIONS = (
    "read",
    "search",
    "create",
    "update",
    "delete",
    "login",
    "token",
    "refresh",
    "logout",
    "denied",
    "break-glass",
    "erase",
    "export",
    "refused-sender",
    "key-rotate",
)
"""The actions an event may name (``refused-sender``: an MLLP sender that failed authentication)."""

OUTCOMES = ("success", "denied", "error")
GENESIS = "0" * 64
"""The ``prev_hash`` of the first row."""

log = logging.getLogger(__name__)

_FIELDS = ("time", "actor", "role", "action", "resource", "patient_id", "outcome", "source", "purpose", "detail")
_LOG_COLUMNS = ("seq", *_FIELDS, "prev_hash", "hash")
_CHECKPOINT_COLUMNS = ("seq", "hash", "signed_at", "key_id", "signature")
_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
"""The positional parameter mark of each DB-API paramstyle medtwin's drivers use (sqlite3: qmark; psycopg: pyformat)."""
_SIGNED = b"medtwin-audit-checkpoint/1"
_ADVISORY_LOCK = 0x6D_74_61_75_64  # "mtaud": PostgreSQL transaction lock serialising appends


class AuditIntegrityError(MedtwinError):
    """The stored chain no longer ends with what this process appended (records cut off or rewritten): no more
    events are appended after it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One audited action. *patient_id* is the pseudonymous id (never a name or MRN); *resource* names what was
    touched (``Patient/pt-...``, ``Observation?patient=pt-...``); *source* is the caller's network address."""

    time: datetime
    actor: str
    role: str
    action: str
    resource: str
    patient_id: str | None = None
    outcome: str = "success"
    source: str = ""
    purpose: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValidationError(f"AuditEvent.time: {self.time.isoformat()} has no time zone")
        if self.action not in ACTIONS:
            raise ValidationError(f"AuditEvent.action: {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.outcome not in OUTCOMES:
            raise ValidationError(f"AuditEvent.outcome: {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        if not self.actor:
            raise ValidationError("AuditEvent.actor: required (a user or client id, or 'system')")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """A stored event: its sequence number and place in the chain."""

    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :meth:`AuditTrail.verify`: *first_bad_seq* is the first record that cannot be trusted
    (None when ok), *reason* says what is wrong; *records* and *checkpoints* are how many were checked."""

    ok: bool
    first_bad_seq: int | None
    reason: str
    records: int = 0
    checkpoints: int = 0


def _canonical_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _row_values(event: AuditEvent) -> dict[str, Any]:
    return {
        "time": _canonical_time(event.time),
        "actor": event.actor[:200],
        "role": event.role[:60],
        "action": event.action,
        "resource": event.resource[:400],
        "patient_id": event.patient_id,
        "outcome": event.outcome,
        "source": event.source[:200],
        "purpose": None if event.purpose is None else event.purpose[:200],
        "detail": event.detail,
    }


def _chain_hash(prev_hash: str, seq: int, values: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the canonical JSON of (seq, the event's stored fields)."""
    doc = {"seq": seq, **{k: values[k] for k in _FIELDS}}
    return hashlib.sha256(prev_hash.encode() + orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _insert_sql(table: Any, columns: tuple[str, ...], mark: str) -> str:
    missing = [c for c in columns if c not in table.c]
    assert not missing, f"{table.name} has no column(s) {missing}"
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"


def _checkpoint_message(seq: int, head: str) -> bytes:
    return b"|".join((_SIGNED, str(seq).encode(), head.encode()))


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def default_signing_key_path(url: str) -> Path | None:
    """Where the signing key of the store at *url* lives when none is given: beside a SQLite file
    (``<database>.audit-key``); ``~/.config/medtwin/audit-<hash of the URL>.key`` for a server database; None
    (a key for this process only) for an in-memory database."""
    env = os.environ.get("MEDTWIN_AUDIT_KEY_FILE")
    if env:
        return Path(env)
    if is_memory_url(url):
        return None
    path = sqlite_file(url)
    if path is not None:
        return Path(path + ".audit-key")
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path.home() / ".config" / "medtwin" / f"audit-{digest}.key"


def load_signing_key(path: Path | None, *, create: bool = True) -> Ed25519PrivateKey:
    """The Ed25519 key in *path* (PEM, PKCS#8); created there (mode 0600) when the file does not exist and
    *create* is true (else a :class:`ValidationError`)."""
    if path is None:
        return Ed25519PrivateKey.generate()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise ValidationError(
                f"no audit signing key at {str(path)!r} (give --signing-key or $MEDTWIN_AUDIT_KEY_FILE)"
            ) from None
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it in between
            return load_signing_key(path)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        return key
    except OSError as exc:
        raise ValidationError(f"cannot read the audit signing key {str(path)!r}: {exc.strerror or exc}") from None
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise ValidationError(f"audit signing key {str(path)!r} is not a PEM private key ({exc})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValidationError(f"audit signing key {str(path)!r} is not an Ed25519 key")
    key = loaded
    return key


def _write_head(path: Path, seq: int, head: str, signature: str, key_id: str) -> None:
    """Replace the head file atomically (write, fsync, rename, fsync the folder): never half a head."""
    tmp = path.with_name(path.name + ".tmp")
    doc = orjson.dumps({"seq": seq, "hash": head, "signature": signature, "key_id": key_id})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, doc)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_Head = tuple[int, str, str, str]
"""A checkpoint as the head file holds it: sequence number, hash, signature (hex), key id."""


@dataclass(slots=True)
class _Unit:
    """One item of the writer's queue: *events* to commit together and the *future* their caller waits on
    (resolved to the one sequence number when *single*, else to the list; a *flush* marker has no events)."""

    events: tuple[AuditEvent, ...]
    future: concurrent.futures.Future[Any]
    single: bool
    flush: bool = False


class AuditTrail:
    """Append to and check the audit chain of a store.

    Parameters
    ----------
    store
        A :class:`~medtwin.store.Store` (shared, not closed by :meth:`close`), a database URL or an engine (a
        store is opened on it and closed by :meth:`close`).
    signing_key_path
        The Ed25519 key that signs checkpoints (PEM; created 0600 when missing). Default:
        :func:`default_signing_key_path`. Its head file is the same path + ``.head``.
    max_batch
        Queued units (events, or groups of :meth:`record_many_nowait`) per transaction at most.
    create_key
        Create the signing key when it does not exist (the default; False for commands that only check).
    head_interval_s
        The head file is rewritten at most this often, off the writer's path (see the module docstring for the
        truncation this leaves undetected after a crash); 0: within every append, before its events are
        acknowledged.
    """

    def __init__(
        self,
        store: Store | str | Engine,
        signing_key_path: str | Path | None = None,
        *,
        max_batch: int = 512,
        create_key: bool = True,
        head_interval_s: float = 1.0,
    ) -> None:
        if isinstance(store, Store):
            self._store, self._owned = store, False
        elif isinstance(store, Engine):
            self._store, self._owned = Store(store.url.render_as_string(hide_password=False)), True
        else:
            self._store, self._owned = Store(store), True
        path = Path(signing_key_path) if signing_key_path is not None else default_signing_key_path(self._store.url)
        try:
            self._key = load_signing_key(path, create=create_key)
        except BaseException:
            if self._owned:
                self._store.close()
            raise
        self._public = self._key.public_key()
        self.key_id = _key_id(self._public)
        self.head_path: Path | None = None if path is None else path.with_name(path.name + ".head")
        self.head_interval_s = max(0.0, head_interval_s)
        self._max_batch = max(1, max_batch)
        self._queue: queue.Queue[_Unit | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._committed: tuple[int, str] | None = None  # (seq, hash) of the last record this trail committed
        # the head file: the newest committed checkpoint waits in _head_due for the head thread (or flush)
        self._head_cond = threading.Condition()
        self._head_due: _Head | None = None
        self._newest_head: _Head | None = None
        self._head_stopping = False
        self._head_thread: threading.Thread | None = None
        self._head_io = threading.Lock()
        self._head_written = 0  # the sequence number in the head file this process wrote last, and when
        self._head_written_at = -float("inf")

    # -- writing ---------------------------------------------------------------------------------------------
    def record(self, event: AuditEvent) -> int:
        """Append *event*; returns its sequence number once the batch holding it is committed (durable)."""
        return self.record_nowait(event).result()

    def record_nowait(self, event: AuditEvent) -> concurrent.futures.Future[int]:
        """Queue *event* for the writer; the future resolves to its sequence number once it is committed."""
        if not isinstance(event, AuditEvent):
            raise ValidationError(f"AuditTrail.record: expected AuditEvent, got {type(event).__name__}")
        fut: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._put(_Unit((event,), fut, single=True))
        return fut

    def record_many_nowait(self, events: Iterable[AuditEvent]) -> concurrent.futures.Future[list[int]]:
        """Queue *events* as one unit (committed in one transaction, in order); the future resolves to their
        sequence numbers once they are committed."""
        batch = tuple(events)
        for event in batch:
            if not isinstance(event, AuditEvent):
                raise ValidationError(f"AuditTrail.record: expected AuditEvent, got {type(event).__name__}")
        fut: concurrent.futures.Future[list[int]] = concurrent.futures.Future()
        self._put(_Unit(batch, fut, single=False))
        return fut

    def _put(self, unit: _Unit) -> None:
        if self._closed:
            raise ValidationError("AuditTrail.record: the trail is closed")
        self._ensure_writer()
        self._queue.put(unit)

    async def arecord(self, event: AuditEvent) -> int:
        """:meth:`record` for asyncio code: awaits the commit without blocking the event loop."""
        return await asyncio.wrap_future(self.record_nowait(event))

    def record_many(self, events: Iterable[AuditEvent]) -> list[int]:
        """Append several events (one transaction when they fit a batch); their sequence numbers."""
        futures = [self.record_nowait(e) for e in events]
        return [f.result() for f in futures]

    def flush(self) -> None:
        """Wait until every event queued so far is committed, and write the head file for the newest of them."""
        if self._thread is None:
            return
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Unit((), done, single=False, flush=True))
        done.result()
        head = self._newest_head  # the head thread may hold it already: writing it twice is a no-op
        if head is not None:
            self._store_head(head)

    def close(self) -> None:
        """Commit what is queued, write the head file, stop the threads, and close the store if this trail opened
        it."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        if self._head_thread is not None:
            with self._head_cond:
                self._head_stopping = True
                self._head_cond.notify_all()
            self._head_thread.join()
        if self._owned:
            self._store.close()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_writer(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                if self.head_path is not None and self.head_interval_s > 0:
                    self._head_thread = threading.Thread(target=self._run_head, name="medtwin-audit-head", daemon=True)
                    self._head_thread.start()
                self._thread = threading.Thread(target=self._run, name="medtwin-audit-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = drain_batch(self._queue, first, self._max_batch)
            events = [e for unit in batch for e in unit.events]
            try:
                seqs = self._append(events) if events else []
            except BaseException as exc:
                for unit in batch:
                    unit.future.set_exception(exc)
            else:
                at = 0
                for unit in batch:
                    n = len(unit.events)
                    if unit.flush:
                        unit.future.set_result(None)
                    else:
                        unit.future.set_result(seqs[at] if unit.single else seqs[at : at + n])
                    at += n
            if stop:
                return

    def _run_head(self) -> None:
        """The head thread: write the newest committed checkpoint once *head_interval_s* has passed since the head
        file was last written (by this thread or :meth:`flush`); until the trail is closed."""
        while True:
            with self._head_cond:
                while self._head_due is None and not self._head_stopping:
                    self._head_cond.wait()
                rest = self._head_written_at + self.head_interval_s - time.monotonic()
                if rest > 0:  # close() cuts the rest short
                    self._head_cond.wait_for(lambda: self._head_stopping, timeout=rest)
                head, self._head_due = self._head_due, None
                if head is None and self._head_stopping:
                    return
            if head is None:  # flush() wrote it meanwhile
                continue
            try:
                self._store_head(head)
            except OSError:  # the next checkpoint tries again; a head file that is behind still verifies
                log.exception("cannot write the audit head file %s", self.head_path)

    def _store_head(self, head: _Head) -> None:
        """Write *head* to the head file unless a newer one is already there (writes never go backwards)."""
        if self.head_path is None:
            return
        with self._head_io:
            if head[0] <= self._head_written:
                return
            _write_head(self.head_path, *head)
            self._head_written, self._head_written_at = head[0], time.monotonic()

    def append_in(self, conn: Connection, events: Iterable[AuditEvent]) -> list[int]:
        """Append *events* on *conn*, inside the caller's write transaction (from the store's
        :meth:`~medtwin.store.Store.audit_transaction`), so the audit rows commit with the change they audit
        (``medtwin patient erase`` does this). Call :meth:`sync_head` after the commit to update the head file."""
        return self._append_on(conn, list(events))[0]

    def sync_head(self) -> None:
        """Write the head file from the newest checkpoint in the database (after :meth:`append_in`'s commit)."""
        if self.head_path is None:
            return
        c = schema.audit_checkpoints
        with self._store.engine.connect() as conn:
            row = conn.execute(select(c).order_by(c.c.seq.desc()).limit(1)).first()
        if row is not None:
            self._store_head((int(row.seq), row.hash, row.signature, row.key_id))

    def _append(self, events: list[AuditEvent]) -> list[int]:
        with self._store.audit_transaction() as conn:
            seqs, head = self._append_on(conn, events)
        if head is None:
            return seqs
        self._committed = (head[0], head[1])
        self._newest_head = head
        if self.head_path is not None:
            if self.head_interval_s <= 0:
                self._store_head(head)
            else:
                with self._head_cond:
                    self._head_due = head
                    self._head_cond.notify()
        return seqs

    def _check_continues(self, cursor: Any, mark: str, seq: int, prev: str) -> None:
        """Raise :class:`AuditIntegrityError` unless the stored chain (ending at *seq* with hash *prev*) still holds
        the last record this trail committed, unchanged."""
        mine = self._committed
        if mine is None or (seq, prev) == mine:
            return
        stored: str | None = prev
        if seq > mine[0]:  # another process appended since (``medtwin patient erase``): ours must still be there
            cursor.execute(f"SELECT hash FROM {schema.audit_log.name} WHERE seq = {mark}", (mine[0],))
            row = cursor.fetchone()
            stored = None if row is None else str(row[0])
        if seq < mine[0] or stored != mine[1]:
            why = (
                f"the audit log ends at record {seq} but this process committed record {mine[0]}: records were cut off"
                if seq < mine[0]
                else f"record {mine[0]} of the audit log is not the one this process committed: the chain was rewritten"
            )
            log.error("audit chain tampered with: %s; refusing to append", why)
            raise AuditIntegrityError(why + " (run `medtwin audit verify`)")

    def _append_on(self, conn: Connection, events: list[AuditEvent]) -> tuple[list[int], _Head | None]:
        if not events:
            return [], None
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
        # the rows go through the driver's own cursor, inside the transaction *conn* holds: SQLAlchemy's statement
        # machinery cost more CPU per batch than the append itself (bench/api_load.py, docs/benchmarks.md)
        mark = _MARKS[conn.dialect.paramstyle]
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(f"SELECT seq, hash FROM {schema.audit_log.name} ORDER BY seq DESC LIMIT 1")
            last = cursor.fetchone()
            seq, prev = (0, GENESIS) if last is None else (int(last[0]), str(last[1]))
            self._check_continues(cursor, mark, seq, prev)
            rows = []
            seqs = []
            for event in events:
                seq += 1
                values = _row_values(event)
                digest = _chain_hash(prev, seq, values)
                rows.append((seq, *[values[k] for k in _FIELDS], prev, digest))
                seqs.append(seq)
                prev = digest
            cursor.executemany(_insert_sql(schema.audit_log, _LOG_COLUMNS, mark), rows)
            signature = self._key.sign(_checkpoint_message(seq, prev)).hex()
            checkpoint = (seq, prev, _canonical_time(datetime.now(UTC)), self.key_id, signature)
            cursor.execute(_insert_sql(schema.audit_checkpoints, _CHECKPOINT_COLUMNS, mark), checkpoint)
        finally:
            cursor.close()
        return seqs, (seq, prev, signature, self.key_id)

    # -- reading ---------------------------------------------------------------------------------------------
    def records(
        self, *, action: str | None = None, patient_id: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[AuditRecord]:
        """Stored events in chain order (optionally one action or patient, after sequence number *after*)."""
        t = schema.audit_log
        stmt = select(t).where(t.c.seq > after).order_by(t.c.seq)
        if action is not None:
            stmt = stmt.where(t.c.action == action)
        if patient_id is not None:
            stmt = stmt.where(t.c.patient_id == patient_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._store.engine.connect() as conn:
            return [_record(r) for r in conn.execute(stmt)]

    def count(self) -> int:
        """Number of stored events."""
        with self._store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.audit_log)).scalar_one())

    def review(self) -> list[AuditRecord]:
        """The break-glass events, oldest first (``medtwin audit review``)."""
        return self.records(action="break-glass")

    def export_fhir(self, *, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The stored events as FHIR R4 AuditEvent resources (BALP-style, see :func:`to_fhir`)."""
        return [to_fhir(r) for r in self.records(after=after, limit=limit)]

    # -- checking --------------------------------------------------------------------------------------------
    def verify(self) -> VerifyResult:
        """Check the whole chain, the signed checkpoints and the head file; name the first bad record.

        Detected: a modified row (its hash no longer matches its content), a deleted row (a gap in the sequence
        numbers, or a chain link that no longer matches), an inserted or reordered row (a broken link, or a chain
        recomputed by the intruder that no longer matches a signed checkpoint), rows appended without a
        checkpoint, and a truncated end (a checkpoint or the head file beyond the last row).
        """
        t, c = schema.audit_log, schema.audit_checkpoints
        with self._store.engine.connect() as conn:
            checkpoints = {int(r.seq): r for r in conn.execute(select(c).order_by(c.c.seq))}
            rows: Iterator[Any] = iter(conn.execute(select(t).order_by(t.c.seq)).all())
        good: dict[int, str] = {}
        expected, prev, n = 1, GENESIS, 0
        for row in rows:
            n += 1
            seq = int(row.seq)
            if seq != expected:
                why = f"record {expected} is missing (the next stored record is {seq})"
                return VerifyResult(False, expected, why, n, len(checkpoints))
            if row.prev_hash != prev:
                why = f"record {seq} does not follow record {seq - 1} (a record was inserted, removed or reordered)"
                return VerifyResult(False, seq, why, n, len(checkpoints))
            values = {k: getattr(row, k) for k in _FIELDS}
            if _chain_hash(prev, seq, values) != row.hash:
                why = f"record {seq} was modified (its content does not match its hash)"
                return VerifyResult(False, seq, why, n, len(checkpoints))
            good[seq] = row.hash
            prev, expected = row.hash, seq + 1
        last = expected - 1
        covered = 0
        for seq, cp in checkpoints.items():
            try:
                self._public.verify(bytes.fromhex(cp.signature), _checkpoint_message(seq, cp.hash))
            except (InvalidSignature, ValueError):
                why = f"the checkpoint at record {seq} has no valid signature (key {self.key_id})"
                return VerifyResult(False, covered + 1, why, n, len(checkpoints))
            if seq > last:
                why = f"the log was truncated: a signed checkpoint covers record {seq} but the log ends at {last}"
                return VerifyResult(False, last + 1, why, n, len(checkpoints))
            if good[seq] != cp.hash:
                why = (
                    f"records {covered + 1}..{seq} do not match the signed checkpoint at record {seq} "
                    "(the chain was rewritten)"
                )
                return VerifyResult(False, covered + 1, why, n, len(checkpoints))
            covered = seq
        head = self._read_head()
        if head is not None:
            hseq, hhash = head
            if hseq > last:
                why = (
                    f"the log was truncated: the head file outside the database names record {hseq}, "
                    f"the log ends at {last}"
                )
                return VerifyResult(False, last + 1, why, n, len(checkpoints))
            if hseq > 0 and good.get(hseq) != hhash:
                why = f"record {hseq} does not match the head file outside the database"
                return VerifyResult(False, hseq, why, n, len(checkpoints))
        if covered < last:
            why = f"records {covered + 1}..{last} are not covered by a signed checkpoint (appended outside medtwin)"
            return VerifyResult(False, covered + 1, why, n, len(checkpoints))
        return VerifyResult(True, None, f"{n} records and {len(checkpoints)} checkpoints verified", n, len(checkpoints))

    def _read_head(self) -> tuple[int, str] | None:
        if self.head_path is None:
            return None
        try:
            doc = orjson.loads(self.head_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError):
            return (2**62, "unreadable head file")
        try:
            self._public.verify(bytes.fromhex(doc["signature"]), _checkpoint_message(int(doc["seq"]), doc["hash"]))
        except (InvalidSignature, ValueError, KeyError, TypeError):
            return (2**62, "head file without a valid signature")
        return int(doc["seq"]), str(doc["hash"])


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        seq=int(row.seq),
        event=AuditEvent(
            time=datetime.fromisoformat(row.time),
            actor=row.actor,
            role=row.role,
            action=row.action,
            resource=row.resource,
            patient_id=row.patient_id,
            outcome=row.outcome,
            source=row.source,
            purpose=row.purpose,
            detail=row.detail,
        ),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


# -- FHIR AuditEvent (IHE BALP style) --------------------------------------------------------------------------------
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_REST = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_CRUDE = {"read": "R", "search": "E", "create": "C", "update": "U", "delete": "D", "erase": "D", "export": "R"}
_OUTCOME = {"success": "0", "denied": "4", "error": "8"}
_SUBTYPE = {"read": "read", "search": "search-type", "create": "create", "update": "update", "delete": "delete"}
_SECURITY = {
    "login": ("110122", "Login"),
    "logout": ("110123", "Logout"),
    "token": ("110122", "Login"),
    "refresh": ("110122", "Login"),
    "denied": ("110113", "Security Alert"),
    "break-glass": ("110113", "Security Alert"),
    "refused-sender": ("110113", "Security Alert"),
    "key-rotate": ("110137", "User Security Attributes Changed"),
}


class SenderRefusals:
    """The MLLP listener's ``on_refused`` (:class:`medtwin.interop.mllp.MllpServer`): each refused sender becomes a
    ``refused-sender`` event in the audit chain (actor: the facility it claimed, source: the peer address, outcome
    denied, detail: why). One per listener process, each with its own trail on the same chain (the chain takes
    appends from several trails); queued, so the event loop does not wait for the commit. :meth:`close` commits what
    is queued. Given to :class:`medtwin.interop.mllp_pool.ListenerPool` as a class, each listener process makes its
    own."""

    def __init__(self, store: Store) -> None:
        self._trail = AuditTrail(store)

    def __call__(self, facility: str, peer: str, why: str) -> None:
        self._trail.record_nowait(
            AuditEvent(time=datetime.now(UTC), actor=facility or "unknown", role="device", action="refused-sender",
                       resource="MLLP", outcome="denied", source=peer, detail=why)
        )  # fmt: skip

    def close(self) -> None:
        self._trail.close()


def to_fhir(record: AuditRecord) -> dict[str, Any]:
    """*record* as a FHIR R4 AuditEvent (the IHE Basic Audit Log Patterns' shape).

    RESTful actions: type ``rest`` with the FHIR interaction as subtype; logins and security events: DICOM
    110114 User Authentication / 110113 Security Alert; erasure and export: DICOM 110110 Patient Record / 110106
    Export. The patient is an entity with role 1 (Patient) referenced by its pseudonymous id; the chain's
    sequence number and hash travel as the AuditEvent's id and an entity detail, so an export can be checked
    against the log.
    """
    e = record.event
    if e.action in _SUBTYPE:
        type_ = {"system": _REST, "code": "rest", "display": "Restful Operation"}
        subtype = [{"system": _INTERACTION, "code": _SUBTYPE[e.action]}]
    elif e.action in _SECURITY:
        code, display = _SECURITY[e.action]
        auth = e.action in ("login", "logout", "token", "refresh")
        type_ = {"system": _DCM, "code": "110114" if auth else "110113",
                 "display": "User Authentication" if auth else "Security Alert"}  # fmt: skip
        subtype = [{"system": _DCM, "code": code, "display": display}]
    elif e.action == "export":
        type_ = {"system": _DCM, "code": "110106", "display": "Export"}
        subtype = []
    else:  # erase
        type_ = {"system": _DCM, "code": "110110", "display": "Patient Record"}
        subtype = [{"system": _INTERACTION, "code": "delete"}]
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": _DCM, "code": "110153", "display": "Source Role ID"}]},
        "who": {"identifier": {"value": e.actor}},
        "requestor": True,
        "role": [{"text": e.role}],
    }
    if e.source:
        agent["network"] = {"address": e.source, "type": "2"}
    if e.purpose:
        agent["purposeOfUse"] = [{"text": e.purpose}]
    entities: list[dict[str, Any]] = [
        {
            "what": {"reference": e.resource}
            if "/" in e.resource and "?" not in e.resource
            else {"display": e.resource},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            "detail": [
                {"type": "medtwin-audit-seq", "valueString": str(record.seq)},
                {"type": "medtwin-audit-hash", "valueString": record.hash},
            ],
        }
    ]
    if "?" in e.resource:
        entities[0]["query"] = base64.b64encode(e.resource.encode()).decode()
    if e.patient_id:
        entities.append(
            {
                "what": {"reference": f"Patient/{e.patient_id}"},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"medtwin-audit-{record.seq}",
        "type": type_,
        "recorded": _canonical_time(e.time),
        "outcome": _OUTCOME[e.outcome],
        "agent": [agent],
        "source": {
            "observer": {"display": "medtwin"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": entities,
    }
    if subtype:
        resource["subtype"] = subtype
    if e.action in _CRUDE:
        resource["action"] = _CRUDE[e.action]
    if e.detail:
        resource["outcomeDesc"] = e.detail
    if e.action == "break-glass":
        resource["purposeOfEvent"] = [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG",
                         "display": "break the glass"}]}
        ]  # fmt: skip
    return resource
