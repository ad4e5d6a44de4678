"""Occupancy forecasts from a census, what-if comparisons on common random numbers, the report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from medtwin.hospital import (
    CensusEntry,
    Comparison,
    ForecastError,
    Scenario,
    ScenarioError,
    compare_scenarios,
    example_hospital,
    forecast_occupancy,
    stress_des_report,
)
from medtwin.hospital.history import census_from_model
from medtwin.hospital.plots import plot_fan_chart, plot_scenario_fans

START = datetime(2026, 3, 2, 8, tzinfo=UTC)  # a Monday


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    scenarios = [
        Scenario(name="icu+4", beds={"ICU": 4}),
        Scenario(name="surge", arrival_scale=1.15),
        Scenario(name="electives+30%", elective_scale=1.3),
    ]
    return compare_scenarios(example_hospital(), scenarios, n_reps=4, seed=3, horizon_h=2 * 168, warmup_h=2 * 168)


def test_forecast_bands_are_ordered_and_start_from_the_census(tmp_path: Path) -> None:
    cfg = example_hospital()
    census = census_from_model(cfg, at=START, seed=1)
    fc = forecast_occupancy(cfg, start=START, horizon_h=48, census=census, n_reps=30, seed=2)
    assert fc.p50.shape == (4, 48)
    assert np.all(fc.p10 <= fc.p50)
    assert np.all(fc.p50 <= fc.p90)
    assert np.all((fc.p_full >= 0) & (fc.p_full <= 1))
    # the first hour is close to the census: stays last days, few leave in one hour
    counts = {u: sum(1 for c in census if c.unit == u) for u in fc.unit_names}
    assert fc.p50[1, 0] == pytest.approx(counts["Medicine"], abs=8)
    assert fc.p50[3, 0] == pytest.approx(counts["ICU"], abs=3)
    # uncertainty grows with the horizon
    spread = fc.p90[1] - fc.p10[1]
    assert spread[-1] > spread[0]
    assert fc.times[0] == START + timedelta(hours=1)
    png = plot_fan_chart(fc, tmp_path / "fan.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_full_icu_census_gives_high_probability_full() -> None:
    cfg = example_hospital()
    census = [CensusEntry(unit="ICU", elapsed_h=1.0)] * 24
    fc = forecast_occupancy(cfg, start=START, horizon_h=6, census=census, n_reps=20, seed=0)
    assert fc.p_full[3, 0] == pytest.approx(1.0)
    assert fc.p_full[1, 0] == 0.0


def test_forecast_is_deterministic_by_seed() -> None:
    cfg = example_hospital()
    a = forecast_occupancy(cfg, start=START, horizon_h=12, n_reps=5, seed=7)
    b = forecast_occupancy(cfg, start=START, horizon_h=12, n_reps=5, seed=7)
    assert np.array_equal(a.p50, b.p50)
    assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"horizon_h": 0}, "horizon"),
        ({"n_reps": 1}, "replications"),
        ({"start": datetime(2026, 3, 2)}, "naive"),
    ],
)
def test_forecast_rejects_bad_inputs(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"start": START, "horizon_h": 24, "n_reps": 5}
    args.update(kwargs)
    with pytest.raises(ForecastError, match=match):
        forecast_occupancy(example_hospital(), **args)  # type: ignore[arg-type]


def test_whatif_kpis_move_the_right_way(comparison: Comparison) -> None:
    mean = comparison.mean()
    k = {name: i for i, name in enumerate(comparison.kpi_names)}
    base, icu, surge, elect = range(4)
    assert mean[icu, k["occupancy_pct_ICU"]] < mean[base, k["occupancy_pct_ICU"]]
    assert mean[icu, k["boarding_mean_h"]] <= mean[base, k["boarding_mean_h"]]
    assert mean[surge, k["ed_wait_mean_h"]] > mean[base, k["ed_wait_mean_h"]]
    assert mean[surge, k["occupancy_pct_Medicine"]] > mean[base, k["occupancy_pct_Medicine"]]
    assert mean[elect, k["occupancy_pct_Surgery"]] > mean[base, k["occupancy_pct_Surgery"]]
    # 4 more ICU beds at 550 per staffed bed-day: 4 x 7 x 550 more per week
    assert mean[icu, k["cost_per_week"]] - mean[base, k["cost_per_week"]] == pytest.approx(4 * 7 * 550.0)
    # common random numbers: paired intervals are narrower than the unpaired ones
    occ = k["occupancy_pct_Medicine"]
    assert comparison.difference_half_width()[icu, occ] < comparison.half_width()[icu, occ]


def test_comparison_json_and_fans(comparison: Comparison, tmp_path: Path) -> None:
    data = comparison.to_dict()
    assert set(data["scenarios"]) == {"baseline", "icu+4", "surge", "electives+30%"}  # type: ignore[arg-type]
    assert comparison.occupancy_bands.shape == (4, 3, 4, 2 * 168)
    assert plot_scenario_fans(comparison, tmp_path / "s.png").stat().st_size > 1000


def test_scenario_validation_and_file_form() -> None:
    cfg = example_hospital()
    with pytest.raises(ScenarioError, match="unknown unit"):
        Scenario(name="x", beds={"Nowhere": 1}).apply(cfg)
    with pytest.raises(ScenarioError, match="with -1 beds"):
        Scenario(name="x", beds={"ICU": -25}).apply(cfg)
    with pytest.raises(ScenarioError, match="only the keys"):
        Scenario.from_dict({"name": "x", "bedz": {}})
    with pytest.raises(ScenarioError, match="unique"):
        compare_scenarios(cfg, [Scenario(name="baseline")], n_reps=2)
    s = Scenario.from_dict({"name": "staff", "nurse_scale": 0.5, "beds": {"ICU": -2}})
    changed = s.apply(cfg)
    assert changed.unit("ICU").beds == 22
    assert changed.unit("ICU").staffing is not None
    assert changed.unit("ICU").staffing.nurses_per_shift == (7, 7, 6)
    assert Scenario.from_dict(s.to_dict()) == s


def test_stress_des_report_has_every_section() -> None:
    text = stress_des_report(example_hospital(), n_reps=30, seed=4)
    for heading in ("1. Objectives", "2. Logic", "3. Data", "4. Experimentation", "5. Implementation", "6. Code"):
        assert f"## {heading}" in text
    assert "ICU 24 beds" in text
    assert "SeedSequence(4" in text
    assert "30 independent replications" in text


def test_scenario_staffing_and_elective_schedule_changes() -> None:
    from medtwin.hospital import ElectiveSlot

    cfg = example_hospital()
    night_cut = Scenario(name="icu-night", nurses={"ICU": (14, 14, 8)})
    changed = night_cut.apply(cfg)
    icu = changed.unit("ICU").staffing
    assert icu is not None
    assert icu.nurses_per_shift == (14, 14, 8)
    assert icu.patients_per_nurse == 2.0
    friday_list = (ElectiveSlot(unit="Surgery", weekday=4, hour=8.0, count=30),)
    moved = Scenario(name="fridays", electives=friday_list, elective_scale=0.5).apply(cfg)
    assert [(s.weekday, s.count) for s in moved.electives] == [(4, 15)]
    again = Scenario.from_dict(Scenario(name="both", nurses={"ICU": (1, 2, 3)}, electives=friday_list).to_dict())
    assert again.nurses == {"ICU": (1, 2, 3)}
    assert again.electives == friday_list
    with pytest.raises(ScenarioError, match="unknown unit 'Nowhere'"):
        Scenario(name="x", nurses={"Nowhere": (1,)}).apply(cfg)
    with pytest.raises(ScenarioError, match="invalid hospital"):
        Scenario(name="x", electives=(ElectiveSlot(unit="Theatre", weekday=0, hour=7.0, count=1),)).apply(cfg)
    with pytest.raises(ScenarioError, match="bad value"):
        Scenario.from_dict({"name": "x", "electives": [{"unit": "Surgery"}]})


def test_fewer_icu_night_nurses_raise_icu_access_block_on_common_random_numbers() -> None:
    cfg = example_hospital()
    cmp = compare_scenarios(
        cfg, [Scenario(name="icu-night", nurses={"ICU": (14, 14, 8)})], n_reps=3, seed=5, horizon_h=336, warmup_h=336
    )
    k = {name: i for i, name in enumerate(cmp.kpi_names)}
    mean = cmp.mean()
    # 8 nurses x 2 = 16 staffed ICU beds at night instead of 24: lower ICU occupancy, more boarding
    assert mean[1, k["occupancy_pct_ICU"]] < mean[0, k["occupancy_pct_ICU"]]
    assert mean[1, k["boarding_mean_h"]] > mean[0, k["boarding_mean_h"]]
    assert mean[1, k["cost_per_week"]] < mean[0, k["cost_per_week"]]
