"""Benchmark: medtwin's UVA/Padova cohort engine against simglucose 0.2.11 on the identical scenario.

Scenario (issue 3): meals 07:00 45 g, 12:00 70 g, 18:00 80 g; basal-bolus controller; Dexcom sensor; Insulet
pump; 1 day. simglucose runs in its own virtual environment (bench/.venvs/simglucose, created here, never a
project dependency). Prints patient-days per second for each, the ratio, RHS-evaluation counts, the
single-patient-day time, the 1,000-patient cohort-day and the peak memory of 100,000 summary-only patient-days.

    .venv/bin/python bench/glucose_vs_simglucose.py            # full run
    .venv/bin/python bench/glucose_vs_simglucose.py --quick    # peer runs 6 simulated hours; 10,000 summary days
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from medtwin.glucose import all_patient_names, run_scenario, run_summary

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE / ".venvs" / "simglucose"
README_FIGURE_S = 12.0  # /work/shared/data/uvapadova/README.md: ~12 s per patient-day on this kind of machine

PEER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, warnings, io, contextlib
    warnings.filterwarnings("ignore")
    from datetime import datetime, timedelta
    from simglucose.simulation.env import T1DSimEnv
    from simglucose.controller.basal_bolus_ctrller import BBController
    from simglucose.sensor.cgm import CGMSensor
    from simglucose.actuator.pump import InsulinPump
    from simglucose.patient.t1dpatient import T1DPatient
    from simglucose.simulation.scenario import CustomScenario
    from simglucose.simulation.sim_engine import SimObj
    hours = float(sys.argv[1])
    calls = [0]
    original = T1DPatient.model
    def counted(*args):
        calls[0] += 1
        return original(*args)
    T1DPatient.model = staticmethod(counted)
    start = datetime(2018, 1, 1)
    scenario = CustomScenario(start_time=start, scenario=[(7, 45), (12, 70), (18, 80)])
    env = T1DSimEnv(T1DPatient.withName("adult#001"), CGMSensor.withName("Dexcom", seed=1),
                    InsulinPump.withName("Insulet"), scenario)
    env.reset()
    sim = SimObj(env, BBController(), timedelta(hours=hours), animate=False, path="/tmp/simglucose-bench")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        sim.simulate()
    elapsed = time.perf_counter() - t0
    bg = [float(v) for v in sim.results().BG.to_numpy()]
    print(json.dumps({"seconds": elapsed, "hours": hours, "rhs_evaluations": calls[0], "bg": bg}))
    """
)


def ensure_peer() -> tuple[Path | None, str]:
    """Create the simglucose venv if needed; return its python (or None) and a note."""
    python = PEER_VENV / "bin" / "python"
    if python.exists():
        return python, "existing venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True, timeout=300)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", "simglucose==0.2.11"], check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not install simglucose 0.2.11 ({exc})"
    return python, "venv created"


