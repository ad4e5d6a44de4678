"""Explanations in clinical words, and the what-ifs a clinician asks (BP at target, stop smoking, a statin).

Per-factor contributions come from :class:`~medtwin.risk.core.RiskResult` (see its module for the reference person
and why they add up). The what-ifs state their assumption and source with every answer:

* **Blood pressure at target** -- a relative risk reduction, not the equation: the equations' BP-treatment terms
  describe who is treated, not what treatment does. Ettehad D, et al. Blood pressure lowering for prevention of
  cardiovascular disease and death: a systematic review and meta-analysis. Lancet 2016;387:957-967.
  doi:10.1016/S0140-6736(15)01225-8: every 10 mmHg lower SBP, RR 0.80 for major cardiovascular events and 0.72 for
  heart failure; applied as ``RR ** ((SBP - target) / 10)`` to people above the target (default 130 mmHg, the
  2017 ACC/AHA goal).
* **Stop smoking** -- the equation itself with the person as a non-smoker (QRISK3: an ex-smoker, its own
  category). Assumes the risk of a (non-/ex-)smoker is reached; in the first years after quitting it is not yet.
* **Statin** -- Cholesterol Treatment Trialists' (CTT) Collaboration. Efficacy and safety of more intensive
  lowering of LDL cholesterol. Lancet 2010;376:1670-1681. doi:10.1016/S0140-6736(10)61350-5: RR 0.78 per
  1.0 mmol/L lower LDL cholesterol for major vascular events; a high-intensity statin lowers LDL-C by >= 50 % (2018
  ACC/AHA cholesterol guideline), so ``RR = 0.78 ** (0.5 * LDL mmol/L)``. Without an LDL-C value non-HDL
  cholesterol stands in (it is larger, so the benefit is overstated; said with the answer). Not offered for heart
  failure (no CTT estimate) or for people already on a statin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medtwin.risk.core import BoolArray, FloatArray, Inputs, RiskResult, column, flag_column
from medtwin.risk.points import ScoreResult

__all__ = ["Explanation", "ExplanationLine", "WhatIf", "bp_at_target", "explain", "statin", "stop_smoking"]

BP_RR_PER_10_MMHG = {"hf": 0.72, "default": 0.80}
STATIN_RR_PER_MMOL = 0.78
MG_DL_PER_MMOL_L_CHOLESTEROL = 38.67


@dataclass(frozen=True, slots=True)
class ExplanationLine:
    """One factor: its clinical words, its share of the linear predictor and of the risk (a fraction)."""

    factor: str
    text: str
    lp: float
    risk: float

    def __str__(self) -> str:
        return f"{self.text}: {100 * self.risk:+.1f} percentage points (linear predictor {self.lp:+.3f})"


@dataclass(frozen=True, kw_only=True)
class WhatIf:
    """A scenario's risk for every person (``NaN`` where it does not apply) with its assumption and source."""

    name: str
    description: str
    risk: FloatArray
    applies: BoolArray
    assumption: str
    source: str
    notes: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Explanation:
    """One person's result, explained."""

    model: str
    title: str
    risk: float | None
    points: float | None
    band: str | None
    reference_risk: float | None
    reference_text: str
    lines: tuple[ExplanationLine, ...]
    reasons: tuple[str, ...]
    what_ifs: tuple[tuple[str, float, str], ...] = ()

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready data."""
        return {
            "model": self.model,
            "title": self.title,
            "risk": self.risk,
            "points": self.points,
            "band": self.band,
            "reference_risk": self.reference_risk,
            "reference": self.reference_text,
            "contributions": [
                {"factor": x.factor, "text": x.text, "linear_predictor": x.lp, "risk": x.risk} for x in self.lines
            ],
            "reasons": list(self.reasons),
            "what_if": [{"scenario": n, "risk": r, "assumption": a} for n, r, a in self.what_ifs],
        }


def _finite(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def explain(result: RiskResult | ScoreResult, i: int, what_ifs: tuple[WhatIf, ...] = ()) -> Explanation:
    """Person *i*'s result in clinical words: factors sorted by their effect, reasons, and the *what_ifs*."""
    reasons = tuple(result.reasons(i))
    if isinstance(result, ScoreResult):
        items = tuple(
            ExplanationLine(k, result.item_words[k](i), float(v[i]), float("nan"))
            for k, v in result.items.items()
            if v[i] != 0 and not np.isnan(result.points[i])
        )
        risk = None if result.risk is None else _finite(float(result.risk[i]))
        return Explanation(
            model=result.model,
            title=result.title,
            risk=risk,
            points=_finite(float(result.points[i])),
            band=result.band[i],
            reference_risk=None,
            reference_text="no risk factors (0 points)",
            lines=items,
            reasons=reasons,
        )
    refused = bool(np.isnan(result.risk[i]))
    lines: tuple[ExplanationLine, ...] = ()
    if not refused:
        by_risk = result.risk_contributions()
        words = {f.key: f.describe for f in result.factors}
        lines = tuple(
            sorted(
                (
                    ExplanationLine(k, words[k](i), float(lp[i]), float(by_risk[k][i]))
                    for k, lp in result.contributions.items()
                    if abs(lp[i]) > 1e-9
                ),
                key=lambda x: -abs(x.lp),
            )
        )
    scenarios = tuple((w.description, float(w.risk[i]), w.notes.get(i, w.assumption)) for w in what_ifs if w.applies[i])
    return Explanation(
        model=result.model,
        title=result.title,
        risk=None if refused else float(result.risk[i]),
        points=None,
        band=None,
        reference_risk=None if refused else float(result.reference_risk[i]),
        reference_text=result.reference_text(i),
        lines=lines,
        reasons=reasons,
        what_ifs=scenarios,
    )


