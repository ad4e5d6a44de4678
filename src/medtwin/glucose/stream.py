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
    _ALERT_PROBABILITY,
    _HYPO_MG_DL,
    _PROCESS_NOISE_PER_SQRT_MIN,
    _VG,
    ALERT_SCREEN_MARGIN_MG_DL,
    ALERT_SENTINEL_QUANTILES,
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
    shock_minutes: float | None = None,
) -> None:
    """Advance each forecaster's states *x[i]* / *meal_state[i]* (in place) over its span ``(t0, t1)`` (all spans
    the same number of minutes) on its own inputs. *shock_minutes*: then
    apply each one's process noise of that many minutes (:meth:`GlucoseForecaster._shock`: the same draws from its
    own generator, the same products, done for all at once)."""
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
    run_inputs(xs, ps, ms, _rows(meals_cols).T, _rows(insulin_cols).T, meal_col=column,
                    insulin_col=column, parallel=False)  # fmt: skip
    if shock_minutes is not None:
        sd = _PROCESS_NOISE_PER_SQRT_MIN * math.sqrt(shock_minutes)
        shock = np.exp(np.concatenate([f.rng.normal(0.0, sd, n) for f, n in zip(forecasters, sizes, strict=True)]))
        xs[:, 3] *= shock
        xs[:, 4] *= shock
        xs[:, 12] *= shock
    start = 0
    for i, n in enumerate(sizes):
        x[i][:] = xs[start : start + n]
        meal_state[i][:] = ms[start : start + n]
        start += n


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
            # each draws its process noise from its own generator after the advance, as _advance does
            _run_together(fs, [(f.t_min, targets[i]) for f, i in zip(fs, members, strict=True)],
                          [f.x for f in fs], [f.meal_state for f in fs], shock_minutes=float(minutes))  # fmt: skip
        for i in members:
            forecasters[i].t_min = float(math.floor(targets[i] + 1e-9))
            forecasters[i].forget_applied_inputs()


def _step(items: Sequence[tuple[GlucoseForecaster, datetime, float]]) -> list[list[Event]]:
    """One reading for each of distinct forecasters (see :func:`update_many`)."""
    fs = [f for f, _, _ in items]
    ts: list[float] = []
    dts: list[float] = []
    cgms: list[float] = []
    for f, at, cgm in items:
        if not 20.0 <= cgm <= 600.0:
            raise ValidationError(f"CGM reading {cgm} mg/dL at {at.isoformat()} is outside 20-600 mg/dL")
        t = f._minutes(at)
        dts.append(f._begin(t, float(cgm)))
        ts.append(t)
        cgms.append(float(cgm))
    _advance_many(fs, ts)
    _weigh_many(fs, ts, dts, cgms)
    # the alert horizon, screened as GlucoseForecaster._check_alert does: the sentinels of every screened person in
    # one call, then every particle of those who need it (and of those not screened) in a second one
    screened = [i for i, f in enumerate(fs) if f.alert_screen]
    inputs = {i: fs[i]._inputs(fs[i].t_min, fs[i].t_min + _ALERT_HORIZON_MIN) for i in range(len(fs))}
    full = [not f.alert_screen for f in fs]
    for i, need in zip(screened, _screen_many([fs[i] for i in screened], [inputs[i] for i in screened]),
                       strict=True):  # fmt: skip
        full[i] = need
    chosen = [i for i, need in enumerate(full) if need]
    alerts = dict(zip(chosen, _full_horizon_many([fs[i] for i in chosen], [inputs[i] for i in chosen]), strict=True))
    return [alerts[i] if i in alerts else f._alert_from_probabilities(0.0, 0.0) for i, f in enumerate(fs)]


_MAJORITY_MARGIN = 1e-6
"""Weight above 1 - the alert probability (one half) that the particles run first must carry (far above the
rounding of a sum of weights)."""


