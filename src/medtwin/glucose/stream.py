"""Glucose filters of many people advanced together: one kernel call per step for every person with a new reading.

:func:`update_many` gives exactly what calling :meth:`GlucoseForecaster.update` on each forecaster in turn gives
(the same numbers: every particle's arithmetic is the same, each forecaster draws from its own random generator in
the same order), but integrates the particles of all people in one call of the recorded-input kernel for the
advance to the readings and one for the 30-minute alert horizon, instead of two calls per person. This is what
lets a twin runtime forecast on every reading of a thousand CGM wearers (docs/benchmarks.md, "Living twin").

:func:`population_posterior` is the posterior a person's twin starts from before their own data identify it: draws
of the population prior (:func:`medtwin.glucose.twin_model.population_prior`) with an assumed residual error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

import numpy as np

from medtwin.errors import ValidationError
from medtwin.glucose._twin_kernels import IntArray, run_inputs
from medtwin.glucose.forecast import (
    _ALERT_HORIZON_MIN,
    _VG,
    GlucoseForecaster,
)
from medtwin.glucose.identify import Diagnostics, Posterior
from medtwin.glucose.twin_model import PopulationPrior, population_prior
from medtwin.records import Event
from medtwin.sim.model import FloatArray

__all__ = ["ASSUMED_RESIDUAL_SD_MG_DL", "ASSUMED_RESIDUAL_TAU_MIN", "population_posterior", "update_many"]

ASSUMED_RESIDUAL_SD_MG_DL = 12.0
"""Residual SD (sensor and model error) of a twin not yet identified: an assumption of medtwin, replaced by the
person's own estimate at the first identification (docs/living-twin.md)."""
ASSUMED_RESIDUAL_TAU_MIN = 30.0
"""Correlation time of that residual (minutes): also an assumption until the first identification."""


def population_posterior(
    *,
    body_weight_kg: float,
    basal_u_h: float,
    prior: PopulationPrior | None = None,
    draws: int = 512,
    seed: int = 0,
) -> Posterior:
    """Draws of the population *prior* (all 30 virtual patients by default) as a posterior for a new person (the same
    arguments give the same posterior: with the default prior it is made once per process and shared)."""
    if prior is None:
        return _default_population_posterior(float(body_weight_kg), float(basal_u_h), draws, seed)
    return _population_posterior(prior, body_weight_kg, basal_u_h, draws, seed)


@lru_cache(maxsize=1)
def _default_prior() -> PopulationPrior:
    return population_prior("all")


@lru_cache(maxsize=64)
def _default_population_posterior(body_weight_kg: float, basal_u_h: float, draws: int, seed: int) -> Posterior:
    return _population_posterior(_default_prior(), body_weight_kg, basal_u_h, draws, seed)


def _population_posterior(
    prior: PopulationPrior, body_weight_kg: float, basal_u_h: float, draws: int, seed: int
) -> Posterior:
    rng = np.random.default_rng(seed)
    theta = prior.sample(draws, rng)
    g0 = np.full((draws, 1), math.log(120.0))  # the filter starts from the first reading, not from G0
    names = (*prior.names, "G0")
    diagnostics = Diagnostics(rhat=dict.fromkeys(names, 1.0), ess_bulk={n: float(draws) for n in names},
                              ess_tail={n: float(draws) for n in names}, converged=True, steps=0, walkers=0,
                              kept_steps=0, acceptance=0.0, simulations=0, seconds=0.0)  # fmt: skip
    return Posterior(
        prior=prior, draws=np.hstack([theta, g0]), map_theta=np.append(prior.mean, math.log(120.0)),
        body_weight_kg=float(body_weight_kg), basal_u_h=float(basal_u_h),
        residual_tau_min=ASSUMED_RESIDUAL_TAU_MIN, residual_sd_mg_dl=ASSUMED_RESIDUAL_SD_MG_DL,
        diagnostics=diagnostics, data_summary={"source": "population prior (not identified yet)"},
    )  # fmt: skip


# The serial kernel build in both calls: a streaming worker shares the cores with the listener and the broker, and
# the threaded build's idle threads cost CPU they need (measured on the 2-core VM, 300 patients x 23 readings:
# 0.94 CPU s serial vs 1.36 threaded, docs/benchmarks.md).
def _run_together(
    forecasters: Sequence[GlucoseForecaster],
    spans: Sequence[tuple[float, float]],
    x: Sequence[FloatArray],
    meal_state: Sequence[FloatArray],
) -> list[FloatArray]:
    """Advance each forecaster's states *x[i]* / *meal_state[i]* (in place) over its span ``(t0, t1)`` (all spans
    the same number of minutes) on its own inputs; return each one's BG ``(minutes, N_i)``."""
    meals_cols, insulin_cols = [], []
    for f, (t0, t1) in zip(forecasters, spans, strict=True):
        meals, insulin = f._inputs(t0, t1)
        meals_cols.append(meals)
        insulin_cols.append(insulin)
    sizes = [a.shape[0] for a in x]
    column = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    xs = np.concatenate(list(x))
    ms = np.concatenate(list(meal_state))
    ps = np.concatenate([f.params for f in forecasters])
    bg = run_inputs(xs, ps, ms, np.stack(meals_cols, axis=1), np.stack(insulin_cols, axis=1), meal_col=column,
                    insulin_col=column, parallel=False)  # fmt: skip
    out: list[FloatArray] = []
    start = 0
    for i, n in enumerate(sizes):
        x[i][:] = xs[start : start + n]
        meal_state[i][:] = ms[start : start + n]
        out.append(bg[:, start : start + n])
        start += n
    return out


