"""Solvers that integrate a batched :class:`~medtwin.sim.model.Model` over one interval of constant inputs.

- :class:`RK4`: classical fixed-step Runge-Kutta 4, with as many equal sub-steps as needed so none exceeds *dt*.
- :class:`DormandPrince`: adaptive Dormand-Prince 5(4) with one step size for the whole batch (the error norm
  is the worst member's), FSAL and the usual PI-free step-size controller (safety 0.9, factor in [0.2, 10]).
- :class:`ExactLinear`: exact solution x(t+h) = e^{Ah} x + (integral of e^{As} ds) B u for linear models, via
  the matrix exponential of the augmented matrix [[A, B], [0, 0]] (Van Loan), per batch member.

Each solver counts its batched right-hand-side evaluations in ``rhs_evaluations`` (one evaluation = one call
over the whole batch). Any object implementing :class:`Solver` can be passed to :func:`medtwin.sim.simulate`,
which is how other exact solvers (for example :mod:`medtwin.sim.linear`) plug in.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
from scipy.linalg import expm

from medtwin.errors import MedtwinError, ValidationError
from medtwin.sim.model import FloatArray, Model, Params

__all__ = ["RK4", "DormandPrince", "ExactLinear", "IntegrationError", "Solver"]


class IntegrationError(MedtwinError):
    """The solver could not integrate the model (step size underflow, too many steps, non-finite state)."""


class Solver(ABC):
    """Integrates a model over ``[t0, t1]`` with inputs held constant."""

    def __init__(self) -> None:
        self.rhs_evaluations = 0

    @abstractmethod
    def advance(self, model: Model, t0: float, t1: float, x: FloatArray, p: Params, u: FloatArray) -> FloatArray:
        """Return the state at *t1* starting from *x* at *t0*; *x* is not modified."""


class RK4(Solver):
    """Fixed-step classical Runge-Kutta 4 with sub-steps of at most *dt* (model time units)."""

    def __init__(self, dt: float = 1.0) -> None:
        super().__init__()
        if not dt > 0:
            raise ValidationError(f"RK4: dt must be > 0, got {dt}")
        self.dt = dt

    def __repr__(self) -> str:
        return f"RK4(dt={self.dt})"

    def advance(self, model: Model, t0: float, t1: float, x: FloatArray, p: Params, u: FloatArray) -> FloatArray:
        span = t1 - t0
        if span <= 0:
            return x.copy()
        n = max(1, math.ceil(span / self.dt - 1e-9))
        h = span / n
        f = model.rhs
        t = t0
        for _ in range(n):
            k1 = f(t, x, p, u)
            k2 = f(t + 0.5 * h, x + (0.5 * h) * k1, p, u)
            k3 = f(t + 0.5 * h, x + (0.5 * h) * k2, p, u)
            k4 = f(t + h, x + h * k3, p, u)
            x = x + (h / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)
            t += h
        self.rhs_evaluations += 4 * n
        return x


_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


class DormandPrince(Solver):
    """Adaptive Dormand-Prince 5(4) with tolerances *rtol*, *atol* shared by the whole batch."""

    def __init__(
        self, rtol: float = 1e-6, atol: float = 1e-9, first_step: float | None = None, max_steps: int = 100_000
    ) -> None:
        super().__init__()
        if rtol <= 0 or atol <= 0:
            raise ValidationError(f"DormandPrince: rtol and atol must be > 0, got {rtol}, {atol}")
        self.rtol = rtol
        self.atol = atol
        self.first_step = first_step
        self.max_steps = max_steps
        self._h: float | None = None

    def __repr__(self) -> str:
        return f"DormandPrince(rtol={self.rtol}, atol={self.atol})"

    def _initial_step(self, model: Model, t: float, x: FloatArray, p: Params, u: FloatArray, span: float) -> float:
        if self.first_step is not None:
            return min(self.first_step, span)
        if self._h is not None:
            return min(self._h, span)
        f0 = model.rhs(t, x, p, u)
        self.rhs_evaluations += 1
        scale = self.atol + self.rtol * np.abs(x)
        d0 = float(np.sqrt(np.mean((x / scale) ** 2)))
        d1 = float(np.sqrt(np.mean((f0 / scale) ** 2)))
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        return min(h0, span)

    def advance(self, model: Model, t0: float, t1: float, x: FloatArray, p: Params, u: FloatArray) -> FloatArray:
        span = t1 - t0
        if span <= 0:
            return x.copy()
        f = model.rhs
        t = t0
        h = self._initial_step(model, t, x, p, u, span)
        k1 = f(t, x, p, u)
        self.rhs_evaluations += 1
        steps = 0
        while t < t1:
            if steps >= self.max_steps:
                raise IntegrationError(f"DormandPrince: more than {self.max_steps} steps on [{t0}, {t1}]")
            steps += 1
            last = t + h >= t1 - 1e-12 * max(1.0, abs(t1))
            if last:
                h = t1 - t
            ks = [k1]
            for i in range(1, 7):
                xi = x.copy()
                for j, a in enumerate(_A[i]):
                    if a != 0.0:
                        xi += (h * a) * ks[j]
                ks.append(f(t + _C[i] * h, xi, p, u))
            self.rhs_evaluations += 6
            x_new = xi  # row 7 of the tableau equals the 5th-order weights (FSAL)
            err = np.zeros_like(x)
            for j, e in enumerate(_E):
                if e != 0.0:
                    err += (h * e) * ks[j]
            scale = self.atol + self.rtol * np.maximum(np.abs(x), np.abs(x_new))
            norm = float(np.max(np.sqrt(np.mean((err / scale) ** 2, axis=1))))
            if not math.isfinite(norm):
                raise IntegrationError(f"DormandPrince: non-finite state near t={t}")
            if norm <= 1.0:
                t = t1 if last else t + h
                x = x_new
                k1 = ks[6]
                factor = 10.0 if norm == 0.0 else min(10.0, max(0.2, 0.9 * norm**-0.2))
                if not last:
                    self._h = h * factor
                h = h * factor
            else:
                h = h * max(0.2, 0.9 * norm**-0.2)
                if h < 1e-12 * max(1.0, abs(t)):
                    raise IntegrationError(f"DormandPrince: step size underflow at t={t}")
        return x


class ExactLinear(Solver):
    """Exact integration of a linear model ``dx/dt = A x + B u`` (the model implements ``linear_system``).

    ``method="expm"`` (default) propagates each interval between breakpoints with a matrix exponential;
    ``method="modal"`` makes :func:`~medtwin.sim.simulate` hand the whole schedule to the modal
    superposition of :mod:`medtwin.sim.linear` (every output time in one vectorized evaluation; each input
    must feed exactly one state with coefficient 1, and the initial state must be non-negative).
    """

    def __init__(self, method: str = "expm") -> None:
        super().__init__()
        if method not in ("expm", "modal"):
            raise ValidationError(f"ExactLinear: method must be 'expm' or 'modal', got {method!r}")
        self.method = method

    def __repr__(self) -> str:
        return f"ExactLinear(method={self.method!r})"

    def advance(self, model: Model, t0: float, t1: float, x: FloatArray, p: Params, u: FloatArray) -> FloatArray:
        span = t1 - t0
        if span <= 0:
            return x.copy()
        system = model.linear_system(p)
        if system is None:
            raise ValidationError(f"ExactLinear: {type(model).__name__} does not declare a linear system")
        a, b = system
        batch, s = x.shape
        n_in = b.shape[2]
        aug = np.zeros((batch, s + n_in, s + n_in))
        aug[:, :s, :s] = a * span
        aug[:, :s, s:] = b * span
        phi = expm(aug)
        out = np.einsum("bij,bj->bi", phi[:, :s, :s], x) + np.einsum("bij,bj->bi", phi[:, :s, s:], u)
        return np.asarray(out, dtype=np.float64)
