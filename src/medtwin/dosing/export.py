"""The dosing report as medtwin records: a MedicationRequest proposal and predicted-exposure Observations.

:func:`to_records` turns a :class:`~medtwin.dosing.report.DosingReport` into a MedicationRequest with
intent ``proposal`` (a second one, ``numberOfDoses`` 1, for a loading dose) and Observations of the
predicted AUC24, trough and peak at steady state, ``derived_from`` the measured levels, for FHIR
export.  The exposures are coded in medtwin's own code system (:data:`medtwin.codes.MEDTWIN`): no
LOINC code exists for a model-predicted exposure.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from medtwin import codes
from medtwin.dosing.report import METRIC_UNITS, DosingReport
from medtwin.records import Coding, MedicationRequest, Observation, Quantity

__all__ = ["to_records"]

_EXPOSURE_CODES = {
    "auc24_ss": codes.PREDICTED_AUC24,
    "trough_ss": codes.PREDICTED_TROUGH,
    "peak_ss": codes.PREDICTED_PEAK,
}


def to_records(report: DosingReport, *, authored: datetime | None = None) -> list[Any]:
    """The proposal as a MedicationRequest (intent ``proposal``) plus predicted-exposure Observations."""
    case = report.case
    now = authored or datetime.now(UTC)
    origin = case.origin
    rec = report.recommended
    med = Coding(
        system=case.model.medication.get("system", "http://snomed.info/sct"),
        code=case.model.medication.get("code", case.model.drug),
        display=case.model.medication.get("display", case.model.drug),
    )
    ld = report.loading_dose
    first_h = rec.start_h if ld is None else ld["maintenance_start_h"]
    start_dt = origin + timedelta(hours=first_h) if origin is not None else None
    request_id = f"{case.patient_id}-proposal-{int(now.timestamp())}"
    note = (
        f"medtwin dosing twin proposal from model {case.model.id} (doi:{case.model.doi}); "
        f"target {case.target.metric} {case.target.value:g} ({case.target.low:g}-"
        f"{case.target.high:g}); " + ("point target, no PTA" if math.isnan(rec.pta) else f"PTA {100 * rec.pta:.0f}%")
    )
    request = MedicationRequest(
        request_id=request_id,
        patient_id=case.patient_id,
        medication=med,
        intent="proposal",
        status="draft",
        authored=now,
        dose=Quantity(value=rec.amount_mg, unit="mg"),
        route=Coding(system="http://snomed.info/sct", code="47625008", display="Intravenous route"),
        interval_h=rec.interval_h,
        infusion_duration_h=rec.duration_h,
        rate=Quantity(value=rec.amount_mg / rec.duration_h, unit="mg/h"),
        start=start_dt,
        note=note,
    )
    level_ids = tuple(lv.observation_id or f"{case.patient_id}-level-{i}" for i, lv in enumerate(case.levels))
    effective = start_dt or now
    out: list[Any] = [request]
    if ld is not None:  # a single infusion before the maintenance regimen
        out.append(
            MedicationRequest(
                request_id=f"{request_id}-loading",
                patient_id=case.patient_id,
                medication=med,
                intent="proposal",
                status="draft",
                authored=now,
                dose=Quantity(value=ld["amount_mg"], unit="mg"),
                route=Coding(system="http://snomed.info/sct", code="47625008", display="Intravenous route"),
                infusion_duration_h=ld["duration_h"],
                rate=Quantity(value=ld["amount_mg"] / ld["duration_h"], unit="mg/h"),
                start=origin + timedelta(hours=ld["start_h"]) if origin is not None else None,
                number_of_doses=1,
                note=f"loading dose before the maintenance regimen of {request_id}; {note}",
            )
        )
    for key in ("auc24_ss", "trough_ss", "peak_ss"):
        v = rec.metrics[key]
        out.append(
            Observation(
                patient_id=case.patient_id,
                code=_EXPOSURE_CODES[key],
                effective=effective,
                value=Quantity(value=round(v["value"], 4), unit=METRIC_UNITS[key]),
                status="preliminary",
                category="laboratory",
                derived_from=level_ids,
                observation_id=f"{request_id}-{key.replace('_', '-')}",
            )
        )
    return out
