"""A patient's risk assessment from the record: inputs -> every equation -> explanations -> FHIR -> the store.

Results are stored as derived events (``kind="derived"``, code ``risk:<equation>``) whose data holds the
RiskAssessment resource, the risk and the inputs with their sources. The event id is derived from (patient,
equation, assessment time, inputs), so assessing the same patient at the same time from the same inputs again
stores nothing twice, while an assessment from changed inputs is stored beside the earlier one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from medtwin.interop.fhir.risk_assessment import risk_assessment
from medtwin.records import Event
from medtwin.risk import (
    EQUATIONS,
    Explanation,
    RiskResult,
    ScoreResult,
    WhatIf,
    bp_at_target,
    cohort_table,
    compute_all,
    explain,
    statin,
    stop_smoking,
)
from medtwin.store import Store
from medtwin.twin.risk_inputs import RULES, RecordInputs, assemble, assemble_cohort, inputs_table

__all__ = ["PatientRisk", "assess_patient", "cohort_risks", "what_ifs_for"]

_NAMESPACE = uuid.UUID("6f1d8f0e-7a51-4c1b-9d0b-3c0a2b6e1e19")
_OUTCOME_TEXT = {
    "pce": "first hard ASCVD event (coronary death, non-fatal MI, fatal or non-fatal stroke)",
    "qrisk3": "cardiovascular disease (coronary heart disease, stroke or TIA)",
    "findrisc": "type 2 diabetes",
    "cha2ds2-vasc": "stroke or systemic thromboembolism in atrial fibrillation",
    "has-bled": "major bleeding within 1 year on anticoagulation",
}
_PREVENT_OUTCOME = {
    "cvd": "total cardiovascular disease (ASCVD or heart failure)",
    "ascvd": "atherosclerotic cardiovascular disease",
    "hf": "heart failure",
}


def what_ifs_for(name: str, result: RiskResult, inputs: Mapping[str, Any], bp_target: float) -> tuple[WhatIf, ...]:
    """The clinician's what-ifs for one cardiovascular equation's result."""
    recompute = EQUATIONS[name].compute
    return (
        bp_at_target(result, bp_target),
        stop_smoking(result, inputs, lambda x: recompute(x)),  # type: ignore[arg-type,return-value]
        statin(result, inputs),
    )


@dataclass
class PatientRisk:
    """One patient's inputs, results and explanations at one time."""

    inputs: RecordInputs
    results: dict[str, RiskResult | ScoreResult]
    explanations: dict[str, Explanation]
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "patient_id": self.inputs.patient_id,
            "as_of": self.inputs.as_of.isoformat(),
            "inputs": {
                k: {
                    "value": v.value,
                    "source": v.source,
                    "time": None if v.time is None else v.time.isoformat(),
                    "reference": v.reference,
                }
                for k, v in sorted(self.inputs.values.items())
            },
            "unused": list(self.inputs.notes),
            "results": {k: e.to_dict() for k, e in self.explanations.items()},
        }

    def events(self) -> list[Event]:
        """One derived event per equation, holding its RiskAssessment."""
        out = []
        for name, resource in self.resources.items():
            e = self.explanations[name]
            value = e.risk if e.risk is not None else e.points
            message = f"{e.title}: " + (
                "not computed: " + "; ".join(e.reasons)
                if value is None
                else (f"{100 * e.risk:.1f} %" if e.risk is not None and e.points is None else f"{e.points:g} points")
            )
            out.append(
                Event(
                    kind="derived",
                    code=f"risk:{name}",
                    time=self.inputs.as_of,
                    message=message,
                    patient_id=self.inputs.patient_id,
                    source="medtwin.risk",
                    event_id=resource["id"],
                    data={"fhir": resource, "risk": e.risk, "points": e.points, "reasons": list(e.reasons)},
                )
            )
        return out


def _method_text(name: str, result: RiskResult | ScoreResult) -> str:
    eq = EQUATIONS[name]
    return f"{result.title}; {eq.citation}; doi:{eq.doi}"


