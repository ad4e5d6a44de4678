"""Discrete-event simulation of patient flow through one hospital.

Pathways. ED arrivals follow a non-stationary Poisson process (hour-of-week rates). While the ED is
on diversion (patients waiting plus boarding >= the threshold) an ambulance arrival is diverted.
Others wait for a treatment space by triage category, then first come first served; a waiting
patient whose patience runs out leaves without being seen (LWBS). After treatment a patient goes
home or, with the configured probabilities, is admitted to an inpatient unit; until a bed there
is free the patient keeps the ED space (boarding). An inpatient stay lasts the unit's length of
stay; the patient then goes home or transfers (ward <-> ICU, ...), holding the current bed until
the next one is free (access block). Elective admissions arrive on a weekly schedule and are
cancelled when no bed frees within the grace period. A unit's staffed beds follow its nurse
roster: min(beds, nurses x ratio), changed at each shift start (nobody is moved out of a bed).

Random numbers (common random numbers). One ``numpy.random.SeedSequence(seed, spawn_key=(rep,))``
per replication spawns independent streams for arrivals, ED patients, elective patients and the
starting census. Every patient's uniforms are drawn up front (one row per patient) and turned into
durations and decisions by inverse CDF, so two scenarios run with the same seed see the same
patients with the same needs: only the hospital's response differs. :func:`draw_replication_inputs`
draws all of them (into a frozen :class:`ReplicationInputs`) and :class:`RunState` holds the
engine-independent state and outputs; both engines build on these, so they consume the same numbers.

Engine. Events run on :class:`medtwin.hospital.beds.Calendar`, a binary heap ordered by (time,
scheduling order): the ordering SimPy gives its normal-priority events. Every patient is a chain
of callbacks (no generator processes) and the ED arrivals are a sorted stream merged into the heap,
so an ED patient sent home costs two events and an admitted one an event per unit stay. The model
was first written on SimPy processes; :mod:`medtwin.hospital.simpy_engine` keeps that formulation as
a selectable engine (``simulate(..., engine="simpy")``, readable and extensible with SimPy
processes) and the tests check that this default calendar engine reproduces it bit for bit (same
events, KPIs and stay log) at about 2.5x the speed (issue 6: 100 replication-years of a 500-bed
hospital in under 2 minutes on 2 cores).

Outputs are time-integrated exactly: each unit's occupancy is integrated at every change, so the
area under the occupancy curve equals the sum of the stays' clipped durations (Little's law,
L = lambda W, holds exactly on the run). Hourly snapshots give occupancy for forecasts.

Reference: the model structure follows the common ED/inpatient flow models reviewed in
Vázquez-Serrano J.I., Peimbert-García R.E., Cárdenas-Barrón L.E. (2021) "Discrete-event simulation
modeling in healthcare: a comprehensive review", Int J Environ Res Public Health 18(22):12262,
doi:10.3390/ijerph182212262. Valid for capacity planning at the hour-to-months scale; not a model of
individual clinical decisions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from heapq import heappush
from typing import Literal

import numpy as np
import numpy.typing as npt

from medtwin.errors import ValidationError
from medtwin.hospital.beds import BedPool, Calendar, Request
from medtwin.hospital.config import HOURS_PER_WEEK, HospitalConfig

__all__ = [
    "ENGINES",
    "CensusEntry",
    "Engine",
    "ReplicationInputs",
    "ReplicationResult",
    "RunState",
    "SimulationError",
    "check_run_arguments",
    "draw_replication_inputs",
    "run_replication",
    "simulate",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

Engine = Literal["calendar", "simpy"]
#: the simulation engines: the event calendar (default, fast) and the SimPy formulation
ENGINES: tuple[Engine, ...] = ("calendar", "simpy")

# fixed uniform columns of one ED patient's row; the stays follow (two columns each)
_COL_AMBULANCE, _COL_PATIENCE, _COL_TREAT, _COL_ADMIT, _COL_TRIAGE, _FIXED = 0, 1, 2, 3, 4, 5


class SimulationError(ValidationError):
    """Simulation inputs that cannot be run (negative horizon, census in an unknown unit, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CensusEntry:
    """A patient present at the start of a run: in *unit* (the ED or a unit) for *elapsed_h* hours."""

    unit: str
    elapsed_h: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationResult:
    """Everything one replication measured after warm-up.

    Arrays indexed by unit follow ``unit_names`` (the ED first). ``occupancy[u, h]`` is the number of
    patients in unit *u* at the end of hour *h* (h = 0 .. horizon-1; in the ED: everybody present,
    waiting, in treatment or boarding); ``capacity[u, h]`` the staffed beds (ED: spaces) then;
    ``area_h[u]`` the integral of occupancy over the horizon (patient-hours); ``ed_waits_h`` the
    waits for an ED space (arrival order of being seen) with ``ed_wait_triage`` their categories. ``stays`` (only with
    ``record_stays``) has one row per unit stay: patient, route (0 ED arrival, 1 elective, 2 census),
    unit, start, end (NaN if still in the unit), next unit (-1 = home, -2 = left without being seen,
    -3 still there), all times in hours from the run start.
    """

    unit_names: tuple[str, ...]
    seed: int
    replication: int
    warmup_h: float
    horizon_h: float
    occupancy: IntArray
    capacity: IntArray
    area_h: FloatArray
    ed_waits_h: FloatArray
    ed_wait_triage: IntArray
    boarding_h: FloatArray
    ed_arrivals: int
    lwbs: int
    diverted: int
    diversion_h: float
    electives_scheduled: int
    electives_cancelled: int
    admissions: int
    staff_hours: float
    patient_events: int
    stays: FloatArray | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationInputs:
    """Every random number of one replication and the tables derived from the configuration.

    Drawn once by :func:`draw_replication_inputs` and read by both engines (the event calendar here
    and :mod:`medtwin.hospital.simpy_engine`), so they provably consume the same random numbers.
    Units are indexed as in ``config.unit_names`` (0 = the ED). Per ED arrival *i*: ``arrival_l[i]``
    (hours from the run start), ``amb_l`` (ambulance?), ``patience_l`` (hours, inf = never leaves),
    ``treat_l`` (treatment hours), ``admit_unit`` (-1 = home), ``triage_l`` (category index) and
    ``u_ed_stays[i]`` (the uniforms of its unit stays: LoS from column 2k, transfer from 2k+1).
    ``elective_times`` are the (time, unit) admissions in time order with ``u_el_stays`` their
    uniforms; ``census_remaining[j]`` the residual stay of census entry *j*, ``c_admit[j]`` its
    admission pick (>= len(admit_to) = home) and ``u_c_stays[j]`` its stay uniforms.
    """

    index: dict[str, int]
    transfer_cum: list[list[float]]
    transfer_to: list[list[int]]
    los_ppf: list[Callable[[float], float]]
    arrival_l: list[float]
    amb_l: list[bool]
    patience_l: list[float]
    treat_l: list[float]
    admit_unit: list[int]
    triage_l: list[int]
    u_ed_stays: FloatArray
    admit_to: list[int]
    elective_times: list[tuple[float, int]]
    u_el_stays: FloatArray
    census: list[CensusEntry]
    census_remaining: list[float]
    u_c_stays: FloatArray
    c_admit: list[int]


def draw_replication_inputs(
    config: HospitalConfig,
    *,
    seed: int,
    replication: int,
    end_h: float,
    start_how_h: float,
    census: Sequence[CensusEntry],
) -> ReplicationInputs:
    """Draw replication *replication* of *seed*'s random inputs for a run of *end_h* hours (warm-up included).

    One ``SeedSequence(seed, spawn_key=(replication,))`` spawns four streams: arrivals, ED patients,
    elective patients and the starting census; *start_how_h* is the hour of the week at time 0.
    Raises :class:`SimulationError` for a census entry in an unknown unit or with a negative elapsed time.
    """
    names = config.unit_names
    index = {name: i for i, name in enumerate(names)}
    max_stays = config.max_stays
    transfer_cum: list[list[float]] = []
    transfer_to: list[list[int]] = []
    for u in config.units:
        targets = [(index[k], p) for k, p in u.transfers.items() if p > 0]
        transfer_to.append([t for t, _ in targets])
        transfer_cum.append(list(np.cumsum([p for _, p in targets])))
    streams = np.random.SeedSequence(seed, spawn_key=(replication,)).spawn(4)
    rng_arr, rng_ed, rng_el, rng_census = (np.random.default_rng(s) for s in streams)
    width = _FIXED + 2 * max_stays
    # arrivals: unit-rate points, enough for the whole run (Poisson tail bound + margin)
    total = config.arrivals.expected_arrivals(start_how_h, end_h)
    n_pts = int(total + 10.0 * math.sqrt(total) + 50)
    pts = np.cumsum(rng_arr.exponential(1.0, n_pts))
    while pts[-1] < total:  # practically never: extend deterministically from the same stream
        pts = np.concatenate((pts, pts[-1] + np.cumsum(rng_arr.exponential(1.0, n_pts))))
    arrivals = config.arrivals.arrival_times(pts, start_how_h, end_h)
    n = arrivals.size
    u_ed = rng_ed.random((n, width))
    ambulance = u_ed[:, _COL_AMBULANCE] < config.ed.ambulance_fraction
    patience = np.full(n, np.inf) if config.ed.patience is None else config.ed.patience.ppf(u_ed[:, _COL_PATIENCE])
    treat = config.ed.treatment.ppf(u_ed[:, _COL_TREAT])
    admit_to = [index[k] for k, p in config.ed.admit.items() if p > 0]
    admit_cum = np.cumsum([p for k, p in config.ed.admit.items() if p > 0])
    pick = np.searchsorted(admit_cum, u_ed[:, _COL_ADMIT], side="right")
    admit_unit = np.where(pick < len(admit_to), np.asarray([*admit_to, -1], dtype=np.int64)[pick], -1).tolist()
    triage_cum = np.cumsum(config.ed.triage_mix)
    triage_l = np.minimum(
        np.searchsorted(triage_cum / triage_cum[-1], u_ed[:, _COL_TRIAGE], side="right"),
        len(triage_cum) - 1,
    ).tolist()
    los_ppf: list[Callable[[float], float]] = [config.ed.treatment.ppf_scalar]
    los_ppf.extend(u.los.ppf_scalar for u in config.units)
    # electives
    elective_times: list[tuple[float, int]] = []
    for slot in config.electives:
        t = (slot.weekday * 24 + slot.hour - start_how_h) % HOURS_PER_WEEK
        while t < end_h:
            elective_times.extend([(t, index[slot.unit])] * slot.count)
            t += HOURS_PER_WEEK
    elective_times.sort()
    u_el = rng_el.random((len(elective_times), 2 * max_stays))
    # census
    census_l = list(census)
    u_c = rng_census.random((len(census_l), 2 + 2 * max_stays))
    census_remaining: list[float] = []
    for j, entry in enumerate(census_l):
        if entry.unit not in index:
            raise SimulationError(f"census entry {j} is in unknown unit {entry.unit!r}; known {names}")
        if not entry.elapsed_h >= 0:
            raise SimulationError(f"census entry {j}: elapsed_h must be >= 0, got {entry}")
        dist = config.ed.treatment if entry.unit == config.ed.name else config.unit(entry.unit).los
        rem = dist.residual_ppf(np.asarray([u_c[j, 0]]), np.asarray([entry.elapsed_h]))
        census_remaining.append(float(rem[0]))
    return ReplicationInputs(
        index=index,
        transfer_cum=transfer_cum,
        transfer_to=transfer_to,
        los_ppf=los_ppf,
        arrival_l=arrivals.tolist(),
        amb_l=ambulance.tolist(),
        patience_l=patience.tolist(),
        treat_l=treat.tolist(),
        admit_unit=admit_unit,
        triage_l=triage_l,
        u_ed_stays=u_ed[:, _FIXED:],
        admit_to=admit_to,
        elective_times=elective_times,
        u_el_stays=u_el,
        census=census_l,
        census_remaining=census_remaining,
        u_c_stays=u_c[:, 2:],
        c_admit=np.searchsorted(admit_cum, u_c[:, 1], side="right").tolist(),
    )


def check_run_arguments(*, seed: int, replication: int, horizon_h: float, warmup_h: float) -> None:
    """Raise :class:`SimulationError` unless horizon_h > 0, warmup_h >= 0 (finite) and seed, replication >= 0."""
    if not (horizon_h > 0 and warmup_h >= 0 and math.isfinite(horizon_h + warmup_h)):
        raise SimulationError(f"horizon_h must be > 0 and warmup_h >= 0, got {horizon_h} and {warmup_h}")
    if seed < 0 or replication < 0:
        raise SimulationError(f"seed and replication must be >= 0, got {seed}, {replication}")


class RunState(ABC):
    """The engine-independent state of one replication: its inputs, counters and outputs.

    Both engines' run classes derive from it and add their clock and bed pools in :meth:`_setup`;
    the random inputs and tables are copied onto the instance under the names the event handlers
    read (one attribute look-up on the hot path). :func:`run_replication` validates, builds and runs one.
    """

    def __init__(
        self,
        config: HospitalConfig,
        *,
        seed: int,
        replication: int,
        horizon_h: float,
        warmup_h: float,
        start_how_h: float,
        census: Sequence[CensusEntry],
        record_stays: bool,
    ) -> None:
        self.cfg = config
        self.seed = seed
        self.replication = replication
        self.horizon = horizon_h
        self.warmup = warmup_h
        self.end = warmup_h + horizon_h
        self.start_how = start_how_h
        self.record = record_stays
        self.stays: list[tuple[float, float, float, float, float, float]] = []
        self.active: dict[int, tuple[int, int, float]] = {}
        self.names = config.unit_names
        n_units = len(self.names)
        self.max_stays = config.max_stays
        inputs = draw_replication_inputs(
            config, seed=seed, replication=replication, end_h=self.end, start_how_h=start_how_h, census=census
        )
        self.inputs = inputs
        self.index = inputs.index
        self.transfer_cum = inputs.transfer_cum
        self.transfer_to = inputs.transfer_to
        self.los_ppf = inputs.los_ppf
        self.arrival_l = inputs.arrival_l
        self.n_arrivals_total = len(inputs.arrival_l)
        self.amb_l = inputs.amb_l
        self.patience_l = inputs.patience_l
        self.treat_l = inputs.treat_l
        self.admit_unit = inputs.admit_unit
        self.triage_l = inputs.triage_l
        self.u_ed_stays = inputs.u_ed_stays
        self.admit_to = inputs.admit_to
        self.elective_times = inputs.elective_times
        self.u_el_stays = inputs.u_el_stays
        self.census = inputs.census
        self.census_remaining = inputs.census_remaining
        self.u_c_stays = inputs.u_c_stays
        self.c_admit = inputs.c_admit
        # outputs
        hours = math.ceil(horizon_h)
        self.occ = np.zeros((n_units, hours), dtype=np.int64)
        self.cap = np.zeros((n_units, hours), dtype=np.int64)
        self.area_at_warmup = np.zeros(n_units)
        self.waits: list[float] = []
        self.wait_triage: list[int] = []
        self.boarding: list[float] = []
        self.n_arrivals = self.n_lwbs = self.n_diverted = 0
        self.n_el = self.n_el_cancel = self.n_admissions = 0
        self.events = 0
        self.crowd = 0
        self.diverting = False
        self.div_area = 0.0
        self.div_last = 0.0
        self.divert_threshold = config.ed.divert_threshold
        self.div_at_warmup = 0.0
        self.next_patient = 0
        self._setup()

    @abstractmethod
    def _setup(self) -> None:
        """The engine's part of the set-up: its clock and the bed pools (0 = the ED's spaces)."""

    @abstractmethod
    def run(self) -> None:
        """Run the replication to its end (all outputs and integrals closed)."""

    @abstractmethod
    def pool_areas(self) -> list[float]:
        """Each pool's occupancy integral (patient-hours) from time 0 to now."""

    def _crowd_change(self, delta: int, now: float) -> None:
        """The ED's crowd changed by *delta* at *now*: update the diversion state and its time integral."""
        self.crowd += delta
        threshold = self.divert_threshold
        if threshold is None:
            return
        if self.diverting:
            self.div_area += now - self.div_last
        self.div_last = now
        self.diverting = self.crowd >= threshold

    def _open(self, pid: int, route: int, unit: int, start: float) -> None:
        if self.record:
            self.active[pid] = (route, unit, start)

    def _stay(self, pid: int, route: int, unit: int, start: float, end: float, nxt: int) -> None:
        if self.record:
            self.stays.append((pid, route, unit, start, end, nxt))
            self.active.pop(pid, None)

    def _close(self, now: float) -> None:
        """At the end of the run: log the stays still open and close the diversion integral."""
        for pid, (route, unit, start) in self.active.items():
            self.stays.append((pid, route, unit, start, math.nan, -3))
        if self.diverting:
            self.div_area += now - self.div_last

    def result(self) -> ReplicationResult:
        """The measured result (after :meth:`run`)."""
        areas = np.asarray(self.pool_areas()) - self.area_at_warmup
        return ReplicationResult(
            unit_names=self.names,
            seed=self.seed,
            replication=self.replication,
            warmup_h=self.warmup,
            horizon_h=self.horizon,
            occupancy=self.occ,
            capacity=self.cap,
            area_h=areas,
            ed_waits_h=np.asarray(self.waits, dtype=np.float64),
            ed_wait_triage=np.asarray(self.wait_triage, dtype=np.int64),
            boarding_h=np.asarray(self.boarding, dtype=np.float64),
            ed_arrivals=self.n_arrivals,
            lwbs=self.n_lwbs,
            diverted=self.n_diverted,
            diversion_h=self.div_area - self.div_at_warmup,
            electives_scheduled=self.n_el,
            electives_cancelled=self.n_el_cancel,
            admissions=self.n_admissions,
            staff_hours=_staff_hours(self.cfg, self.start_how, self.warmup, self.horizon),
            patient_events=self.events,
            stays=np.asarray(self.stays, dtype=np.float64).reshape(-1, 6) if self.record else None,
        )


def run_replication(
    engine_run: type[RunState],
    config: HospitalConfig,
    *,
    seed: int,
    replication: int,
    horizon_h: float,
    warmup_h: float,
    start_how_h: float,
    census: Sequence[CensusEntry],
    record_stays: bool,
) -> ReplicationResult:
    """Check the arguments, then build, run and measure one replication on the engine *engine_run*."""
    check_run_arguments(seed=seed, replication=replication, horizon_h=horizon_h, warmup_h=warmup_h)
    run = engine_run(
        config,
        seed=seed,
        replication=replication,
        horizon_h=horizon_h,
        warmup_h=warmup_h,
        start_how_h=start_how_h % HOURS_PER_WEEK,
        census=census,
        record_stays=record_stays,
    )
    run.run()
    return run.result()


class _Run(RunState):
    """State of one replication (one event calendar)."""

    def _setup(self) -> None:
        config = self.cfg
        self.cal = cal = Calendar()
        # pool 0 is the ED's treatment spaces; pools 1.. the inpatient units
        self.pools = [BedPool(cal, config.ed.spaces, count_waiting=True)] + [BedPool(cal, u.beds) for u in config.units]
        self.ed_pool = self.pools[0]
        self.queue = cal.queue
        self.seq = cal.seq

    # -- ED patients ----------------------------------------------------------------------------
    # Every patient is a chain of event callbacks on the calendar (no generator processes): an ED
    # patient needs an arrival and an end of treatment, an admitted patient one event per unit stay
    # (plus one per bed handed over after a wait). Arrival i schedules arrival i + 1.
    def _arrive(self, i: int) -> None:
        t0 = self.cal.now
        counted = t0 >= self.warmup
        pid = self.next_patient
        self.next_patient = pid + 1
        if counted:
            self.n_arrivals += 1
        self.events += 1
        if self.diverting and self.amb_l[i]:
            if counted:
                self.n_diverted += 1
            return
        if self.record:
            self._open(pid, 0, 0, t0)
        pool = self.ed_pool
        if pool.occupied < pool.capacity and not pool.n_waiting:
            # a space is free: seen at once, never part of the waiting crowd (BedPool.try_take inlined)
            pool.area += (pool.occupied + pool.n_waiting) * (t0 - pool.last)
            pool.last = t0
            pool.occupied += 1
            self.events += 1
            if counted:
                self.waits.append(0.0)
                self.wait_triage.append(self.triage_l[i])
            heappush(self.queue, (t0 + self.treat_l[i], next(self.seq), self._treated, (i, pid, t0)))
            return
        req = pool.wait(t0, self._seen, (i, pid, t0), self.triage_l[i])
        self._crowd_change(+1, self.cal.now)
        patience = self.patience_l[i]
        if patience != math.inf:
            self.cal.schedule(t0 + patience, self._renege, (req, pid, t0))

    def _renege(self, arg: tuple[Request, int, float]) -> None:
        req, pid, t0 = arg
        if not req.waiting:  # got a space in time
            return
        now = self.cal.now
        self.pools[0].cancel(now, req)
        self._crowd_change(-1, self.cal.now)
        self.events += 1
        if t0 >= self.warmup:
            self.n_lwbs += 1
        self._stay(pid, 0, 0, t0, now, -2)

    def _seen(self, arg: tuple[int, int, float]) -> None:
        i, _pid, t0 = arg
        now = self.cal.now
        self._crowd_change(-1, self.cal.now)
        self.events += 1
        if t0 >= self.warmup:
            self.waits.append(now - t0)
            self.wait_triage.append(self.triage_l[i])
        self.cal.schedule(now + self.treat_l[i], self._treated, arg)

    def _treated(self, arg: tuple[int, int, float]) -> None:
        i, pid, t0 = arg
        unit = self.admit_unit[i]
        if unit < 0:  # home: free the space (BedPool.release inlined)
            self.events += 1
            now = self.cal.now
            pool = self.ed_pool
            pool.area += (pool.occupied + pool.n_waiting) * (now - pool.last)
            pool.last = now
            pool.occupied -= 1
            if pool.n_waiting:
                pool.serve(now)
            if self.record:
                self._stay(pid, 0, 0, t0, now, -1)
            return
        self._request_bed(_Inpatient(pid, 0, unit, 0, t0, self.u_ed_stays[i].tolist()))

    # -- inpatients -------------------------------------------------------------------------------
    def _request_bed(self, p: _Inpatient) -> None:
        """Stay p.k of patient *p* asks for a bed in p.unit, holding p.holding (-1: none, 0: boarding in the ED)."""
        now = self.cal.now
        p.t_decide = now
        if p.holding == 0:
            self._crowd_change(+1, self.cal.now)
        pool = self.pools[p.unit]
        if pool.try_take(now):
            self._got_bed(p)
        else:
            pool.wait(now, self._got_bed, p)

    def _got_bed(self, p: _Inpatient) -> None:
        now = self.cal.now
        self.events += 1
        holding = p.holding
        if holding >= 0:
            self.pools[holding].release(now)
            self._stay(p.pid, p.route, holding, p.hold_start, now, p.unit)
        if self.record:
            self._open(p.pid, p.route, p.unit, now)
        counted = p.t_decide >= self.warmup
        if holding == 0:
            self._crowd_change(-1, self.cal.now)
            if counted:
                self.boarding.append(now - p.t_decide)
        if p.k == 0 and counted:
            self.n_admissions += 1
        p.start = now
        self.cal.schedule(now + self.los_ppf[p.unit](p.u[2 * p.k]), self._end_stay, p)

    def _end_stay(self, p: _Inpatient) -> None:
        """End of stay p.k: home (the bed is freed) or a transfer (the bed is held until the next is free)."""
        k, unit = p.k, p.unit
        nxt = -1
        if k + 1 < self.max_stays:
            cum = self.transfer_cum[unit - 1]
            j = bisect_right(cum, p.u[2 * k + 1])
            if j < len(cum):
                nxt = self.transfer_to[unit - 1][j]
        if nxt < 0:
            now = self.cal.now
            self.pools[unit].release(now)
            self.events += 1
            self._stay(p.pid, p.route, unit, p.start, now, -1)
            return
        p.holding, p.hold_start, p.unit, p.k = unit, p.start, nxt, k + 1
        self._request_bed(p)

    # -- electives --------------------------------------------------------------------------------
    def _elective(self, j: int) -> None:
        cal = self.cal
        now = cal.now
        if j + 1 < len(self.elective_times):
            cal.schedule(self.elective_times[j + 1][0], self._elective, j + 1)
        unit = self.elective_times[j][1]
        counted = now >= self.warmup
        pid = self.next_patient
        self.next_patient += 1
        if counted:
            self.n_el += 1
        p = _Inpatient(pid, 1, unit, -1, now, self.u_el_stays[j].tolist())
        p.t_decide = now
        pool = self.pools[unit]
        if pool.try_take(now):
            self._elective_in(p)
            return
        req = pool.wait(now, self._elective_in, p)
        cal.schedule(now + self.cfg.elective_grace_h, self._elective_timeout, (req, p))

    def _elective_timeout(self, arg: tuple[Request, _Inpatient]) -> None:
        req, p = arg
        if not req.waiting:  # admitted in time
            return
        self.pools[p.unit].cancel(self.cal.now, req)
        if p.t_decide >= self.warmup:
            self.n_el_cancel += 1

    def _elective_in(self, p: _Inpatient) -> None:
        now = self.cal.now
        self.events += 2
        if p.t_decide >= self.warmup:
            self.n_admissions += 1
        self._open(p.pid, 1, p.unit, now)
        p.start = now
        self.cal.schedule(now + self.los_ppf[p.unit](p.u[0]), self._end_stay, p)

    # -- census -----------------------------------------------------------------------------------
    def _census_start(self, j: int) -> None:
        pid = self.next_patient
        self.next_patient += 1
        unit = self.index[self.census[j].unit]
        start = -self.census[j].elapsed_h
        self._open(pid, 2, unit, start)
        now = self.cal.now
        if unit == 0:
            self.cal.schedule(now + self.census_remaining[j], self._census_ed_done, (j, pid, start))
            return
        # the patient already holds a bed in *unit*: the first stay is the residual one
        p = _Inpatient(pid, 2, unit, -1, start, self.u_c_stays[j].tolist())
        p.start = start
        self.cal.schedule(now + self.census_remaining[j], self._end_stay, p)

    def _census_ed_done(self, arg: tuple[int, int, float]) -> None:
        j, pid, start = arg
        pick = self.c_admit[j]
        if pick >= len(self.admit_to):
            now = self.cal.now
            self.pools[0].release(now)
            self._stay(pid, 2, 0, start, now, -1)
            return
        self._request_bed(_Inpatient(pid, 2, self.admit_to[pick], 0, start, self.u_c_stays[j].tolist()))

    # -- clock and roster -------------------------------------------------------------------------
    def _tick(self, h: int) -> None:
        """Hourly snapshot h (at the end of measured hour h); the last one is taken by run()."""
        self._snapshot(h)
        if h + 2 < self.occ.shape[1]:
            self.cal.schedule(self.warmup + h + 2, self._tick, h + 1)

    def _snapshot(self, h: int) -> None:
        for u, pool in enumerate(self.pools):
            self.occ[u, h] = pool.present
            self.cap[u, h] = pool.capacity

    def _staffing(self, unit: int) -> None:
        now = self.cal.now
        cfg = self.cfg.units[unit - 1]
        st = cfg.staffing
        assert st is not None
        hod = (self.start_how + now) % 24.0
        self.pools[unit].set_capacity(now, min(cfg.beds, int(st.nurses_at(hod) * st.patients_per_nurse)))
        since = (hod - st.first_shift_start_h) % st.shift_h
        self.cal.schedule(now + st.shift_h - since, self._staffing, unit)

    def _snapshot_warmup(self, _arg: object = None) -> None:
        now = self.cal.now
        for u, pool in enumerate(self.pools):
            pool.integrate(now)
            self.area_at_warmup[u] = pool.area
        if self.diverting:
            self.div_area += now - self.div_last
        self.div_last = now
        self.div_at_warmup = self.div_area
        if self.occ.shape[1] > 1:
            self.cal.schedule(self.warmup + 1, self._tick, 0)

    def pool_areas(self) -> list[float]:
        return [p.area for p in self.pools]

    def run(self) -> None:
        cal = self.cal
        for i in range(1, len(self.pools)):
            if self.cfg.units[i - 1].staffing is not None:
                self._staffing(i)
        # census patients take their places before anything else happens
        for j, entry in enumerate(self.census):
            self.pools[self.index[entry.unit]].occupied += 1
            self._census_start(j)
        if self.elective_times:
            cal.schedule(self.elective_times[0][0], self._elective, 0)
        if self.warmup > 0:
            cal.schedule(self.warmup, self._snapshot_warmup, None)
        else:
            self._snapshot_warmup()
        cal.run(self.end, self.arrival_l, self._arrive)
        self._snapshot(self.occ.shape[1] - 1)
        for pool in self.pools:
            pool.integrate(cal.now)
        self._close(cal.now)


class _Inpatient:
    """The state of one admitted patient's chain of unit stays.

    Stay k (``k``) is in ``unit``; while waiting for its bed the patient holds ``holding`` (-1 none,
    0 boarding in the ED) since ``hold_start``. ``u`` holds the patient's uniforms: stay k's LoS from
    ``u[2k]``, its transfer from ``u[2k+1]``.
    """

    __slots__ = ("hold_start", "holding", "k", "pid", "route", "start", "t_decide", "u", "unit")

    def __init__(self, pid: int, route: int, unit: int, holding: int, hold_start: float, u: list[float]) -> None:
        self.pid = pid
        self.route = route
        self.unit = unit
        self.holding = holding
        self.hold_start = hold_start
        self.u = u
        self.k = 0
        self.start = 0.0
        self.t_decide = 0.0


def simulate(
    config: HospitalConfig,
    *,
    seed: int,
    replication: int = 0,
    horizon_h: float,
    warmup_h: float = 0.0,
    start_how_h: float = 0.0,
    census: Sequence[CensusEntry] = (),
    record_stays: bool = False,
    engine: Engine = "calendar",
) -> ReplicationResult:
    """Run one replication of *config* for *horizon_h* hours after *warmup_h* hours of warm-up.

    *seed* and *replication* fix every random number (``SeedSequence(seed, spawn_key=(replication,))``);
    *start_how_h* is the hour of the week at time 0 (0 = Monday 00:00 UTC); *census* lists the
    patients present at time 0 (the starting state of a forecast). With *record_stays* the result
    carries the log of every unit stay (used for synthetic histories and Little's-law checks).
    *engine* is ``"calendar"`` (default, fast) or ``"simpy"`` (:mod:`medtwin.hospital.simpy_engine`,
    the SimPy-process formulation); both give identical results.
    """
    if engine == "simpy":
        from medtwin.hospital.simpy_engine import simulate_simpy

        return simulate_simpy(
            config,
            seed=seed,
            replication=replication,
            horizon_h=horizon_h,
            warmup_h=warmup_h,
            start_how_h=start_how_h,
            census=census,
            record_stays=record_stays,
        )
    if engine != "calendar":
        raise SimulationError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
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


def _staff_hours(config: HospitalConfig, start_how_h: float, warmup_h: float, horizon_h: float) -> float:
    """Rostered nurse-hours in the measured window (quarter-hour resolution)."""
    step = 0.25
    t = warmup_h + step / 2 + np.arange(round(horizon_h / step), dtype=np.float64) * step
    hod = (start_how_h + t) % 24.0
    total = 0.0
    for unit in config.units:
        if unit.staffing is not None:
            st = unit.staffing
            idx = (((hod - st.first_shift_start_h) % 24.0) // st.shift_h).astype(np.int64)
            total += float(np.sum(np.asarray(st.nurses_per_shift)[idx])) * step
    return total
