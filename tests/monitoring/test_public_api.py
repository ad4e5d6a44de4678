"""The public names of the monitoring, twin and HL7 v2 packages are exactly the intended ones."""

from __future__ import annotations

import medtwin.interop.hl7v2 as hl7v2
import medtwin.interop.mllp as mllp
import medtwin.monitoring as monitoring
import medtwin.twin as twin


def test_monitoring_public_api() -> None:
    assert set(monitoring.__all__) == {
        "DEFAULT_FRESHNESS", "SEVERITY_RANK", "AlertRules", "AlertSignal", "AlertTracker", "LatestVitals",
        "MewsResult", "News2Result", "QsofaResult", "ResponseLevel", "TrendHistory", "VitalSigns",
        "evaluate_rules", "mews_score", "news2_observation", "news2_score", "qsofa_score", "response_level",
    }  # fmt: skip


def test_twin_public_api() -> None:
    assert set(twin.__all__) == {
        "LogFollower",
        "News2Forecast",
        "PatientTwin",
        "RuntimeProcess",
        "RuntimeStore",
        "TwinRuntime",
        "VitalsComponent",
        "WorkerStats",
        "follow",
    }


def test_hl7v2_and_mllp_public_api() -> None:
    assert {"parse_payload", "parse_message", "map_message", "build_ack", "build_oru_r01", "Hl7Error"} <= set(
        hl7v2.__all__
    )
    assert {"MllpServer", "MllpClient", "MllpConfig", "MllpFramer", "MemorySink", "frame"} <= set(mllp.__all__)
    for module in (hl7v2, mllp, monitoring, twin):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
