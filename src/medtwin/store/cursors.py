"""Reading the raw inbound log as a stream: accepted messages after a position, and consumers' saved positions.

A consumer (the twin runtime's worker, :mod:`medtwin.twin.worker`) reads the *accepted* rows of ``raw_inbound``
in ``raw_id`` order, processes them and saves the last ``raw_id`` it has processed in ``consumer_cursors``; after
a crash or a restart it resumes there, so no acknowledged message is left unprocessed (at least once: a message
processed but not yet saved is processed again).

Order: ``raw_id`` grows in commit order while one writer commits at a time (SQLite, and one listener on
PostgreSQL). With several concurrent writers on PostgreSQL a transaction can commit a lower id after a higher one
was read; such a consumer must re-read a window behind its cursor (not needed by the embedded default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update

from medtwin.errors import ValidationError
from medtwin.store import schema
from medtwin.store.shards import in_shard

if TYPE_CHECKING:
    from medtwin.store.store import Store

__all__ = [
    "AcceptedMessage",
    "accepted_after",
    "cursors_of",
    "delete_cursors",
    "last_raw_id",
    "load_cursor",
    "save_cursor",
]


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    """One accepted raw message: its log id, when it was received (UTC), its payload, and its key in the raw log
    (``source_id``: the key its records' provenance was built from, which a consumer mapping it again must use);
    *patient_hash*: the stored hash of the one patient its records belong to (None: no single patient, or stored
    before revision 0030; :mod:`medtwin.store.shards`)."""

    raw_id: int
    received: datetime
    content_type: str
    payload: bytes
    source_id: str = ""
    patient_hash: int | None = None


def accepted_after(
    store: Store,
    position: int,
    *,
    content_type: str | Sequence[str] | None = None,
    limit: int = 1000,
    shard: tuple[int, int] | None = None,
    through: int | None = None,
) -> list[AcceptedMessage]:
    """The accepted raw messages with ``raw_id > position`` (of *content_type*, or of any of several, when given),
    oldest first; with *through*, only those up to that raw id. *shard* ``(k, n)``: only the messages of the
    patients of shard k of n and those tied to no single patient (:func:`medtwin.store.shards.in_shard`)."""
    if limit < 1:
        raise ValidationError(f"accepted_after: limit must be at least 1, got {limit}")
    t = schema.raw_inbound
    # the primary-key range after *position*: by the (status, received) index each call scanned every accepted row
    # of the log and sorted the matches (26 ms of CPU per call at 300,000 rows; bench/raw_log_poll.py)
    stmt = select(t.c.raw_id, t.c.received, t.c.content_type, t.c.payload, t.c.source_id, t.c.patient_hash).where(
        t.c.raw_id > position, schema.unindexed(t.c.status) == "accepted"
    )
    if through is not None:
        stmt = stmt.where(t.c.raw_id <= through)
    if isinstance(content_type, str):
        stmt = stmt.where(t.c.content_type == content_type)
    elif content_type is not None:
        stmt = stmt.where(t.c.content_type.in_(list(content_type)))
    if shard is not None and shard[1] > 1:
        stmt = stmt.where(in_shard(t.c.patient_hash, shard[0], shard[1]))
    with store._reading() as conn:
        rows = conn.execute(stmt.order_by(t.c.raw_id).limit(limit)).all()
    open_ = store.keys.open
    return [AcceptedMessage(int(r[0]), r[1], r[2], open_(bytes(r[3])) or b"", r[4], r[5]) for r in rows]


def last_raw_id(store: Store) -> int:
    """The highest ``raw_id`` in the raw inbound log (0 when it is empty)."""
    with store._reading() as conn:
        value = conn.execute(select(func.max(schema.raw_inbound.c.raw_id))).scalar()
    return int(value or 0)


def load_cursor(store: Store, name: str) -> int | None:
    """The saved position of consumer *name*, or None when it has never saved one."""
    t = schema.consumer_cursors
    with store._reading() as conn:
        value = conn.execute(select(t.c.position).where(t.c.name == name)).scalar()
    return None if value is None else int(value)


def save_cursor(store: Store, name: str, position: int) -> None:
    """Save *position* as consumer *name* 's cursor (insert or update; it never moves back)."""
    if not name:
        raise ValidationError("save_cursor: the consumer name must be a non-empty string")
    t = schema.consumer_cursors
    now = datetime.now(UTC)
    with store._transaction() as conn:
        moved = conn.execute(
            update(t).where(t.c.name == name, t.c.position <= position).values(position=position, updated=now)
        ).rowcount
        if not moved and conn.execute(select(t.c.position).where(t.c.name == name)).first() is None:
            conn.execute(t.insert().values(name=name, position=position, updated=now))


def cursors_of(store: Store, names: Sequence[str], prefix: str) -> dict[str, tuple[int, datetime]]:
    """The saved positions of the consumers named in *names* or whose name starts with *prefix*, with when each was
    last saved (name -> (position, updated))."""
    t = schema.consumer_cursors
    stmt = select(t.c.name, t.c.position, t.c.updated).where(
        t.c.name.in_(list(names)) | t.c.name.startswith(prefix, autoescape=True)
    )
    with store._reading() as conn:
        return {str(name): (int(position), updated) for name, position, updated in conn.execute(stmt)}


def delete_cursors(store: Store, names: Sequence[str]) -> None:
    """Forget the saved positions of the consumers *names* (a consumer without one starts as a new one)."""
    if names:
        t = schema.consumer_cursors
        with store._transaction() as conn:
            conn.execute(delete(t).where(t.c.name.in_(list(names))))
