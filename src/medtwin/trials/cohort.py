"""The virtual cohort of a trial: screened patients, eligibility, the CONSORT-style flow, and randomisation.

A :class:`Screened` cohort carries, for each patient, an id, its screening index (which seeds everything random
about that patient), a group, the variables eligibility and strata refer to (``parameter:BW``,
``covariate:CRCL``, ``baseline:tir_pct``, ...) and the domain payload a simulator needs. Each criterion removes
patients and records a :class:`FlowStep`, so the report can say how many were screened, excluded and why,
allocated and analysed. Allocation is by permuted blocks, over the whole cohort or within strata, seeded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray
from medtwin.sim.runners import Runner
from medtwin.trials.protocol import AllocationSpec, Criterion

__all__ = ["FlowStep", "Screened", "allocate", "apply_criteria", "map_chunks", "strata_labels"]

IntArray = npt.NDArray[np.int64]
J = TypeVar("J")


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowStep:
    """One box of the CONSORT-style flow: a stage, how many remain, and how many left it and why."""

    stage: str
    remaining: int
    removed: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON."""
        return {"stage": self.stage, "remaining": self.remaining, "removed": self.removed, "reason": self.reason}


@dataclass(frozen=True, slots=True, kw_only=True)
class Screened:
    """Screened virtual patients (arrays indexed like :attr:`ids`) and the payload their simulator needs."""

    ids: tuple[str, ...]
    index: IntArray
    groups: tuple[str, ...]
    variables: dict[str, FloatArray]
    payload: Any
    subset_payload: Callable[[Any, IntArray], Any] = field(repr=False)

    @property
    def size(self) -> int:
        """Number of patients."""
        return len(self.ids)

    def take(self, rows: IntArray) -> Screened:
        """The patients at *rows* (in that order)."""
        r = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            ids=tuple(self.ids[i] for i in r),
            index=self.index[r],
            groups=tuple(self.groups[i] for i in r),
            variables={k: v[r] for k, v in self.variables.items()},
            payload=self.subset_payload(self.payload, r),
        )

    def with_variables(self, extra: dict[str, FloatArray]) -> Screened:
        """A copy with more variables (e.g. baseline outcomes after the run-in)."""
        return replace(self, variables={**self.variables, **extra})

    def value(self, variable: str) -> FloatArray:
        """Values of *variable* (``group`` is coded by its order of first appearance)."""
        if variable == "group":
            order = {g: k for k, g in enumerate(dict.fromkeys(self.groups))}
            return np.array([order[g] for g in self.groups], dtype=np.float64)
        if variable not in self.variables:
            raise ValidationError(f"variable {variable!r} is not known for these patients")
        return self.variables[variable]


def apply_criteria(
    cohort: Screened, criteria: Sequence[Criterion], flow: list[FlowStep], *, baseline: bool
) -> Screened:
    """Remove patients failing *criteria* (only the baseline ones, or only the others), recording the flow."""
    for c in criteria:
        if c.variable.startswith("baseline:") != baseline:
            continue
        v = cohort.value(c.variable)
        within = (v >= c.low) & (v <= c.high)
        keep = within if c.action == "include" else ~within
        keep &= np.isfinite(v)
        removed = int((~keep).sum())
        cohort = cohort.take(np.flatnonzero(keep))
        flow.append(
            FlowStep(
                stage=f"{c.action}: {c.describe()}",
                remaining=cohort.size,
                removed=removed,
                reason=("excluded: " if c.action == "exclude" else "not eligible: ") + c.describe(),
            )
        )
    return cohort


def strata_labels(cohort: Screened, strata: Sequence[tuple[str, tuple[float, ...]]]) -> IntArray:
    """One stratum number per patient: the combination of each variable's band (``group``: its value)."""
    label = np.zeros(cohort.size, dtype=np.int64)
    for variable, cuts in strata:
        v = cohort.value(variable)
        band = v.astype(np.int64) if variable == "group" else np.searchsorted(np.asarray(cuts), v, side="right")
        label = label * (len(cuts) + 1 if variable != "group" else int(v.max()) + 1) + band
    return label


def allocate(labels: IntArray, spec: AllocationSpec, rng: np.random.Generator) -> IntArray:
    """Arm index per patient by permuted blocks within each stratum (in enrolment order).

    A block holds each arm ``ratio[a]`` times per ``sum(ratio)`` places; ``block_size = 0`` means one block
    per stratum, i.e. complete randomisation with the exact ratio (up to rounding of the last block).
    """
    ratio = np.asarray(spec.ratio, dtype=np.int64)
    unit = np.repeat(np.arange(ratio.size), ratio)
    out = np.empty(labels.size, dtype=np.int64)
    for s in np.unique(labels):
        rows = np.flatnonzero(labels == s)
        size = spec.block_size or math.ceil(rows.size / unit.size) * unit.size
        arms: list[IntArray] = []
        while sum(a.size for a in arms) < rows.size:
            block = np.tile(unit, size // unit.size)
            arms.append(rng.permutation(block))
        out[rows] = np.concatenate(arms)[: rows.size]
    return out


def map_chunks(
    runner: Runner, fn: Callable[[J], dict[str, FloatArray]], size: int, chunk: int, job: Callable[[IntArray], J]
) -> dict[str, FloatArray]:
    """Run *fn* on *runner* over jobs of at most *chunk* patients (``job(rows)`` builds the job of *rows*) and join
    the chunks' ``{endpoint: values}`` in patient order."""
    if size == 0:
        return {}
    jobs = [job(np.arange(a, min(a + chunk, size))) for a in range(0, size, chunk)]
    parts = runner.map(fn, jobs)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
