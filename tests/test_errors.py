"""The "did you mean" hint every strict reader appends to an unknown word (medtwin.errors)."""

from __future__ import annotations

import pytest

from medtwin.errors import closest_match, did_you_mean

KEYS = ["proportional_sd", "additive_sd_mg_l", "compartments", "schema"]


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("proportinal_sd", "proportional_sd"),  # a typo: difflib ratio >= 0.6
        ("additve_sd_mg_l", "additive_sd_mg_l"),
        ("Schema", "schema"),  # a case slip
        ("compartment", "compartments"),  # a prefix
        ("zzz", None),
        ("", None),
    ],
)
def test_closest_match(word: str, expected: str | None) -> None:
    assert closest_match(word, KEYS) == expected


def test_the_best_match_does_not_depend_on_the_order_of_choices() -> None:
    assert closest_match("tbr54", ["tbr54_pct", "tbr70_pct"]) == "tbr54_pct"
    assert closest_match("tbr54", ["tbr70_pct", "tbr54_pct"]) == "tbr54_pct"
    assert closest_match("x", iter(["x1", "x1"])) == "x1"  # any iterable, duplicates allowed


def test_did_you_mean_formats_the_hint_or_nothing() -> None:
    assert did_you_mean("proportinal_sd", KEYS) == "; did you mean 'proportional_sd'?"
    assert did_you_mean("proportinal_sd", KEYS, brackets=True) == " (did you mean 'proportional_sd'?)"
    assert did_you_mean("zzz", KEYS) == ""
    assert did_you_mean("zzz", KEYS, brackets=True) == ""
    assert did_you_mean("anything", []) == ""
