"""Benchmark of the hospital twin's simulation (medtwin.hospital), run side by side in one process.

1. Simulated patient-events per second: medtwin's model configured as an M/M/c queue versus a plain
   SimPy M/M/c script (simpy.Resource, one generator per customer) on the same lambda, mu, c and
   horizon. Both count three events per patient (arrival, start of service, departure); ratio printed.
2. Parallel speedup: N replications of one year of a 500-bed hospital (about 50,000 admissions a
   year), sequential versus a local Dask cluster of 2 worker processes. Identical results checked.
3. The issue's goal: one year of that hospital x 100 replications on 2 workers, wall-clock time
   against 120 s.
4. Engines: CPU seconds per replication-year of that hospital, the default event-calendar engine
   versus the SimPy-process engine (medtwin.hospital.simpy_engine, ``engine="simpy"``), interleaved
   in one process; results checked identical.

Run:  .venv/bin/python bench/hospital.py            (full: about 2-4 minutes on 2 cores)
      .venv/bin/python bench/hospital.py --quick    (about a minute)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import replace

import numpy as np
import simpy

from medtwin.hospital import (
    ArrivalProfile,
    DaskRunner,
    Duration,
    EDConfig,
    HospitalConfig,
    compare_scenarios,
    example_hospital,
    simulate,
)
from medtwin.hospital.config import ElectiveSlot

YEAR_H = 365 * 24.0


def plain_simpy_mmc(lam: float, mu: float, c: int, horizon_h: float, seed: int) -> int:
    """A textbook SimPy M/M/c: returns the number of patient-events simulated."""
    rng = np.random.default_rng(seed)
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=c)
    events = [0]

    def customer(service: float):  # type: ignore[no-untyped-def]
        events[0] += 1
        with servers.request() as req:
            yield req
            events[0] += 1
            yield env.timeout(service)
        events[0] += 1

    def source():  # type: ignore[no-untyped-def]
        while True:
            yield env.timeout(rng.exponential(1.0 / lam))
            env.process(customer(rng.exponential(1.0 / mu)))

    env.process(source())
    env.run(until=horizon_h)
    return events[0]


def medtwin_mmc(lam: float, mu: float, c: int) -> HospitalConfig:
    """medtwin's hospital model reduced to an M/M/c queue (ED only, nobody admitted)."""
    return HospitalConfig(
        name=f"M/M/{c}",
        ed=EDConfig(spaces=c, treatment=Duration.exponential(1.0 / mu), admit={}),
        units=(),
        arrivals=ArrivalProfile.constant(lam),
    )


def hospital_500() -> HospitalConfig:
    """The example hospital scaled to 500 beds and about 50,000 admissions a year."""
    cfg = example_hospital()
    beds = {"Medicine": 310, "Surgery": 160, "ICU": 30}
    units = tuple(
        replace(
            u,
            beds=beds[u.name],
            los=Duration.lognormal(u.los.mean_h * 0.58, 1.0),
            staffing=None if u.staffing is None else u.staffing.scaled(beds[u.name] / u.beds),
        )
        for u in cfg.units
    )
    return replace(
        cfg,
        name="500-bed benchmark hospital",
        ed=replace(cfg.ed, spaces=70, divert_threshold=50),
        units=units,
        arrivals=cfg.arrivals.scaled(1.9),
        electives=tuple(ElectiveSlot(unit=s.unit, weekday=s.weekday, hour=s.hour, count=36) for s in cfg.electives),
    )


def bench_events(quick: bool) -> None:
    lam, mu, c = 40.0, 1.0, 45
    horizon = 500.0 if quick else 2500.0
    print(f"== 1. patient-events/s: M/M/{c}, lambda={lam}/h, mu={mu}/h, {horizon:g} h")
    rows = []
    for rep in range(3):
        t = time.perf_counter()
        ev_plain = plain_simpy_mmc(lam, mu, c, horizon, seed=rep)
        t_plain = time.perf_counter() - t
        t = time.perf_counter()
        res = simulate(medtwin_mmc(lam, mu, c), seed=rep, horizon_h=horizon)
        t_ours = time.perf_counter() - t
        rows.append((ev_plain / t_plain, res.patient_events / t_ours))
    plain = max(r[0] for r in rows)
    ours = max(r[1] for r in rows)
    print(f"   plain SimPy M/M/c script : {plain:12,.0f} patient-events/s (best of 3)")
    print(f"   medtwin.hospital.simulate: {ours:12,.0f} patient-events/s (best of 3)")
    print(f"   ratio medtwin / plain    : {ours / plain:.2f}")


