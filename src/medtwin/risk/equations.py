"""The equations medtwin ships, by name, and a whole cohort through all of them into one table.

``compute_all`` runs every equation (PREVENT with the calculator's automatic variant choice) and
``cohort_table`` turns the results into columns: ``<name>_risk`` (or ``_points``), ``<name>_status``
(``ok``/``flagged``/``refused``) and ``<name>_reasons`` (value-free, so a million rows stay cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from medtwin.errors import ValidationError
from medtwin.risk.core import Inputs, RiskResult
from medtwin.risk.pce import pooled_cohort
from medtwin.risk.points import ScoreResult, cha2ds2_vasc, findrisc, has_bled
from medtwin.risk.prevent import prevent
from medtwin.risk.qrisk3 import qrisk3

__all__ = ["EQUATIONS", "Equation", "cohort_table", "compute_all"]


@dataclass(frozen=True)
class Equation:
    """A named equation: its citation and the function computing it over a cohort."""

    name: str
    citation: str
    doi: str
    compute: Callable[[Inputs], RiskResult | ScoreResult]


_KHAN = "Khan SS et al. Circulation 2024;149:430"
EQUATIONS: dict[str, Equation] = {
    "pce": Equation(
        "pce", "Goff DC Jr et al. Circulation 2014;129:S49", "10.1161/01.cir.0000437741.48606.98", pooled_cohort
    ),
    **{
        f"prevent-{o}-{y}y": Equation(
            f"prevent-{o}-{y}y", _KHAN, "10.1161/CIRCULATIONAHA.123.067626", partial(prevent, outcome=o, years=y)
        )  # type: ignore[arg-type]
        for y in (10, 30)
        for o in ("cvd", "ascvd", "hf")
    },
    "qrisk3": Equation("qrisk3", "Hippisley-Cox J et al. BMJ 2017;357:j2099", "10.1136/bmj.j2099", qrisk3),
    "findrisc": Equation(
        "findrisc", "Lindström J, Tuomilehto J. Diabetes Care 2003;26:725", "10.2337/diacare.26.3.725", findrisc
    ),
    "cha2ds2-vasc": Equation(
        "cha2ds2-vasc", "Lip GYH et al. Chest 2010;137:263", "10.1378/chest.09-1584", cha2ds2_vasc
    ),
    "has-bled": Equation("has-bled", "Pisters R et al. Chest 2010;138:1093", "10.1378/chest.10-0134", has_bled),
}


def compute_all(inputs: Inputs, names: Sequence[str] | None = None) -> dict[str, RiskResult | ScoreResult]:
    """Every equation in *names* (default: all of :data:`EQUATIONS`) over the cohort *inputs*."""
    chosen = list(EQUATIONS) if names is None else list(names)
    unknown = [n for n in chosen if n not in EQUATIONS]
    if unknown:
        raise ValidationError(f"unknown risk equation(s) {unknown}; known: {', '.join(EQUATIONS)}")
    return {n: EQUATIONS[n].compute(inputs) for n in chosen}


def cohort_table(results: dict[str, RiskResult | ScoreResult]) -> dict[str, np.ndarray]:
    """Columns for a cohort file: value, status and reasons of every result (see the module docstring)."""
    out: dict[str, np.ndarray] = {}
    for name, r in results.items():
        if isinstance(r, ScoreResult):
            out[f"{name}_points"] = r.points
            status = np.where(r.refused, "refused", "ok")
            for p in r.problems:
                if p.kind == "flagged":
                    status = np.where(p.mask & ~r.refused, "flagged", status)
            reasons = np.full(len(r), "", dtype=object)
            for p in r.problems:
                reasons[p.mask] = np.where(reasons[p.mask] == "", p.message, reasons[p.mask] + "; " + p.message)
        else:
            out[f"{name}_risk"] = r.risk
            status = r.status()
            reasons = r.reason_column()
            if "variant" in r.inputs:
                out[f"{name}_variant"] = np.asarray(r.inputs["variant"], dtype=object)
        out[f"{name}_status"] = status.astype(object)
        out[f"{name}_reasons"] = reasons
    return out
