"""The twin worker's loop: :func:`follow` polls a :class:`~medtwin.twin.log_follower.LogFollower`, feeds each
group to a :class:`~medtwin.twin.TwinRuntime` and checkpoints the twins with the cursor; :class:`WorkerStats` is
what it did.

Its pacing (a poll every window, a group's processing part of the window) and its checkpoints (their own
transaction after a group's, at most every :data:`CHECKPOINT_EVERY_S`) are documented on :func:`follow`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from medtwin.twin.log_follower import LogFollower
from medtwin.twin.runtime import TwinRuntime

__all__ = ["CHECKPOINT_EVERY_S", "WorkerStats", "follow"]

CHECKPOINT_EVERY_S = 60.0
"""How often the worker saves its cursor with its twins' snapshots (each twin changed in between is saved once:
the snapshot volume of the runtime's one-a-minute snapshots; a restart processes at most this much again)."""


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """What a worker did: messages read (a sharded worker: its patients' and, of them, ``shared_messages``, those
    tied to no single patient, which every shard reads), events raised, alerts and their receipt-to-alert latency
    (over the most recent 100,000 alerts), and the receipt-to-processed latency of the most recent 100,000 messages
    (twins updated, forecasts made, outputs committed)."""

    messages: int
    unmappable: int
    events: int
    alerts: int
    alert_p50_ms: float
    alert_p99_ms: float
    busy_s: float
    position: int
    processed_p50_ms: float = float("nan")
    processed_p99_ms: float = float("nan")
    shared_messages: int = 0


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1e3 if values else float("nan")


def follow(
    follower: LogFollower,
    runtime: TwinRuntime,
    *,
    should_stop: Callable[[], bool],
    group_window_s: float = 0.2,
    cursor_every_s: float = CHECKPOINT_EVERY_S,
    max_messages: int | None = None,
    abandon: Callable[[], bool] | None = None,
    first_checkpoint_s: float | None = None,
) -> WorkerStats:
    """Process the log until *should_stop* returns True and nothing is left to read; return the statistics.

    The worker polls the log every *group_window_s* (measured from one poll's start to the next: a group that takes
    longer to process is followed by the next poll at once) and reads what arrived since as one group, stores the
    group's outputs (events, NEWS2 Observations, resolved alerts) in one transaction and, at most every
    *cursor_every_s* (the first time after *first_checkpoint_s*, default *cursor_every_s*) and when it stops,
    checkpoints: its cursor with a snapshot of every twin changed since the last checkpoint, in one transaction
    right after the group's (:meth:`TwinRuntime.checkpoint`), so the saved twins and the saved cursor always
    describe the same point of the log and the group's outputs do not wait for the snapshots. The listener shares
    SQLite's single writer lock: every runtime transaction is one more wait for the lock, for the worker and for
    the listener, so a few larger runtime transactions keep both moving. The price: alerts come up to one window
    later, and after a crash up to *cursor_every_s* of messages are processed again from the checkpoint's state;
    the twins are deterministic and their outputs' ids come from their inputs, so that gives the same alerts and
    proposals again, stored once.
    A backlog is read without waiting; once caught up, a checkpoint that came due is made without waiting for the
    next message. With *max_messages* it returns once it has read that many; once *abandon* returns True (the
    parent process died) it saves its cursor and returns at once, backlog or not.

    Until 2026-12-07 the worker slept a whole window after processing each group (a poll every window plus the
    group's processing time) and made its checkpoints inside a group's transaction, the group's outputs waiting
    for every twin's snapshot (docs/benchmarks.md, "Living twin": commit-to-forecast latency).
    """
    busy = 0.0
    first = cursor_every_s if first_checkpoint_s is None else first_checkpoint_s
    saved_at = time.monotonic() - (cursor_every_s - first)  # as if the last checkpoint were that long ago
    while True:
        polled_at = time.monotonic()
        before = follower.read
        items = follower.poll()
        if follower.read != before:
            started = time.perf_counter()
            runtime.process_many(items)
            save = time.monotonic() - saved_at >= cursor_every_s
            if save:  # the cursor and the snapshots of the twins changed since the last one, after the group's commit
                runtime.checkpoint(also=follower.commit)
                saved_at = time.monotonic()
            busy += time.perf_counter() - started
            if max_messages is not None and follower.messages >= max_messages:
                break
            if abandon is not None and abandon():
                break
            if follower.last_poll_full:
                continue
        elif follower.read != follower.position and time.monotonic() - saved_at >= cursor_every_s:
            # caught up with a checkpoint still due (the last group came before it was): saved now, not at the next
            # message, so an idle worker's cursor (and a shard's past the others' entries) reaches the log's end
            runtime.checkpoint(also=follower.commit)
            saved_at = time.monotonic()
        elif should_stop():
            break
        # the rest of the window since this poll began: a group's processing is part of the window, not added to it
        time.sleep(max(0.0, polled_at + group_window_s - time.monotonic()))
    runtime.checkpoint(also=follower.commit)
    latencies = sorted(runtime.alert_latencies_s)
    processed = sorted(runtime.processed_latencies_s)
    return WorkerStats(
        messages=follower.messages,
        unmappable=follower.unmappable,
        events=runtime.events_published,
        alerts=runtime.alerts_raised,
        alert_p50_ms=_pct(latencies, 50),
        alert_p99_ms=_pct(latencies, 99),
        busy_s=busy,
        position=follower.position,
        processed_p50_ms=_pct(processed, 50),
        processed_p99_ms=_pct(processed, 99),
        shared_messages=follower.shared_messages,
    )
