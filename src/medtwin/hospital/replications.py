"""Replications of the hospital simulation, sequential or in parallel on Dask.

Replication *r* of a run with seed *s* uses ``SeedSequence(s, spawn_key=(r,))`` and nothing else, so
the results do not depend on where or in what order replications run: a :class:`DaskRunner` (an
in-process ``LocalCluster`` by default, or a scheduler address for a real cluster) returns exactly
what :class:`SequentialRunner` returns. The runners themselves live in :mod:`medtwin.sim.runners`
(virtual trials use them too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medtwin.hospital.config import HospitalConfig
from medtwin.hospital.simulation import ENGINES, CensusEntry, Engine, ReplicationResult, SimulationError, simulate
from medtwin.sim import runners as sim_runners
from medtwin.sim.runners import Runner, SequentialRunner

__all__ = [
    "DaskRunner",
    "ReplicationJob",
    "Runner",
    "SequentialRunner",
    "make_jobs",
    "run_replications",
]


class DaskRunner(sim_runners.DaskRunner):
    """:class:`medtwin.sim.runners.DaskRunner` that imports the hospital model on every worker at start-up.

    See the base class for the arguments; a bad *chunks_per_worker* is a :class:`SimulationError`.
    """

    error = SimulationError
    default_preload = ("medtwin.hospital",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationJob:
    """Everything one replication needs (picklable, sent to workers)."""

    config: HospitalConfig
    seed: int
    replication: int
    horizon_h: float
    warmup_h: float = 0.0
    start_how_h: float = 0.0
    census: tuple[CensusEntry, ...] = ()
    engine: Engine = "calendar"

    def run(self) -> ReplicationResult:
        """Run this replication."""
        return simulate(
            self.config,
            seed=self.seed,
            replication=self.replication,
            horizon_h=self.horizon_h,
            warmup_h=self.warmup_h,
            start_how_h=self.start_how_h,
            census=self.census,
            engine=self.engine,
        )


def _run_job(job: ReplicationJob) -> ReplicationResult:
    return job.run()


def make_jobs(
    config: HospitalConfig,
    *,
    n_reps: int,
    seed: int,
    horizon_h: float,
    warmup_h: float = 0.0,
    start_how_h: float = 0.0,
    census: Sequence[CensusEntry] = (),
    engine: Engine = "calendar",
) -> list[ReplicationJob]:
    """The jobs of replications 0 .. *n_reps* - 1 on *engine* (``"calendar"`` or ``"simpy"``)."""
    if engine not in ENGINES:
        raise SimulationError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return [
        ReplicationJob(
            config=config,
            seed=seed,
            replication=r,
            horizon_h=horizon_h,
            warmup_h=warmup_h,
            start_how_h=start_how_h,
            census=tuple(census),
            engine=engine,
        )
        for r in range(n_reps)
    ]


def run_replications(
    config: HospitalConfig,
    *,
    n_reps: int,
    seed: int,
    horizon_h: float,
    warmup_h: float = 0.0,
    start_how_h: float = 0.0,
    census: Sequence[CensusEntry] = (),
    runner: Runner | None = None,
    engine: Engine = "calendar",
) -> list[ReplicationResult]:
    """Run *n_reps* replications on *runner* (sequential by default) and *engine*; results in
    replication order."""
    jobs = make_jobs(
        config,
        n_reps=n_reps,
        seed=seed,
        horizon_h=horizon_h,
        warmup_h=warmup_h,
        start_how_h=start_how_h,
        census=census,
        engine=engine,
    )
    return (runner or SequentialRunner()).map(_run_job, jobs)
