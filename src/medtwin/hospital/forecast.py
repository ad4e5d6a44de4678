"""Occupancy forecasts: P10/P50/P90 bands and the probability that a unit is full, hour by hour.

A forecast starts from the current census (patients in each unit and how long they have been
there; their remaining stays are drawn from the length-of-stay distribution conditioned on the time
already spent) at a wall-clock time, and runs the model forward over 24-72 h in independent
replications. Percentiles are taken across replications at each hour (``numpy.percentile``, linear
interpolation); "full" means occupied >= staffed beds (ED: all treatment spaces in use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from medtwin.errors import ValidationError
from medtwin.hospital.config import HospitalConfig
from medtwin.hospital.replications import ReplicationJob, Runner, SequentialRunner, make_jobs
from medtwin.hospital.simulation import CensusEntry, Engine

__all__ = ["ForecastError", "OccupancyForecast", "forecast_occupancy", "hour_of_week"]

FloatArray = npt.NDArray[np.float64]


class ForecastError(ValidationError):
    """Forecast inputs that cannot be used (naive datetime, horizon out of range, ...)."""


def hour_of_week(when: datetime) -> float:
    """Hours since Monday 00:00 UTC of the week containing *when* (timezone-aware)."""
    if when.tzinfo is None:
        raise ForecastError(f"datetime {when.isoformat()} is naive; give a timezone (UTC)")
    t = when.astimezone(UTC)
    return t.weekday() * 24 + t.hour + t.minute / 60 + t.second / 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class OccupancyForecast:
    """Occupancy bands by unit (rows, ``unit_names`` order) and hour (columns; hour h ends at
    ``start + h + 1`` hours)."""

    unit_names: tuple[str, ...]
    start: datetime
    beds: tuple[int, ...]
    p10: FloatArray
    p50: FloatArray
    p90: FloatArray
    mean: FloatArray
    p_full: FloatArray
    n_reps: int
    seed: int

    @property
    def times(self) -> list[datetime]:
        """The end of each forecast hour."""
        return [self.start + timedelta(hours=h + 1) for h in range(self.p50.shape[1])]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "start": self.start.isoformat(),
            "n_reps": self.n_reps,
            "seed": self.seed,
            "times": [t.isoformat() for t in self.times],
            "units": {
                name: {
                    "beds": self.beds[u],
                    "p10": self.p10[u].tolist(),
                    "p50": self.p50[u].tolist(),
                    "p90": self.p90[u].tolist(),
                    "mean": self.mean[u].tolist(),
                    "p_full": self.p_full[u].tolist(),
                }
                for u, name in enumerate(self.unit_names)
            },
        }


def _occupancy_job(job: ReplicationJob) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    result = job.run()
    return result.occupancy, result.capacity


def forecast_occupancy(
    config: HospitalConfig,
    *,
    start: datetime,
    horizon_h: int = 72,
    census: Sequence[CensusEntry] = (),
    n_reps: int = 100,
    seed: int = 0,
    runner: Runner | None = None,
    engine: Engine = "calendar",
) -> OccupancyForecast:
    """Forecast occupancy of every unit for *horizon_h* hours from *start* and *census* on *engine*
    (``"calendar"``, default, or ``"simpy"``: identical results)."""
    if not 1 <= horizon_h <= 24 * 28:
        raise ForecastError(f"forecast horizon must be 1-672 h, got {horizon_h}")
    if n_reps < 2:
        raise ForecastError(f"a forecast needs at least 2 replications, got {n_reps}")
    jobs = make_jobs(
        config,
        n_reps=n_reps,
        seed=seed,
        horizon_h=float(horizon_h),
        start_how_h=hour_of_week(start),
        census=census,
        engine=engine,
    )
    out = (runner or SequentialRunner()).map(_occupancy_job, jobs)
    occ = np.stack([o for o, _ in out]).astype(np.float64)  # (reps, units, hours)
    cap = np.stack([c for _, c in out])
    p10, p50, p90 = np.percentile(occ, [10, 50, 90], axis=0)
    return OccupancyForecast(
        unit_names=config.unit_names,
        start=start.astimezone(UTC),
        beds=(config.ed.spaces, *(u.beds for u in config.units)),
        p10=p10,
        p50=p50,
        p90=p90,
        mean=occ.mean(axis=0),
        p_full=np.mean(occ >= cap, axis=0),
        n_reps=n_reps,
        seed=seed,
    )