def _full_horizon_many(
    fs: Sequence[GlucoseForecaster], inputs: Sequence[tuple[FloatArray, FloatArray]]
) -> list[list[Event]]:
    """The alert events of running every particle of each forecaster over the alert horizon
    (:meth:`GlucoseForecaster._alert_from_paths`), in two stages that give exactly those events.

    First the particles of highest present model glucose that carry more than 1 - the alert probability of the weight
    (more than half; plus :data:`_MAJORITY_MARGIN`) are run: when none of them predicts a CGM below 70 mg/dL, less
    than the alert probability of the weight can, so neither level is reached and the events are those of
    probabilities 0 (they depend on the probabilities only when a level is reached). Otherwise the rest are run too
    and the paths of all particles, each the same as in one call (the kernel integrates every particle on its own),
    decide as before."""
    if not fs:
        return []
    now = [f.x[:, 12] / f.params[:, _VG] for f in fs]
    first: list[IntArray] = []
    for f, bg_now in zip(fs, now, strict=True):
        order = np.argsort(-bg_now, kind="stable")
        cw = np.cumsum(f.weights[order])
        k = min(int(np.searchsorted(cw, 1.0 - _ALERT_PROBABILITY + _MAJORITY_MARGIN, side="right")), order.size - 1)
        first.append(np.sort(order[: k + 1]))
    bg, sizes = _horizon(fs, first, inputs)
    out: list[list[Event] | None] = []
    rest: dict[int, FloatArray] = {}  # undecided: the first stage's paths
    for j, (f, idx, paths) in enumerate(zip(fs, first, _split(bg, sizes), strict=True)):
        if idx.size == f.weights.size:  # every particle ran (sorted: in their order)
            out.append(f._alert_from_paths(np.concatenate([now[j][None, :], paths], axis=0)))
            continue
        low = f.cgm_paths(np.concatenate([now[j][idx][None, :], paths], axis=0), idx).min(axis=0)
        if bool(np.all(low >= _HYPO_MG_DL)):
            out.append(f._alert_from_probabilities(0.0, 0.0))
        else:
            out.append(None)
            rest[j] = paths
    others = [np.setdiff1d(np.arange(fs[j].weights.size), first[j]) for j in rest]
    bg, sizes = _horizon([fs[j] for j in rest], others, [inputs[j] for j in rest])
    for (j, first_paths), idx, paths in zip(rest.items(), others, _split(bg, sizes), strict=True):
        f = fs[j]
        full = np.empty((paths.shape[0], f.weights.size))
        full[:, first[j]] = first_paths
        full[:, idx] = paths
        out[j] = f._alert_from_paths(np.concatenate([now[j][None, :], full], axis=0))
    return [events if events is not None else [] for events in out]


def _rows(vectors: Sequence[FloatArray]) -> FloatArray:
    """The equally long 1-d arrays *vectors* as the rows of a 2-d array (``np.stack`` without its per-array
    Python work)."""
    return np.concatenate(vectors).reshape(len(vectors), vectors[0].shape[0])


def _same_size(forecasters: Sequence[GlucoseForecaster]) -> int | None:
    """The particle count of *forecasters* when they all have the same (the batched arithmetic's case), else None."""
    n = forecasters[0].weights.size
    return n if all(f.weights.size == n for f in forecasters) else None


def _weigh_many(
    fs: Sequence[GlucoseForecaster], ts: Sequence[float], dts: Sequence[float], cgms: Sequence[float]
) -> None:
    """:meth:`GlucoseForecaster._weigh` of each forecaster, as rows of one array: the same operations on the same
    values element by element (numpy's elementwise functions and its row reductions along a contiguous last axis
    give each row what they give it alone: tests/twin/test_glucose_component.py checks the bits), then each one's
    resampling from its own generator."""
    n = _same_size(fs) if fs else None
    if n is None or len(fs) < 2:
        for f, t, dt, cgm in zip(fs, ts, dts, cgms, strict=True):
            f._weigh(t, dt, cgm)
        return
    bg = _rows([f.x[:, 12] for f in fs]) / _rows([f.params[:, _VG] for f in fs])
    rho = [math.exp(-dt / f.tau_min) for f, dt in zip(fs, dts, strict=True)]
    innovation_sd = np.array([f.sensor_sd * math.sqrt(1.0 - r * r) for f, r in zip(fs, rho, strict=True)])[:, None]
    reading = np.array(cgms)[:, None]
    resid = reading - bg - np.array(rho)[:, None] * _rows([f.sensor_error for f in fs])
    logw = np.log(_rows([f.weights for f in fs])) - 0.5 * (resid / innovation_sd) ** 2
    logw -= logw.max(axis=1, keepdims=True)
    w = np.exp(logw)
    weights = w / w.sum(axis=1, keepdims=True)
    error = reading - bg
    resample = 1.0 / np.sum(weights**2, axis=1) < 0.5 * n
    for k, (f, t, c) in enumerate(zip(fs, ts, cgms, strict=True)):
        f.weights = weights[k].copy()  # copies: a row view would keep the whole round's array alive
        f.sensor_error = error[k].copy()
        f._last_reading_min = t
        f.last_cgm_mg_dl = c
        if resample[k]:
            f._resample()


