"""Replications on Dask give exactly the sequential results (one local cluster for this module)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from medtwin.hospital import DaskRunner, Scenario, compare_scenarios, example_hospital, run_replications
from medtwin.hospital.forecast import forecast_occupancy


@pytest.fixture(scope="module")
def dask_runner() -> Iterator[DaskRunner]:
    with DaskRunner(n_workers=2, processes=True) as runner:
        yield runner


def test_sequential_and_parallel_replications_are_identical(dask_runner: DaskRunner) -> None:
    cfg = example_hospital()
    kwargs = {"n_reps": 4, "seed": 21, "horizon_h": 168.0, "warmup_h": 168.0}
    seq = run_replications(cfg, **kwargs)  # type: ignore[arg-type]
    cpu_before = dask_runner.worker_cpu_seconds()
    par = run_replications(cfg, runner=dask_runner, **kwargs)  # type: ignore[arg-type]
    assert dask_runner.worker_cpu_seconds() > cpu_before
    assert [r.replication for r in par] == [0, 1, 2, 3]
    for a, b in zip(seq, par, strict=True):
        assert np.array_equal(a.occupancy, b.occupancy)
        assert np.array_equal(a.ed_waits_h, b.ed_waits_h)
        assert np.array_equal(a.boarding_h, b.boarding_h)
        assert a.area_h.tolist() == b.area_h.tolist()
        assert (a.lwbs, a.diverted, a.electives_cancelled) == (b.lwbs, b.diverted, b.electives_cancelled)
    # replications differ from one another
    assert not np.array_equal(seq[0].occupancy, seq[1].occupancy)


def test_parallel_forecast_and_whatif_match_sequential(dask_runner: DaskRunner) -> None:
    from datetime import UTC, datetime

    cfg = example_hospital()
    start = datetime(2026, 3, 4, 12, tzinfo=UTC)
    a = forecast_occupancy(cfg, start=start, horizon_h=24, n_reps=6, seed=1)
    b = forecast_occupancy(cfg, start=start, horizon_h=24, n_reps=6, seed=1, runner=dask_runner)
    assert a.to_dict() == b.to_dict()
    scen = [Scenario(name="icu+2", beds={"ICU": 2})]
    c1 = compare_scenarios(cfg, scen, n_reps=3, seed=2, horizon_h=168, warmup_h=168)
    c2 = compare_scenarios(cfg, scen, n_reps=3, seed=2, horizon_h=168, warmup_h=168, runner=dask_runner)
    assert np.array_equal(c1.values, c2.values)


def test_parallel_replications_on_the_simpy_engine_match_sequential_calendar(dask_runner: DaskRunner) -> None:
    cfg = example_hospital()
    kwargs = {"n_reps": 2, "seed": 4, "horizon_h": 72.0}
    seq = run_replications(cfg, **kwargs)  # type: ignore[arg-type]
    par = run_replications(cfg, runner=dask_runner, engine="simpy", **kwargs)  # type: ignore[arg-type]
    for a, b in zip(seq, par, strict=True):
        assert np.array_equal(a.occupancy, b.occupancy)
        assert np.array_equal(a.ed_waits_h, b.ed_waits_h)
        assert a.patient_events == b.patient_events
