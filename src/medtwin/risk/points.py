"""Points scores: FINDRISC (type 2 diabetes), CHA2DS2-VASc (stroke in atrial fibrillation), HAS-BLED (bleeding).

**FINDRISC** -- Lindström J, Tuomilehto J. The Diabetes Risk Score: a practical tool to predict type 2 diabetes
risk. Diabetes Care 2003;26(3):725-731. doi:10.2337/diacare.26.3.725. Points as on the published FINDRISC form:
age <45 0, 45-54 2, 55-64 3, >64 4; BMI <25 0, 25-30 1, >30 3; waist (men) <94 0, 94-102 3, >102 4 cm, (women)
<80 0, 80-88 3, >88 4 cm; not physically active 30 min daily 2; vegetables or fruit not every day 1; ever on BP
medication 2; ever high blood glucose 5; family history of diabetes in grandparent, aunt, uncle or first cousin 3,
in parent, sibling or child 5 (``family_history_diabetes`` = 0 none, 1 second-degree, 2 first-degree). Bands:
<7 low, 7-11 slightly elevated, 12-14 moderate, 15-20 high, >20 very high; the form's 10-year risk per band is
1 in 100, 1 in 25, 1 in 6, 1 in 3 and 1 in 2. Boundaries: BMI 30 and waist 102/88 cm score the middle band.
Validity: adults without known diabetes (``diabetes`` = 1 refused).

**CHA2DS2-VASc** -- Lip GYH, Nieuwlaat R, Pisters R, Lane DA, Crijns HJGM. Refining clinical risk stratification
for predicting stroke and thromboembolism in atrial fibrillation using a novel risk factor-based approach. Chest
2010;137(2):263-272. doi:10.1378/chest.09-1584. Congestive heart failure 1, hypertension 1, age >=75 2, diabetes 1,
stroke/TIA/thromboembolism 2, vascular disease 1, age 65-74 1, female 1 (maximum 9). Validity: non-valvular atrial
fibrillation; the score is not computed without an AF diagnosis unless ``require_af=False``.

**HAS-BLED** -- Pisters R, Lane DA, Nieuwlaat R, de Vos CB, Crijns HJGM, Lip GYH. A novel user-friendly score
(HAS-BLED) to assess 1-year risk of major bleeding in patients with atrial fibrillation. Chest
2010;138(5):1093-1100. doi:10.1378/chest.10-0134. Hypertension (uncontrolled, SBP >160 mmHg) 1; abnormal renal
function 1; abnormal liver function 1; stroke 1; bleeding history or predisposition 1; labile INR 1; elderly
(>65) 1; drugs (antiplatelet or NSAID) 1; alcohol (>=8 drinks a week) 1 (maximum 9). A score >=3 marks high
bleeding risk ("caution and regular review"). Labile INR applies to people on a vitamin K antagonist: when not
known it counts 0 and is flagged. Uncontrolled hypertension is taken from ``sbp_mm_hg`` > 160 when
``uncontrolled_hypertension`` is not given.

Every other unknown item is refused with its name (a points score with a missing item would understate the
risk). Points per item are kept for explanations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from medtwin.risk.core import (
    Checks,
    FloatArray,
    Inputs,
    Problem,
    cohort_size,
    column,
    flag_column,
    nan_to_num,
    sex_column,
)

__all__ = ["FINDRISC_BANDS", "ScoreResult", "cha2ds2_vasc", "findrisc", "has_bled"]

# upper bound (inclusive) of each band's points, band name, the form's 10-year risk
FINDRISC_BANDS: tuple[tuple[int, str, float], ...] = (
    (6, "low", 1 / 100),
    (11, "slightly elevated", 1 / 25),
    (14, "moderate", 1 / 6),
    (20, "high", 1 / 3),
    (26, "very high", 1 / 2),
)


@dataclass(frozen=True, kw_only=True)
class ScoreResult:
    """A points score over a cohort: *points* (``NaN`` where refused), points per item, band per person."""

    model: str
    title: str
    points: FloatArray
    items: dict[str, FloatArray]
    item_words: dict[str, Callable[[int], str]]
    band: npt.NDArray[np.object_]
    problems: tuple[Problem, ...]
    risk: FloatArray | None = None

    def __len__(self) -> int:
        return len(self.points)

    @property
    def refused(self) -> npt.NDArray[np.bool_]:
        """People without a score."""
        return np.isnan(self.points)

    def reasons(self, i: int) -> list[str]:
        """Why person *i*'s score is refused or flagged."""
        return [p.describe(i) for p in self.problems if p.mask[i]]


