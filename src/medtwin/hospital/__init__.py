"""Hospital operations twin: patient-flow simulation, calibration from admissions, forecasts, what-if.

A discrete-event model of an ED and inpatient units (:mod:`~medtwin.hospital.simulation`),
calibrated from encounters or ADT events (:mod:`~medtwin.hospital.calibration`), run in replications
sequentially or on Dask (:mod:`~medtwin.hospital.replications`) for occupancy forecasts
(:mod:`~medtwin.hospital.forecast`) and what-if comparisons on common random numbers
(:mod:`~medtwin.hospital.whatif`). The model is described in docs/models/hospital.md.
"""

from medtwin.hospital.calibration import CalibrationError, CalibrationResult, calibrate
from medtwin.hospital.config import (
    ArrivalProfile,
    Costs,
    EDConfig,
    ElectiveSlot,
    HospitalConfig,
    HospitalConfigError,
    Staffing,
    UnitConfig,
)
from medtwin.hospital.distributions import DistributionFit, Duration, DurationError, fit_duration
from medtwin.hospital.example import example_arrival_profile, example_hospital
from medtwin.hospital.forecast import (
    ForecastError,
    OccupancyForecast,
    forecast_occupancy,
    hour_of_week,
)
from medtwin.hospital.history import (
    AdmissionHistory,
    HistoryError,
    UnitStay,
    census_from_model,
    encounters_from_history,
    history_from_encounters,
    read_adt_csv,
    synthetic_history,
    write_adt_csv,
)
from medtwin.hospital.queueing import erlang_c, mmc_mean_wait
from medtwin.hospital.replications import DaskRunner, SequentialRunner, run_replications
from medtwin.hospital.report import stress_des_report
from medtwin.hospital.simulation import CensusEntry, ReplicationResult, SimulationError, simulate
from medtwin.hospital.whatif import (
    Comparison,
    Scenario,
    ScenarioError,
    compare_scenarios,
    replication_kpis,
)

__all__ = [
    "AdmissionHistory",
    "ArrivalProfile",
    "CalibrationError",
    "CalibrationResult",
    "CensusEntry",
    "Comparison",
    "Costs",
    "DaskRunner",
    "DistributionFit",
    "Duration",
    "DurationError",
    "EDConfig",
    "ElectiveSlot",
    "ForecastError",
    "HistoryError",
    "HospitalConfig",
    "HospitalConfigError",
    "OccupancyForecast",
    "ReplicationResult",
    "Scenario",
    "ScenarioError",
    "SequentialRunner",
    "SimulationError",
    "Staffing",
    "UnitConfig",
    "UnitStay",
    "calibrate",
    "census_from_model",
    "compare_scenarios",
    "encounters_from_history",
    "erlang_c",
    "example_arrival_profile",
    "example_hospital",
    "fit_duration",
    "forecast_occupancy",
    "history_from_encounters",
    "hour_of_week",
    "mmc_mean_wait",
    "read_adt_csv",
    "replication_kpis",
    "run_replications",
    "simulate",
    "stress_des_report",
    "synthetic_history",
    "write_adt_csv",
]
