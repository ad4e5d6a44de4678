"""Population PK models read from model files (TOML), and their evaluation for a batch of etas.

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

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from medtwin.dosing.expressions import Expression, compile_expression
from medtwin.errors import ValidationError
from medtwin.sim.linear import ModalSystem, modal_decomposition

__all__ = [
    "CovariateSpec",
    "ErrorModel",
    "ModelError",
    "PKModel",
    "PKSystem",
    "library_models",
    "load_model",
]

FloatArray = npt.NDArray[np.float64]
ErrorKind = Literal["additive", "proportional", "combined1", "combined2"]
_RATE_NAMES = ("k10", "k12", "k21", "k13", "k31", "ka")
_DERIVATIONS = ("cockcroft_gault",)


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
        env: dict[str, FloatArray | float] = {
            k: float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=np.float64) for k, v in covariates.items()
        }
        for i, name in enumerate(self.eta_names):
            env[name] = eta[:, i]
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
        if not (np.all(np.isfinite(A)) and np.all(vc > 0) and np.all(np.isfinite(vc))):
            raise ValidationError(
                f"model {self.id}: non-finite rates or non-positive volume for covariates {dict(covariates)}"
            )
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


def _batch(value: Any, B: int) -> FloatArray:
    """An expression result as an array of shape (B,) (scalars are repeated)."""
    if isinstance(value, np.ndarray) and value.shape == (B,):
        return value
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (B,))


def _get(table: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in table:
        raise ModelError(f"{where}: missing required field {key!r}")
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ModelError(f"{where}.{key}: expected {kind}, got {value!r}")
    return value


def _expr(text: str, *, where: str) -> Expression:
    try:
        return compile_expression(text, where=where)
    except ModelError:
        raise
    except ValidationError as exc:
        raise ModelError(str(exc)) from exc


def _omega(table: Mapping[str, Any], n: int, where: str) -> tuple[FloatArray, str]:
    if "variance" in table:
        om = np.asarray(table["variance"], dtype=np.float64)
        convention = "variance (log-scale eta, P = TV * exp(eta))"
    elif "cv_percent" in table:
        cv = np.asarray(table["cv_percent"], dtype=np.float64) / 100.0
        conv = str(table.get("cv_to_variance", ""))
        if conv == "log":
            var = np.log(cv**2 + 1.0)
            convention = "from %CV via omega^2 = ln(CV^2 + 1)"
        elif conv == "square":
            var = cv**2
            convention = "from %CV via omega^2 = CV^2"
        else:
            raise ModelError(f"{where}.cv_to_variance: must be 'log' or 'square', got {conv!r}")
        corr = np.asarray(table.get("correlation", np.eye(cv.size)), dtype=np.float64)
        sd = np.sqrt(var)
        om = corr * np.outer(sd, sd)
    else:
        raise ModelError(f"{where}: give 'variance' (matrix) or 'cv_percent' (+ cv_to_variance)")
    if om.ndim == 1:
        om = np.diag(om)
    if om.shape != (n, n):
        raise ModelError(f"{where}: Omega has shape {om.shape}, expected ({n}, {n}) for the etas")
    if not np.allclose(om, om.T) or np.any(np.linalg.eigvalsh(om) <= 0):
        raise ModelError(f"{where}: Omega must be symmetric positive definite")
    return om, convention


def _parse_model(data: Mapping[str, Any], source: str) -> PKModel:
    meta = _get(data, "model", source, dict)
    w = f"{source}: [model]"
    model_id = _get(meta, "id", w, str)
    for key in ("drug", "title", "citation", "doi"):
        _get(meta, key, w, str)
    covs: list[CovariateSpec] = []
    for name, spec in dict(data.get("covariates", {})).items():
        cw = f"{source}: [covariates.{name}]"
        if not isinstance(spec, dict):
            raise ModelError(f"{cw}: expected a table")
        derive = spec.get("derive")
        src = spec.get("from")
        if (derive is None) == (src is None):
            raise ModelError(f"{cw}: give exactly one of 'from' (a patient field) or 'derive'")
        if derive is not None and derive not in _DERIVATIONS:
            raise ModelError(f"{cw}.derive: unknown derivation {derive!r}; known: {_DERIVATIONS}")
        valid = spec.get("valid", [None, None])
        opts = {k: v for k, v in spec.items() if k not in ("unit", "description", "from", "derive", "default", "valid")}
        covs.append(
            CovariateSpec(
                name=name,
                unit=_get(spec, "unit", cw, str),
                description=str(spec.get("description", "")),
                source=src,
                derive=derive,
                default=None if spec.get("default") is None else float(spec["default"]),
                valid_min=None if valid[0] is None else float(valid[0]),
                valid_max=None if valid[1] is None else float(valid[1]),
                options=opts,
            )
        )
    params_table = _get(data, "parameters", source, dict)
    params = tuple((name, _expr(text, where=f"{source}: [parameters].{name}")) for name, text in params_table.items())
    struct = _get(data, "structure", source, dict)
    sw = f"{source}: [structure]"
    n_cmt = _get(struct, "compartments", sw, int)
    if n_cmt not in (1, 2, 3):
        raise ModelError(f"{sw}.compartments: must be 1, 2 or 3, got {n_cmt}")
    needed = ["k10"] + (["k12", "k21"] if n_cmt >= 2 else []) + (["k13", "k31"] * (n_cmt == 3))
    rates = {r: _expr(str(struct[r]), where=f"{sw}.{r}") for r in _RATE_NAMES if r in struct}
    missing = [r for r in needed if r not in rates]
    if missing:
        raise ModelError(f"{sw}: a {n_cmt}-compartment model needs rates {missing}")
    extra = [r for r in rates if r not in needed and r != "ka"]
    if extra:
        raise ModelError(f"{sw}: rates {extra} do not belong to a {n_cmt}-compartment model")
    volume = _expr(str(_get(struct, "central_volume", sw, str)), where=f"{sw}.vc")
    lag = _expr(str(struct["lag"]), where=f"{sw}.lag") if "lag" in struct else None
    fbio = _expr(str(struct["bioavailability"]), where=f"{sw}.bioavailability") if "bioavailability" in struct else None
    om_table = _get(data, "omega", source, dict)
    eta_names = tuple(_get(om_table, "etas", f"{source}: [omega]", list))
    omega, om_conv = _omega(om_table, len(eta_names), f"{source}: [omega]")
    known = {c.name for c in covs} | set(eta_names)
    for name, expr in params:
        unknown = expr.names - known
        if unknown:
            raise ModelError(f"{source}: [parameters].{name} uses undefined names {sorted(unknown)}")
        known.add(name)
    for label, expr2 in [*rates.items(), ("central_volume", volume), ("lag", lag), ("F", fbio)]:
        if expr2 is not None and expr2.names - known:
            raise ModelError(f"{sw}.{label}: undefined names {sorted(expr2.names - known)}")
    err = _get(data, "error", source, dict)
    ew = f"{source}: [error]"
    kind = _get(err, "model", ew, str)
    if kind not in ("additive", "proportional", "combined1", "combined2"):
        raise ModelError(f"{ew}.model: unknown error model {kind!r}")
    add_sd = float(err.get("additive_sd_mg_l", math.sqrt(float(err.get("additive_var", 0.0)))))
    prop_sd = float(err.get("proportional_sd", math.sqrt(float(err.get("proportional_var", 0.0)))))
    if add_sd < 0 or prop_sd < 0 or (add_sd == 0 and prop_sd == 0):
        raise ModelError(f"{ew}: residual SDs must be >= 0 and not both zero")
    validity = {k: (float(v[0]), float(v[1])) for k, v in dict(data.get("validity", {})).items()}
    unverified = meta.get("unverified", [])
    if not isinstance(unverified, list) or not all(isinstance(u, str) for u in unverified):
        raise ModelError(f"{w}.unverified: expected a list of strings")
    return PKModel(
        id=model_id,
        drug=meta["drug"],
        title=meta["title"],
        citation=meta["citation"],
        doi=meta["doi"],
        erratum=str(meta.get("erratum", "none known")),
        version=str(meta.get("version", "")),
        population=str(meta.get("population", "")),
        notes=str(meta.get("notes", "")),
        compartments=n_cmt,
        covariates=tuple(covs),
        raw_validity=validity,
        parameters=params,
        rates=rates,
        central_volume=volume,
        lag=lag,
        bioavailability=fbio,
        eta_names=eta_names,
        omega=omega,
        omega_convention=om_conv,
        error=ErrorModel(kind=kind, additive_sd=add_sd, proportional_sd=prop_sd),  # type: ignore[arg-type]
        medication={k: str(v) for k, v in dict(meta.get("medication", {})).items()},
        level_code={k: str(v) for k, v in dict(meta.get("level_code", {})).items()},
        source_path=source,
        validity_source=str(meta.get("validity_source", "")),
        unverified=tuple(unverified),
    )


def load_model(name_or_path: str | Path) -> PKModel:
    """Load a library model by id (e.g. ``"goti2018_vancomycin"``) or a model file by path."""
    text = str(name_or_path)
    if text.endswith(".toml") or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ModelError(f"model file {path}: invalid TOML: {exc}") from exc
        return _parse_model(data, str(path))
    files = resources.files("medtwin.dosing") / "models"
    entry = files / f"{text}.toml"
    if not entry.is_file():
        known = ", ".join(library_models())
        raise ModelError(f"unknown model {text!r}; library models: {known}")
    return _parse_model(tomllib.loads(entry.read_text(encoding="utf-8")), f"{text}.toml")


def library_models() -> list[str]:
    """Ids of the models shipped with medtwin."""
    files = resources.files("medtwin.dosing") / "models"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))
