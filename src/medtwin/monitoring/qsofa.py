"""quick Sequential Organ Failure Assessment (qSOFA), the Sepsis-3 bedside screen.

Source
------
Seymour CW, Liu VX, Iwashyna TJ, et al. Assessment of Clinical Criteria for Sepsis: For the Third International
Consensus Definitions for Sepsis and Septic Shock (Sepsis-3). JAMA 2016;315(8):762-774.
DOI: 10.1001/jama.2016.0288. Singer M, et al. The Third International Consensus Definitions for Sepsis and Septic
Shock (Sepsis-3). JAMA 2016;315(8):801-810. DOI: 10.1001/jama.2016.0287.

Conventions
-----------
One point each for respiratory rate >= 22 /min, altered mentation (Glasgow Coma Scale < 15; here also any ACVPU
response other than A), systolic blood pressure <= 100 mmHg. A score >= 2 is "positive" (higher risk of poor
outcome in suspected infection). Missing criteria are listed, not guessed; with missing criteria the score is a
lower bound and ``positive`` can still be True when two present criteria are met.

Validity: adults with suspected infection outside the ICU; it is a prognostic screen, not a diagnosis of sepsis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medtwin.errors import ValidationError

__all__ = ["QsofaResult", "qsofa_score"]


@dataclass(frozen=True, slots=True)
class QsofaResult:
    """qSOFA points per criterion (None when missing), total, and whether it is positive (>= 2)."""

    criteria: dict[str, bool | None]
    total: int
    missing: tuple[str, ...]

    @property
    def positive(self) -> bool:
        """True when at least two criteria are met."""
        return self.total >= 2


def _number(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValidationError(f"qSOFA {name}: a finite non-negative number is required, got {value!r}")
    return float(value)


def qsofa_score(
    *,
    respiration_rate_per_min: float | None = None,
    systolic_bp_mm_hg: float | None = None,
    gcs: int | None = None,
    acvpu: str | None = None,
) -> QsofaResult:
    """Score qSOFA. Mentation is altered when *gcs* < 15 or *acvpu* is not ``"A"`` (either one suffices).

    Examples
    --------
    >>> qsofa_score(respiration_rate_per_min=24, systolic_bp_mm_hg=98, acvpu="A").total
    2
    """
    rr = None if respiration_rate_per_min is None else _number(respiration_rate_per_min, "respiration rate") >= 22
    sbp = None if systolic_bp_mm_hg is None else _number(systolic_bp_mm_hg, "systolic BP") <= 100
    mentation: bool | None = None
    if gcs is not None:
        if isinstance(gcs, bool) or not isinstance(gcs, int) or not 3 <= gcs <= 15:
            raise ValidationError(f"qSOFA gcs: an integer Glasgow Coma Scale 3-15 is required, got {gcs!r}")
        mentation = gcs < 15
    if acvpu is not None:
        level = acvpu.strip().upper()[:1]
        if level not in ("A", "C", "V", "P", "U"):
            raise ValidationError(f"qSOFA acvpu: {acvpu!r} is not one of A, C, V, P, U")
        mentation = bool(mentation) or level != "A"
    criteria = {"respiration_rate": rr, "altered_mentation": mentation, "systolic_bp": sbp}
    return QsofaResult(
        criteria=criteria,
        total=sum(1 for v in criteria.values() if v),
        missing=tuple(k for k, v in criteria.items() if v is None),
    )
