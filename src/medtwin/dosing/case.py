"""Patient cases for the dosing twin: read from JSON or CSV, converted to model units, checked.

A case holds the model (library id or model-file path), covariates, doses, measured levels, the
exposure target and the regimen options (format: docs/dosing-model-format.md, section "Case
files").  Every quantity may carry a unit; conversions go through :func:`medtwin.codes.convert`
and each one is recorded in :attr:`PatientCase.notes`.  Problems that make the forecast
unreliable but not meaningless (a covariate outside the model's validity range, an implausible
amount) are collected in :attr:`PatientCase.warnings`, which the report prints; problems that
make it meaningless (missing covariate, unknown unit, level before the first dose, negative
amount, naive datetime) raise :class:`CaseError`.  Reading the files (JSON, CSV rows) and the
allowed keys of each part live in :mod:`medtwin.dosing.casefile`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

from medtwin import codes
from medtwin.dosing.casefile import (
    CASE_KEYS,
    DOSE_KEYS,
    LEVEL_KEYS,
    REGIMEN_KEYS,
    STANDARD_COVARIATE_FIELDS,
    CaseError,
    check_keys,
    parse_bool,
    read_case_file,
)
from medtwin.dosing.covariates import (
    CovariateSeries,
    adjusted_body_weight_kg,
    cockcroft_gault_ml_min,
    creatinine_mg_dl,
    ideal_body_weight_kg,
)
from medtwin.dosing.estimation import Level
from medtwin.dosing.model import CovariateSpec, PKModel
from medtwin.dosing.modelfile import load_model
from medtwin.dosing.optimize import STEADY_STATE_METRICS, Metric
from medtwin.dosing.regimen import Dose
from medtwin.errors import UnitError, ValidationError, did_you_mean
from medtwin.records import utc

__all__ = [
    "CaseError",
    "Constraint",
    "PatientCase",
    "RegimenOptions",
    "TargetSpec",
    "load_case",
    "model_covariates",
    "parse_case",
    "parse_target",
]

_PLAUSIBLE_MIN_DOSE_MG = 10.0
# A bare CrCL below this (mL/min) is likely L/h; a bare SCr above this (mg/dL) is likely umol/L.
_SUSPECT_CRCL_ML_MIN = 10.0
_SUSPECT_SCR_MG_DL = 20.0
_FIELD_UNITS = {"age_y": "a", "weight_kg": "kg", "height_cm": "cm"}


def _unitless(raw: Any) -> bool:
    return not (isinstance(raw, Mapping) and "unit" in raw)


def _count(value: Any, where: str) -> int:
    number = _num(value, where)
    if number < 0 or number != int(number):
        raise CaseError(f"{where}: expected a whole number >= 0, got {value!r}")
    return int(number)


@dataclass(frozen=True, slots=True)
class Constraint:
    """An extra steady-state criterion of a combined target: *low* <= *metric* <= *high*."""

    metric: Metric
    low: float = 0.0
    high: float = math.inf

    def describe(self) -> str:
        """``trough_ss <= 20``, ``peak_ss >= 30`` or ``trough_ss in [10, 20]``."""
        if math.isinf(self.high):
            return f"{self.metric} >= {self.low:g}"
        if self.low <= 0:
            return f"{self.metric} <= {self.high:g}"
        return f"{self.metric} in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """The exposure target: a metric with a *value* to aim at and an acceptable range.

    *constraints* are further steady-state criteria (a combined target such as AUC24 400-600
    AND trough <= 20 mg/L): the dose is solved on the main metric, and the probability of target
    attainment counts only samples that meet the main range and every constraint.
    """

    metric: Metric
    value: float
    low: float
    high: float
    start_h: float | None = None
    end_h: float | None = None
    time_h: float | None = None
    threshold_mg_l: float | None = None
    constraints: tuple[Constraint, ...] = ()

    @property
    def is_point(self) -> bool:
        """True for a target given as a *value* only (no acceptable range, hence no PTA)."""
        return self.low == self.high


@dataclass(frozen=True, slots=True)
class RegimenOptions:
    """Constraints on the proposed regimen."""

    start_h: float | None
    intervals_h: tuple[float, ...]
    increment_mg: float
    max_dose_mg: float
    max_rate_mg_h: float
    min_duration_h: float
    loading_dose: bool
    n_doses: int


@dataclass(frozen=True, slots=True)
class PatientCase:
    """A validated case: model, covariates in model units, doses and levels in mg, h, mg/L."""

    patient_id: str
    model: PKModel
    covariates: Mapping[str, float | CovariateSeries]
    doses: tuple[Dose, ...]
    levels: tuple[Level, ...]
    target: TargetSpec
    regimen: RegimenOptions
    origin: datetime | None
    source: str
    warnings: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(str(value))
        except ValueError as exc:
            raise CaseError(f"{where}: expected a number, got {value!r}") from exc
    if not math.isfinite(float(value)):
        raise CaseError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _quantity(
    raw: Any, unit_default: str | None, to_unit: str, where: str, notes: list[str], analyte: str | None = None
) -> float:
    """A number or ``{"value": x, "unit": u}`` converted to *to_unit*."""
    if isinstance(raw, Mapping):
        if "value" not in raw:
            raise CaseError(f"{where}: missing 'value'")
        value = _num(raw["value"], f"{where}.value")
        unit = str(raw.get("unit", unit_default or to_unit))
    else:
        value = _num(raw, where)
        unit = unit_default or to_unit
    if unit == to_unit:
        return value
    try:
        out = codes.convert(value, unit, to_unit, analyte=analyte)
    except UnitError as exc:
        raise CaseError(f"{where}: {exc}") from exc
    notes.append(f"{where}: converted {value:g} {unit} to {out:.6g} {to_unit}")
    return out


class _Clock:
    """Times in a case are hours (``time_h``) or ISO datetimes with a zone (``time``)."""

    def __init__(self, entries: list[Mapping[str, Any]], origin: Any, where: str) -> None:
        self.origin: datetime | None = None
        if origin is not None:
            self.origin = self._parse(origin, f"{where}.origin")
        else:
            stamps = [self._parse(e["time"], where) for e in entries if "time" in e]
            if stamps and any("time_h" in e and "time" not in e for e in entries):
                # hours count from the origin: guessing it (the earliest datetime) would shift times silently
                raise CaseError(
                    f"{where}: some times are hours ('time_h') and some are datetimes ('time'); "
                    "give 'origin' (the datetime of t=0 h) to relate them"
                )
            self.origin = min(stamps) if stamps else None

    @staticmethod
    def _parse(text: Any, where: str) -> datetime:
        try:
            dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError as exc:
            raise CaseError(f"{where}: {text!r} is not an ISO 8601 datetime") from exc
        try:
            return utc(dt, field_name=where)
        except ValidationError as exc:
            raise CaseError(str(exc)) from exc

    def hours(self, entry: Mapping[str, Any], where: str) -> float:
        if "time_h" in entry:
            return _num(entry["time_h"], f"{where}.time_h")
        if "time" in entry:
            if self.origin is None:
                raise CaseError(f"{where}.time: a datetime needs 'origin' (the datetime of t=0 h)")
            return (self._parse(entry["time"], f"{where}.time") - self.origin).total_seconds() / 3600
        raise CaseError(f"{where}: give 'time_h' (hours) or 'time' (ISO datetime with zone)")


def _covariate(spec: CovariateSpec, raw: Mapping[str, Any], where: str, notes: list[str], warnings: list[str]) -> float:
    if spec.source is not None:
        if spec.source in raw:
            value = _quantity(raw[spec.source], None, spec.unit, f"{where}.{spec.source}", notes)
            if spec.unit != "1" and value <= 0:  # a weight or a clearance; flags (unit 1) may be 0
                raise CaseError(f"{where}.{spec.source}: must be > 0 {spec.unit}, got {value:g}")
            return value
        if spec.default is not None:
            notes.append(f"{spec.name}: not given, model default {spec.default:g} used")
            return spec.default
        raise CaseError(
            f"{where}: missing covariate {spec.source!r} ({spec.description}, {spec.unit}) required by the model"
        )
    # derive == "cockcroft_gault"
    cap = spec.options.get("max_ml_min")
    if "crcl" in raw:
        crcl = _quantity(raw["crcl"], "mL/min", "mL/min", f"{where}.crcl", notes)
        if crcl <= 0:
            raise CaseError(f"{where}.crcl: must be > 0 mL/min, got {crcl:g}")
        if _unitless(raw["crcl"]) and crcl < _SUSPECT_CRCL_ML_MIN:
            warnings.append(
                f"{where}.crcl: CrCL {crcl:g} given without a unit is read as mL/min; if it was L/h "
                f"({crcl:g} L/h = {codes.convert(crcl, 'L/h', 'mL/min'):.4g} mL/min), give the unit"
            )
        if cap is not None and crcl > float(cap):
            notes.append(f"CrCL {crcl:.4g} mL/min capped at {float(cap):g} mL/min (model rule)")
            crcl = float(cap)
    else:
        need = [k for k in ("age_y", "weight_kg", "scr", "sex") if k not in raw]
        if need:
            raise CaseError(f"{where}: {spec.name} needs Cockcroft-Gault inputs {need} (or give 'crcl')")
        sex = str(raw["sex"]).lower()
        if sex not in ("male", "female"):
            raise CaseError(f"{where}.sex: 'male' or 'female' needed for Cockcroft-Gault, got {sex!r}")
        female = sex == "female"
        scr_raw = raw["scr"]
        unit = str(scr_raw.get("unit", "mg/dL")) if isinstance(scr_raw, Mapping) else "mg/dL"
        value = _num(scr_raw["value"] if isinstance(scr_raw, Mapping) else scr_raw, f"{where}.scr")
        try:
            scr = creatinine_mg_dl(value, unit)
        except ValidationError as exc:  # UnitError or a non-positive value
            raise CaseError(f"{where}.scr: {exc}") from exc
        if unit != "mg/dL":
            notes.append(f"{where}.scr: converted {value:g} {unit} to {scr:.4g} mg/dL")
        if _unitless(scr_raw) and scr > _SUSPECT_SCR_MG_DL:
            warnings.append(
                f"{where}.scr: SCr {value:g} given without a unit is read as mg/dL; if it was umol/L "
                f"({creatinine_mg_dl(value, 'umol/L'):.3g} mg/dL), give the unit"
            )
        tbw = _quantity(raw["weight_kg"], "kg", "kg", f"{where}.weight_kg", notes)
        weight_kind = str(spec.options.get("weight", "total"))
        weight = tbw
        if weight_kind in ("ideal", "adjusted"):
            if "height_cm" not in raw:
                raise CaseError(f"{where}: height_cm needed for the {weight_kind} body weight")
            h = _quantity(raw["height_cm"], "cm", "cm", f"{where}.height_cm", notes)
            weight = (
                ideal_body_weight_kg(height_cm=h, female=female)
                if weight_kind == "ideal"
                else adjusted_body_weight_kg(weight_kg=tbw, height_cm=h, female=female)
            )
        floor = spec.options.get("scr_floor_mg_dl")
        floor_age = float(spec.options.get("scr_floor_above_age_y", 0.0))
        age = _quantity(raw["age_y"], "a", "a", f"{where}.age_y", notes)
        if floor is not None and age > floor_age and scr < float(floor):
            notes.append(
                f"SCr {scr:.4g} mg/dL raised to the model's floor {float(floor):g} mg/dL "
                f"(age {age:g} y > {floor_age:g} y; model rule, see erratum) for Cockcroft-Gault"
            )
        try:
            crcl = cockcroft_gault_ml_min(
                age_y=age,
                weight_kg=weight,
                scr_mg_dl=scr,
                female=female,
                scr_floor_mg_dl=None if floor is None else float(floor),
                scr_floor_min_age_y=floor_age,
            )
        except ValidationError as exc:
            raise CaseError(f"{where} (Cockcroft-Gault): {exc}") from exc
        if cap is not None and crcl > float(cap):
            notes.append(f"CrCL (Cockcroft-Gault) {crcl:.4g} mL/min capped at {float(cap):g} mL/min (model rule)")
            crcl = float(cap)
        notes.append(f"CrCL (Cockcroft-Gault, {weight_kind} weight) = {crcl:.4g} mL/min")
    return codes.convert(crcl, "mL/min", spec.unit) if spec.unit != "mL/min" else crcl


def _check_validity(model: PKModel, covs: Mapping[str, float], raw: Mapping[str, Any], warnings: list[str]) -> None:
    for spec in model.covariates:
        v = covs[spec.name]
        lo, hi = spec.valid_min, spec.valid_max
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            warnings.append(
                f"covariate {spec.name} = {v:.4g} {spec.unit} is outside the validity range "
                f"[{lo}, {hi}] of {model.id}: the forecast is an extrapolation"
            )
    for key, (lo2, hi2) in model.raw_validity.items():
        if key in raw:
            unit = _FIELD_UNITS.get(key, "1")
            v2 = _quantity(raw[key], unit, unit, f"covariates.{key}", [])
            if not lo2 <= v2 <= hi2:
                warnings.append(
                    f"{key} = {v2:g} is outside the validity range [{lo2:g}, {hi2:g}] of "
                    f"{model.id}: the forecast is an extrapolation"
                )


def model_covariates(
    model: PKModel, fields: Mapping[str, Any], *, where: str = "covariates"
) -> tuple[dict[str, float], list[str]]:
    """The model's covariates (model units) from patient *fields* (``age_y``, ``weight_kg``, ``scr``, ``sex``, ...),
    derived by the model's own rules (Cockcroft-Gault weight, floors, caps), and validity-range warnings.

    The same derivation a case file gets; virtual populations use it so a sampled patient's CrCL is computed the
    way a real patient's would be. A field that is missing or unusable is a :class:`CaseError`.
    """
    notes: list[str] = []
    warnings: list[str] = []
    covs = {s.name: _covariate(s, fields, where, notes, warnings) for s in model.covariates}
    _check_validity(model, covs, fields, warnings)
    return covs, warnings


_TARGET_METRICS = ("auc", "concentration", *STEADY_STATE_METRICS)
_TARGET_KEYS = {"metric", "value", "low", "high", "start_h", "end_h", "time_h", "threshold_mg_l", "also"}


def _constraint(raw: Any, where: str) -> Constraint:
    if not isinstance(raw, Mapping):
        raise CaseError(f"{where}: a constraint is an object like {{'metric': 'trough_ss', 'high': 20}}")
    metric = str(raw.get("metric", ""))
    if metric not in ("auc24_ss", "trough_ss", "peak_ss"):
        raise CaseError(f"{where}.metric: constraints use auc24_ss, trough_ss or peak_ss, got {metric!r}")
    unknown = sorted(set(raw) - {"metric", "low", "high"})
    if unknown:
        hint = did_you_mean(unknown[0], ("metric", "low", "high"))
        raise CaseError(f"{where}: unknown keys {unknown}{hint} (use metric, low, high)")
    if "low" not in raw and "high" not in raw:
        raise CaseError(f"{where}: give 'low', 'high' or both")
    low = _num(raw["low"], f"{where}.low") if "low" in raw else 0.0
    high = _num(raw["high"], f"{where}.high") if "high" in raw else math.inf
    if low < 0 or high <= low:
        raise CaseError(f"{where}: need 0 <= low < high, got {low}, {high}")
    return Constraint(metric=cast(Metric, metric), low=low, high=high)


def parse_target(raw: Mapping[str, Any], where: str = "target") -> TargetSpec:
    """Check and convert a target mapping (the ``target`` object of a case file).

    Keys: ``metric``, ``value`` and/or ``low`` + ``high``, the metric's own keys (``start_h`` and
    ``end_h`` for ``auc``, ``time_h`` for ``concentration``, ``threshold_mg_l`` for
    ``time_to_threshold_ss``) and ``also``: a list of constraints (see :class:`Constraint`).
    """
    metric = str(raw.get("metric", "auc24_ss"))
    if metric not in _TARGET_METRICS:
        hint = did_you_mean(metric, _TARGET_METRICS)
        raise CaseError(f"{where}.metric: unknown metric {metric!r}{hint}; known: {', '.join(_TARGET_METRICS)}")
    unknown = sorted(set(raw) - _TARGET_KEYS)
    if unknown:
        hint = did_you_mean(unknown[0], _TARGET_KEYS)
        raise CaseError(f"{where}: unknown keys {unknown}{hint} (known: {', '.join(sorted(_TARGET_KEYS))})")
    low = _num(raw["low"], f"{where}.low") if "low" in raw else None
    high = _num(raw["high"], f"{where}.high") if "high" in raw else None
    if "value" in raw:
        value = _num(raw["value"], f"{where}.value")
    elif low is not None and high is not None:
        value = (low + high) / 2.0
    else:
        raise CaseError(f"{where}: give 'value' or both 'low' and 'high'")
    low = value if low is None else low
    high = value if high is None else high
    if not low <= value <= high or low <= 0:
        raise CaseError(f"{where}: need 0 < low <= value <= high, got {low}, {value}, {high}")
    opt = {k: _num(raw[k], f"{where}.{k}") for k in ("start_h", "end_h", "time_h", "threshold_mg_l") if k in raw}
    if metric == "auc" and not {"start_h", "end_h"} <= opt.keys():
        raise CaseError(f"{where}: metric 'auc' needs start_h and end_h")
    if metric == "concentration" and "time_h" not in opt:
        raise CaseError(f"{where}: metric 'concentration' needs time_h")
    if metric == "time_to_threshold_ss" and opt.get("threshold_mg_l", 0.0) <= 0:
        raise CaseError(f"{where}: metric 'time_to_threshold_ss' needs threshold_mg_l > 0 (mg/L)")
    also = raw.get("also", [])
    if isinstance(also, Mapping):
        also = [also]
    if not isinstance(also, list):
        raise CaseError(f"{where}.also: expected a list of constraints")
    constraints = tuple(_constraint(c, f"{where}.also[{i}]") for i, c in enumerate(also))
    return TargetSpec(metric=cast(Metric, metric), value=value, low=low, high=high, constraints=constraints, **opt)


def _covariates(
    model: PKModel,
    raw: Mapping[str, Any],
    interpolation: Any,
    clock: _Clock,
    source: str,
    notes: list[str],
    warnings: list[str],
) -> dict[str, float | CovariateSeries]:
    """Model covariates from the case's raw fields; lists of timed values become series."""
    where = f"{source}: covariates"
    series: dict[str, list[tuple[float, Any]]] = {}
    for key, val in raw.items():
        if isinstance(val, list):
            if not val:
                raise CaseError(f"{where}.{key}: empty list")
            entries = []
            for i, e in enumerate(val):
                if not isinstance(e, Mapping) or "value" not in e:
                    raise CaseError(f"{where}.{key}[{i}]: need an object with time_h/time and value")
                plain = {k: v for k, v in e.items() if k in ("value", "unit")}
                entries.append((clock.hours(e, f"{where}.{key}[{i}]"), plain if "unit" in plain else e["value"]))
            series[key] = sorted(entries, key=lambda te: te[0])
    if not series:
        covs = {s.name: _covariate(s, raw, where, notes, warnings) for s in model.covariates}
        _check_validity(model, covs, raw, warnings)
        return dict(covs)
    if interpolation not in ("locf", "nocb", "linear"):
        raise CaseError(f"{source}: covariate_interpolation must be locf, nocb or linear")
    times = sorted({t for entries in series.values() for t, _ in entries})
    per_time: list[dict[str, float]] = []
    seen_notes: list[str] = []
    for t in times:
        raw_t = dict(raw)
        for key, entries in series.items():
            ts = [te[0] for te in entries]
            if interpolation == "nocb":
                idx = min(int(np.searchsorted(ts, t, side="left")), len(ts) - 1)
            else:
                idx = max(int(np.searchsorted(ts, t, side="right")) - 1, 0)
            raw_t[key] = entries[idx][1]
        covs_t = {s.name: _covariate(s, raw_t, where, seen_notes, warnings) for s in model.covariates}
        _check_validity(model, covs_t, raw_t, warnings)
        per_time.append(covs_t)
    notes.extend(dict.fromkeys(seen_notes))
    warnings[:] = list(dict.fromkeys(warnings))
    out: dict[str, float | CovariateSeries] = {}
    for spec in model.covariates:
        values = [c[spec.name] for c in per_time]
        if len(set(values)) == 1:
            out[spec.name] = values[0]
        else:
            out[spec.name] = CovariateSeries.build(spec.name, times, values, interpolation)
            notes.append(
                f"{spec.name} varies in time ({interpolation}): "
                + ", ".join(f"{v:.4g} from t={t:g} h" for t, v in zip(times, values, strict=True))
            )
    return out


