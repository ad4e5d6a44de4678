"""The threaded and the serial builds of each glucose kernel are separate functions with separate cache entries.

numba's on-disk cache (``cache=True``) names a function's entries after its qualified name and source line and keys
them by signature only, not by the ``parallel`` option: two builds of one Python function (``njit(parallel=True)(f)``
and ``njit(f)``) share one index, and a fresh process loads whichever build was compiled first for both. That made
small batches run the threaded build (or cohorts the serial one) depending on which ran first after an edit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medtwin.glucose import _kernels, _twin_kernels

PAIRS = (
    (_kernels._run_period_parallel, _kernels._run_period_serial),
    (_kernels._bb_parallel, _kernels._bb_serial),
    (_twin_kernels._run_inputs_parallel, _twin_kernels._run_inputs_serial),
)


@pytest.mark.parametrize(("threaded", "serial"), PAIRS, ids=["run_period", "bb_closed_loop", "run_inputs"])
def test_threaded_and_serial_builds_have_their_own_cache_index(threaded: object, serial: object) -> None:
    assert threaded.targetoptions.get("parallel")  # type: ignore[attr-defined]
    assert not serial.targetoptions.get("parallel")  # type: ignore[attr-defined]
    assert threaded.py_func is not serial.py_func  # type: ignore[attr-defined]
    index = [d._cache._cache_file._index_name for d in (threaded, serial)]  # type: ignore[attr-defined]
    assert index[0] != index[1], index


_SCRIPT = textwrap.dedent(
    """
    import json, numpy as np
    from medtwin.glucose import _kernels as k
    from medtwin.glucose.patients import load_cohort
    from medtwin.glucose.simulation import PatientBatch
    batch = PatientBatch(load_cohort(["adult#001", "child#002"]))
    def run(kernel):
        x, ms = batch.x.copy(), batch.meal_state.copy()
        meals = np.zeros((30, 2)); meals[3] = 40.0
        bg, eaten = np.empty((30, 2)), np.empty((30, 2))
        kernel(x, batch._p_matrix, ms, meals, np.full(2, 0.02), 1, bg, eaten)
        return bg
    a = run(k._run_period_serial)
    b = run(k._run_period_parallel)
    print(json.dumps({"serial_hits": sum(k._run_period_serial.stats.cache_hits.values()),
                      "threaded_hits": sum(k._run_period_parallel.stats.cache_hits.values()),
                      "same": bool(np.array_equal(a, b))}))
    """
)


@pytest.mark.slow
def test_a_fresh_cache_compiles_each_build_of_its_own(tmp_path: Path) -> None:
    """In an empty cache, compiling the serial build first must not hand its code to the threaded build."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"serial_hits": 0, "threaded_hits": 0, "same": True}
