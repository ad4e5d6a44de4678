"""medtwin.service: the heap settings of medtwin's own service processes (checked in a child process, because a
frozen object is never collected and the thresholds are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

from medtwin.service import SERVICE_GC_THRESHOLDS

CHILD = """
import gc, json
from medtwin.service import prepare_service_heap
before = {"thresholds": gc.get_threshold(), "frozen": gc.get_freeze_count()}
class Node:
    pass
startup = Node(); startup.self = startup  # a start-up object in a reference cycle
prepare_service_heap()
frozen = gc.get_freeze_count()
gc.collect()
after = {"thresholds": gc.get_threshold(), "frozen": frozen, "still_frozen": gc.get_freeze_count(),
         "startup_tracked_but_unscanned": gc.is_tracked(startup) and not any(startup is o for o in gc.get_objects())}
print(json.dumps({"before": before, "after": after}))
"""


def test_prepare_service_heap_freezes_start_up_objects_and_sets_the_thresholds() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout)
    assert report["before"]["frozen"] == 0
    assert tuple(report["before"]["thresholds"]) != SERVICE_GC_THRESHOLDS
    assert tuple(report["after"]["thresholds"]) == SERVICE_GC_THRESHOLDS
    # everything alive at set-up (modules, the test's own objects) left the collector's generations ...
    assert report["after"]["frozen"] > 1000
    assert report["after"]["still_frozen"] == report["after"]["frozen"]  # ... and a later collection keeps it so
    assert report["after"]["startup_tracked_but_unscanned"]