def _unused_covariates(
    model: PKModel, raw: Mapping[str, Any], source: str, notes: list[str], warnings: list[str]
) -> None:
    """Say which case covariates the model ignores; an unknown name is likely a typo (a warning)."""
    used = set(model.raw_validity)
    for spec in model.covariates:
        if spec.source is not None:
            used.add(spec.source)
        elif "crcl" in raw:
            used.add("crcl")
        else:
            used |= {"age_y", "sex", "weight_kg", "scr", "crcl"}
            if str(spec.options.get("weight", "total")) != "total":
                used.add("height_cm")
    for key in raw:
        if key in used or str(key).startswith("_"):
            continue
        if key in STANDARD_COVARIATE_FIELDS:
            notes.append(f"covariates.{key}: not used by {model.id} (ignored)")
        else:
            warnings.append(
                f"{source}: covariates.{key}: not used by {model.id} and not a standard field "
                f"({', '.join(sorted(STANDARD_COVARIATE_FIELDS))}); a typo? It is ignored"
            )


def _dialysis_warning(
    model: PKModel,
    covs: Mapping[str, float | CovariateSeries],
    raw: Mapping[str, Any],
    source: str,
    notes: list[str],
    warnings: list[str],
) -> None:
    """Warn when the patient is on dialysis (a covariate from ``dialysis`` is 1 at some time).

    Dialysis sessions (the drug removed by each session) are not modelled; a Cockcroft-Gault CrCL
    assumes stable kidney function (SCr at steady state) and is not meaningful on dialysis.
    """
    flags = [s.name for s in model.covariates if s.source == "dialysis"]
    on = False
    for name in flags:
        value = covs.get(name)
        values = value.values if isinstance(value, CovariateSeries) else (value,)
        on = on or any(v is not None and v >= 0.5 for v in values)
    if not on:
        return
    cockcroft_gault = any(s.derive == "cockcroft_gault" for s in model.covariates) and "crcl" not in raw
    if cockcroft_gault:
        warnings.append(
            f"{source}: covariates.dialysis: the patient is on dialysis; Cockcroft-Gault CrCL (from SCr) "
            "is not meaningful on dialysis (SCr is not at steady state), and dialysis sessions are not "
            "modelled: drug removed by each session is not in the forecast; re-dose after dialysis by levels"
        )
    else:  # a measured CrCL is the user's call: a note, so that --strict still runs
        notes.append(
            f"{source}: covariates.dialysis: the patient is on dialysis; dialysis sessions are not modelled "
            "(drug removed by each session is not in the forecast); re-dose after dialysis by levels"
        )


