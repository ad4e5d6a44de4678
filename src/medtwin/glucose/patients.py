"""The 30 virtual patients of the UVA/Padova 2008 simulator, loadable by name or group.

Parameters, initial steady states and the Quest table (carbohydrate ratio CR in g/U, correction factor CF in
mg/dL/U) ship as package data, copied from simglucose 0.2.11 (MIT licence, see data/LICENSE-simglucose.txt),
whose author states they come from the 2008 academic version of the UVA/Padova simulator.
Names: ``adolescent#001``..``adolescent#010``, ``adult#001``..``adult#010``, ``child#001``..``child#010``;
groups: ``adolescent``, ``adult``, ``child``, ``all``; matched case-insensitively, reported in this canonical form.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from medtwin.errors import ValidationError
from medtwin.glucose.uva_padova import PMOL_PER_UNIT_INSULIN
from medtwin.sim.model import FloatArray

__all__ = ["GROUPS", "Cohort", "all_patient_names", "load_cohort", "resolve_patient_names"]

GROUPS = ("adolescent", "adult", "child")


@cache
def _read_csv(name: str) -> tuple[dict[str, str], ...]:
    text = resources.files("medtwin.glucose").joinpath("data").joinpath(name).read_text(encoding="utf-8")
    return tuple(dict(row) for row in csv.DictReader(text.splitlines()))


def _table(name: str) -> dict[str, dict[str, str]]:
    return {row["Name"]: row for row in _read_csv(name)}


def all_patient_names() -> tuple[str, ...]:
    """The 30 patient names in file order (adolescents, adults, children)."""
    return tuple(row["Name"] for row in _read_csv("vpatient_params.csv"))


def resolve_patient_names(selection: str | Sequence[str]) -> tuple[str, ...]:
    """Expand group names (``adult``, ``all``, ...) and check patient names; order is kept, duplicates allowed.

    *selection* is a list of names and groups, or one name or group as a plain string. Matching ignores case
    and surrounding spaces (``ADULT#001`` is ``adult#001``); the result holds the canonical lower-case names.
    """
    known = all_patient_names()
    canonical = {n.casefold(): n for n in known}
    out: list[str] = []
    for item in [selection] if isinstance(selection, str) else selection:
        key = item.strip().casefold()
        if key == "all":
            out += known
        elif key in GROUPS:
            out += [n for n in known if n.startswith(key + "#")]
        elif key in canonical:
            out.append(canonical[key])
        else:
            raise ValidationError(
                f"unknown virtual patient {item!r}: use a name such as 'adult#001' or a group {(*GROUPS, 'all')}"
            )
    if not out:
        raise ValidationError("no virtual patient selected")
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cohort:
    """A batch of virtual patients: parameter vectors, initial states and Quest therapy settings."""

    names: tuple[str, ...]
    params: dict[str, FloatArray]
    x0: FloatArray
    cr_g_per_u: FloatArray
    cf_mg_dl_per_u: FloatArray

    @property
    def size(self) -> int:
        """Number of patients."""
        return len(self.names)

    @property
    def basal_u_per_min(self) -> FloatArray:
        """Steady-state basal insulin rate u2ss * BW / 6000 (U/min)."""
        return self.params["u2ss"] * self.params["BW"] / PMOL_PER_UNIT_INSULIN

    @property
    def basal_glucose_mg_dl(self) -> FloatArray:
        """Subcutaneous glucose of the initial steady state (mg/dL)."""
        return self.x0[:, 12] / self.params["Vg"]


def load_cohort(selection: str | Sequence[str]) -> Cohort:
    """Load the patients named in *selection* (names or groups, see :func:`resolve_patient_names`)."""
    names = resolve_patient_names(selection)
    table = _table("vpatient_params.csv")
    quest = _table("Quest.csv")
    columns = [c for c in _read_csv("vpatient_params.csv")[0] if c not in ("Name", "i", "patient_history")]
    params = {c: np.array([float(table[n][c]) for n in names]) for c in columns if not c.startswith("x0_")}
    x0_cols = [c for c in columns if c.startswith("x0_")]
    x0 = np.array([[float(table[n][c]) for c in x0_cols] for n in names])
    return Cohort(
        names=names,
        params=params,
        x0=x0,
        cr_g_per_u=np.array([float(quest[n]["CR"]) for n in names]),
        cf_mg_dl_per_u=np.array([float(quest[n]["CF"]) for n in names]),
    )
