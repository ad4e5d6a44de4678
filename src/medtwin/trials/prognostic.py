"""Prognostic models: a participant's expected outcome under the control arm, predicted from baseline data.

PROCOVA (Schuler et al. 2021, doi:10.1515/ijb-2021-0072) adjusts the trial analysis for this prediction, the
*prognostic score*. Here the prediction comes from a digital twin of each participant, built from what is known
at baseline. The interface is small on purpose (:class:`PrognosticModel`: baseline data in, one predicted control
outcome per participant and endpoint out), so the twin behind it can change without touching the analysis:

* :class:`MatchedTwin` works from a CGM run-in alone, so it serves real participants (the hybrid mode): a
  reference library of virtual patients, each simulated through the same run-in and then the control arm, is
  searched for the *k* patients whose run-in CGM summary (mean, CV, time in ranges, LBGI, HBGI; standardized by
  the library's SD) is closest; the prediction is their mean control outcome. It identifies a twin by
  similarity, not by fitting.
* Known-parameter twins (``prognostic = "known-parameters"`` in a spec, :mod:`medtwin.trials.glucose_trial`)
  simulate the virtual patient's own parameters under the control arm with fresh meals and sensor noise: the
  twin a perfect identification would give, an upper bound of what identification can reach.

When the personalized glucose twin (parameters identified from a participant's run-in CGM, insulin and meals;
issue 17) lands, it becomes a third implementation of the same interface: identify each participant's
parameters from the run-in, simulate them under the control arm as the known-parameter twin does, and return
the mean endpoint. Nothing in the analysis, reports or CLI changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray

__all__ = ["FEATURES", "BaselineData", "MatchedTwin", "PrognosticModel"]

FEATURES = ("mean_mg_dl", "cv_pct", "tir_pct", "tbr70_pct", "tbr54_pct", "tar180_pct", "tar250_pct", "lbgi", "hbgi")
"""Run-in CGM summaries a matched twin compares (names as in ``GLUCOSE_ENDPOINTS``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselineData:
    """What is known of each participant at randomisation: ids and run-in summaries ``{feature: (n,)}``."""

    ids: tuple[str, ...]
    run_in: Mapping[str, FloatArray]

    def matrix(self, features: Sequence[str]) -> FloatArray:
        """The run-in summaries as a matrix ``(n, len(features))``."""
        missing = [f for f in features if f not in self.run_in]
        if missing:
            raise ValidationError(f"baseline data lack run-in summaries {missing}")
        return np.column_stack([np.asarray(self.run_in[f], dtype=np.float64) for f in features])


class PrognosticModel(Protocol):
    """Predicts each participant's outcome under the control arm from :class:`BaselineData`."""

    def predict(self, baseline: BaselineData, endpoints: Sequence[str]) -> dict[str, FloatArray]:
        """``{endpoint: (n,)}`` predicted control outcomes."""
        ...


class MatchedTwin:
    """k-nearest-neighbour twins from a simulated reference library (see the module docstring)."""

    def __init__(
        self,
        library_run_in: Mapping[str, FloatArray],
        library_control_outcomes: Mapping[str, FloatArray],
        *,
        neighbours: int = 20,
        features: Sequence[str] = FEATURES,
    ) -> None:
        self.features = tuple(features)
        self.library = BaselineData(ids=(), run_in=library_run_in).matrix(self.features)
        self.outcomes = {k: np.asarray(v, dtype=np.float64) for k, v in library_control_outcomes.items()}
        n = self.library.shape[0]
        if any(v.shape != (n,) for v in self.outcomes.values()):
            raise ValidationError("matched twin: library outcomes must have one value per library patient")
        if not 1 <= neighbours <= n:
            raise ValidationError(f"matched twin: neighbours must be in [1, {n}] (library size), got {neighbours}")
        self.neighbours = neighbours
        self.centre = self.library.mean(axis=0)
        scale = self.library.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)

    def neighbours_of(self, baseline: BaselineData) -> np.ndarray:
        """Library rows of each participant's *k* nearest twins ``(n, k)``."""
        x = (baseline.matrix(self.features) - self.centre) / self.scale
        lib = (self.library - self.centre) / self.scale
        out = np.empty((x.shape[0], self.neighbours), dtype=np.int64)
        for start in range(0, x.shape[0], 1024):  # bounded memory: 1,024 x library distances at a time
            block = x[start : start + 1024]
            d = ((block[:, None, :] - lib[None, :, :]) ** 2).sum(axis=2)
            out[start : start + block.shape[0]] = np.argsort(d, axis=1, kind="stable")[:, : self.neighbours]
        return out

    def predict(self, baseline: BaselineData, endpoints: Sequence[str]) -> dict[str, FloatArray]:
        """Mean control outcome of each participant's nearest library twins."""
        rows = self.neighbours_of(baseline)
        missing = [e for e in endpoints if e not in self.outcomes]
        if missing:
            raise ValidationError(f"matched twin: the library has no control outcomes for {missing}")
        return {e: np.asarray(self.outcomes[e][rows].mean(axis=1), dtype=np.float64) for e in endpoints}
