"""Risk-equation inputs from a patient's record, each with its time and source (floor 2: reads the store).

The rule for every input is in :data:`RULES` (and docs/models/risk-inputs.md): the **latest value within a window**
before the assessment time, or the condition/medication rule. A value older than its window is not used: the input
is reported missing with the age of what there was, so an equation refuses with that reason rather than using a
stale value. Observations with status ``entered-in-error`` or ``cancelled`` are skipped.

* Conditions (SNOMED CT, :data:`CONDITION_CODES`) count when recorded with onset (or recording time) on or before
  the assessment time and not abated before it (clinical status other than inactive/resolved/remission). No coded
  condition means "absent", stated as the source ("no coded condition").
* Medications count when a MedicationRequest (any status except entered-in-error/cancelled for "ever"; ``active``
  for current use) authored on or before the assessment time names an ingredient of :data:`MEDICATION_CLASSES`
  (matched on the coding's display text, so RxNorm, dm+d or local codes with readable names all work).
* Age and sex come from the Patient; race, ethnicity, deprivation and questionnaire answers (FINDRISC) are not in
  medtwin's record model and come from *overrides* (stated as "entered by user").
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select

from medtwin import codes
from medtwin.errors import UnitError
from medtwin.records import Coding, Condition, MedicationRequest, Observation, Patient, Quantity, utc
from medtwin.store import Store, codec, schema

__all__ = [
    "CONDITION_CODES",
    "INPUT_COLUMNS",
    "MEDICATION_CLASSES",
    "RULES",
    "InputValue",
    "ObservationRule",
    "RecordInputs",
    "assemble",
    "assemble_cohort",
    "assemble_from_records",
    "inputs_table",
]

MONTH = timedelta(days=30.4375)
_CHOLESTEROL = ("total_chol_mg_dl", "hdl_mg_dl", "ldl_mg_dl")


@dataclass(frozen=True)
class ObservationRule:
    """Input *name* from the latest observation of one of *loinc* within *months* before the assessment."""

    name: str
    label: str
    loinc: tuple[str, ...]
    months: int
    unit: str


RULES: dict[str, ObservationRule] = {
    r.name: r
    for r in (
        ObservationRule("sbp_mm_hg", "systolic BP", ("8480-6",), 12, "mm[Hg]"),
        ObservationRule("total_chol_mg_dl", "total cholesterol", ("2093-3",), 60, "mg/dL"),
        ObservationRule("hdl_mg_dl", "HDL cholesterol", ("2085-9",), 60, "mg/dL"),
        ObservationRule("ldl_mg_dl", "LDL cholesterol", ("18262-6", "13457-7", "2089-1"), 60, "mg/dL"),
        ObservationRule("smoking", "smoking status", ("72166-2",), 36, ""),
        ObservationRule(
            "egfr_ml_min_1_73m2",
            "eGFR",
            ("98979-8", "62238-1", "33914-3", "48642-3", "48643-1"),
            12,
            "mL/min/{1.73_m2}",
        ),
        ObservationRule("uacr_mg_g", "urine albumin-creatinine ratio", ("9318-7", "14959-1", "32294-1"), 12, "mg/g"),
        ObservationRule("hba1c_pct", "HbA1c", ("4548-4", "17856-6", "59261-8"), 12, "%"),
        ObservationRule("bmi_kg_m2", "BMI", ("39156-5",), 24, "kg/m2"),
        ObservationRule("weight_kg", "body weight", ("29463-7",), 24, "kg"),
        ObservationRule("height_cm", "body height", ("8302-2",), 120, "cm"),
        ObservationRule("waist_cm", "waist circumference", ("8280-0", "56115-9"), 24, "cm"),
    )
}
SBP_SD_YEARS = 5  # QRISK3: SD of the systolic readings of the last 5 years (at least two)

# input column -> SNOMED CT codes (International Edition) that count as that condition
CONDITION_CODES: dict[str, tuple[str, ...]] = {
    "diabetes_type1": ("46635009",),
    "diabetes_type2": ("44054006",),
    "diabetes_other": ("73211009",),  # diabetes mellitus, type not stated
    "af": ("49436004", "5370000", "282825002"),
    "heart_failure": ("84114007", "42343007", "88805009"),
    "stroke_tia": ("230690007", "266257000", "422504002", "432504007"),
    "hypertension": ("38341003", "59621000"),
    "ckd_3_5": ("433144002", "431857002", "433146000", "46177005", "700379002", "714152005"),
    "prior_ascvd": (
        "22298006",
        "401303003",
        "401314000",
        "399211009",
        "53741008",
        "194828000",
        "230690007",
        "266257000",
        "399957001",
        "840580004",
    ),
    "vascular_disease": ("22298006", "401303003", "401314000", "399211009", "399957001", "840580004"),
    "rheumatoid_arthritis": ("69896004",),
    "sle": ("55464009",),
    "migraine": ("37796009",),
    "severe_mental_illness": ("58214004", "13746004", "35489007"),
    "erectile_dysfunction": ("860914002", "397803000"),
}
_NOT_ACTIVE = {"inactive", "resolved", "remission"}

# medication class -> ingredient names matched in the medication's display text (lower case)
MEDICATION_CLASSES: dict[str, tuple[str, ...]] = {
    "antihypertensive": (
        "pril",
        "sartan",
        "amlodipine",
        "nifedipine",
        "felodipine",
        "lercanidipine",
        "diltiazem",
        "verapamil",
        "hydrochlorothiazide",
        "chlorthalidone",
        "indapamide",
        "bendroflumethiazide",
        "spironolactone",
        "eplerenone",
        "doxazosin",
        "atenolol",
        "bisoprolol",
        "metoprolol",
        "carvedilol",
        "nebivolol",
        "propranolol",
        "labetalol",
        "clonidine",
        "methyldopa",
        "hydralazine",
        "furosemide",
        "aliskiren",
    ),
    "statin": (
        "atorvastatin",
        "simvastatin",
        "rosuvastatin",
        "pravastatin",
        "lovastatin",
        "fluvastatin",
        "pitavastatin",
    ),
    "atypical_antipsychotic": (
        "olanzapine",
        "quetiapine",
        "risperidone",
        "aripiprazole",
        "clozapine",
        "amisulpride",
        "paliperidone",
        "ziprasidone",
        "lurasidone",
    ),
    "corticosteroids": ("prednisolone", "prednisone", "methylprednisolone", "dexamethasone", "hydrocortisone"),
    "antiplatelet_or_nsaid": (
        "aspirin",
        "clopidogrel",
        "prasugrel",
        "ticagrelor",
        "ibuprofen",
        "naproxen",
        "diclofenac",
        "celecoxib",
        "meloxicam",
        "indomethacin",
    ),
}

# smoking status (LOINC 72166-2 answer, SNOMED CT) -> (current smoker, QRISK3 category, words)
SMOKING_STATUS: dict[str, tuple[float, float, str]] = {
    "266919005": (0.0, 0.0, "never smoked"),
    "8517006": (0.0, 1.0, "ex-smoker"),
    "428061000124105": (1.0, 2.0, "light smoker"),
    "428071000124103": (1.0, 4.0, "heavy smoker"),
    "449868002": (1.0, 3.0, "smokes daily"),
    "428041000124106": (1.0, 3.0, "smokes some days"),
    "77176002": (1.0, 3.0, "smoker"),
}


@dataclass(frozen=True)
class InputValue:
    """One input with where it came from: *reference* is a FHIR reference (``Observation/<id>``) when it has one."""

    name: str
    value: float | str | None
    source: str
    time: datetime | None = None
    reference: str | None = None


@dataclass
class RecordInputs:
    """One patient's inputs at *as_of*, and what could not be used (with why)."""

    patient_id: str
    as_of: datetime
    values: dict[str, InputValue] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(
        self,
        name: str,
        value: float | str | None,
        source: str,
        time: datetime | None = None,
        reference: str | None = None,
    ) -> None:
        self.values[name] = InputValue(name, value, source, time, reference)

    def number(self, name: str) -> float | None:
        """The numeric value of input *name*, or None."""
        v = self.values.get(name)
        return float(v.value) if v is not None and isinstance(v.value, int | float) else None

    def as_inputs(self) -> dict[str, list[float | str | None]]:
        """One-row inputs for :mod:`medtwin.risk` (``sex`` as text)."""
        out: dict[str, list[float | str | None]] = {
            k: [np.nan if v.value is None else v.value] for k, v in self.values.items()
        }
        sex = self.values.get("sex")
        out["sex"] = [None if sex is None or sex.value is None else ("male" if sex.value == 1 else "female")]
        return out

    def basis(self) -> list[str]:
        """FHIR references of every record used."""
        return sorted({v.reference for v in self.values.values() if v.reference})


