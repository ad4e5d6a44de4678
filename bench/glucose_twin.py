"""Benchmark: the personal glucose twin against py-replay-bg (ReplayBG, Cappon et al. 2023) on the same patient-days.

Data: virtual patients (simglucose-exact simulator) under therapy A for 2 days (basal-bolus controller, randomized
meals, GuardianRT sensor: 5-minute readings, the sample time ReplayBG works on). Both tools get the same records
(CGM, boluses, basal, carbohydrate with ReplayBG's breakfast/lunch/dinner labels, body weight). Each identifies a
twin; each replays therapy B (every bolus x1.3) on the same days; the replay error is the RMSE of the median replay
against the true glucose of the virtual patient simulated under B.

py-replay-bg 1.4.0 is GPL-3 and never a project dependency: it runs in its own virtual environment
(/work/venvs/replaybg by default, created with `python3 -m venv ... && pip install py-replay-bg==1.4.0`), in a
subprocess, with its MCMC (emcee; 5,000 steps is its documented test setting, >= 50,000 advised for real use),
parallelised over the 2 cores. Its twin() always runs a 10,000-step burn-in before the *n_steps* it is given, with 50
walkers per identified parameter (15 for its multi-meal blueprint on 3 meals a day: 750 walkers), i.e. 11.25 million
model runs for its 5,000-step test setting; ``--peer-burn-in`` shortens that burn-in (not its default; the output says
so).

Also measured: the 30-patient cohort identified in one batched run (``fit_cohort``: every patient's fit advanced in
lockstep, all their candidate parameters simulated in one kernel call per round), and the forecaster's update per
CGM reading.

    .venv/bin/python bench/glucose_twin.py                        # 1 patient vs the peer (5,000 steps), cohort, updates
    .venv/bin/python bench/glucose_twin.py --peer-steps 1000      # a shorter peer run
    .venv/bin/python bench/glucose_twin.py --skip-peer            # medtwin only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from medtwin.glucose import all_patient_names
from medtwin.glucose.forecast import GlucoseForecaster
from medtwin.glucose.identify import FitSettings, fit, fit_cohort
from medtwin.glucose.insilico import simulate_therapy_a, true_glucose
from medtwin.glucose.patients import load_cohort
from medtwin.glucose.replay import replay
from medtwin.glucose.therapy import Therapy, apply_therapy
from medtwin.glucose.therapy_data import TherapyData
from medtwin.glucose.twin_model import population_prior

PEER_PYTHON = Path(os.environ.get("REPLAYBG_VENV", "/work/venvs/replaybg")) / "bin" / "python"
THERAPY_B = Therapy(name="boluses x1.3", bolus_scale=1.3)

PEER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, os, io, contextlib, warnings
    warnings.filterwarnings("ignore")
    import numpy as np, pandas as pd
    from py_replay_bg.py_replay_bg import ReplayBG
    args = json.loads(sys.argv[1])
    if args["burn_in"] is not None:  # not the tool's default (10,000 burn-in steps): a shorter, documented run
        import py_replay_bg.twinning.mcmc as mcmc
        original = mcmc.MCMC.__init__
        def shorter(self, *a, **k):
            k["n_burn_in"] = args["burn_in"]
            original(self, *a, **k)
        mcmc.MCMC.__init__ = shorter
    def frame(path):
        df = pd.read_csv(path)
        df["t"] = pd.to_datetime(df["t"])
        return df
    data_a, data_b = frame(args["a"]), frame(args["b"])
    rbg = ReplayBG(blueprint="multi-meal", save_folder=args["folder"], yts=5, exercise=False, seed=1,
                   verbose=False, plot_mode=False)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rbg.twin(data=data_a, bw=args["bw"], save_name="bench", twinning_method="mcmc", parallelize=True,
                 n_processes=2, n_steps=args["steps"], u2ss=args["u2ss"])
    twin_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        res = rbg.replay(data=data_b, bw=args["bw"], save_name="bench", twinning_method="mcmc", n_replay=100)
    replay_s = time.perf_counter() - t0
    print(json.dumps({"twin_s": twin_s, "replay_s": replay_s, "median": res["glucose"]["median"].tolist()}))
    """
)


