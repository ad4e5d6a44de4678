"""Patient covariates for PK models: renal function, body-size descriptors, time-varying values.

* Cockcroft-Gault creatinine clearance: Cockcroft DW, Gault MH. Prediction of creatinine clearance
  from serum creatinine. Nephron 1976;16:31-41, doi:10.1159/000180580.
  ``CrCL [mL/min] = (140 - age) * weight / (72 * SCr [mg/dL])``, times 0.85 for women.  Which weight
  (total, ideal, adjusted) and which caps or floors apply is the *model's* convention, so they are
  arguments here and stated in each model file.
* Ideal body weight (Devine 1974): 50 kg (men) or 45.5 kg (women) + 2.3 kg per inch over 5 ft.
* Adjusted body weight: ``IBW + 0.4 * (TBW - IBW)`` (the usual aminoglycoside convention).
* Body-surface area: Mosteller (N Engl J Med 1987;317:1098) and DuBois & DuBois (1916).
* Time-varying covariates: :class:`CovariateSeries` carries the last observation forward (LOCF) by
  default; next-observation-carried-backward and linear interpolation are opt-in.

Units are in the names; conversions go through :func:`medtwin.codes.convert`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from medtwin import codes
from medtwin.errors import ValidationError

__all__ = [
    "CovariateSeries",
    "Interpolation",
    "adjusted_body_weight_kg",
    "bsa_dubois_m2",
    "bsa_mosteller_m2",
    "cockcroft_gault_ml_min",
    "creatinine_mg_dl",
    "ideal_body_weight_kg",
]

Interpolation = Literal["locf", "nocb", "linear"]


def _positive(value: float, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValidationError(f"{name}: expected a finite number, got {value!r}")
    if value <= 0:
        raise ValidationError(f"{name}: must be > 0, got {value}")
    return float(value)


def creatinine_mg_dl(value: float, unit: str) -> float:
    """Serum creatinine in mg/dL from a value in *unit* (``mg/dL`` or ``umol/L``)."""
    return codes.convert(_positive(value, "serum creatinine"), unit, "mg/dL", analyte="creatinine")


def cockcroft_gault_ml_min(
    *,
    age_y: float,
    weight_kg: float,
    scr_mg_dl: float,
    female: bool,
    scr_floor_mg_dl: float | None = None,
    scr_floor_min_age_y: float = 0.0,
    max_ml_min: float | None = None,
) -> float:
    """Cockcroft-Gault creatinine clearance in mL/min.

    Parameters
    ----------
    age_y, weight_kg, scr_mg_dl
        Age in years, the weight descriptor the model uses (kg), serum creatinine (mg/dL).
    female
        Apply the 0.85 factor.
    scr_floor_mg_dl, scr_floor_min_age_y
        Raise SCr to *scr_floor_mg_dl* for patients older than *scr_floor_min_age_y* (e.g. Goti
        2018: SCr set to 1 mg/dL when age > 65 and SCr < 1).
    max_ml_min
        Cap of the result (e.g. 150 mL/min).
    """
    age = _positive(age_y, "age_y")
    if age >= 140:
        raise ValidationError(f"cockcroft_gault: age {age} y is outside the formula's range")
    weight = _positive(weight_kg, "weight_kg")
    scr = _positive(scr_mg_dl, "scr_mg_dl")
    if scr_floor_mg_dl is not None and age > scr_floor_min_age_y:
        scr = max(scr, scr_floor_mg_dl)
    crcl = (140.0 - age) * weight / (72.0 * scr)
    if female:
        crcl *= 0.85
    if max_ml_min is not None:
        crcl = min(crcl, max_ml_min)
    return crcl


def ideal_body_weight_kg(*, height_cm: float, female: bool) -> float:
    """Devine ideal body weight in kg (refused below 152.4 cm = 5 ft, where it is undefined)."""
    height_in = codes.convert(_positive(height_cm, "height_cm"), "cm", "[in_i]")
    if height_in < 60.0:
        raise ValidationError(
            f"ideal_body_weight: height {height_cm} cm is below 5 ft; the Devine formula is undefined"
        )
    return float((45.5 if female else 50.0) + 2.3 * (height_in - 60.0))


def adjusted_body_weight_kg(*, weight_kg: float, height_cm: float, female: bool, factor: float = 0.4) -> float:
    """Adjusted body weight ``IBW + factor * (TBW - IBW)`` in kg (TBW if below IBW)."""
    ibw = ideal_body_weight_kg(height_cm=height_cm, female=female)
    tbw = _positive(weight_kg, "weight_kg")
    return tbw if tbw <= ibw else ibw + factor * (tbw - ibw)


def bsa_mosteller_m2(*, weight_kg: float, height_cm: float) -> float:
    """Mosteller body-surface area in m^2: ``sqrt(height_cm * weight_kg / 3600)``."""
    return math.sqrt(_positive(height_cm, "height_cm") * _positive(weight_kg, "weight_kg") / 3600)


def bsa_dubois_m2(*, weight_kg: float, height_cm: float) -> float:
    """DuBois body-surface area in m^2: ``0.007184 * W^0.425 * H^0.725``."""
    w, h = _positive(weight_kg, "weight_kg"), _positive(height_cm, "height_cm")
    return float(0.007184 * w**0.425 * h**0.725)


@dataclass(frozen=True, slots=True)
class CovariateSeries:
    """A covariate measured at several times (hours), evaluated with a chosen interpolation."""

    name: str
    times_h: tuple[float, ...]
    values: tuple[float, ...]
    interpolation: Interpolation = "locf"

    @classmethod
    def build(
        cls,
        name: str,
        times_h: Sequence[float],
        values: Sequence[float],
        interpolation: Interpolation = "locf",
    ) -> CovariateSeries:
        """Validate and sort a series (at least one value; times finite)."""
        if len(times_h) != len(values) or not values:
            raise ValidationError(f"covariate {name}: need as many times as values (at least one)")
        if interpolation not in ("locf", "nocb", "linear"):
            raise ValidationError(f"covariate {name}: unknown interpolation {interpolation!r}")
        order = np.argsort(np.asarray(times_h, dtype=float), kind="stable")
        t = tuple(float(times_h[i]) for i in order)
        v = tuple(float(values[i]) for i in order)
        if not all(math.isfinite(x) for x in t + v):
            raise ValidationError(f"covariate {name}: times and values must be finite")
        return cls(name=name, times_h=t, values=v, interpolation=interpolation)

    def at(self, time_h: float) -> float:
        """Value at *time_h*; before the first value the first one is used (stated in reports)."""
        t = np.asarray(self.times_h)
        v = np.asarray(self.values)
        if self.interpolation == "linear":
            return float(np.interp(time_h, t, v))
        if self.interpolation == "locf":
            idx = int(np.searchsorted(t, time_h, side="right")) - 1
            return float(v[max(idx, 0)])
        idx = int(np.searchsorted(t, time_h, side="left"))
        return float(v[min(idx, len(v) - 1)])

    def change_times_h(self) -> tuple[float, ...]:
        """Times after the first at which the value may change."""
        return self.times_h[1:]
