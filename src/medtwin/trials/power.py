"""Power and sample size of a trial spec: by simulation (pool, then draw) and by formula.

Pool then draw: a pool of ``power.pool`` patients is screened, run in and enrolled as the spec says, and every
patient is simulated under every arm (their potential outcomes) with their twin's prognostic score. A replicated
trial of size *n* draws *n* patients from the pool without replacement, allocates them with the spec's
allocation (a fresh seed per replicate), observes each patient's outcome in the arm allocated and analyses the
trial by each method. This estimates power for patients drawn from the pool's empirical distribution; with a pool
several times the largest trial it is close to drawing fresh patients, which ``power.full_simulation_check``
verifies: that many trials of the smallest size are fully simulated (new patients, new draws every time) and
their rejection rate and estimate SD are reported beside the pool's (tests/trials/test_power.py does this on a
small case). Simulated trials analyse the primary endpoint, each arm against the control; n is the number of
patients in the two arms compared.

By formula: the effect is the pool's mean difference of potential outcomes, the variance of each method the
asymptotic ANCOVA variance (:func:`medtwin.trials.analysis.ancova_variance`) from the pool's outcomes and
covariates, which for PROCOVA is the ``(1 - rho^2)`` reduction of Schuler et al. 2021. The sample size for
``power.target_power`` is solved on it. A planning value more cautious than the pool's own correlation (the
EMA qualification opinion asks for a conservative prospective estimate) is reported too: the sample size with
the lower 95 % confidence bound of rho (Fisher z over the pool's control outcomes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray
from medtwin.sim.runners import Runner
from medtwin.trials.analysis import (
    analytic_power,
    analytic_sample_size,
    ancova_variance,
    correlation,
    paired_difference,
)
from medtwin.trials.cohort import allocate, strata_labels
from medtwin.trials.protocol import AllocationSpec, TrialSpec
from medtwin.trials.trial import (
    Simulator,
    TrialData,
    analyse,
    compare,
    method_covariates,
    simulate_trial,
    simulator_for,
)

__all__ = ["PowerCurve", "PowerStudy", "power_study", "simulated_power"]

POOL_POPULATION = 102
POOL_OFFSET = 2 << 22
CHECK_POPULATION = 1000
CHECK_OFFSET = 3 << 22
DRAWS = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerCurve:
    """Power of one method at each trial size: simulated (with Monte Carlo SE) and by formula."""

    method: str
    sizes: tuple[int, ...]
    simulated: tuple[float, ...]
    simulated_se: tuple[float, ...]
    estimate_mean: tuple[float, ...]
    estimate_sd: tuple[float, ...]
    analytic: tuple[float, ...]
    variance: float
    sample_size: int | None
    sample_size_conservative: int | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON."""
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerStudy:
    """Power curves of every method for each arm against the control (primary endpoint)."""

    endpoint: str
    arm: str
    control: str
    effect: float
    curves: tuple[PowerCurve, ...]
    pool_size: int
    rho: float
    rho_lower: float
    check: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON."""
        return {
            "endpoint": self.endpoint,
            "arm": self.arm,
            "control": self.control,
            "effect_pool": self.effect,
            "pool_size": self.pool_size,
            "prognostic_rho_pool": self.rho,
            "prognostic_rho_lower95": self.rho_lower,
            "curves": [c.to_dict() for c in self.curves],
            "full_simulation_check": self.check,
        }


def _two_arm_allocation(spec: TrialSpec, arm: int) -> AllocationSpec:
    r = spec.allocation.ratio
    return AllocationSpec(
        method=spec.allocation.method,
        ratio=(r[spec.control], r[arm]),
        block_size=spec.allocation.block_size,
        strata=spec.allocation.strata,
    )


def simulated_power(
    pool: TrialData, arm: int, *, sizes: tuple[int, ...], replicates: int, seed_key: int = 0
) -> dict[str, tuple[FloatArray, FloatArray]]:
    """Rejections and estimates ``{method: (rejected (sizes, reps), estimates (sizes, reps))}`` of trials drawn
    from *pool* (every patient with every arm's outcome), primary endpoint, *arm* against the control."""
    spec = pool.spec
    c, endpoint = spec.control, spec.primary
    y = pool.outcomes[endpoint]
    methods = spec.analysis.methods if spec.design == "parallel" else ("difference",)
    rej = {m: np.zeros((len(sizes), replicates)) for m in methods}
    est = {m: np.zeros((len(sizes), replicates)) for m in methods}
    allocation = _two_arm_allocation(spec, arm)
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(DRAWS, arm, seed_key)))
    for r in range(replicates):
        for s, n in enumerate(sizes):
            rows = np.sort(rng.choice(pool.cohort.size, size=n, replace=False))
            if spec.design == "crossover":
                estimates = [paired_difference(y[arm, rows], y[c, rows], alpha=spec.analysis.alpha)]
            else:
                sub = pool.cohort.take(rows)
                treated = allocate(strata_labels(sub, allocation.strata), allocation, rng) == 1
                obs = np.where(treated, y[arm, rows], y[c, rows])
                prog = {k: v[rows] for k, v in pool.prognostic.items()}
                covs = {m: method_covariates(spec, m, endpoint, sub, prog) for m in methods}
                estimates = compare(spec, obs, treated, covs)
            for e in estimates:
                rej[e.method][s, r] = e.p_value < spec.analysis.alpha
                est[e.method][s, r] = e.estimate
    return {m: (rej[m], est[m]) for m in methods}