def bp_at_target(result: RiskResult, target_mm_hg: float = 130.0) -> WhatIf:
    """Risk with systolic BP lowered to *target_mm_hg* (people above it), by the Ettehad 2016 relative risk."""
    sbp = result.inputs["sbp_mm_hg"]
    rr10 = BP_RR_PER_10_MMHG.get(result.outcome, BP_RR_PER_10_MMHG["default"])
    with np.errstate(invalid="ignore"):
        applies = (sbp > target_mm_hg) & ~result.refused
        risk = np.where(applies, result.risk * rr10 ** ((sbp - target_mm_hg) / 10), np.nan)
    return WhatIf(
        name="bp-at-target",
        description=f"systolic BP at {target_mm_hg:g} mmHg",
        risk=risk,
        applies=applies,
        assumption=f"RR {rr10} per 10 mmHg lower systolic BP applied to the equation's risk",
        source="Ettehad et al., Lancet 2016;387:957 (doi:10.1016/S0140-6736(15)01225-8)",
    )


def stop_smoking(result: RiskResult, inputs: Inputs, recompute: Callable[[Inputs], RiskResult]) -> WhatIf:
    """Risk recomputed by the same equation with current smokers as non-smokers (QRISK3: ex-smokers)."""
    changed = dict(inputs)
    if result.model == "qrisk3":
        cat = result.inputs["smoking_category"]
        smokers = cat >= 2
        changed["smoking_category"] = np.where(smokers, 1.0, cat)
        changed.pop("smoker", None)
        becomes = "an ex-smoker (QRISK3's category)"
    else:
        smokers = result.inputs["smoker"] == 1
        changed["smoker"] = np.where(smokers, 0.0, result.inputs["smoker"])
        becomes = "a non-smoker"
    applies = smokers & ~result.refused
    risk = np.where(applies, recompute(changed).risk, np.nan)
    return WhatIf(
        name="stop-smoking",
        description="stops smoking",
        risk=risk,
        applies=applies,
        assumption=f"the equation's own smoking term with the person as {becomes}; reached over years, not at once",
        source=result.title,
    )


def statin(result: RiskResult, inputs: Inputs, ldl_reduction: float = 0.5) -> WhatIf:
    """Risk with a high-intensity statin (people not on one), by the CTT 2010 relative risk per mmol/L LDL-C."""
    n = len(result)
    ldl = column(inputs, "ldl_mg_dl", n)
    non_hdl = column(inputs, "total_chol_mg_dl", n) - column(inputs, "hdl_mg_dl", n)
    on_statin = flag_column(inputs, "statin", n) == 1
    proxy = np.isnan(ldl)
    chol = np.where(proxy, non_hdl, ldl) / MG_DL_PER_MMOL_L_CHOLESTEROL
    applies = ~on_statin & ~np.isnan(chol) & ~result.refused & (result.outcome != "hf")
    risk = np.where(applies, result.risk * STATIN_RR_PER_MMOL ** (ldl_reduction * chol), np.nan)
    base = (
        f"high-intensity statin lowers LDL-C by {100 * ldl_reduction:.0f} %; RR {STATIN_RR_PER_MMOL} per mmol/L lower "
        "LDL-C applied to the equation's risk"
    )
    notes = {
        int(i): base + "; non-HDL cholesterol stood in for the unrecorded LDL-C (benefit overstated)"
        for i in np.flatnonzero(applies & proxy)
    }
    return WhatIf(
        name="statin",
        description="starts a high-intensity statin",
        risk=risk,
        applies=applies,
        assumption=base,
        source="CTT Collaboration, Lancet 2010;376:1670 (doi:10.1016/S0140-6736(10)61350-5)",
        notes=notes,
    )