def bench_parallel(quick: bool) -> None:
    cfg = hospital_500()
    horizon = 8 * 168.0 if quick else YEAR_H
    n = 4 if quick else 10
    probe = simulate(cfg, seed=0, horizon_h=YEAR_H if not quick else horizon, warmup_h=0.0)
    per_year = probe.admissions * YEAR_H / probe.horizon_h
    print(
        f"== 2. parallel speedup: {cfg.name}, {sum(u.beds for u in cfg.units)} beds, "
        f"{per_year:,.0f} admissions/year, {probe.ed_arrivals * YEAR_H / probe.horizon_h:,.0f} ED arrivals/year"
    )
    print(f"   {n} replications x {horizon / 24:g} days")
    t, c = time.perf_counter(), time.process_time()
    seq = compare_scenarios(cfg, [], n_reps=n, seed=1, horizon_h=horizon, warmup_h=0.0)
    t_seq, cpu_seq = time.perf_counter() - t, time.process_time() - c
    with DaskRunner(n_workers=2, processes=True) as runner:
        t = time.perf_counter()
        runner.map(abs, [1, 2])  # starts the cluster and imports medtwin.hospital on each worker
        t_start = time.perf_counter() - t
        t, c = time.perf_counter(), runner.worker_cpu_seconds()
        par = compare_scenarios(cfg, [], n_reps=n, seed=1, horizon_h=horizon, warmup_h=0.0, runner=runner)
        t_par, cpu_par = time.perf_counter() - t, runner.worker_cpu_seconds() - c
        assert np.array_equal(seq.values, par.values), "parallel results differ from sequential"
        print(f"   sequential           : {t_seq:8.1f} s wall, {cpu_seq:6.1f} s CPU ({cpu_seq / t_seq:.0%} of a core)")
        print(
            f"   Dask 2 workers       : {t_par:8.1f} s wall, {cpu_par:6.1f} s CPU "
            f"({cpu_par / t_par / 2:.0%} of 2 cores)"
            f" (+{t_start:.1f} s cluster start-up)"
        )
        print(f"   speedup (wall)       : {t_seq / t_par:.2f}  (results identical: yes)")
        print(f"   parallel efficiency  : {cpu_seq / cpu_par:.2f} (sequential CPU / parallel CPU; 1.0 = no overhead)")
        print(f"   load average now     : {os.getloadavg()[0]:.1f} (other processes share the cores)")
        if not quick:
            print("== 3. goal: 1 year x 100 replications of the 500-bed hospital on 2 workers, < 120 s")
            t, c = time.perf_counter(), runner.worker_cpu_seconds()
            compare_scenarios(cfg, [], n_reps=100, seed=2, horizon_h=YEAR_H, warmup_h=0.0, runner=runner)
            t_goal, cpu_goal = time.perf_counter() - t, runner.worker_cpu_seconds() - c
            print(f"   wall-clock           : {t_goal:8.1f} s  (goal 120 s: {'met' if t_goal < 120 else 'NOT met'})")
            print(
                f"   CPU                  : {cpu_goal:8.1f} s = {cpu_goal / 100:.2f} s per replication-year "
                f"(target <= 1.0); "
                f"{cpu_goal / t_goal / 2:.0%} of 2 cores obtained"
            )
            print(f"   on 2 idle cores      : about {cpu_goal / 2:.0f} s (CPU / 2)")


def bench_engine(quick: bool) -> None:
    from medtwin.hospital.simpy_engine import simulate_simpy

    cfg = hospital_500()
    horizon = 8 * 168.0 if quick else YEAR_H
    print(f"== 4. engines, simpy vs calendar: CPU s per replication-year, {cfg.name}, {horizon / 24:g} days, best of 3")
    best = {"SimPy engine (simpy)": math.inf, "event calendar (default)": math.inf}
    for rep in range(3):
        c = time.process_time()
        old = simulate_simpy(cfg, seed=3, replication=rep, horizon_h=horizon)
        best["SimPy engine (simpy)"] = min(best["SimPy engine (simpy)"], time.process_time() - c)
        c = time.process_time()
        new = simulate(cfg, seed=3, replication=rep, horizon_h=horizon)
        best["event calendar (default)"] = min(best["event calendar (default)"], time.process_time() - c)
        assert np.array_equal(old.occupancy, new.occupancy), "engines differ"
        assert old.ed_waits_h.tolist() == new.ed_waits_h.tolist(), "engines differ"
    for name, cpu in best.items():
        print(f"   {name:25s}: {cpu * YEAR_H / horizon:6.2f} s CPU per replication-year")
    print(
        f"   speed-up                 : {best['SimPy engine (simpy)'] / best['event calendar (default)']:.2f}x"
        " (results identical: yes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run")
    args = parser.parse_args()
    print(
        f"medtwin hospital benchmark; Python {platform.python_version()}, SimPy {simpy.__version__}, "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}"
    )
    bench_events(args.quick)
    bench_parallel(args.quick)
    bench_engine(args.quick)


if __name__ == "__main__":
    main()