# band words as objects, gathered by index: a million-row band column holds references to these few strings
_CHA2DS2_BANDS = np.array(["low", "intermediate", "high"], dtype=object)
_HAS_BLED_BANDS = np.array(["not high", "high"], dtype=object)


def _band(points: FloatArray, labels: npt.NDArray[np.object_]) -> npt.NDArray[np.object_]:
    """*labels* (a new object array, one per person, changed in place) with None where the score is refused."""
    labels[np.isnan(points)] = None
    return labels


def _yes_no(flags: dict[str, FloatArray], labels: dict[str, str]) -> dict[str, Callable[[int], str]]:
    def words(key: str, label: str) -> Callable[[int], str]:
        return lambda i: label if flags[key][i] == 1 else f"no {label}"

    return {k: words(k, label) for k, label in labels.items()}


def _finish(checks: Checks, items: dict[str, FloatArray]) -> FloatArray:
    first, *rest = items.values()
    total = first.copy()
    for v in rest:  # whole points: the sum is exact in any order
        total += v
    total[checks.refused] = np.nan
    return total


def findrisc(inputs: Inputs) -> ScoreResult:
    """FINDRISC points and band for every person in *inputs*.

    Columns: ``age_years``, ``sex``, ``bmi_kg_m2``, ``waist_cm``, ``physically_active`` (30 min daily),
    ``daily_fruit_veg``, ``bp_medication_ever``, ``high_glucose_ever``, ``family_history_diabetes`` (0/1/2);
    optional ``diabetes`` (known diabetes is refused).
    """
    n = cohort_size(inputs)
    checks = Checks("FINDRISC", n)
    age = column(inputs, "age_years", n)
    male = sex_column(inputs, n)
    bmi = column(inputs, "bmi_kg_m2", n)
    waist = column(inputs, "waist_cm", n)
    active = flag_column(inputs, "physically_active", n)
    fruit = flag_column(inputs, "daily_fruit_veg", n)
    bp_med = flag_column(inputs, "bp_medication_ever", n)
    glucose = flag_column(inputs, "high_glucose_ever", n)
    family = column(inputs, "family_history_diabetes", n)
    for name, label, values in (
        ("age_years", "age", age),
        ("sex", "sex (male or female; the waist bands are sex-specific)", male),
        ("bmi_kg_m2", "BMI", bmi),
        ("waist_cm", "waist circumference", waist),
        ("physically_active", "daily physical activity answer", active),
        ("daily_fruit_veg", "daily vegetables/fruit answer", fruit),
        ("bp_medication_ever", "blood-pressure medication history", bp_med),
        ("high_glucose_ever", "history of high blood glucose", glucose),
        ("family_history_diabetes", "family history of diabetes", family),
    ):
        checks.require(name, label, values)
    checks.within("age_years", "age", age, 18, 120, "years", source="adults")
    checks.refuse(
        "family_history_diabetes",
        ~np.isnan(family) & ~np.isin(family, (0, 1, 2)),
        "family_history_diabetes must be 0 (none), 1 (second-degree) or 2 (first-degree)",
    )
    checks.refuse("diabetes", flag_column(inputs, "diabetes", n) == 1, "diabetes already diagnosed")
    low, high = np.where(male == 1, 94.0, 80.0), np.where(male == 1, 102.0, 88.0)
    with np.errstate(invalid="ignore"):
        items = {
            "age": np.select([age < 45, age < 55, age < 65], [0.0, 2.0, 3.0], 4.0),
            "bmi": np.select([bmi < 25, bmi <= 30], [0.0, 1.0], 3.0),
            "waist": np.select([waist < low, waist <= high], [0.0, 3.0], 4.0),
            "activity": np.where(active == 0, 2.0, 0.0),
            "diet": np.where(fruit == 0, 1.0, 0.0),
            "bp_medication": np.where(bp_med == 1, 2.0, 0.0),
            "high_glucose": np.where(glucose == 1, 5.0, 0.0),
            "family": np.select([family == 1, family == 2], [3.0, 5.0], 0.0),
        }
    points = _finish(checks, items)
    bounds = np.array([b[0] for b in FINDRISC_BANDS])
    idx = np.searchsorted(bounds, nan_to_num(points), side="left").clip(0, len(bounds) - 1)
    names = np.array([b[1] for b in FINDRISC_BANDS], dtype=object)[idx]
    risk = np.array([b[2] for b in FINDRISC_BANDS])[idx]
    words: dict[str, Callable[[int], str]] = {
        "age": lambda i: f"age {age[i]:.0f}",
        "bmi": lambda i: f"BMI {bmi[i]:.1f} kg/m2",
        "waist": lambda i: f"waist {waist[i]:.0f} cm",
        "activity": lambda i: "not active 30 min daily" if active[i] == 0 else "active 30 min daily",
        "diet": lambda i: "vegetables/fruit not every day" if fruit[i] == 0 else "vegetables/fruit every day",
        "bp_medication": lambda i: "has taken BP medication" if bp_med[i] == 1 else "never on BP medication",
        "high_glucose": lambda i: "high glucose found before" if glucose[i] == 1 else "no high glucose found before",
        "family": lambda i: (
            "no family history",
            "diabetes in grandparent/aunt/uncle/cousin",
            "diabetes in parent/sibling/child",
        )[int(np.nan_to_num(family[i]))],
    }
    return ScoreResult(
        model="findrisc",
        title="FINDRISC (Lindström 2003), 10-year type 2 diabetes",
        points=points,
        items=items,
        item_words=words,
        band=_band(points, names),
        problems=tuple(checks.problems),
        risk=np.where(np.isnan(points), np.nan, risk),
    )


