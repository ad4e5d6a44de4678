"""Exception types shared by every floor of medtwin, and the "did you mean" hint their messages share."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["MedtwinError", "UnitError", "ValidationError", "closest_match", "did_you_mean"]


class MedtwinError(Exception):
    """Base class of every error medtwin raises on purpose."""


class ValidationError(MedtwinError, ValueError):
    """Input that medtwin refuses, with what was wrong and where."""


class UnitError(ValidationError):
    """A unit that is unknown, cannot be parsed or is incompatible with the quantity."""


def closest_match(word: str, choices: Iterable[str]) -> str | None:
    """The one of *choices* closest to *word* (``difflib`` ratio >= 0.6), else one that differs from it only in case
    or by a prefix ("Schema", "compartment"), else None."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return close[0]
    lower = word.lower()
    for option in options:  # a case slip or a prefix is close even when the words are short
        if word and (option.lower() == lower or option.startswith(word) or word.startswith(option)):
            return option
    return None


def did_you_mean(word: str, choices: Iterable[str], *, brackets: bool = False) -> str:
    """The hint to append to an error about the unknown *word*: ``"; did you mean 'x'?"`` (with *brackets*
    ``" (did you mean 'x'?)"``) naming the closest of *choices*, or ``""`` when none is close."""
    match = closest_match(word, choices)
    if match is None:
        return ""
    return f" (did you mean {match!r}?)" if brackets else f"; did you mean {match!r}?"
