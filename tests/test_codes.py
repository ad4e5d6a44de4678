"""Unit conversion and code tables (medtwin.codes)."""

from __future__ import annotations

import math

import pytest

from medtwin import codes
from medtwin.codes import conversion_factor, convert, is_compatible
from medtwin.errors import UnitError
from medtwin.records import Coding


@pytest.mark.parametrize(
    ("value", "src", "dst", "analyte", "expected"),
    [
        (5.5, "mmol/L", "mg/dL", "glucose", 99.0858),  # 5.5 * 18.0156
        (180.0, "mg/dL", "mmol/L", "glucose", 9.99134),
        (1.0, "mg/dL", "umol/L", "creatinine", 88.40),  # the clinical factor 88.4
        (88.4, "umol/L", "mg/dL", "creatinine", 1.0),
        (98.6, "[degF]", "Cel", None, 37.0),
        (37.0, "Cel", "[degF]", None, 98.6),
        (0.0, "Cel", "K", None, 273.15),
        (150.0, "[lb_av]", "kg", None, 68.0388555),
        (100.0, "mL/min", "L/h", None, 6.0),
        (6.0, "L/h", "mL/min", None, 100.0),
        (1.5, "g", "mg", None, 1500.0),
        (72.0, "{beats}/min", "/min", None, 72.0),
        (400.0, "mg.h/L", "ug.h/mL", None, 400.0),
        (7.0, "10*3/uL", "10*9/L", None, 7.0),
        (120.0, "mm[Hg]", "kPa", None, 15.99869),
        (60.0, "U/h", "U/min", None, 1.0),
        (70.0, "[in_i]", "cm", None, 177.8),
        (95.0, "%", "1", None, 0.95),
        (2.0, "mg/(kg.h)", "ug/(g.min)", None, 2.0 / 60.0),
        (1.0, "m2", "cm2", None, 1e4),
    ],
)
def test_convert_reference_values(value: float, src: str, dst: str, analyte: str | None, expected: float) -> None:
    assert convert(value, src, dst, analyte=analyte) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("src", "dst"), [("mg/dL", "mmol/L"), ("mL/min", "L/h"), ("[lb_av]", "kg")])
def test_round_trip_is_identity(src: str, dst: str) -> None:
    analyte = "glucose" if "mol" in dst else None
    there = convert(123.4, src, dst, analyte=analyte)
    assert convert(there, dst, src, analyte=analyte) == pytest.approx(123.4, rel=1e-12)


@pytest.mark.parametrize(
    ("src", "dst", "fragment"),
    [
        ("mg", "mL", "different dimensions"),
        ("mg/dL", "mmol/L", "needs analyte"),
        ("furlong", "m", "'furlong' is not a UCUM unit"),
        ("Cel", "kg", "not a temperature"),
        ("mg/(dL", "g/L", "unbalanced"),
        ("mg dL", "g/L", "no spaces"),
        ("mL/min", "L", "different dimensions"),
    ],
)
def test_incompatible_or_unknown_units_raise_clear_errors(src: str, dst: str, fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment):
        convert(1.0, src, dst)


def test_unknown_analyte_is_named() -> None:
    with pytest.raises(UnitError, match="no molar mass for analyte 'urea'"):
        convert(1.0, "mg/dL", "mmol/L", analyte="urea")


def test_temperatures_need_convert_not_a_factor() -> None:
    with pytest.raises(UnitError, match="offset"):
        conversion_factor("Cel", "[degF]")
    assert conversion_factor("mg/dL", "mg/L") == pytest.approx(10.0)


def test_nan_and_bool_are_refused() -> None:
    with pytest.raises(UnitError):
        convert(math.nan, "mg", "g")
    with pytest.raises(UnitError):
        convert(True, "mg", "g")


def test_compatibility() -> None:
    assert is_compatible("mL/min", "L/h")
    assert not is_compatible("mg/dL", "mmol/L")
    assert not is_compatible("bogus", "g")


def test_canonical_units_and_mdc_mapping() -> None:
    assert codes.canonical_unit(codes.HEART_RATE) == "/min"
    assert codes.canonical_unit(Coding(system=codes.MDC, code="150344")) == "Cel"
    assert codes.normalise_to_loinc(Coding(system=codes.MDC, code="150456")) == codes.OXYGEN_SATURATION_PULSE_OX
    assert codes.canonical_unit(Coding(system="urn:local", code="x")) is None
    # every canonical unit parses
    for unit in codes.CANONICAL_UNITS.values():
        assert is_compatible(unit, unit)


def test_medtwin_code_system_holds_the_predicted_exposure_codes() -> None:
    predicted = (codes.PREDICTED_AUC24, codes.PREDICTED_TROUGH, codes.PREDICTED_PEAK)
    assert codes.MEDTWIN == "https://medtwin.dev/fhir/CodeSystem/medtwin"
    assert {c.system for c in predicted} == {codes.MEDTWIN}
    assert len({c.code for c in predicted}) == 3
    assert all(c.display.startswith("Predicted ") for c in predicted)
