"""The event calendar under the hospital simulation, and its equivalence with the SimPy formulation.

``medtwin.hospital.simpy_engine`` is the simulation as it was written on SimPy processes (kept as
the selectable ``engine="simpy"``); the default calendar engine must reproduce it: same patients,
same events, same KPIs, same stay log, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

import numpy as np
import pytest

from medtwin.hospital import (
    ArrivalProfile,
    CensusEntry,
    Duration,
    EDConfig,
    ElectiveSlot,
    HospitalConfig,
    SimulationError,
    Staffing,
    UnitConfig,
    example_hospital,
    simulate,
)
from medtwin.hospital.beds import BedPool, Calendar
from medtwin.hospital.replications import DaskRunner
from medtwin.hospital.simpy_engine import simulate_simpy


def test_calendar_runs_in_time_order_ties_first_scheduled_first() -> None:
    cal = Calendar()
    log: list[tuple[float, str]] = []
    for t, name in [(2.0, "b"), (1.0, "a"), (2.0, "c"), (5.0, "late")]:
        cal.schedule(t, lambda n, t=t: log.append((t, n)), name)
    cal.run(5.0)
    assert log == [(1.0, "a"), (2.0, "b"), (2.0, "c")]  # the event at the horizon is not run
    assert cal.now == 5.0


def test_calendar_merges_a_sorted_stream_after_heap_events_at_the_same_time() -> None:
    cal = Calendar()
    log: list[str] = []
    cal.schedule(1.0, log.append, "heap@1")
    cal.schedule(3.0, log.append, "heap@3")
    cal.run(10.0, [0.5, 1.0, 2.0, 12.0], lambda i: log.append(f"stream{i}@{cal.now:g}"))
    assert log == ["stream0@0.5", "heap@1", "stream1@1", "stream2@2", "heap@3"]


def test_bed_pool_serves_by_priority_skips_withdrawn_and_integrates_exactly() -> None:
    cal = Calendar()
    pool = BedPool(cal, 1, count_waiting=True)
    served: list[str] = []
    assert pool.try_take(0.0)
    assert not pool.try_take(0.0)
    pool.wait(1.0, served.append, "low", 3)
    withdrawn = pool.wait(1.0, served.append, "withdrawn", 1)
    pool.wait(2.0, served.append, "high", 1)
    pool.cancel(2.5, withdrawn)
    pool.release(4.0)
    cal.run(math.inf)
    assert served == ["high"]
    assert (pool.occupied, pool.n_waiting) == (1, 1)
    # present: 1 on [0,1), 3 on [1,2), 4 on [2,2.5), 3 on [2.5,4) (one in a space, two waiting), then 2
    pool.integrate(5.0)
    assert pool.area == pytest.approx(1 + 3 + 4 * 0.5 + 3 * 1.5 + 2 * 1.0)
    pool.set_capacity(6.0, 2)
    cal.run(math.inf)
    assert served == ["high", "low"]


def _assert_same(a: object, b: object) -> None:
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray)
            assert x.dtype == y.dtype, f.name
            assert np.array_equal(x, y, equal_nan=True), f.name  # bit for bit, not approximately
        else:
            assert x == y, f.name


def _ward_only(**ed_kw: object) -> HospitalConfig:
    ed = EDConfig(spaces=4, treatment=Duration.exponential(1.0), admit={"Ward": 0.5})
    return HospitalConfig(
        name="ward only",
        ed=replace(ed, **ed_kw),  # type: ignore[arg-type]
        units=(UnitConfig(name="Ward", beds=5, los=Duration.exponential(10.0)),),
        arrivals=ArrivalProfile.constant(1.0),
    )


def _staffed_with_electives() -> HospitalConfig:
    cfg = example_hospital()
    units = tuple(
        replace(u, staffing=Staffing(nurses_per_shift=(6, 6, 3), patients_per_nurse=5.0)) if u.name == "Surgery" else u
        for u in cfg.units
    )
    return replace(
        cfg,
        units=units,
        electives=(*cfg.electives, ElectiveSlot(unit="ICU", weekday=2, hour=9.0, count=6)),
        elective_grace_h=2.0,
    )


CASES = {
    "example, stay log": (example_hospital(), {"horizon_h": 2 * 168.0, "record_stays": True}),
    "example, warm-up and census": (
        example_hospital(),
        {
            "horizon_h": 120.0,
            "warmup_h": 48.5,
            "start_how_h": 31.0,
            "census": [CensusEntry(unit="ICU", elapsed_h=10.0)] * 15
            + [CensusEntry(unit="Medicine", elapsed_h=50.0)] * 80
            + [CensusEntry(unit="ED", elapsed_h=1.5)] * 12,
            "record_stays": True,
        },
    ),
    "crowded ED: LWBS, diversion, boarding": (
        _ward_only(patience=Duration.exponential(2.0), ambulance_fraction=0.5, divert_threshold=5),
        {"horizon_h": 400.0, "record_stays": True},
    ),
    "staffing, electives cancelled": (_staffed_with_electives(), {"horizon_h": 3 * 168.0, "warmup_h": 24.0}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [0, 7])
def test_calendar_version_reproduces_the_simpy_formulation(case: str, seed: int) -> None:
    cfg, kwargs = CASES[case]
    ours = simulate(cfg, seed=seed, replication=1, **kwargs)  # type: ignore[arg-type]
    ref = simulate_simpy(cfg, seed=seed, replication=1, **kwargs)
    assert ref.patient_events > 0
    _assert_same(ours, ref)


def test_the_equivalence_check_can_fail() -> None:
    cfg, kwargs = CASES["crowded ED: LWBS, diversion, boarding"]
    ours = simulate(cfg, seed=0, **kwargs)  # type: ignore[arg-type]
    other = simulate_simpy(replace(cfg, ed=replace(cfg.ed, spaces=5)), seed=0, **kwargs)
    with pytest.raises(AssertionError):
        _assert_same(ours, other)


def test_dask_runner_rejects_empty_chunks() -> None:
    with pytest.raises(SimulationError, match="chunks_per_worker"):
        DaskRunner(chunks_per_worker=0)


def test_simulate_engine_simpy_runs_the_simpy_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from medtwin.hospital import simpy_engine

    calls: list[int] = []
    original = simpy_engine.simulate_simpy

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(simpy_engine, "simulate_simpy", counting)
    cfg, kwargs = CASES["crowded ED: LWBS, diversion, boarding"]
    via_simpy = simulate(cfg, seed=3, engine="simpy", **kwargs)  # type: ignore[arg-type]
    assert calls == [1]
    default = simulate(cfg, seed=3, **kwargs)  # type: ignore[arg-type]
    assert calls == [1]  # the default engine is the calendar, not SimPy
    _assert_same(default, via_simpy)


def test_forecast_and_whatif_on_the_simpy_engine_match_the_default() -> None:
    from datetime import UTC, datetime

    from medtwin.hospital import Scenario, compare_scenarios, forecast_occupancy
    from medtwin.hospital.history import census_from_model

    cfg = example_hospital()
    start = datetime(2026, 3, 4, 12, tzinfo=UTC)
    census = census_from_model(cfg, at=start, seed=1)
    fc = {
        engine: forecast_occupancy(cfg, start=start, horizon_h=24, census=census, n_reps=3, seed=5, engine=engine)
        for engine in ("calendar", "simpy")
    }
    assert fc["calendar"].to_dict() == fc["simpy"].to_dict()
    scen = [Scenario(name="icu-4", beds={"ICU": -4})]
    cmp = {
        engine: compare_scenarios(cfg, scen, n_reps=2, seed=2, horizon_h=168, warmup_h=48, engine=engine)
        for engine in ("calendar", "simpy")
    }
    assert np.array_equal(cmp["calendar"].values, cmp["simpy"].values)
    assert np.array_equal(cmp["calendar"].occupancy_bands, cmp["simpy"].occupancy_bands)


def test_unknown_engine_is_rejected() -> None:
    from medtwin.hospital.replications import make_jobs

    cfg, kwargs = CASES["crowded ED: LWBS, diversion, boarding"]
    with pytest.raises(SimulationError, match="engine must be one of calendar, simpy, got 'ciw'"):
        simulate(cfg, seed=0, engine="ciw", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SimulationError, match="engine must be one of"):
        make_jobs(cfg, n_reps=2, seed=0, horizon_h=24.0, engine="ciw")  # type: ignore[arg-type]
