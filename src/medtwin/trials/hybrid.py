"""Hybrid mode: real participants' run-in CGM builds their twins, and the twins supply PROCOVA's covariate.

This is how twins shrink a real trial: before randomisation each participant wears a CGM for a run-in; a twin
is built from that run-in (today a :class:`~medtwin.trials.prognostic.MatchedTwin` from a library simulated as the
spec says; with issue 17, an identified personal twin) and predicts the participant's outcome under the control
arm; the trial's real outcomes are then analysed with that prediction as the prognostic covariate. The spec
gives the control arm, run-in length, scenario and endpoints; its virtual population becomes the twin library.

Files (CSV): the run-in has one row per reading with a participant column (``id``, ``participant`` or
``subject``), a time column (``t_min`` minutes, or ``time`` ISO 8601 timestamps) and ``glucose_mg_dl`` (or
``glucose_mmol_l``); the outcomes have one row per participant with the same id column, ``arm`` (an arm name of
the spec) and one column per endpoint (``tir_pct``, ...). Rows whose time or glucose cannot be read are counted
and reported, never silently dropped; a participant with outcomes but no run-in (or the reverse) is an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.glucose.metrics import cgm_metrics
from medtwin.sim.model import FloatArray
from medtwin.sim.runners import Runner
from medtwin.trials.analysis import Estimate, ancova, correlation, difference_in_means
from medtwin.trials.glucose_arms import glucose_endpoints
from medtwin.trials.glucose_trial import GlucoseSimulator
from medtwin.trials.prognostic import BaselineData, PrognosticModel
from medtwin.trials.protocol import GLUCOSE_ENDPOINTS, TrialSpec

__all__ = ["HybridResult", "hybrid_analysis", "read_outcomes", "read_run_in"]

_ID_COLUMNS = ("id", "participant", "subject")


def _id_column(frame: pd.DataFrame, path: Path) -> str:
    found = next((c for c in _ID_COLUMNS if c in frame.columns), None)
    if found is None:
        raise ValidationError(f"{path}: need a participant column ({', '.join(_ID_COLUMNS)})")
    return found


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise ValidationError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise ValidationError(f"{path}: not a readable CSV file ({exc})") from None


def read_run_in(path: str | Path) -> tuple[BaselineData, int]:
    """Each participant's run-in summaries (``GLUCOSE_ENDPOINTS`` names) and the count of unreadable rows."""
    p = Path(path)
    frame = _read_csv(p)
    ids = frame[_id_column(frame, p)].astype(str).to_numpy()
    if "t_min" in frame.columns:
        t = pd.to_numeric(frame["t_min"], errors="coerce").to_numpy(dtype=float)
    elif "time" in frame.columns:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            stamps = pd.to_datetime(frame["time"], errors="coerce", utc=True)
        t = ((stamps - stamps.min()).dt.total_seconds() / 60.0).to_numpy(dtype=float)
    else:
        raise ValidationError(f"{p}: need a time column: t_min (minutes) or time (ISO 8601 with zone)")
    if "glucose_mg_dl" in frame.columns:
        g = pd.to_numeric(frame["glucose_mg_dl"], errors="coerce").to_numpy(dtype=float)
    elif "glucose_mmol_l" in frame.columns:
        g = pd.to_numeric(frame["glucose_mmol_l"], errors="coerce").to_numpy(dtype=float)
        g = g * codes.convert(1.0, "mmol/L", "mg/dL", analyte="glucose")
    else:
        raise ValidationError(f"{p}: need a glucose column: glucose_mg_dl or glucose_mmol_l")
    readable = np.isfinite(t) & np.isfinite(g)
    rows: dict[str, dict[str, float]] = {}
    for pid in dict.fromkeys(ids):
        sel = (ids == pid) & readable
        try:
            m = cgm_metrics(t[sel], g[sel]).to_dict()
        except ValidationError as exc:
            raise ValidationError(f"{p}: participant {pid!r}: {exc}") from None
        rows[str(pid)] = {k: float(v) for k, v in glucose_endpoints(m).items()}  # type: ignore[arg-type]
    names = tuple(rows)
    run_in = {e: np.array([rows[n][e] for n in names]) for e in GLUCOSE_ENDPOINTS}
    return BaselineData(ids=names, run_in=run_in), int((~readable).sum())


