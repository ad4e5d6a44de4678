"""What medtwin understood of a model file, and a typical patient's profile: ``medtwin dose check``.

:func:`check_model` loads a model (library id or path; every check of
:mod:`medtwin.dosing.modelfile` applies) and returns a :class:`ModelCheck`: the parameters with
their expressions, units and the random effects they carry, the covariates with units and where
they come from, Omega (with the %CV each variance means for a log-normal eta), the error model
written as a formula, and the concentration-time profile of the typical patient (etas 0, covariates
at their ``typical`` values or given ones) after one dose, with the steady-state exposure of that
dose repeated every *interval_h*.  A pharmacometrician compares this with the paper before trusting
the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtwin.dosing.model import PKModel
from medtwin.dosing.modelfile import SCHEMA_VERSION, load_model
from medtwin.dosing.optimize import steady_state_metrics
from medtwin.dosing.regimen import Dose, Route, predict_concentrations, predict_system
from medtwin.errors import ValidationError, did_you_mean

__all__ = ["PROFILE_TIMES_H", "ModelCheck", "check_model"]

#: Hours after the start of the dose at which the typical profile is shown.
PROFILE_TIMES_H = (0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 24.0, 48.0)

_ERROR_FORMULAS = {
    "additive": "SD = a",
    "proportional": "SD = b * f",
    "combined1": "SD = a + b * f (summed SDs)",
    "combined2": "SD = sqrt(a^2 + b^2 * f^2) (summed variances)",
}


@dataclass(frozen=True, slots=True)
class ModelCheck:
    """The result of :func:`check_model` (:meth:`to_dict` for JSON, :meth:`to_text` for people)."""

    model: PKModel
    covariates: dict[str, float]
    dose: Dose
    profile: list[tuple[float, float]]
    parameters: dict[str, float]
    steady_state: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        m = self.model
        sd = np.sqrt(np.diag(m.omega)) if m.eta_names else np.zeros(0)
        return {
            "file": m.source_path,
            "schema": SCHEMA_VERSION,
            "id": m.id,
            "drug": m.drug,
            "title": m.title,
            "citation": m.citation,
            "doi": m.doi,
            "compartments": m.compartments,
            "absorption": m.has_depot,
            "covariates": [
                {
                    "name": c.name,
                    "unit": c.unit,
                    "description": c.description,
                    "from": c.source,
                    "derive": c.derive,
                    "options": dict(c.options),
                    "default": c.default,
                    "valid": None if c.valid_min is None else [c.valid_min, c.valid_max],
                    "typical": c.typical_value,
                    "used": self.covariates[c.name],
                }
                for c in m.covariates
            ],
            "parameters": [
                {
                    "name": name,
                    "expression": expr.text,
                    "unit": m.parameter_units.get(name),
                    "etas": sorted(set(m.eta_names) & expr.names),
                    "typical": self.parameters[name],
                }
                for name, expr in m.parameters
            ],
            "structure": {label: expr.text for label, expr in m.expressions() if label.startswith("[structure]")},
            "omega": {
                "etas": list(m.eta_names),
                "matrix": m.omega.tolist(),
                "convention": m.omega_convention,
                "cv_percent_lognormal": [100 * math.sqrt(math.expm1(v * v)) for v in sd],
            },
            "error": {
                "model": m.error.kind,
                "formula": _ERROR_FORMULAS[m.error.kind],
                "additive_sd_mg_l": m.error.additive_sd,
                "proportional_sd": m.error.proportional_sd,
            },
            "typical_dose": {
                "amount_mg": self.dose.amount_mg,
                "duration_h": self.dose.duration_h,
                "route": self.dose.route,
                "interval_h": self.dose.interval_h or None,
            },
            "profile": [{"time_h": t, "concentration_mg_l": c} for t, c in self.profile],
            "steady_state": self.steady_state,
        }

    def to_text(self) -> str:
        """A plain-text summary."""
        d = self.to_dict()
        m = self.model
        lines = [
            f"{d['file']}: schema {SCHEMA_VERSION}, valid",
            f"Model: {m.title} ({m.id}), {m.drug}",
            f"  {m.citation} doi:{m.doi}",
            f"Structure: {m.compartments} compartment(s)" + (", first-order absorption" if m.has_depot else ", IV"),
        ]
        lines += [f"  {label.removeprefix('[structure].')} = {text}" for label, text in d["structure"].items()]
        lines.append("Covariates (unit; source; validity range; value used below):")
        for c in d["covariates"]:
            source = f"case field {c['from']}" if c["from"] else f"derived: {c['derive']}"
            if c["options"]:
                source += " (" + ", ".join(f"{k}={v}" for k, v in c["options"].items()) + ")"
            valid = "no range" if c["valid"] is None else f"{c['valid'][0]:g}-{c['valid'][1]:g}"
            default = "" if c["default"] is None else f"; default {c['default']:g}"
            lines.append(f"  {c['name']:>6} [{c['unit']}]  {source}; valid {valid}{default}; used {c['used']:g}")
        lines.append("Parameters (expression; unit; random effects; typical value):")
        for p in d["parameters"]:
            unit = p["unit"] or "unit not declared"
            etas = ", ".join(p["etas"]) or "none (no between-patient variability)"
            lines.append(f"  {p['name']:>6} = {p['expression']}")
            lines.append(f"         [{unit}]  etas: {etas};  typical {p['typical']:.4g}")
        om = d["omega"]
        if om["etas"]:
            lines.append(f"Omega ({om['convention']}):")
            width = max(len(e) for e in om["etas"])
            for name, row, cv in zip(om["etas"], om["matrix"], om["cv_percent_lognormal"], strict=True):
                cells = "  ".join(f"{v:8.4g}" for v in row)
                lines.append(f"  {name:>{width}}  {cells}   (CV {cv:.1f} % if log-normal)")
        else:
            lines.append("Omega: no random effects (etas = []): every patient is the typical patient")
        err = d["error"]
        lines.append(
            f"Error model: {err['model']}: {err['formula']}, a = {err['additive_sd_mg_l']:g} mg/L, "
            f"b = {err['proportional_sd']:g}"
        )
        dose = d["typical_dose"]
        how = "oral" if dose["route"] == "oral" else f"IV over {dose['duration_h']:g} h"
        covs = ", ".join(f"{k}={v:g}" for k, v in self.covariates.items())
        lines.append(f"Typical patient ({covs}; etas 0), one dose of {dose['amount_mg']:g} mg {how}:")
        lines += [f"  t = {t:>5g} h   C = {c:.4g} mg/L" for t, c in self.profile]
        if self.steady_state:
            ss = self.steady_state
            lines.append(
                f"  repeated every {dose['interval_h']:g} h, at steady state: AUC24 {ss['auc24_ss']:.4g} mg.h/L, "
                f"trough {ss['trough_ss']:.4g} mg/L, peak {ss['peak_ss']:.4g} mg/L"
            )
        return "\n".join(lines)


def check_model(
    name_or_path: str | Path,
    *,
    covariates: Mapping[str, float] | None = None,
    dose_mg: float = 1000.0,
    duration_h: float = 1.0,
    interval_h: float = 12.0,
) -> ModelCheck:
    """Load and summarise a model; *covariates* override the typical values (by covariate name)."""
    model = load_model(name_or_path)
    values = model.typical_covariates()
    for name, value in (covariates or {}).items():
        if name not in values:
            raise ValidationError(
                f"--covariate {name}: {model.id} has no covariate {name!r}{did_you_mean(name, values)} "
                f"(covariates: {', '.join(values) or 'none'})"
            )
        values[name] = float(value)
    route: Route = "oral" if model.has_depot else "iv"
    dose = Dose(time_h=0.0, amount_mg=dose_mg, duration_h=0.0 if route == "oral" else duration_h, route=route)
    eta0 = np.zeros((1, len(model.eta_names)))
    conc = predict_concentrations(model, values, [dose], list(PROFILE_TIMES_H), eta0)[0]
    params = {k: float(v[0]) for k, v in predict_system(model, values, eta0).parameters.items()}
    steady: dict[str, float] = {}
    if interval_h > 0 and dose.infusion_duration_h <= interval_h:
        metrics = steady_state_metrics(
            model,
            values,
            amount_mg=dose_mg,
            interval_h=interval_h,
            duration_h=dose.duration_h,
            etas=eta0,
            route=route,
        )
        steady = {k: float(v[0]) for k, v in metrics.items()}
    dose = Dose(time_h=0.0, amount_mg=dose_mg, duration_h=dose.duration_h, route=route, interval_h=max(interval_h, 0.0))
    return ModelCheck(
        model=model,
        covariates=values,
        dose=dose,
        profile=[(t, float(c)) for t, c in zip(PROFILE_TIMES_H, conc, strict=True)],
        parameters=params,
        steady_state=steady,
    )
