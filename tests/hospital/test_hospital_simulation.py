"""Properties of the hospital simulation: Little's law, determinism, CRN monotonicity, pathways."""

from __future__ import annotations

import itertools
from dataclasses import replace

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

WEEK_H = 168.0


@pytest.fixture(scope="module")
def example_run():
    return simulate(example_hospital(), seed=5, horizon_h=3 * WEEK_H, record_stays=True)


def test_littles_law_holds_exactly_on_time_integrated_counts(example_run) -> None:
    """Area under each unit's occupancy curve == sum of the stays' durations clipped to the run."""
    r = example_run
    stays = r.stays
    assert stays is not None
    assert stays.shape[0] > 5000
    end = r.horizon_h
    for u, name in enumerate(r.unit_names):
        rows = stays[stays[:, 2] == u]
        stop = np.where(np.isnan(rows[:, 4]), end, np.minimum(rows[:, 4], end))
        clipped = np.clip(stop - np.maximum(rows[:, 3], 0.0), 0.0, None)
        assert r.area_h[u] == pytest.approx(clipped.sum(), rel=1e-9), name
        # L = lambda W on the run: mean occupancy == entries per hour x mean time in the run
        lam = rows.shape[0] / end
        assert r.area_h[u] / end == pytest.approx(lam * clipped.mean(), rel=1e-9)


def test_hourly_occupancy_matches_stay_log(example_run) -> None:
    r = example_run
    stays = r.stays
    assert stays is not None
    for h in (10, 200, 503):
        t = h + 1.0
        for u in range(len(r.unit_names)):
            rows = stays[stays[:, 2] == u]
            present = (rows[:, 3] <= t) & (np.isnan(rows[:, 4]) | (rows[:, 4] > t))
            assert r.occupancy[u, h] == int(present.sum())


def test_same_seed_identical_and_different_seed_differs() -> None:
    cfg = example_hospital()
    a = simulate(cfg, seed=3, horizon_h=WEEK_H, warmup_h=WEEK_H)
    b = simulate(cfg, seed=3, horizon_h=WEEK_H, warmup_h=WEEK_H)
    c = simulate(cfg, seed=4, horizon_h=WEEK_H, warmup_h=WEEK_H)
    assert np.array_equal(a.occupancy, b.occupancy)
    assert np.array_equal(a.ed_waits_h, b.ed_waits_h)
    assert a.area_h.tolist() == b.area_h.tolist()
    assert (a.lwbs, a.diverted, a.diversion_h) == (b.lwbs, b.diverted, b.diversion_h)
    assert not np.array_equal(a.occupancy, c.occupancy)


def test_more_icu_beds_never_increase_waits_under_common_random_numbers() -> None:
    base = example_hospital()
    means = []
    for extra in (0, 2, 4, 8):
        cfg = replace(
            base,
            units=tuple(replace(u, beds=u.beds + extra, staffing=None) if u.name == "ICU" else u for u in base.units),
        )
        runs = [simulate(cfg, seed=9, replication=r, horizon_h=4 * WEEK_H, warmup_h=2 * WEEK_H) for r in range(2)]
        means.append(
            (
                np.mean([r.boarding_h.mean() for r in runs]),
                np.mean([r.ed_waits_h.mean() for r in runs]),
            )
        )
    boarding = [m[0] for m in means]
    waits = [m[1] for m in means]
    assert all(b2 <= b1 for b1, b2 in itertools.pairwise(boarding)), boarding
    assert all(w2 <= w1 for w1, w2 in itertools.pairwise(waits)), waits
    assert boarding[-1] < boarding[0]


def _ward_only(**ed_kw: object) -> HospitalConfig:
    ed = EDConfig(spaces=10, treatment=Duration.exponential(1.0), admit={"Ward": 1.0})
    return HospitalConfig(
        name="ward",
        ed=replace(ed, **ed_kw),  # type: ignore[arg-type]
        units=(UnitConfig(name="Ward", beds=5, los=Duration.exponential(10.0)),),
        arrivals=ArrivalProfile.constant(1.0),
    )


def test_boarding_holds_ed_space_and_diversion_and_lwbs_happen_when_crowded() -> None:
    cfg = _ward_only(patience=Duration.exponential(2.0), ambulance_fraction=0.5, divert_threshold=5)
    r = simulate(cfg, seed=1, horizon_h=500)
    # 1 admission/h into 5 beds of 10 h stays: the ward saturates, patients board in the ED
    assert r.occupancy[1].max() == 5
    assert r.boarding_h.mean() > 1.0
    assert r.diverted > 0
    assert r.diversion_h > 0
    assert r.diversion_h <= r.horizon_h
    # conservation: every arrival is diverted, left, still in the ED, or got an ED space
    assert r.ed_arrivals >= r.diverted + r.lwbs
    assert r.lwbs > 0


def test_no_diversion_or_lwbs_without_rules() -> None:
    r = simulate(_ward_only(), seed=1, horizon_h=300)
    assert (r.diverted, r.lwbs, r.diversion_h) == (0, 0, 0.0)


