"""Compare the twin's bolus-advice policies on the in-silico advice day of ``validate_twin``, reusing the cohort's
fits (the fits are the protocol's cost: ~100 s CPU per seed; the advice day is a few seconds per patient and
policy). Same simulation, fits (``fit_cohort``, age-group leave-one-out priors), calibration and advice day as
``medtwin.glucose.twin_validation.validate_twin`` with the same seed; prints the table of
docs/models/glucose_twin.md and per-patient rows with ``--per-patient``.

    .venv/bin/python bench/glucose_advice_policies.py --seed 1 --fits /tmp/fits-seed1.pkl --policies calibrated,robust
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from medtwin.glucose import all_patient_names
from medtwin.glucose.advise import POLICIES, calibrate_advice
from medtwin.glucose.forecast import GlucoseForecaster
from medtwin.glucose.identify import FitSettings, Posterior, fit_cohort
from medtwin.glucose.insilico import simulate_therapy_a
from medtwin.glucose.twin_validation import _advice_day, _prior_for


def fits(names: tuple[str, ...], seed: int, cache: Path | None, days: int = 2) -> tuple[Any, list[Posterior]]:
    """The protocol's simulation and the cohort's posteriors (loaded from *cache* when it exists, else fitted and
    saved there)."""
    sim = simulate_therapy_a(names, days=days + 1, seed=seed)
    if cache is not None and cache.exists():
        stored = pickle.loads(cache.read_bytes())
        if stored["names"] != list(names) or stored["seed"] != seed:
            raise SystemExit(f"{cache}: fits of other patients or seed")
        return sim, stored["posteriors"]
    windows = [sim.data[b].window(0.0, 1440.0 * days) for b in range(len(names))]
    cpu = time.process_time()
    posteriors = fit_cohort(windows, [_prior_for(n, "group") for n in names],
                            settings=FitSettings(require_convergence=False))  # fmt: skip
    print(f"cohort fit {time.process_time() - cpu:.0f} s CPU")
    if cache is not None:
        cache.write_bytes(pickle.dumps({"names": list(names), "seed": seed, "posteriors": posteriors}))
    return sim, posteriors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fits", type=Path, default=None, help="pickle of the cohort's posteriors (made if absent)")
    parser.add_argument("--policies", default="calibrated", help=f"comma-separated, of {POLICIES}")
    parser.add_argument("--per-patient", action="store_true")
    parser.add_argument("--fit-only", action="store_true", help="only fit (and save) the cohort")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load {os.getloadavg()}")
    names = all_patient_names() if args.patients == "all" else tuple(args.patients.split(","))
    sim, posteriors = fits(names, args.seed, args.fits)
    if args.fit_only:
        return
    policies = args.policies.split(",")
    done: dict[str, Any] = {}
    if args.out is not None and args.out.exists():  # arms already run on this seed are reused
        done = json.loads(args.out.read_text())["rows"]
    rows: dict[str, list[dict[str, float]]] = {p: [] for p in ["calculator", *policies]}
    cpu = time.process_time()
    for b, name in enumerate(names):
        data = sim.data[b]
        calibration = None
        line = [f"{name:15s}"]
        for p in ["calculator", *policies]:
            if p in done and len(done[p]) == len(names):
                r = done[p][b]
            elif p == "calculator":
                calc = _advice_day(posteriors[b], sim.cohort, b, args.seed + 1000, arms=("calculator",))
                r = {"tir": calc["calculator_tir_pct"], "tbr": calc["calculator_tbr_pct"],
                     "insulin": calc["calculator_insulin_u"]}  # fmt: skip
            else:
                if calibration is None:
                    filt = GlucoseForecaster(posteriors[b], data.start, particles=128, seed=args.seed,
                                             basal_u_h=float(data.basal_u_h[0]))  # fmt: skip
                    calibration = calibrate_advice(filt, data, 2880.0)
                adv = _advice_day(posteriors[b], sim.cohort, b, args.seed + 1000, policy=p,
                                  calibration=calibration, arms=("twin",))  # fmt: skip
                r = {"tir": adv["twin_tir_pct"], "tbr": adv["twin_tbr_pct"], "insulin": adv["twin_insulin_u"]}
            rows[p].append(r)
            line.append(f"{p} {r['tir']:5.1f} {r['tbr']:5.2f} {r['insulin']:5.1f}")
        if args.per_patient:
            print(" | ".join(line), flush=True)
    print(f"\nseed {args.seed}, {len(names)} patients, advice {time.process_time() - cpu:.0f} s CPU, "
          f"load {os.getloadavg()}")  # fmt: skip
    print("| meal boluses | TIR % | time < 70 % | insulin U/day | people given less / more insulin | TIR up / down |")
    print("|---|---|---|---|---|---|")
    base = rows["calculator"]
    for p, r in rows.items():
        tir, tbr, ins = (float(np.mean([x[k] for x in r])) for k in ("tir", "tbr", "insulin"))
        less = sum(x["insulin"] < c["insulin"] - 1e-6 for x, c in zip(r, base, strict=True))
        more = sum(x["insulin"] > c["insulin"] + 1e-6 for x, c in zip(r, base, strict=True))
        up = sum(x["tir"] > c["tir"] + 1e-6 for x, c in zip(r, base, strict=True))
        down = sum(x["tir"] < c["tir"] - 1e-6 for x, c in zip(r, base, strict=True))
        print(f"| {p} | {tir:.1f} | {tbr:.2f} | {ins:.1f} | {less} / {more} | {up} / {down} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"seed": args.seed, "names": list(names), "rows": done | rows}, indent=1))


if __name__ == "__main__":
    main()
