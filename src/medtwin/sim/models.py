"""Small built-in models of the engine, used to test solvers and as templates for new models.

- :class:`TwoCompartmentLinear`: amounts (mg) in a central and a peripheral compartment with first-order rate
  constants (1/min) and an infusion into the central compartment; linear, so :class:`ExactLinear` applies.
- :class:`MichaelisMentenElimination`: one compartment with saturable elimination
  dA/dt = rate - vmax * A / (km + A) (the nonlinear reference case of every PK textbook, e.g. Rowland & Tozer,
  Clinical Pharmacokinetics and Pharmacodynamics, 4th ed., chapter 20).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from medtwin.sim.model import FloatArray, Model, Params

__all__ = ["MichaelisMentenElimination", "TwoCompartmentLinear"]


class TwoCompartmentLinear(Model):
    """dA1/dt = rate - (k10 + k12) A1 + k21 A2;  dA2/dt = k12 A1 - k21 A2."""

    state_names: ClassVar[tuple[str, ...]] = ("central_mg", "peripheral_mg")
    state_units: ClassVar[tuple[str, ...]] = ("mg", "mg")
    param_names: ClassVar[tuple[str, ...]] = ("k10", "k12", "k21")
    param_units: ClassVar[tuple[str, ...]] = ("1/min", "1/min", "1/min")
    input_names: ClassVar[tuple[str, ...]] = ("rate_mg_min",)
    input_units: ClassVar[tuple[str, ...]] = ("mg/min",)

    def rhs(self, t: float, x: FloatArray, p: Params, u: FloatArray) -> FloatArray:
        a1, a2 = x[:, 0], x[:, 1]
        d1 = u[:, 0] - (p["k10"] + p["k12"]) * a1 + p["k21"] * a2
        d2 = p["k12"] * a1 - p["k21"] * a2
        return np.stack([d1, d2], axis=1)

    def linear_system(self, p: Params) -> tuple[FloatArray, FloatArray]:
        a = np.zeros((p.batch, 2, 2))
        a[:, 0, 0] = -(p["k10"] + p["k12"])
        a[:, 0, 1] = p["k21"]
        a[:, 1, 0] = p["k12"]
        a[:, 1, 1] = -p["k21"]
        b = np.zeros((p.batch, 2, 1))
        b[:, 0, 0] = 1.0
        return a, b


class MichaelisMentenElimination(Model):
    """dA/dt = rate - vmax A / (km + A)."""

    state_names: ClassVar[tuple[str, ...]] = ("amount_mg",)
    state_units: ClassVar[tuple[str, ...]] = ("mg",)
    param_names: ClassVar[tuple[str, ...]] = ("vmax_mg_min", "km_mg")
    param_units: ClassVar[tuple[str, ...]] = ("mg/min", "mg")
    input_names: ClassVar[tuple[str, ...]] = ("rate_mg_min",)
    input_units: ClassVar[tuple[str, ...]] = ("mg/min",)

    def rhs(self, t: float, x: FloatArray, p: Params, u: FloatArray) -> FloatArray:
        a = x[:, 0]
        return (u[:, 0] - p["vmax_mg_min"] * a / (p["km_mg"] + a))[:, None]