def test_staffing_caps_beds_by_shift() -> None:
    unit = UnitConfig(
        name="Ward",
        beds=30,
        los=Duration.exponential(24.0),
        staffing=Staffing(nurses_per_shift=(5, 5, 2), patients_per_nurse=4.0),
    )
    cfg = HospitalConfig(
        name="staffed",
        ed=EDConfig(spaces=100, treatment=Duration.exponential(0.5), admit={"Ward": 1.0}),
        units=(unit,),
        arrivals=ArrivalProfile.constant(2.0),
    )
    r = simulate(cfg, seed=2, horizon_h=96)
    caps = set(r.capacity[1].tolist())
    assert caps == {20, 8}
    # 5 nurses x 4 = 20 on the 07-15 and 15-23 shifts, 2 x 4 = 8 from 23:00 (Monday start)
    assert r.capacity[1, 10] == 20
    assert r.capacity[1, 23] == 8
    # nurse-hours: (5 + 5 + 2) x 8 h x 4 days
    assert r.staff_hours == pytest.approx(12 * 8 * 4)


def test_electives_are_cancelled_when_no_bed_frees_in_time() -> None:
    cfg = HospitalConfig(
        name="electives",
        ed=EDConfig(spaces=5, treatment=Duration.exponential(1.0), admit={}),
        units=(UnitConfig(name="Surgery", beds=3, los=Duration.exponential(100.0)),),
        arrivals=ArrivalProfile.constant(0.01),
        electives=(ElectiveSlot(unit="Surgery", weekday=0, hour=8.0, count=5),),
        elective_grace_h=1.0,
    )
    r = simulate(cfg, seed=0, horizon_h=WEEK_H)
    assert r.electives_scheduled == 5
    assert r.electives_cancelled == 2


def test_census_patients_occupy_beds_at_start_and_leave() -> None:
    cfg = example_hospital()
    census = [CensusEntry(unit="ICU", elapsed_h=10.0)] * 20 + [CensusEntry(unit="Medicine", elapsed_h=50.0)] * 100
    quiet = replace(cfg, arrivals=ArrivalProfile.constant(0.0), electives=())
    r = simulate(quiet, seed=1, horizon_h=24 * 60, census=census)
    assert r.occupancy[3, 0] <= 20
    assert r.occupancy[3, 0] >= 15
    # everybody eventually goes home: no arrivals, so the hospital empties
    assert r.occupancy[:, -1].sum() == 0


def test_surge_on_common_random_numbers_adds_arrivals() -> None:
    cfg = example_hospital()
    base = simulate(cfg, seed=4, horizon_h=WEEK_H)
    surge = simulate(replace(cfg, arrivals=cfg.arrivals.scaled(1.2)), seed=4, horizon_h=WEEK_H)
    assert surge.ed_arrivals > base.ed_arrivals
    assert surge.ed_arrivals == pytest.approx(1.2 * base.ed_arrivals, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"horizon_h": 0.0}, "horizon_h"),
        ({"horizon_h": 10.0, "warmup_h": -1.0}, "warmup_h"),
        ({"horizon_h": 10.0, "census": [CensusEntry(unit="Nowhere", elapsed_h=1.0)]}, "Nowhere"),
        ({"horizon_h": 10.0, "census": [CensusEntry(unit="ICU", elapsed_h=-1.0)]}, "elapsed_h"),
    ],
)
def test_simulate_rejects_bad_inputs(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(SimulationError, match=match):
        simulate(example_hospital(), seed=0, **kwargs)  # type: ignore[arg-type]


def test_triage_categories_are_seen_in_order_of_urgency() -> None:
    cfg = HospitalConfig(
        name="triage",
        ed=EDConfig(spaces=2, treatment=Duration.exponential(1.0), admit={}, triage_mix=(0.2, 0.3, 0.5)),
        units=(),
        arrivals=ArrivalProfile.constant(1.8),
    )
    r = simulate(cfg, seed=8, horizon_h=3000, warmup_h=100)
    assert np.bincount(r.ed_wait_triage).tolist() == pytest.approx(
        [0.2 * r.ed_waits_h.size, 0.3 * r.ed_waits_h.size, 0.5 * r.ed_waits_h.size], rel=0.1
    )
    by_cat = [r.ed_waits_h[r.ed_wait_triage == k].mean() for k in range(3)]
    assert by_cat[0] < by_cat[1] < by_cat[2]
    # priorities reorder the queue but do not change the work: the overall mean stays near Erlang C
    from medtwin.hospital import mmc_mean_wait

    assert r.ed_waits_h.mean() == pytest.approx(mmc_mean_wait(1.8, 1.0, 2), rel=0.25)


def test_triage_mix_must_be_shares() -> None:
    from medtwin.hospital import HospitalConfigError

    with pytest.raises(HospitalConfigError, match="triage_mix"):
        EDConfig(spaces=1, treatment=Duration.exponential(1.0), admit={}, triage_mix=(0.5, 0.6))
