"""The personal twin's data: the documented CSV, Nightscout exports, data-quality findings."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose.data_quality import assess_quality
from medtwin.glucose.therapy import Therapy, apply_therapy, parse_basal_profile
from medtwin.glucose.therapy_data import SENSOR_LOW_MG_DL, TherapyData, read_nightscout, read_therapy_csv

CSV = """time,cgm_mg_dl,bolus_u,basal_u_h,carbs_g
2024-03-01T06:00:00+01:00,120,,0.8,
2024-03-01T06:05:00+01:00,122,,,
2024-03-01T06:10:00+01:00,abc,,,
2024-03-01T06:15:00,125,,,
2024-03-01T06:20:00+01:00,Low,,,
2024-03-01T06:25:00+01:00,130,4.5,,50
2024-03-01T06:25:00+01:00,131,,,
2024-03-01T06:30:00+01:00,,,1.2,
2024-03-01T06:35:00+01:00,700,,,
2024-03-01T06:40:00+01:00,135,,,
2024-03-01T06:45:00+01:00,,-1,,
"""


def test_csv_reads_values_and_reports_every_bad_row_by_line() -> None:
    d = read_therapy_csv(io.StringIO(CSV), body_weight_kg=70)
    assert d.start == datetime(2024, 3, 1, 5, 0, tzinfo=UTC)
    assert d.utc_offset_min == 60.0
    assert d.local_start_minute() == 6 * 60
    np.testing.assert_array_equal(d.cgm_t_min, [0, 5, 20, 25, 40])
    np.testing.assert_array_equal(d.cgm_mg_dl, [120, 122, SENSOR_LOW_MG_DL, 130, 135])
    np.testing.assert_array_equal(d.cgm_censored, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(d.bolus_t_min, [25])
    np.testing.assert_array_equal(d.carbs_g, [50])
    np.testing.assert_array_equal(d.basal_t_min, [0, 30])
    np.testing.assert_array_equal(d.basal_u_h, [0.8, 1.2])
    reasons = {s.where: s.reason for s in d.skipped}
    assert set(reasons) == {"line 4", "line 5", "line 8", "line 10", "line 12"}
    assert "not a number" in reasons["line 4"]
    assert "no zone offset" in reasons["line 5"]
    assert "second CGM reading" in reasons["line 8"]
    assert "outside 20-600" in reasons["line 10"]
    assert "outside 0-50" in reasons["line 12"]


def test_csv_mmol_timezone_and_constant_basal() -> None:
    text = "time,cgm_mmol_l,carbs_g\n2024-03-01 07:00,5.5,\n2024-03-01 07:05,6.0,30\n"
    d = read_therapy_csv(io.StringIO(text), timezone="Europe/Rome", basal_u_h=0.9, body_weight_kg=60)
    assert d.start == datetime(2024, 3, 1, 6, 0, tzinfo=UTC)
    assert d.cgm_mg_dl[0] == pytest.approx(5.5 * 18.0156, rel=1e-4)
    np.testing.assert_array_equal(d.basal_u_h, [0.9])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("time,glucose\n2024-01-01T00:00:00+00:00,100\n", "not understood"),
        ("time,cgm_mg_dl\n2024-01-01T00:00:00+00:00,100\n2024-01-01T00:05:00+00:00,101\n", "no basal insulin"),
        ("time,cgm_mg_dl,basal_u_h\nnope,100,1\n", r"0 usable CGM reading\(s\).*line 2: time .nope. is not ISO 8601"),
    ],
)
def test_csv_refuses_unusable_files(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        read_therapy_csv(io.StringIO(text))


def test_csv_round_trip_and_window(tmp_path: Path) -> None:
    d = read_therapy_csv(io.StringIO(CSV), body_weight_kg=70)
    back = read_therapy_csv(d.write_csv(tmp_path / "d.csv"), body_weight_kg=70)
    for name in ("cgm_t_min", "cgm_mg_dl", "cgm_censored", "bolus_t_min", "bolus_u", "basal_t_min", "basal_u_h"):
        np.testing.assert_allclose(getattr(back, name), getattr(d, name))
    assert back.utc_offset_min == 60
    w = d.window(20.0, 40.0)
    np.testing.assert_array_equal(w.cgm_t_min, [0, 5, 20])
    np.testing.assert_array_equal(w.basal_u_h, [0.8, 1.2])  # the rate in force at the window start comes along
    assert TherapyData.from_dict(json.loads(json.dumps(d.to_dict()))).to_dict() == d.to_dict()


def test_minute_inputs_deliver_every_unit_and_gram() -> None:
    d = read_therapy_csv(io.StringIO(CSV), body_weight_kg=70)
    meals, insulin = d.minute_inputs(60)
    assert meals.sum() == pytest.approx(50.0)
    assert insulin.sum() == pytest.approx(4.5 + 30 * 0.8 / 60 + 30 * 1.2 / 60)


def _ns_time(minutes: float) -> int:
    return int((datetime(2024, 5, 1, 12, tzinfo=UTC) + timedelta(minutes=minutes)).timestamp() * 1000)


def test_nightscout_entries_treatments_profile() -> None:
    entries = [{"type": "sgv", "sgv": 140 + i, "date": _ns_time(5 * i)} for i in range(24)]
    entries += [{"type": "mbg", "mbg": 150, "date": _ns_time(7)}, {"type": "sgv", "date": _ns_time(3)}]
    treatments = [
        {"eventType": "Meal Bolus", "insulin": 5.0, "carbs": 45, "created_at": "2024-05-01T12:30:00Z"},
        {"eventType": "Temp Basal", "absolute": 0.0, "duration": 30, "created_at": "2024-05-01T13:00:00Z"},
        {"eventType": "Site Change", "created_at": "2024-05-01T13:10:00Z"},
        {"eventType": "Combo Bolus", "insulin": 1.0, "relative": 1.2, "duration": 10,
         "created_at": "2024-05-01T12:40:00Z"},
        {"eventType": "Temp Basal", "duration": 30, "created_at": "2024-05-01T13:40:00Z"},
    ]  # fmt: skip
    profile = {"defaultProfile": "Default", "store": {"Default": {"timezone": "UTC", "basal": [
        {"time": "00:00", "value": 0.7}, {"time": "13:00", "value": 0.9}]}}}  # fmt: skip
    d = read_nightscout(entries, treatments, profile=profile, body_weight_kg=80)
    assert d.cgm_t_min.size == 24
    assert d.bolus_u.sum() == pytest.approx(5.0 + 1.0 + 1.2 * 10 / 60)
    np.testing.assert_array_equal(d.carbs_g, [45])
    # scheduled 0.7 until 13:00, temp basal 0 U/h 13:00-13:30, back to the scheduled 0.9
    at = d.basal_rate_at(np.array([10.0, 61.0, 95.0]))
    np.testing.assert_allclose(at, [0.7, 0.0, 0.9])
    reasons = [s.reason for s in d.skipped]
    assert any("mbg" in r for r in reasons)
    assert any("Site Change" in r for r in reasons)
    assert any("without 'absolute' or 'rate'" in r for r in reasons)
    assert any("sgv 'None'" in r for r in reasons)


def test_nightscout_needs_json_arrays(tmp_path: Path) -> None:
    bad = tmp_path / "entries.json"
    bad.write_text("{not json")
    with pytest.raises(ValidationError, match="not a JSON entries export"):
        read_nightscout(bad, [])
    with pytest.raises(ValidationError, match="JSON arrays"):
        read_nightscout({"a": 1}, [])  # type: ignore[arg-type]


def _trace(values: list[float], carbs: list[tuple[float, float]] = ()) -> TherapyData:  # type: ignore[assignment]
    t = np.arange(len(values)) * 5.0
    return TherapyData(
        start=datetime(2024, 1, 1, tzinfo=UTC), cgm_t_min=t, cgm_mg_dl=np.asarray(values, dtype=float),
        cgm_censored=np.zeros(len(values)), bolus_t_min=np.zeros(0), bolus_u=np.zeros(0),
        basal_t_min=np.zeros(1), basal_u_h=np.ones(1), carbs_t_min=np.array([c[0] for c in carbs]),
        carbs_g=np.array([c[1] for c in carbs]), body_weight_kg=70,
    )  # fmt: skip


def test_quality_finds_compression_lows_and_excludes_them() -> None:
    flat = [150.0] * 20
    dip = [150, 130, 105, 80, 60, 55, 75, 100, 125, 148, 150]
    q = assess_quality(_trace(flat + dip + flat))
    kinds = [i.kind for i in q.issues]
    assert kinds == ["compression-low"]
    assert q.n_excluded >= 6
    # the same dip with a meal recorded in it is a treated low, not an artefact
    q2 = assess_quality(_trace(flat + dip + flat, carbs=[(124.0, 15.0)]))
    assert "compression-low" not in [i.kind for i in q2.issues]


def test_quality_flags_unexplained_rises_gaps_and_days_without_meals() -> None:
    values = [110.0] * 30 + [110 + 6 * k for k in range(1, 13)] + [182.0] * 30
    q = assess_quality(_trace(values))
    rise = [i for i in q.issues if i.kind == "unexplained-rise"]
    assert len(rise) == 1
    assert "cannot infer" in rise[0].detail
    assert q.n_excluded > 0
    assert assess_quality(_trace(values), exclude_unexplained_rises=False).n_excluded == 0
    explained = assess_quality(_trace(values, carbs=[(140.0, 40.0)]))
    assert not [i for i in explained.issues if i.kind == "unexplained-rise"]
    d = _trace([120.0] * 10)
    gappy = TherapyData(**{**{k: getattr(d, k) for k in d.__dataclass_fields__},
                           "cgm_t_min": np.array([0, 5, 10, 80, 85, 90, 95, 100, 105, 110.0])})  # fmt: skip
    gaps = [i for i in assess_quality(gappy).issues if i.kind == "gap"]
    assert [(g.start_min, g.end_min) for g in gaps] == [(10.0, 80.0)]


def test_therapies_rewrite_boluses_and_basal() -> None:
    d = read_therapy_csv(io.StringIO(CSV), body_weight_kg=70)
    b = apply_therapy(d, Therapy(bolus_scale=1.3, bolus_shift_min=-20))
    np.testing.assert_allclose(b.bolus_u, [4.5 * 1.3])
    np.testing.assert_allclose(b.bolus_t_min, [5.0])
    np.testing.assert_array_equal(b.carbs_g, d.carbs_g)  # meals as recorded unless asked
    m = apply_therapy(d, Therapy(meal_scale=1.5))
    np.testing.assert_allclose(m.carbs_g, d.carbs_g * 1.5)
    np.testing.assert_array_equal(m.carbs_t_min, d.carbs_t_min)
    np.testing.assert_array_equal(m.bolus_u, d.bolus_u)
    with pytest.raises(ValidationError, match="scales must be >= 0"):
        Therapy(meal_scale=-1.0)
    # local day starts at 06:00 here: a 06:30 segment starts 30 minutes in
    p = apply_therapy(d, Therapy(basal_profile=parse_basal_profile("00:00=0.5,06:30=1.5,22:00=0.6")))
    np.testing.assert_allclose(p.basal_rate_at(np.array([0.0, 29.0, 30.0, 16 * 60.0 + 1])), [0.5, 0.5, 1.5, 0.6])
    for bad in ("06:00=1", "00:00=1,00:00=2", "00:00=x", "00:00=50"):
        with pytest.raises(ValidationError):
            parse_basal_profile(bad)
    with pytest.raises(ValidationError, match="needs CR"):
        Therapy(controller="basal-bolus")


def test_sensor_limit_readings_are_left_out_or_kept_as_bounds() -> None:
    d = _trace([60.0, 55.0, 50.0, 45.0, 40.0, 40.0, 40.0, 42.0, 44.0])  # a slow low, two readings at the limit
    d = TherapyData(**{**{k: getattr(d, k) for k in d.__dataclass_fields__},
                       "cgm_censored": np.array([0, 0, 0, 0, 0, 1, 1, 0, 0.0])})  # fmt: skip
    dropped = assess_quality(d)
    assert dropped.fit_mask.tolist() == [1, 1, 1, 1, 1, 0, 0, 1, 1]
    assert "left out of the fit" in dropped.issues[0].detail
    bounds = assess_quality(d, fit_sensor_limits=True)
    assert bounds.fit_mask.tolist() == [1] * 9
    assert [i.kind for i in bounds.issues] == ["sensor-limit"]
    assert "fitted as bounds" in bounds.issues[0].detail


def test_in_silico_records_mark_the_sensors_clipped_readings_censored() -> None:
    from medtwin.glucose.devices import sensor_spec
    from medtwin.glucose.insilico import simulate_therapy_a

    spec = sensor_spec("Dexcom")
    d = simulate_therapy_a(["child#004"], days=2, seed=4).data[0]  # deep lows under the calculator's doses
    at_limit = (d.cgm_mg_dl <= spec.min_mg_dl) | (d.cgm_mg_dl >= spec.max_mg_dl)
    assert at_limit.sum() > 10
    np.testing.assert_array_equal(d.cgm_censored > 0, at_limit)
