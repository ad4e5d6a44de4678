"""Process settings for medtwin's long-running services: the MLLP listener and the twin runtime's worker.

A service's child process (the twin worker, more listener processes) must not outlive its parent:
:func:`exit_with_parent` watches the parent from a thread, asks the child to stop when the parent is gone, and ends
it after a grace period whatever it is doing. (Until issue 13 a child blocked on a lock held by its killed parent
waited forever, orphaned; the lock is now released by the kernel, and this is the second line of defence.)

Python's cyclic garbage collector walks every container object that is old enough, and in a service most of
them were made at start-up and never die (modules, SQLAlchemy's metadata, compiled statements, caches). With
the default thresholds (700, 10, 10) the listener of ``bench/stream.py`` at its maximum rate spent 1.3 s of its
18.4 s of CPU in collections (7 %), 0.7 s of it in 28 full collections of about 25 ms each, every one of which
stops the event loop (and the ACKs); the twin worker lost 0.9 s of 11.9 s. :func:`prepare_service_heap` moves what
exists after start-up out of the collector's sight (``gc.freeze``) and collects the young generation less often;
in the same run then: 0.07 s of 17.6 s (listener: 2 full collections, one of them the call's own at start-up)
and 0.16 s of 9.0 s (worker).

Only for processes that medtwin owns (``medtwin listen``, the worker it spawns, the benchmarks): a frozen
object is never collected, so a library or test process must not call it.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["PARENT_GRACE_S", "SERVICE_GC_THRESHOLDS", "drain_batch", "exit_with_parent", "prepare_service_heap"]

log = logging.getLogger(__name__)

T = TypeVar("T")

PARENT_GRACE_S = 10.0
"""Seconds a child has, after its parent died, to stop on its own before it is ended (``os._exit``)."""

SERVICE_GC_THRESHOLDS = (10_000, 20, 100)
"""Young generation collected after 10,000 net new containers (about 1-2 ms each time), the middle after 20 of
those, the old one after 100 middle ones (and, as always in CPython, only once it has grown by a quarter)."""


def prepare_service_heap(thresholds: tuple[int, int, int] = SERVICE_GC_THRESHOLDS) -> None:
    """Collect once, freeze everything alive (start-up objects are never scanned again) and set *thresholds*.

    Call it when the service is set up (imports done, store open), before it takes traffic.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def exit_with_parent(
    on_parent_death: Callable[[], None], *, grace_s: float = PARENT_GRACE_S, poll_s: float = 0.2
) -> threading.Thread | None:
    """In a child process started by :mod:`multiprocessing`: when the parent dies, call *on_parent_death* (ask the
    child's work to stop), and end the process after *grace_s* if it has not ended by itself.

    Returns the watching thread (a daemon), or None in a process that has no multiprocessing parent.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return None

    def watch() -> None:
        while parent.is_alive():
            parent.join(poll_s)  # waits on the parent's sentinel
        log.error("parent process %s is gone; stopping (ending in %.0f s at the latest)", parent.pid, grace_s)
        try:
            on_parent_death()
        finally:
            threading.Event().wait(grace_s)
            os._exit(70)  # EX_SOFTWARE: the parent died; nothing may outlive it

    thread = threading.Thread(target=watch, name="medtwin-parent-watch", daemon=True)
    thread.start()
    return thread


def drain_batch(
    q: queue.SimpleQueue[T | None] | queue.Queue[T | None], first: T, max_batch: int
) -> tuple[list[T], bool]:
    """A writer thread's next group: *first* and whatever else is queued now, up to *max_batch* items, without
    waiting; and whether the stop sentinel (None) was met (the group is still to be written, then the thread ends)."""
    batch = [first]
    while len(batch) < max_batch:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            break
        if nxt is None:
            return batch, True
        batch.append(nxt)
    return batch, False