def _quantity_in(obs: Observation, unit: str, name: str) -> float | None:
    value = obs.value
    if not isinstance(value, Quantity):
        return None
    if name == "hba1c_pct" and value.unit in ("mmol/mol", "mmol/mol{Hb}"):
        return 0.09148 * value.value + 2.152  # IFCC -> NGSP master equation (Hoelzel et al., Clin Chem 2004)
    if name == "egfr_ml_min_1_73m2":
        return value.value if value.unit.lower().startswith("ml/min") else None
    if not unit or value.unit == unit:
        return value.value
    analyte = "creatinine" if name == "uacr_mg_g" else "cholesterol" if name in _CHOLESTEROL else None
    try:
        return codes.convert(value.value, value.unit, unit, analyte=analyte)
    except UnitError:
        return None


def _latest(out: RecordInputs, rule: ObservationRule, observations: Sequence[Observation]) -> Observation | None:
    """Put the latest usable observation for *rule* and return it (or note why there is none)."""
    window_start = out.as_of - rule.months * MONTH
    older: Observation | None = None
    for obs in reversed(observations):
        if rule.name == "smoking":
            usable = isinstance(obs.value, Coding)
        else:
            usable = _quantity_in(obs, rule.unit, rule.name) is not None
        if not usable:
            if isinstance(obs.value, Quantity):
                out.notes.append(
                    f"{rule.label} {obs.effective.date().isoformat()}: {obs.value.value:g} "
                    f"{obs.value.unit!r} cannot be read as {rule.unit} (Observation/{obs.observation_id})"
                )
            continue
        if obs.effective < window_start:
            older = older or obs
            continue
        return obs
    if older is not None:
        age = (out.as_of - older.effective) / MONTH
        out.notes.append(f"{rule.label}: latest value is {age:.0f} months old (rule: within {rule.months} months)")
    return None


