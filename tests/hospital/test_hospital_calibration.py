"""Calibration recovers known parameters; ADT CSV and encounter conversions; census."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from medtwin.hospital import (
    AdmissionHistory,
    CalibrationError,
    HistoryError,
    HospitalConfig,
    calibrate,
    encounters_from_history,
    example_hospital,
    history_from_encounters,
    read_adt_csv,
    synthetic_history,
    write_adt_csv,
)
from medtwin.records import Encounter, EncounterLocation

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hospital"
START = datetime(2026, 1, 5, tzinfo=UTC)


def _uncongested() -> HospitalConfig:
    """The example with ample capacity: what the history shows is then the model's demand."""
    cfg = example_hospital()
    return replace(
        cfg,
        ed=replace(cfg.ed, spaces=400, patience=None),
        units=tuple(replace(u, beds=u.beds * 3, staffing=None) for u in cfg.units),
    )


@pytest.fixture(scope="module")
def truth() -> HospitalConfig:
    return _uncongested()


@pytest.fixture(scope="module")
def history(truth: HospitalConfig) -> AdmissionHistory:
    return synthetic_history(truth, start=START, weeks=26, seed=17)


def test_calibration_recovers_known_parameters(truth: HospitalConfig, history: AdmissionHistory) -> None:
    result = calibrate(history, base=truth)
    cfg = result.config
    # arrivals: total rate within 2 %, hour-of-day shape within 10 % (26 weeks x 7 days per hour)
    fitted = np.asarray(cfg.arrivals.rates_per_h).reshape(7, 24)
    true = np.asarray(truth.arrivals.rates_per_h).reshape(7, 24)
    assert fitted.sum() == pytest.approx(true.sum(), rel=0.02)
    np.testing.assert_allclose(fitted.sum(axis=0), true.sum(axis=0), rtol=0.10)
    # ED treatment: lognormal mu, sigma
    assert cfg.ed.treatment.family == "lognormal"
    np.testing.assert_allclose(cfg.ed.treatment.params, truth.ed.treatment.params, rtol=0.03)
    # admission probabilities (about 37 000 seen patients): within 0.01 absolute
    for unit, p in truth.ed.admit.items():
        assert cfg.ed.admit[unit] == pytest.approx(p, abs=0.01)
    for true_unit in truth.units:
        unit = cfg.unit(true_unit.name)
        assert unit.los.family == "lognormal", unit.name
        # open stays are left out (right censoring), so the mean is a little short: 5 %
        assert unit.los.mean_h == pytest.approx(true_unit.los.mean_h, rel=0.05), unit.name
        assert unit.los.params[1] == pytest.approx(true_unit.los.params[1], rel=0.06), unit.name
        assert result.los_fits[unit.name].ks_pvalue > 0.01
        for target, p in true_unit.transfers.items():
            assert unit.transfers[target] == pytest.approx(p, abs=0.03 if unit.name == "ICU" else 0.01)
    # the weekday 07:00 elective list is recovered exactly
    assert sorted((s.unit, s.weekday, s.hour, s.count) for s in cfg.electives) == sorted(
        (s.unit, s.weekday, s.hour, s.count) for s in truth.electives
    )
    assert result.lwbs_fraction == 0.0
    assert result.n_encounters > 35000


def test_gof_flags_a_wrong_family(history: AdmissionHistory) -> None:
    from medtwin.hospital import fit_duration

    los = [s.duration_h for s in history.stays if s.unit == "Medicine" and s.duration_h is not None]
    expo = fit_duration(los, families=("exponential",))
    logn = fit_duration(los, families=("lognormal",))
    assert expo.ks_pvalue < 1e-6 < logn.ks_pvalue
    assert logn.aic < expo.aic


def test_census_of_history_is_its_open_stays(history: AdmissionHistory) -> None:
    census = history.census()
    open_stays = [s for s in history.stays if s.end is None]
    assert len(census) == len(open_stays) > 100
    assert all(c.elapsed_h >= 0 for c in census)


def test_adt_csv_round_trip(history: AdmissionHistory, tmp_path: Path) -> None:
    keep = {s.encounter_id for s in history.stays[:2000]}
    small = AdmissionHistory(tuple(s for s in history.stays if s.encounter_id in keep))
    path = tmp_path / "adt.csv"
    write_adt_csv(small, path)
    back = read_adt_csv(path)

    def key(h: AdmissionHistory) -> list[tuple[object, ...]]:
        return sorted((s.encounter_id, s.unit, s.start, s.end, s.next_unit, s.lwbs) for s in h.stays)

    assert key(back) == key(small)


