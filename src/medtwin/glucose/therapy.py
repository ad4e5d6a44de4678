"""Alternative insulin therapies applied to recorded days: the "what if" of the personal twin.

Open-loop changes rewrite the recorded insulin (every bolus scaled or moved, the basal scaled or replaced by a
daily profile); closed-loop changes let a controller decide the insulin on the twin's own simulated glucose (the
bolus calculator with another carbohydrate ratio or correction factor, simglucose's basal-bolus controller, basal
only). Meals stay as recorded in both ("the same days, another therapy"), unless *meal_scale* asks "and what if
every meal had been bigger or smaller" (every recorded carbohydrate amount multiplied, at its recorded time; a
closed-loop controller is told the changed amounts, an open-loop therapy keeps its recorded boluses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from medtwin.errors import ValidationError
from medtwin.glucose.therapy_data import TherapyData

__all__ = ["Therapy", "apply_therapy", "parse_basal_profile", "with_meals"]

ControllerName = Literal["basal-bolus", "basal"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Therapy:
    """One alternative therapy; the default is the recorded one.

    - *bolus_scale*: every recorded bolus multiplied (1.3 = 30 % more); *bolus_shift_min*: moved in time
      (-20 = 20 minutes earlier; a bolus cannot move before the data start).
    - *basal_scale*: the recorded basal multiplied; *basal_profile*: ``((minute of local day, U/h), ...)``
      replacing it (local day of the data's UTC offset).
    - *meal_scale*: every recorded meal's carbohydrate multiplied (1.5 = half as much again), at its time.
    - *controller*: ``basal-bolus`` (meal bolus CHO / CR plus (CGM - target) / CF above 150 mg/dL, simglucose's
      controller, needs *cr_g_per_u* and *cf_mg_dl_per_u*) or ``basal`` (the reference basal rate only): the
      insulin is then decided on the twin's simulated glucose, in closed loop.
    """

    name: str = "recorded"
    bolus_scale: float = 1.0
    bolus_shift_min: float = 0.0
    basal_scale: float = 1.0
    meal_scale: float = 1.0
    basal_profile: tuple[tuple[float, float], ...] | None = None
    controller: ControllerName | None = None
    cr_g_per_u: float | None = None
    cf_mg_dl_per_u: float | None = None
    target_mg_dl: float = 140.0

    def __post_init__(self) -> None:
        if self.bolus_scale < 0 or self.basal_scale < 0 or self.meal_scale < 0:
            raise ValidationError(f"therapy {self.name!r}: scales must be >= 0")
        if self.controller not in (None, "basal-bolus", "basal"):
            raise ValidationError(f"therapy {self.name!r}: unknown controller {self.controller!r} (basal-bolus, basal)")
        if self.controller == "basal-bolus" and not (self.cr_g_per_u and self.cf_mg_dl_per_u):
            raise ValidationError(f"therapy {self.name!r}: the basal-bolus controller needs CR (g/U) and CF (mg/dL/U)")
        for cr in (self.cr_g_per_u, self.cf_mg_dl_per_u):
            if cr is not None and cr <= 0:
                raise ValidationError(f"therapy {self.name!r}: CR and CF must be > 0")
        if self.basal_profile is not None:
            parse_basal_profile(self.basal_profile)

    @property
    def closed_loop(self) -> bool:
        """Whether a controller decides the insulin."""
        return self.controller is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name, "bolus_scale": self.bolus_scale, "bolus_shift_min": self.bolus_shift_min,
            "basal_scale": self.basal_scale, "meal_scale": self.meal_scale,
            "basal_profile": None if self.basal_profile is None else [list(s) for s in self.basal_profile],
            "controller": self.controller, "cr_g_per_u": self.cr_g_per_u, "cf_mg_dl_per_u": self.cf_mg_dl_per_u,
            "target_mg_dl": self.target_mg_dl,
        }  # fmt: skip


def parse_basal_profile(profile: Sequence[tuple[float, float]] | str) -> tuple[tuple[float, float], ...]:
    """A daily basal profile from ``((minute, U/h), ...)`` or text ``"00:00=0.8,06:00=1.1"``, checked."""
    if isinstance(profile, str):
        segments = []
        for part in profile.split(","):
            try:
                clock, rate = part.strip().split("=")
                hh, mm = clock.split(":")
                segments.append((float(int(hh) * 60 + int(mm)), float(rate)))
            except ValueError:
                raise ValidationError(f"basal profile segment {part.strip()!r}: expected HH:MM=U/h") from None
        profile = segments
    out = tuple(sorted((float(m), float(r)) for m, r in profile))
    if not out or out[0][0] != 0.0:
        raise ValidationError("basal profile: the first segment must start at 00:00")
    for m, r in out:
        if not 0 <= m < 1440 or not 0 <= r <= 35:
            raise ValidationError(f"basal profile segment ({m:g} min, {r:g} U/h): minute in [0, 1440), 0-35 U/h")
    if len({m for m, _ in out}) != len(out):
        raise ValidationError("basal profile: two segments start at the same time")
    return out


def with_meals(data: TherapyData, therapy: Therapy) -> TherapyData:
    """The recorded days with every meal's carbohydrate multiplied by *therapy*'s ``meal_scale``."""
    return data if therapy.meal_scale == 1.0 else replace(data, carbs_g=data.carbs_g * therapy.meal_scale)


def apply_therapy(data: TherapyData, therapy: Therapy) -> TherapyData:
    """The recorded days with the open-loop part of *therapy* applied (boluses, basal, meal sizes)."""
    data = with_meals(data, therapy)
    bolus_t = np.maximum(data.bolus_t_min + therapy.bolus_shift_min, 0.0)
    order = np.argsort(bolus_t, kind="stable")
    basal_t, basal_u = data.basal_t_min, data.basal_u_h * therapy.basal_scale
    if therapy.basal_profile is not None:
        profile = parse_basal_profile(therapy.basal_profile)
        first_midnight = -data.local_start_minute()
        days = int(np.ceil((data.duration_min - first_midnight) / 1440.0)) + 1
        starts = np.array([first_midnight + d * 1440.0 + m for d in range(days) for m, _ in profile])
        rates = np.array([r for _ in range(days) for _, r in profile]) * therapy.basal_scale
        keep = starts > 0
        basal_t = np.concatenate([[0.0], starts[keep]])
        basal_u = np.concatenate([rates[~keep][-1:] if np.any(~keep) else rates[:1], rates[keep]])
    return replace(
        data, bolus_t_min=bolus_t[order], bolus_u=data.bolus_u[order] * therapy.bolus_scale,
        basal_t_min=basal_t, basal_u_h=basal_u,
    )  # fmt: skip
