"""Benchmark: virtual trials at scale, side by side with simglucose's own batch runner.

A. A 10,000-patient x 14-day two-arm glucose trial (a crossover: every patient takes both arms, 280,000
   patient-days): patients sampled from the fitted population (therapy titrated), randomised meals, Dexcom noise,
   basal-bolus target 140 vs 120 mg/dL. Goal <= 5 min on 2 cores, summaries only kept (peak RSS printed).
B. simglucose 0.2.11's ``batch_sim`` (its own parallel batch runner, pathos on every core) on a sample of the
   same patient-days: the first day of the first patients in both arms, with their sampled parameters, meals,
   CGM seeds and CR/CF; the same patient-days are re-run by medtwin and their mean BG compared. Prints the
   throughput ratio. simglucose lives in bench/.venvs/simglucose (created by bench/glucose_vs_simglucose.py or
   here), never a project dependency.
C. Power: 1,000 replicated trials at each of 40-200 patients (the 200-patient curve point included) drawn from a
   simulated pool of 2,000 patients (run-in, both arms, twins), with the formulas. Goal <= 10 min.

    .venv/bin/python bench/trials.py                 # full run
    .venv/bin/python bench/trials.py --quick         # 1,000 patients, 400-patient pool, 4 peer patient-days
    .venv/bin/python bench/trials.py --workers 2     # the trial on a local Dask cluster of 2 workers
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medtwin.glucose import CGMSensor, InsulinPump, meal_matrix, pump_spec, sensor_spec, simulate_closed_loop
from medtwin.sim.runners import DaskRunner, Runner, SequentialRunner
from medtwin.trials import analyse, load_spec, parse_spec, power_study, simulate_trial
from medtwin.trials.glucose_arms import arm_controller, patient_meals
from medtwin.trials.protocol import GlucoseArm, GlucoseScenario
from medtwin.trials.virtual_patients import TITRATION_FACTORS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from glucose_vs_simglucose import cpu_model, ensure_peer  # noqa: E402

TRIAL = {
    "trial": {"name": "bench-10k", "kind": "glucose", "design": "crossover", "seed": 31},
    "population": {"source": "fitted", "size": 10_000, "groups": {"adult": 1, "adolescent": 1, "child": 1}},
    "scenario": {"days": 14, "randomise_meals": True},
    "arms": [
        {"name": "target-140", "control": True, "controller": "basal-bolus"},
        {"name": "target-120", "controller": "basal-bolus", "target_mg_dl": 120},
    ],
    "endpoints": {"primary": "tir_pct", "secondary": ["tbr70_pct", "tbr54_pct", "gmi_pct", "lbgi"]},
    "execution": {"chunk_size": 250},
}

PEER_SCRIPT = textwrap.dedent(
    """
    import io, json, sys, time, contextlib, warnings
    warnings.filterwarnings("ignore")
    from datetime import datetime, timedelta
    import pandas as pd
    from simglucose.simulation.env import T1DSimEnv
    from simglucose.controller.basal_bolus_ctrller import BBController
    from simglucose.controller.base import Action
    from simglucose.sensor.cgm import CGMSensor
    from simglucose.actuator.pump import InsulinPump
    from simglucose.patient.t1dpatient import T1DPatient
    from simglucose.simulation.scenario import CustomScenario
    from simglucose.simulation.sim_engine import SimObj, batch_sim

    class GivenBB(BBController):
        # simglucose's own basal-bolus rule, with the sampled patient's CR, CF and basal (not in its Quest table)
        def __init__(self, target, cr, cf, basal):
            super().__init__(target=target)
            self.cr, self.cf, self.basal = cr, cf, basal
        def _bb_policy(self, name, meal, glucose, env_sample_time):
            bolus = 0.0
            if meal > 0:
                bolus = meal * env_sample_time / self.cr + (glucose > 150) * (glucose - self.target) / self.cf
            return Action(basal=self.basal, bolus=bolus / env_sample_time)

    days = json.load(sys.stdin)
    start = datetime(2018, 1, 1)
    sims = []
    for d in days:
        params = pd.Series(d["params"])
        patient = T1DPatient(params, init_state=d["x0"])
        meals = [(start + timedelta(minutes=m), g) for m, g in d["meals"]]
        env = T1DSimEnv(patient, CGMSensor.withName("Dexcom", seed=d["sensor_seed"]),
                        InsulinPump.withName("Insulet"), CustomScenario(start_time=start, scenario=meals))
        ctrl = GivenBB(d["target"], d["cr"], d["cf"], d["basal"])
        sims.append(SimObj(env, ctrl, timedelta(days=1), animate=False, path="/tmp/simglucose-trials-bench"))
    import simglucose.simulation.sim_engine as engine
    untimed = engine.sim
    def timed(sim_object):  # each worker reports the CPU its simulation used (pool workers are not our children)
        import time
        c0 = time.process_time()
        result = untimed(sim_object)
        return result, time.process_time() - c0
    engine.sim = timed
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        timed_results = batch_sim(sims, parallel=True)
    elapsed = time.perf_counter() - t0
    results = [r for r, _ in timed_results]
    cpu_s = sum(c for _, c in timed_results)
    print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu_s,
                      "mean_bg": [float(r.BG.iloc[1:].mean()) for r in results]}))
    """
)


def rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds(runner: Runner) -> float:
    """CPU seconds used so far by whoever simulates: this process (all its threads) or the Dask workers."""
    if isinstance(runner, DaskRunner):
        return runner.worker_cpu_seconds()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _runner(workers: int) -> Runner:
    return DaskRunner(n_workers=workers, preload=("medtwin.trials",)) if workers else SequentialRunner()


def part_a(patients: int, workers: int) -> tuple[Any, Any, float, float, int]:
    spec = parse_spec(TRIAL | {"population": TRIAL["population"] | {"size": patients}})
    runner = _runner(workers)
    rss0 = rss_mib()
    cpu0 = _cpu_seconds(runner)
    t0 = time.perf_counter()
    data = simulate_trial(spec, runner)
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds(runner) - cpu0
    comparisons = analyse(data)
    if isinstance(runner, DaskRunner):
        runner.close()
    patient_days = 2 * 14 * data.cohort.size
    tir = comparisons[0].estimate("difference")
    print(f"A. {patients:,}-patient x 14-day two-arm trial (crossover): {patient_days:,} patient-days")
    extra = len(TITRATION_FACTORS) * data.cohort.size
    print(f"   wall time {seconds:8.1f} s (goal <= 300 s)  incl. screening + titration ({extra:,} extra patient-days)")
    print(f"   throughput {patient_days / seconds:8.0f} patient-days/s ({seconds / patient_days * 1e3:.3f} ms each)")
    print(
        f"   CPU time {cpu:8.1f} s ({cpu / (patient_days + extra) * 1e3:.3f} ms per simulated patient-day); on 2 idle "
        f"cores the wall time would be {cpu / 2:.0f}-{cpu:.0f} s (all of it parallel - none of it)"
    )
    print(f"   peak RSS {rss_mib():.0f} MiB (before the trial {rss0:.0f} MiB); summaries only are kept")
    print(f"   TIR target-120 - target-140: {tir.estimate:+.2f} points [{tir.ci_low:.2f}, {tir.ci_high:.2f}]")
    return spec, data, seconds, cpu / (patient_days + extra), patient_days


def _peer_days(spec: Any, data: Any, k: int) -> tuple[list[dict[str, Any]], list[float]]:
    """Day 1 of the trial's first *k* patients in both arms: simglucose inputs and medtwin's mean BG of them."""
    cohort = data.cohort.take(np.arange(k)).payload
    sc = spec.scenario
    assert isinstance(sc, GlucoseScenario)
    plans = [patient_meals(sc, 14, spec.seed, 0, i) for i in range(k)]
    first = [p[p[:, 0] < 1440] for p in plans]
    days: list[dict[str, Any]] = []
    ours: list[float] = []
    for arm in spec.arms:
        assert isinstance(arm, GlucoseArm)
        controller = arm_controller(arm, cohort)
        result = simulate_closed_loop(
            cohort,
            minutes=1440,
            meals=meal_matrix(1440, np.stack([np.pad(f, ((0, 3 - len(f)), (0, 0))) for f in first]), k),
            controller=controller,
            sensor=CGMSensor(sensor_spec("Dexcom"), [spec.seed + i for i in range(k)]),
            pump=InsulinPump(pump_spec("Insulet")),
        )
        sampled = result.sampled()["bg_mg_dl"]
        for i in range(k):
            params = {"Name": cohort.names[i], "i": i}
            params |= {f"x0_{j + 1:2d}": float(cohort.x0[i, j]) for j in range(13)}
            params |= {name: float(v[i]) for name, v in cohort.params.items()}
            days.append({
                "params": params, "x0": cohort.x0[i].tolist(), "cr": float(cohort.cr_g_per_u[i]),
                "cf": float(cohort.cf_mg_dl_per_u[i]), "basal": float(cohort.basal_u_per_min[i]),
                "target": arm.target_mg_dl, "sensor_seed": spec.seed + i,
                "meals": [[round(m), float(g)] for m, g in first[i]],
            })  # fmt: skip
            ours.append(float(sampled[1:, i].mean()))
    return days, ours


def part_b(spec: Any, data: Any, k: int, medtwin_seconds: float, medtwin_cpu_per_day: float, medtwin_days: int) -> None:
    python, note = ensure_peer()
    print(f"B. simglucose 0.2.11 batch_sim (parallel), venv: {note}")
    if python is None:
        print("   NOT MEASURED: simglucose could not be installed")
        return
    days, ours = _peer_days(spec, data, k)
    proc = subprocess.run([str(python), "-c", PEER_SCRIPT], input=json.dumps(days), capture_output=True, text=True,
                          timeout=7200, check=False)  # fmt: skip
    if proc.returncode != 0:
        print("   simglucose failed:\n" + proc.stderr[-2000:])
        return
    peer = json.loads(proc.stdout.strip().splitlines()[-1])
    diff = np.abs(np.asarray(peer["mean_bg"]) - np.asarray(ours))
    peer_rate = len(days) / peer["seconds"]
    ours_rate = medtwin_days / medtwin_seconds
    print(
        f"   {len(days)} patient-days (day 1 of {k} sampled patients x 2 arms) in {peer['seconds']:.1f} s: "
        f"{peer['seconds'] / len(days):.2f} s per patient-day on 2 cores"
    )
    print(f"   same patient-days, mean BG medtwin vs simglucose: max |difference| {diff.max():.3f} mg/dL")
    print(f"RATIO medtwin / simglucose batch_sim throughput (patient-days per second): {ours_rate / peer_rate:,.0f}x")
    peer_cpu = peer["cpu_seconds"] / len(days)
    print(
        f"RATIO CPU time per patient-day, simglucose / medtwin: {peer_cpu:.2f} s / "
        f"{medtwin_cpu_per_day * 1e3:.3f} ms = {peer_cpu / medtwin_cpu_per_day:,.0f}x (whatever else loads the machine)"
    )


def part_c(pool: int, replicates: int, workers: int) -> None:
    spec = load_spec("glucose-target-120")
    spec = replace(spec, power=replace(spec.power, pool=pool, replicates=replicates))
    runner = _runner(workers)
    t0 = time.perf_counter()
    studies = power_study(spec, runner)
    seconds = time.perf_counter() - t0
    if isinstance(runner, DaskRunner):
        runner.close()
    s = studies[0]
    print(
        f"C. power of glucose-target-120: pool {s.pool_size} enrolled patients simulated in every arm with run-in "
        f"and twins, {replicates} trials per size {spec.power.sizes}: {seconds:.1f} s (goal <= 600 s)"
    )
    for c in s.curves:
        cells = ", ".join(f"n={n}: {p:.3f} ({q:.3f})" for n, p, q in zip(c.sizes, c.simulated, c.analytic, strict=True))
        print(f"   {c.method:10s} simulated (formula) {cells}; n for 80 %: {c.sample_size}")
        sds = ", ".join(f"{a:.3f} ({(c.variance / n) ** 0.5:.3f})" for n, a in zip(c.sizes, c.estimate_sd, strict=True))
        print(f"   {'':10s} SD of the estimates, simulated (formula) {sds}")
    print(f"   prognostic rho {s.rho:.3f} (lower 95 % {s.rho_lower:.3f}); pool effect {s.effect:+.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 patients, pool 400, 2 peer patients")
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--peer-patients", type=int, default=4, help="simglucose: day 1 of this many patients x 2")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-power", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="local Dask workers (0: this process)")
    args = parser.parse_args()
    patients = 1000 if args.quick else args.patients
    print(f"machine: {cpu_model()}, Python {sys.version.split()[0]}")
    spec, data, seconds, cpu_per_day, patient_days = part_a(patients, args.workers)
    if not args.skip_peer:
        part_b(spec, data, 2 if args.quick else args.peer_patients, seconds, cpu_per_day, patient_days)
    if not args.skip_power:
        part_c(400 if args.quick else 2000, 1000, args.workers)


if __name__ == "__main__":
    main()
