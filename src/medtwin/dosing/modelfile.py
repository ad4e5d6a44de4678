"""Model files (TOML) read strictly into :class:`~medtwin.dosing.model.PKModel`: :func:`load_model`.

A model file (docs/dosing-model-format.md) must not be silently wrong: a misspelt key
(``proportional_sd`` written ``proportinal_sd``) would otherwise set that term to its default and
change every fit without a word.  So every table accepts only its known keys and an unknown one is
a :class:`ModelError` with the closest known key (:func:`~medtwin.errors.did_you_mean`); every value is read
with its type (a number, a pair of numbers, a matrix) and a wrong one names the file, the table and the
key; keys starting with ``_`` are comments, as in case files.  The file must start with
``schema = 1`` (:data:`SCHEMA_VERSION`).  An eta that no expression uses, a covariate that no
expression reads, and an expression that is not finite for the model's typical patient (eta = 0,
covariates at their ``typical`` values) are errors.  Parameter units are inferred from the
structure (:func:`infer_parameter_units`) and may be declared in ``[units]``; a declaration that
contradicts the structure is an error.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from medtwin import codes
from medtwin.dosing.expressions import Expression, ExpressionError, compile_expression, finite_number
from medtwin.dosing.model import RATE_NAMES, CovariateSpec, ErrorKind, ErrorModel, ModelError, PKModel
from medtwin.errors import UnitError, did_you_mean

__all__ = ["SCHEMA_VERSION", "infer_parameter_units", "library_models", "load_model"]

FloatArray = npt.NDArray[np.float64]
_DERIVATIONS = ("cockcroft_gault",)
_WEIGHTS = ("total", "ideal", "adjusted")
# Raw case fields a [validity] table may bound (the case-file covariate fields).
_VALIDITY_FIELDS = frozenset({"age_y", "weight_kg", "height_cm", "scr", "crcl", "dialysis"})
_ERROR_TERMS = {
    "additive": ("additive",),
    "proportional": ("proportional",),
    "combined1": ("additive", "proportional"),
    "combined2": ("additive", "proportional"),
}

#: The model-file format this medtwin reads (``schema = 1`` at the top of every file).
SCHEMA_VERSION = 1

_TOP_LEVEL_KEYS = frozenset(
    {"schema", "model", "covariates", "validity", "parameters", "units", "structure", "omega", "error"}
)
_MODEL_KEYS = frozenset(
    {
        "id",
        "drug",
        "title",
        "citation",
        "doi",
        "erratum",
        "version",
        "population",
        "validity_source",
        "unverified",
        "notes",
        "medication",
        "level_code",
    }
)
_CODING_KEYS = frozenset({"system", "code", "display"})
#: Keys of a covariate read from a case field (``from``) or derived (``derive``).
_COVARIATE_KEYS = frozenset({"unit", "description", "from", "derive", "default", "valid", "typical"})
#: Extra keys of a Cockcroft-Gault derived covariate.
_DERIVATION_KEYS = frozenset({"weight", "max_ml_min", "scr_floor_mg_dl", "scr_floor_above_age_y"})
_STRUCTURE_KEYS = frozenset(
    {"compartments", "k10", "k12", "k21", "k13", "k31", "ka", "lag", "bioavailability", "central_volume"}
)
_OMEGA_KEYS = frozenset({"etas", "variance", "cv_percent", "correlation", "cv_to_variance"})
_ERROR_KEYS = frozenset({"model", "additive_sd_mg_l", "additive_var", "proportional_sd", "proportional_var"})


def _check_keys(entry: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys of *entry* that are not in *allowed* (keys starting with ``_`` are comments)."""
    allowed = frozenset(allowed)
    for key in entry:
        name = str(key)
        if name in allowed or name.startswith("_"):
            continue
        raise ModelError(
            f"{where}: unknown key {name!r}{did_you_mean(name, allowed)} (known: {', '.join(sorted(allowed))})"
        )


