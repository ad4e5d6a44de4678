"""medtwin.dosing: the precision-dosing twin (floor 1: numbers, arrays and records only).

Population PK models from model files (:func:`load_model`, library in ``models/*.toml``), exact
predictions (:func:`predict_concentrations`, :func:`predict_auc`), Bayesian personalization
(:func:`map_estimate`, :func:`sir_sample`; whole cohorts at once: :func:`map_estimate_cohort`),
regimen optimization (:func:`dose_for_target` and friends) and the case report
(:func:`load_case`, :func:`analyze_case`, :func:`to_records`).  Units: mg, h, L, mg/L, mg.h/L.
"""

from medtwin.dosing.case import (
    CaseError,
    Constraint,
    PatientCase,
    RegimenOptions,
    TargetSpec,
    load_case,
    parse_case,
    parse_target,
)
from medtwin.dosing.covariates import (
    CovariateSeries,
    adjusted_body_weight_kg,
    bsa_dubois_m2,
    bsa_mosteller_m2,
    cockcroft_gault_ml_min,
    creatinine_mg_dl,
    ideal_body_weight_kg,
)
from medtwin.dosing.estimation import (
    Level,
    MapResult,
    SirResult,
    laplace_covariance,
    map_estimate,
    objective,
    sir_sample,
)
from medtwin.dosing.export import to_records
from medtwin.dosing.model import CovariateSpec, ErrorModel, ModelError, PKModel, PKSystem
from medtwin.dosing.modelfile import library_models, load_model
from medtwin.dosing.optimize import (
    Target,
    dose_for_target,
    interval_for_concentration,
    maintenance_doses,
    round_dose,
    steady_state_metrics,
    time_to_threshold,
)
from medtwin.dosing.population import CohortData, CohortMapResult, map_estimate_cohort
from medtwin.dosing.regimen import Dose, DoseError, predict_auc, predict_concentrations
from medtwin.dosing.report import DosingReport, Proposal, analyze_case

__all__ = [
    "CaseError",
    "CohortData",
    "CohortMapResult",
    "Constraint",
    "CovariateSeries",
    "CovariateSpec",
    "Dose",
    "DoseError",
    "DosingReport",
    "ErrorModel",
    "Level",
    "MapResult",
    "ModelError",
    "PKModel",
    "PKSystem",
    "PatientCase",
    "Proposal",
    "RegimenOptions",
    "SirResult",
    "Target",
    "TargetSpec",
    "adjusted_body_weight_kg",
    "analyze_case",
    "bsa_dubois_m2",
    "bsa_mosteller_m2",
    "cockcroft_gault_ml_min",
    "creatinine_mg_dl",
    "dose_for_target",
    "ideal_body_weight_kg",
    "interval_for_concentration",
    "laplace_covariance",
    "library_models",
    "load_case",
    "load_model",
    "maintenance_doses",
    "map_estimate",
    "map_estimate_cohort",
    "objective",
    "parse_case",
    "parse_target",
    "predict_auc",
    "predict_concentrations",
    "round_dose",
    "sir_sample",
    "steady_state_metrics",
    "time_to_threshold",
    "to_records",
]
