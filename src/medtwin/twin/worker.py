"""The twin runtime as a worker that follows the raw inbound log, in a process of its own beside the MLLP listener.

The listener stores each HL7 v2 message (raw payload + records) durably and acknowledges it; it does no twin work.
The worker reads the *accepted* HL7 v2 messages after its saved cursor (``medtwin.store.accepted_after``), maps
each again to the observations the listener stored (the mapping is deterministic: same records, same ids), feeds
them to a :class:`~medtwin.twin.TwinRuntime` (NEWS2, trends, alerts, stored events and NEWS2 Observations), and
then saves its cursor. So:

* the listener's interpreter lock no longer serialises parsing, storing and scoring: on two cores the listener
  and the twins run side by side (docs/benchmarks.md, "Streaming ingest");
* a crash of either process loses no alert: a restarted worker resumes at its cursor and processes every message
  acknowledged in between (at least once: a group processed but not yet saved is processed again);
* receipt-to-alert latency is measured from each message's stored receipt time.

:class:`RuntimeProcess` runs :func:`follow` in a child process (``spawn``); :func:`follow` also runs in-process
(tests, replays).

This module names the worker's public parts, which live in three modules:

* :mod:`medtwin.twin.log_follower`: :class:`LogFollower` (the cursor, its shard layouts and the consumer's lease)
  and the mapping of stored entries to records again, :func:`record_skipped` for an entry stepped over;
* :mod:`medtwin.twin.follow_loop`: :func:`follow` (the poll window, the groups, the checkpoints), :class:`WorkerStats`;
* :mod:`medtwin.twin.worker_process`: :class:`RuntimeProcess` (the supervised set of worker processes),
  :func:`recover_and_follow`, :func:`listener_store`.
"""

from __future__ import annotations

from medtwin.store.shards import shard_of  # the worker shard that owns a patient: the raw log's stored hash
from medtwin.twin.follow_loop import CHECKPOINT_EVERY_S, WorkerStats, follow
from medtwin.twin.log_follower import (
    DEFAULT_CONSUMER,
    FOLLOWED_CONTENT_TYPES,
    SKIPPED_CODE,
    LogFollower,
    record_skipped,
    shard_consumer,
    stored_message_records,
    stored_records,
)
from medtwin.twin.worker_process import (
    DEFAULT_WORKERS,
    LISTENER_CHECKPOINT_S,
    WORKER_CACHE_MIB,
    RuntimeProcess,
    listener_store,
    recover_and_follow,
)

__all__ = [
    "CHECKPOINT_EVERY_S",
    "DEFAULT_CONSUMER",
    "DEFAULT_WORKERS",
    "FOLLOWED_CONTENT_TYPES",
    "LISTENER_CHECKPOINT_S",
    "SKIPPED_CODE",
    "WORKER_CACHE_MIB",
    "LogFollower",
    "RuntimeProcess",
    "WorkerStats",
    "follow",
    "listener_store",
    "record_skipped",
    "recover_and_follow",
    "shard_consumer",
    "shard_of",
    "stored_message_records",
    "stored_records",
]
