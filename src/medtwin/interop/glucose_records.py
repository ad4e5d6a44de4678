"""The glucose twin's data from stored records: CGM Observations, insulin MedicationAdministrations, carbohydrate.

What is read (records of one patient, ``since <= time < until``):

- CGM: Observations coded LOINC 99504-3 "Glucose [Mass/volume] in Interstitial fluid" (codes.GLUCOSE_INTERSTITIAL)
  with a Quantity in any glucose unit (mg/dL, mmol/L: converted by ``codes.convert``). Finger-stick blood glucose
  (2339-0) is not CGM and is not read.
- Carbohydrate: Observations coded LOINC 9059-7 "Carbohydrate intake Estimated", Quantity in g.
- Insulin: MedicationAdministrations whose medication is insulin: an ATC code under A10A (Insulins and analogues,
  system http://www.whocc.no/atc) or a coding whose display names insulin. A ``rate`` (U/h) is a basal rate from
  ``start`` to ``end`` (back to the profile's rate, or 0, after it); a ``dose`` (U) is a bolus at ``start``, except
  long-acting insulin (ATC A10AE) whose dose is spread as a basal rate of dose / 24 U/h over 24 h.
- Body weight: the latest Observation LOINC 29463-7 (kg) when not given.

Records with status ``entered-in-error``/``cancelled`` (and administrations ``not-done``/``entered-in-error``) are
skipped; a record whose value or unit cannot be used is kept in ``TherapyData.skipped`` with its id and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from medtwin import codes
from medtwin.errors import UnitError
from medtwin.glucose.therapy_data import TherapyData, TherapyDataBuilder
from medtwin.records import Coding, MedicationAdministration, Observation, Quantity
from medtwin.store import Store

__all__ = [
    "ATC",
    "CARBOHYDRATE_INTAKE",
    "is_insulin",
    "load_therapy_data",
    "therapy_data_from_records",
]

ATC = "http://www.whocc.no/atc"
CARBOHYDRATE_INTAKE = codes.loinc("9059-7", "Carbohydrate intake Estimated")
_RETRACTED = {"entered-in-error", "cancelled", "not-done"}


def is_insulin(medication: Coding) -> bool:
    """Whether *medication* is an insulin (ATC A10A*, or a display naming insulin)."""
    if medication.system == ATC and medication.code.upper().startswith("A10A"):
        return True
    return "insulin" in (medication.display or "").lower()


def _long_acting(medication: Coding) -> bool:
    return medication.system == ATC and medication.code.upper().startswith("A10AE")


def _quantity(value: object, unit: str, what: str) -> float:
    if not isinstance(value, Quantity):
        raise UnitError(f"{what}: no numeric quantity")
    if unit == "U":
        if value.unit not in ("U", "[iU]", "[IU]"):
            raise UnitError(f"{what}: unit {value.unit!r} is not insulin units (U)")
        return value.value
    if unit == "U/h":
        if value.unit not in ("U/h", "[iU]/h", "[IU]/h"):
            raise UnitError(f"{what}: unit {value.unit!r} is not a basal rate (U/h)")
        return value.value
    return codes.convert(value.value, value.unit, unit, analyte="glucose" if unit == "mg/dL" else None)


def therapy_data_from_records(
    observations: Sequence[Observation],
    administrations: Sequence[MedicationAdministration],
    *,
    body_weight_kg: float | None = None,
    source: str = "records",
) -> TherapyData:
    """TherapyData from records (see the module docstring); other Observations are ignored."""
    b = TherapyDataBuilder(source)
    weight: tuple[datetime, float] | None = None
    for obs in observations:
        where = f"Observation {obs.observation_id}"
        if obs.status in _RETRACTED:
            b.skip(where, f"status {obs.status}")
            continue
        code = codes.normalise_to_loinc(obs.code)
        try:
            if code.same_concept(codes.GLUCOSE_INTERSTITIAL):
                b.add_cgm(obs.effective, _quantity(obs.value, "mg/dL", where), where)
            elif code.same_concept(CARBOHYDRATE_INTAKE):
                b.add_carbs(obs.effective, _quantity(obs.value, "g", where), where)
            elif code.same_concept(codes.BODY_WEIGHT):
                kg = _quantity(obs.value, "kg", where)
                if weight is None or obs.effective > weight[0]:
                    weight = (obs.effective, kg)
        except UnitError as exc:
            b.skip(where, str(exc))
    for adm in administrations:
        where = f"MedicationAdministration {adm.administration_id}"
        if not is_insulin(adm.medication):
            continue
        if adm.status in _RETRACTED:
            b.skip(where, f"status {adm.status}")
            continue
        try:
            if adm.rate is not None:
                b.add_basal(adm.start, _quantity(adm.rate, "U/h", where), where)
                if adm.end is not None:
                    b.add_basal(adm.end, 0.0, where + " (end)")
            elif _long_acting(adm.medication):
                dose = _quantity(adm.dose, "U", where)
                b.add_basal(adm.start, dose / 24.0, where)
                b.add_basal(adm.start + timedelta(hours=24), 0.0, where + " (end)")
            else:
                b.add_bolus(adm.start, _quantity(adm.dose, "U", where), where)
        except UnitError as exc:
            b.skip(where, str(exc))
    if body_weight_kg is None and weight is not None:
        body_weight_kg = weight[1]
    return b.build(body_weight_kg)


def load_therapy_data(
    store: Store,
    patient_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    body_weight_kg: float | None = None,
) -> TherapyData:
    """The twin's data of *patient_id* from *store* (see the module docstring)."""
    observations: list[Observation] = []
    for code in (codes.GLUCOSE_INTERSTITIAL, CARBOHYDRATE_INTAKE):
        observations += store.observations(patient_id, code, since=since, until=until)
    observations += store.observations(patient_id, codes.BODY_WEIGHT, until=until)
    administrations = [
        a for a in store.medication_administrations(patient_id)
        if (since is None or a.start >= since) and (until is None or a.start < until)
    ]  # fmt: skip
    return therapy_data_from_records(
        observations, administrations, body_weight_kg=body_weight_kg, source=f"store patient {patient_id}"
    )
