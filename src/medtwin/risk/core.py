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
    "nan_to_num",
    "sex_column",
    "text_codes",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Inputs = Mapping[str, Any]

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def _ndim(value: Any) -> int:
    """Dimensions of a column without converting it (``np.ndim`` would turn a categorical into strings)."""
    ndim = getattr(value, "ndim", None)
    return int(ndim) if isinstance(ndim, int) else int(np.ndim(value))


def cohort_size(inputs: Inputs) -> int:
    """The number of people in *inputs*: the length of its longest column (scalars broadcast; 1 if all are)."""
    columns = [inputs[k] for k in inputs]  # not .values(): a pandas DataFrame is a mapping of its columns too
    sizes = {len(v) for v in columns if _ndim(v) > 0}
    if len(sizes) > 1 and 1 in sizes:
        sizes.discard(1)
    if len(sizes) > 1:
        raise ValidationError(f"risk inputs: columns of different lengths {sorted(sizes)}")
    return sizes.pop() if sizes else 1


_LARGEST = float(np.finfo(np.float64).max)


def nan_to_num(x: FloatArray) -> FloatArray:
    """``np.nan_to_num(x)`` of a float64 array (a new array: NaN -> 0, +-inf -> the largest finite floats), in three
    passes over the data where numpy's takes about ten (the equations call it on every yes/no column)."""
    out: FloatArray = np.clip(x, -_LARGEST, _LARGEST)
    np.copyto(out, 0.0, where=np.isnan(out))
    return out


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
        return _numeric(raw, n)
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
        numeric: FloatArray | None = _numeric(inputs[name], n)
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


_NOT_GIVEN = frozenset({"", "unknown", "nan", "none", "<na>"})


def _categorical(raw: Any) -> tuple[npt.NDArray[np.integer[Any]], list[Any]] | None:
    """(codes, categories) of a dictionary-encoded column (a ``pandas.Categorical`` or a Series of category
    dtype; code -1 = missing), else None."""
    cat = getattr(raw, "cat", None)  # the accessor exists only on a categorical Series
    if cat is not None and hasattr(cat, "codes"):
        return np.asarray(cat.codes), list(cat.categories)
    if hasattr(raw, "codes") and hasattr(raw, "categories") and not isinstance(raw, np.ndarray):
        return np.asarray(raw.codes), list(raw.categories)
    return None


def _numeric(raw: Any, n: int) -> FloatArray:
    """*raw* as *n* floats (TypeError/ValueError where it is not numbers); a categorical converts its categories
    and gathers by code (code -1: NaN) instead of turning every row into an object first."""
    coded = _categorical(raw)
    if coded is not None and len(coded[0]) == n:
        per_code = np.append(np.asarray(coded[1], dtype=np.float64), np.nan)
        out: FloatArray = per_code[coded[0]]
        return out
    return _as_length(np.asarray(raw, dtype=np.float64), n)


def _lookup(v: Any, table: Mapping[str, float]) -> tuple[float, bool]:
    """One value through *table*: (code, unknown); missing values (None, NaN, "unknown", ...) are NaN, not unknown."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return np.nan, False
    text = str(v).strip().lower()
    if text in table:
        return table[text], False
    return np.nan, text not in _NOT_GIVEN


def text_codes(raw: Any, n: int, table: Mapping[str, float], name: str) -> tuple[FloatArray, BoolArray]:
    """Map a text column through *table* (keys lower case): (codes, unknown-but-present mask).

    A categorical column maps its few categories and gathers by code; a pandas column is factorized first (its
    distinct values mapped once); a numpy array compares exact lower-case matches column-wide and looks at the
    remaining values one by one (trimmed, lower-cased). All three give the same answer for the same values.
    """
    if isinstance(raw, str) or raw is None:
        raw = [raw] * n
    coded = _categorical(raw)
    if coded is None and hasattr(raw, "factorize") and hasattr(raw, "isna"):
        codes, uniques = raw.factorize()  # pandas: missing values get code -1
        coded = np.asarray(codes), list(uniques)
    if coded is not None and len(coded[0]) == n:
        codes, categories = coded
        looked_up = [_lookup(v, table) for v in categories] + [(np.nan, False)]  # the last one: code -1
        values = np.array([v for v, _ in looked_up], dtype=np.float64)
        unknown_words = np.array([u for _, u in looked_up], dtype=bool)
        return values[codes], unknown_words[codes]
    out = np.full(n, np.nan)
    matched = np.zeros(n, dtype=bool)
    arr = np.broadcast_to(np.asarray(raw, dtype=object), (n,))
    for key, value in table.items():
        hit = np.asarray(arr == key, dtype=bool)
        out[hit] = value
        matched |= hit
    unknown = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(~matched):
        out[i], unknown[i] = _lookup(arr[i], table)
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