def run_peer(hours: float) -> dict[str, object] | None:
    python, note = ensure_peer()
    print(f"simglucose venv: {note}")
    if python is None:
        return None
    proc = subprocess.run(
        [str(python), "-c", PEER_SCRIPT, str(hours)], capture_output=True, text=True, timeout=3600, check=False
    )
    if proc.returncode != 0:
        print("simglucose run failed:\n" + proc.stderr[-2000:])
        return None
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run: peer 6 h, 10,000 summary patient-days")
    parser.add_argument("--skip-peer", action="store_true", help="do not run simglucose (use the README figure)")
    parser.add_argument("--members", type=int, default=1000, help="cohort size for the cohort-day (default 1000)")
    args = parser.parse_args()
    summary_days = 10_000 if args.quick else 100_000
    peer_hours = 6.0 if args.quick else 24.0

    print(f"machine: {cpu_model()}, 2-core shared VM, Python {platform.python_version()}")

    # --- peer -------------------------------------------------------------------------------------
    peer = None if args.skip_peer else run_peer(peer_hours)
    if peer is not None:
        peer_s_per_day = float(peer["seconds"]) * 24.0 / float(peer["hours"])  # type: ignore[arg-type]
        peer_rhs_per_day = int(peer["rhs_evaluations"]) * 24.0 / float(peer["hours"])  # type: ignore[call-overload,arg-type]
        peer_label = f"measured ({peer_hours:g} h simulated, scaled to a day)"
    else:
        peer_s_per_day, peer_rhs_per_day = README_FIGURE_S, 26_748.0
        peer_label = "NOT MEASURED: figure from the data README (12 s/patient-day, 26,748 RHS)"

    # --- medtwin ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    run_scenario(["adult#001"])  # compiles (or loads the cached) kernels
    warm = time.perf_counter() - t0
    single = []
    for _ in range(20):
        t0 = time.perf_counter()
        result = run_scenario(["adult#001"])
        single.append(time.perf_counter() - t0)
    single_s = statistics.median(single)
    if peer is not None:
        bg_peer = np.asarray(peer["bg"])
        bg_ours = result.sampled()["bg_mg_dl"][: bg_peer.size, 0]
        agreement = f"max |BG medtwin - BG simglucose| = {np.max(np.abs(bg_ours - bg_peer)):.4f} mg/dL"
    else:
        agreement = "peer not run"

    names = all_patient_names()
    cohort_names = [names[i % len(names)] for i in range(args.members)]
    cohort = []
    for rep in range(3):
        t0 = time.perf_counter()
        big = run_scenario(cohort_names, randomize_meals=True, seed=rep + 1)
        cohort.append(time.perf_counter() - t0)
    cohort_s = min(cohort)
    per_day_ms = cohort_s / args.members * 1e3
    rhs = big.rhs_evaluations

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    summary = run_summary(["all"], n_members=summary_days, chunk_size=2000, seed=11)
    summary_s = time.perf_counter() - t0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    medtwin_pd_per_s = args.members / cohort_s
    peer_pd_per_s = 1.0 / peer_s_per_day
    ratio = medtwin_pd_per_s / peer_pd_per_s

    # arithmetic-limit estimate: flop-equivalents of one RHS of the compiled kernel (see docs/models/uva_padova.md)
    flops_per_rhs = 80 + 36 + 2 * 20 + 4 * 10  # mul/add + RK4 combination share + 2 tanh + 4 divisions
    ghz = 2.5
    limit_ms = rhs * flops_per_rhs / (2 * ghz * 1e9 * 2) * 1e3  # 2 flop/cycle/core, 2 cores

    print()
    print(f"simglucose 0.2.11 [{peer_label}]")
    print(f"  seconds per patient-day      {peer_s_per_day:10.2f}")
    print(f"  patient-days per second      {peer_pd_per_s:10.4f}")
    print(f"  RHS evaluations / pt-day     {peer_rhs_per_day:10.0f}")
    print("medtwin (compiled RK4, 1-min steps, cohort in one call)")
    print(f"  first call (compile/load)    {warm:10.2f} s")
    print(f"  one patient-day (median/20)  {single_s * 1e3:10.2f} ms   (goal < 20 ms)")
    print(f"  {args.members}-patient cohort-day      {cohort_s:10.3f} s    ({per_day_ms:.3f} ms per patient-day)")
    print(f"  patient-days per second      {medtwin_pd_per_s:10.1f}")
    print(f"  RHS evaluations / pt-day     {rhs:10d}   (4 per RK4 step x 1,440 steps)")
    print(
        f"  {summary_days:,} summary patient-days  {summary_s:8.1f} s, peak RSS {rss_peak:.0f} MiB "
        f"(process before: {rss_before:.0f} MiB; goal < 4096 MiB); members={summary['mean_mg_dl'].size}"
    )
    print(
        f"  arithmetic-limit estimate    {limit_ms:10.3f} ms per patient-day "
        f"(~{flops_per_rhs} flop-eq/RHS at 2 flop/cycle, {ghz} GHz, 2 cores); "
        f"measured/limit = {per_day_ms / limit_ms:.1f}x"
    )
    print(f"  agreement                    {agreement}")
    print()
    print(f"RATIO medtwin / simglucose throughput (patient-days per second): {ratio:,.0f}x   (goal >= 10,000x)")


if __name__ == "__main__":
    main()
