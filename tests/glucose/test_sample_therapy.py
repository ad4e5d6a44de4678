"""The sample therapy records shipped for `medtwin glucose twin` (src/medtwin/data/therapy) are what their script
writes, and read back as the documented CSV."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

from medtwin.glucose.therapy_data import read_therapy_csv

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "src" / "medtwin" / "data" / "therapy"
SCRIPT = ROOT / "tests" / "fixtures" / "therapy" / "make_sample_therapy.py"


@pytest.mark.parametrize("name", ["insilico_adult003_days.csv", "insilico_adult003_new_readings.csv"])
def test_the_shipped_sample_is_what_the_script_writes(tmp_path: Path, name: str) -> None:
    runpy.run_path(str(SCRIPT))["write_samples"](tmp_path)
    shipped = read_therapy_csv(SAMPLES / name)
    made = read_therapy_csv(tmp_path / name)
    assert shipped.start == made.start
    for field in ("cgm_t_min", "cgm_mg_dl", "bolus_t_min", "bolus_u", "basal_t_min", "basal_u_h", "carbs_t_min",
                  "carbs_g"):  # fmt: skip
        np.testing.assert_allclose(getattr(shipped, field), getattr(made, field), atol=0.051, err_msg=field)


def test_the_sample_holds_two_days_then_three_hours() -> None:
    days = read_therapy_csv(SAMPLES / "insilico_adult003_days.csv", body_weight_kg=81.6)
    new = read_therapy_csv(SAMPLES / "insilico_adult003_new_readings.csv", basal_u_h=float(days.basal_u_h[-1]))
    assert days.duration_min == 2880.0
    assert days.carbs_g.size == 6
    assert days.bolus_u.size >= 6
    assert not days.skipped
    assert 170.0 <= new.duration_min <= 180.0
    assert new.start > days.end
