"""Local validation of a risk equation: overall and subgroup performance, gaps between groups, recalibration.

``evaluate(predicted, outcome, groups)`` gives an :class:`EvaluationReport`: the metrics of
:mod:`medtwin.risk.metrics` for the whole cohort and for every level of every grouping variable (sex, age band,
race/ethnicity, deprivation...), the gap (largest minus smallest level) of each metric per variable, the groups
whose calibration is off (O/E or slope 95 % CI excluding 1), and a recalibration to this population with the
performance before and after.

Recalibration (Steyerberg, Clinical Prediction Models, 2nd ed., ch. 20): binary outcomes -- ``logit p' = a + b
logit p`` by logistic regression; censored outcomes -- ``cloglog p' = a + b cloglog p`` with *b* the Cox slope and
*a* set so that the mean recalibrated risk equals the Kaplan-Meier risk at the horizon. The "after" figures are
apparent (fitted and assessed on the same cohort) unless a hold-out fraction is given.

Calibration in the large is the intercept of a logistic model with offset logit(p) for binary outcomes and, for
censored ones, the Kaplan-Meier risk at the horizon minus the mean predicted risk (0 is perfect for both).

Groups smaller than *min_group_size* people or with fewer than *min_group_events* events are listed with their
counts but no metrics: their estimates would be noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import optimize

from medtwin.errors import ValidationError
from medtwin.risk import metrics as m
from medtwin.risk.core import FloatArray

__all__ = [
    "EvaluationReport",
    "Outcome",
    "Performance",
    "Recalibration",
    "assess",
    "evaluate",
    "fit_recalibration",
    "reliability_plot",
]

DEFAULT_THRESHOLDS = (0.05, 0.075, 0.10, 0.15, 0.20, 0.30)


@dataclass(frozen=True)
class Outcome:
    """Observed outcomes: ``binary`` (*y* 0/1) or ``censored`` (*time* in years, *event* 0/1, at *horizon*)."""

    kind: Literal["binary", "censored"]
    y: FloatArray | None = None
    time: FloatArray | None = None
    event: FloatArray | None = None
    horizon: float = 10.0

    @classmethod
    def binary(cls, y: object) -> Outcome:
        return cls("binary", y=np.asarray(y, dtype=np.float64))

    @classmethod
    def censored(cls, time: object, event: object, horizon: float) -> Outcome:
        return cls(
            "censored",
            time=np.asarray(time, dtype=np.float64),
            event=np.asarray(event, dtype=np.float64),
            horizon=float(horizon),
        )

    def __len__(self) -> int:
        arr = self.y if self.kind == "binary" else self.time
        assert arr is not None
        return len(arr)

    def take(self, idx: np.ndarray) -> Outcome:
        if self.kind == "binary":
            assert self.y is not None
            return Outcome("binary", y=self.y[idx])
        assert self.time is not None
        assert self.event is not None
        return Outcome("censored", time=self.time[idx], event=self.event[idx], horizon=self.horizon)

    def events(self) -> int:
        """Observed events (censored: events up to the horizon)."""
        if self.kind == "binary":
            assert self.y is not None
            return int(self.y.sum())
        assert self.time is not None
        assert self.event is not None
        return int(((self.event == 1) & (self.time <= self.horizon)).sum())


@dataclass(frozen=True, kw_only=True)
class Performance:
    """Metrics of one set of predictions on one (sub)cohort."""

    n: int
    events: int
    mean_predicted: float
    observed_risk: m.Estimate
    c_statistic: m.Estimate
    observed_expected: m.Estimate
    calibration_in_the_large: m.Estimate
    calibration_slope: m.Estimate
    brier: float
    net_benefit: dict[str, list[float]]
    deciles: pd.DataFrame

    @property
    def miscalibrated(self) -> bool:
        """O/E or slope 95 % CI excludes 1."""
        return not self.observed_expected.covers(1.0) or not self.calibration_slope.covers(1.0)

    def summary(self) -> dict[str, Any]:
        """The scalar metrics as plain data."""
        return {
            "n": self.n,
            "events": self.events,
            "mean_predicted": self.mean_predicted,
            "observed_risk": self.observed_risk.as_dict(),
            "c_statistic": self.c_statistic.as_dict(),
            "observed_expected": self.observed_expected.as_dict(),
            "calibration_in_the_large": self.calibration_in_the_large.as_dict(),
            "calibration_slope": self.calibration_slope.as_dict(),
            "brier": self.brier,
            "miscalibrated": self.miscalibrated,
        }


def _deciles(p: FloatArray, outcome: Outcome) -> pd.DataFrame:
    bins = pd.qcut(p, 10, labels=False, duplicates="drop")
    rows = []
    for b in np.unique(bins):
        idx = np.flatnonzero(bins == b)
        sub = outcome.take(idx)
        if outcome.kind == "binary":
            assert sub.y is not None
            obs = float(sub.y.mean())
            se = np.sqrt(max(obs * (1 - obs), 1e-12) / len(idx))
            est = m.Estimate(obs, max(0.0, obs - m.Z95 * se), min(1.0, obs + m.Z95 * se))
        else:
            est = m.kaplan_meier_risk(sub.time, sub.event, outcome.horizon)
        pred = float(p[idx].mean())
        rows.append(
            {
                "decile": int(b) + 1,
                "n": len(idx),
                "predicted": pred,
                "observed": est.value,
                "observed_low": est.low,
                "observed_high": est.high,
                "o_e": est.value / pred if pred > 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def assess(
    predicted: object,
    outcome: Outcome,
    *,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    n_boot: int = 200,
    seed: int = 0,
) -> Performance:
    """Every metric of *predicted* risks against *outcome* (see :mod:`medtwin.risk.metrics`)."""
    p = np.asarray(predicted, dtype=np.float64)
    if len(p) != len(outcome):
        raise ValidationError(f"{len(p)} predictions for {len(outcome)} outcomes")
    if outcome.kind == "binary":
        y = outcome.y
        nb = m.net_benefit(y, p, thresholds)
        observed = m.Estimate(float(np.mean(y))) if y is not None else m.Estimate(float("nan"))
        perf = {
            "c_statistic": m.c_statistic(y, p),
            "observed_expected": m.observed_expected(y, p),
            "calibration_in_the_large": m.calibration_in_the_large(y, p),
            "calibration_slope": m.calibration_slope(y, p),
            "brier": m.brier_score(y, p),
        }
    else:
        t, e, h = outcome.time, outcome.event, outcome.horizon
        nb = m.net_benefit_censored(t, e, p, thresholds, horizon=h)
        observed = m.kaplan_meier_risk(t, e, h)
        oe = m.observed_expected_censored(t, e, p, horizon=h)
        perf = {
            "c_statistic": m.c_statistic_censored(t, e, p, horizon=h, n_boot=n_boot, seed=seed),
            "observed_expected": oe,
            "calibration_in_the_large": m.Estimate(
                observed.value - float(p.mean()), observed.low - float(p.mean()), observed.high - float(p.mean())
            ),
            "calibration_slope": m.calibration_slope_censored(t, e, p, horizon=h),
            "brier": m.brier_score_censored(t, e, p, horizon=h),
        }
    return Performance(
        n=len(p),
        events=outcome.events(),
        mean_predicted=float(p.mean()),
        observed_risk=observed,
        net_benefit={k: [float(x) for x in v] for k, v in nb.items()},
        deciles=_deciles(p, outcome),
        **perf,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Recalibration:
    """``link(p') = intercept + slope * link(p)`` on the logit (binary) or cloglog (censored) scale."""

    scale: Literal["logit", "cloglog"]
    intercept: float
    slope: float

    def apply(self, predicted: object) -> FloatArray:
        """Recalibrated risks."""
        p = np.clip(np.asarray(predicted, dtype=np.float64), 1e-12, 1 - 1e-12)
        if self.scale == "logit":
            out: FloatArray = 1.0 / (1.0 + np.exp(-(self.intercept + self.slope * np.log(p / (1 - p)))))
            return out
        return -np.expm1(-np.exp(self.intercept + self.slope * np.log(-np.log1p(-p))))


def fit_recalibration(predicted: object, outcome: Outcome) -> Recalibration:
    """Intercept and slope that recalibrate *predicted* to *outcome* (see the module docstring)."""
    p = np.clip(np.asarray(predicted, dtype=np.float64), 1e-12, 1 - 1e-12)
    if outcome.kind == "binary":
        assert outcome.y is not None
        beta, _ = m._newton_logistic(outcome.y, np.log(p / (1 - p)), np.zeros(len(p)))
        return Recalibration("logit", float(beta[0]), float(beta[1]))
    slope = m.calibration_slope_censored(outcome.time, outcome.event, p, horizon=outcome.horizon).value
    target = m.kaplan_meier_risk(outcome.time, outcome.event, outcome.horizon).value
    z = np.log(-np.log1p(-p))

    def gap(a: float) -> float:
        return float(np.mean(-np.expm1(-np.exp(a + slope * z)))) - target

    intercept = optimize.brentq(gap, -20, 20)
    return Recalibration("cloglog", float(intercept), float(slope))


@dataclass(frozen=True, kw_only=True)
class EvaluationReport:
    """Overall, per-subgroup and recalibrated performance of one model on one cohort."""

    model: str
    outcome_kind: Literal["binary", "censored"]
    overall: Performance
    subgroups: pd.DataFrame
    gaps: pd.DataFrame
    recalibration: Recalibration
    after: Performance
    after_is_apparent: bool
    subgroup_performance: dict[tuple[str, str], Performance] = field(default_factory=dict)

    @property
    def miscalibrated_groups(self) -> list[tuple[str, str]]:
        """(variable, group) of every subgroup whose O/E or slope CI excludes 1."""
        bad = self.subgroups[self.subgroups["miscalibrated"] == True]  # noqa: E712 (NaN-safe)
        return [(str(v), str(g)) for v, g in zip(bad["variable"], bad["group"], strict=True)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "model": self.model,
            "outcome": self.outcome_kind,
            "overall": self.overall.summary(),
            "deciles": self.overall.deciles.to_dict(orient="records"),
            "net_benefit": self.overall.net_benefit,
            "subgroups": self.subgroups.to_dict(orient="records"),
            "gaps": self.gaps.to_dict(orient="records"),
            "miscalibrated_groups": [list(x) for x in self.miscalibrated_groups],
            "recalibration": {
                "scale": self.recalibration.scale,
                "intercept": self.recalibration.intercept,
                "slope": self.recalibration.slope,
                "after_is_apparent": self.after_is_apparent,
                "after": self.after.summary(),
            },
        }

    def to_markdown(self) -> str:
        """A short human-readable report."""
        o, a = self.overall, self.after

        def ci(e: m.Estimate, digits: int = 3) -> str:
            return f"{e.value:.{digits}f} ({e.low:.{digits}f}-{e.high:.{digits}f})"

        lines = [
            f"# Validation of {self.model}",
            "",
            f"{o.n} people, {o.events} events; mean predicted {o.mean_predicted:.3f}, "
            f"observed {o.observed_risk.value:.3f}",
            "",
            "| metric | before | after recalibration |",
            "|---|---|---|",
            f"| C-statistic | {ci(o.c_statistic)} | {ci(a.c_statistic)} |",
            f"| observed/expected | {ci(o.observed_expected)} | {ci(a.observed_expected)} |",
            f"| calibration in the large | {ci(o.calibration_in_the_large)} | {ci(a.calibration_in_the_large)} |",
            f"| calibration slope | {ci(o.calibration_slope)} | {ci(a.calibration_slope)} |",
            f"| Brier score | {o.brier:.4f} | {a.brier:.4f} |",
            "",
            f"Recalibration ({self.recalibration.scale}): intercept {self.recalibration.intercept:.3f}, slope "
            f"{self.recalibration.slope:.3f}"
            + (
                " (apparent: fitted and assessed on this cohort)"
                if self.after_is_apparent
                else " (assessed on the hold-out)"
            ),
            "",
        ]
        if len(self.subgroups):
            lines += [
                "## Subgroups",
                "",
                "| variable | group | n | events | C | O/E | slope | flag |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in self.subgroups.itertuples():
                flag = "miscalibrated" if r.miscalibrated is True else ("too small" if r.too_small else "")
                lines.append(
                    f"| {r.variable} | {r.group} | {r.n} | {r.events} | {r.c:.3f} | {r.oe:.2f} ({r.oe_low:.2f}-"
                    f"{r.oe_high:.2f}) | {r.slope:.2f} ({r.slope_low:.2f}-{r.slope_high:.2f}) | {flag} |"
                )
            lines += [
                "",
                "## Gaps between groups (largest minus smallest)",
                "",
                "| variable | metric | gap | lowest | highest |",
                "|---|---|---|---|---|",
            ]
            for g in self.gaps.itertuples():
                lines.append(f"| {g.variable} | {g.metric} | {g.gap:.3f} | {g.lowest} | {g.highest} |")
        return "\n".join(lines) + "\n"


_GAP_METRICS = ("c", "oe", "citl", "slope", "brier")
_COLUMNS = (
    "variable",
    "group",
    "n",
    "events",
    "too_small",
    "c",
    "c_low",
    "c_high",
    "oe",
    "oe_low",
    "oe_high",
    "citl",
    "slope",
    "slope_low",
    "slope_high",
    "brier",
    "mean_predicted",
    "observed",
    "miscalibrated",
)


def _subgroup_row(variable: str, group: str, perf: Performance | None, n: int, events: int) -> dict[str, Any]:
    row: dict[str, Any] = {"variable": variable, "group": group, "n": n, "events": events, "too_small": perf is None}
    if perf is None:
        row.update(dict.fromkeys(_COLUMNS[5:-1], float("nan")))
        row["miscalibrated"] = None
        return row
    row.update(
        {
            "c": perf.c_statistic.value,
            "c_low": perf.c_statistic.low,
            "c_high": perf.c_statistic.high,
            "oe": perf.observed_expected.value,
            "oe_low": perf.observed_expected.low,
            "oe_high": perf.observed_expected.high,
            "citl": perf.calibration_in_the_large.value,
            "slope": perf.calibration_slope.value,
            "slope_low": perf.calibration_slope.low,
            "slope_high": perf.calibration_slope.high,
            "brier": perf.brier,
            "mean_predicted": perf.mean_predicted,
            "observed": perf.observed_risk.value,
            "miscalibrated": perf.miscalibrated,
        }
    )
    return row


def _gaps(table: pd.DataFrame) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    usable = table.loc[~table["too_small"].astype(bool).to_numpy()]
    for variable, sub in usable.groupby("variable", sort=False):
        if len(sub) < 2:
            continue
        for metric in _GAP_METRICS:
            vals = sub[["group", metric]].dropna()
            if len(vals) < 2:
                continue
            values = vals[metric].to_numpy(dtype=float)
            lo = vals.iloc[int(np.argmin(values))]
            hi = vals.iloc[int(np.argmax(values))]
            rows.append(
                {
                    "variable": variable,
                    "metric": metric,
                    "gap": float(hi[metric] - lo[metric]),
                    "lowest": str(lo["group"]),
                    "highest": str(hi["group"]),
                }
            )
    return pd.DataFrame(rows, columns=["variable", "metric", "gap", "lowest", "highest"])


def evaluate(
    predicted: object,
    outcome: Outcome,
    groups: dict[str, object] | None = None,
    *,
    model: str = "model",
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    n_boot: int = 200,
    seed: int = 0,
    min_group_size: int = 100,
    min_group_events: int = 10,
    holdout: float = 0.0,
) -> EvaluationReport:
    """Validate *predicted* risks against *outcome*, overall and in every group of *groups* (name -> labels).

    People with a missing prediction (refused) are not part of the validation: drop them before, and report how
    many were refused. With *holdout* in (0, 1) the recalibration is fitted on a random ``1 - holdout`` of the
    cohort and the "after" figures come from the rest.
    """
    p = np.asarray(predicted, dtype=np.float64)
    if len(p) != len(outcome):
        raise ValidationError(f"{len(p)} predictions for {len(outcome)} outcomes")
    if np.isnan(p).any():
        raise ValidationError(f"{int(np.isnan(p).sum())} predictions are missing (refused): drop them first")
    overall = assess(p, outcome, thresholds=thresholds, n_boot=n_boot, seed=seed)
    rows, per_group = [], {}
    for variable, labels in (groups or {}).items():
        lab = pd.Series(np.asarray(labels, dtype=object)).fillna("not recorded").astype(str).to_numpy()
        if len(lab) != len(p):
            raise ValidationError(f"group {variable!r}: {len(lab)} labels for {len(p)} people")
        for group in sorted(set(lab)):
            idx = np.flatnonzero(lab == group)
            sub = outcome.take(idx)
            events = sub.events()
            perf = None
            if len(idx) >= min_group_size and events >= min_group_events and len(idx) - events > 0:
                perf = assess(p[idx], sub, thresholds=thresholds, n_boot=n_boot, seed=seed)
                per_group[(variable, group)] = perf
            rows.append(_subgroup_row(variable, group, perf, len(idx), events))
    table = pd.DataFrame(rows, columns=list(_COLUMNS))
    if not 0 <= holdout < 1:
        raise ValidationError(f"holdout must be in [0, 1), got {holdout}")
    if holdout > 0:
        rng = np.random.default_rng(seed)
        test = rng.random(len(p)) < holdout
        recal = fit_recalibration(p[~test], outcome.take(np.flatnonzero(~test)))
        after = assess(
            recal.apply(p[test]), outcome.take(np.flatnonzero(test)), thresholds=thresholds, n_boot=n_boot, seed=seed
        )
    else:
        recal = fit_recalibration(p, outcome)
        after = assess(recal.apply(p), outcome, thresholds=thresholds, n_boot=n_boot, seed=seed)
    return EvaluationReport(
        model=model,
        outcome_kind=outcome.kind,
        overall=overall,
        subgroups=table,
        gaps=_gaps(table),
        recalibration=recal,
        after=after,
        after_is_apparent=holdout == 0,
        subgroup_performance=per_group,
    )


def reliability_plot(report: EvaluationReport, path: str | Path) -> Path:
    """PNG: observed against predicted risk by decile, before and after recalibration, with 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=110)
    top = 0.0
    for perf, label, marker in ((report.overall, "before", "o"), (report.after, "after recalibration", "s")):
        d = perf.deciles
        yerr = np.vstack([d["observed"] - d["observed_low"], d["observed_high"] - d["observed"]])
        ax.errorbar(d["predicted"], d["observed"], yerr=np.nan_to_num(yerr), fmt=marker, capsize=3, label=label)
        top = max(top, float(np.nanmax(d[["predicted", "observed_high"]].to_numpy())))
    top = min(1.0, top * 1.1 + 1e-3)
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="perfect calibration")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("predicted risk (decile mean)")
    ax.set_ylabel("observed risk" + (" (Kaplan-Meier)" if report.outcome_kind == "censored" else ""))
    ax.set_title(f"Reliability: {report.model}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
