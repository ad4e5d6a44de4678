"""Code systems, the codes medtwin uses, and unit conversion in one place (floor 0: no I/O).

Units are UCUM case-sensitive codes (https://ucum.org/ucum, version 2.1). :func:`convert` understands the subset
of UCUM that clinical data uses: metric prefixes, products (``.``), quotients (``/``), integer exponents
(``m2``, ``s-1``), parentheses, ``10*n`` factors, curly-brace annotations (``{beats}/min``), customary units
(``[lb_av]``, ``[in_i]``, ``[degF]``), ``Cel``, ``mm[Hg]``, ``%`` and enzyme/insulin units ``U``.
Mass <-> amount-of-substance conversions (``mg/dL`` <-> ``mmol/L``) need the analyte's molar mass and are
done only when the caller names the analyte. An unknown unit, or two units of different dimensions, raise
:class:`medtwin.errors.UnitError` naming the unit and the reason.

LOINC codes are from LOINC 2.77; SNOMED CT codes from the International Edition; ISO/IEEE 11073-10101 (MDC)
codes as used by IHE PCD-01 (context-free 32-bit codes: partition * 65536 + term code).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from medtwin.errors import UnitError
from medtwin.records import Coding

__all__ = [
    "ACVPU",
    "ANALYTE_MOLAR_MASS_G_PER_MOL",
    "BLOOD_PRESSURE_PANEL",
    "BLOOD_PRESSURE_PANEL_OLD",
    "BMI",
    "BODY_HEIGHT",
    "BODY_TEMPERATURE",
    "BODY_WEIGHT",
    "CANONICAL_UNITS",
    "CREATININE_SERUM",
    "DIASTOLIC_BP",
    "DISCHARGE_AGAINST_ADVICE",
    "DISCHARGE_DISPOSITION",
    "DISCHARGE_EXPIRED",
    "DISCHARGE_HOME",
    "DISCHARGE_HOSPICE",
    "DISCHARGE_LWBS",
    "DISCHARGE_OTHER",
    "DISCHARGE_OTHER_HCF",
    "GENTAMICIN_SERUM",
    "GLUCOSE_BLOOD",
    "GLUCOSE_INTERSTITIAL",
    "GLUCOSE_SERUM",
    "HBA1C",
    "HEART_RATE",
    "INHALED_OXYGEN_CONCENTRATION",
    "INHALED_OXYGEN_FLOW",
    "LEVEL_OF_CONSCIOUSNESS",
    "LOINC",
    "MDC",
    "MDC_TO_LOINC",
    "MEAN_BP",
    "MEDTWIN",
    "NEWS2_TOTAL",
    "OXYGEN_SATURATION",
    "OXYGEN_SATURATION_PULSE_OX",
    "PREDICTED_AUC24",
    "PREDICTED_PEAK",
    "PREDICTED_TROUGH",
    "PULSE_RATE_OXIMETRY",
    "RESPIRATORY_RATE",
    "SNOMED",
    "SYSTOLIC_BP",
    "UCUM",
    "UNIT_SYNONYMS",
    "VANCOMYCIN_SERUM",
    "VANCOMYCIN_TROUGH",
    "VITAL_SIGNS",
    "canonical_unit",
    "conversion_factor",
    "convert",
    "is_compatible",
    "is_ucum",
    "loinc",
    "normalise_to_loinc",
    "to_ucum",
]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
MDC = "urn:iso:std:iso:11073:10101"
# medtwin's own code system, for concepts no standard terminology has a code for.
MEDTWIN = "https://medtwin.dev/fhir/CodeSystem/medtwin"
DISCHARGE_DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"


def loinc(code: str, display: str) -> Coding:
    """A LOINC coding."""
    return Coding(system=LOINC, code=code, display=display)


# Vital signs (the HL7 FHIR vital-signs profile codes)
HEART_RATE = loinc("8867-4", "Heart rate")
RESPIRATORY_RATE = loinc("9279-1", "Respiratory rate")
OXYGEN_SATURATION_PULSE_OX = loinc("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")
OXYGEN_SATURATION = loinc("2708-6", "Oxygen saturation in Arterial blood")
SYSTOLIC_BP = loinc("8480-6", "Systolic blood pressure")
DIASTOLIC_BP = loinc("8462-4", "Diastolic blood pressure")
MEAN_BP = loinc("8478-0", "Mean blood pressure")
BLOOD_PRESSURE_PANEL = loinc("85354-9", "Blood pressure panel with all children optional")
BLOOD_PRESSURE_PANEL_OLD = loinc("55284-4", "Blood pressure systolic and diastolic")
BODY_TEMPERATURE = loinc("8310-5", "Body temperature")
LEVEL_OF_CONSCIOUSNESS = loinc("80288-4", "Level of consciousness")
INHALED_OXYGEN_CONCENTRATION = loinc("3150-0", "Inhaled oxygen concentration")
INHALED_OXYGEN_FLOW = loinc("3151-8", "Inhaled oxygen flow rate")
PULSE_RATE_OXIMETRY = loinc("8889-8", "Heart rate by Pulse oximetry")
BODY_WEIGHT = loinc("29463-7", "Body weight")
BODY_HEIGHT = loinc("8302-2", "Body height")
BMI = loinc("39156-5", "Body mass index (BMI) [Ratio]")
NEWS2_TOTAL = loinc("88330-6", "National early warning score 2 (NEWS2) total")

# Laboratory
GLUCOSE_BLOOD = loinc("2339-0", "Glucose [Mass/volume] in Blood")
GLUCOSE_SERUM = loinc("2345-7", "Glucose [Mass/volume] in Serum or Plasma")
GLUCOSE_INTERSTITIAL = loinc("99504-3", "Glucose [Mass/volume] in Interstitial fluid")
HBA1C = loinc("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood")
CREATININE_SERUM = loinc("2160-0", "Creatinine [Mass/volume] in Serum or Plasma")
VANCOMYCIN_SERUM = loinc("20578-1", "Vancomycin [Mass/volume] in Serum or Plasma")
VANCOMYCIN_TROUGH = loinc("4092-3", "Vancomycin [Mass/volume] in Serum or Plasma --trough")
GENTAMICIN_SERUM = loinc("35668-3", "Gentamicin [Mass/volume] in Serum or Plasma")

# Model-predicted drug exposure (steady state of a proposed regimen). LOINC codes describe measured
# levels (e.g. 20578-1, 4092-3); no LOINC code exists for a model-predicted exposure, hence MEDTWIN codes.
PREDICTED_AUC24 = Coding(system=MEDTWIN, code="predicted-auc24-ss", display="Predicted AUC24 at steady state")
PREDICTED_TROUGH = Coding(system=MEDTWIN, code="predicted-trough-ss", display="Predicted trough at steady state")
PREDICTED_PEAK = Coding(system=MEDTWIN, code="predicted-peak-ss", display="Predicted peak at steady state")

# Discharge disposition (Encounter.disposition): FHIR R4 code system discharge-disposition (v4.0.1,
# https://hl7.org/fhir/R4/codesystem-encounter-discharge-disposition.html), whose codes are also used in
# HL7 v2 PV1-36 (user-defined table 0112). The code system has no "left without being seen" code, so
# LWBS is a medtwin-local code.
DISCHARGE_HOME = Coding(system=DISCHARGE_DISPOSITION, code="home", display="Home")
DISCHARGE_OTHER_HCF = Coding(system=DISCHARGE_DISPOSITION, code="other-hcf", display="Other healthcare facility")
DISCHARGE_HOSPICE = Coding(system=DISCHARGE_DISPOSITION, code="hosp", display="Hospice")
DISCHARGE_AGAINST_ADVICE = Coding(system=DISCHARGE_DISPOSITION, code="aadvice", display="Left against advice")
DISCHARGE_EXPIRED = Coding(system=DISCHARGE_DISPOSITION, code="exp", display="Expired")
DISCHARGE_OTHER = Coding(system=DISCHARGE_DISPOSITION, code="oth", display="Other")
DISCHARGE_LWBS = Coding(system=MEDTWIN, code="lwbs", display="Left without being seen")

# ACVPU responses (SNOMED CT), as used by NEWS2
ACVPU: dict[str, Coding] = {
    "A": Coding(system=SNOMED, code="248234008", display="Mentally alert"),
    "C": Coding(system=SNOMED, code="1104441000000107", display="New confusion"),
    "V": Coding(system=SNOMED, code="450847001", display="Responds to voice"),
    "P": Coding(system=SNOMED, code="450848006", display="Responds to pain"),
    "U": Coding(system=SNOMED, code="422768004", display="Unresponsive"),
}

VITAL_SIGNS: tuple[Coding, ...] = (
    HEART_RATE,
    RESPIRATORY_RATE,
    OXYGEN_SATURATION_PULSE_OX,
    OXYGEN_SATURATION,
    SYSTOLIC_BP,
    DIASTOLIC_BP,
    BODY_TEMPERATURE,
    LEVEL_OF_CONSCIOUSNESS,
)

# ISO/IEEE 11073-10101 (MDC) vital-sign codes used by IHE PCD-01 feeds, mapped to the LOINC concept.
MDC_TO_LOINC: dict[str, Coding] = {
    "147842": HEART_RATE,  # MDC_ECG_HEART_RATE
    "149530": PULSE_RATE_OXIMETRY,  # MDC_PULS_OXIM_PULS_RATE
    "151562": RESPIRATORY_RATE,  # MDC_RESP_RATE
    "150456": OXYGEN_SATURATION_PULSE_OX,  # MDC_PULS_OXIM_SAT_O2
    "150301": SYSTOLIC_BP,  # MDC_PRESS_CUFF_SYS
    "150302": DIASTOLIC_BP,  # MDC_PRESS_CUFF_DIA
    "150303": MEAN_BP,  # MDC_PRESS_CUFF_MEAN
    "150344": BODY_TEMPERATURE,  # MDC_TEMP
    "150364": BODY_TEMPERATURE,  # MDC_TEMP_BODY
}

# The unit medtwin stores each quantity in (values arriving in other units are converted on ingest).
CANONICAL_UNITS: dict[str, str] = {
    HEART_RATE.code: "/min",
    PULSE_RATE_OXIMETRY.code: "/min",
    RESPIRATORY_RATE.code: "/min",
    OXYGEN_SATURATION_PULSE_OX.code: "%",
    OXYGEN_SATURATION.code: "%",
    SYSTOLIC_BP.code: "mm[Hg]",
    DIASTOLIC_BP.code: "mm[Hg]",
    MEAN_BP.code: "mm[Hg]",
    BODY_TEMPERATURE.code: "Cel",
    BODY_WEIGHT.code: "kg",
    BODY_HEIGHT.code: "cm",
    BMI.code: "kg/m2",
    INHALED_OXYGEN_CONCENTRATION.code: "%",
    INHALED_OXYGEN_FLOW.code: "L/min",
    GLUCOSE_BLOOD.code: "mg/dL",
    GLUCOSE_SERUM.code: "mg/dL",
    GLUCOSE_INTERSTITIAL.code: "mg/dL",
    CREATININE_SERUM.code: "mg/dL",
    VANCOMYCIN_SERUM.code: "mg/L",
    VANCOMYCIN_TROUGH.code: "mg/L",
    GENTAMICIN_SERUM.code: "mg/L",
    HBA1C.code: "%",
}

# Molar masses for mass <-> substance conversions (g/mol).
ANALYTE_MOLAR_MASS_G_PER_MOL: dict[str, float] = {
    "glucose": 180.156,  # C6H12O6; 1 mmol/L = 18.0156 mg/dL
    "creatinine": 113.12,  # C4H7N3O; 1 mg/dL = 88.40 umol/L
    "cholesterol": 386.65,  # C27H46O; 1 mmol/L = 38.665 mg/dL (total, HDL, LDL and non-HDL cholesterol)
}


def canonical_unit(coding: Coding) -> str | None:
    """The UCUM unit medtwin stores *coding*'s values in, or None when it has no canonical unit."""
    if coding.system == LOINC:
        return CANONICAL_UNITS.get(coding.code)
    if coding.system == MDC and coding.code in MDC_TO_LOINC:
        return CANONICAL_UNITS.get(MDC_TO_LOINC[coding.code].code)
    return None


