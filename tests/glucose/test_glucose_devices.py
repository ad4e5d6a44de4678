"""CGM sensor noise, pump quantization, controller and patient loading."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtwin.errors import ValidationError
from medtwin.glucose import (
    BasalBolusController,
    CGMSensor,
    ControllerObservation,
    InsulinPump,
    all_patient_names,
    load_cohort,
    meal_matrix,
    pump_spec,
    resolve_patient_names,
    sensor_spec,
)


def test_sensor_noise_reproduces_simglucose_seed_1(adult001_1min: pd.DataFrame) -> None:
    """Dexcom seed 1: first reading 155.334 at t=0 (simglucose log), then the held and new readings."""
    sensor = CGMSensor(sensor_spec("Dexcom"), [1])
    bg0 = np.array([138.56])
    first = sensor.measure(bg0)[0]
    held = sensor.measure(bg0)[0]
    assert first == pytest.approx(155.33394936879048, abs=1e-9)
    assert held == pytest.approx(adult001_1min.CGM.iloc[0], abs=1e-9)
    # readings every 3 minutes, compared where simglucose's BG equals ours to 1e-9
    readings = [sensor.measure(np.array([adult001_1min.BG_sc.iloc[k]]))[0] for k in range(2, 300, 3)]
    np.testing.assert_allclose(readings, adult001_1min.CGM.iloc[2:300:3].to_numpy(), atol=1e-6)


def test_sensor_streams_are_independent_per_member_and_reset() -> None:
    sensor = CGMSensor(sensor_spec("Navigator"), [1, 2, 1])
    a = np.stack([sensor.next_noise() for _ in range(400)])
    assert np.array_equal(a[:, 0], a[:, 2])
    assert not np.allclose(a[:, 0], a[:, 1])
    sensor.reset()
    np.testing.assert_array_equal(sensor.next_noise(), a[0])
    # Johnson SU noise: roughly mean xi-ish offset and SD of a few mg/dL; clipping to [32, 600] for Navigator
    assert 1.0 < a.std() < 30.0
    assert sensor.measure(np.array([10.0, 10.0, 10.0])).min() >= 32.0


def test_noise_free_sensor_is_clipped_glucose() -> None:
    sensor = CGMSensor(sensor_spec("Dexcom"), [0, 0], noise=False)
    np.testing.assert_array_equal(sensor.measure(np.array([20.0, 700.0])), [39.0, 600.0])


def test_pump_rounds_in_pmol_and_limits() -> None:
    pump = InsulinPump(pump_spec("Insulet"))
    # 0.0211226 U/min = 126.7 pmol/min -> 126.75 pmol/min (0.05 increments) -> 0.021125 U/min
    assert pump.basal(np.array([0.02112267499992533]))[0] == pytest.approx(0.021125, abs=1e-12)
    np.testing.assert_allclose(pump.bolus(np.array([-1.0, 100.0, 1.5])), [0.0, 30.0, 1.5])


def test_basal_bolus_controller() -> None:
    ctrl = BasalBolusController(
        basal_u_min=np.array([0.02, 0.02]), cr_g_per_u=np.array([10.0, 10.0]), cf_mg_dl_per_u=np.array([20.0, 20.0])
    )
    obs = ControllerObservation(
        time_min=3.0, cgm_mg_dl=np.array([200.0, 120.0]), meal_g=np.array([45.0, 45.0]), sample_time_min=3.0
    )
    act = ctrl.act(obs)
    # (45/10 + (200-140)/20) / 3 and 45/10/3 (no correction below 150)
    np.testing.assert_allclose(act.bolus_u_min, [7.5 / 3, 4.5 / 3])
    no_meal = ControllerObservation(
        time_min=3.0, cgm_mg_dl=np.array([300.0, 300.0]), meal_g=np.zeros(2), sample_time_min=3.0
    )
    np.testing.assert_array_equal(ctrl.act(no_meal).bolus_u_min, [0.0, 0.0])
    with pytest.raises(ValidationError, match="CR and CF"):
        BasalBolusController(basal_u_min=np.ones(1), cr_g_per_u=np.zeros(1), cf_mg_dl_per_u=np.ones(1))


def test_patients_by_name_and_group() -> None:
    assert len(all_patient_names()) == 30
    assert resolve_patient_names(["adult", "child#003"])[-1] == "child#003"
    assert len(resolve_patient_names(["all"])) == 30
    cohort = load_cohort(["adult#001", "adult#001"])
    assert cohort.size == 2
    assert cohort.basal_glucose_mg_dl[0] == pytest.approx(138.56)
    assert cohort.cr_g_per_u[0] == 10.0
    assert cohort.params["BW"][0] == pytest.approx(102.32)
    with pytest.raises(ValidationError, match="unknown virtual patient"):
        load_cohort(["adult#011"])


def test_patient_names_and_groups_are_case_insensitive_and_canonical_in_outputs() -> None:
    assert resolve_patient_names(["ADULT#001", "Child#003", " adolescent#010 "]) == (
        "adult#001",
        "child#003",
        "adolescent#010",
    )
    assert resolve_patient_names("ADULT") == resolve_patient_names("adult")
    assert len(resolve_patient_names("All")) == 30
    upper = load_cohort("ADULT#001")
    assert upper.names == ("adult#001",)
    assert upper.basal_glucose_mg_dl[0] == pytest.approx(138.56)
    with pytest.raises(ValidationError, match=r"unknown virtual patient 'ADULT#011'"):
        resolve_patient_names("ADULT#011")
    with pytest.raises(ValidationError, match="unknown CGM sensor"):
        sensor_spec("Libre")
    with pytest.raises(ValidationError, match="unknown insulin pump"):
        pump_spec("Omnipod")


def test_meal_matrix_per_member() -> None:
    m = meal_matrix(100, np.array([[[10.0, 30.0]], [[20.4, 15.0]]]), 2)
    assert m[10, 0] == 30.0
    assert m[20, 1] == 15.0
    assert m.sum() == 45.0
    with pytest.raises(ValidationError, match=">= 0"):
        meal_matrix(10, [(1.0, -5.0)], 1)
