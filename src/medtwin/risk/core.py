"""What every risk equation shares: input arrays, validity checks with named reasons, and the result type.

Inputs are a mapping of column name to array-like (a dict of lists, a pandas DataFrame): one value per person,
``NaN``/``None`` for "not known". Every equation validates its inputs here: a person whose value is missing or
outside the equation's validity range is **refused** (risk ``NaN``) or, where the published calculator does so,
**flagged** (computed at the range's bound, with the reason), never extrapolated silently.

A :class:`RiskResult` carries, beside the risk, the linear predictor split into clinical factors. The reference
is a person of the same age and sex (and race or ethnicity where the equation uses it) with the equation's
reference values for every other factor; the factors' contributions add up exactly to the difference between the
person's linear predictor and the reference's, because every interaction in these equations involves age (held
equal) or two parts of one factor (grouped). Risk-scale contributions share the risk difference in proportion to
the linear-predictor contributions: the integrated-gradients attribution (Sundararajan et al. 2017) of a risk that
is a monotone function of one linear predictor, so they too add up exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from medtwin.errors import ValidationError

__all__ = [
    "BoolArray",
    "Checks",
    "Factor",
    "FloatArray",
    "Inputs",
    "Problem",
    "RiskResult",
    "cohort_size",
    "column",
    "flag_column",
    "sex_column",
    "text_codes",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Inputs = Mapping[str, Any]

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def cohort_size(inputs: Inputs) -> int:
    """The number of people in *inputs*: the length of its longest column (scalars broadcast; 1 if all are)."""
    sizes = {len(v) for v in inputs.values() if np.ndim(v) > 0}
    if len(sizes) > 1 and 1 in sizes:
        sizes.discard(1)
    if len(sizes) > 1:
        raise ValidationError(f"risk inputs: columns of different lengths {sorted(sizes)}")
    return sizes.pop() if sizes else 1


def _as_length(values: FloatArray, n: int) -> FloatArray:
    """*values* as *n* floats: the array itself when it already is one (no copy; equations never write to
    their inputs), else broadcast into a new array."""
    if values.shape == (n,) and values.dtype == np.float64:
        return values
    return np.broadcast_to(values, (n,)).astype(np.float64, copy=True)


def column(inputs: Inputs, name: str, n: int | None = None) -> FloatArray:
    """Column *name* of *inputs* as floats (``NaN`` where absent or None); an absent column is all ``NaN``."""
    n = cohort_size(inputs) if n is None else n
    if name not in inputs:
        return np.full(n, np.nan)
    raw = inputs[name]
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([np.nan if v is None else v for v in np.atleast_1d(np.asarray(raw, dtype=object))])
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"risk input {name!r}: not numbers ({exc})") from exc
    return _as_length(values, n)


def flag_column(inputs: Inputs, name: str, n: int | None = None) -> FloatArray:
    """Yes/no column *name* as 1.0/0.0 (``NaN`` unknown); accepts booleans, 0/1 and yes/no/true/false strings."""
    n = cohort_size(inputs) if n is None else n
    if name not in inputs:
        return np.full(n, np.nan)
    try:
        numeric = _as_length(np.asarray(inputs[name], dtype=np.float64), n)
    except (TypeError, ValueError):
        numeric = None
    if numeric is not None:
        bad = ~np.isnan(numeric) & (numeric != 0) & (numeric != 1)
        if bad.any():
            raise ValidationError(f"risk input {name!r}: expected yes/no (0/1), got {numeric[bad][0]:g}")
        return numeric
    table = {**dict.fromkeys(_TRUE, 1.0), **dict.fromkeys(_FALSE, 0.0)}
    out, unknown = text_codes(inputs[name], n, table, name)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ValidationError(
            f"risk input {name!r}: expected yes/no, got {np.asarray(inputs[name], dtype=object)[i]!r} (row {i})"
        )
    return out


def text_codes(raw: Any, n: int, table: Mapping[str, float], name: str) -> tuple[FloatArray, BoolArray]:
    """Map a text column through *table* (keys lower case): (codes, unknown-but-present mask).

    Exact lower-case matches are compared column-wide (fast for pandas/Arrow strings and numpy arrays alike);
    only the remaining values are looked at one by one (trimmed, lower-cased).
    """
    out = np.full(n, np.nan)
    matched = np.zeros(n, dtype=bool)
    if isinstance(raw, str) or raw is None:
        raw = [raw] * n
    series = raw if hasattr(raw, "to_numpy") and hasattr(raw, "isna") else None
    arr = None if series is not None else np.broadcast_to(np.asarray(raw, dtype=object), (n,))
    for key, value in table.items():
        if series is not None:
            hit = np.asarray((series == key).to_numpy(dtype=bool, na_value=False))
        else:
            assert arr is not None
            hit = np.asarray(arr == key, dtype=bool)
        out[hit] = value
        matched |= hit
    values = series.to_numpy(dtype=object) if series is not None else arr
    assert values is not None
    unknown = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(~matched):
        v = values[i]
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        text = str(v).strip().lower()
        if text in table:
            out[i] = table[text]
        elif text not in ("", "unknown", "nan", "none", "<na>"):
            unknown[i] = True
    return out, unknown


_SEX = {"male": 1.0, "female": 0.0, "m": 1.0, "f": 0.0}


def sex_column(inputs: Inputs, n: int | None = None) -> FloatArray:
    """Column ``sex`` as 1.0 male / 0.0 female / ``NaN`` (other, unknown or absent: these equations are
    sex-specific). Accepts ``male``/``female`` (any case, or ``m``/``f``) or 1/0 (1 = male)."""
    n = cohort_size(inputs) if n is None else n
    if "sex" not in inputs:
        return np.full(n, np.nan)
    raw = inputs["sex"]
    kind = getattr(getattr(raw, "dtype", None), "kind", None)
    if kind in ("b", "i", "u", "f"):
        out = _as_length(np.asarray(raw, dtype=np.float64), n)
        bad = ~np.isnan(out) & (out != 0) & (out != 1)
        if bad.any():
            raise ValidationError(f"risk input 'sex': numeric sex must be 1 (male) or 0 (female), got {out[bad][0]}")
        return out
    codes, _ = text_codes(raw, n, _SEX, "sex")
    return codes


@dataclass(frozen=True, slots=True)
class Problem:
    """Why some people's result is refused or flagged: *message* names the input and the rule (value-free, so a
    cohort's reasons are cheap to list); *values* holds the offending values where there are any."""

    kind: Literal["refused", "flagged"]
    input: str
    message: str
    mask: BoolArray
    values: FloatArray | None = None

    def describe(self, i: int) -> str:
        """The reason for person *i*, with their value where it helps."""
        if self.values is None or np.isnan(self.values[i]):
            return self.message
        return f"{self.message} (recorded: {self.values[i]:g})"


