"""The public API of medtwin.hospital is exactly what is intended; modules follow house rules."""

from __future__ import annotations

import importlib
import pkgutil

import medtwin.hospital

EXPECTED = {
    "AdmissionHistory", "ArrivalProfile", "CalibrationError", "CalibrationResult", "CensusEntry",
    "Comparison", "Costs", "DaskRunner", "DistributionFit", "Duration", "DurationError", "EDConfig",
    "ElectiveSlot", "ForecastError", "HistoryError", "HospitalConfig", "HospitalConfigError",
    "OccupancyForecast", "ReplicationResult", "Scenario", "ScenarioError", "SequentialRunner",
    "SimulationError", "Staffing", "UnitConfig", "UnitStay", "calibrate", "census_from_model",
    "compare_scenarios", "encounters_from_history", "erlang_c", "example_arrival_profile",
    "example_hospital", "fit_duration", "forecast_occupancy", "history_from_encounters",
    "hour_of_week", "mmc_mean_wait", "read_adt_csv", "replication_kpis", "run_replications",
    "simulate", "stress_des_report", "synthetic_history", "write_adt_csv",
}  # fmt: skip


def test_public_names_are_pinned() -> None:
    assert set(medtwin.hospital.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(medtwin.hospital, name), name


def test_every_module_has_docstring_and_all_and_respects_floors() -> None:
    forbidden = ("medtwin.twin", "medtwin.interop", "medtwin.store", "medtwin.cli", "medtwin.server")
    for info in pkgutil.iter_modules(medtwin.hospital.__path__, "medtwin.hospital."):
        module = importlib.import_module(info.name)
        assert module.__doc__, info.name
        assert hasattr(module, "__all__"), info.name
        with open(module.__file__ or "", encoding="utf-8") as handle:
            source = handle.read()
        for higher in forbidden:
            assert f"from {higher}" not in source, (info.name, higher)
            assert f"import {higher}" not in source, (info.name, higher)


def test_errors_are_validation_errors() -> None:
    from medtwin.errors import ValidationError

    for name in medtwin.hospital.__all__:
        obj = getattr(medtwin.hospital, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, ValidationError), name
