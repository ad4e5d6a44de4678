"""LWBS survives the records path: Encounter.disposition carries it through the store into calibration."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from medtwin import codes
from medtwin.hospital import (
    calibrate,
    encounters_from_history,
    example_hospital,
    history_from_encounters,
    synthetic_history,
)
from medtwin.store import Store

START = datetime(2026, 1, 5, tzinfo=UTC)


def test_lwbs_from_stored_encounters_matches_the_adt_history(tmp_path: Path) -> None:
    cfg = example_hospital()
    assert cfg.ed.patience is not None  # the example's ED has patience, so some patients leave unseen
    history = synthetic_history(cfg, start=START, weeks=4, seed=3)
    lwbs_ids = {s.encounter_id for s in history.stays if s.lwbs}
    assert lwbs_ids, "the synthetic history should contain LWBS patients"

    encounters = encounters_from_history(history)
    assert {e.encounter_id for e in encounters if e.disposition == codes.DISCHARGE_LWBS} == lwbs_ids
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    try:
        store.write(encounters)
        stored = store.encounters()
    finally:
        store.close()

    back = history_from_encounters(stored)
    assert {s.encounter_id for s in back.stays if s.lwbs} == lwbs_ids
    expected = calibrate(history, base=cfg).lwbs_fraction
    assert expected > 0
    assert calibrate(back, base=cfg).lwbs_fraction == pytest.approx(expected)
    # without the disposition the same stays count as seen and sent home (the former behaviour)
    unmarked = [replace(e, disposition=None) for e in stored]
    assert calibrate(history_from_encounters(unmarked), base=cfg).lwbs_fraction == 0.0
