"""In-silico validation of the personal glucose twin over the 30 virtual patients, and the identifiability analysis
behind its choice of parameters; prints the tables of docs/models/glucose_twin.md.

    .venv/bin/python bench/glucose_twin_validation.py --seed 2 --out validation.json      # 30 patients
    .venv/bin/python bench/glucose_twin_validation.py --patients adult#001,child#003      # a few
    .venv/bin/python bench/glucose_twin_validation.py --identifiability                   # the parameter choice
    .venv/bin/python bench/glucose_twin_validation.py --compare-sets                      # its empirical check (MAP)
    .venv/bin/python bench/glucose_twin_validation.py --quality-flags                     # the unexplained-rise rule
    .venv/bin/python bench/glucose_twin_validation.py --fixed-uncertainty                 # what the fixed ones hide
    .venv/bin/python bench/glucose_twin_validation.py --dose-response-oracle --seed 1    # why x1.3 misses (MAP)
    .venv/bin/python bench/glucose_twin_validation.py --replay-estimators --seed 1 --fits /tmp/fits-seed1.pkl
                                                        # the replay's TIR estimators from the same (saved) fits
    .venv/bin/python bench/glucose_twin_validation.py --held-mixture --donors group --seed 1 --tie --out s1.json
                                                        # held parameters from donors, weighed by evidence (MAP)
    .venv/bin/python bench/glucose_twin_validation.py --pool-mixture s1.json s2.json   # pooled over seeds
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from medtwin.glucose import all_patient_names
from medtwin.glucose.advise import POLICIES
from medtwin.glucose.identifiability import analyse_identifiability
from medtwin.glucose.identify import FitSettings
from medtwin.glucose.therapy import Therapy
from medtwin.glucose.twin_model import DEFAULT_IDENTIFIED
from medtwin.glucose.twin_validation import compare_parameter_sets, validate_twin


def identifiability() -> None:
    for therapy in (Therapy(name="boluses x1.3", bolus_scale=1.3), Therapy(name="boluses 20 min earlier",
                                                                          bolus_shift_min=-20.0)):  # fmt: skip
        t0 = time.perf_counter()
        r = analyse_identifiability(all_patient_names(), therapy_b=therapy, max_parameters=14)
        print(f"\n### therapy B: {therapy.name} ({r.patients} patients, {time.perf_counter() - t0:.1f} s)\n")
        print("| parameter | CGM sensitivity (mg/dL per unit log) | prior SD (log) | posterior SD alone (log) |")
        print("|---|---|---|---|")
        for c in sorted(r.candidates, key=lambda c: -r.sensitivity_mg_dl[c]):
            print(f"| {c} | {r.sensitivity_mg_dl[c]:.1f} | {r.prior_sd[c]:.3f} | {r.posterior_sd_alone[c]:.3f} |")
        print("\n| step | parameter added | expected replay RMSE (mg/dL, median) | collinearity index (median) |")
        print("|---|---|---|---|")
        for k, (name, err, gamma) in enumerate(r.path, start=1):
            print(f"| {k} | {name} | {err:.1f} | {gamma:.1f} |")
        print(f"\nselected (gain >= 0.5 mg/dL, collinearity <= 20): {', '.join(r.selected)}")


CANDIDATE_SETS = (
    ("Gb", "Vmx", "kp3", "kabs", "kmax", "ka2", "p2u", "kp2"),  # textbook choice: sensitivities, absorption rates
    ("Gb", "m4", "kmin", "ki", "k1", "kmax"),  # the analysis' pick for boluses x1.3
    ("Gb", "Vmx", "kp3", "kmax", "kmin", "ki", "k2"),  # the analysis' pick for boluses 20 min earlier
    DEFAULT_IDENTIFIED,  # both picks, with d (second in line for x1.3) and without k2
    (*DEFAULT_IDENTIFIED, "b", "k2"),  # larger: two more
)


def compare_sets(population: str, seed: int, tie: bool, sets: tuple[tuple[str, ...], ...] = CANDIDATE_SETS) -> None:
    t0 = time.perf_counter()
    rows = compare_parameter_sets(all_patient_names(), sets, population=population, seed=seed, tie=tie)
    print(f"\nMAP fits of 30 patients per set ({time.perf_counter() - t0:.0f} s)\n")
    print(
        "| identified | fit RMSE vs true BG | x1.3: replay RMSE, abs dTIR <= 5 | -20 min: replay RMSE, abs dTIR <= 5 |"
    )
    print("|---|---|---|---|")
    for r in rows:
        a, b = r["boluses x1.3"], r["boluses 20 min earlier"]
        print(
            f"| {', '.join(r['identified'])} | {r['fit_rmse_median_mg_dl']:.1f} | {a['rmse_median_mg_dl']:.1f}, "
            f"{100 * a['share_abs_dtir_le_5']:.0f} % | {b['rmse_median_mg_dl']:.1f}, "
            f"{100 * b['share_abs_dtir_le_5']:.0f} % |"
        )


def fixed_uncertainty(seed: int = 1) -> None:
    """For each parameter the twin holds fixed: how much its population uncertainty moves the *difference* between
    the replay of boluses x1.3 and the recorded therapy (RMS over 2 days of the sensitivity of that difference times
    the prior log-SD, at the truth, median over the 30 patients; the part of the dose response the posterior
    cannot carry while the parameter is fixed), and the linearised expected replay RMSE of the difference if it were
    identified as well (the analysis of medtwin.glucose.identifiability)."""
    import numpy as np

    from medtwin.glucose.identifiability import _replay_error, ou_whiten, sensitivities
    from medtwin.glucose.insilico import simulate_therapy_a
    from medtwin.glucose.therapy import apply_therapy
    from medtwin.glucose.twin_model import (
        CANDIDATE_PARAMETERS,
        PersonalModel,
        population_prior,
        population_values,
        to_unconstrained,
    )

    sim = simulate_therapy_a(all_patient_names(), days=2, seed=seed)
    truth = population_values(sim.cohort.names)
    per_patient = []
    for b, name in enumerate(sim.cohort.names):
        prior = population_prior(name.split("#")[0], identified=CANDIDATE_PARAMETERS, exclude=[name])
        data = sim.data[b]
        model = PersonalModel(prior, body_weight_kg=float(truth["BW"][b]), basal_u_h=float(data.basal_u_h[0]))
        theta = to_unconstrained(CANDIDATE_PARAMETERS, np.array([truth[c][b] for c in CANDIDATE_PARAMETERS]))
        grid = np.arange(0.0, data.duration_min, 5.0)
        _, s_a = sensitivities(model, data, theta, data.cgm_t_min)
        _, s_b = sensitivities(model, apply_therapy(data, Therapy(bolus_scale=1.3)), theta, grid)
        _, s_a_grid = sensitivities(model, data, theta, grid)
        w = ou_whiten(s_a, data.cgm_t_min, 44.0) / 11.0
        per_patient.append((w.T @ w, s_b - s_a_grid, prior.cov, prior.mean - theta))
    k = [CANDIDATE_PARAMETERS.index(n) for n in DEFAULT_IDENTIFIED]
    base = np.median([_replay_error(k, *pp) for pp in per_patient])
    print(f"seed {seed}; the twin's set: expected RMSE of the x1.3-minus-A difference {base:.2f} mg/dL\n")
    print("| fixed parameter | its uncertainty in the x1.3 difference (mg/dL) | expected RMSE if identified too |")
    print("|---|---|---|")
    for j, c in enumerate(CANDIDATE_PARAMETERS):
        if j in k:
            continue
        moved = np.median([np.sqrt(np.mean(pp[1][:, j] ** 2) * pp[2][j, j]) for pp in per_patient])
        err = np.median([_replay_error([*k, j], *pp) for pp in per_patient])
        print(f"| {c} | {moved:.2f} | {err:.2f} |")


def dose_response_oracle(seed: int = 1) -> None:
    """Why the x1.3 replay misses (MAP fits, no sampling, the twin's 9 with the m2 tie): fitted on therapy A, on A and
    the true CGM of B together (can the structure express both?), with every parameter the twin holds set to the
    patient's true value (what holding them costs), and with one group of them at the truth at a time."""
    from dataclasses import replace as dc_replace

    import numpy as np

    from medtwin.glucose.identify import fit_map_cohort
    from medtwin.glucose.insilico import simulate_therapy_a, true_glucose
    from medtwin.glucose.therapy import apply_therapy
    from medtwin.glucose.twin_model import population_prior, population_values
    from medtwin.glucose.twin_validation import _member, _tir

    names = all_patient_names()
    sim = simulate_therapy_a(names, days=2, seed=seed)
    truth = population_values(names)
    priors = [population_prior(n.split("#")[0], exclude=[n], tie=True) for n in names]
    a = list(sim.data)
    b = [apply_therapy(d, Therapy(bolus_scale=1.3)) for d in a]
    true_a = [true_glucose(_member(sim.cohort, k), [a[k]])[:, 0] for k in range(len(names))]
    true_b = [true_glucose(_member(sim.cohort, k), [b[k]])[:, 0] for k in range(len(names))]

    def both(k: int):  # type: ignore[no-untyped-def]
        """A, then B's records after it, with B's true glucose plus A's sensor noise as CGM."""
        x, y = a[k], b[k]
        off = x.duration_min + float(x.cgm_t_min[1] - x.cgm_t_min[0])
        rec = dc_replace(x, cgm_t_min=np.concatenate([x.cgm_t_min, y.cgm_t_min + off]),
                         cgm_mg_dl=np.concatenate([x.cgm_mg_dl, x.cgm_mg_dl]),
                         cgm_censored=np.concatenate([x.cgm_censored, y.cgm_censored]),
                         bolus_t_min=np.concatenate([x.bolus_t_min, y.bolus_t_min + off]),
                         bolus_u=np.concatenate([x.bolus_u, y.bolus_u]),
                         carbs_t_min=np.concatenate([x.carbs_t_min, y.carbs_t_min + off]),
                         carbs_g=np.concatenate([x.carbs_g, y.carbs_g]))  # fmt: skip
        t = true_glucose(_member(sim.cohort, k), [rec])[:, 0]
        noise = x.cgm_mg_dl - true_a[k][np.rint(x.cgm_t_min).astype(int)]
        return dc_replace(rec, cgm_mg_dl=t[np.rint(rec.cgm_t_min).astype(int)] + np.concatenate([noise, noise]))

    def at_truth(group: tuple[str, ...] | None):  # type: ignore[no-untyped-def]
        return [dc_replace(p, fixed={n: (float(truth[n][k]) if (group is None or n in group) and n in truth else v)
                                     for n, v in p.fixed.items()}) for k, p in enumerate(priors)]  # fmt: skip

    def dtir(found):  # type: ignore[no-untyped-def]
        out = []
        for k, (theta, model) in enumerate(found):
            bg = model.simulate(theta[None, :-1], b[k], initial_glucose_mg_dl=float(np.exp(theta[-1])))[:, 0]
            n = min(bg.size, true_b[k].size)
            out.append(_tir(bg[:n, None])[0] - _tir(true_b[k][:n, None])[0])
        return np.array(out)

    both_days = [both(k) for k in range(len(names))]
    rows = {
        "A (the protocol)": dtir(fit_map_cohort(a, priors)),
        "A and B's truth": dtir(fit_map_cohort(both_days, priors)),
        "A, every held parameter at the truth": dtir(fit_map_cohort(a, at_truth(None))),
        "A and B's truth, every held parameter at the truth": dtir(fit_map_cohort(both_days, at_truth(None))),
    }
    for label, group in (("Vg, Vm0, Km0, kp2, k2", ("Vg", "Vm0", "Km0", "kp2", "k2")), ("Vm0", ("Vm0",)),
                         ("kp2", ("kp2",)), ("k2", ("k2",)), ("kabs, b", ("kabs", "b")),
                         ("ka1, ka2, kd, ksc", ("ka1", "ka2", "kd", "ksc")),
                         ("m1, m30, Vi, p2u", ("m1", "m30", "Vi", "p2u"))):  # fmt: skip
        rows[f"A, {label} at the truth"] = dtir(fit_map_cohort(a, at_truth(group)))
    print(f"seed {seed}, MAP fits of the twin's 9, replay of boluses x1.3\n")
    print("| fitted on | abs dTIR <= 5 | median abs dTIR | mean signed dTIR |")
    print("|---|---|---|---|")
    for label, d in rows.items():
        print(f"| {label} | {100 * np.mean(np.abs(d) <= 5):.0f} % | {np.median(np.abs(d)):.1f} | {d.mean():+.1f} |")
    print("\nhow close the true B sits to 70 mg/dL: TIR of the true B shifted by -5 / 0 / +5 mg/dL")
    for k, n in enumerate(names):
        shifted = [_tir((true_b[k] + s)[:, None])[0] for s in (-5.0, 0.0, 5.0)]
        print(f"{n}: {shifted[0]:.1f} / {shifted[1]:.1f} / {shifted[2]:.1f}; true B nadir {true_b[k].min():.0f} mg/dL")


def quality_flags(seeds: tuple[int, ...] = (1, 2)) -> None:
    """How often the unexplained-rise rule fires when every meal is recorded (in silico): on the noisy CGM, on the true
    glucose sampled the same way, and with the readings smoothed first; and whether it finds a lunch left out of
    the records (its bolus kept)."""
    from dataclasses import replace

    import numpy as np

    import medtwin.glucose.data_quality as dq
    from medtwin.glucose.insilico import simulate_therapy_a

    rule = dq._unexplained_rises

    def smoothed(half: float):  # type: ignore[no-untyped-def]
        def f(data, t, g, artefacts):  # type: ignore[no-untyped-def]
            if half:
                g = np.array([g[np.abs(t - ti) <= half].mean() for ti in t])
            return rule(data, t, g, artefacts)

        return f

    print(
        "| seed | smoothing | false flags per patient (noisy CGM) | on true BG | readings left out "
        "| unrecorded lunch found |"
    )
    print("|---|---|---|---|---|---|")
    for seed in seeds:
        sim = simulate_therapy_a(all_patient_names(), days=2, seed=seed)
        for half in (0.0, 10.0, 15.0, 20.0):
            dq._unexplained_rises = smoothed(half)
            noisy, truth, left, found = [], [], [], []
            for b, w in enumerate(sim.data):
                q = dq.assess_quality(w)
                noisy.append(q.count("unexplained-rise"))
                left.append(q.n_excluded / w.cgm_t_min.size)
                tb = sim.result.bg_mg_dl[np.rint(w.cgm_t_min).astype(int), b]
                truth.append(dq.assess_quality(replace(w, cgm_mg_dl=tb)).count("unexplained-rise"))
                keep = ~((w.carbs_t_min > 600) & (w.carbs_t_min < 900))
                lunch = float(w.carbs_t_min[~keep][0])
                q2 = dq.assess_quality(replace(w, carbs_t_min=w.carbs_t_min[keep], carbs_g=w.carbs_g[keep]))
                found.append(any(abs(i.start_min - lunch) < 90 for i in q2.issues if i.kind == "unexplained-rise"))
            print(f"| {seed} | +-{half:.0f} min | {np.mean(noisy):.2f} | {np.mean(truth):.2f} | "
                  f"{100 * np.mean(left):.1f} % (max {100 * np.max(left):.0f} %) | "
                  f"{100 * np.mean(found):.0f} % |")  # fmt: skip
        dq._unexplained_rises = rule


def replay_estimators(seed: int, cache: Path | None) -> None:
    """The share of patients with |dTIR| <= 5 for each way of reading the twin's TIR off the same fits and replays
    (the validation's replay step: same simulation, fits, replay seed; fits from *cache* when it exists, as
    ``bench/glucose_advice_policies.py`` saves them): the median of the draws' TIR (the twin's estimate, what the
    replay reports), their mean (the posterior expectation), the TIR of the pointwise median curve, and the mean with
    the residual-SD error added to each draw (what the band carries; a sensitivity figure, not an estimate of
    true-BG TIR)."""
    import numpy as np

    from glucose_advice_policies import fits  # type: ignore[import-not-found]
    from medtwin.glucose.replay import replay
    from medtwin.glucose.twin_validation import DEFAULT_THERAPIES_B, _replay_scores, _tir

    names = all_patient_names()
    sim, posteriors = fits(names, seed, cache)
    rows: dict[str, list[dict[str, float]]] = {t.name: [] for t in DEFAULT_THERAPIES_B}
    for b, name in enumerate(names):
        window = sim.data[b].window(0.0, 2880.0)
        scores = _replay_scores(posteriors[b], sim.cohort, b, window, DEFAULT_THERAPIES_B, seed)
        noise = np.random.default_rng(seed + 7)
        for result in replay(posteriors[b], window, DEFAULT_THERAPIES_B, seed=seed):
            r = dict(scores[result.therapy.name])
            n = int(result.draws.shape[0])
            bg = result.draws[1:n] + noise.normal(0.0, posteriors[b].residual_sd_mg_dl, result.draws[1:n].shape)
            r["tir_twin_mean_with_error_pct"] = float(np.mean(_tir(bg)))
            r["name"] = name  # type: ignore[assignment]
            rows[result.therapy.name].append(r)
    keys = (("median of draws (twin)", "tir_twin_pct"), ("posterior mean", "tir_twin_mean_pct"),
            ("TIR of median curve", "tir_twin_of_median_curve_pct"),
            ("mean, residual error added", "tir_twin_mean_with_error_pct"))  # fmt: skip
    print(f"\nseed {seed}, {len(names)} patients, load {os.getloadavg()}\n")
    print(
        "| therapy B | RMSE median (p90) | band | " + " | ".join(f"{k}: abs dTIR <= 5, median" for k, _ in keys) + " |"
    )
    print("|---|---|---|" + "---|" * len(keys))
    for therapy, r in rows.items():
        rmse = [x["rmse_mg_dl"] for x in r]
        cells = []
        for _, key in keys:
            d = np.array([abs(x[key] - x["tir_true_pct"]) for x in r])
            cells.append(f"{100 * np.mean(d <= 5.0):.0f} %, {np.median(d):.1f}")
        print(f"| {therapy} | {np.median(rmse):.1f} ({np.percentile(rmse, 90):.1f}) | "
              f"{100 * np.mean([x['coverage_95'] for x in r]):.1f} % | " + " | ".join(cells) + " |")  # fmt: skip
    print("\nx1.3 patients off by > 5 with any estimator (true TIR; twin mean / median of draws / median curve):")
    for x in rows[DEFAULT_THERAPIES_B[0].name]:
        d = [x[key] - x["tir_true_pct"] for _, key in keys[:3]]
        if max(abs(v) for v in d) > 5.0:
            print(f"  {x['name']}: {x['tir_true_pct']:.1f}; " + " / ".join(f"{v:+.1f}" for v in d))


def _weighted_median(values, weights):  # type: ignore[no-untyped-def]
    """The smallest value whose cumulative weight (values sorted) reaches half the total."""
    import numpy as np

    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def held_mixture(seed: int, donors: str, tie: bool, out: Path | None, chunk: int = 150) -> None:
    """The parameters the twin holds taken not at the group's geometric mean but from "donors": for each patient k
    and each donor j (the other members of k's age group, or all 29 others) the MAP of the 9 with every held
    parameter at donor j's true value, weighed by its Laplace evidence (a Bayesian model average over the
    population's joint distribution of the held parameters; the patient's own values are never used). The replay
    of boluses x1.3 combined as (a) the highest-evidence donor's TIR, (b) the weighted median and (c) the weighted
    mean of the donors' TIRs; beside it the protocol (held at the group mean) and the oracle (held at the truth),
    with the same data and MAP protocol as ``--dose-response-oracle``."""
    from dataclasses import replace as dc_replace

    import numpy as np

    from medtwin.glucose.identify import fit_map_evidence_cohort
    from medtwin.glucose.insilico import simulate_therapy_a, true_glucose
    from medtwin.glucose.therapy import apply_therapy
    from medtwin.glucose.twin_model import population_prior, population_values
    from medtwin.glucose.twin_validation import _member, _tir

    names = all_patient_names()
    t0, cpu0 = time.perf_counter(), time.process_time()
    sim = simulate_therapy_a(names, days=2, seed=seed)
    truth = population_values(names)
    priors = [population_prior(n.split("#")[0], exclude=[n], tie=tie) for n in names]
    a = list(sim.data)
    b = [apply_therapy(d, Therapy(bolus_scale=1.3)) for d in a]
    true_b = [true_glucose(_member(sim.cohort, k), [b[k]])[:, 0] for k in range(len(names))]
    tir_true = np.array([_tir(t[:, None])[0] for t in true_b])

    def held_at(k: int, j: int):  # type: ignore[no-untyped-def]
        """Patient k's prior with every held parameter at patient j's true value."""
        p = priors[k]
        return dc_replace(p, fixed={n: (float(truth[n][j]) if n in truth else v) for n, v in p.fixed.items()})

    def donors_of(k: int) -> list[int]:
        group = names[k].split("#")[0]
        return [j for j, n in enumerate(names) if j != k and (donors == "all" or n.split("#")[0] == group)]

    jobs = [(k, None) for k in range(len(names))] + [(k, k) for k in range(len(names))]
    jobs += [(k, j) for k in range(len(names)) for j in donors_of(k)]
    fits = []
    for lo in range(0, len(jobs), chunk):
        part = jobs[lo : lo + chunk]
        fits += fit_map_evidence_cohort([a[k] for k, _ in part],
                                        [priors[k] if j is None else held_at(k, j) for k, j in part])  # fmt: skip
    fit_cpu = time.process_time() - cpu0

    def tir_of(k: int, f) -> float:  # type: ignore[no-untyped-def]
        """The twin's TIR under x1.3 at fit *f* over the minutes of the truth's (as in the oracle)."""
        bg = f.model.simulate(f.theta[None, :-1], b[k], initial_glucose_mg_dl=float(np.exp(f.theta[-1])))[:, 0]
        if bg.size < true_b[k].size:
            raise RuntimeError(f"{names[k]}: replay of {bg.size} minutes, truth {true_b[k].size}")
        return float(_tir(bg[: true_b[k].size, None])[0])

    results: dict[str, list[float]] = {"A (the protocol)": [], "A, held at the truth (oracle)": [],
                                       "mixture (a) top donor": [], "mixture (b) weighted median": [],
                                       "mixture (c) weighted mean": []}  # fmt: skip
    per_patient = []
    for k, name in enumerate(names):
        mine = [(j, f) for (kk, j), f in zip(jobs, fits, strict=True) if kk == k]
        base = next(f for j, f in mine if j is None)
        oracle = next(f for j, f in mine if j == k)
        comp = [(j, f) for j, f in mine if j is not None and j != k]
        ev = np.array([f.log_evidence for _, f in comp])
        w = np.exp(ev - ev.max())
        w /= w.sum()
        tirs = np.array([tir_of(k, f) for _, f in comp])
        top = int(np.argmax(ev))
        row = {"name": name, "tir_true": float(tir_true[k]), "protocol": tir_of(k, base), "oracle": tir_of(k, oracle),
               "top": float(tirs[top]), "median": _weighted_median(tirs, w), "mean": float(np.sum(w * tirs)),
               "n_eff": float(1.0 / np.sum(w**2)), "top_donor": names[comp[top][0]],
               "evidence_protocol_minus_top": float(base.log_evidence - ev.max()),
               "evidence_oracle_minus_top": float(oracle.log_evidence - ev.max()),
               "components": [{"donor": names[j], "log_evidence": float(f.log_evidence), "weight": float(wj),
                               "tir": float(t), "tau_min": f.tau_min}
                              for (j, f), wj, t in zip(comp, w, tirs, strict=True)]}  # fmt: skip
        per_patient.append(row)
        for label, key in zip(results, ("protocol", "oracle", "top", "median", "mean"), strict=True):
            results[label].append(row[key] - row["tir_true"])
    print(f"\nseed {seed}, donors: {donors}, tie: {tie}; {len(jobs)} MAP fits, {fit_cpu:.0f} s CPU, "
          f"{time.perf_counter() - t0:.0f} s wall, load {os.getloadavg()}\n")  # fmt: skip
    print("| held parameters | abs dTIR <= 5 | median abs dTIR | mean signed dTIR |")
    print("|---|---|---|---|")
    for label, d in results.items():
        x = np.array(d)
        print(f"| {label} | {100 * np.mean(np.abs(x) <= 5):.0f} % | {np.median(np.abs(x)):.1f} | {x.mean():+.1f} |")
    n_eff = np.array([r["n_eff"] for r in per_patient])
    print(f"\neffective components 1 / sum w^2: median {np.median(n_eff):.2f}, range {n_eff.min():.2f}-"
          f"{n_eff.max():.2f}; log evidence of the protocol / the oracle minus the top donor's: median "
          f"{np.median([r['evidence_protocol_minus_top'] for r in per_patient]):+.1f} / "
          f"{np.median([r['evidence_oracle_minus_top'] for r in per_patient]):+.1f}\n")  # fmt: skip
    print("| patient | true TIR | dTIR protocol | oracle | top | w. median | w. mean | n_eff | top donor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in per_patient:
        d = [r[key] - r["tir_true"] for key in ("protocol", "oracle", "top", "median", "mean")]
        print(f"| {r['name']} | {r['tir_true']:.1f} | " + " | ".join(f"{v:+.1f}" for v in d)
              + f" | {r['n_eff']:.2f} | {r['top_donor']} |")  # fmt: skip
    if out is not None:
        out.write_text(json.dumps({"seed": seed, "donors": donors, "tie": tie, "patients": per_patient}, indent=1))


def pool_mixture(paths: list[Path]) -> None:
    """Pooled figures of ``--held-mixture`` runs (their ``--out`` files, one per seed): the share within 5 points, the
    median absolute and mean signed dTIR of each reading, and, against the protocol, how many misses become hits
    and hits misses (two-sided sign test on those that change)."""
    import numpy as np
    from scipy.stats import binomtest

    keys = ("protocol", "oracle", "top", "median", "mean")
    runs = [json.loads(p.read_text()) for p in paths]
    d = {k: np.array([r[k] - r["tir_true"] for doc in runs for r in doc["patients"]]) for k in keys}
    print(f"{d['protocol'].size} patient-replays: seeds {[doc['seed'] for doc in runs]}, donors "
          f"{sorted({doc['donors'] for doc in runs})}, tie {sorted({doc['tie'] for doc in runs})}\n")  # fmt: skip
    print("| held parameters | abs dTIR <= 5 | median abs dTIR | mean signed dTIR | misses -> hits, hits -> misses "
          "(sign test p) |")  # fmt: skip
    print("|---|---|---|---|---|")
    hit0 = np.abs(d["protocol"]) <= 5.0
    for k in keys:
        hit = np.abs(d[k]) <= 5.0
        gained, lost = int(np.sum(hit & ~hit0)), int(np.sum(~hit & hit0))
        p = binomtest(gained, gained + lost).pvalue if gained + lost else 1.0
        change = "-" if k == "protocol" else f"{gained}, {lost} (p {p:.2f})"
        print(f"| {k} | {100 * np.mean(hit):.1f} % | {np.median(np.abs(d[k])):.2f} | {d[k].mean():+.2f} | {change} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", default="all", help="comma-separated names or 'all'")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the full report (JSON)")
    parser.add_argument("--identifiability", action="store_true")
    parser.add_argument("--compare-sets", action="store_true")
    parser.add_argument("--quality-flags", action="store_true", help="false alarms of the unexplained-rise rule")
    parser.add_argument("--fixed-uncertainty", action="store_true", help="dose-response uncertainty of fixed ones")
    parser.add_argument("--dose-response-oracle", action="store_true", help="why x1.3 misses: MAP fits with the truth")
    parser.add_argument(
        "--population",
        choices=("group", "all"),
        default="group",
        help="prior from the patient's age group (default) or from all other patients",
    )
    parser.add_argument(
        "--identified", default=None, help="comma-separated parameters the twin identifies (default: the twin's own)"
    )
    parser.add_argument(
        "--fallback", default=None, help="comma-separated parameters dropped where the fit with them does not converge"
    )
    parser.add_argument("--fallback-steps", type=int, default=None, help="step cap of the fit before the fallback")
    parser.add_argument(
        "--tie",
        action="store_true",
        help="m2 (m30) follows an identified m4 (m1) in the population's ratio instead of being held (TIED_PARAMETERS)",
    )
    parser.add_argument("--replay-estimators", action="store_true", help="the replay's TIR estimators, same fits")
    parser.add_argument("--held-mixture", action="store_true", help="held parameters from donors, evidence-weighted")
    parser.add_argument("--donors", choices=("group", "all"), default="group", help="with --held-mixture")
    parser.add_argument("--pool-mixture", nargs="+", type=Path, default=None, help="--held-mixture --out files")
    parser.add_argument("--fits", type=Path, default=None, help="with --replay-estimators: saved fits (made if absent)")
    parser.add_argument("--no-forecast", action="store_true", help="skip the forecast part (the slowest)")
    parser.add_argument("--no-advice", action="store_true")
    parser.add_argument("--advice-policy", choices=POLICIES, default="robust", help="the twin's bolus policy")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load {os.getloadavg()}")
    if args.identifiability:
        identifiability()
        return
    if args.quality_flags:
        quality_flags()
        return
    if args.fixed_uncertainty:
        fixed_uncertainty(args.seed)
        return
    if args.replay_estimators:
        replay_estimators(args.seed, args.fits)
        return
    if args.dose_response_oracle:
        dose_response_oracle(args.seed)
        return
    if args.pool_mixture:
        pool_mixture(args.pool_mixture)
        return
    if args.held_mixture:
        held_mixture(args.seed, args.donors, args.tie, args.out)
        return
    if args.compare_sets:
        sets = CANDIDATE_SETS if args.identified is None else (tuple(args.identified.split(",")),)
        compare_sets(args.population, args.seed, args.tie, sets)
        return
    names = all_patient_names() if args.patients == "all" else tuple(args.patients.split(","))
    t0, cpu0 = time.perf_counter(), time.process_time()
    identified = None if args.identified is None else tuple(args.identified.split(","))
    settings = FitSettings(require_convergence=False)
    if args.fallback is not None:
        settings = replace(settings, fallback=tuple(n for n in args.fallback.split(",") if n))
    if args.fallback_steps is not None:
        settings = replace(settings, fallback_steps=args.fallback_steps)
    report = validate_twin(names, seed=args.seed, population=args.population, forecast=not args.no_forecast,
                           advice=not args.no_advice, advice_policy=args.advice_policy,
                           identified=identified, settings=settings, tie=args.tie)  # fmt: skip
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    doc = report.to_dict()
    doc["wall_s"] = wall
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=1))
    s = doc["summary"]
    st = doc["settings"]
    print(
        f"\n{s['patients']} patients, seed {args.seed}, prior: {args.population}, {wall:.0f} s wall ({cpu:.0f} s CPU), "
        f"load {os.getloadavg()}"
    )
    print(
        f"cohort fit (fit_cohort, all patients batched): {st['cohort_fit_s']:.1f} s wall, "
        f"{st['cohort_fit_cpu_s']:.1f} s CPU"
    )
    f = s["fit"]
    print(f"fit: converged {f['converged']}/{s['patients']} ({f['fell_back']} fell back), "
          f"{f['simulations_total']:.0f} simulations in all, median {f['simulations_median']:.0f}, "
          f"{f['seconds_median']:.1f} s; worst R-hat {f['rhat_max']:.3f}, smallest ESS {f['ess_min']:.0f}")  # fmt: skip
    print("\n| therapy B | replay RMSE median (p90), mg/dL | abs dTIR <= 5 points | abs dTIR median | 95 % band | "
          "true TIR in the draws' 95 % TIR interval |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for key, r in s.items():
        if key.startswith("replay: "):
            print(f"| {key[8:]} | {r['rmse_median_mg_dl']:.1f} ({r['rmse_p90_mg_dl']:.1f}) | "
                  f"{100 * r['share_abs_dtir_le_5']:.0f} % | {r['abs_dtir_median']:.1f} | "
                  f"{100 * r['coverage_95_pooled']:.1f} % | {100 * r['share_tir_in_95']:.0f} % |")  # fmt: skip
    fc = s.get("forecast")
    if fc:
        print(
            "\n| horizon | twin RMSE / MAE vs CGM | twin RMSE vs true BG | persistence RMSE | linear RMSE | "
            "gain vs persistence / linear | Parkes A+B | 95 % PI coverage |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for h in (30, 60):
            print(f"| {h} min | {fc[f'twin_rmse_{h}']:.1f} / {fc[f'twin_mae_{h}']:.1f} | "
                  f"{fc[f'twin_rmse_vs_bg_{h}']:.1f} "
                  f"| {fc[f'persistence_rmse_{h}']:.1f} | {fc[f'linear_rmse_{h}']:.1f} | "
                  f"{fc[f'gain_vs_persistence_{h}_pct']:.0f} % / {fc[f'gain_vs_linear_{h}_pct']:.0f} % | "
                  f"{fc[f'parkes_ab_pct_{h}']:.1f} % | {100 * fc[f'coverage_95_{h}']:.1f} % |")  # fmt: skip
        print(f"forecaster update per reading: median {fc['update_ms_median']:.1f} ms (per-patient medians, median)")
    adv = s.get("advice")
    if adv:
        print("\n| bolus | TIR % | time < 70 mg/dL % | insulin U/day |")
        print("|---|---|---|---|")
        for arm in ("calculator", "twin"):
            print(
                f"| {arm} | {adv[f'{arm}_tir_pct']:.1f} | {adv[f'{arm}_tbr_pct']:.2f} | {adv[f'{arm}_insulin_u']:.1f} |"
            )


if __name__ == "__main__":
    main()