def _by_loinc(observations: Iterable[Observation], as_of: datetime) -> dict[str, list[Observation]]:
    found: dict[str, list[Observation]] = defaultdict(list)
    for obs in observations:
        if obs.effective > as_of or obs.status in ("entered-in-error", "cancelled"):
            continue
        for coding in (obs.code, *obs.alt_codes):
            target = codes.normalise_to_loinc(coding)
            if target.system == codes.LOINC:
                found[target.code].append(obs)
                break
    for values in found.values():
        values.sort(key=lambda o: o.effective)
    return found


def assemble_from_records(
    patient: Patient,
    observations: Iterable[Observation],
    conditions: Iterable[Condition],
    medications: Iterable[MedicationRequest],
    as_of: datetime,
    overrides: Mapping[str, Any] | None = None,
) -> RecordInputs:
    """The inputs of one patient from their records (the pure part of :func:`assemble`)."""
    as_of = utc(as_of, field_name="as_of")
    out = RecordInputs(patient.patient_id, as_of)
    age = patient.age_years(as_of)
    out.put(
        "age_years",
        None if age is None else math.floor(age),
        "Patient.birthDate",
        None,
        f"Patient/{patient.patient_id}",
    )
    sex = {"male": 1.0, "female": 0.0}.get(patient.gender or "")
    out.put("sex", sex, f"Patient.gender ({patient.gender or 'not recorded'})", None, f"Patient/{patient.patient_id}")
    by_code = _by_loinc(observations, as_of)
    for rule in RULES.values():
        candidates = sorted((o for c in rule.loinc for o in by_code.get(c, [])), key=lambda o: o.effective)
        obs = _latest(out, rule, candidates)
        if obs is None:
            continue
        src = f"{rule.label} {obs.effective.date().isoformat()} (LOINC {obs.code.code})"
        ref = f"Observation/{obs.observation_id}"
        if rule.name == "smoking":
            code = getattr(obs.value, "code", None)
            current, category, words = SMOKING_STATUS.get(str(code), (np.nan, np.nan, f"unmapped answer {code}"))
            out.put("smoker", current, f"{src}: {words}", obs.effective, ref)
            out.put("smoking_category", category, f"{src}: {words}", obs.effective, ref)
        else:
            out.put(rule.name, _quantity_in(obs, rule.unit, rule.name), src, obs.effective, ref)
    weight, height = out.number("weight_kg"), out.number("height_cm")
    if "bmi_kg_m2" not in out.values and weight is not None and height:
        w = out.values["weight_kg"]
        out.put(
            "bmi_kg_m2",
            weight / (height / 100) ** 2,
            f"weight {weight:g} kg / height {height:g} cm squared",
            w.time,
            w.reference,
        )
    sbps = [
        o
        for c in RULES["sbp_mm_hg"].loinc
        for o in by_code.get(c, [])
        if o.effective >= as_of - timedelta(days=365.25 * SBP_SD_YEARS) and isinstance(o.value, Quantity)
    ]
    if len(sbps) >= 2:
        values = np.array([o.value.value for o in sbps if isinstance(o.value, Quantity)])
        out.put(
            "sbp_sd_mm_hg", float(np.std(values, ddof=1)), f"SD of {len(values)} systolic BPs in {SBP_SD_YEARS} years"
        )
    tc, hdl = out.number("total_chol_mg_dl"), out.number("hdl_mg_dl")
    if tc is not None and hdl:
        out.put("chol_hdl_ratio", tc / hdl, "total cholesterol / HDL cholesterol")
    _conditions(out, conditions)
    _medications(out, medications)
    for key, value in (overrides or {}).items():
        out.put(
            key, None if value is None else (str(value) if key == "race" else float(value)), f"entered by user: {value}"
        )
    return out