def normalise_to_loinc(coding: Coding) -> Coding:
    """The LOINC coding of an MDC vital-sign code; any other coding is returned unchanged."""
    if coding.system == MDC:
        return MDC_TO_LOINC.get(coding.code, coding)
    return coding


# --- UCUM subset -------------------------------------------------------------------------------------------
# A dimension is a vector of exponents over the base quantities below.
_BASES = ("g", "m", "s", "mol", "K", "U")
_Dim = tuple[int, int, int, int, int, int]
_NONE: _Dim = (0, 0, 0, 0, 0, 0)


def _dim(**exps: int) -> _Dim:
    return tuple(exps.get(b, 0) for b in _BASES)  # type: ignore[return-value]


# symbol -> (factor to base units, dimension)
_UNITS: dict[str, tuple[float, _Dim]] = {
    "g": (1.0, _dim(g=1)),
    "m": (1.0, _dim(m=1)),
    "s": (1.0, _dim(s=1)),
    "min": (60.0, _dim(s=1)),
    "h": (3600.0, _dim(s=1)),
    "d": (86400.0, _dim(s=1)),
    "wk": (604800.0, _dim(s=1)),
    "a": (365.25 * 86400.0, _dim(s=1)),
    "mo": (365.25 * 86400.0 / 12.0, _dim(s=1)),
    "L": (1e-3, _dim(m=3)),
    "l": (1e-3, _dim(m=3)),
    "mol": (1.0, _dim(mol=1)),
    "eq": (1.0, _dim(mol=1)),
    "K": (1.0, _dim(K=1)),
    "U": (1.0, _dim(U=1)),
    "[iU]": (1.0, _dim(U=1)),
    "[IU]": (1.0, _dim(U=1)),
    "Pa": (1000.0, _dim(g=1, m=-1, s=-2)),
    "bar": (1e8, _dim(g=1, m=-1, s=-2)),
    "mm[Hg]": (133322.387415, _dim(g=1, m=-1, s=-2)),
    "cm[H2O]": (98066.5, _dim(g=1, m=-1, s=-2)),
    "[lb_av]": (453.59237, _dim(g=1)),
    "[oz_av]": (28.349523125, _dim(g=1)),
    "[in_i]": (0.0254, _dim(m=1)),
    "[ft_i]": (0.3048, _dim(m=1)),
    "%": (0.01, _NONE),
    "1": (1.0, _NONE),
    "[ppm]": (1e-6, _NONE),
}
_PREFIXES: dict[str, float] = {
    "k": 1e3,
    "h": 1e2,
    "da": 1e1,
    "d": 1e-1,
    "c": 1e-2,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
    "p": 1e-12,
    "f": 1e-15,
    "M": 1e6,
    "G": 1e9,
}
_PREFIXABLE = {"g", "m", "s", "L", "l", "mol", "eq", "U", "[iU]", "[IU]", "Pa", "bar", "K"}
# Units with an offset (affine scales): convertible only as whole units, not inside products.
_TEMPERATURES: dict[str, tuple[float, float]] = {  # unit -> (scale, offset) so that K = value * scale + offset
    "K": (1.0, 0.0),
    "Cel": (1.0, 273.15),
    "[degF]": (5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
}


@dataclass(frozen=True, slots=True)
class _Unit:
    factor: float
    dim: _Dim


_EXPONENT = re.compile(r"^(?P<sym>.*?)(?P<exp>[+-]?\d+)$")
_POWER_OF_TEN = re.compile(r"^10[*^](?P<exp>[+-]?\d+)$")


def _atom(symbol: str, unit: str) -> _Unit:
    if symbol in _UNITS:
        factor, dim = _UNITS[symbol]
        return _Unit(factor, dim)
    for prefix, scale in _PREFIXES.items():
        rest = symbol[len(prefix) :]
        if symbol.startswith(prefix) and rest in _PREFIXABLE:
            factor, dim = _UNITS[rest]
            return _Unit(scale * factor, dim)
    raise UnitError(f"unit {unit!r}: {symbol!r} is not a UCUM unit medtwin knows")


def _component(text: str, unit: str) -> _Unit:
    text = re.sub(r"\{[^{}]*\}", "", text)  # annotations carry no dimension
    if text == "":
        return _Unit(1.0, _NONE)
    if m := _POWER_OF_TEN.match(text):
        return _Unit(10.0 ** int(m["exp"]), _NONE)
    if text.isdigit():
        return _Unit(float(text), _NONE)
    try:
        return _atom(text, unit)
    except UnitError:
        m = _EXPONENT.match(text)
        if m is None or not m["sym"]:
            raise
        base = _atom(m["sym"], unit)
        exp = int(m["exp"])
        return _Unit(base.factor**exp, tuple(d * exp for d in base.dim))  # type: ignore[arg-type]


def _combine(a: _Unit, b: _Unit, sign: int) -> _Unit:
    factor = a.factor * b.factor if sign > 0 else a.factor / b.factor
    return _Unit(factor, tuple(x + sign * y for x, y in zip(a.dim, b.dim, strict=True)))  # type: ignore[arg-type]


def _term(text: str, unit: str) -> _Unit:
    """Parse a UCUM term left to right: ``.`` multiplies, ``/`` divides, parentheses group."""
    result = _Unit(1.0, _NONE)
    sign = 1
    pos = 0
    if text.startswith("/"):
        sign, pos = -1, 1
    while True:
        if pos >= len(text):
            raise UnitError(f"unit {unit!r}: a component is missing at the end")
        if text[pos] == "(":
            depth, end = 0, pos
            while end < len(text):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
                end += 1
            if depth != 0:
                raise UnitError(f"unit {unit!r}: unbalanced '('")
            part = _term(text[pos + 1 : end], unit)
            pos = end + 1
        else:
            end = pos
            while end < len(text) and text[end] not in "./()":
                if text[end] == "[":  # bracketed symbols may hold any character
                    close = text.find("]", end)
                    if close < 0:
                        raise UnitError(f"unit {unit!r}: unbalanced '['")
                    end = close
                elif text[end] == "{":
                    close = text.find("}", end)
                    if close < 0:
                        raise UnitError(f"unit {unit!r}: unbalanced '{{'")
                    end = close
                end += 1
            if end == pos:
                raise UnitError(f"unit {unit!r}: empty component at position {pos}")
            part = _component(text[pos:end], unit)
            pos = end
        result = _combine(result, part, sign)
        if pos == len(text):
            return result
        if text[pos] not in "./":
            raise UnitError(f"unit {unit!r}: unexpected {text[pos]!r} at position {pos}")
        sign = 1 if text[pos] == "." else -1
        pos += 1


@lru_cache(maxsize=512)
def _parse(unit: str) -> _Unit:
    if not isinstance(unit, str):
        raise UnitError(f"unit {unit!r}: a UCUM unit string is required")
    text = unit.strip()
    if text == "":
        return _Unit(1.0, _NONE)
    if " " in text:
        raise UnitError(f"unit {unit!r}: UCUM units contain no spaces")
    if text in _TEMPERATURES:
        scale, _ = _TEMPERATURES[text]
        return _Unit(scale, _dim(K=1))
    return _term(text, unit)


_UCUM_MAX_CHARS = 64
# Common spellings of units that are not UCUM, as feeds send them in HL7 v2 OBX-6, and the UCUM code they mean.
# Only unambiguous ones: "C" (coulomb in UCUM) or "deg" are not guessed.
UNIT_SYNONYMS: dict[str, str] = {
    "bpm": "/min",
    "beats/min": "/min",
    "breaths/min": "/min",
    "/min.": "/min",
    "mmhg": "mm[Hg]",
    "mm hg": "mm[Hg]",
    "degc": "Cel",
    "deg c": "Cel",
    "\u00b0c": "Cel",
    "degf": "[degF]",
    "deg f": "[degF]",
    "\u00b0f": "[degF]",
    "percent": "%",
    "tera.l-1": "10*12/L",
    "giga.l-1": "10*9/L",
    "x10e9/l": "10*9/L",
    "x10e12/l": "10*12/L",
    "10^9/l": "10*9/L",
    "10^12/l": "10*12/L",
}


def is_ucum(unit: str) -> bool:
    """True when *unit* is a UCUM code medtwin's parser reads (the subset of UCUM this module implements; a valid
    UCUM code outside it reads False, so the answer errs on the side of "not known to be UCUM")."""
    if not isinstance(unit, str) or len(unit) > _UCUM_MAX_CHARS:
        return False
    try:
        _parse(unit)
    except UnitError:
        return False
    return True


def to_ucum(unit: str) -> str | None:
    """The UCUM code for a unit as written: itself when it is UCUM (:func:`is_ucum`), the UCUM code of a common
    non-UCUM spelling (:data:`UNIT_SYNONYMS`, case-insensitive: ``bpm`` -> ``/min``, ``tera.l-1`` ->
    ``10*12/L``), else None (not UCUM: keep the text, and do not label it UCUM)."""
    if is_ucum(unit):
        return unit
    return UNIT_SYNONYMS.get(unit.strip().lower()) if isinstance(unit, str) else None


def is_compatible(from_unit: str, to_unit: str) -> bool:
    """True when the two UCUM units measure the same dimension (no analyte conversion)."""
    try:
        return _parse(from_unit).dim == _parse(to_unit).dim
    except UnitError:
        return False


def _dim_name(dim: _Dim) -> str:
    parts = [f"{b}^{e}" if e != 1 else b for b, e in zip(_BASES, dim, strict=True) if e]
    return ".".join(parts) or "dimensionless"


def conversion_factor(from_unit: str, to_unit: str, *, analyte: str | None = None) -> float:
    """The factor *f* such that ``value_in_to_unit = f * value_in_from_unit`` (not for Cel/[degF]).

    Mass and amount-of-substance concentrations convert into each other only when *analyte* names a molar mass
    in :data:`ANALYTE_MOLAR_MASS_G_PER_MOL`.
    """
    if from_unit != to_unit and {from_unit, to_unit} & {"Cel", "[degF]"}:
        raise UnitError(f"{from_unit!r} -> {to_unit!r}: temperature scales have an offset; use convert()")
    src, dst = _parse(from_unit), _parse(to_unit)
    if src.dim == dst.dim:
        return src.factor / dst.factor
    mass_to_mol = tuple(d - s for s, d in zip(src.dim, dst.dim, strict=True))
    # dst - src == (-1 g, +1 mol): mass -> substance; the opposite: substance -> mass.
    g, mol = _BASES.index("g"), _BASES.index("mol")
    delta = [0] * len(_BASES)
    delta[g], delta[mol] = -1, 1
    bridges = mass_to_mol in (tuple(delta), tuple(-x for x in delta))
    if analyte is not None and bridges:
        molar_mass = ANALYTE_MOLAR_MASS_G_PER_MOL.get(analyte.lower())
        if molar_mass is None:
            known = ", ".join(sorted(ANALYTE_MOLAR_MASS_G_PER_MOL))
            raise UnitError(f"{from_unit!r} -> {to_unit!r}: no molar mass for analyte {analyte!r} (known: {known})")
        per = 1.0 / molar_mass if mass_to_mol == tuple(delta) else molar_mass
        return src.factor * per / dst.factor
    hint = " (mass <-> substance needs analyte='glucose' or 'creatinine')" if bridges else ""
    raise UnitError(
        f"cannot convert {from_unit!r} ({_dim_name(src.dim)}) to {to_unit!r} ({_dim_name(dst.dim)}): "
        f"different dimensions{hint}"
    )


def convert(value: float, from_unit: str, to_unit: str, *, analyte: str | None = None) -> float:
    """Convert *value* from *from_unit* to *to_unit* (UCUM codes), e.g. ``convert(5.5, "mmol/L", "mg/dL",
    analyte="glucose")`` -> 99.09.

    Raises
    ------
    UnitError
        Unknown unit, or units of different dimensions (and no analyte to bridge mass and substance).
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise UnitError(f"convert: {value!r} is not a number to convert from {from_unit!r}")
    if from_unit == to_unit:
        _parse(from_unit)
        return float(value)
    if from_unit in _TEMPERATURES and to_unit in _TEMPERATURES:
        s_scale, s_off = _TEMPERATURES[from_unit]
        d_scale, d_off = _TEMPERATURES[to_unit]
        kelvin = value * s_scale + s_off
        return (kelvin - d_off) / d_scale
    for unit in (from_unit, to_unit):
        if unit in ("Cel", "[degF]"):
            other = to_unit if unit == from_unit else from_unit
            raise UnitError(f"cannot convert {from_unit!r} to {to_unit!r}: {other!r} is not a temperature")
    return float(value) * conversion_factor(from_unit, to_unit, analyte=analyte)
