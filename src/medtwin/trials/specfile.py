"""Strict reading of trial-spec tables: every key known, every value of the right type and range.

A misspelt key must not be silently ignored (``run_in_day = 7`` would run a trial without its run-in), so each
table is read through a :class:`Table` that refuses unknown keys with the closest known one ("did you mean
'run_in_days'?"), and typed getters name the file, table and key of every wrong value. Keys starting with ``_``
are comments. :class:`SpecError` is the only error raised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from medtwin.errors import ValidationError, did_you_mean

__all__ = ["SpecError", "Table", "check_number"]


class SpecError(ValidationError):
    """A trial spec that cannot be run (names the file, table, key and what was wrong)."""


class Table:
    """One table of a spec, read key by key; unknown keys are refused when it is built."""

    def __init__(self, raw: Any, where: str, known: Sequence[str]) -> None:
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: expected a table, got {raw!r}")
        self.raw: Mapping[str, Any] = raw
        self.where = where
        for key in raw:
            if str(key).startswith("_"):
                continue
            if key not in known:
                hint = did_you_mean(str(key), known, brackets=True)
                raise SpecError(f"{where}: unknown key {key!r}{hint}; known keys: {', '.join(known)}")

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def at(self, key: str) -> str:
        """``where.key`` for messages."""
        return f"{self.where}.{key}"

    def required(self, key: str) -> Any:
        """The raw value of *key*, which must be present."""
        if key not in self.raw:
            raise SpecError(f"{self.where}: missing required key {key!r}")
        return self.raw[key]

    def text(self, key: str, default: str | None = None, *, choices: Sequence[str] | None = None) -> str:
        """A string, one of *choices* when given (the closest one is suggested)."""
        value = self.required(key) if default is None else self.raw.get(key, default)
        if not isinstance(value, str):
            raise SpecError(f"{self.at(key)}: expected a string, got {value!r}")
        if choices is not None and value not in choices:
            hint = did_you_mean(value, choices, brackets=True)
            raise SpecError(f"{self.at(key)}: {value!r} is not one of {', '.join(choices)}{hint}")
        return value

    def number(
        self,
        key: str,
        default: float | None = None,
        *,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
    ) -> float:
        """A finite number in ``[low, high]`` (``(low, high]`` with *low_open*)."""
        value = self.required(key) if default is None else self.raw.get(key, default)
        return check_number(value, self.at(key), low=low, high=high, low_open=low_open)

    def integer(self, key: str, default: int | None = None, *, low: int = 0, high: int | None = None) -> int:
        """A whole number in ``[low, high]``."""
        value = self.required(key) if default is None else self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{self.at(key)}: expected a whole number, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise SpecError(f"{self.at(key)}: must be {bound}, got {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        """A boolean (true/false)."""
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise SpecError(f"{self.at(key)}: expected true or false, got {value!r}")
        return value

    def texts(self, key: str, default: Sequence[str], *, choices: Sequence[str] | None = None) -> tuple[str, ...]:
        """A list of strings (a single string is a one-item list), each one of *choices* when given."""
        value = self.raw.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{self.at(key)}: expected a list of strings, got {value!r}")
        for v in value:
            if choices is not None and v not in choices:
                hint = did_you_mean(v, choices, brackets=True)
                raise SpecError(f"{self.at(key)}: {v!r} is not one of {', '.join(choices)}{hint}")
        return tuple(value)

    def numbers(self, key: str, default: Sequence[float] | None = None, *, low: float = -math.inf) -> tuple[float, ...]:
        """A non-empty list of finite numbers >= *low*."""
        value = self.required(key) if default is None else self.raw.get(key, list(default))
        if not isinstance(value, list) or not value:
            raise SpecError(f"{self.at(key)}: expected a non-empty list of numbers, got {value!r}")
        return tuple(check_number(v, f"{self.at(key)}[{i}]", low=low) for i, v in enumerate(value))

    def table(self, key: str, known: Sequence[str]) -> Table:
        """The sub-table *key* (an empty one when absent)."""
        return Table(self.raw.get(key, {}), self.at(key), known)

    def tables(self, key: str, known: Sequence[str]) -> list[Table]:
        """The array of tables *key* (``[[key]]`` in TOML; empty when absent)."""
        value = self.raw.get(key, [])
        if isinstance(value, Mapping):
            value = [value]
        if not isinstance(value, list):
            raise SpecError(f"{self.at(key)}: expected a list of tables ([[{key}]] in TOML)")
        return [Table(v, f"{self.at(key)}[{i}]", known) for i, v in enumerate(value)]


def check_number(
    value: Any, where: str, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False
) -> float:
    """*value* as a finite float within the bounds, or a :class:`SpecError` naming *where*."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise SpecError(f"{where}: expected a finite number, got {value!r}")
    v = float(value)
    if v < low or v > high or (low_open and v == low):
        lo = "(" if low_open else "["
        raise SpecError(f"{where}: must be in {lo}{low:g}, {high:g}], got {v:g}")
    return v