def _active(c: Condition, as_of: datetime) -> bool:
    start = c.onset or c.recorded
    if start is not None and start > as_of:
        return False
    if c.abatement is not None and c.abatement <= as_of:
        return False
    return c.clinical_status not in _NOT_ACTIVE or (c.abatement is not None and c.abatement > as_of)


def _conditions(out: RecordInputs, conditions: Iterable[Condition]) -> None:
    found: dict[str, Condition] = {}
    for c in conditions:
        if c.code.system != codes.SNOMED or not _active(c, out.as_of):
            continue
        for name, snomed in CONDITION_CODES.items():
            if c.code.code in snomed and name not in found:
                found[name] = c
    for name in CONDITION_CODES:
        if name not in found:
            out.put(name, 0.0, "no coded condition")
        else:
            c = found[name]
            out.put(
                name,
                1.0,
                f"{c.code.display or c.code.code} (SNOMED {c.code.code})",
                c.onset or c.recorded,
                f"Condition/{c.condition_id}",
            )
    t1, t2, other = (out.values[k] for k in ("diabetes_type1", "diabetes_type2", "diabetes_other"))
    dm = next((v for v in (t1, t2, other) if v.value == 1), t2)
    out.put("diabetes", 1.0 if dm.value == 1 else 0.0, dm.source, dm.time, dm.reference)
    dtype = 1.0 if t1.value == 1 else 2.0 if (t2.value == 1 or other.value == 1) else 0.0
    out.put(
        "diabetes_type",
        dtype,
        dm.source + (" (type not stated: type 2 used)" if other.value == 1 and dtype == 2 and t2.value != 1 else ""),
        dm.time,
        dm.reference,
    )
    if out.values["stroke_tia"].value == 1:
        out.put(
            "stroke",
            1.0,
            out.values["stroke_tia"].source,
            out.values["stroke_tia"].time,
            out.values["stroke_tia"].reference,
        )
    else:
        out.put("stroke", 0.0, "no coded condition")
    out.put(
        "prior_cvd",
        out.values["prior_ascvd"].value or out.values["heart_failure"].value,
        "prior ASCVD or heart failure",
        None,
        None,
    )


def _medications(out: RecordInputs, medications: Iterable[MedicationRequest]) -> None:
    current: dict[str, MedicationRequest] = {}
    ever: dict[str, MedicationRequest] = {}
    for med in medications:
        if med.status in ("entered-in-error", "cancelled") or (med.authored and med.authored > out.as_of):
            continue
        text = (med.medication.display or "").lower()
        for cls, names in MEDICATION_CLASSES.items():
            if any(n in text for n in names):
                ever.setdefault(cls, med)
                if med.status == "active":
                    current[cls] = med
    for cls, key in (
        ("antihypertensive", "bp_treated"),
        ("statin", "statin"),
        ("atypical_antipsychotic", "atypical_antipsychotic"),
        ("corticosteroids", "corticosteroids"),
        ("antiplatelet_or_nsaid", "antiplatelet_or_nsaid"),
    ):
        if cls not in current:
            out.put(key, 0.0, f"no active {cls.replace('_', ' ')} order")
        else:
            med = current[cls]
            out.put(
                key,
                1.0,
                med.medication.display or med.medication.code,
                med.authored,
                f"MedicationRequest/{med.request_id}",
            )
    first = ever.get("antihypertensive")
    out.put(
        "bp_medication_ever",
        0.0 if first is None else 1.0,
        "no antihypertensive order" if first is None else (first.medication.display or first.medication.code),
        None if first is None else first.authored,
        None if first is None else f"MedicationRequest/{first.request_id}",
    )