class Checks:
    """Collects the validity problems of one equation over a cohort of *n* people."""

    def __init__(self, model: str, n: int) -> None:
        self.model = model
        self.n = n
        self.problems: list[Problem] = []

    @property
    def refused(self) -> BoolArray:
        out = np.zeros(self.n, dtype=bool)
        for p in self.problems:
            if p.kind == "refused":
                out |= p.mask
        return out

    def require(self, name: str, label: str, values: FloatArray, *, why: str = "") -> None:
        """Refuse people with no value for *name*."""
        missing = np.isnan(values)
        if missing.any():
            text = f"cannot compute {self.model}: no {label}" + (f" ({why})" if why else "")
            self.problems.append(Problem("refused", name, text, missing))

    def within(
        self,
        name: str,
        label: str,
        values: FloatArray,
        low: float,
        high: float,
        unit: str,
        *,
        clamp: bool = False,
        source: str = "",
    ) -> FloatArray:
        """Refuse (or, with *clamp*, flag and bound) values outside ``[low, high]``; return the values to use."""
        with np.errstate(invalid="ignore"):
            outside = (values < low) | (values > high)
        if not outside.any():
            return values
        where = f" ({source})" if source else ""
        span = f"{low:g}-{high:g} {unit}".rstrip()
        if clamp:
            text = f"{label} outside {span}{where}: computed at the nearest bound, as the published calculator does"
            self.problems.append(Problem("flagged", name, text, outside, values.copy()))
            return np.clip(values, low, high)
        text = f"cannot compute {self.model}: {label} outside its validity range {span}{where}"
        self.problems.append(Problem("refused", name, text, outside, values.copy()))
        return values

    def flag(self, name: str, mask: BoolArray, message: str, values: FloatArray | None = None) -> None:
        """Flag (but compute) the people in *mask* with *message*."""
        if mask.any():
            self.problems.append(Problem("flagged", name, message, mask, values))

    def refuse(self, name: str, mask: BoolArray, message: str) -> None:
        """Refuse the people in *mask* with *message*."""
        if mask.any():
            self.problems.append(Problem("refused", name, f"cannot compute {self.model}: {message}", mask))


