"""Risk prediction (floor 1): published risk equations over a cohort, explained per factor, and the toolkit to
validate them on a local population (discrimination, calibration, fairness, recalibration).

Numbers in, numbers out: every equation takes a mapping of column -> array (one value per person) and returns
arrays, refusing or flagging, with a named reason, anyone outside its validity range; ``read_cohort`` reads a
Parquet or CSV cohort into such columns without per-row conversions. See docs/models/ for each equation's source,
conventions and checks.
"""

from medtwin.risk.cohort import read_cohort
from medtwin.risk.core import Problem, RiskResult
from medtwin.risk.equations import EQUATIONS, Equation, cohort_table, compute_all
from medtwin.risk.explain import Explanation, ExplanationLine, WhatIf, bp_at_target, explain, statin, stop_smoking
from medtwin.risk.pce import pooled_cohort
from medtwin.risk.points import ScoreResult, cha2ds2_vasc, findrisc, has_bled
from medtwin.risk.prevent import prevent
from medtwin.risk.qrisk3 import qrisk3

__all__ = [
    "EQUATIONS",
    "Equation",
    "Explanation",
    "ExplanationLine",
    "Problem",
    "RiskResult",
    "ScoreResult",
    "WhatIf",
    "bp_at_target",
    "cha2ds2_vasc",
    "cohort_table",
    "compute_all",
    "explain",
    "findrisc",
    "has_bled",
    "pooled_cohort",
    "prevent",
    "qrisk3",
    "read_cohort",
    "statin",
    "stop_smoking",
]
