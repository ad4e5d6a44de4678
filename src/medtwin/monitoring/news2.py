"""National Early Warning Score 2 (NEWS2): per-parameter scores, total and clinical response level.

Source
------
Royal College of Physicians. *National Early Warning Score (NEWS) 2: Standardising the assessment of acute-illness
severity in the NHS.* Updated report of a working party. London: RCP, December 2017 (chart 1 "The NEWS scoring
system", chart 2 "thresholds and triggers", table 2 "clinical response"). ISBN 978-1-86016-682-2.
No DOI; https://www.rcplondon.ac.uk/projects/outputs/national-early-warning-score-news-2 .

Conventions
-----------
* Bands (chart 1). Respiration rate /min: <=8 -> 3, 9-11 -> 1, 12-20 -> 0, 21-24 -> 2, >=25 -> 3.
  SpO2 scale 1 %: <=91 -> 3, 92-93 -> 2, 94-95 -> 1, >=96 -> 0.
  SpO2 scale 2 % (hypercapnic respiratory failure, target 88-92 %): <=83 -> 3, 84-85 -> 2, 86-87 -> 1,
  88-92 (or >=93 on air) -> 0, 93-94 on oxygen -> 1, 95-96 on oxygen -> 2, >=97 on oxygen -> 3.
  Air or oxygen: oxygen -> 2, air -> 0. Systolic BP mmHg: <=90 -> 3, 91-100 -> 2, 101-110 -> 1, 111-219 -> 0,
  >=220 -> 3. Pulse /min: <=40 -> 3, 41-50 -> 1, 51-90 -> 0, 91-110 -> 1, 111-130 -> 2, >=131 -> 3.
  Consciousness (ACVPU): A -> 0; new confusion, V, P or U -> 3. Temperature degC: <=35.0 -> 3, 35.1-36.0 -> 1,
  36.1-38.0 -> 0, 38.1-39.0 -> 1, >=39.1 -> 2.
* Values are rounded as a chart would record them before banding: rates, SpO2 and blood pressure to the nearest
  whole number (halves up), temperature to one decimal.
* Clinical response (table 2 / chart 2): total 0-4 -> low; a score of 3 in any single parameter -> low-medium
  ("urgent ward-based response"); total 5-6 -> medium; total >= 7 -> high. The higher level wins.
* Missing parameters are not guessed: the result lists them, ``complete`` is False and ``total`` is the sum of the
  parameters present (a lower bound of the full score).

Validity: adults (>= 16 years); not validated in pregnancy or in children (RCP 2017, section 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from medtwin.errors import ValidationError

__all__ = [
    "ACVPU_VALUES",
    "NEWS2_PARAMETERS",
    "News2Result",
    "ResponseLevel",
    "news2_score",
    "response_level",
    "score_consciousness",
    "score_pulse",
    "score_respiration_rate",
    "score_spo2",
    "score_systolic_bp",
    "score_temperature",
]

ResponseLevel = Literal["low", "low-medium", "medium", "high"]
ACVPU_VALUES = ("A", "C", "V", "P", "U")
NEWS2_PARAMETERS = (
    "respiration_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
)
_LEVEL_RANK: dict[str, int] = {"low": 0, "low-medium": 1, "medium": 2, "high": 3}


def _whole(value: float, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"NEWS2 {name}: a finite number is required, got {value!r}")
    if value < 0:
        raise ValidationError(f"NEWS2 {name}: {value} is negative")
    return math.floor(value + 0.5)


def score_respiration_rate(rate_per_min: float) -> int:
    """NEWS2 points for respiration rate (breaths/min)."""
    r = _whole(rate_per_min, "respiration rate")
    return 3 if r <= 8 else 1 if r <= 11 else 0 if r <= 20 else 2 if r <= 24 else 3


def score_spo2(spo2_percent: float, *, on_oxygen: bool, scale: Literal[1, 2] = 1) -> int:
    """NEWS2 points for SpO2 (%) on scale 1, or on scale 2 (which depends on air/oxygen)."""
    s = _whole(spo2_percent, "SpO2")
    if s > 100:
        raise ValidationError(f"NEWS2 SpO2: {spo2_percent} % is above 100 %")
    if scale == 1:
        return 3 if s <= 91 else 2 if s <= 93 else 1 if s <= 95 else 0
    if scale != 2:
        raise ValidationError(f"NEWS2 SpO2 scale: {scale!r} is not 1 or 2")
    if s <= 83:
        return 3
    if s <= 85:
        return 2
    if s <= 87:
        return 1
    if s <= 92 or not on_oxygen:
        return 0
    return 1 if s <= 94 else 2 if s <= 96 else 3


def score_systolic_bp(systolic_mm_hg: float) -> int:
    """NEWS2 points for systolic blood pressure (mmHg)."""
    p = _whole(systolic_mm_hg, "systolic BP")
    return 3 if p <= 90 else 2 if p <= 100 else 1 if p <= 110 else 0 if p <= 219 else 3


def score_pulse(pulse_per_min: float) -> int:
    """NEWS2 points for pulse (beats/min)."""
    p = _whole(pulse_per_min, "pulse")
    return 3 if p <= 40 else 1 if p <= 50 else 0 if p <= 90 else 1 if p <= 110 else 2 if p <= 130 else 3


def score_consciousness(acvpu: str) -> int:
    """NEWS2 points for ACVPU: A (alert) 0; C (new confusion), V, P, U 3."""
    level = acvpu.strip().upper()[:1] if isinstance(acvpu, str) else ""
    if level not in ACVPU_VALUES:
        raise ValidationError(f"NEWS2 consciousness: {acvpu!r} is not one of A, C, V, P, U (ACVPU)")
    return 0 if level == "A" else 3


def score_temperature(temperature_c: float) -> int:
    """NEWS2 points for temperature (degC, read to one decimal)."""
    if (
        isinstance(temperature_c, bool)
        or not isinstance(temperature_c, int | float)
        or not math.isfinite(temperature_c)
    ):
        raise ValidationError(f"NEWS2 temperature: a finite number is required, got {temperature_c!r}")
    t = math.floor(temperature_c * 10 + 0.5)  # tenths of a degree
    return 3 if t <= 350 else 1 if t <= 360 else 0 if t <= 380 else 1 if t <= 390 else 2


def response_level(total: int, max_single: int) -> ResponseLevel:
    """The RCP clinical response level for an aggregate *total* and the largest single-parameter score."""
    if total >= 7:
        return "high"
    if total >= 5:
        return "medium"
    if max_single >= 3:
        return "low-medium"
    return "low"


@dataclass(frozen=True, slots=True)
class News2Result:
    """A NEWS2 assessment: points per parameter (None when missing), total, level and what was missing."""

    scores: dict[str, int | None]
    total: int
    level: ResponseLevel
    missing: tuple[str, ...]
    spo2_scale: Literal[1, 2]

    @property
    def complete(self) -> bool:
        """True when all seven parameters were available."""
        return not self.missing

    @property
    def red_parameters(self) -> tuple[str, ...]:
        """Parameters scoring 3 (a "red score")."""
        return tuple(k for k, v in self.scores.items() if v == 3)

    def level_rank(self) -> int:
        """0 (low) to 3 (high), for comparisons."""
        return _LEVEL_RANK[self.level]


def news2_score(
    *,
    respiration_rate_per_min: float | None = None,
    spo2_percent: float | None = None,
    on_oxygen: bool | None = None,
    systolic_bp_mm_hg: float | None = None,
    pulse_per_min: float | None = None,
    consciousness: str | None = None,
    temperature_c: float | None = None,
    spo2_scale: Literal[1, 2] = 1,
) -> News2Result:
    """Score NEWS2 from one set of vital signs; missing (None) parameters are listed, not guessed.

    Parameters
    ----------
    respiration_rate_per_min, spo2_percent, systolic_bp_mm_hg, pulse_per_min, temperature_c
        The observations, in the units their names say.
    on_oxygen
        True for supplemental oxygen, False for air.
    consciousness
        ACVPU letter (``"A"``, ``"C"`` new confusion, ``"V"``, ``"P"``, ``"U"``).
    spo2_scale
        1 (default) or 2 (for patients with hypercapnic respiratory failure, prescribed by a clinician).

    Examples
    --------
    >>> r = news2_score(respiration_rate_per_min=21, spo2_percent=97, on_oxygen=False, systolic_bp_mm_hg=100,
    ...                 pulse_per_min=95, consciousness="A", temperature_c=38.5)
    >>> (r.total, r.level)
    (6, 'medium')
    """
    if spo2_scale not in (1, 2):
        raise ValidationError(f"NEWS2 spo2_scale: {spo2_scale!r} is not 1 or 2")
    scores: dict[str, int | None] = {
        "respiration_rate": None
        if respiration_rate_per_min is None
        else score_respiration_rate(respiration_rate_per_min),
        "spo2": None,
        "air_or_oxygen": None if on_oxygen is None else (2 if on_oxygen else 0),
        "systolic_bp": None if systolic_bp_mm_hg is None else score_systolic_bp(systolic_bp_mm_hg),
        "pulse": None if pulse_per_min is None else score_pulse(pulse_per_min),
        "consciousness": None if consciousness is None else score_consciousness(consciousness),
        "temperature": None if temperature_c is None else score_temperature(temperature_c),
    }
    if spo2_percent is not None:
        if spo2_scale == 2 and on_oxygen is None:
            # Scale 2 above 92 % depends on air/oxygen; without it only the oxygen-independent bands are known.
            scores["spo2"] = score_spo2(spo2_percent, on_oxygen=False, scale=2)
        else:
            scores["spo2"] = score_spo2(spo2_percent, on_oxygen=bool(on_oxygen), scale=spo2_scale)
    present = [v for v in scores.values() if v is not None]
    total = sum(present)
    missing = tuple(k for k, v in scores.items() if v is None)
    return News2Result(
        scores=scores,
        total=total,
        level=response_level(total, max(present, default=0)),
        missing=missing,
        spo2_scale=spo2_scale,
    )