def _read_table(data: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> dict[str, Any]:
    """The sub-table *key* of *data* (an empty one when absent and not *required*)."""
    if key not in data:
        if required:
            raise ModelError(f"{where}: missing table [{key}]")
        return {}
    value = data[key]
    if not isinstance(value, Mapping):
        raise ModelError(f"{where}: [{key}] must be a table, got {value!r}")
    return dict(value)


def _read_text(data: Mapping[str, Any], key: str, where: str, *, required: bool = True, default: str = "") -> str:
    """A string value."""
    if key not in data:
        if required:
            raise ModelError(f"{where}: missing required field {key!r}")
        return default
    value = data[key]
    if not isinstance(value, str):
        raise ModelError(f"{where}.{key}: expected a string, got {value!r}")
    return value


def _read_text_list(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    """A list of strings (empty when absent)."""
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelError(f"{where}.{key}: expected a list of strings, got {value!r}")
    return tuple(value)


def _read_number(value: Any, where: str) -> float:
    """A finite number (TOML integer or float; a string such as ``"70"`` or a boolean is refused)."""
    try:
        return finite_number(value, where)
    except ExpressionError as exc:
        raise ModelError(str(exc)) from None


def _read_pair(value: Any, where: str) -> tuple[float, float]:
    """``[low, high]`` with low < high."""
    if not isinstance(value, list) or len(value) != 2:
        raise ModelError(f"{where}: expected [low, high], got {value!r}")
    low, high = _read_number(value[0], f"{where}[0]"), _read_number(value[1], f"{where}[1]")
    if not low < high:
        raise ModelError(f"{where}: low must be below high, got [{low:g}, {high:g}]")
    return low, high


def _read_matrix(value: Any, where: str) -> npt.NDArray[np.float64]:
    """A list of numbers or a list of equal-length lists of numbers, as a float array."""
    if not isinstance(value, list):
        raise ModelError(f"{where}: expected a list of numbers or a matrix (list of lists), got {value!r}")
    if any(isinstance(row, list) for row in value):
        if not all(isinstance(row, list) and len(row) == len(value) for row in value):
            raise ModelError(f"{where}: a matrix must be square (one row per eta), got {value!r}")
        rows = [[_read_number(v, f"{where}[{i}][{j}]") for j, v in enumerate(row)] for i, row in enumerate(value)]
        return np.asarray(rows, dtype=np.float64).reshape(len(value), len(value))
    return np.asarray([_read_number(v, f"{where}[{i}]") for i, v in enumerate(value)], dtype=np.float64)


def _expr(value: Any, where: str) -> Expression:
    try:
        return compile_expression(value, where=where)
    except ExpressionError as exc:
        raise ModelError(str(exc)) from None


def _omega(table: Mapping[str, Any], n: int, where: str) -> tuple[FloatArray, str]:
    if "variance" in table and "cv_percent" in table:
        raise ModelError(f"{where}: give 'variance' or 'cv_percent', not both")
    if "variance" in table:
        for key in ("correlation", "cv_to_variance"):
            if key in table:
                raise ModelError(f"{where}.{key}: only used with 'cv_percent'")
        om = _read_matrix(table["variance"], f"{where}.variance")
        convention = "variance (log-scale eta, P = TV * exp(eta))"
    elif "cv_percent" in table:
        cv = _read_matrix(table["cv_percent"], f"{where}.cv_percent") / 100.0
        if cv.ndim != 1:
            raise ModelError(f"{where}.cv_percent: expected a list of %CV, one per eta")
        conv = _read_text(table, "cv_to_variance", where)
        if conv == "log":
            var = np.log(cv**2 + 1.0)
            convention = "from %CV via omega^2 = ln(CV^2 + 1)"
        elif conv == "square":
            var = cv**2
            convention = "from %CV via omega^2 = CV^2"
        else:
            raise ModelError(f"{where}.cv_to_variance: must be 'log' or 'square', got {conv!r}")
        corr = _read_matrix(table["correlation"], f"{where}.correlation") if "correlation" in table else np.eye(cv.size)
        if corr.shape != (cv.size, cv.size):
            raise ModelError(f"{where}.correlation: shape {corr.shape}, expected ({cv.size}, {cv.size})")
        sd = np.sqrt(var)
        om = corr * np.outer(sd, sd)
    elif n == 0:
        return np.zeros((0, 0)), "no random effects (every patient is the typical patient)"
    else:
        raise ModelError(f"{where}: give 'variance' (matrix) or 'cv_percent' (+ cv_to_variance)")
    if om.ndim == 1:
        om = np.diag(om)
    if om.shape != (n, n):
        raise ModelError(f"{where}: Omega has shape {om.shape}, expected ({n}, {n}) for the {n} etas")
    if n and (not np.allclose(om, om.T) or np.any(np.linalg.eigvalsh(om) <= 0)):
        raise ModelError(f"{where}: Omega must be symmetric positive definite")
    return om, convention


def _coding(meta: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    table = _read_table(meta, key, where, required=False)
    _check_keys(table, _CODING_KEYS, f"{where}.{key}")
    return {k: _read_text(table, k, f"{where}.{key}") for k in table}


def _covariate(name: str, spec: Any, where: str) -> CovariateSpec:
    if not isinstance(spec, Mapping):
        raise ModelError(f"{where}: expected a table")
    derive = spec.get("derive")
    src = spec.get("from")
    if (derive is None) == (src is None):
        raise ModelError(f"{where}: give exactly one of 'from' (a patient field) or 'derive'")
    _check_keys(spec, _COVARIATE_KEYS | (_DERIVATION_KEYS if derive is not None else frozenset()), where)
    if derive is not None and derive not in _DERIVATIONS:
        raise ModelError(f"{where}.derive: unknown derivation {derive!r}; known: {', '.join(_DERIVATIONS)}")
    if src is not None and not isinstance(src, str):
        raise ModelError(f"{where}.from: expected a case-file field name, got {src!r}")
    unit = _read_text(spec, "unit", where)
    try:
        codes.conversion_factor(unit, unit)
    except UnitError as exc:
        raise ModelError(f"{where}.unit: {exc}") from None
    if derive == "cockcroft_gault" and not codes.is_compatible(unit, "mL/min"):
        raise ModelError(f"{where}.unit: a Cockcroft-Gault clearance needs a flow unit (mL/min, L/h), got {unit!r}")
    options: dict[str, Any] = {}
    for key in _DERIVATION_KEYS & set(spec):
        if key == "weight":
            options[key] = _read_text(spec, key, where)
            if options[key] not in _WEIGHTS:
                raise ModelError(f"{where}.weight: must be one of {', '.join(_WEIGHTS)}, got {options[key]!r}")
        else:
            options[key] = _read_number(spec[key], f"{where}.{key}")
    valid = _read_pair(spec["valid"], f"{where}.valid") if "valid" in spec else None
    out = CovariateSpec(
        name=name,
        unit=unit,
        description=_read_text(spec, "description", where, required=False),
        source=src,
        derive=derive,
        default=_read_number(spec["default"], f"{where}.default") if "default" in spec else None,
        valid_min=None if valid is None else valid[0],
        valid_max=None if valid is None else valid[1],
        options=options,
        typical=_read_number(spec["typical"], f"{where}.typical") if "typical" in spec else None,
    )
    if out.typical is None and out.default is None and valid is None:
        raise ModelError(f"{where}: give 'valid' (the validity range) or 'typical' (a typical patient's value)")
    return out


def _error_model(err: Mapping[str, Any], where: str) -> ErrorModel:
    _check_keys(err, _ERROR_KEYS, where)
    kind = _read_text(err, "model", where)
    if kind not in _ERROR_TERMS:
        raise ModelError(f"{where}.model: unknown error model {kind!r}{did_you_mean(kind, _ERROR_TERMS)}")
    sds: dict[str, float] = {}
    for term, unit in (("additive", "_mg_l"), ("proportional", "")):
        sd_key, var_key = f"{term}_sd{unit}", f"{term}_var"
        given = [k for k in (sd_key, var_key) if k in err]
        if len(given) == 2:
            raise ModelError(f"{where}: give {sd_key} or {var_key}, not both")
        if term not in _ERROR_TERMS[kind]:
            if given:
                raise ModelError(f"{where}.{given[0]}: the {kind} error model has no {term} term")
            continue
        if not given:
            raise ModelError(f"{where}: the {kind} error model needs {sd_key} (an SD) or {var_key} (a variance)")
        value = _read_number(err[given[0]], f"{where}.{given[0]}")
        if value <= 0:
            raise ModelError(f"{where}.{given[0]}: must be > 0, got {value:g}")
        sds[term] = value if given[0] == sd_key else math.sqrt(value)
    return ErrorModel(
        kind=cast(ErrorKind, kind), additive_sd=sds.get("additive", 0.0), proportional_sd=sds.get("proportional", 0.0)
    )


def _structure(struct: Mapping[str, Any], sw: str) -> tuple[int, dict[str, Expression], Expression, Any, Any]:
    _check_keys(struct, _STRUCTURE_KEYS, sw)
    n_cmt = struct.get("compartments")
    if isinstance(n_cmt, bool) or n_cmt not in (1, 2, 3):
        raise ModelError(f"{sw}.compartments: must be 1, 2 or 3, got {n_cmt!r}")
    needed = ["k10"] + (["k12", "k21"] if n_cmt >= 2 else []) + (["k13", "k31"] * (n_cmt == 3))
    rates = {r: _expr(struct[r], f"{sw}.{r}") for r in RATE_NAMES if r in struct}
    missing = [r for r in needed if r not in rates]
    if missing:
        raise ModelError(f"{sw}: a {n_cmt}-compartment model needs rates {missing}")
    extra = [r for r in rates if r not in needed and r != "ka"]
    if extra:
        raise ModelError(f"{sw}: rates {extra} do not belong to a {n_cmt}-compartment model")
    if "central_volume" not in struct:
        raise ModelError(f"{sw}: missing required field 'central_volume'")
    volume = _expr(struct["central_volume"], f"{sw}.central_volume")
    lag = _expr(struct["lag"], f"{sw}.lag") if "lag" in struct else None
    fbio = _expr(struct["bioavailability"], f"{sw}.bioavailability") if "bioavailability" in struct else None
    if (lag is not None or fbio is not None) and "ka" not in rates:
        raise ModelError(f"{sw}: lag and bioavailability apply to depot doses: they need an absorption rate 'ka'")
    return int(n_cmt), rates, volume, lag, fbio


def _check_names(model: PKModel, source: str) -> None:
    """Every name is defined before use; every eta and covariate is used by some expression."""
    known = {c.name for c in model.covariates} | set(model.eta_names)
    used: set[str] = set()
    for field_name, expr in model.expressions():
        unknown = sorted(expr.names - known)
        if unknown:
            hint = did_you_mean(unknown[0], known)
            raise ModelError(f"{source}: {field_name} uses undefined names {unknown}{hint}")
        used |= expr.names
        if field_name.startswith("[parameters]."):
            known.add(field_name.removeprefix("[parameters]."))
    unused = [e for e in model.eta_names if e not in used]
    if unused:
        raise ModelError(
            f"{source}: [omega].etas: {', '.join(unused)} declared but used by no expression "
            "(its variance would still shape the fit); use it, e.g. '* exp(" + unused[0] + ")', or remove it"
        )
    idle = [c.name for c in model.covariates if c.name not in used]
    if idle:
        raise ModelError(f"{source}: [covariates.{idle[0]}] is declared but used by no expression")


def _single_name(expr: Expression | None) -> str | None:
    if expr is None:
        return None
    node = ast.parse(expr.text.strip(), mode="eval").body
    return node.id if isinstance(node, ast.Name) else None


def _ratio_names(expr: Expression) -> tuple[str, str] | None:
    node = ast.parse(expr.text.strip(), mode="eval").body
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Div)
        and isinstance(node.left, ast.Name)
        and isinstance(node.right, ast.Name)
    ):
        return node.left.id, node.right.id
    return None


def infer_parameter_units(model: PKModel) -> dict[str, str]:
    """Units of the parameters that the structure determines.

    The central volume is ``L``; a rate written as one parameter is ``1/h`` (``ka``: ``1/h``); ``lag`` is
    ``h``, ``bioavailability`` ``1``; in a rate ``X / Y`` a volume ``Y`` makes ``X`` a clearance (``L/h``) and
    a clearance ``X`` makes ``Y`` a volume.  Repeated until nothing new is learnt.
    """
    params = {name for name, _ in model.parameters}
    units: dict[str, str] = {}
    for expr, unit in ((model.central_volume, "L"), (model.lag, "h"), (model.bioavailability, "1")):
        name = _single_name(expr)
        if name in params:
            units.setdefault(name, unit)
    for expr in model.rates.values():
        name = _single_name(expr)
        if name in params:
            units.setdefault(name, "1/h")
    ratios = [r for r in (_ratio_names(e) for e in model.rates.values()) if r is not None]
    changed = True
    while changed:
        changed = False
        for top, bottom in ratios:
            if units.get(bottom) == "L" and top in params and top not in units:
                units[top], changed = "L/h", True
            if units.get(top) == "L/h" and bottom in params and bottom not in units:
                units[bottom], changed = "L", True
    return units


def _parameter_units(model: PKModel, declared: Mapping[str, Any], source: str) -> dict[str, str]:
    where = f"{source}: [units]"
    names = [name for name, _ in model.parameters]
    inferred = infer_parameter_units(model)
    out = dict(inferred)
    for name, unit in declared.items():
        if name not in names:
            raise ModelError(f"{where}: {name!r} is not a parameter{did_you_mean(name, names)}")
        if not isinstance(unit, str):
            raise ModelError(f"{where}.{name}: expected a UCUM unit string, got {unit!r}")
        try:
            codes.conversion_factor(unit, unit)
        except UnitError as exc:
            raise ModelError(f"{where}.{name}: {exc}") from None
        if name in inferred and not codes.is_compatible(unit, inferred[name]):
            raise ModelError(
                f"{where}.{name}: declared {unit!r}, but the structure makes {name} a {inferred[name]} quantity"
            )
        out[name] = unit
    return {name: out[name] for name in names if name in out}


def _typical_check(model: PKModel) -> None:
    """Evaluate every expression for the typical patient (eta = 0): a non-finite value is an error now."""
    env: dict[str, Any] = {k: np.float64(v) for k, v in model.typical_covariates().items()}
    env |= {e: np.zeros(1) for e in model.eta_names}
    values: dict[str, float] = {}
    for field_name, expr in model.expressions():
        try:
            value = float(np.asarray(expr.evaluate(env)).reshape(-1)[0])
        except ExpressionError as exc:
            raise ModelError(f"{exc} (typical patient, etas 0)") from None  # exc names the file and field
        values[field_name] = value
        if field_name.startswith("[parameters]."):
            env[field_name.removeprefix("[parameters].")] = np.float64(value)
    for field_name, value in values.items():
        bad = (
            (field_name.startswith("[structure].k") and value < 0)
            or (field_name == "[structure].central_volume" and value <= 0)
            or (field_name == "[structure].lag" and value < 0)
            or (field_name == "[structure].bioavailability" and value <= 0)
        )
        if bad:
            raise ModelError(f"{model.source_path}: {field_name} = {value:.6g} for the typical patient is not valid")


def _parse_model(data: Mapping[str, Any], source: str) -> PKModel:
    _check_keys(data, _TOP_LEVEL_KEYS, source)
    if "schema" not in data:
        raise ModelError(f"{source}: missing 'schema = {SCHEMA_VERSION}' (the model-file format version) at the top")
    if data["schema"] != SCHEMA_VERSION or isinstance(data["schema"], bool):
        raise ModelError(
            f"{source}: schema = {data['schema']!r} is not supported; this medtwin reads schema {SCHEMA_VERSION} "
            "(docs/dosing-model-format.md)"
        )
    meta = _read_table(data, "model", source)
    w = f"{source}: [model]"
    _check_keys(meta, _MODEL_KEYS, w)
    required = {key: _read_text(meta, key, w) for key in ("id", "drug", "title", "citation", "doi")}
    covs = [
        _covariate(name, spec, f"{source}: [covariates.{name}]")
        for name, spec in _read_table(data, "covariates", source, required=False).items()
    ]
    validity: dict[str, tuple[float, float]] = {}
    for key, rng in _read_table(data, "validity", source, required=False).items():
        if key not in _VALIDITY_FIELDS:
            raise ModelError(
                f"{source}: [validity].{key}: not a case field{did_you_mean(key, _VALIDITY_FIELDS)} "
                f"(known: {', '.join(sorted(_VALIDITY_FIELDS))})"
            )
        validity[key] = _read_pair(rng, f"{source}: [validity].{key}")
    params_table = _read_table(data, "parameters", source)
    if not params_table:
        raise ModelError(f"{source}: [parameters] is empty")
    params = tuple((name, _expr(text, f"{source}: [parameters].{name}")) for name, text in params_table.items())
    n_cmt, rates, volume, lag, fbio = _structure(_read_table(data, "structure", source), f"{source}: [structure]")
    om_table = _read_table(data, "omega", source)
    ow = f"{source}: [omega]"
    _check_keys(om_table, _OMEGA_KEYS, ow)
    if "etas" not in om_table:
        raise ModelError(f"{ow}: missing 'etas' (the random-effect names; etas = [] for none)")
    eta_names = _read_text_list(om_table, "etas", ow)
    if len(set(eta_names)) != len(eta_names):
        raise ModelError(f"{ow}.etas: a name is given twice: {list(eta_names)}")
    clash = sorted(set(eta_names) & ({c.name for c in covs} | {p for p, _ in params}))
    if clash:
        raise ModelError(f"{ow}.etas: {clash} also name a covariate or a parameter")
    omega, om_conv = _omega(om_table, len(eta_names), ow)
    model = PKModel(
        id=required["id"],
        drug=required["drug"],
        title=required["title"],
        citation=required["citation"],
        doi=required["doi"],
        erratum=_read_text(meta, "erratum", w, required=False, default="none known"),
        version=_read_text(meta, "version", w, required=False),
        population=_read_text(meta, "population", w, required=False),
        notes=_read_text(meta, "notes", w, required=False),
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
        error=_error_model(_read_table(data, "error", source), f"{source}: [error]"),
        medication=_coding(meta, "medication", w),
        level_code=_coding(meta, "level_code", w),
        source_path=source,
        validity_source=_read_text(meta, "validity_source", w, required=False),
        unverified=_read_text_list(meta, "unverified", w),
    )
    _check_names(model, source)
    units = _parameter_units(model, _read_table(data, "units", source, required=False), source)
    model = dataclasses.replace(model, parameter_units=units)
    _typical_check(model)
    return model


def load_model(name_or_path: str | Path, *, relative_to: str | Path | None = None) -> PKModel:
    """Load a library model by id (e.g. ``"goti2018_vancomycin"``) or a model file by path.

    A relative path is resolved against *relative_to* (a case file's folder) when given, else
    against the current folder.  A name with a path separator or ending in ``.toml`` is a path.
    """
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text or Path(text).is_file():
        path = Path(text)
        if relative_to is not None and not path.is_absolute():
            path = Path(relative_to) / path
        if not path.is_file():
            where = f" (relative to {relative_to})" if relative_to is not None and not Path(text).is_absolute() else ""
            raise ModelError(f"model file {path} does not exist{where}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"model file {path}: invalid TOML: {exc}") from None
        return _parse_model(data, str(path))
    files = resources.files("medtwin.dosing") / "models"
    entry = files / f"{text}.toml"
    if not entry.is_file():
        known = ", ".join(library_models())
        raise ModelError(f"unknown model {text!r}{did_you_mean(text, library_models())}; library models: {known}")
    return _parse_model(tomllib.loads(entry.read_text(encoding="utf-8")), f"{text}.toml")


def library_models() -> list[str]:
    """Ids of the models shipped with medtwin."""
    files = resources.files("medtwin.dosing") / "models"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))
