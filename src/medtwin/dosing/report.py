"""The dosing twin's analysis of one case and the report a pharmacist reads (text, JSON, records).

:func:`analyze_case` fits the patient (MAP + Laplace + SIR; without levels the prior is used),
predicts exposure of the current regimen, proposes one regimen per candidate interval (dose rounded
to the available strength, infusion no faster than the maximum rate), computes the probability of
target attainment (PTA) over the posterior samples, recommends one (:func:`choose_recommendation`)
and optionally a loading dose.  Rounding to the strength can leave a candidate's MAP prediction
outside the acceptable range: such a candidate is marked ``in_target: false`` in the JSON and
"outside target" in the text, and is never recommended when an in-range candidate exists.  Among
the (in-range) candidates whose PTA is within 5 percentage points of the best PTA (differences
that small are within the sampling noise of the posterior samples), the one whose MAP prediction
is closest to the middle of the acceptable range is recommended (relative distance rounded to
0.1 %), then the longer interval (fewer administrations).  The choice is deterministic for a
given seed.  :meth:`DosingReport.to_dict` is the JSON
form, :meth:`to_text` the text form; :func:`to_records` gives medtwin records (a
MedicationRequest with intent ``proposal`` and Observations of predicted exposure,
``derived_from`` the measured levels) for FHIR export, coded in medtwin's own code system
(:data:`medtwin.codes.MEDTWIN`: no LOINC code exists for a model-predicted exposure).

A combined target (``target.also``) counts a posterior sample as attaining the target only when
the main metric is in range and every constraint holds; the text report lists the criteria.
Values that do not exist (a threshold never reached within the interval) are ``inf`` in the
arrays, printed as ``inf`` in the text and written as ``null`` in the JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from medtwin.dosing.case import PatientCase, TargetSpec
from medtwin.dosing.covariates import CovariateSeries
from medtwin.dosing.estimation import MapResult, map_estimate, sir_sample
from medtwin.dosing.optimize import (
    STEADY_STATE_METRICS,
    Target,
    dose_for_target,
    maintenance_doses,
    round_dose,
    steady_state_metrics,
)
from medtwin.dosing.regimen import (
    Dose,
    covariates_at,
    predict_auc,
    predict_concentrations,
    predict_system,
)
from medtwin.errors import ValidationError

__all__ = ["METRIC_UNITS", "PTA_TOLERANCE", "DosingReport", "Proposal", "analyze_case", "choose_recommendation"]

FloatArray = npt.NDArray[np.float64]
#: PTA differences up to this (a fraction, 0.05 = 5 percentage points) count as sampling noise.
PTA_TOLERANCE = 0.05
#: The unit of each target metric.
METRIC_UNITS = {
    "auc24_ss": "mg.h/L",
    "trough_ss": "mg/L",
    "peak_ss": "mg/L",
    "auc": "mg.h/L",
    "concentration": "mg/L",
    "time_to_threshold_ss": "h",
}
_METRIC_LABELS = {
    "auc24_ss": "AUC24 at steady state",
    "trough_ss": "trough at steady state",
    "peak_ss": "peak at steady state",
    "auc": "AUC over the target window",
    "concentration": "concentration at the target time",
    "time_to_threshold_ss": "time from dose start to the threshold at steady state",
}


def _interval(values: FloatArray, value: float) -> dict[str, float]:
    if not values.size:
        return {"value": float(value), "p05": math.nan, "p95": math.nan}
    # "nearest" keeps an inf (threshold never reached) from turning into nan by interpolation
    if np.all(np.isfinite(values)):
        lo, hi = np.quantile(values, [0.05, 0.95])
    else:
        lo, hi = np.quantile(values, [0.05, 0.95], method="nearest")
    return {"value": float(value), "p05": float(lo), "p95": float(hi)}


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats by None so that the JSON is standard (no Infinity/NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _attained(case: PatientCase, values: dict[str, FloatArray]) -> npt.NDArray[np.bool_]:
    """Samples that meet the main target range and every constraint of a combined target."""
    t = case.target
    ok = (values[t.metric] >= t.low) & (values[t.metric] <= t.high)
    for c in t.constraints:
        ok &= (values[c.metric] >= c.low) & (values[c.metric] <= c.high)
    return np.asarray(ok, dtype=np.bool_)


def _in_target(target: TargetSpec, values: dict[str, float]) -> bool:
    """Whether the MAP prediction meets the main range and every constraint (a point target has no range to
    miss: only its constraints count)."""
    ok = target.is_point or target.low <= values[target.metric] <= target.high
    return ok and all(c.low <= values[c.metric] <= c.high for c in target.constraints)


def _pta_text(p: Proposal) -> str:
    return "PTA n/a" if math.isnan(p.pta) else f"PTA {100 * p.pta:.0f}%"


@dataclass(frozen=True, slots=True)
class Proposal:
    """A candidate maintenance regimen with its predicted exposure and PTA.

    *in_target* is False when the MAP prediction of the rounded regimen misses the acceptable
    range (or a constraint of a combined target).  *pta* is NaN for a point target (a value
    without a range: the probability of hitting one value exactly is not a useful number).
    """

    start_h: float
    amount_mg: float
    exact_amount_mg: float
    interval_h: float
    duration_h: float
    n_doses: int
    metrics: dict[str, dict[str, float]]
    pta: float
    in_target: bool = True

    def doses(self, n_doses: int | None = None) -> list[Dose]:
        """The regimen as dose records (*n_doses* overrides the proposal's count)."""
        return maintenance_doses(
            start_h=self.start_h,
            amount_mg=self.amount_mg,
            interval_h=self.interval_h,
            n_doses=n_doses or self.n_doses,
            duration_h=self.duration_h,
        )


@dataclass(frozen=True, slots=True)
class DosingReport:
    """Result of :func:`analyze_case`."""

    case: PatientCase
    fit: MapResult | None
    samples: FloatArray
    ess: float | None
    parameters: dict[str, dict[str, float]]
    level_fit: list[dict[str, float]]
    current: dict[str, Any] | None
    proposals: list[Proposal]
    recommended: Proposal
    loading_dose: dict[str, float] | None
    band: dict[str, list[float]]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable report."""
        m = self.case.model
        t = self.case.target
        out: dict[str, Any] = {
            "patient_id": self.case.patient_id,
            "model": {
                "id": m.id,
                "title": m.title,
                "citation": m.citation,
                "doi": m.doi,
                "erratum": m.erratum,
                "error_model": m.error.kind,
                "omega_convention": m.omega_convention,
                "validity_source": m.validity_source,
                "unverified": list(m.unverified),
            },
            "units": {"amount": "mg", "time": "h", "concentration": "mg/L", "auc": "mg.h/L"},
            "origin": self.case.origin.isoformat() if self.case.origin else None,
            "covariates": {
                k: {"times_h": list(v.times_h), "values": list(v.values), "rule": v.interpolation}
                if isinstance(v, CovariateSeries)
                else v
                for k, v in self.case.covariates.items()
            },
            "covariate_units": {spec.name: spec.unit for spec in m.covariates},
            "target": {
                "metric": t.metric,
                "value": t.value,
                "low": t.low,
                "high": t.high,
                "start_h": t.start_h,
                "end_h": t.end_h,
                "time_h": t.time_h,
                "threshold_mg_l": t.threshold_mg_l,
                "also": [{"metric": c.metric, "low": c.low, "high": c.high} for c in t.constraints],
            },
            "estimation": None
            if self.fit is None
            else {
                "method": "MAP (posologyr objective), Laplace covariance, SIR samples",
                "eta": dict(zip(m.eta_names, self.fit.eta.tolist(), strict=True)),
                "ofv": self.fit.ofv,
                "converged": self.fit.converged,
                "sir_effective_sample_size": self.ess,
                "n_samples": int(self.samples.shape[0]),
            },
            "parameters": self.parameters,
            "levels": self.level_fit,
            "current_regimen": self.current,
            "proposals": [_proposal_dict(p) for p in self.proposals],
            "recommended": {
                "maintenance_start_h": self.recommended.start_h
                if self.loading_dose is None
                else self.loading_dose["maintenance_start_h"],
                **_proposal_dict(self.recommended),
            },
            "loading_dose": self.loading_dose,
            "warnings": self.warnings,
            "notes": list(self.case.notes),
        }
        return dict(_json_safe(out))

    def to_text(self) -> str:
        """The report as plain text for a pharmacist."""
        d = self.to_dict()
        m = self.case.model
        t = self.case.target
        unit = METRIC_UNITS[t.metric]
        units = {spec.name: spec.unit for spec in m.covariates}
        lines = [
            f"medtwin dosing report - patient {self.case.patient_id}",
            f"Model: {m.title} ({m.id})",
            f"  {m.citation} doi:{m.doi}",
            f"  Erratum/version: {m.erratum}",
            f"  Error model: {m.error.kind}; Omega: {m.omega_convention}",
            f"  Validity ranges: {m.validity_source or 'not stated'}",
            *(f"  Unverified: {u}" for u in m.unverified),
            "Covariates: "
            + ", ".join(
                (f"{k}={v:.4g}" + (f" {units[k]}" if units.get(k, "1") != "1" else ""))
                if not isinstance(v, CovariateSeries)
                else f"{k}=time-varying (see notes)"
                for k, v in self.case.covariates.items()
            ),
            f"Target: {_METRIC_LABELS[t.metric]} {t.value:g} {unit} "
            + ("(a point target: no acceptable range given)" if t.is_point else f"(acceptable {t.low:g}-{t.high:g})")
            + (
                f", threshold {t.threshold_mg_l:g} mg/L (inf = not reached in the interval)" if t.threshold_mg_l else ""
            ),
        ]
        if t.constraints:
            lines.append("  and also: " + "; ".join(c.describe() for c in t.constraints) + " (all must hold for PTA)")
        if self.warnings:
            lines.append("WARNINGS:")
            lines += [f"  ! {w}" for w in self.warnings]
        level_lines = [
            f"  level t={lv['time_h']:g} h: observed {lv['observed_mg_l']:.3g}, "
            f"predicted {lv['predicted_mg_l']:.3g} mg/L"
            for lv in self.level_fit
        ]
        if self.fit is not None:
            lines.append(f"Bayesian fit (MAP, OFV {self.fit.ofv:.3f}; SIR ESS {self.ess:.0f}):")
            lines += level_lines
        elif self.level_fit:
            lines.append("Levels (not fitted: the model has no random effects to individualise):")
            lines += level_lines
        else:
            lines.append("No levels: a priori (population) prediction.")
        lines.append(
            "Individual parameters (MAP, 90% interval):"
            if self.fit is not None
            else "Parameters (typical patient with these covariates; 90% range of the population):"
        )
        lines += _parameter_lines(self.parameters)
        if self.current is not None:
            c = self.current
            lines.append(f"Current regimen: {c['amount_mg']:g} mg q{c['interval_h']:g}h over {c['duration_h']:g} h ->")
            lines += [
                f"  {_METRIC_LABELS[k]}: {v['value']:.4g} {METRIC_UNITS[k]} ({v['p05']:.4g} - {v['p95']:.4g})"
                for k, v in c["metrics"].items()
            ]
        if t.is_point:
            lines.append(
                "Candidate regimens (MAP prediction, 90% interval, distance from the target value; * = recommended: "
                "closest to the value). A point target has no acceptable range, so no PTA: give low and high "
                "(e.g. --target trough_ss=15-20) for the probability of target attainment."
            )
        else:
            lines.append(
                "Candidate regimens (MAP prediction, 90% interval, PTA; * = recommended: in target, "
                f"PTA within {100 * PTA_TOLERANCE:g} points of the best, closest to the middle of the range):"
            )
        for p in self.proposals:
            mark = "*" if p is self.recommended else " "
            main = p.metrics[t.metric]
            if t.is_point:
                judged = f"{100 * (main['value'] - t.value) / t.value:+.1f}% from {t.value:g} {unit}"
            else:
                judged = _pta_text(p)
            lines.append(
                f" {mark} {p.amount_mg:g} mg q{p.interval_h:g}h over {p.duration_h:g} h "
                f"from t={p.start_h:g} h: {main['value']:.4g} {unit} "
                f"({main['p05']:.4g} - {main['p95']:.4g}), {judged}" + ("" if p.in_target else " [outside target]")
            )
        r = self.recommended
        first = (
            f"first dose at t={r.start_h:g} h"
            if self.loading_dose is None
            else f"first maintenance dose at t={self.loading_dose['maintenance_start_h']:g} h, after the loading dose"
        )
        lines.append(
            f"PROPOSAL: {r.amount_mg:g} mg every {r.interval_h:g} h, infused over "
            f"{r.duration_h:g} h, {first} (exact {r.exact_amount_mg:.4g} mg before rounding)."
        )
        if self.loading_dose is not None:
            ld = self.loading_dose
            lines.append(
                f"Loading dose: {ld['amount_mg']:g} mg over {ld['duration_h']:g} h at "
                f"t={ld['start_h']:g} h, then maintenance from t={ld['maintenance_start_h']:g} h."
            )
        if d["notes"]:
            lines.append("Notes:")
            lines += [f"  - {n}" for n in d["notes"]]
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Write a PNG: prediction band, observed levels and the proposed regimen."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        t = np.asarray(self.band["time_h"])
        ax.fill_between(t, self.band["p05"], self.band["p95"], alpha=0.3, label="90% prediction band")
        ax.plot(t, self.band["median"], label="median prediction")
        ax.plot(t, self.band["map"], "--", label="MAP prediction")
        if self.case.levels:
            ax.plot(
                [lv.time_h for lv in self.case.levels],
                [lv.value_mg_l for lv in self.case.levels],
                "ko",
                label="measured levels",
            )
        ax.axvline(self.recommended.start_h, color="grey", lw=0.8, ls=":", label="proposed regimen starts")
        ax.set_xlabel("time (h)")
        ax.set_ylabel(f"{self.case.model.drug} concentration (mg/L)")
        ax.set_title(
            f"{self.case.patient_id}: {self.recommended.amount_mg:g} mg "
            f"q{self.recommended.interval_h:g}h ({self.case.model.id})"
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _parameter_lines(parameters: dict[str, dict[str, Any]]) -> list[str]:
    """``CL = 3.1 L/h (2.2 - 4.4)``; a parameter without a random effect says so instead of a zero-width interval."""
    lines = []
    for name, v in parameters.items():
        unit = f" {v['unit']}" if v.get("unit") not in (None, "1") else ""
        if v.get("random_effect", True):
            lines.append(f"  {name:>6} = {v['value']:.4g}{unit} ({v['p05']:.4g} - {v['p95']:.4g})")
        else:
            lines.append(
                f"  {name:>6} = {v['value']:.4g}{unit} (no random effect in the model: the same for every patient "
                "with these covariates, so no interval)"
            )
    return lines


def _proposal_dict(p: Proposal) -> dict[str, Any]:
    return {
        "in_target": p.in_target,
        "start_h": p.start_h,
        "amount_mg": p.amount_mg,
        "exact_amount_mg": p.exact_amount_mg,
        "interval_h": p.interval_h,
        "duration_h": p.duration_h,
        "n_doses": p.n_doses,
        "metrics": p.metrics,
        "pta": p.pta,
    }


def choose_recommendation(proposals: Sequence[Proposal], target: TargetSpec) -> Proposal:
    """The candidate to recommend (rule in the module docstring).

    Candidates in target (MAP prediction in range) are preferred to all others; among them, those
    with a PTA within :data:`PTA_TOLERANCE` of the best are ranked by the relative distance of the
    MAP prediction to the middle of the acceptable range (the target value when the range is
    open), then by the longer interval.  Input order does not matter.
    """
    if not proposals:
        raise ValidationError("choose_recommendation: no candidate regimen")
    pool = [p for p in proposals if p.in_target] or list(proposals)
    if target.is_point:  # no PTA: the closest to the value wins
        close = pool
    else:
        best_pta = max(p.pta for p in pool)
        close = [p for p in pool if p.pta >= best_pta - PTA_TOLERANCE - 1e-12]
    mid = (target.low + target.high) / 2 if math.isfinite(target.high) else target.value
    scale = abs(mid) if mid != 0 else 1.0

    def key(p: Proposal) -> tuple[float, float, float]:
        distance = round(abs(p.metrics[target.metric]["value"] - mid) / scale, 3)
        return (distance, -p.interval_h, -p.pta)

    return min(close, key=key)


def _next_dose_time(case: PatientCase, notes: list[str]) -> float:
    if case.regimen.start_h is not None:
        return case.regimen.start_h
    if not case.doses:
        return 0.0
    last = max(case.doses, key=lambda d: d.times_h[-1])
    times = sorted(t for d in case.doses for t in d.times_h)
    gap = last.interval_h if last.interval_h > 0 else (times[-1] - times[-2] if len(times) > 1 else 24.0)
    start = times[-1] + gap
    latest_level = max((lv.time_h for lv in case.levels), default=-math.inf)
    start = max(start, latest_level)
    notes.append(f"next dose assumed at t={start:g} h (set regimen.start_h to change)")
    return start


def _metrics(
    case: PatientCase,
    given: list[Dose],
    amount: float,
    interval: float,
    duration: float,
    start: float,
    n_doses: int,
    etas: FloatArray,
) -> dict[str, FloatArray]:
    """Target-relevant metrics for a regimen over a batch of etas."""
    m, cov, t = case.model, case.covariates, case.target
    wanted = ("auc24_ss", "trough_ss", "peak_ss") + (("time_to_threshold_ss",) if t.threshold_mg_l else ())
    out = steady_state_metrics(
        m,
        covariates_at(cov, start),  # steady state of the patient as at the proposed start
        amount_mg=amount,
        interval_h=interval,
        duration_h=duration,
        etas=etas,
        metrics=wanted,
        threshold_mg_l=t.threshold_mg_l,
    )
    doses = [
        *given,
        *maintenance_doses(start_h=start, amount_mg=amount, interval_h=interval, n_doses=n_doses, duration_h=duration),
    ]
    if t.metric == "auc" and t.start_h is not None and t.end_h is not None:
        out["auc"] = predict_auc(m, cov, doses, [t.start_h], [t.end_h], etas)[:, 0]
    elif t.metric == "concentration" and t.time_h is not None:
        out["concentration"] = predict_concentrations(m, cov, doses, [t.time_h], etas)[:, 0]
    return out


def analyze_case(case: PatientCase, *, n_samples: int = 1000, seed: int = 0) -> DosingReport:
    """Fit, forecast and propose a regimen for *case* (see the module docstring)."""
    model, cov, target, opts = case.model, case.covariates, case.target, case.regimen
    warnings = list(case.warnings)
    notes = list(case.notes)
    k = len(model.eta_names)
    given = list(case.doses)
    rng = np.random.default_rng(seed)
    fit: MapResult | None = None
    ess: float | None = None
    if case.levels and k == 0:
        warnings.append(
            f"{model.id} has no random effects (etas = []): measured levels cannot individualise it; "
            "the prediction is the population one for these covariates"
        )
    if case.levels and k > 0:
        fit = map_estimate(model, cov, given, list(case.levels), seed=seed)
        warnings += list(fit.warnings)
        sir = sir_sample(
            model, cov, given, list(case.levels), fit, n_proposals=4 * n_samples, n_samples=n_samples, seed=seed
        )
        ess = sir.effective_sample_size
        if ess < 0.1 * n_samples:
            warnings.append(f"SIR effective sample size is low ({ess:.0f}): intervals are rough")
        eta_hat, samples = fit.eta, sir.samples
    else:
        eta_hat = np.zeros(k)
        # with no random effects every sample is the typical patient (multivariate_normal refuses a 0x0 Omega)
        samples = rng.multivariate_normal(np.zeros(k), model.omega, size=n_samples) if k else np.zeros((n_samples, 0))
    e1 = eta_hat[None, :]
    start = _next_dose_time(case, notes)
    cov_now = covariates_at(cov, start)  # parameters are reported at the proposed start
    sys_map = predict_system(model, cov_now, e1)
    sys_s = predict_system(model, cov_now, samples)
    units = model.parameter_units
    parameters: dict[str, dict[str, Any]] = {}
    for name in sys_map.parameters:
        spread = sys_s.parameters[name]
        parameters[name] = {
            **_interval(spread, float(sys_map.parameters[name][0])),
            "unit": units.get(name),
            "random_effect": bool(spread.size and np.ptp(spread) > 1e-12 * max(1.0, float(np.max(np.abs(spread))))),
        }
    level_fit = []
    if case.levels:
        pred = predict_concentrations(model, cov, given, [lv.time_h for lv in case.levels], e1)[0]
        level_fit = [
            {"time_h": lv.time_h, "observed_mg_l": lv.value_mg_l, "predicted_mg_l": float(p)}
            for lv, p in zip(case.levels, pred, strict=True)
        ]
    current: dict[str, Any] | None = None
    if given:
        last = max(given, key=lambda d: d.times_h[-1])
        times = sorted(t for d in given for t in d.times_h)
        tau = last.interval_h if last.interval_h > 0 else (times[-1] - times[-2] if len(times) > 1 else 0.0)
        if tau > 0 and last.infusion_duration_h <= tau:
            cur_map = steady_state_metrics(
                model, cov_now, amount_mg=last.amount_mg, interval_h=tau, duration_h=last.infusion_duration_h, etas=e1
            )
            cur_s = steady_state_metrics(
                model,
                cov_now,
                amount_mg=last.amount_mg,
                interval_h=tau,
                duration_h=last.infusion_duration_h,
                etas=samples,
            )
            current = {
                "amount_mg": last.amount_mg,
                "interval_h": tau,
                "duration_h": last.infusion_duration_h,
                "metrics": {
                    key: _interval(cur_s[key], float(cur_map[key][0])) for key in ("auc24_ss", "trough_ss", "peak_ss")
                },
            }
    proposals: list[Proposal] = []
    for tau in opts.intervals_h:
        n_doses = max(opts.n_doses, 1)
        if target.metric == "auc" and target.end_h is not None:
            n_doses = max(n_doses, math.ceil((target.end_h - start) / tau))
        dur = opts.min_duration_h
        exact = math.nan
        for _ in range(3):  # the duration depends on the dose through the maximum rate
            tgt = Target(
                metric=target.metric,
                value=target.value,
                start_h=target.start_h,
                end_h=target.end_h,
                time_h=target.time_h,
                threshold_mg_l=target.threshold_mg_l,
            )
            proposed = maintenance_doses(start_h=start, amount_mg=1.0, interval_h=tau, n_doses=n_doses, duration_h=dur)
            try:
                cov_target = cov_now if target.metric in STEADY_STATE_METRICS else cov
                exact = float(dose_for_target(model, cov_target, given, proposed, tgt, e1)[0])
            except ValidationError as exc:
                warnings.append(f"q{tau:g}h: {exc}")
                break
            new_dur = max(opts.min_duration_h, min(exact, opts.max_dose_mg) / opts.max_rate_mg_h)
            if new_dur > tau:
                break
            if abs(new_dur - dur) < 1e-9:
                break
            dur = new_dur
        if not math.isfinite(exact) or dur > tau:
            continue
        amount = round_dose(exact, increment_mg=opts.increment_mg, min_mg=opts.increment_mg, max_mg=opts.max_dose_mg)
        if exact > opts.max_dose_mg:
            warnings.append(
                f"q{tau:g}h: the target needs {exact:.0f} mg, above the maximum dose {opts.max_dose_mg:g} mg; capped"
            )
        dur = max(opts.min_duration_h, amount / opts.max_rate_mg_h)
        mm = _metrics(case, given, amount, tau, dur, start, n_doses, e1)
        ms = _metrics(case, given, amount, tau, dur, start, n_doses, samples)
        pta = math.nan if target.is_point else float(np.mean(_attained(case, ms)))
        map_values = {key: float(mm[key][0]) for key in mm}
        proposals.append(
            Proposal(
                start_h=start,
                amount_mg=amount,
                exact_amount_mg=exact,
                interval_h=tau,
                duration_h=dur,
                n_doses=n_doses,
                metrics={key: _interval(ms[key], float(mm[key][0])) for key in ms},
                pta=pta,
                in_target=_in_target(target, map_values),
            )
        )
    if not proposals:
        raise ValidationError("no candidate regimen can meet the target within the constraints: " + "; ".join(warnings))
    best = choose_recommendation(proposals, target)
    loading = None
    if opts.loading_dose and target.metric == "auc24_ss":
        maint = maintenance_doses(
            start_h=start + best.interval_h,
            amount_mg=best.amount_mg,
            interval_h=best.interval_h,
            n_doses=max(1, math.ceil(24 / best.interval_h)),
            duration_h=best.duration_h,
        )
        dur = opts.min_duration_h
        tgt = Target(metric="auc", value=target.value, start_h=start, end_h=start + 24.0)
        exact_ld = float(
            dose_for_target(model, cov, [*given, *maint], [Dose(time_h=start, amount_mg=1.0, duration_h=dur)], tgt, e1)[
                0
            ]
        )
        amount_ld = round_dose(
            exact_ld, increment_mg=opts.increment_mg, min_mg=opts.increment_mg, max_mg=opts.max_dose_mg
        )
        if amount_ld > best.amount_mg:
            loading = {
                "amount_mg": amount_ld,
                "exact_amount_mg": exact_ld,
                "start_h": start,
                "duration_h": max(opts.min_duration_h, amount_ld / opts.max_rate_mg_h),
                "maintenance_start_h": start + best.interval_h,
            }
    horizon = start + 3 * max(best.interval_h, 24.0)
    t0 = min([0.0, *(d.time_h for d in given)])
    grid = np.linspace(t0, horizon, 301)
    plan = [*given, *best.doses(n_doses=math.ceil((horizon - start) / best.interval_h) + 1)]
    if loading is not None:  # the plot shows what is proposed: loading dose, then maintenance
        plan = [
            *given,
            Dose(time_h=start, amount_mg=loading["amount_mg"], duration_h=loading["duration_h"]),
            *maintenance_doses(
                start_h=loading["maintenance_start_h"],
                amount_mg=best.amount_mg,
                interval_h=best.interval_h,
                n_doses=math.ceil((horizon - loading["maintenance_start_h"]) / best.interval_h) + 1,
                duration_h=best.duration_h,
            ),
        ]
    band_s = predict_concentrations(model, cov, plan, grid, samples[: min(len(samples), 500)])
    band_map = predict_concentrations(model, cov, plan, grid, e1)[0]
    q = np.quantile(band_s, [0.05, 0.5, 0.95], axis=0)
    band = {
        "time_h": grid.tolist(),
        "p05": q[0].tolist(),
        "median": q[1].tolist(),
        "p95": q[2].tolist(),
        "map": band_map.tolist(),
    }
    return DosingReport(
        case=dataclasses.replace(case, notes=tuple(notes)),
        fit=fit,
        samples=samples,
        ess=ess,
        parameters=parameters,
        level_fit=level_fit,
        current=current,
        proposals=proposals,
        recommended=best,
        loading_dose=loading,
        band=band,
        warnings=warnings,
    )
