"""Beds (or ED treatment spaces) of one unit: a priority queue with an exact occupancy integral.

Used by :mod:`medtwin.hospital.simulation` instead of ``simpy.Resource`` because the model needs
three things that resource lacks: a capacity that changes with the nurse roster, withdrawal of a
waiting request (patients who leave, electives cancelled), and the occupancy integrated exactly at
every change (Little's law checks, mean occupancy).
"""

from __future__ import annotations

import heapq

import simpy

__all__ = ["BedPool"]


class BedPool:
    """Places of one unit: a priority queue of waiting requests and an exact occupancy integral.

    Waiting requests are served by (priority, arrival order): with one priority that is first come
    first served. With *count_waiting* (the ED) the patients waiting for a place count as present:
    occupancy is then everybody in the department, not only those in a treatment space.
    """

    __slots__ = (
        "_cancelled",
        "_last",
        "_seq",
        "area",
        "capacity",
        "count_waiting",
        "env",
        "n_waiting",
        "occupied",
        "waiters",
    )

    def __init__(self, env: simpy.Environment, capacity: int, count_waiting: bool = False) -> None:
        self.env = env
        self.capacity = capacity
        self.count_waiting = count_waiting
        self.occupied = 0
        self.n_waiting = 0
        self.waiters: list[tuple[int, int, simpy.Event]] = []
        self._cancelled: set[simpy.Event] = set()
        self._seq = 0
        self.area = 0.0
        self._last = 0.0

    @property
    def present(self) -> int:
        return self.occupied + self.n_waiting if self.count_waiting else self.occupied

    def _integrate(self) -> None:
        now = self.env.now
        level = self.occupied + self.n_waiting if self.count_waiting else self.occupied
        self.area += level * (now - self._last)
        self._last = now

    def acquire(self, priority: int = 0) -> simpy.Event | None:
        """Take a place now (None) or queue: the event fires when a place is handed over."""
        self._integrate()
        if self.occupied < self.capacity and not self.n_waiting:
            self.occupied += 1
            return None
        ev = self.env.event()
        self._seq += 1
        heapq.heappush(self.waiters, (priority, self._seq, ev))
        self.n_waiting += 1
        return ev

    def cancel(self, ev: simpy.Event) -> None:
        """Withdraw the waiting request *ev* (it is skipped when its turn comes)."""
        self._integrate()
        self._cancelled.add(ev)
        self.n_waiting -= 1

    def release(self) -> None:
        self._integrate()
        self.occupied -= 1
        self._serve()

    def set_capacity(self, capacity: int) -> None:
        self._integrate()
        self.capacity = capacity
        self._serve()

    def _serve(self) -> None:
        # callers have just integrated up to now, so occupancy changes here need no integration
        while self.n_waiting and self.occupied < self.capacity:
            ev = heapq.heappop(self.waiters)[2]
            if ev in self._cancelled:
                self._cancelled.discard(ev)
                continue
            self.n_waiting -= 1
            self.occupied += 1
            ev.succeed()