@dataclass(frozen=True, slots=True)
class Factor:
    """One clinical factor of an equation: *key*, and how to describe person *i*'s value in clinical words."""

    key: str
    describe: Callable[[int], str]


@dataclass(frozen=True, kw_only=True)
class RiskResult:
    """One equation's predictions for a cohort (arrays of one value per person).

    *risk* is the probability of the outcome within *horizon_years* (``NaN`` where refused); *lp* the linear
    predictor, *reference_lp* that of the reference person (see the module docstring); *contributions* maps each
    factor key to its share of ``lp - reference_lp``. *link* turns a linear predictor into a risk: ``logistic``
    (``1/(1+exp(-lp))``) or ``cox`` (``1 - s0 ** exp(lp - lp_mean)``).
    """

    model: str
    title: str
    outcome: str
    horizon_years: int
    risk: FloatArray
    lp: FloatArray
    reference_lp: FloatArray
    contributions: dict[str, FloatArray]
    factors: tuple[Factor, ...]
    problems: tuple[Problem, ...]
    link: Literal["logistic", "cox"]
    s0: FloatArray | None = None
    lp_mean: FloatArray | None = None
    reference_text: Callable[[int], str] = field(default=lambda i: "reference person")
    inputs: Mapping[str, FloatArray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.risk)

    def risk_from_lp(self, lp: FloatArray) -> FloatArray:
        """The risk of linear predictor(s) *lp* under this equation's link (per person)."""
        if self.link == "logistic":
            out: FloatArray = 1.0 / (1.0 + np.exp(-lp))
            return out
        assert self.s0 is not None
        assert self.lp_mean is not None
        return 1.0 - np.power(self.s0, np.exp(lp - self.lp_mean))

    @property
    def refused(self) -> BoolArray:
        """People without a result."""
        return np.isnan(self.risk)

    @property
    def reference_risk(self) -> FloatArray:
        """The risk of each person's reference person."""
        return self.risk_from_lp(self.reference_lp)

    def risk_contributions(self) -> dict[str, FloatArray]:
        """Each factor's share of ``risk - reference_risk`` (integrated gradients along the linear predictor)."""
        ref = self.reference_risk
        delta_lp = self.lp - self.reference_lp
        delta_risk = self.risk_from_lp(self.lp) - ref
        with np.errstate(divide="ignore", invalid="ignore"):
            per_unit = np.where(np.abs(delta_lp) > 1e-12, delta_risk / delta_lp, self._slope(self.reference_lp))
        return {k: v * per_unit for k, v in self.contributions.items()}

    def _slope(self, lp: FloatArray) -> FloatArray:
        h = 1e-6
        out: FloatArray = (self.risk_from_lp(lp + h) - self.risk_from_lp(lp - h)) / (2 * h)
        return out

    def reasons(self, i: int) -> list[str]:
        """Why person *i*'s result is refused or flagged (empty when neither)."""
        return [p.describe(i) for p in self.problems if p.mask[i]]

    def status(self) -> npt.NDArray[np.str_]:
        """Per person: ``ok``, ``flagged`` or ``refused``."""
        flagged = np.zeros(len(self), dtype=bool)
        for p in self.problems:
            if p.kind == "flagged":
                flagged |= p.mask
        return np.where(self.refused, "refused", np.where(flagged, "flagged", "ok"))

    def reason_column(self) -> npt.NDArray[np.object_]:
        """Per person, the reasons joined with ``; `` (empty string when none), without per-person values."""
        out = np.full(len(self), "", dtype=object)
        for p in self.problems:
            idx = np.flatnonzero(p.mask)
            if len(idx):
                current = out[idx]
                out[idx] = np.where(current == "", p.message, current + "; " + p.message)
        return out
