"""A person's glucose twin: their recorded days, the identified posterior, the live filter state and their bolus
settings, with the twin contract's verbs and a JSON snapshot.

    twin = PersonalGlucoseTwin.fit(data)                  # identify (medtwin.glucose.identify)
    twin.replay([Therapy(bolus_scale=1.3)])               # what if (medtwin.glucose.replay)
    twin.observe(at, cgm_mg_dl); twin.forecast()          # track and predict (medtwin.glucose.forecast)
    twin.advise(carbs_g=60)                               # recommend (medtwin.glucose.advise)
    blob = twin.snapshot(); PersonalGlucoseTwin.restore(blob)

A later fit on new days starts from this posterior (``refit``): its log-normal approximation is the prior.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medtwin.errors import ValidationError
from medtwin.glucose.advise import AdviceCalibration, BolusAdvice, advise_meal_bolus, calibrate_advice
from medtwin.glucose.forecast import Forecast, GlucoseForecaster
from medtwin.glucose.identify import FitSettings, Posterior, fit, update
from medtwin.glucose.replay import ReplayResult, replay
from medtwin.glucose.therapy import Therapy
from medtwin.glucose.therapy_data import TherapyData
from medtwin.glucose.twin_model import PopulationPrior
from medtwin.records import Event

__all__ = ["SNAPSHOT_VERSION", "BolusSettings", "PersonalGlucoseTwin"]

SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BolusSettings:
    """The person's bolus calculator settings: carbohydrate ratio (g/U), correction factor (mg/dL/U), target."""

    cr_g_per_u: float
    cf_mg_dl_per_u: float
    target_mg_dl: float = 110.0

    def __post_init__(self) -> None:
        if self.cr_g_per_u <= 0 or self.cf_mg_dl_per_u <= 0 or not 70 <= self.target_mg_dl <= 200:
            raise ValidationError("bolus settings: CR and CF must be > 0 and the target within 70-200 mg/dL")


