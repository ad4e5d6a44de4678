"""Process settings for medtwin's long-running services: the MLLP listener and the twin runtime's worker.

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

__all__ = ["SERVICE_GC_THRESHOLDS", "prepare_service_heap"]

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
