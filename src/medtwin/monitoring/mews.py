"""Modified Early Warning Score (MEWS) for medical admissions.

Source
------
Subbe CP, Kruger M, Rutherford P, Gemmel L. Validation of a modified Early Warning Score in medical admissions.
QJM 2001;94(10):521-526. DOI: 10.1093/qjmed/94.10.521 (table 1).

Conventions
-----------
Systolic BP mmHg: <=70 -> 3, 71-80 -> 2, 81-100 -> 1, 101-199 -> 0, >=200 -> 2.
Heart rate /min: <=40 -> 2, 41-50 -> 1, 51-100 -> 0, 101-110 -> 1, 111-129 -> 2, >=130 -> 3.
Respiratory rate /min: <9 -> 2, 9-14 -> 0, 15-20 -> 1, 21-29 -> 2, >=30 -> 3.
Temperature degC: <35.0 -> 2, 35.0-38.4 -> 0, >=38.5 -> 2.
AVPU: alert 0, reacting to voice 1, reacting to pain 2, unresponsive 3. MEWS predates ACVPU: new confusion (C) is
scored as V (1) here, a medtwin convention. Rates and pressures are rounded to whole numbers, temperature to one
decimal, before banding. In the validation cohort a score >= 5 was associated with an increased risk of death
(OR 5.4) and of ICU admission (OR 10.9). Missing parameters are listed and not guessed.

Validity: adult emergency medical admissions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medtwin.errors import ValidationError

__all__ = ["MEWS_HIGH_RISK", "MewsResult", "mews_score"]

MEWS_HIGH_RISK = 5
_AVPU = {"A": 0, "C": 1, "V": 1, "P": 2, "U": 3}


@dataclass(frozen=True, slots=True)
class MewsResult:
    """MEWS points per parameter (None when missing), the total and what was missing."""

    scores: dict[str, int | None]
    total: int
    missing: tuple[str, ...]

    @property
    def high_risk(self) -> bool:
        """True when the total is >= 5 (Subbe 2001)."""
        return self.total >= MEWS_HIGH_RISK


def _whole(value: float, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValidationError(f"MEWS {name}: a finite non-negative number is required, got {value!r}")
    return math.floor(value + 0.5)


def mews_score(
    *,
    systolic_bp_mm_hg: float | None = None,
    heart_rate_per_min: float | None = None,
    respiration_rate_per_min: float | None = None,
    temperature_c: float | None = None,
    avpu: str | None = None,
) -> MewsResult:
    """Score MEWS (Subbe 2001) from one set of vital signs.

    Examples
    --------
    >>> mews_score(systolic_bp_mm_hg=85, heart_rate_per_min=115, respiration_rate_per_min=24,
    ...            temperature_c=38.6, avpu="A").total
    7
    """
    scores: dict[str, int | None] = dict.fromkeys(
        ("systolic_bp", "heart_rate", "respiration_rate", "temperature", "avpu")
    )
    if systolic_bp_mm_hg is not None:
        p = _whole(systolic_bp_mm_hg, "systolic BP")
        scores["systolic_bp"] = 3 if p <= 70 else 2 if p <= 80 else 1 if p <= 100 else 0 if p <= 199 else 2
    if heart_rate_per_min is not None:
        h = _whole(heart_rate_per_min, "heart rate")
        scores["heart_rate"] = (
            2 if h <= 40 else 1 if h <= 50 else 0 if h <= 100 else 1 if h <= 110 else 2 if h <= 129 else 3
        )
    if respiration_rate_per_min is not None:
        r = _whole(respiration_rate_per_min, "respiration rate")
        scores["respiration_rate"] = 2 if r < 9 else 0 if r <= 14 else 1 if r <= 20 else 2 if r <= 29 else 3
    if temperature_c is not None:
        if isinstance(temperature_c, bool) or not math.isfinite(temperature_c):
            raise ValidationError(f"MEWS temperature: a finite number is required, got {temperature_c!r}")
        t = math.floor(temperature_c * 10 + 0.5)
        scores["temperature"] = 2 if t < 350 else 0 if t <= 384 else 2
    if avpu is not None:
        level = avpu.strip().upper()[:1]
        if level not in _AVPU:
            raise ValidationError(f"MEWS avpu: {avpu!r} is not one of A, V, P, U (or C)")
        scores["avpu"] = _AVPU[level]
    return MewsResult(
        scores=scores,
        total=sum(v for v in scores.values() if v is not None),
        missing=tuple(k for k, v in scores.items() if v is None),
    )