class PersonalGlucoseTwin:
    """See the module docstring. *forecaster* is created from *data* on first use when not given."""

    def __init__(
        self,
        data: TherapyData,
        posterior: Posterior,
        *,
        bolus_settings: BolusSettings | None = None,
        forecaster: GlucoseForecaster | None = None,
    ) -> None:
        self.data = data
        self.posterior = posterior
        self.bolus_settings = bolus_settings
        self._forecaster = forecaster

    @classmethod
    def fit(
        cls,
        data: TherapyData,
        prior: PopulationPrior | None = None,
        *,
        settings: FitSettings = FitSettings(),
        bolus_settings: BolusSettings | None = None,
    ) -> PersonalGlucoseTwin:
        """Identify a new twin from *data* (see :func:`medtwin.glucose.identify.fit`)."""
        return cls(data, fit(data, prior, settings=settings), bolus_settings=bolus_settings)

    def refit(self, data: TherapyData, *, settings: FitSettings = FitSettings()) -> PersonalGlucoseTwin:
        """A twin identified on new days *data*, starting from this twin's posterior; the filter restarts on them."""
        return PersonalGlucoseTwin(data, update(self.posterior, data, settings=settings),
                                   bolus_settings=self.bolus_settings)  # fmt: skip

    @property
    def forecaster(self) -> GlucoseForecaster:
        """The live particle filter (brought up to the end of the recorded data on first use)."""
        if self._forecaster is None:
            self._forecaster = GlucoseForecaster.from_data(self.posterior, self.data)
        return self._forecaster

    def replay(self, therapies: Sequence[Therapy], *, draws: int = 200, seed: int = 1) -> list[ReplayResult]:
        """The recorded days under each therapy."""
        return replay(self.posterior, self.data, therapies, draws=draws, seed=seed)

    def observe(self, at: datetime, cgm_mg_dl: float) -> list[Event]:
        """Assimilate a CGM reading; returns alert events (predicted low glucose)."""
        return self.forecaster.update(at, cgm_mg_dl)

    def observe_limit(self, at: datetime, limit_mg_dl: float) -> list[Event]:
        """Assimilate a CGM's Low or High reading at *limit_mg_dl* (which one: by its value); returns alert events."""
        return self.forecaster.update_limit(at, limit_mg_dl)

    def forecast(self, horizons_min: Sequence[int] = (30, 60, 120)) -> Forecast:
        """Forecast from the last reading."""
        return self.forecaster.forecast(horizons_min)

    def advise(
        self, carbs_g: float, *, bolus_settings: BolusSettings | None = None, policy: str = "robust",
        calibration: AdviceCalibration | None = None,
    ) -> BolusAdvice:  # fmt: skip
        """The twin's meal bolus for *carbs_g* now, next to the standard calculator's (*policy*: see
        :func:`~medtwin.glucose.advise.advise_meal_bolus`). Policy ``calibrated`` without a *calibration*: the
        twin's nadir errors on the last recorded day (:meth:`advice_calibration`); ``robust`` (the default) without one:
        the fit's residual SD as the twin's error (pass a calibration on days the twin was not fitted on to use the
        person's own out-of-sample error, as the in-silico validation does)."""
        s = bolus_settings or self.bolus_settings
        if s is None:
            raise ValidationError("advice needs the bolus calculator settings (CR, CF, target)")
        if policy == "calibrated" and calibration is None:
            calibration = self.advice_calibration()
        return advise_meal_bolus(self.forecaster, carbs_g, cr_g_per_u=s.cr_g_per_u, cf_mg_dl_per_u=s.cf_mg_dl_per_u,
                                 target_mg_dl=s.target_mg_dl, policy=policy, calibration=calibration)  # fmt: skip

    def advice_calibration(self, data: TherapyData | None = None) -> AdviceCalibration:
        """How well the twin predicts this person's post-meal nadirs (:func:`~medtwin.glucose.advise.calibrate_advice`)
        on the meals of *data*'s last day; without *data*, on the recorded days' last day, which the posterior was
        fitted on: then the error is in-sample (smaller than on new days; in silico the calibration is on a day
        the twin was not fitted on, docs/models/glucose_twin.md)."""
        d = self.data if data is None else data
        f = GlucoseForecaster(self.posterior, d.start, particles=128, basal_u_h=float(d.basal_u_h[0]))
        return calibrate_advice(f, d, max(d.duration_min - 1440.0, 0.0))

    def snapshot(self) -> bytes:
        """The whole twin as JSON bytes (data, posterior, filter state, settings)."""
        doc: dict[str, Any] = {
            "kind": "medtwin.glucose.PersonalGlucoseTwin", "version": SNAPSHOT_VERSION, "data": self.data.to_dict(),
            "posterior": self.posterior.to_dict(),
            "bolus_settings": None if self.bolus_settings is None else {
                "cr_g_per_u": self.bolus_settings.cr_g_per_u, "cf_mg_dl_per_u": self.bolus_settings.cf_mg_dl_per_u,
                "target_mg_dl": self.bolus_settings.target_mg_dl},
            "forecaster": None if self._forecaster is None else self._forecaster.state(),
        }  # fmt: skip
        return json.dumps(doc).encode()

    @classmethod
    def restore(cls, blob: bytes) -> PersonalGlucoseTwin:
        """A twin from :meth:`snapshot` bytes."""
        try:
            doc = json.loads(blob)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValidationError(f"not a glucose twin snapshot ({exc})") from None
        if not isinstance(doc, dict) or doc.get("kind") != "medtwin.glucose.PersonalGlucoseTwin":
            raise ValidationError("not a glucose twin snapshot (kind medtwin.glucose.PersonalGlucoseTwin expected)")
        if doc.get("version") != SNAPSHOT_VERSION:
            raise ValidationError(
                f"glucose twin snapshot version {doc.get('version')} (this medtwin reads {SNAPSHOT_VERSION})"
            )
        try:
            posterior = Posterior.from_dict(doc["posterior"])
            data = TherapyData.from_dict(doc["data"])
            settings = BolusSettings(**doc["bolus_settings"]) if doc.get("bolus_settings") else None
            state = doc.get("forecaster")
            forecaster = GlucoseForecaster.restore(posterior, state) if state else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"glucose twin snapshot is incomplete or damaged ({exc!r})") from None
        return cls(data, posterior, bolus_settings=settings, forecaster=forecaster)
