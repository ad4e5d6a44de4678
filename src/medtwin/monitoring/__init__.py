"""Patient monitoring (floor 1): early-warning scores (NEWS2, qSOFA, MEWS), vitals windows, alert rules."""

from __future__ import annotations

from medtwin.monitoring.alerts import SEVERITY_RANK, AlertRules, AlertSignal, AlertTracker, TrendHistory, evaluate_rules
from medtwin.monitoring.mews import MewsResult, mews_score
from medtwin.monitoring.news2 import News2Result, ResponseLevel, news2_score, response_level
from medtwin.monitoring.qsofa import QsofaResult, qsofa_score
from medtwin.monitoring.vitals import DEFAULT_FRESHNESS, LatestVitals, VitalSigns, news2_observation

__all__ = [
    "DEFAULT_FRESHNESS",
    "SEVERITY_RANK",
    "AlertRules",
    "AlertSignal",
    "AlertTracker",
    "LatestVitals",
    "MewsResult",
    "News2Result",
    "QsofaResult",
    "ResponseLevel",
    "TrendHistory",
    "VitalSigns",
    "evaluate_rules",
    "mews_score",
    "news2_observation",
    "news2_score",
    "qsofa_score",
    "response_level",
]
