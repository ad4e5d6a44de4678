"""The drug component of a patient twin: a dosing twin (medtwin.dosing) kept in sync with the record.

It starts with the first administration of a drug that has a library model (vancomycin, gentamicin) and consumes
that drug's administrations, its levels, and the patient's weight, height, serum creatinine and Patient record
(:mod:`medtwin.dosing.record_case` says what is read and how). On each new level it

1. checks the level against the model's prediction before the level (the previous fit's Laplace posterior, or
   the population when it is the first level) with the model's residual error: outside the central 99 % of the
   predictive distribution it raises ``drug-level-implausible`` (a possibly mistimed sample or a dose charted at
   the wrong time): the level is still used, a person decides;
2. re-fits MAP on every level so far and proposes a regimen (:func:`medtwin.dosing.analyze_case`, seed 0, the
   same case ``medtwin dose --patient`` builds), stored as a MedicationRequest (intent ``proposal``, status
   ``draft``) with the predicted exposures, and a ``recommendation`` Event ``drug-proposal`` holding the report, for
   a pharmacist to review (acknowledge);
3. raises ``drug-exposure-off-target`` when the current regimen's predicted steady-state trough or AUC24 (or the
   target's metric) is outside the target.

Every output id derives from the level's observation id, so processing the same records again (a worker restarted
after a crash) stores nothing twice. The state is JSON (doses, levels, covariates, the last fit's etas).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from medtwin import codes
from medtwin.dosing.export import to_records
from medtwin.dosing.record_case import (
    CREATININE_CODES,
    DEFAULT_TARGETS,
    LEVEL_CODES,
    RecordedCourse,
    case_from_records,
    drug_of,
    recorded_course,
)
from medtwin.dosing.regimen import predict_concentrations
from medtwin.dosing.report import DosingReport, analyze_case
from medtwin.errors import MedtwinError
from medtwin.records import (
    Coding,
    Event,
    MedicationAdministration,
    MedicationRequest,
    Observation,
    Patient,
    Record,
)
from medtwin.store import codec
from medtwin.twin.component import ComponentSpec, Consumes, UnsupportedQuestionError

__all__ = ["DRUG_SPEC", "IMPLAUSIBLE_TAIL", "DrugComponent"]

IMPLAUSIBLE_TAIL = 0.005
"""A level below the 0.5th or above the 99.5th percentile of its predictive distribution is implausible."""
_PREDICTIVE_DRAWS = 4000
_SAMPLES = 1000  # SIR samples of the report (``medtwin dose`` default)

_COVARIATE_CODES = (codes.BODY_WEIGHT, codes.BODY_HEIGHT, codes.CREATININE_SERUM)
_COVARIATE_NAMES = {codes.BODY_WEIGHT.code: "weight_kg", codes.BODY_HEIGHT.code: "height_cm",
                    **dict.fromkeys(CREATININE_CODES, "scr")}  # fmt: skip


def _is_library_drug(record: Record) -> bool:
    return isinstance(record, MedicationAdministration | MedicationRequest) and drug_of(record.medication) is not None


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text)


class DrugComponent:
    """See the module docstring. *settings* may hold ``drug_targets`` (drug -> case-file target mapping) and
    ``drug_models`` (drug -> model id)."""

    name = "drug"

    def __init__(self, patient_id: str, settings: Mapping[str, Any] | None = None) -> None:
        self.patient_id = patient_id
        settings = settings or {}
        self.targets: Mapping[str, Mapping[str, Any]] = settings.get("drug_targets", DEFAULT_TARGETS)
        self.models: Mapping[str, str] = settings.get("drug_models", {})
        self.courses: dict[str, dict[str, Any]] = {}
        self.sex: str | None = None
        self.birth_date: str | None = None
        self.covariates: dict[str, dict[str, list[Any]]] = {"weight_kg": {}, "height_cm": {}, "scr": {}}
        self.last_report: dict[str, dict[str, Any]] = {}

    # -- observe ---------------------------------------------------------------------------------------------------
    def _course(self, drug: str) -> dict[str, Any]:
        return self.courses.setdefault(drug, {"doses": {}, "levels": {}, "fit": None})

    def observe(self, records: Sequence[Record]) -> list[Record]:
        """Take in doses, levels and covariates; on each new level re-fit and propose (module docstring)."""
        new_levels: list[tuple[str, str]] = []
        for r in records:
            if isinstance(r, Patient):
                self.sex = r.gender
                self.birth_date = None if r.birth_date is None else r.birth_date.isoformat()
            elif isinstance(r, MedicationAdministration):
                drug = drug_of(r.medication)
                if drug is None or r.dose is None:
                    continue
                self._course(drug)["doses"][r.administration_id] = _encode_adm(r)
            elif isinstance(r, Observation):
                self._observation(r, new_levels)
        out: list[Record] = []
        for drug, level_id in sorted(new_levels, key=lambda d: self.courses[d[0]]["levels"][d[1]]["time"]):
            out.extend(self._on_level(drug, level_id))
        return out

    def _observation(self, obs: Observation, new_levels: list[tuple[str, str]]) -> None:
        if obs.code.system != codes.LOINC or not hasattr(obs.value, "unit"):
            return
        entry = {"time": obs.effective.isoformat(), "status": obs.status, "body": _encode_obs(obs)}
        for drug, level_codes in LEVEL_CODES.items():
            if obs.code.code in level_codes:
                course = self._course(drug)
                if obs.observation_id not in course["levels"]:
                    new_levels.append((drug, obs.observation_id))
                course["levels"][obs.observation_id] = entry
                return
        name = _COVARIATE_NAMES.get(obs.code.code)
        if name is not None:
            self.covariates[name][obs.observation_id] = [entry["time"], entry["body"]]

    # -- the record as the dosing package reads it -------------------------------------------------------------------
    def recorded(self, drug: str) -> RecordedCourse:
        """The course of *drug* as :func:`medtwin.dosing.record_case.recorded_course` reads it from records."""
        course = self.courses[drug]
        administrations = [_decode_adm(self.patient_id, d) for d in course["doses"].values()]
        observations = [_decode_obs(self.patient_id, e["body"]) for e in course["levels"].values()]
        observations += [_decode_obs(self.patient_id, body) for kept in self.covariates.values()
                         for _, body in kept.values()]  # fmt: skip
        patient = Patient(
            patient_id=self.patient_id,
            gender=self.sex,  # type: ignore[arg-type]
            birth_date=None if self.birth_date is None else datetime.fromisoformat(self.birth_date).date(),
        )
        return recorded_course(drug, patient, administrations, observations)

    def report(self, drug: str, *, until: datetime | None = None, target: Mapping[str, Any] | None = None,
               regimen: Mapping[str, Any] | None = None) -> DosingReport:  # fmt: skip
        """The dosing report of *drug* on the record so far (or up to *until*)."""
        case = case_from_records(self.patient_id, self.recorded(drug), model=self.models.get(drug),
                                 target=target or self.targets.get(drug), regimen=regimen, until=until)  # fmt: skip
        return analyze_case(case, n_samples=_SAMPLES, seed=0)

    # -- on a new level -----------------------------------------------------------------------------------------------
    def _on_level(self, drug: str, level_id: str) -> list[Record]:
        course = self.courses[drug]
        level = course["levels"][level_id]
        at = _t(level["time"])
        out: list[Record] = []
        if level["status"] in ("entered-in-error", "cancelled"):
            return out
        try:
            implausible = self._implausible(drug, level_id, at)
            if implausible is not None:
                out.append(implausible)
            report = self.report(drug, until=at)
        except MedtwinError as exc:  # the record cannot make a case yet (a covariate missing): say what
            out.append(Event(kind="alert", code="drug-twin-incomplete", time=at, patient_id=self.patient_id,
                             severity="low", source=f"twin:{self.patient_id}/drug",
                             message=f"{drug} level {level_id} cannot be used by the dosing twin: {exc}",
                             data={"drug": drug, "level": level_id, "reason": str(exc)[:1000]},
                             event_id=f"{self.patient_id}-{drug}-incomplete-{level_id}"))  # fmt: skip
            return out
        if report.fit is not None:
            course["fit"] = {"eta": report.fit.eta.tolist(), "cov": np.asarray(report.fit.covariance).tolist(),
                             "levels": len(report.case.levels)}  # fmt: skip
        summary = report.to_dict()
        self.last_report[drug] = {"at": at.isoformat(), "level": level_id, "report": summary}
        proposal = to_records(report, authored=at)
        out.extend(proposal)
        request = next(r for r in proposal if isinstance(r, MedicationRequest))
        rec = report.recommended
        out.append(Event(kind="recommendation", code="drug-proposal", time=at, patient_id=self.patient_id,
                         severity="info", source=f"twin:{self.patient_id}/drug",
                         message=f"{drug}: proposed {rec.amount_mg:g} mg every {rec.interval_h:g} h over "
                                 f"{rec.duration_h:g} h after level {level_id}; pharmacist review",
                         data={"drug": drug, "request_id": request.request_id, "level": level_id,
                               "report": summary},
                         event_id=f"{self.patient_id}-{drug}-proposal-{level_id}"))  # fmt: skip
        off = self._off_target(drug, report, level_id, at)
        if off is not None:
            out.append(off)
        return out

    def _implausible(self, drug: str, level_id: str, at: datetime) -> Event | None:
        """The alert when the level is outside the central 99 % of its prediction before it (module docstring)."""
        course = self.courses[drug]
        level = course["levels"][level_id]
        earlier = datetime.fromisoformat(level["time"]) - timedelta(microseconds=1)
        case = case_from_records(self.patient_id, self.recorded(drug), model=self.models.get(drug),
                                 target=self.targets.get(drug), until=earlier)  # fmt: skip
        model = case.model
        k = len(model.eta_names)
        if k == 0 or not case.doses:
            return None
        rng = np.random.default_rng(_seed(level_id))
        fit = course.get("fit")
        if fit is not None and fit["levels"] == len(case.levels) and len(fit["eta"]) == k:
            etas = rng.multivariate_normal(np.asarray(fit["eta"]), np.asarray(fit["cov"]), size=_PREDICTIVE_DRAWS)
            basis = f"the fit on the {fit['levels']} earlier level(s)"
        else:
            etas = rng.multivariate_normal(np.zeros(k), model.omega, size=_PREDICTIVE_DRAWS)
            basis = "the population model (no earlier level)"
        assert case.origin is not None
        t_h = (at - case.origin).total_seconds() / 3600.0
        if t_h <= 0:
            return None
        pred = predict_concentrations(model, case.covariates, list(case.doses), [t_h], etas)[:, 0]
        observed = float(_decode_obs(self.patient_id, level["body"]).value.value)  # type: ignore[union-attr]
        simulated = pred + model.error.sd(pred) * rng.standard_normal(pred.shape)
        below = float(np.mean(simulated < observed))
        if IMPLAUSIBLE_TAIL < below < 1 - IMPLAUSIBLE_TAIL:
            return None
        lo, hi = np.percentile(simulated, [100 * IMPLAUSIBLE_TAIL, 100 * (1 - IMPLAUSIBLE_TAIL)])
        return Event(kind="alert", code="drug-level-implausible", time=at, patient_id=self.patient_id,
                     severity="medium", source=f"twin:{self.patient_id}/drug",
                     message=f"{drug} level {observed:.3g} mg/L at {at.isoformat()} is outside the model's 99 % "
                             f"prediction {lo:.3g}-{hi:.3g} mg/L from {basis}: check the sample and dose times "
                             "(mistimed sample?)",
                     data={"drug": drug, "level": level_id, "observed_mg_l": observed, "predicted_lo_mg_l": float(lo),
                           "predicted_hi_mg_l": float(hi), "fraction_below": below, "basis": basis},
                     event_id=f"{self.patient_id}-{drug}-implausible-{level_id}")  # fmt: skip

    def _off_target(self, drug: str, report: DosingReport, level_id: str, at: datetime) -> Event | None:
        current = report.current
        if current is None:
            return None
        target = report.case.target
        checks = [(target.metric, target.low, target.high), *((c.metric, c.low, c.high) for c in target.constraints)]
        misses = []
        for metric, low, high in checks:
            value = current["metrics"].get(metric, {}).get("value")
            if value is not None and not low <= value <= high:
                misses.append(f"{metric} {value:.4g} outside {low:g}-{high:g}" if math.isfinite(high)
                              else f"{metric} {value:.4g} below {low:g}")  # fmt: skip
        if not misses:
            return None
        return Event(kind="alert", code="drug-exposure-off-target", time=at, patient_id=self.patient_id,
                     severity="medium", source=f"twin:{self.patient_id}/drug",
                     message=f"{drug}: the current regimen ({current['amount_mg']:g} mg every "
                             f"{current['interval_h']:g} h) is predicted off target: " + "; ".join(misses),
                     data={"drug": drug, "level": level_id, "misses": misses,
                           "current": current["metrics"]},
                     event_id=f"{self.patient_id}-{drug}-off-target-{level_id}")  # fmt: skip

    # -- the rest of the contract -------------------------------------------------------------------------------------
    def drugs(self) -> list[str]:
        """The drugs this component follows."""
        return sorted(self.courses)

    def summary(self) -> dict[str, Any]:
        """Per drug: doses and levels seen, and the last proposal (what ``medtwin twin show`` prints)."""
        out: dict[str, Any] = {}
        for drug in self.drugs():
            course = self.courses[drug]
            last = self.last_report.get(drug)
            rec = None if last is None else last["report"]["recommended"]
            out[drug] = {
                "doses": len(course["doses"]), "levels": len(course["levels"]),
                "last_proposal": None if rec is None or last is None else {
                    "after_level": last["level"], "amount_mg": rec["amount_mg"], "interval_h": rec["interval_h"],
                    "duration_h": rec["duration_h"], "pta": rec.get("pta")},
            }  # fmt: skip
        return out

    def forecast(self, horizon: timedelta) -> dict[str, Any] | None:
        """Per drug, the current regimen's predicted steady-state exposure from the last report (None: no report)."""
        if not self.last_report:
            return None
        return {drug: {"at": r["at"], "current_regimen": r["report"].get("current_regimen")}
                for drug, r in self.last_report.items()}  # fmt: skip

    def what_if(self, scenario: Mapping[str, Any]) -> dict[str, Any]:
        """The report for another target or regimen options: ``{"drug", "target", "regimen"}`` (case-file forms)."""
        drug = str(scenario.get("drug") or (self.drugs()[0] if self.courses else ""))
        if drug not in self.courses:
            raise UnsupportedQuestionError(f"patient {self.patient_id} has no {drug or 'drug'} course in the record")
        report = self.report(drug, target=scenario.get("target"), regimen=scenario.get("regimen"))
        return report.to_dict()

    def recommend(self, goal: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The last proposal per drug (with its report), or a new one for *goal* (``{"drug", "target"}``)."""
        if goal:
            return self.what_if(goal)
        return dict(self.last_report) or None

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state (the last reports are kept too, for ``medtwin twin show``)."""
        return {"courses": self.courses, "sex": self.sex, "birth_date": self.birth_date,
                "covariates": self.covariates, "last_report": self.last_report}  # fmt: skip

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`snapshot` state."""
        self.courses = dict(state.get("courses", {}))
        self.sex = state.get("sex")
        self.birth_date = state.get("birth_date")
        self.covariates = {k: dict(v) for k, v in state.get("covariates", self.covariates).items()}
        self.last_report = dict(state.get("last_report", {}))


def _seed(text: str) -> int:
    """A seed from *text* that is the same in every process (``hash`` of a str is not)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _encode_adm(r: MedicationAdministration) -> dict[str, Any]:
    return {"body": codec.encode(r)}


def _decode_adm(patient_id: str, d: Mapping[str, Any]) -> MedicationAdministration:
    return codec.decode(MedicationAdministration, d["body"])


def _encode_obs(o: Observation) -> str:
    return codec.encode(o)


def _decode_obs(patient_id: str, body: str) -> Observation:
    return codec.decode(Observation, body)


DRUG_SPEC = ComponentSpec(
    name="drug",
    consumes=(
        Consumes("MedicationAdministration", test=_is_library_drug, description="drugs with a library model"),
        Consumes.observations(
            [Coding(system=codes.LOINC, code=c) for codes_ in LEVEL_CODES.values() for c in sorted(codes_)],
            "drug levels",
        ),
        Consumes.observations(
            [*_COVARIATE_CODES, Coding(system=codes.LOINC, code="38483-4")], "weight, height, creatinine"
        ),
        Consumes("Patient", description="sex and birth date"),
    ),
    factory=lambda patient_id, settings: DrugComponent(patient_id, settings),
    starts_on=_is_library_drug,
    summary="dosing twin: MAP re-fit and a regimen proposal on each new level (vancomycin, gentamicin)",
)