def _fisher_lower(rho: float, n: int) -> float:
    if not -1 < rho < 1 or n < 4:
        return math.nan
    return math.tanh(math.atanh(rho) - 1.959963984540054 / math.sqrt(n - 3))


def power_study(spec: TrialSpec, runner: Runner | None = None) -> list[PowerStudy]:
    """Power curves for each arm against the control on the primary endpoint (see the module docstring)."""
    sim = simulator_for(spec, runner)
    pool = simulate_trial(
        spec, size=spec.power.pool, stream=POOL_POPULATION, offset=POOL_OFFSET, potential=True, simulator=sim
    )
    p = spec.power
    if pool.cohort.size < max(p.sizes):
        raise ValidationError(
            f"{spec.source}: the pool enrolled {pool.cohort.size} of {p.pool} screened patients, fewer than the "
            f"largest trial ({max(p.sizes)}); raise power.pool"
        )
    c, endpoint = spec.control, spec.primary
    y = pool.outcomes[endpoint]
    out: list[PowerStudy] = []
    for arm in range(len(spec.arms)):
        if arm == c:
            continue
        draws = simulated_power(pool, arm, sizes=p.sizes, replicates=p.replicates)
        ratio = spec.allocation.ratio
        p1 = ratio[arm] / (ratio[arm] + ratio[c])
        effect = float(np.mean(y[arm] - y[c]))
        rho = rho_lower = math.nan
        if pool.prognostic:
            rho = correlation(pool.prognostic[endpoint], y[c])
            rho_lower = _fisher_lower(rho, pool.cohort.size)
        curves = []
        for method, (rej, est) in draws.items():
            if spec.design == "crossover":
                variance = float(np.var(y[arm] - y[c], ddof=1))
                k = -1  # paired t: n - 1 degrees of freedom
            else:
                x, _ = method_covariates(spec, method, endpoint, pool.cohort, pool.prognostic)
                variance = ancova_variance(y[c], y[arm], x, x, p1=p1)
                k = 0 if x is None else x.shape[1]
            conservative = None
            if method == "procova" and not math.isnan(rho_lower):
                # planning on the prognostic score alone at the lower 95 % bound of its correlation
                sd0, sd1 = float(np.std(y[c], ddof=1)), float(np.std(y[arm], ddof=1))
                v_cons = (sd0**2 / (1 - p1) + sd1**2 / p1) * (1 - max(rho_lower, 0.0) ** 2)
                conservative = analytic_sample_size(
                    effect, v_cons, power=p.target_power, alpha=spec.analysis.alpha, n_covariates=1
                )
            mc = np.sqrt(rej.mean(axis=1) * (1 - rej.mean(axis=1)) / rej.shape[1])
            curves.append(
                PowerCurve(
                    method=method,
                    sizes=p.sizes,
                    simulated=tuple(float(v) for v in rej.mean(axis=1)),
                    simulated_se=tuple(float(v) for v in mc),
                    estimate_mean=tuple(float(v) for v in est.mean(axis=1)),
                    estimate_sd=tuple(float(v) for v in est.std(axis=1, ddof=1)),
                    analytic=tuple(
                        analytic_power(effect, variance, n, alpha=spec.analysis.alpha, n_covariates=k) for n in p.sizes
                    ),
                    variance=variance,
                    sample_size=analytic_sample_size(
                        effect, variance, power=p.target_power, alpha=spec.analysis.alpha, n_covariates=k
                    ),
                    sample_size_conservative=conservative,
                )
            )
        check = _full_simulation_check(spec, sim, pool, arm, draws) if p.full_simulation_check else {}
        out.append(
            PowerStudy(
                endpoint=endpoint,
                arm=spec.arms[arm].name,
                control=spec.arms[c].name,
                effect=effect,
                curves=tuple(curves),
                pool_size=pool.cohort.size,
                rho=rho,
                rho_lower=rho_lower,
                check=check,
            )
        )
    return out


