"""Patient shards of the raw inbound log: which entries a consumer sharded by patient reads, chosen in SQL.

Each raw entry whose records all belong to one patient is stored with that patient's hash (``raw_inbound.
patient_hash``, revision 0030): the first 8 bytes of the BLAKE2b digest of the patient id, read big-endian as an
unsigned number *u*, stored as the signed 64-bit integer with the same bits (the column type of both SQLite and
PostgreSQL). Shard *k* of *n* owns the patients with ``u % n == k`` (:func:`shard_of`: the same in every process,
run and release; Python's ``hash`` of a string is salted per process). :func:`in_shard` is that test in SQL, so a
consumer of shard *k* reads only its own patients' entries and the entries tied to no single patient (NULL: a
batch of several patients, a message without records, or an entry written before revision 0030), instead of
reading every entry and discarding the others' in Python.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, case, or_

__all__ = ["entry_patient", "in_shard", "patient_hash", "shard_of", "shard_of_hash"]

_TWO_63 = 1 << 63
_TWO_64 = 1 << 64


@lru_cache(maxsize=1 << 16)
def patient_hash(patient_id: str) -> int:
    """The stored hash of *patient_id*: BLAKE2b (8 bytes, big-endian) as a signed 64-bit integer."""
    u = int.from_bytes(hashlib.blake2b(patient_id.encode(), digest_size=8).digest(), "big")
    return u - _TWO_64 if u >= _TWO_63 else u


def shard_of_hash(value: int, shards: int) -> int:
    """The shard (0 to *shards* - 1) of a stored :func:`patient_hash` *value*: its unsigned value modulo *shards*."""
    return (value % _TWO_64) % shards


def shard_of(patient_id: str, shards: int) -> int:
    """The shard (0 to *shards* - 1) that owns *patient_id*."""
    return 0 if shards == 1 else shard_of_hash(patient_hash(patient_id), shards)


def in_shard(column: Any, shard: int, shards: int) -> ColumnElement[bool]:
    """SQL: the entries of shard *shard* of *shards* by their hash *column*, and those with none (NULL).

    SQLite's and PostgreSQL's ``%`` truncate toward zero, so for a negative stored value *h* (an unsigned
    *u* = *h* + 2^64 at or above 2^63) ``h % n`` lies in (-n, 0]; adding n and 2^64 mod n and taking the remainder
    again gives *u* mod n.
    """
    wrap = _TWO_64 % shards
    unsigned_mod = case((column >= 0, column % shards), else_=(column % shards + (shards + wrap)) % shards)
    return or_(column.is_(None), unsigned_mod == shard)


def entry_patient(records: Iterable[Any]) -> str | None:
    """The one patient every record of a raw entry belongs to; None when a record names none, or several are
    named, or there are no records (such an entry is read by every shard)."""
    found: str | None = None
    for record in records:
        pid = getattr(record, "patient_id", None)
        if not pid or (found is not None and pid != found):
            return None
        found = pid
    return found