def _advance_many(forecasters: Sequence[GlucoseForecaster], targets: Sequence[float]) -> None:
    """:meth:`GlucoseForecaster._advance` of each forecaster to its target time, grouped by span length."""
    groups: dict[int, list[int]] = {}
    for i, (f, t_new) in enumerate(zip(forecasters, targets, strict=True)):
        if t_new <= f.t_min:
            continue
        minutes = max(math.floor(t_new + 1e-9) - math.floor(f.t_min + 1e-9), 0)
        groups.setdefault(minutes, []).append(i)
    for minutes, members in sorted(groups.items()):
        if minutes > 0:
            fs = [forecasters[i] for i in members]
            _run_together(fs, [(f.t_min, targets[i]) for f, i in zip(fs, members, strict=True)],
                          [f.x for f in fs], [f.meal_state for f in fs])  # fmt: skip
            for f in fs:  # each draws its process noise from its own generator, as _advance does
                f._shock(float(minutes))
        for i in members:
            forecasters[i].t_min = float(math.floor(targets[i] + 1e-9))
            forecasters[i].forget_applied_inputs()


def _step(items: Sequence[tuple[GlucoseForecaster, datetime, float]]) -> list[list[Event]]:
    """One reading for each of distinct forecasters (see :func:`update_many`)."""
    fs = [f for f, _, _ in items]
    ts: list[float] = []
    dts: list[float] = []
    for f, at, cgm in items:
        if not 20.0 <= cgm <= 600.0:
            raise ValidationError(f"CGM reading {cgm} mg/dL at {at.isoformat()} is outside 20-600 mg/dL")
        t = f._minutes(at)
        dts.append(f._begin(t, float(cgm)))
        ts.append(t)
    _advance_many(fs, ts)
    for f, t, dt, (_, _, cgm) in zip(fs, ts, dts, items, strict=True):
        f._weigh(t, dt, float(cgm))
    # the alert horizon, screened as GlucoseForecaster._check_alert does: the sentinels of every screened person in
    # one call, then every particle of those who need it (and of those not screened) in a second one
    sentinels = {i: f.sentinels() for i, f in enumerate(fs) if f.alert_screen}
    sentinel_bg = _horizon([fs[i] for i in sentinels], list(sentinels.values()))
    full = [not f.alert_screen for f in fs]
    for (i, idx), bg in zip(sentinels.items(), sentinel_bg, strict=True):
        full[i] = fs[i].needs_full_horizon(idx, bg)
    chosen = [i for i, need in enumerate(full) if need]
    paths = dict(zip(chosen, _horizon([fs[i] for i in chosen], [None] * len(chosen)), strict=True))
    out = []
    for i, f in enumerate(fs):
        if i not in paths:
            out.append(f._alert_from_probabilities(0.0, 0.0))
            continue
        now = f.x[:, 12] / f.params[:, _VG]
        out.append(f._alert_from_paths(np.concatenate([now[None, :], paths[i]], axis=0)))
    return out


def _horizon(forecasters: Sequence[GlucoseForecaster], members: Sequence[IntArray | None]) -> list[FloatArray]:
    """Model BG ``(horizon, M_i)`` of particles *members[i]* (None: all) of each forecaster over the alert horizon,
    on copies of their states, in one kernel call."""
    if not forecasters:
        return []
    meals_cols, insulin_cols, xs, ms, ps, sizes = [], [], [], [], [], []
    for f, idx in zip(forecasters, members, strict=True):
        meals, insulin = f._inputs(f.t_min, f.t_min + _ALERT_HORIZON_MIN)
        sel = slice(None) if idx is None else idx
        x = f.x[sel]
        meals_cols.append(meals)
        insulin_cols.append(insulin)
        xs.append(x)
        ms.append(f.meal_state[sel])
        ps.append(f.params[sel])
        sizes.append(x.shape[0])
    column = np.repeat(np.arange(len(forecasters), dtype=np.int64), sizes)
    bg = run_inputs(np.concatenate(xs), np.concatenate(ps), np.concatenate(ms), np.stack(meals_cols, axis=1),
                    np.stack(insulin_cols, axis=1), meal_col=column, insulin_col=column, parallel=False)  # fmt: skip
    out = []
    start = 0
    for n in sizes:
        out.append(bg[:, start : start + n])
        start += n
    return out


def update_many(items: Sequence[tuple[GlucoseForecaster, datetime, float]]) -> list[list[Event]]:
    """``[f.update(at, cgm) for f, at, cgm in items]``, computed in batches (module docstring).

    Readings of one forecaster are applied in the order given; a forecaster with several readings takes one per
    round. A reading outside 20-600 mg/dL or older than its filter is a :class:`ValidationError`, as in
    :meth:`GlucoseForecaster.update` (nothing of the round is applied then: check readings before).
    """
    results: list[list[Event]] = [[] for _ in items]
    pending = list(range(len(items)))
    while pending:
        seen: set[int] = set()
        round_idx: list[int] = []
        rest: list[int] = []
        for i in pending:
            key = id(items[i][0])
            if key in seen:
                rest.append(i)
            else:
                seen.add(key)
                round_idx.append(i)
        for i, events in zip(round_idx, _step([items[i] for i in round_idx]), strict=True):
            results[i] = events
        pending = rest
    return results
