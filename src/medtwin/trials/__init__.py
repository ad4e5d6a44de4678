"""medtwin.trials: virtual clinical trials on the glucose and dosing twins (floor 1).

Virtual populations (type 1 diabetes patients drawn from a distribution fitted to the 30 UVA/Padova subjects;
PK patients from a library model's covariates and random effects), a strict TOML trial spec
(:func:`load_spec`), in-silico arms (insulin controllers, dosing strategies), randomised, stratified or crossover
designs, run-in baselines, digital-twin prognostic scores, analysis by difference in means, ANCOVA and PROCOVA,
power and sample size by simulation and by formula, a hybrid mode for real participants, and reports. Cohorts and
replicated trials run on any :class:`medtwin.sim.runners.Runner` (in process, or Dask). See docs/trials.md.
"""

from medtwin.trials.analysis import (
    Estimate,
    analytic_power,
    analytic_sample_size,
    ancova,
    ancova_variance,
    difference_in_means,
    paired_difference,
)
from medtwin.trials.hybrid import HybridResult, hybrid_analysis, read_outcomes, read_run_in
from medtwin.trials.power import PowerCurve, PowerStudy, power_study, simulated_power
from medtwin.trials.prognostic import BaselineData, MatchedTwin, PrognosticModel
from medtwin.trials.protocol import TrialSpec
from medtwin.trials.report import write_power_report, write_trial_report
from medtwin.trials.spec import example_specs, load_spec, parse_spec
from medtwin.trials.specfile import SpecError
from medtwin.trials.trial import Comparison, TrialData, analyse, simulate_trial
from medtwin.trials.virtual_patients import fit_glucose_population, sample_glucose_patients

__all__ = [
    "BaselineData",
    "Comparison",
    "Estimate",
    "HybridResult",
    "MatchedTwin",
    "PowerCurve",
    "PowerStudy",
    "PrognosticModel",
    "SpecError",
    "TrialData",
    "TrialSpec",
    "analyse",
    "analytic_power",
    "analytic_sample_size",
    "ancova",
    "ancova_variance",
    "difference_in_means",
    "example_specs",
    "fit_glucose_population",
    "hybrid_analysis",
    "load_spec",
    "paired_difference",
    "parse_spec",
    "power_study",
    "read_outcomes",
    "read_run_in",
    "sample_glucose_patients",
    "simulate_trial",
    "simulated_power",
    "write_power_report",
    "write_trial_report",
]