def cha2ds2_vasc(inputs: Inputs, *, require_af: bool = True) -> ScoreResult:
    """CHA2DS2-VASc points for every person in *inputs*.

    Columns: ``age_years``, ``sex``, ``heart_failure``, ``hypertension``, ``diabetes``, ``stroke_tia`` (stroke,
    TIA or thromboembolism), ``vascular_disease`` (MI, peripheral arterial disease, aortic plaque), ``af``.
    """
    n = cohort_size(inputs)
    checks = Checks("CHA2DS2-VASc", n)
    age = column(inputs, "age_years", n)
    male = sex_column(inputs, n)
    names = ("heart_failure", "hypertension", "diabetes", "stroke_tia", "vascular_disease")
    labels = ("congestive heart failure", "hypertension", "diabetes", "stroke/TIA/thromboembolism", "vascular disease")
    flags = {k: flag_column(inputs, k, n) for k in names}
    checks.require("age_years", "age", age)
    checks.require("sex", "sex (male or female)", male)
    for k, label in zip(names, labels, strict=True):
        checks.require(k, label, flags[k])
    if require_af:
        checks.refuse("af", flag_column(inputs, "af", n) != 1, "no atrial fibrillation recorded (the score is for AF)")
    with np.errstate(invalid="ignore"):
        items = {
            "heart_failure": nan_to_num(flags["heart_failure"]),
            "hypertension": nan_to_num(flags["hypertension"]),
            "age": np.select([age >= 75, age >= 65], [2.0, 1.0], 0.0),
            "diabetes": nan_to_num(flags["diabetes"]),
            "stroke_tia": 2.0 * nan_to_num(flags["stroke_tia"]),
            "vascular_disease": nan_to_num(flags["vascular_disease"]),
            "sex": np.where(male == 0, 1.0, 0.0),
        }
    points = _finish(checks, items)
    words = _yes_no(flags, dict(zip(names, labels, strict=True)))
    words["age"] = lambda i: f"age {age[i]:.0f}"
    words["sex"] = lambda i: "female" if male[i] == 0 else "male"
    without_sex = points - items["sex"]
    band = _band(points, _CHA2DS2_BANDS[np.where(without_sex >= 2, 2, np.where(without_sex == 1, 1, 0))])
    return ScoreResult(
        model="cha2ds2-vasc",
        title="CHA2DS2-VASc (Lip 2010), stroke risk in AF",
        points=points,
        items=items,
        item_words=words,
        band=band,
        problems=tuple(checks.problems),
    )


