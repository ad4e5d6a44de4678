"""Population PK models (read from model files by :mod:`medtwin.dosing.modelfile`) and their evaluation
for a batch of etas.

A model file (format: docs/dosing-model-format.md) declares the source (citation, DOI, erratum),
where its validity ranges come from (``validity_source``) and which of its statements could not be
checked against the original paper (``unverified``), covariates with units, derivations and
validity ranges, individual-parameter expressions with the
random effects ``ETA_*`` (log-normal: ``P = TV * exp(ETA)`` is written out in the expression),
the compartment structure as micro-constants (``k10``, ``k12``, ``k21``, ``k13``, ``k31``, ``ka``),
the central volume, optional lag time and bioavailability, Omega (variance matrix, or %CV with a
stated conversion) and the residual error model with its convention:

* ``additive``: SD = a;  ``proportional``: SD = b f;
* ``combined1``: SD = a + b f (posologyr's convention, summed SDs);
* ``combined2``: SD = sqrt(a^2 + b^2 f^2) (NONMEM ``Y = F + F*EPS(1) + EPS(2)``, summed variances).

Units are fixed for the whole library: amounts mg, time h, volumes L, concentrations mg/L.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from medtwin.dosing.expressions import Expression, ExpressionError
from medtwin.errors import ValidationError
from medtwin.sim.linear import ModalSystem, modal_decomposition

__all__ = ["RATE_NAMES", "CovariateSpec", "ErrorKind", "ErrorModel", "ModelError", "PKModel", "PKSystem"]

FloatArray = npt.NDArray[np.float64]
ErrorKind = Literal["additive", "proportional", "combined1", "combined2"]
#: The rate constants of the compartment structure, in the order :meth:`PKModel.expressions` lists them.
RATE_NAMES = ("k10", "k12", "k21", "k13", "k31", "ka")


class ModelError(ValidationError):
    """A model file that is malformed or inconsistent (names the file and the field)."""


@dataclass(frozen=True, slots=True)
class CovariateSpec:
    """One model covariate: *name* as used in expressions, *unit*, and how to obtain it."""

    name: str
    unit: str
    description: str
    source: str | None = None
    derive: str | None = None
    default: float | None = None
    valid_min: float | None = None
    valid_max: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    typical: float | None = None

    @property
    def typical_value(self) -> float:
        """The value for a typical patient: ``typical``, else ``default``, else the middle of ``valid``."""
        if self.typical is not None:
            return self.typical
        if self.default is not None:
            return self.default
        if self.valid_min is not None and self.valid_max is not None:
            return (self.valid_min + self.valid_max) / 2.0
        raise ModelError(f"covariate {self.name}: no typical value (give 'typical' or 'valid')")


@dataclass(frozen=True, slots=True)
class ErrorModel:
    """Residual error: SD of an observation at prediction ``f`` (mg/L)."""

    kind: ErrorKind
    additive_sd: float = 0.0
    proportional_sd: float = 0.0

    def sd(self, f: FloatArray) -> FloatArray:
        """Residual SD at predictions *f* (any shape)."""
        a, b = self.additive_sd, self.proportional_sd
        if self.kind == "additive":
            return np.full_like(f, a)
        if self.kind == "proportional":
            return b * np.abs(f)
        if self.kind == "combined1":
            return a + b * np.abs(f)
        return np.sqrt(a * a + (b * f) ** 2)


@dataclass(frozen=True, slots=True)
class PKSystem:
    """Linear system of a batch of individuals: rate matrices, output weights, lag and F."""

    matrix: FloatArray  # (B, n, n)
    modal: ModalSystem  # eigen-decomposition of matrix, computed once per system
    weights: FloatArray  # (B, n): 1/V_central on the central compartment
    lag_h: FloatArray  # (B,)
    bioavailability: FloatArray  # (B,)
    central: int
    depot: int | None
    parameters: Mapping[str, FloatArray]


@dataclass(frozen=True, slots=True)
class PKModel:
    """A population PK model (see the module docstring and docs/dosing-model-format.md)."""

    id: str
    drug: str
    title: str
    citation: str
    doi: str
    erratum: str
    version: str
    population: str
    notes: str
    compartments: int
    covariates: tuple[CovariateSpec, ...]
    raw_validity: Mapping[str, tuple[float, float]]
    parameters: tuple[tuple[str, Expression], ...]
    rates: Mapping[str, Expression]
    central_volume: Expression
    lag: Expression | None
    bioavailability: Expression | None
    eta_names: tuple[str, ...]
    omega: FloatArray
    omega_convention: str
    error: ErrorModel
    medication: Mapping[str, str]
    level_code: Mapping[str, str]
    source_path: str
    validity_source: str = ""
    unverified: tuple[str, ...] = ()
    parameter_units: Mapping[str, str] = field(default_factory=dict)

    def typical_covariates(self) -> dict[str, float]:
        """Covariate values of the model's typical patient (see :attr:`CovariateSpec.typical_value`)."""
        return {c.name: c.typical_value for c in self.covariates}

    def expressions(self) -> list[tuple[str, Expression]]:
        """Every expression of the model with the field it comes from, in evaluation order."""
        out = [(f"[parameters].{name}", e) for name, e in self.parameters]
        out += [(f"[structure].{r}", self.rates[r]) for r in RATE_NAMES if r in self.rates]
        out.append(("[structure].central_volume", self.central_volume))
        out += [(f"[structure].{n}", e) for n, e in (("lag", self.lag), ("bioavailability", self.bioavailability))
                if e is not None]  # fmt: skip
        return out

    @property
    def has_depot(self) -> bool:
        """True when the model has first-order absorption (a ``ka`` rate)."""
        return "ka" in self.rates

    def covariate(self, name: str) -> CovariateSpec:
        """The covariate spec called *name*."""
        for spec in self.covariates:
            if spec.name == name:
                return spec
        raise ModelError(f"model {self.id}: no covariate {name!r}")

    def system(self, covariates: Mapping[str, Any], etas: FloatArray) -> PKSystem:
        """Build the linear system for covariates and a batch of etas ``(B, n_eta)``.

        Covariates are floats, or arrays of shape ``(B,)`` (one value per batch member).
        """
        eta = np.atleast_2d(np.asarray(etas, dtype=np.float64))
        if eta.shape[1] != len(self.eta_names):
            raise ValidationError(f"model {self.id}: expected {len(self.eta_names)} etas, got {eta.shape[1]}")
        B = eta.shape[0]
        env: dict[str, Any] = {
            k: np.float64(v) if np.ndim(v) == 0 else np.asarray(v, dtype=np.float64) for k, v in covariates.items()
        }
        for i, name in enumerate(self.eta_names):
            env[name] = eta[:, i]
        with np.errstate(all="ignore"):  # IEEE results, checked below (and explained by _explain)
            return self._system(env, B, covariates)

    def _system(self, env: dict[str, Any], B: int, covariates: Mapping[str, Any]) -> PKSystem:
        params: dict[str, FloatArray] = {}
        for name, expr in self.parameters:
            value = _batch(expr(env), B)
            env[name] = value
            params[name] = value
        depot = 0 if self.has_depot else None
        central = 1 if self.has_depot else 0
        n = self.compartments + (1 if self.has_depot else 0)
        A = np.zeros((B, n, n))

        def flow(rate: str, src: int, dst: int | None) -> None:
            k = _batch(self.rates[rate](env), B)
            A[:, src, src] -= k
            if dst is not None:
                A[:, dst, src] += k

        flow("k10", central, None)
        if self.compartments >= 2:
            flow("k12", central, central + 1)
            flow("k21", central + 1, central)
        if self.compartments == 3:
            flow("k13", central, central + 2)
            flow("k31", central + 2, central)
        if depot is not None:
            flow("ka", depot, central)
        vc = _batch(self.central_volume(env), B)
        weights = np.zeros((B, n))
        weights[:, central] = 1.0 / vc
        lag = np.zeros(B) if self.lag is None else _batch(self.lag(env), B)
        fbio = np.ones(B) if self.bioavailability is None else _batch(self.bioavailability(env), B)
        # one reduction over everything computed (a parameter can be inf while the rates stay finite: V2 = inf
        # makes k21 = 0), then the explanation only on failure
        values = np.concatenate([A.reshape(-1), vc, lag, fbio, *params.values()])
        if not (np.isfinite(values).all() and (vc > 0).all()):
            self._explain(env, covariates)
        return PKSystem(
            matrix=A,
            modal=modal_decomposition(A),
            weights=weights,
            lag_h=lag,
            bioavailability=fbio,
            central=central,
            depot=depot,
            parameters=params,
        )

    def _explain(self, env: Mapping[str, Any], covariates: Mapping[str, Any]) -> None:
        """Raise the error that names the first expression with a non-finite (or a non-positive volume) value."""
        shown = {k: v for k, v in covariates.items() if np.ndim(v) == 0}
        for _field_name, expr in self.expressions():
            try:
                expr.evaluate(env)
            except ExpressionError as exc:
                raise ModelError(f"{exc} (covariates {shown})") from None  # exc names the file and field
        raise ModelError(
            f"{self.source_path}: [structure].central_volume {self.central_volume.text!r} is not positive "
            f"for covariates {shown}"
        )


def _batch(value: Any, B: int) -> FloatArray:
    """An expression result as an array of shape (B,) (scalars are repeated)."""
    if isinstance(value, np.ndarray) and value.shape == (B,):
        return value
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (B,))
