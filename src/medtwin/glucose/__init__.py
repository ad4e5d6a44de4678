"""medtwin.glucose: the UVA/Padova 2008 type 1 diabetes twin (floor 1).

The 13-state model as simglucose 0.2.11 implements it, its 30 virtual patients, CGM sensor and insulin pump
models, batched controllers, open- and closed-loop simulation of whole cohorts, consensus CGM metrics, plots
and Gymnasium environments. The solvers the simulations take are exported here too: ``DormandPrince`` (the
accurate reference) and ``RK4`` (the default, compiled). See docs/models/uva_padova.md and
docs/models/cgm_metrics.md.

A person's twin (docs/models/glucose_twin.md): their CGM, insulin and meal records (:class:`TherapyData`), the
Bayesian identification of their model (:func:`fit` -> :class:`Posterior`), replays under other therapies,
forecasts with low-glucose alerts (:class:`GlucoseForecaster`) and bolus advice, together in
:class:`PersonalGlucoseTwin`.
"""

from medtwin.glucose.advise import BolusAdvice, advise_meal_bolus, calculator_bolus, insulin_on_board
from medtwin.glucose.controllers import (
    BasalBolusController,
    BasalOnlyController,
    Controller,
    ControllerAction,
    ControllerObservation,
)
from medtwin.glucose.devices import CGMSensor, InsulinPump, PumpSpec, SensorSpec, pump_spec, sensor_spec
from medtwin.glucose.forecast import Forecast, GlucoseForecaster
from medtwin.glucose.identify import ConvergenceError, FitSettings, Posterior, fit, update
from medtwin.glucose.metrics import CgmMetrics, cgm_metrics, count_episodes, risk_components, summary_metrics_batch
from medtwin.glucose.patients import Cohort, all_patient_names, load_cohort, resolve_patient_names
from medtwin.glucose.personal_twin import BolusSettings, PersonalGlucoseTwin
from medtwin.glucose.replay import ReplayResult, replay
from medtwin.glucose.scenarios import daily_meals, make_controller, member_sensor_seeds, run_scenario, run_summary
from medtwin.glucose.simulation import (
    ClosedLoopResult,
    OpenLoopResult,
    PatientBatch,
    meal_matrix,
    simulate_closed_loop,
    simulate_open_loop,
)
from medtwin.glucose.therapy import Therapy
from medtwin.glucose.therapy_data import TherapyData, read_nightscout, read_therapy_csv
from medtwin.glucose.twin_model import PopulationPrior, population_prior
from medtwin.glucose.uva_padova import UvaPadova2008
from medtwin.sim.solvers import RK4, DormandPrince  # the solvers simulate_* take: the accurate one and the default

__all__ = [
    "RK4",
    "BasalBolusController",
    "BasalOnlyController",
    "BolusAdvice",
    "BolusSettings",
    "CGMSensor",
    "CgmMetrics",
    "ClosedLoopResult",
    "Cohort",
    "Controller",
    "ControllerAction",
    "ControllerObservation",
    "ConvergenceError",
    "DormandPrince",
    "FitSettings",
    "Forecast",
    "GlucoseForecaster",
    "InsulinPump",
    "OpenLoopResult",
    "PatientBatch",
    "PersonalGlucoseTwin",
    "PopulationPrior",
    "Posterior",
    "PumpSpec",
    "ReplayResult",
    "SensorSpec",
    "Therapy",
    "TherapyData",
    "UvaPadova2008",
    "advise_meal_bolus",
    "all_patient_names",
    "calculator_bolus",
    "cgm_metrics",
    "count_episodes",
    "daily_meals",
    "fit",
    "insulin_on_board",
    "load_cohort",
    "make_controller",
    "meal_matrix",
    "member_sensor_seeds",
    "population_prior",
    "pump_spec",
    "read_nightscout",
    "read_therapy_csv",
    "replay",
    "resolve_patient_names",
    "risk_components",
    "run_scenario",
    "run_summary",
    "sensor_spec",
    "simulate_closed_loop",
    "simulate_open_loop",
    "summary_metrics_batch",
    "update",
]
