"""Twins (floor 2): PatientTwin with its components, and the TwinRuntime that keeps twins in sync with the store."""

from __future__ import annotations

from medtwin.twin.patient import News2Forecast, PatientTwin, VitalsComponent
from medtwin.twin.runtime import RuntimeStore, TwinRuntime
from medtwin.twin.worker import LogFollower, RuntimeProcess, WorkerStats, follow

__all__ = [
    "LogFollower",
    "News2Forecast",
    "PatientTwin",
    "RuntimeProcess",
    "RuntimeStore",
    "TwinRuntime",
    "VitalsComponent",
    "WorkerStats",
    "follow",
]