def replaybg_frame(data: TherapyData, path: Path) -> None:
    """ReplayBG's input: a 5-minute grid with glucose (mg/dL), and bolus, basal (U/min) and cho (g/min) as rates
    over each 5-minute slot; meals labelled B (before 11:00), L (before 17:00), D (otherwise) as its multi-meal
    blueprint expects."""
    n = int(data.duration_min // 5) + 1
    grid = np.arange(n) * 5.0
    glucose = np.full(n, np.nan)
    k = np.rint(data.cgm_t_min / 5.0).astype(int)
    glucose[k[k < n]] = data.cgm_mg_dl[k < n]
    bolus = np.zeros(n)
    cho = np.zeros(n)
    np.add.at(bolus, np.minimum((data.bolus_t_min // 5).astype(int), n - 1), data.bolus_u / 5.0)
    np.add.at(cho, np.minimum((data.carbs_t_min // 5).astype(int), n - 1), data.carbs_g / 5.0)
    basal = data.basal_rate_at(grid) / 60.0
    hours = ((data.local_start_minute() + grid) % 1440.0) / 60.0
    label = np.where(hours < 4, "D", np.where(hours < 11, "B", np.where(hours < 17, "L", "D")))
    local = data.start + timedelta(minutes=data.utc_offset_min)
    times = [(local + timedelta(minutes=float(t))).replace(tzinfo=None).isoformat() for t in grid]
    with path.open("w", encoding="utf-8") as fh:
        fh.write("t,glucose,cho,cho_label,bolus,bolus_label,basal\n")
        for i in range(n):
            g = "" if np.isnan(glucose[i]) else f"{glucose[i]:.2f}"
            cl = label[i] if cho[i] > 0 else ""
            bl = label[i] if bolus[i] > 0 else ""
            fh.write(f"{times[i]},{g},{cho[i]:.6f},{cl},{bolus[i]:.6f},{bl},{basal[i]:.8f}\n")


def run_peer(data: TherapyData, steps: int, burn_in: int | None) -> dict[str, object] | None:
    if not PEER_PYTHON.exists():
        print(f"py-replay-bg: no venv at {PEER_PYTHON.parent.parent} (python3 -m venv ...; pip install py-replay-bg)")
        return None
    with tempfile.TemporaryDirectory() as folder:
        a, b = Path(folder) / "a.csv", Path(folder) / "b.csv"
        replaybg_frame(data, a)
        replaybg_frame(apply_therapy(data, THERAPY_B), b)
        u2ss = float(
            np.mean(data.basal_rate_at(np.arange(0.0, data.duration_min))) / 60.0 * 1000.0 / data.body_weight_kg
        )
        args = {
            "a": str(a),
            "b": str(b),
            "folder": folder,
            "bw": data.body_weight_kg,
            "steps": steps,
            "u2ss": u2ss,
            "burn_in": burn_in,
        }
        proc = subprocess.run([str(PEER_PYTHON), "-c", PEER_SCRIPT, json.dumps(args)], capture_output=True,
                              text=True, timeout=6 * 3600, check=False)  # fmt: skip
    if proc.returncode != 0:
        print("py-replay-bg run failed:\n" + proc.stderr[-3000:])
        return None
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patient", default="adult#001")
    parser.add_argument("--peer-steps", type=int, default=5000, help="py-replay-bg MCMC steps (its test setting)")
    parser.add_argument(
        "--peer-burn-in",
        type=int,
        default=None,
        help="override py-replay-bg's fixed 10,000 burn-in steps (not its default: say so)",
    )
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-cohort", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")

    sim = simulate_therapy_a(all_patient_names(), days=2, seed=1, sensor="GuardianRT")
    names = list(sim.cohort.names)
    b = names.index(args.patient)
    data = sim.data[b]
    truth_b = true_glucose(load_cohort([args.patient]), [apply_therapy(data, THERAPY_B)])[:, 0]
    prior = population_prior("all", exclude=[args.patient])
    fit(data.window(0, 600), prior, settings=FitSettings(require_convergence=False, max_steps=250))  # compile/warm
    cpu0, t0 = time.process_time(), time.perf_counter()
    post = fit(data, prior)
    ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ours = replay(post, data, [THERAPY_B], draws=200)[0].median_mg_dl
    n = min(ours.size, truth_b.size)
    ours_rmse = float(np.sqrt(np.mean((ours[:n] - truth_b[:n]) ** 2)))
    d = post.diagnostics
    ess = min(min(d.ess_bulk.values()), min(d.ess_tail.values()))
    print(f"medtwin: {args.patient} 2 days identified in {ours_s:.2f} s wall ({ours_cpu:.2f} s CPU), {d.simulations} "
          f"simulations, R-hat max {max(d.rhat.values()):.3f}, ESS min {ess:.0f}; replay RMSE (boluses x1.3) "
          f"{ours_rmse:.2f} mg/dL")  # fmt: skip

    if not args.skip_peer:
        peer = run_peer(data, args.peer_steps, args.peer_burn_in)
        if peer is not None:
            med = np.asarray(peer["median"], dtype=np.float64)
            m = min(med.size, truth_b.size)
            peer_rmse = float(np.sqrt(np.mean((med[:m] - truth_b[:m]) ** 2)))
            peer_s = float(peer["twin_s"])  # type: ignore[arg-type]
            burn = args.peer_burn_in if args.peer_burn_in is not None else "10,000 (default)"
            print(f"py-replay-bg 1.4.0 (burn-in {burn} + {args.peer_steps} MCMC steps, 50 walkers per parameter, 2 "
                  f"processes): twinning {peer_s:.1f} s, "
                  f"replay RMSE (boluses x1.3) {peer_rmse:.2f} mg/dL")  # fmt: skip
            print(f"RATIO twinning time py-replay-bg / medtwin: {peer_s / ours_s:.1f}x (goal >= 50x); replay RMSE "
                  f"medtwin {ours_rmse:.2f} vs py-replay-bg {peer_rmse:.2f} mg/dL (goal: equal or better)")  # fmt: skip

    if not args.skip_cohort:
        priors = [population_prior("all", exclude=[name]) for name in names]
        cpu0, t0 = time.process_time(), time.perf_counter()
        cohort = fit_cohort(list(sim.data), priors, settings=FitSettings(require_convergence=False))
        cohort_s, cohort_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        converged = sum(p.diagnostics.converged for p in cohort)
        sims = sum(p.diagnostics.simulations for p in cohort)
        print(f"medtwin: 30-patient cohort (2 days each) identified in one batched run (fit_cohort): {cohort_s:.1f} s "
              f"wall ({cohort_cpu:.1f} s CPU), {converged}/30 converged, {sims} simulations (goal <= 120 s); "
              f"one after the other it would be ~30 x the single fit above: ~{30 * ours_s:.0f} s")  # fmt: skip

    f = GlucoseForecaster(post, data.start)
    f.basal = list(zip(data.basal_t_min.tolist(), data.basal_u_h.tolist(), strict=True))
    f.bolus = list(zip(data.bolus_t_min.tolist(), data.bolus_u.tolist(), strict=True))
    f.carbs = list(zip(data.carbs_t_min.tolist(), data.carbs_g.tolist(), strict=True))
    times = []
    for t, g in zip(data.cgm_t_min, data.cgm_mg_dl, strict=True):
        t0 = time.perf_counter()
        f.update(data.start + timedelta(minutes=float(t)), float(g))
        times.append(time.perf_counter() - t0)
    times = times[10:]
    print(
        f"medtwin: forecaster update per CGM reading (256 particles, 5-min readings): median "
        f"{statistics.median(times) * 1e3:.2f} ms, p95 {np.percentile(times, 95) * 1e3:.2f} ms (goal <= 20 ms)"
    )


if __name__ == "__main__":
    main()