def test_read_small_adt_fixture() -> None:
    h = read_adt_csv(FIXTURES / "adt_small.csv")
    by = {(s.encounter_id, s.unit, s.start): s for s in h.stays}
    e1_ed = by[("E1", "ED", datetime(2026, 1, 5, 8, tzinfo=UTC))]
    assert e1_ed.next_unit == "Medicine"
    assert e1_ed.duration_h == pytest.approx(4.0)
    e2 = by[("E2", "ED", datetime(2026, 1, 5, 8, 30, tzinfo=UTC))]  # 09:30+01:00
    assert e2.duration_h == pytest.approx(2.5)
    assert e2.next_unit is None
    assert by[("E4", "ED", datetime(2026, 1, 5, 10, tzinfo=UTC))].lwbs
    census = h.census()
    assert [(c.unit, c.elapsed_h) for c in census] == [("Surgery", 0.0)]
    at = datetime(2026, 1, 7, tzinfo=UTC)
    assert sorted(c.unit for c in h.census(at)) == ["ICU", "Medicine"]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("E1,P1,EMER,admit,2026-01-05T08:00:00,ED,\n", "no UTC offset"),
        ("E1,P1,EMER,admit,yesterday,ED,\n", "not ISO 8601"),
        ("E1,P1,EMER,transfer,2026-01-05T08:00:00Z,ICU,\n", "not open"),
        ("E1,P1,EMER,admit,2026-01-05T08:00:00Z,ED,\nE1,P1,EMER,admit,2026-01-05T09:00:00Z,ED,\n", "twice"),
        ("E1,P1,EMER,admit,2026-01-05T08:00:00Z,ED,\nE1,P1,EMER,discharge,2026-01-05T07:00:00Z,,\n", "precedes"),
        ("E1,P1,EMER,arrive,2026-01-05T08:00:00Z,ED,\n", "unknown"),
    ],
)
def test_bad_adt_rows_are_refused_with_line(tmp_path: Path, rows: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("encounter_id,patient_id,class_code,event,time,unit,disposition\n" + rows)
    with pytest.raises(HistoryError, match=match) as info:
        read_adt_csv(path)
    assert "bad.csv:" in str(info.value)


def test_missing_columns_refused(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text("encounter_id,time\nE1,2026-01-05T08:00:00Z\n")
    with pytest.raises(HistoryError, match="lacks column"):
        read_adt_csv(path)


def test_encounters_round_trip_through_records() -> None:
    h = read_adt_csv(FIXTURES / "adt_small.csv")
    encounters = encounters_from_history(h)
    assert all(isinstance(e, Encounter) for e in encounters)
    open_enc = [e for e in encounters if e.end is None]
    assert [e.encounter_id for e in open_enc] == ["E3"]
    back = history_from_encounters(encounters)
    assert sorted((s.encounter_id, s.unit, s.start, s.end, s.next_unit) for s in back.stays) == sorted(
        (s.encounter_id, s.unit, s.start, s.end, s.next_unit) for s in h.stays
    )


def test_encounter_locations_without_end_take_next_start() -> None:
    t = datetime(2026, 2, 2, 10, tzinfo=UTC)
    enc = Encounter(
        encounter_id="X",
        patient_id="P",
        status="finished",
        class_code="EMER",
        start=t,
        end=t + timedelta(hours=30),
        locations=(
            EncounterLocation(unit="ED", start=t),
            EncounterLocation(unit="Medicine", start=t + timedelta(hours=5)),
        ),
    )
    stays = history_from_encounters([enc]).stays
    assert [(s.unit, s.duration_h, s.next_unit) for s in stays] == [("ED", 5.0, "Medicine"), ("Medicine", 25.0, None)]


def test_calibration_refuses_short_or_empty_history() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(AdmissionHistory(()))
    with pytest.raises(CalibrationError, match="shorter than a week"):
        calibrate(read_adt_csv(FIXTURES / "adt_small.csv"))


def test_calibration_uses_given_beds_and_reports_unknown_units(history: AdmissionHistory) -> None:
    renamed = AdmissionHistory(
        tuple(replace(s, unit="Stepdown") if s.unit == "ICU" else s for s in history.stays[:20000])
    )
    renamed = AdmissionHistory(
        tuple(replace(s, next_unit="Stepdown") if s.next_unit == "ICU" else s for s in renamed.stays)
    )
    result = calibrate(renamed, beds={"Medicine": 300})
    assert result.config.unit("Medicine").beds == 300
    assert result.config.unit("Stepdown").beds == result.max_occupancy["Stepdown"]
    assert any("Stepdown" in n for n in result.notes)


def test_report_of_a_calibrated_model_cites_its_data(truth: HospitalConfig, history: AdmissionHistory) -> None:
    from medtwin.hospital import stress_des_report

    result = calibrate(history, base=truth)
    text = stress_des_report(result.config, calibration=result)
    assert f"({result.n_encounters} encounters, {result.ed_arrivals} ED arrivals)" in text
    assert "ICU: lognormal" in text
    # the JSON summary (as stored in a model file) gives the same report
    assert stress_des_report(result.config, calibration=result.to_dict()) == text
