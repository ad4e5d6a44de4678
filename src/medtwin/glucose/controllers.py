"""Insulin controllers that act on a whole batch at once: observation arrays in, insulin rate arrays out.

:class:`BasalBolusController` is simglucose 0.2.11's ``BBController``: basal u2ss * BW / 6000 U/min; when the
patient announced carbohydrate in the last sample period, a meal bolus CHO / CR plus a correction
(CGM - target) / CF if CGM > 150 mg/dL, delivered over one sample period (CR, CF from the Quest table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray

__all__ = ["BasalBolusController", "BasalOnlyController", "Controller", "ControllerAction", "ControllerObservation"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerObservation:
    """What a controller sees after each sample period, one entry per batch member."""

    time_min: float
    cgm_mg_dl: FloatArray
    meal_g: FloatArray
    """Carbohydrate announced during the last sample period (g); CGM is its average reading."""
    sample_time_min: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ControllerAction:
    """Requested basal and bolus rates (U/min) for the next sample period, one entry per member."""

    basal_u_min: FloatArray
    bolus_u_min: FloatArray


@runtime_checkable
class Controller(Protocol):
    """A batched insulin controller."""

    def reset(self) -> None:
        """Forget any internal state before a new run."""

    def act(self, obs: ControllerObservation) -> ControllerAction:
        """Insulin rates for the next sample period."""


class BasalOnlyController:
    """Delivers a fixed basal rate (U/min) per member and never boluses."""

    def __init__(self, basal_u_min: FloatArray) -> None:
        self.basal_u_min = np.asarray(basal_u_min, dtype=np.float64)

    def reset(self) -> None:
        """Nothing to reset."""

    def act(self, obs: ControllerObservation) -> ControllerAction:
        """Basal only."""
        return ControllerAction(basal_u_min=self.basal_u_min, bolus_u_min=np.zeros_like(self.basal_u_min))


class BasalBolusController:
    """simglucose's basal-bolus controller for a batch (per-member basal, CR and CF)."""

    def __init__(
        self,
        *,
        basal_u_min: FloatArray,
        cr_g_per_u: FloatArray,
        cf_mg_dl_per_u: FloatArray,
        target_mg_dl: float = 140.0,
        correction_threshold_mg_dl: float = 150.0,
    ) -> None:
        self.basal_u_min = np.asarray(basal_u_min, dtype=np.float64)
        self.cr_g_per_u = np.asarray(cr_g_per_u, dtype=np.float64)
        self.cf_mg_dl_per_u = np.asarray(cf_mg_dl_per_u, dtype=np.float64)
        if np.any(self.cr_g_per_u <= 0) or np.any(self.cf_mg_dl_per_u <= 0):
            raise ValidationError("BasalBolusController: CR and CF must be > 0 for every member")
        self.target_mg_dl = target_mg_dl
        self.correction_threshold_mg_dl = correction_threshold_mg_dl

    def reset(self) -> None:
        """Stateless: nothing to reset."""

    def act(self, obs: ControllerObservation) -> ControllerAction:
        """Meal bolus plus correction when carbohydrate was announced, basal always."""
        carbs_g = obs.meal_g
        cgm = obs.cgm_mg_dl
        correction = np.where(
            cgm > self.correction_threshold_mg_dl, (cgm - self.target_mg_dl) / self.cf_mg_dl_per_u, 0.0
        )
        bolus_u = np.where(obs.meal_g > 0, carbs_g / self.cr_g_per_u + correction, 0.0)
        return ControllerAction(basal_u_min=self.basal_u_min, bolus_u_min=bolus_u / obs.sample_time_min)
