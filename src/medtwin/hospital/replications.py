"""Replications of the hospital simulation, sequential or in parallel on Dask.

Replication *r* of a run with seed *s* uses ``SeedSequence(s, spawn_key=(r,))`` and nothing else, so
the results do not depend on where or in what order replications run: a :class:`DaskRunner` (an
in-process ``LocalCluster`` by default, or a scheduler address for a real cluster) returns exactly
what :class:`SequentialRunner` returns.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

from medtwin.hospital.config import HospitalConfig
from medtwin.hospital.simulation import ENGINES, CensusEntry, Engine, ReplicationResult, SimulationError, simulate

__all__ = [
    "DaskRunner",
    "ReplicationJob",
    "Runner",
    "SequentialRunner",
    "make_jobs",
    "run_replications",
]

T = TypeVar("T")
R = TypeVar("R")


class Runner(Protocol):
    """Something that maps a picklable function over jobs and returns results in job order."""

    def map(self, fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
        """Apply *fn* to every job; results in the order of *jobs*."""
        ...


def _map_chunk(fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
    """Run one chunk of jobs on a worker."""
    return [fn(job) for job in jobs]


class SequentialRunner:
    """Runs jobs one after another in this process."""

    def map(self, fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
        """Apply *fn* to every job in order."""
        return [fn(job) for job in jobs]


class DaskRunner:
    """Runs jobs on Dask: a local cluster of *n_workers* by default, or the scheduler at *address*.

    Use as a context manager (or call :meth:`close`); the cluster starts lazily on first use.
    *processes* chooses worker processes (real parallelism for this pure-Python simulation) or
    threads (cheaper start-up, but the GIL serializes the work). Jobs go to the workers in chunks of
    about ``len(jobs) / (workers x chunks_per_worker)``; a local cluster runs with Dask's worker
    profiler off unless *worker_profile* (it costs CPU on every worker).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int = 2,
        processes: bool = True,
        threads_per_worker: int = 1,
        chunks_per_worker: int = 4,
        worker_profile: bool = False,
    ) -> None:
        if chunks_per_worker < 1:
            raise SimulationError(f"DaskRunner: chunks_per_worker must be >= 1, got {chunks_per_worker}")
        self.chunks_per_worker = chunks_per_worker
        self.worker_profile = worker_profile
        self.address = address
        self.n_workers = n_workers
        self.processes = processes
        self.threads_per_worker = threads_per_worker
        self._cluster: Any = None
        self._client: Any = None

    def _ensure(self) -> Any:
        if self._client is None:
            from distributed import Client, LocalCluster

            if self.address is None:
                import dask

                # Dask's statistical profiler samples each worker's stack every 10 ms, for a profile
                # nobody reads here (measured: about 2 % of worker CPU, within the noise)
                with dask.config.set({"distributed.worker.profile.enabled": self.worker_profile}):
                    self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
                        n_workers=self.n_workers,
                        processes=self.processes,
                        threads_per_worker=self.threads_per_worker,
                        dashboard_address=None,
                    )
                self._client = Client(self._cluster)  # type: ignore[no-untyped-call]
            else:
                self._client = Client(self.address)  # type: ignore[no-untyped-call]
            # import the model on every worker now, so the first replications do not pay for it
            self._client.run(importlib.import_module, "medtwin.hospital")
        return self._client

    def map(self, fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
        """Apply *fn* to every job on the cluster; results in the order of *jobs*.

        Jobs travel in chunks (about ``chunks_per_worker`` per worker) so that Dask's per-task
        overhead is paid a few times per worker rather than once per replication.
        """
        client = self._ensure()
        jobs = list(jobs)
        if not jobs:
            return []
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or self.n_workers)
        n_chunks = min(len(jobs), n_workers * self.chunks_per_worker)
        bounds = [round(k * len(jobs) / n_chunks) for k in range(n_chunks + 1)]
        chunks = [jobs[a:b] for a, b in itertools.pairwise(bounds)]
        futures = client.map(_map_chunk, [fn] * len(chunks), chunks, pure=False)
        parts: list[list[R]] = client.gather(futures)
        return [r for part in parts for r in part]

    def worker_cpu_seconds(self) -> float:
        """Total CPU time (s) the workers' processes have used so far (for benchmarks)."""
        import time

        client = self._ensure()
        per_worker: dict[str, float] = client.run(time.process_time)
        return float(sum(per_worker.values()))

    def close(self) -> None:
        """Shut down the client and the local cluster (if this runner started one)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> DaskRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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
