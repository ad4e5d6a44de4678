"""Beds (or ED treatment spaces) of one unit, and the event calendar the hospital simulation runs on.

:class:`Calendar` is a minimal discrete-event calendar: a binary heap of ``(time, sequence, callback,
argument)`` entries popped in time order, ties broken by scheduling order (first scheduled, first
run). That is the ordering SimPy gives events of its normal priority (``Environment.schedule`` keys
on ``(time, priority, event id)``), so the model's semantics are those of the SimPy formulation it
replaced; it exists because one heap entry and one plain call per event cost a fraction of a SimPy
``Timeout`` object, its callbacks list and ``Environment.step`` (the speed goal of issue 6).

:class:`BedPool` is used instead of ``simpy.Resource`` because the model needs three things that
resource lacks: a capacity that changes with the nurse roster, withdrawal of a waiting request
(patients who leave, electives cancelled), and the occupancy integrated exactly at every change
(Little's law checks, mean occupancy). Callers pass the current time to every method, so the
integral costs one multiplication per change.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BedPool", "Calendar", "Request"]

Callback = Callable[[Any], None]


class Calendar:
    """Event calendar: ``schedule(t, fn, arg)`` runs ``fn(arg)`` when the clock reaches *t*.

    Events at the same time run in the order they were scheduled. :meth:`run` stops before the
    first event at or after *until* (like ``simpy.Environment.run(until=...)``) and leaves ``now``
    at *until*.
    """

    __slots__ = ("now", "queue", "seq")

    def __init__(self) -> None:
        self.now = 0.0
        self.queue: list[tuple[float, int, Callback, Any]] = []
        self.seq = itertools.count()  # tie-breaker: scheduling order

    def schedule(self, t: float, fn: Callback, arg: Any) -> None:
        """Run ``fn(arg)`` at time *t* (>= now)."""
        heapq.heappush(self.queue, (t, next(self.seq), fn, arg))

    def run(self, until: float, stream: Sequence[float] = (), on_stream: Callback | None = None) -> None:
        """Process events in time order up to (not including) time *until*.

        *stream* is an optional sorted sequence of event times kept outside the heap (the ED
        arrivals): ``on_stream(i)`` runs at ``stream[i]``, after heap events at the same time.
        """
        queue = self.queue
        pop = heapq.heappop
        n = len(stream)
        i = 0
        ts = stream[0] if n else math.inf
        while True:
            if queue:
                top = queue[0]
                t = top[0]
            else:
                t = math.inf
            if t <= ts:
                if t >= until:
                    break
                pop(queue)
                self.now = t
                top[2](top[3])
            else:
                if ts >= until or on_stream is None:
                    break
                self.now = ts
                on_stream(i)
                i += 1
                ts = stream[i] if i < n else math.inf
        self.now = until


class Request:
    """A waiting request for a place: ``fn(arg)`` is scheduled when a place is handed over."""

    __slots__ = ("arg", "fn", "waiting")

    def __init__(self, fn: Callback, arg: Any) -> None:
        self.fn = fn
        self.arg = arg
        self.waiting = True


class BedPool:
    """Places of one unit: a priority queue of waiting requests and an exact occupancy integral.

    Waiting requests are served by (priority, arrival order): with one priority that is first come
    first served. With *count_waiting* (the ED) the patients waiting for a place count as present:
    occupancy is then everybody in the department, not only those in a treatment space. A place
    handed over to a waiting request is taken at once; the request's callback runs as an event at
    the same time (after the events already scheduled for that time).
    """

    __slots__ = (
        "_seq",
        "area",
        "calendar",
        "capacity",
        "count_waiting",
        "last",
        "n_waiting",
        "occupied",
        "waiters",
    )

    def __init__(self, calendar: Calendar, capacity: int, count_waiting: bool = False) -> None:
        self.calendar = calendar
        self.capacity = capacity
        self.count_waiting = count_waiting
        self.occupied = 0
        self.n_waiting = 0
        self.waiters: list[tuple[int, int, Request]] = []
        self._seq = 0
        self.area = 0.0
        self.last = 0.0

    @property
    def present(self) -> int:
        """Patients in the unit now (ED: including those waiting for a space)."""
        return self.occupied + self.n_waiting if self.count_waiting else self.occupied

    def integrate(self, now: float) -> None:
        """Add the occupancy area up to *now*."""
        level = self.occupied + self.n_waiting if self.count_waiting else self.occupied
        self.area += level * (now - self.last)
        self.last = now

    def try_take(self, now: float) -> bool:
        """Take a free place now if there is one and nobody waits; False otherwise (nothing changes)."""
        if self.occupied < self.capacity and not self.n_waiting:
            self.area += (self.occupied + self.n_waiting if self.count_waiting else self.occupied) * (now - self.last)
            self.last = now
            self.occupied += 1
            return True
        return False

    def wait(self, now: float, fn: Callback, arg: Any, priority: int = 0) -> Request:
        """Queue for a place (call after :meth:`try_take` failed); ``fn(arg)`` runs when one is handed over."""
        self.integrate(now)
        req = Request(fn, arg)
        self._seq += 1
        heapq.heappush(self.waiters, (priority, self._seq, req))
        self.n_waiting += 1
        return req

    def cancel(self, now: float, req: Request) -> None:
        """Withdraw the waiting request *req* (it is skipped when its turn comes)."""
        self.integrate(now)
        req.waiting = False
        self.n_waiting -= 1

    def release(self, now: float) -> None:
        """Free one place at *now* and hand it to the next waiting request, if any."""
        self.area += (self.occupied + self.n_waiting if self.count_waiting else self.occupied) * (now - self.last)
        self.last = now
        self.occupied -= 1
        if self.n_waiting:
            self.serve(now)

    def set_capacity(self, now: float, capacity: int) -> None:
        """Change the number of staffed places (nobody is moved out of a place)."""
        self.integrate(now)
        self.capacity = capacity
        self.serve(now)

    def serve(self, now: float) -> None:
        """Hand free places to waiting requests (after the occupancy was integrated up to *now*)."""
        # callers have just integrated up to now, so occupancy changes here need no integration
        while self.n_waiting and self.occupied < self.capacity:
            req = heapq.heappop(self.waiters)[2]
            if not req.waiting:
                continue
            req.waiting = False
            self.n_waiting -= 1
            self.occupied += 1
            self.calendar.schedule(now, req.fn, req.arg)
