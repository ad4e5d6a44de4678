"""The event calendar under the hospital simulation, and its equivalence with the SimPy formulation.

``simpy_reference.py`` (beside this file) is the simulation as it was written on SimPy processes
before the speed work of issue 6; the calendar version must reproduce it: same patients, same
events, same KPIs, same stay log, bit for bit.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import fields, replace
from pathlib import Path
from types import ModuleType

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


def _reference() -> ModuleType:
    path = Path(__file__).with_name("simpy_reference.py")
    spec = importlib.util.spec_from_file_location("medtwin_tests_hospital_simpy_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _reference()


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
    ref = REF.simulate_simpy(cfg, seed=seed, replication=1, **kwargs)
    assert ref.patient_events > 0
    _assert_same(ours, ref)


def test_the_equivalence_check_can_fail() -> None:
    cfg, kwargs = CASES["crowded ED: LWBS, diversion, boarding"]
    ours = simulate(cfg, seed=0, **kwargs)  # type: ignore[arg-type]
    other = REF.simulate_simpy(replace(cfg, ed=replace(cfg.ed, spaces=5)), seed=0, **kwargs)
    with pytest.raises(AssertionError):
        _assert_same(ours, other)


def test_dask_runner_rejects_empty_chunks() -> None:
    with pytest.raises(SimulationError, match="chunks_per_worker"):
        DaskRunner(chunks_per_worker=0)