_RHO: dict[tuple[float, int], FloatArray] = {}  # (tau, minutes + 1) -> exp(-h / tau), h = 0..minutes


def _rho(tau_min: float, length: int) -> FloatArray:
    """``exp(-arange(length) / tau_min)`` as :meth:`GlucoseForecaster.cgm_paths` computes it (kept: few taus)."""
    rho = _RHO.get((tau_min, length))
    if rho is None:
        if len(_RHO) > 4096:
            _RHO.clear()
        rho = _RHO[(tau_min, length)] = np.exp(-np.arange(length, dtype=np.float64) / tau_min)
    return rho


def _screen_many(fs: Sequence[GlucoseForecaster], inputs: Sequence[tuple[FloatArray, FloatArray]]) -> list[bool]:
    """For each forecaster, whether its sentinels' alert horizon comes near a low (every particle must then be run):
    :meth:`GlucoseForecaster.sentinels` and :meth:`~GlucoseForecaster.needs_full_horizon` as rows of arrays, the
    sentinels of all in one kernel call. *inputs*: each one's inputs over the horizon (``_inputs``)."""
    if not fs:
        return []
    n = _same_size(fs)
    if n is None:
        members = [f.sentinels() for f in fs]
        bg, sizes = _horizon(fs, members, inputs)
        return [f.needs_full_horizon(m, b) for f, m, b in zip(fs, members, _split(bg, sizes), strict=True)]
    now = _rows([f.x[:, 12] for f in fs]) / _rows([f.params[:, _VG] for f in fs])
    # the particles at the weighted quantiles of the present model glucose (GlucoseForecaster.sentinels): the first
    # position whose cumulative weight reaches each quantile, counted (the cumulative weights do not decrease)
    order = np.argsort(now, axis=1, kind="stable")
    cw = np.cumsum(np.take_along_axis(_rows([f.weights for f in fs]), order, axis=1), axis=1)
    targets = np.asarray(ALERT_SENTINEL_QUANTILES) * cw[:, -1:]
    pos = np.minimum(np.sum(cw[:, :, None] < targets[:, None, :], axis=1), n - 1)
    chosen = np.take_along_axis(order, pos, axis=1).tolist()
    members = [np.array(sorted(set(row)), dtype=np.intp) for row in chosen]
    bg, sizes = _horizon(fs, members, inputs)
    rows = np.repeat(np.arange(len(fs)), sizes)
    cols = np.concatenate(members)
    error = _rows([f.sensor_error for f in fs])[rows, cols]
    rho = np.repeat(_rows([_rho(f.tau_min, bg.shape[0] + 1) for f in fs]).T, sizes, axis=1)
    low = np.concatenate([now[rows, cols][None, :], bg], axis=0) + rho * error
    starts = np.cumsum([0, *sizes[:-1]])
    near = np.minimum.reduceat(low.min(axis=0), starts) < _HYPO_MG_DL + ALERT_SCREEN_MARGIN_MG_DL
    return [bool(v) for v in near]


def _split(bg: FloatArray, sizes: Sequence[int]) -> list[FloatArray]:
    """The column blocks of *bg*, *sizes* columns each."""
    out = []
    start = 0
    for n in sizes:
        out.append(bg[:, start : start + n])
        start += n
    return out


def _horizon(
    forecasters: Sequence[GlucoseForecaster],
    members: Sequence[IntArray | None],
    inputs: Sequence[tuple[FloatArray, FloatArray]],
) -> tuple[FloatArray, list[int]]:
    """Model BG ``(horizon, sum of M_i)`` of particles *members[i]* (None: all) of each forecaster over the alert
    horizon, on copies of their states, in one kernel call, with the column counts ``M_i``. *inputs*: each one's
    inputs over the horizon (``_inputs``)."""
    if not forecasters:
        return np.empty((_ALERT_HORIZON_MIN, 0)), []
    xs, ms, ps, sizes = [], [], [], []
    for f, idx in zip(forecasters, members, strict=True):
        if idx is None:
            xs.append(f.x)
            ms.append(f.meal_state)
            ps.append(f.params)
        else:
            xs.append(f.x[idx])
            ms.append(f.meal_state[idx])
            ps.append(f.params[idx])
        sizes.append(xs[-1].shape[0])
    column = np.repeat(np.arange(len(forecasters), dtype=np.int64), sizes)
    bg = run_inputs(np.concatenate(xs), np.concatenate(ps), np.concatenate(ms),
                    _rows([m for m, _ in inputs]).T, _rows([i for _, i in inputs]).T,
                    meal_col=column, insulin_col=column, parallel=False)  # fmt: skip
    return bg, sizes


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
