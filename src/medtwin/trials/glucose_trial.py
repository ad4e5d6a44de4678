"""The glucose side of a virtual trial: screening, run-in, arms and twins of type 1 diabetes patients.

Populations are the 30 original UVA/Padova subjects or draws from the fitted joint distribution
(:mod:`medtwin.trials.virtual_patients`); group sizes follow the spec's weights exactly (largest remainder) and
the order of patients is shuffled with the population's seed. Every period (run-in, trial, twin replicate) is cut
into chunks of ``execution.chunk_size`` patients and mapped over a runner (:mod:`medtwin.sim.runners`), one job
per chunk and arm; see :mod:`medtwin.trials.glucose_arms` for why that cannot change a number.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from medtwin.errors import ValidationError
from medtwin.glucose.patients import Cohort, load_cohort
from medtwin.sim.model import FloatArray
from medtwin.sim.runners import Runner, SequentialRunner
from medtwin.trials.cohort import FlowStep, IntArray, Screened, map_chunks
from medtwin.trials.glucose_arms import (
    STREAM_RUN_IN,
    STREAM_TRIAL,
    STREAM_TWIN,
    GlucoseJob,
    run_glucose_job,
)
from medtwin.trials.prognostic import FEATURES, BaselineData, MatchedTwin
from medtwin.trials.protocol import GlucoseArm, GlucoseScenario, TrialSpec
from medtwin.trials.virtual_patients import FREE_PARAMETERS, sample_glucose_patients, titrate_therapy

__all__ = ["GlucoseSimulator", "cohort_rows", "group_counts"]

LIBRARY_POPULATION = 101  # the matched twins' library: its own population stream and screening indices
LIBRARY_OFFSET = 1 << 22


def cohort_rows(cohort: Cohort, rows: IntArray) -> Cohort:
    """The patients of *cohort* at *rows*."""
    return replace(
        cohort,
        names=tuple(cohort.names[i] for i in rows),
        params={k: v[rows] for k, v in cohort.params.items()},
        x0=cohort.x0[rows],
        cr_g_per_u=cohort.cr_g_per_u[rows],
        cf_mg_dl_per_u=cohort.cf_mg_dl_per_u[rows],
    )


def group_counts(size: int, weights: dict[str, float]) -> dict[str, int]:
    """Patients per group: *size* split by *weights* with the largest-remainder rule (exact total)."""
    total = sum(weights.values())
    share = {g: size * w / total for g, w in weights.items()}
    counts = {g: int(s) for g, s in share.items()}
    for g in sorted(share, key=lambda k: counts[k] - share[k])[: size - sum(counts.values())]:
        counts[g] += 1
    return counts


def _variables(cohort: Cohort) -> dict[str, FloatArray]:
    out = {f"parameter:{k}": cohort.params[k] for k in FREE_PARAMETERS if k in cohort.params}
    out["parameter:CR"] = cohort.cr_g_per_u
    out["parameter:CF"] = cohort.cf_mg_dl_per_u
    return out


class GlucoseSimulator:
    """Screens, runs in, treats and twins glucose patients for one spec on one runner."""

    def __init__(self, spec: TrialSpec, runner: Runner | None = None) -> None:
        if not isinstance(spec.scenario, GlucoseScenario):
            raise ValidationError("GlucoseSimulator: the spec is not a glucose trial")
        self.spec = spec
        self.scenario: GlucoseScenario = spec.scenario
        self.runner: Runner = runner or SequentialRunner()
        self._library: MatchedTwin | None = None

    def screen(self, size: int, *, stream: int, offset: int) -> tuple[Screened, list[FlowStep]]:
        """*size* patients of the spec's population; screening indices start at *offset* (seeds)."""
        pop = self.spec.population
        rng = np.random.default_rng(np.random.SeedSequence(self.spec.seed, spawn_key=(stream,)))
        flow: list[FlowStep] = []
        if pop.source == "original":
            reps = -(-size // len(pop.patients))
            cohort = load_cohort(list((pop.patients * reps)[:size]))
            groups = tuple(n.split("#")[0] for n in cohort.names)
            # a pool larger than the list repeats patients (with their own meals and noise): ids stay unique
            k = len(pop.patients)
            ids = tuple(n if i < k else f"{n} (repeat {i // k})" for i, n in enumerate(cohort.names))
        else:
            counts = group_counts(size, dict(pop.groups))
            labels = [g for g, c in counts.items() for _ in range(c)]
            order = rng.permutation(len(labels))
            drawn = sample_glucose_patients([labels[i] for i in order], rng=rng, prefix=f"vp{offset >> 22}")
            flow.append(
                FlowStep(
                    stage="sampled from the fitted population",
                    remaining=size,
                    removed=0,
                    reason=f"{drawn.rejected} draws with a non-physiological basal state redrawn",
                )
            )
            cohort, groups, ids = drawn.cohort, drawn.groups, drawn.cohort.names
            if pop.therapy == "titrated":
                cohort = self._titrated(cohort)
                flow.append(
                    FlowStep(
                        stage="therapy titrated",
                        remaining=size,
                        reason="CR and CF x the factor minimizing LBGI + HBGI of a standard day (docs/trials.md)",
                    )
                )
        index = offset + np.arange(size, dtype=np.int64)
        screened = Screened(
            ids=ids,
            index=index,
            groups=groups,
            variables=_variables(cohort),
            payload=cohort,
            subset_payload=cohort_rows,
        )
        return screened, flow

    def _titrated(self, cohort: Cohort) -> Cohort:
        chunk = self.spec.chunk_size
        jobs = [cohort_rows(cohort, np.arange(a, min(a + chunk, cohort.size))) for a in range(0, cohort.size, chunk)]
        factor = np.concatenate(self.runner.map(titrate_therapy, jobs))
        return replace(cohort, cr_g_per_u=cohort.cr_g_per_u * factor, cf_mg_dl_per_u=cohort.cf_mg_dl_per_u * factor)

    def period(self, patients: Screened, arm: GlucoseArm, *, days: int, stream: int) -> dict[str, FloatArray]:
        """Endpoint values ``{endpoint: (n,)}`` of *patients* under *arm* for *days* in *stream*."""

        def job(rows: IntArray) -> GlucoseJob:
            return GlucoseJob(
                cohort=cohort_rows(patients.payload, rows),
                indices=patients.index[rows],
                arm=arm,
                scenario=self.scenario,
                days=days,
                seed=self.spec.seed,
                stream=stream,
            )

        return map_chunks(self.runner, run_glucose_job, patients.size, self.spec.chunk_size, job)

    @property
    def control(self) -> GlucoseArm:
        """The control arm."""
        arm = self.spec.arms[self.spec.control]
        assert isinstance(arm, GlucoseArm)
        return arm

    def baseline(self, patients: Screened) -> dict[str, FloatArray]:
        """Run-in summaries ``{"baseline:<endpoint>": (n,)}`` under the control arm (empty without a run-in)."""
        if self.scenario.run_in_days == 0:
            return {}
        out = self.period(patients, self.control, days=self.scenario.run_in_days, stream=STREAM_RUN_IN)
        return {f"baseline:{k}": v for k, v in out.items()}

    def outcomes(self, patients: Screened, arm_index: int) -> dict[str, FloatArray]:
        """Trial-period endpoints of *patients* under arm *arm_index*."""
        arm = self.spec.arms[arm_index]
        assert isinstance(arm, GlucoseArm)
        return self.period(patients, arm, days=self.scenario.days, stream=STREAM_TRIAL)

    def prognostic(self, patients: Screened) -> dict[str, FloatArray]:
        """Twin-predicted control outcomes ``{endpoint: (n,)}`` (empty when the spec has no prognostic model)."""
        a = self.spec.analysis
        if a.prognostic == "none" or patients.size == 0:
            return {}
        if a.prognostic == "known-parameters":
            runs = [
                self.period(patients, self.control, days=self.scenario.days, stream=STREAM_TWIN + r)
                for r in range(a.prognostic_replicates)
            ]
            return {k: np.mean([run[k] for run in runs], axis=0) for k in runs[0]}
        baseline = BaselineData(ids=patients.ids, run_in={f: patients.variables[f"baseline:{f}"] for f in FEATURES})
        return self.matched_twin().predict(baseline, self.spec.endpoints)

    def matched_twin(self) -> MatchedTwin:
        """The reference library's matched-twin model (simulated once per simulator)."""
        if self._library is None:
            a = self.spec.analysis
            library, _ = self.screen(a.library_size, stream=LIBRARY_POPULATION, offset=LIBRARY_OFFSET)
            run_in = self.baseline(library)
            control = self.outcomes(library, self.spec.control)
            self._library = MatchedTwin(
                {k.removeprefix("baseline:"): v for k, v in run_in.items()}, control, neighbours=a.neighbours
            )
        return self._library
