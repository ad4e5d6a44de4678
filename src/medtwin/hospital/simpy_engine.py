"""The hospital simulation on SimPy: patients as ``simpy`` processes, beds as event-driven pools.

This is the SimPy formulation of the model in :mod:`medtwin.hospital.simulation` (same pathways,
random numbers, KPIs and references; see that module's docstring for the model, its citation and
validity range). ED arrivals, ED patients, inpatients, electives, staffing changes and hourly
snapshots are processes on a ``simpy.Environment``; each unit's beds are a :class:`BedPool` whose
requests are ``simpy.Event``s served by (priority, arrival order). It is the readable, extensible
form: a new pathway or resource can be written as another SimPy process. The random inputs, derived
tables, counters and result come from :class:`medtwin.hospital.simulation.RunState` (shared with the
calendar engine); only the event handling lives here.

Select it with ``simulate(..., engine="simpy")`` (or ``engine="simpy"`` on forecasts, what-if
comparisons, replication jobs and ``medtwin hospital forecast|whatif --engine simpy``). The default
engine (``engine="calendar"``, :class:`medtwin.hospital.beds.Calendar`: callbacks on a binary heap
ordered like SimPy's normal-priority events) is tested (tests/hospital/test_hospital_engine.py) to
reproduce this one bit for bit (same events, KPIs, hourly occupancy and stay log) and is about
2.5x faster; use this one to read, extend or cross-check the model. An extension made here is not
in the calendar engine until it is ported there (and the equivalence tests will then say so).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Generator, Sequence
from functools import partial

import numpy as np
import numpy.typing as npt
import simpy

from medtwin.hospital.config import HospitalConfig
from medtwin.hospital.simulation import CensusEntry, ReplicationResult, RunState, run_replication

__all__ = ["simulate_simpy"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_Proc = Generator[simpy.Event, object, None]


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


class _Run(RunState):
    """State of one replication (one SimPy environment)."""

    def _setup(self) -> None:
        config = self.cfg
        self.env = env = simpy.Environment()
        # pool 0 is the ED's treatment spaces; pools 1.. the inpatient units
        self.pools = [BedPool(env, config.ed.spaces, count_waiting=True)] + [BedPool(env, u.beds) for u in config.units]

    # -- processes ------------------------------------------------------------------------------
    # ED patients are driven by event callbacks rather than one SimPy process each: most of them
    # need only an arrival and an end of treatment, and a process would cost three more events.
    def _next_arrival(self, i: int) -> None:
        if i < self.n_arrivals_total:
            ev = self.env.timeout(self.arrival_l[i] - self.env.now)
            ev.callbacks.append(partial(self._arrive, i))

    def _arrive(self, i: int, _ev: simpy.Event | None = None) -> None:
        self._next_arrival(i + 1)
        t0 = self.env.now
        counted = t0 >= self.warmup
        pid = self.next_patient
        self.next_patient += 1
        if counted:
            self.n_arrivals += 1
        self.events += 1
        if self.diverting and self.amb_l[i]:
            if counted:
                self.n_diverted += 1
            return
        if self.record:
            self._open(pid, 0, 0, t0)
        req = self.pools[0].acquire(self.triage_l[i])
        if req is None:  # a space is free: seen at once, never part of the waiting crowd
            self._seen(i, pid, t0, False)
            return
        self._crowd_change(+1, self.env.now)
        req.callbacks.append(partial(self._seen, i, pid, t0, True))
        patience = self.patience_l[i]
        if patience != math.inf:
            timer = self.env.timeout(patience)
            timer.callbacks.append(partial(self._renege, req, pid, t0))

    def _renege(self, req: simpy.Event, pid: int, t0: float, _ev: simpy.Event | None = None) -> None:
        if req.triggered:  # got a space in time
            return
        self.pools[0].cancel(req)
        self._crowd_change(-1, self.env.now)
        self.events += 1
        if t0 >= self.warmup:
            self.n_lwbs += 1
        self._stay(pid, 0, 0, t0, self.env.now, -2)

    def _seen(self, i: int, pid: int, t0: float, waited: bool, _ev: simpy.Event | None = None) -> None:
        env = self.env
        if waited:
            self._crowd_change(-1, self.env.now)
        self.events += 1
        if t0 >= self.warmup:
            self.waits.append(env.now - t0)
            self.wait_triage.append(self.triage_l[i])
        done = env.timeout(self.treat_l[i])
        done.callbacks.append(partial(self._treated, i, pid, t0))

    def _treated(self, i: int, pid: int, t0: float, _ev: simpy.Event | None = None) -> None:
        unit = self.admit_unit[i]
        if unit < 0:
            self.events += 1
            self.pools[0].release()
            if self.record:
                self._stay(pid, 0, 0, t0, self.env.now, -1)
            return
        self.env.process(self.inpatient(pid, 0, unit, 0, t0, self.u_ed_stays[i]))

    def inpatient(
        self,
        pid: int,
        route: int,
        unit: int,
        holding: int,
        hold_start: float,
        u: FloatArray,
        first_los: float | None = None,
        start: float | None = None,
    ) -> _Proc:
        """Stays of one patient from a bed request in *unit*, holding unit *holding* (-1: none).

        With *start* given the patient already has the bed in *unit* since time *start* (an
        elective admitted at once, a census patient); *first_los* then overrides the first LoS.
        *u* holds the patient's uniforms: stay k's LoS from ``u[2k]``, its transfer from ``u[2k+1]``.
        """
        env = self.env
        for k in range(self.max_stays):
            pool = self.pools[unit]
            if k > 0 or start is None:
                t_decide = env.now
                boarding = holding == 0
                if boarding:
                    self._crowd_change(+1, self.env.now)
                req = pool.acquire()
                if req is not None:
                    yield req
                self.events += 1
                if holding >= 0:
                    self.pools[holding].release()
                    self._stay(pid, route, holding, hold_start, env.now, unit)
                if self.record:
                    self._open(pid, route, unit, env.now)
                if boarding:
                    self._crowd_change(-1, self.env.now)
                    if t_decide >= self.warmup:
                        self.boarding.append(env.now - t_decide)
                if k == 0 and t_decide >= self.warmup:
                    self.n_admissions += 1
                start = env.now
            yield env.timeout(first_los if (k == 0 and first_los is not None) else self.los_ppf[unit](u[2 * k]))
            nxt = -1
            if k + 1 < self.max_stays:
                cum = self.transfer_cum[unit - 1]
                j = bisect_right(cum, u[2 * k + 1])
                if j < len(cum):
                    nxt = self.transfer_to[unit - 1][j]
            if nxt < 0:
                pool.release()
                self.events += 1
                self._stay(pid, route, unit, start, env.now, -1)
                return
            holding, hold_start, unit = unit, start, nxt

    def elective_proc(self) -> _Proc:
        env = self.env
        for j, (t, unit) in enumerate(self.elective_times):
            yield env.timeout(t - env.now)
            env.process(self.elective_patient(j, unit))

    def elective_patient(self, j: int, unit: int) -> _Proc:
        env = self.env
        counted = env.now >= self.warmup
        pid = self.next_patient
        self.next_patient += 1
        if counted:
            self.n_el += 1
        pool = self.pools[unit]
        req = pool.acquire()
        if req is not None:
            yield req | env.timeout(self.cfg.elective_grace_h)
            if not req.triggered:
                pool.cancel(req)
                if counted:
                    self.n_el_cancel += 1
                return
        self.events += 2
        if counted:
            self.n_admissions += 1
        self._open(pid, 1, unit, env.now)
        yield from self.inpatient(pid, 1, unit, -1, env.now, self.u_el_stays[j], start=env.now)

    def census_patient(self, j: int) -> _Proc:
        env = self.env
        pid = self.next_patient
        self.next_patient += 1
        unit = self.index[self.census[j].unit]
        start = -self.census[j].elapsed_h
        self._open(pid, 2, unit, start)
        if unit == 0:
            yield env.timeout(self.census_remaining[j])
            pick = self.c_admit[j]
            if pick >= len(self.admit_to):
                self.pools[0].release()
                self._stay(pid, 2, 0, start, env.now, -1)
                return
            yield from self.inpatient(pid, 2, self.admit_to[pick], 0, start, self.u_c_stays[j])
            return
        # the patient already holds a bed in *unit*: the first stay is the residual one
        yield from self.inpatient(pid, 2, unit, -1, start, self.u_c_stays[j], self.census_remaining[j], start)

    def clock_proc(self) -> _Proc:
        env = self.env
        hours = self.occ.shape[1]
        if self.warmup > 0:
            yield env.timeout(self.warmup - env.now)
        self._snapshot_warmup()
        # the last snapshot (at the end of the run) is taken by run() after the clock stops
        for h in range(hours - 1):
            yield env.timeout(self.warmup + h + 1 - env.now)
            self._snapshot(h)

    def _snapshot(self, h: int) -> None:
        for u, pool in enumerate(self.pools):
            self.occ[u, h] = pool.present
            self.cap[u, h] = pool.capacity

    def staffing_proc(self, unit: int) -> _Proc:
        env = self.env
        cfg = self.cfg.units[unit - 1]
        st = cfg.staffing
        assert st is not None
        pool = self.pools[unit]
        while True:
            hod = (self.start_how + env.now) % 24.0
            pool.set_capacity(min(cfg.beds, int(st.nurses_at(hod) * st.patients_per_nurse)))
            since = (hod - st.first_shift_start_h) % st.shift_h
            yield env.timeout(st.shift_h - since)

    def _snapshot_warmup(self) -> None:
        for u, pool in enumerate(self.pools):
            pool._integrate()
            self.area_at_warmup[u] = pool.area
        if self.diverting:
            self.div_area += self.env.now - self.div_last
        self.div_last = self.env.now
        self.div_at_warmup = self.div_area

    def pool_areas(self) -> list[float]:
        return [p.area for p in self.pools]

    def run(self) -> None:
        env = self.env
        for i in range(1, len(self.pools)):
            if self.cfg.units[i - 1].staffing is not None:
                env.process(self.staffing_proc(i))
        # census patients take their places before anything else happens
        for j, entry in enumerate(self.census):
            self.pools[self.index[entry.unit]].occupied += 1
            env.process(self.census_patient(j))
        self._next_arrival(0)
        env.process(self.elective_proc())
        env.process(self.clock_proc())
        env.run(until=self.end)
        self._snapshot(self.occ.shape[1] - 1)
        for pool in self.pools:
            pool._integrate()
        self._close(env.now)


def simulate_simpy(
    config: HospitalConfig,
    *,
    seed: int,
    replication: int = 0,
    horizon_h: float,
    warmup_h: float = 0.0,
    start_how_h: float = 0.0,
    census: Sequence[CensusEntry] = (),
    record_stays: bool = False,
) -> ReplicationResult:
    """Run one replication of *config* for *horizon_h* hours after *warmup_h* hours of warm-up.

    *seed* and *replication* fix every random number (``SeedSequence(seed, spawn_key=(replication,))``);
    *start_how_h* is the hour of the week at time 0 (0 = Monday 00:00 UTC); *census* lists the
    patients present at time 0 (the starting state of a forecast). With *record_stays* the result
    carries the log of every unit stay (used for synthetic histories and Little's-law checks).
    """
    return run_replication(
        _Run,
        config,
        seed=seed,
        replication=replication,
        horizon_h=horizon_h,
        warmup_h=warmup_h,
        start_how_h=start_how_h,
        census=census,
        record_stays=record_stays,
    )