def _with_window(reason: str) -> str:
    """Name the look-back window of a missing record value ("no eGFR" -> "no eGFR in the last 12 months")."""
    for rule in RULES.values():
        if reason.endswith(f": no {rule.label}"):
            return f"{reason} in the last {rule.months} months"
    return reason


def _build(inputs: RecordInputs, names: Sequence[str] | None, bp_target: float) -> PatientRisk:
    row = inputs.as_inputs()
    fingerprint = hashlib.sha256(repr(sorted((k, str(v[0])) for k, v in row.items())).encode()).hexdigest()[:16]
    results = compute_all(row, names)
    explanations: dict[str, Explanation] = {}
    resources: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        scenarios: tuple[WhatIf, ...] = ()
        if isinstance(result, RiskResult) and result.outcome in ("cvd", "ascvd", "hf"):
            scenarios = what_ifs_for(name, result, row, bp_target)
        e = explain(result, 0, scenarios)
        e = dataclasses.replace(e, reasons=tuple(_with_window(r) for r in e.reasons))
        explanations[name] = e
        outcome = _OUTCOME_TEXT.get(name) or _PREVENT_OUTCOME.get(getattr(result, "outcome", ""), name)
        horizon = (
            float(result.horizon_years)
            if isinstance(result, RiskResult)
            else (10.0 if name == "findrisc" else 1.0 if name == "has-bled" else None)
        )
        flagged = any(p.kind == "flagged" and p.mask[0] for p in result.problems)
        notes = [f"Compared with a {e.reference_text}: {100 * e.reference_risk:.1f} %"] if e.reference_risk else []
        notes += [str(line) if not np.isnan(line.risk) else f"{line.text}: {line.lp:+g} points" for line in e.lines]
        notes += list(e.reasons)
        mitigation = "; ".join(f"{d}: {100 * r:.1f} % ({a})" for d, r, a in e.what_ifs) or None
        resources[name] = risk_assessment(
            assessment_id=str(
                uuid.uuid5(_NAMESPACE, f"{inputs.patient_id}|{name}|{inputs.as_of.isoformat()}|{fingerprint}")
            ),
            patient_id=inputs.patient_id,
            occurrence=inputs.as_of,
            method_code=name,
            method_text=_method_text(name, result),
            outcome_text=outcome,
            horizon_years=horizon,
            probability=e.risk,
            points=e.points,
            band=e.band,
            basis=inputs.basis(),
            notes=notes,
            mitigation=mitigation,
            flagged=flagged,
        )
    return PatientRisk(inputs, results, explanations, resources)


def assess_patient(
    store: Store,
    patient_id: str,
    *,
    as_of: datetime | None = None,
    names: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    bp_target: float = 130.0,
    save: bool = False,
) -> PatientRisk | None:
    """Assess *patient_id* with every equation in *names* (default all); None for an unknown patient.

    With *save* the RiskAssessments are stored as derived events (idempotent per patient, equation and time).
    """
    inputs = assemble(store, patient_id, as_of or datetime.now(UTC), overrides)
    if inputs is None:
        return None
    result = _build(inputs, names, bp_target)
    if save:
        store.add_events(result.events())
    return result


def cohort_risks(
    store: Store,
    as_of: datetime,
    *,
    names: Sequence[str] | None = None,
    batch: int = 500,
    overrides: Mapping[str, Any] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Every patient of *store*, *batch* at a time: columns of inputs (``in_<name>``) and results.

    *on_batch(done, total)* is called after each batch (for a progress bar).
    """
    ids = store.patient_ids()
    for start in range(0, len(ids), batch):
        rows = assemble_cohort(store, ids[start : start + batch], as_of, overrides)
        table = inputs_table(rows)
        columns: dict[str, np.ndarray] = {"patient_id": table.pop("patient_id")}
        columns["as_of"] = np.full(len(rows), as_of.isoformat(), dtype=object)
        columns.update({f"in_{k}": v for k, v in table.items()})
        columns["unused_values"] = np.array(["; ".join(r.notes) for r in rows], dtype=object)
        columns.update(cohort_table(compute_all(table, names)))
        if on_batch is not None:
            on_batch(min(start + batch, len(ids)), len(ids))
        yield columns