def _full_simulation_check(
    spec: TrialSpec, sim: Simulator, pool: TrialData, arm: int, draws: dict[str, tuple[FloatArray, FloatArray]]
) -> dict[str, float]:
    """Fully simulated trials of the smallest size (two arms) beside the pool's draws of that size.

    Each trial screens new patients (its own population stream) until the smallest size is enrolled.
    """
    n = spec.power.sizes[0]
    if len(spec.arms) == 2:
        check_spec = replace(spec, secondary=())
    else:  # a two-arm spec and its own simulator (arm indices change)
        check_spec = replace(
            spec,
            arms=(spec.arms[spec.control], spec.arms[arm]),
            control=0,
            allocation=_two_arm_allocation(spec, arm),
            secondary=(),
        )
        sim = simulator_for(check_spec, getattr(sim, "runner", None))
    enrolled = next(f.remaining for f in pool.flow if f.stage == "enrolled")
    enrolled_fraction = enrolled / pool.flow[0].remaining
    screen = math.ceil(n / max(enrolled_fraction, 1e-3) * 1.5) + 8
    if spec.power.full_simulation_check * screen >= 1 << 22:
        raise ValidationError(f"{spec.source}: power.full_simulation_check screens more than 4,194,304 patients")
    rejected: dict[str, list[float]] = {}
    estimates: dict[str, list[float]] = {}
    for r in range(spec.power.full_simulation_check):
        data = simulate_trial(
            check_spec,
            size=screen,
            enrol=n,
            stream=CHECK_POPULATION + r,
            offset=CHECK_OFFSET + r * screen,
            simulator=sim,
        )
        for e in analyse(data)[0].estimates:
            rejected.setdefault(e.method, []).append(float(e.p_value < spec.analysis.alpha))
            estimates.setdefault(e.method, []).append(e.estimate)
    out: dict[str, float] = {"size": float(n), "trials": float(spec.power.full_simulation_check)}
    for m, values in rejected.items():
        out[f"{m}_power_full"] = float(np.mean(values))
        out[f"{m}_estimate_sd_full"] = float(np.std(estimates[m], ddof=1))
        out[f"{m}_power_pool"] = float(draws[m][0][0].mean())
        out[f"{m}_estimate_sd_pool"] = float(draws[m][1][0].std(ddof=1))
    return out
