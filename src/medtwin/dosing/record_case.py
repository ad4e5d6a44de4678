"""A dosing case built from a patient's record instead of a case file: doses, levels and covariates with their times.

What is read (records of one patient):

- Doses: MedicationAdministrations of the drug (matched by the library model's medication coding, SNOMED CT, or
  by the drug's name in the coding's display), with a dose in a mass unit; the infusion duration is ``end - start``
  (0: a bolus). Administrations ``not-done``/``entered-in-error`` are skipped.
- Levels: Observations with the drug's level codes (:data:`LEVEL_CODES`, LOINC), converted to mg/L.
- Covariates: sex and birth date from the Patient (age in whole years at the first dose), the latest body weight
  (LOINC 29463-7) and height (8302-2), and the latest creatinine (2160-0 serum, 38483-4 blood) for
  Cockcroft-Gault, each named with its time and id in the case's notes. Observations ``entered-in-error`` or
  ``cancelled`` are skipped.

The model is the drug's default (:data:`DEFAULT_MODELS`) unless one is named; the target is the drug's default
(:data:`DEFAULT_TARGETS`) unless one is given. The case is then validated by :func:`medtwin.dosing.parse_case`
exactly as a case file is, so ``medtwin dose --patient``, the web app's dosing panel (:func:`case_from_patient_records`)
and the twin's drug component give the same report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from medtwin import codes
from medtwin.dosing.case import CaseError, PatientCase, parse_case
from medtwin.dosing.modelfile import library_models, load_model
from medtwin.errors import UnitError
from medtwin.records import Coding, MedicationAdministration, Observation, Patient, Quantity

__all__ = [
    "AMIKACIN_LEVEL_CODES",
    "CREATININE_CODES",
    "DEFAULT_MODELS",
    "DEFAULT_TARGETS",
    "LEVEL_CODES",
    "RecordedCourse",
    "case_from_patient_records",
    "case_from_records",
    "drug_of",
    "recorded_course",
]

# Drug level codes (LOINC 2.77): vancomycin 20578-1 (Serum or Plasma), 4092-3 (--trough), 4090-7 (--peak);
# gentamicin 35668-3 (Serum or Plasma), 3665-7 (--trough). Amikacin 35669-1 and 3321-7 (--trough) are recognised
# but no amikacin model is in the library, so no twin runs for it.
LEVEL_CODES: dict[str, frozenset[str]] = {
    "vancomycin": frozenset({"20578-1", "4092-3", "4090-7"}),
    "gentamicin": frozenset({"35668-3", "3665-7"}),
}
AMIKACIN_LEVEL_CODES = frozenset({"35669-1", "3321-7"})

# Serum creatinine 2160-0; 38483-4 "Creatinine [Mass/volume] in Blood" (what Synthea records) is read the same way.
CREATININE_CODES = frozenset({codes.CREATININE_SERUM.code, "38483-4"})

DEFAULT_MODELS: dict[str, str] = {"vancomycin": "goti2018_vancomycin", "gentamicin": "xuan2003_gentamicin"}

# Vancomycin: AUC24 400-600 mg.h/L (Rybak MJ et al., Therapeutic monitoring of vancomycin for serious MRSA
# infections: a revised consensus guideline, Am J Health Syst Pharm 2020;77(11):835-864, doi:10.1093/ajhp/zxaa036).
# Gentamicin: conventional (multiple daily) dosing, peak 5-10 mg/L and trough <= 2 mg/L: the optimal ranges of
# ARUP Laboratories' gentamicin assays (tests 0090130, 0090310), a laboratory reference, not a guideline; give the
# target of the local protocol instead where there is one.
DEFAULT_TARGETS: dict[str, dict[str, Any]] = {
    "vancomycin": {"metric": "auc24_ss", "low": 400, "high": 600, "value": 500},
    "gentamicin": {"metric": "peak_ss", "low": 5, "high": 10, "value": 8, "also": [{"metric": "trough_ss", "high": 2}]},
}

RETRACTED_STATUSES = frozenset({"entered-in-error", "cancelled", "not-done"})


def drug_of(medication: Coding) -> str | None:
    """The library drug *medication* is (by the models' medication codings, or by name), or None."""
    for drug, model_id in DEFAULT_MODELS.items():
        med = _model_medication(model_id)
        if medication.system == med.get("system") and medication.code == med.get("code"):
            return drug
        if drug in (medication.display or "").lower() or medication.code.lower() == drug:
            return drug
    return None


_MEDICATIONS: dict[str, Mapping[str, str]] = {}


def _model_medication(model_id: str) -> Mapping[str, str]:
    if model_id not in _MEDICATIONS:
        _MEDICATIONS[model_id] = dict(load_model(model_id).medication)
    return _MEDICATIONS[model_id]


def _mg(q: Quantity | None, where: str) -> float:
    if q is None:
        raise CaseError(f"{where}: no dose amount")
    try:
        return codes.convert(q.value, q.unit, "mg")
    except UnitError as exc:
        raise CaseError(f"{where}: dose unit {q.unit!r} is not a mass ({exc})") from None


@dataclass(frozen=True, slots=True)
class RecordedCourse:
    """A drug course as read from the record (times UTC), before it is made a case."""

    drug: str
    doses: tuple[tuple[datetime, float, float, str], ...]  # (start, amount mg, duration h, administration id)
    levels: tuple[tuple[datetime, float, str], ...]  # (time, mg/L, observation id)
    weights_kg: tuple[tuple[datetime, float, str], ...]
    heights_cm: tuple[tuple[datetime, float, str], ...]
    creatinine_mg_dl: tuple[tuple[datetime, float, str], ...]
    sex: str | None
    birth_date: date | None


def _value(obs: Observation, unit: str, analyte: str | None = None) -> float:
    if not isinstance(obs.value, Quantity):
        raise CaseError(f"Observation {obs.observation_id}: no numeric value")
    try:
        return codes.convert(obs.value.value, obs.value.unit, unit, analyte=analyte)
    except UnitError as exc:
        raise CaseError(f"Observation {obs.observation_id}: {exc}") from None


def recorded_course(
    drug: str,
    patient: Patient | None,
    administrations: Sequence[MedicationAdministration],
    observations: Sequence[Observation],
) -> RecordedCourse:
    """The *drug* course in these records (see the module docstring); doses and levels in time order."""
    doses = []
    for adm in administrations:
        if adm.status in RETRACTED_STATUSES or drug_of(adm.medication) != drug:
            continue
        duration = adm.infusion_duration_h or 0.0
        doses.append((adm.start, _mg(adm.dose, f"MedicationAdministration {adm.administration_id}"), duration,
                      adm.administration_id))  # fmt: skip
    level_codes = LEVEL_CODES.get(drug, frozenset())
    levels, weights, heights, scr = [], [], [], []
    for obs in observations:
        if obs.status in RETRACTED_STATUSES:
            continue
        code = obs.code.code if obs.code.system == codes.LOINC else None
        if code in level_codes:
            levels.append((obs.effective, _value(obs, "mg/L"), obs.observation_id))
        elif code == codes.BODY_WEIGHT.code:
            weights.append((obs.effective, _value(obs, "kg"), obs.observation_id))
        elif code == codes.BODY_HEIGHT.code:
            heights.append((obs.effective, _value(obs, "cm"), obs.observation_id))
        elif code in CREATININE_CODES:
            scr.append((obs.effective, _value(obs, "mg/dL", "creatinine"), obs.observation_id))
    return RecordedCourse(
        drug=drug,
        doses=tuple(sorted(doses)),
        levels=tuple(sorted(levels)),
        weights_kg=tuple(sorted(weights)),
        heights_cm=tuple(sorted(heights)),
        creatinine_mg_dl=tuple(sorted(scr)),
        sex=None if patient is None else patient.gender,
        birth_date=None if patient is None else patient.birth_date,
    )


def _age_years(birth: date, at: datetime) -> int:
    day = at.date()
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def case_from_records(
    patient_id: str,
    course: RecordedCourse,
    *,
    model: str | None = None,
    target: Mapping[str, Any] | None = None,
    regimen: Mapping[str, Any] | None = None,
    until: datetime | None = None,
) -> PatientCase:
    """The :class:`PatientCase` of *course* (records up to *until*, inclusive, when given).

    Raises
    ------
    CaseError
        No dose of the drug, or a covariate the model needs missing from the record (named, with where it comes
        from), or anything :func:`medtwin.dosing.parse_case` refuses.
    """
    where = f"patient {patient_id} ({course.drug})"

    def upto(entries: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [e for e in entries if until is None or e[0] <= until]

    doses, levels = upto(course.doses), upto(course.levels)
    if not doses:
        raise CaseError(f"{where}: no {course.drug} administration with a dose in the record")
    model_id = model or DEFAULT_MODELS[course.drug]
    if model_id not in library_models() and not model_id.endswith(".toml"):
        raise CaseError(f"{where}: model {model_id!r} is not in the library ({', '.join(library_models())})")
    origin = doses[0][0]
    covariates: dict[str, Any] = {}
    used: list[str] = []
    for name, entries, unit in (("weight_kg", course.weights_kg, "kg"), ("height_cm", course.heights_cm, "cm"),
                                ("scr", course.creatinine_mg_dl, "mg/dL")):  # fmt: skip
        latest = upto(entries)
        if latest:
            t, value, oid = latest[-1]
            covariates[name] = {"value": value, "unit": unit}
            used.append(f"{name} {value:g} {unit} from Observation {oid} at {t.isoformat()} (the latest)")
    if course.sex in ("male", "female"):
        covariates["sex"] = course.sex
        used.append(f"sex {course.sex} from the Patient record")
    if course.birth_date is not None:
        covariates["age_y"] = _age_years(course.birth_date, origin)
        used.append(f"age {covariates['age_y']} y at the first dose, from the birth date in the Patient record")
    mapping: dict[str, Any] = {
        "patient_id": patient_id,
        "model": model_id,
        "origin": origin.isoformat(),
        "covariates": covariates,
        "doses": [{"time": t.isoformat(), "amount_mg": mg, "duration_h": dur} for t, mg, dur, _ in doses],
        "levels": [{"time": t.isoformat(), "value": v, "unit": "mg/L", "id": oid} for t, v, oid in levels],
        "target": dict(target or DEFAULT_TARGETS[course.drug]),
    }
    if regimen:
        mapping["regimen"] = dict(regimen)
    case = parse_case(mapping, source=f"record of {where}")
    return dataclasses.replace(case, notes=(*case.notes, *(f"from the record: {u}" for u in used)))


def case_from_patient_records(
    patient_id: str,
    patient: Patient | None,
    administrations: Sequence[MedicationAdministration],
    observations: Sequence[Observation],
    *,
    drug: str | None = None,
    model: str | None = None,
) -> PatientCase:
    """The :class:`PatientCase` of one patient's records: the course of *drug* (by default the one drug of the
    record with a library model) made a case by :func:`case_from_records`; what ``medtwin dose --patient`` and the
    web app's dosing panel both analyse.

    Raises
    ------
    CaseError
        No drug with a library model in the record, or several and *drug* not given, or anything
        :func:`case_from_records` refuses.
    """
    if drug is None:
        drugs = sorted({d for a in administrations if (d := drug_of(a.medication)) is not None})
        if len(drugs) != 1:
            raise CaseError(f"patient {patient_id}: {'no' if not drugs else 'several'} drugs with a library "
                            f"model in the record ({', '.join(drugs) or 'none of ' + ', '.join(DEFAULT_MODELS)}); "
                            "name one with --drug")  # fmt: skip
        drug = drugs[0]
    return case_from_records(patient_id, recorded_course(drug, patient, administrations, observations), model=model)