def parse_case(
    data: Mapping[str, Any], *, source: str = "<case>", relative_to: str | Path | None = None
) -> PatientCase:
    """Validate a case given as a mapping (the JSON structure).

    A model given as a relative path is read relative to *relative_to* (the case file's folder, as
    :func:`load_case` passes it), else relative to the current folder.
    """
    notes: list[str] = []
    warnings: list[str] = []
    check_keys(data, CASE_KEYS, source)
    if "model" not in data:
        raise CaseError(f"{source}: missing 'model' (a library id or a model-file path)")
    model = load_model(str(data["model"]), relative_to=relative_to)
    raw = data.get("covariates", {})
    if not isinstance(raw, Mapping):
        raise CaseError(f"{source}: 'covariates' must be an object")
    for section in ("doses", "levels"):
        if not isinstance(data.get(section, []), list):
            raise CaseError(f"{source}: {section!r} must be a list of objects")
    dose_entries = [check_keys(d, DOSE_KEYS, f"{source}: doses[{i}]") for i, d in enumerate(data.get("doses", []))]
    level_entries = [
        check_keys(lv, LEVEL_KEYS, f"{source}: levels[{i}]") for i, lv in enumerate(data.get("levels", []))
    ]
    timed_covariates = [e for v in raw.values() if isinstance(v, list) for e in v if isinstance(e, Mapping)]
    clock = _Clock([*dose_entries, *level_entries, *timed_covariates], data.get("origin"), source)
    covs = _covariates(model, raw, data.get("covariate_interpolation", "locf"), clock, source, notes, warnings)
    _unused_covariates(model, raw, source, notes, warnings)
    _dialysis_warning(model, covs, raw, source, notes, warnings)
    doses: list[Dose] = []
    for i, d in enumerate(dose_entries):
        w = f"{source}: doses[{i}]"
        amount = (
            _quantity(
                d.get("amount", d.get("amount_mg")), "mg" if "amount_mg" in d else None, "mg", f"{w}.amount", notes
            )
            if ("amount" in d or "amount_mg" in d)
            else None
        )
        if amount is None:
            raise CaseError(f"{w}: missing 'amount'")
        if amount < 0:
            raise CaseError(f"{w}.amount: negative amount {amount} mg")
        if 0 < amount < _PLAUSIBLE_MIN_DOSE_MG:
            warnings.append(f"{w}: {amount:g} mg is implausibly small for {model.drug}; was the unit g instead of mg?")
        rate = _quantity(d["rate"], "mg/h", "mg/h", f"{w}.rate", notes) if "rate" in d else None
        try:
            doses.append(
                Dose(
                    time_h=clock.hours(d, w),
                    amount_mg=amount,
                    duration_h=_quantity(d.get("duration_h", 0.0), "h", "h", f"{w}.duration_h", notes),
                    rate_mg_h=rate,
                    interval_h=_num(d.get("interval_h", 0.0), f"{w}.interval_h"),
                    additional=_count(d.get("additional", 0), f"{w}.additional"),
                    steady_state=parse_bool(d.get("steady_state", False), f"{w}.steady_state"),
                    route=str(d.get("route", "iv")),  # type: ignore[arg-type]
                )
            )
        except ValidationError as exc:
            raise CaseError(f"{w}: {exc}") from exc
        if doses[-1].route == "oral" and not model.has_depot:
            raise CaseError(f"{w}.route: an oral dose, but {model.id} has no absorption (ka); use an IV route or model")
    levels: list[Level] = []
    for i, lv in enumerate(level_entries):
        w = f"{source}: levels[{i}]"
        if "value" not in lv:
            raise CaseError(f"{w}: missing 'value'")
        raw_value = lv["value"]
        if not isinstance(raw_value, Mapping):
            raw_value = {"value": raw_value, "unit": lv.get("unit", "mg/L")}
        elif "unit" in lv and "unit" in raw_value and str(lv["unit"]) != str(raw_value["unit"]):
            raise CaseError(f"{w}: two different units, {lv['unit']!r} and {raw_value['unit']!r}")
        else:
            raw_value = {"unit": lv.get("unit", "mg/L"), **raw_value}
        value = _quantity(raw_value, "mg/L", "mg/L", w, notes)
        oid = str(lv["id"]) if "id" in lv else None
        try:
            levels.append(Level(time_h=clock.hours(lv, w), value_mg_l=value, observation_id=oid))
        except CaseError:
            raise
        except ValidationError as exc:
            raise CaseError(f"{w}: {exc}") from exc
    if doses:
        first = min(d.time_h for d in doses)
        for i, lv2 in enumerate(levels):
            if lv2.time_h < first:
                raise CaseError(f"{source}: levels[{i}] at t={lv2.time_h:g} h is before the first dose (t={first:g} h)")
    elif levels:
        raise CaseError(f"{source}: levels given but no doses")
    target = parse_target(data.get("target", {"metric": "auc24_ss", "low": 400, "high": 600}), f"{source}: target")
    w = f"{source}: regimen"
    reg = check_keys(data.get("regimen", {}), REGIMEN_KEYS, w)
    options = RegimenOptions(
        start_h=_num(reg["start_h"], f"{w}.start_h") if "start_h" in reg else None,
        intervals_h=tuple(_num(x, f"{w}.intervals_h") for x in reg.get("intervals_h", [8, 12, 24])),
        increment_mg=_num(reg.get("increment_mg", 250.0), f"{w}.increment_mg"),
        max_dose_mg=_num(reg.get("max_dose_mg", 4000.0), f"{w}.max_dose_mg"),
        max_rate_mg_h=_num(reg.get("max_rate_mg_h", 1000.0), f"{w}.max_rate_mg_h"),
        min_duration_h=_num(reg.get("min_duration_h", 1.0), f"{w}.min_duration_h"),
        loading_dose=parse_bool(reg.get("loading_dose", not doses), f"{w}.loading_dose"),
        n_doses=_count(reg.get("n_doses", 1), f"{w}.n_doses"),
    )
    if not options.intervals_h or min(options.intervals_h) <= 0:
        raise CaseError(f"{w}.intervals_h: need positive intervals")
    for name in ("increment_mg", "max_dose_mg", "max_rate_mg_h", "n_doses"):
        if getattr(options, name) <= 0:
            raise CaseError(f"{w}.{name}: must be > 0, got {getattr(options, name):g}")
    if options.min_duration_h < 0:
        raise CaseError(f"{w}.min_duration_h: must be >= 0, got {options.min_duration_h:g}")
    return PatientCase(
        patient_id=str(data.get("patient_id", "anonymous")),
        model=model,
        covariates=covs,
        doses=tuple(doses),
        levels=tuple(sorted(levels, key=lambda x: x.time_h)),
        target=target,
        regimen=options,
        origin=clock.origin,
        source=source,
        warnings=tuple(dict.fromkeys(warnings)),
        notes=tuple(dict.fromkeys(notes)),
    )


def load_case(path: str | Path) -> PatientCase:
    """Read a case from a ``.json`` or ``.csv`` file (a model path in it is relative to the file's folder)."""
    return parse_case(read_case_file(path), source=str(Path(path)), relative_to=Path(path).parent)