def assemble(
    store: Store, patient_id: str, as_of: datetime | None = None, overrides: Mapping[str, Any] | None = None
) -> RecordInputs | None:
    """The inputs of *patient_id* at *as_of* (default now) from *store*, or None for an unknown patient."""
    patient = store.patient(patient_id)
    if patient is None:
        return None
    when = datetime.now(UTC) if as_of is None else as_of
    return assemble_from_records(
        patient,
        store.observations(patient_id),
        store.conditions(patient_id),
        store.medication_requests(patient_id),
        when,
        overrides,
    )


def _rows_by_patient(
    store: Store, table: Any, ids: Sequence[str], record_type: type, extra: Any = None
) -> dict[str, list[Any]]:
    stmt = select(table.c.patient_id, table.c.body).where(table.c.patient_id.in_(ids))
    if extra is not None:
        stmt = stmt.where(extra)
    found: dict[str, list[Any]] = defaultdict(list)
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    bodies = [body for _, body in rows]
    if table is schema.patients:  # sealed at rest (docs/security-data.md): opened with the keys fetched together
        bodies = [b or "{}" for b in store.keys.open_texts(bodies)]
    for (pid, _), body in zip(rows, bodies, strict=True):
        found[pid].append(codec.decode(record_type, body))
    return found


def assemble_cohort(
    store: Store, patient_ids: Sequence[str], as_of: datetime, overrides: Mapping[str, Any] | None = None
) -> list[RecordInputs]:
    """The inputs of many patients with four queries per call (observations of the rules' LOINC codes,
    conditions, medication requests, patients): call it on batches of ids (e.g. 500) to bound memory."""
    ids = list(patient_ids)
    loincs = sorted({c for r in RULES.values() for c in r.loinc})
    obs = _rows_by_patient(store, schema.observations, ids, Observation, schema.observations.c.loinc_code.in_(loincs))
    conds = _rows_by_patient(store, schema.conditions, ids, Condition)
    meds = _rows_by_patient(store, schema.medication_requests, ids, MedicationRequest)
    patients = _rows_by_patient(store, schema.patients, ids, Patient)
    out = []
    for pid in ids:
        if pid not in patients:
            continue
        patient = patients[pid][0]
        out.append(
            assemble_from_records(patient, obs.get(pid, []), conds.get(pid, []), meds.get(pid, []), as_of, overrides)
        )
    return out


# every input assemble_from_records can fill (besides overrides), so that every batch has the same columns
_DERIVED = (
    "age_years",
    "smoker",
    "smoking_category",
    "sbp_sd_mm_hg",
    "chol_hdl_ratio",
    "diabetes",
    "diabetes_type",
    "stroke",
    "prior_cvd",
    "bp_treated",
    "statin",
    "atypical_antipsychotic",
    "corticosteroids",
    "antiplatelet_or_nsaid",
    "bp_medication_ever",
)
INPUT_COLUMNS = tuple(sorted({*(r for r in RULES if r != "smoking"), *CONDITION_CODES, *_DERIVED}))


def inputs_table(rows: Sequence[RecordInputs]) -> dict[str, np.ndarray]:
    """Columns for :mod:`medtwin.risk` from many patients' inputs (missing values ``NaN``): the same columns
    (:data:`INPUT_COLUMNS` plus any override) whatever the patients have."""
    names = sorted({*INPUT_COLUMNS, *(k for r in rows for k in r.values)})
    table: dict[str, np.ndarray] = {"patient_id": np.array([r.patient_id for r in rows], dtype=object)}
    for name in names:
        if name in ("sex", "race"):
            continue
        table[name] = np.array(
            [np.nan if (v := r.values.get(name)) is None or v.value is None else v.value for r in rows],
            dtype=np.float64,
        )
    table["sex"] = np.array(
        [
            None if (v := r.values.get("sex")) is None or v.value is None else ("male" if v.value == 1 else "female")
            for r in rows
        ],
        dtype=object,
    )
    if any("race" in r.values for r in rows):
        table["race"] = np.array([r.values["race"].value if "race" in r.values else None for r in rows], dtype=object)
    return table