def read_outcomes(path: str | Path, spec: TrialSpec) -> tuple[tuple[str, ...], np.ndarray, dict[str, FloatArray]]:
    """Participant ids, arm index per participant, and ``{endpoint: (n,)}`` from the outcomes CSV."""
    p = Path(path)
    frame = _read_csv(p)
    ids = tuple(frame[_id_column(frame, p)].astype(str))
    if len(set(ids)) != len(ids):
        raise ValidationError(f"{p}: a participant appears more than once")
    if "arm" not in frame.columns:
        raise ValidationError(f"{p}: need an 'arm' column naming each participant's arm")
    names = spec.arm_names()
    unknown = sorted(set(frame["arm"].astype(str)) - set(names))
    if unknown:
        raise ValidationError(f"{p}: arms {unknown} are not in the spec ({', '.join(names)})")
    arm = np.array([names.index(a) for a in frame["arm"].astype(str)])
    outcomes: dict[str, FloatArray] = {}
    for e in spec.endpoints:
        if e not in frame.columns:
            raise ValidationError(f"{p}: no column for endpoint {e!r}")
        v = pd.to_numeric(frame[e], errors="coerce").to_numpy(dtype=float)
        bad = [ids[i] for i in np.flatnonzero(~np.isfinite(v))]
        if bad:
            raise ValidationError(f"{p}: endpoint {e!r} is missing or unreadable for {bad[:5]}")
        outcomes[e] = v
    return ids, arm, outcomes


@dataclass(frozen=True, slots=True, kw_only=True)
class HybridResult:
    """Estimates per endpoint and arm, each participant's prognostic score, and the twins' accuracy."""

    ids: tuple[str, ...]
    prognostic: dict[str, FloatArray]
    estimates: dict[str, dict[str, list[Estimate]]]  # endpoint -> arm -> estimates
    rho_control: dict[str, float]
    skipped_rows: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {
            "participants": len(self.ids),
            "skipped_run_in_rows": self.skipped_rows,
            "prognostic_rho_control": self.rho_control,
            "estimates": {
                e: {a: [x.to_dict() for x in v] for a, v in arms.items()} for e, arms in self.estimates.items()
            },
        }


def hybrid_analysis(
    spec: TrialSpec,
    run_in: BaselineData,
    ids: tuple[str, ...],
    arm: np.ndarray,
    outcomes: Mapping[str, FloatArray],
    *,
    model: PrognosticModel | None = None,
    runner: Runner | None = None,
    skipped_rows: int = 0,
) -> HybridResult:
    """Analyse real outcomes with twin-predicted control outcomes (default twin: the spec's matched library)."""
    missing = sorted(set(ids) ^ set(run_in.ids))
    if missing:
        raise ValidationError(f"hybrid: participants without both run-in and outcomes: {missing[:10]}")
    order = np.array([run_in.ids.index(i) for i in ids])
    base = BaselineData(ids=ids, run_in={k: np.asarray(v)[order] for k, v in run_in.run_in.items()})
    twin = model or GlucoseSimulator(spec, runner).matched_twin()
    prognostic = twin.predict(base, spec.endpoints)
    c, a = spec.control, spec.analysis
    estimates: dict[str, dict[str, list[Estimate]]] = {}
    rho: dict[str, float] = {}
    for e in spec.endpoints:
        rows_c = arm == c
        rho[e] = correlation(prognostic[e][rows_c], outcomes[e][rows_c])
        estimates[e] = {}
        for k, arm_spec in enumerate(spec.arms):
            if k == c:
                continue
            rows = (arm == k) | rows_c
            y, treated = outcomes[e][rows], arm[rows] == k
            base_e = base.run_in[e][rows][:, None]
            estimates[e][arm_spec.name] = [
                difference_in_means(y, treated, alpha=a.alpha),
                ancova(y, treated, base_e, names=(f"run_in:{e}",), alpha=a.alpha, robust=a.robust_se),
                ancova(
                    y,
                    treated,
                    np.column_stack([prognostic[e][rows], base_e]),
                    method="procova",
                    names=(f"prognostic:{e}", f"run_in:{e}"),
                    alpha=a.alpha,
                    robust=a.robust_se,
                ),
            ]
    return HybridResult(ids=ids, prognostic=prognostic, estimates=estimates, rho_control=rho, skipped_rows=skipped_rows)