def has_bled(inputs: Inputs) -> ScoreResult:
    """HAS-BLED points for every person in *inputs*.

    Columns: ``age_years``, ``uncontrolled_hypertension`` (or ``sbp_mm_hg``), ``abnormal_renal``,
    ``abnormal_liver``, ``stroke``, ``bleeding``, ``labile_inr`` (optional), ``antiplatelet_or_nsaid``,
    ``alcohol_excess``.
    """
    n = cohort_size(inputs)
    checks = Checks("HAS-BLED", n)
    age = column(inputs, "age_years", n)
    if "uncontrolled_hypertension" in inputs:
        htn = flag_column(inputs, "uncontrolled_hypertension", n)
    else:
        sbp = column(inputs, "sbp_mm_hg", n)
        with np.errstate(invalid="ignore"):
            htn = np.where(np.isnan(sbp), np.nan, (sbp > 160).astype(float))
    names = ("abnormal_renal", "abnormal_liver", "stroke", "bleeding", "antiplatelet_or_nsaid", "alcohol_excess")
    labels = (
        "abnormal renal function",
        "abnormal liver function",
        "stroke",
        "bleeding history or predisposition",
        "antiplatelet or NSAID",
        "alcohol >= 8 drinks a week",
    )
    flags = {k: flag_column(inputs, k, n) for k in names}
    labile = flag_column(inputs, "labile_inr", n)
    checks.require("age_years", "age", age)
    checks.require("uncontrolled_hypertension", "blood pressure (uncontrolled hypertension, SBP > 160)", htn)
    for k, label in zip(names, labels, strict=True):
        checks.require(k, label, flags[k])
    checks.flag("labile_inr", np.isnan(labile), "labile INR not known (applies to vitamin K antagonists): counted 0")
    with np.errstate(invalid="ignore"):
        items = {
            "hypertension": nan_to_num(htn),
            **{k: nan_to_num(v) for k, v in flags.items()},
            "labile_inr": nan_to_num(labile),
            "elderly": (age > 65).astype(float),
        }
    points = _finish(checks, items)
    words = _yes_no(items, dict(zip(names, labels, strict=True)))
    words["hypertension"] = lambda i: "uncontrolled hypertension" if items["hypertension"][i] else "BP controlled"
    words["labile_inr"] = lambda i: "labile INR" if labile[i] == 1 else "INR not labile or not applicable"
    words["elderly"] = lambda i: f"age {age[i]:.0f}"
    band = _band(points, _HAS_BLED_BANDS[(points >= 3).astype(np.intp)])
    return ScoreResult(
        model="has-bled",
        title="HAS-BLED (Pisters 2010), 1-year major bleeding in AF",
        points=points,
        items=items,
        item_words=words,
        band=band,
        problems=tuple(checks.problems),
    )
