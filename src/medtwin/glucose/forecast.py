"""Glucose forecasting on a person's twin: a particle filter over the posterior, updated at each CGM reading.

Particles are posterior draws (parameters) each with its own model state, meal bookkeeping and sensor error. On a
reading every particle is advanced to its time under the recorded insulin and announced carbohydrate (the
recorded-input kernel), the plasma and tissue glucose get multiplicative process noise (the model is not exact:
without it the filter would only select among deterministic trajectories and lose the patient within hours), and
the particle is weighted by the likelihood of the reading. The sensor error is an AR process carried by each
particle (e_k = rho e_(k-1) + w, rho = exp(-dt / tau), tau from the fit), so correlated CGM noise is not mistaken
for glucose movement; systematic resampling when the effective sample size falls below half. A forecast runs every
particle forward on the known inputs (the basal rate in force and any bolus or meal already entered for the
future) and reports median and 95 % prediction intervals of the CGM reading at each horizon (the model's glucose,
the remaining sensor error rho^h e and fresh noise).

Alert: when at least half the particles' weight predicts a CGM reading below 70 mg/dL within 30 minutes (the
particle's model glucose plus its carried sensor error rho^h e, which at h = 0 is the present reading), an ``alert``
Event ``glucose-low-predicted`` (medium; high below 54 mg/dL) is raised once and raised again only when its
severity rises; it resolves after three updates without the condition. The rule until 2026-12-07 compared the model
glucose alone with 70 mg/dL: on the 30 virtual patients (3 days, seed 1, 128 particles, twins not identified) it
alerted 16 of 66 simulated episodes (10 before onset) against 57 of 66 (30 before onset) for the predicted CGM, with
0.57 vs 0.77 false alerts per patient-day; the lower of the two per particle gave 55 of 66 with 1.13 false alerts
per patient-day (bench/twin_hypo_alerts.py, docs/living-twin.md: the figures on other seeds). The levels are the
consensus hypoglycaemia levels 1 and 2 (Battelino et al. 2019, doi:10.2337/dci19-0028); the 30-minute horizon and
the half-weight probability are medtwin's choices (Dexcom's "urgent low soon": 55 mg/dL within 20 minutes; the
variants compared are in the bench).

The alert horizon is screened (:data:`ALERT_SCREEN_MARGIN_MG_DL`): first only the sentinel particles, those at the
weighted quantiles :data:`ALERT_SENTINEL_QUANTILES` of the present model glucose, are run 30 minutes ahead; every
particle is run only when a sentinel comes within the margin of 70 mg/dL. Away from a low (most readings) that is
an eighth of the horizon's work at 32 particles, a thirty-second at 128. The decision can differ from running every
particle only when no sentinel comes within 20 mg/dL of 70 while half the weight goes below 70;
``alert_screen=False`` runs every particle on every reading; tests/twin/test_glucose_alerts.py compares the two, and
bench/twin_hypo_alerts.py on the 30 virtual patients (the same alerts in its runs of 2026-12-07).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from scipy.special import log_ndtr

from medtwin.errors import ValidationError
from medtwin.glucose._kernels import PARAM_ORDER
from medtwin.glucose._twin_kernels import IntArray, run_inputs
from medtwin.glucose.identify import SENSOR_LIMIT_SPLIT_MG_DL, Posterior
from medtwin.glucose.replay import posterior_draws
from medtwin.glucose.therapy_data import TherapyData
from medtwin.records import Event, utc
from medtwin.sim.model import FloatArray

__all__ = ["ALERT_SCREEN_MARGIN_MG_DL", "ALERT_SENTINEL_QUANTILES", "BOLUS_MEMORY_MIN", "Forecast", "GlucoseForecaster"]

_VG = PARAM_ORDER.index("Vg")
_PROCESS_NOISE_PER_SQRT_MIN = 0.004
"""Log-SD of the glucose process noise per sqrt(minute) (0.4 %/sqrt(min): ~2.2 % over 30 min), set on in silico
forecasts (docs/models/glucose_twin.md)."""
_HYPO_MG_DL = 70.0
_SEVERE_HYPO_MG_DL = 54.0
_ALERT_HORIZON_MIN = 30
_ALERT_PROBABILITY = 0.5
ALERT_SENTINEL_QUANTILES = (0.05, 0.2, 0.35, 0.5)
"""Weighted quantiles of the present model glucose whose particles screen the alert horizon (module docstring)."""
ALERT_SCREEN_MARGIN_MG_DL = 20.0
"""Every particle is run over the alert horizon when a sentinel's path comes below 70 mg/dL + this margin."""
BOLUS_MEMORY_MIN = 360.0
"""How long a bolus is kept after the filter's state has passed it: the insulin-on-board duration of the bolus
calculator (:func:`medtwin.glucose.advise.insulin_on_board`, 6 h), the one reader of past boluses. The model itself
has taken a bolus, a meal and a basal rate into its state once it has advanced past their minute
(:meth:`GlucoseForecaster.forget_applied_inputs`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Forecast:
    """CGM forecasts from *at*: per horizon (minutes) the median and 95 % interval, the per-minute path, and
    ``hypo_probability_30min``: the probability (particles' weight) of a CGM reading below 70 mg/dL within 30 minutes,
    each particle's predicted CGM being its model glucose plus its carried sensor error, as the predicted-low alert
    reckons it (the alert's probability at the same reading; until 2026-12-07 this field used model glucose)."""

    at: datetime
    horizons_min: tuple[int, ...]
    median_mg_dl: tuple[float, ...]
    lo95_mg_dl: tuple[float, ...]
    hi95_mg_dl: tuple[float, ...]
    path_median_mg_dl: FloatArray
    path_lo95_mg_dl: FloatArray
    path_hi95_mg_dl: FloatArray
    hypo_probability_30min: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (horizons only, not the path)."""
        return {
            "at": self.at.isoformat(), "hypo_probability_30min": round(self.hypo_probability_30min, 4),
            "horizons": [{"minutes": h, "median_mg_dl": round(m, 1), "lo95_mg_dl": round(lo, 1),
                          "hi95_mg_dl": round(hi, 1)} for h, m, lo, hi in
                         zip(self.horizons_min, self.median_mg_dl, self.lo95_mg_dl, self.hi95_mg_dl, strict=True)],
        }  # fmt: skip


def _weighted_quantiles(values: FloatArray, weights: FloatArray, qs: Sequence[float]) -> FloatArray:
    """Quantiles *qs* of each row of *values* ``(T, N)`` under particle *weights* ``(N,)``."""
    order = np.argsort(values, axis=1)
    sorted_v = np.take_along_axis(values, order, axis=1)
    cw = np.cumsum(weights[order], axis=1)
    cw /= cw[:, -1:]
    out = np.empty((len(qs), values.shape[0]))
    for i, q in enumerate(qs):
        idx = np.minimum(np.argmax(cw >= q, axis=1), values.shape[1] - 1)
        out[i] = sorted_v[np.arange(values.shape[0]), idx]
    return out


class GlucoseForecaster:
    """Tracks one person's glucose from CGM readings and forecasts it (see the module docstring).

    Start it with :meth:`from_data` (the recorded days, filtered reading by reading, bring the particles to the
    present) or directly at *start* from the basal state at the first reading. Times are timezone-aware.
    """

    def __init__(
        self,
        posterior: Posterior,
        start: datetime,
        *,
        particles: int = 256,
        seed: int = 1,
        basal_u_h: float | None = None,
        alert_screen: bool = True,
    ) -> None:
        self.posterior = posterior
        self.alert_screen = alert_screen
        self.start = utc(start, field_name="start")
        self.rng = np.random.default_rng(seed)
        theta = posterior_draws(posterior, particles, self.rng)
        if theta.shape[0] < particles:
            theta = theta[self.rng.choice(theta.shape[0], size=particles, replace=True)]
        self.params, _ = posterior.model().parameters(theta[:, :-1])
        self.x = np.zeros((particles, 13))
        self.meal_state = np.zeros((particles, 5))
        self.weights = np.full(particles, 1.0 / particles)
        self.sensor_error = np.zeros(particles)
        self.t_min = 0.0
        self.started = False
        self.bolus: list[tuple[float, float]] = []
        self.carbs: list[tuple[float, float]] = []
        self.basal: list[tuple[float, float]] = [(0.0, posterior.basal_u_h if basal_u_h is None else basal_u_h)]
        self.alert_level: str | None = None
        self._quiet_updates = 0
        self._last_reading_min: float | None = None
        self.last_cgm_mg_dl = float("nan")
        sensor_sd = max(posterior.residual_sd_mg_dl, 1.0)
        self.sensor_sd = float(sensor_sd)
        self.tau_min = float(posterior.residual_tau_min)

    @classmethod
    def from_data(
        cls, posterior: Posterior, data: TherapyData, *, particles: int = 256, seed: int = 1
    ) -> GlucoseForecaster:
        """A forecaster that has assimilated every reading of *data* (inputs included), ready at its last reading."""
        f = cls(posterior, data.start, particles=particles, seed=seed, basal_u_h=float(data.basal_u_h[0]))
        f.basal = list(zip(data.basal_t_min.tolist(), data.basal_u_h.tolist(), strict=True))
        f.bolus = list(zip(data.bolus_t_min.tolist(), data.bolus_u.tolist(), strict=True))
        f.carbs = list(zip(data.carbs_t_min.tolist(), data.carbs_g.tolist(), strict=True))
        for t, g, censored in zip(data.cgm_t_min, data.cgm_mg_dl, data.cgm_censored, strict=True):
            if censored:
                f._assimilate_limit(float(t), float(g))
            else:
                f._assimilate(float(t), float(g))
        return f

    # -- inputs ---------------------------------------------------------------------------------------------------
    def _minutes(self, at: datetime) -> float:
        return (utc(at) - self.start).total_seconds() / 60.0

    def add_bolus(self, at: datetime, units: float) -> None:
        """Record an insulin bolus (U) given at *at* (past or planned)."""
        if not 0 <= units <= 50:
            raise ValidationError(f"bolus {units} U is outside 0-50 U")
        self.bolus.append((self._minutes(at), float(units)))

    def add_carbs(self, at: datetime, grams: float) -> None:
        """Record carbohydrate (g) eaten at *at* (past or planned)."""
        if not 0 <= grams <= 400:
            raise ValidationError(f"carbohydrate {grams} g is outside 0-400 g")
        self.carbs.append((self._minutes(at), float(grams)))

    def set_basal(self, at: datetime, rate_u_h: float) -> None:
        """Basal rate (U/h) from *at* on."""
        if not 0 <= rate_u_h <= 35:
            raise ValidationError(f"basal rate {rate_u_h} U/h is outside 0-35 U/h")
        self.basal.append((self._minutes(at), float(rate_u_h)))
        self.basal.sort()

    def _inputs(self, t0: float, t1: float) -> tuple[FloatArray, FloatArray]:
        """Per-minute announced carbohydrate and insulin (U/min) over ``[t0, t1)`` (whole minutes)."""
        k0, k1 = math.floor(t0 + 1e-9), math.floor(t1 + 1e-9)
        n = max(k1 - k0, 0)
        if len(self.basal) == 1:  # one rate in force throughout (most calls: older rates are forgotten)
            insulin = np.empty(n)
            insulin.fill(self.basal[0][1] / 60.0)
        else:
            minutes = np.arange(k0, k1, dtype=np.float64)
            times = np.array([t for t, _ in self.basal])
            rates = np.array([r for _, r in self.basal])
            idx = np.maximum(np.searchsorted(times, minutes, side="right") - 1, 0)
            insulin = rates[idx] / 60.0
        meals = np.zeros(n)
        for events, out in ((self.bolus, insulin), (self.carbs, meals)):
            for t, v in events:
                k = math.floor(t + 1e-9) - k0
                if 0 <= k < n:
                    out[k] += v
        return meals, insulin

    def forget_applied_inputs(self) -> None:
        """Drop the inputs no computation can use any more, so a long stream costs per reading what a short one does:
        meals before the state's minute (every run starts there: the model state holds them), boluses older than
        :data:`BOLUS_MEMORY_MIN` (kept for the calculator's insulin on board), and basal rates before the one in
        force at the state's minute. Forecasts, alerts and advice are unchanged (tests/glucose/test_forecast.py)."""
        k0 = math.floor(self.t_min + 1e-9)
        if self.carbs and math.floor(min(t for t, _ in self.carbs) + 1e-9) < k0:
            self.carbs = [(t, v) for t, v in self.carbs if math.floor(t + 1e-9) >= k0]
        oldest_bolus = k0 - BOLUS_MEMORY_MIN - 1.0
        if self.bolus and min(t for t, _ in self.bolus) < oldest_bolus:
            self.bolus = [(t, v) for t, v in self.bolus if t >= oldest_bolus]
        # the rate of minute m is the last entry at or before m (_inputs): the last at or before k0 stays
        if len(self.basal) > 1 and self.basal[1][0] <= k0:
            times = [t for t, _ in self.basal]
            in_force = int(np.searchsorted(times, float(k0), side="right")) - 1
            self.basal = self.basal[in_force:]

    # -- filtering ------------------------------------------------------------------------------------------------
    def _advance(self, t_new: float) -> None:
        if t_new <= self.t_min:
            return
        meals, insulin = self._inputs(self.t_min, t_new)
        if meals.size:
            run_inputs(self.x, self.params, self.meal_state, meals, insulin)
            self._shock(float(meals.size))
        self.t_min = float(math.floor(t_new + 1e-9))
        self.forget_applied_inputs()

    def _shock(self, minutes: float) -> None:
        """The process noise of *minutes* of simulation, drawn from this forecaster's own generator."""
        shock = np.exp(self.rng.normal(0.0, _PROCESS_NOISE_PER_SQRT_MIN * math.sqrt(minutes), self.x.shape[0]))
        self.x[:, 3] *= shock
        self.x[:, 4] *= shock
        self.x[:, 12] *= shock

    def _assimilate(self, t: float, cgm: float) -> None:
        dt = self._begin(t, cgm)
        self._advance(t)
        self._weigh(t, dt, cgm)

    def _assimilate_limit(self, t: float, limit: float, *, below: bool | None = None) -> None:
        """A sensor-limit reading: a Low (*below*) or a High; None: a Low when under the middle of the range."""
        dt = self._begin(t, limit)
        self._advance(t)
        self._weigh_limit(t, dt, limit, limit < SENSOR_LIMIT_SPLIT_MG_DL if below is None else below)

    def _begin(self, t: float, cgm: float) -> float:
        """Before a reading at *t*: start the state at the first one, refuse one older than the state; the minutes
        since the previous reading (inf for the first)."""
        if not self.started:  # nothing is known before the first reading: start from the basal state at it
            self.t_min = float(math.floor(t + 1e-9))
            self.x = self.posterior.model().initial_state(self.params, cgm)
            self.started = True
        elif t < self.t_min:
            raise ValidationError(f"reading at {t:.1f} min is older than the twin's state ({self.t_min:.1f} min)")
        return math.inf if self._last_reading_min is None else max(t - self._last_reading_min, 1.0)

    def _weigh(self, t: float, dt: float, cgm: float) -> None:
        """After the advance to *t*: weight the particles by the reading (AR(1) sensor error), resample if the
        effective sample size fell below half."""
        bg = self.x[:, 12] / self.params[:, _VG]
        rho = math.exp(-dt / self.tau_min)
        innovation_sd = self.sensor_sd * math.sqrt(1.0 - rho * rho)
        resid = cgm - bg - rho * self.sensor_error
        logw = np.log(self.weights) - 0.5 * (resid / innovation_sd) ** 2
        self.sensor_error = cgm - bg
        self._reweigh(logw, t, cgm)

    def _weigh_limit(self, t: float, dt: float, limit: float, below: bool) -> None:
        """After the advance to *t*: weight the particles by a sensor-limit reading, the probability that their CGM
        (model glucose plus the AR(1) sensor error) lies at or below *limit* (a Low; *below* False: at or above, a
        High). Each particle's sensor error becomes its expectation given the bound (the mean of its normal
        innovation truncated at the limit), as a numeric reading sets it to the reading minus the model glucose."""
        bg = self.x[:, 12] / self.params[:, _VG]
        rho = math.exp(-dt / self.tau_min)
        innovation_sd = self.sensor_sd * math.sqrt(1.0 - rho * rho)
        z = (limit - bg - rho * self.sensor_error) / innovation_sd
        side = z if below else -z
        log_p = log_ndtr(side)
        mills = np.exp(-0.5 * side * side - 0.5 * math.log(2.0 * math.pi) - log_p)  # phi / Phi of the side
        self.sensor_error = rho * self.sensor_error + (-innovation_sd if below else innovation_sd) * mills
        self._reweigh(np.log(self.weights) + log_p, t, limit)

    def _reweigh(self, logw: FloatArray, t: float, reading: float) -> None:
        """The particles' new weights from their log weights *logw* after the reading at *t*; resample if the
        effective sample size fell below half."""
        logw -= logw.max()
        w = np.exp(logw)
        self.weights = w / w.sum()
        self._last_reading_min = t
        self.last_cgm_mg_dl = float(reading)
        if 1.0 / np.sum(self.weights**2) < 0.5 * self.weights.size:
            self._resample()

    def _resample(self) -> None:
        n = self.weights.size
        positions = (self.rng.random() + np.arange(n)) / n
        idx = np.minimum(np.searchsorted(np.cumsum(self.weights), positions), n - 1)
        self.x = self.x[idx]  # fancy indexing copies
        self.params = self.params[idx]
        self.meal_state = self.meal_state[idx]
        self.sensor_error = self.sensor_error[idx]
        self.weights = np.empty(n)  # np.full's Python wrapper costs more than the fill, on every resampling
        self.weights.fill(1.0 / n)

    def update(self, at: datetime, cgm_mg_dl: float) -> list[Event]:
        """Assimilate a CGM reading; return the alert events it causes (a predicted low, or its resolution)."""
        if not 20.0 <= cgm_mg_dl <= 600.0:
            raise ValidationError(f"CGM reading {cgm_mg_dl} mg/dL at {at.isoformat()} is outside 20-600 mg/dL")
        self._assimilate(self._minutes(at), float(cgm_mg_dl))
        return self._check_alert()

    def update_limit(self, at: datetime, limit_mg_dl: float, *, below: bool | None = None) -> list[Event]:
        """Assimilate a sensor-limit reading: a CGM's Low (*below*: the glucose at or below *limit_mg_dl*, e.g. 40)
        or High (at or above it, e.g. 400; *below* None: a Low when under the middle of the range,
        :data:`~medtwin.glucose.identify.SENSOR_LIMIT_SPLIT_MG_DL`); return the alert events it causes. A Low moves
        the particles to the glucose under the limit, so the predicted-low alert follows (skipping it, the twin would
        not know)."""
        if not 20.0 <= limit_mg_dl <= 600.0:
            raise ValidationError(f"CGM limit {limit_mg_dl} mg/dL at {at.isoformat()} is outside 20-600 mg/dL")
        self._assimilate_limit(self._minutes(at), float(limit_mg_dl), below=below)
        return self._check_alert()

    # -- forecasting ----------------------------------------------------------------------------------------------
    def simulate_ahead(
        self, minutes: int, *, boluses_u: Sequence[float] | FloatArray = (0.0,), carbs_g: float = 0.0
    ) -> FloatArray:
        """Model BG ``(minutes + 1, len(boluses_u), N)`` of every particle from the last reading for each extra
        bolus given now, with *carbs_g* eaten now; the filter's state is left unchanged."""
        doses = np.asarray(boluses_u, dtype=np.float64)
        n = self.weights.size
        meals, insulin = self._inputs(self.t_min, self.t_min + minutes)
        if meals.size:
            meals[0] += carbs_g
        per_member = np.repeat(insulin[:, None], doses.size * n, axis=1)
        if per_member.shape[0]:
            per_member[0] += np.repeat(doses, n)
        x = np.tile(self.x, (doses.size, 1))
        bg = run_inputs(x, np.tile(self.params, (doses.size, 1)), np.tile(self.meal_state, (doses.size, 1)),
                        meals, per_member)  # fmt: skip
        now = np.tile(self.x[:, 12] / self.params[:, _VG], doses.size)
        return np.concatenate([now[None, :], bg], axis=0).reshape(minutes + 1, doses.size, n)

    def _paths(self, minutes: int) -> FloatArray:
        """Model BG ``(minutes + 1, N)`` of every particle from now on the known inputs."""
        return self.simulate_ahead(minutes)[:, 0, :]

    def forecast(self, horizons_min: Sequence[int] = (30, 60, 120)) -> Forecast:
        """CGM forecasts at *horizons_min* from the last reading."""
        if not self.started:
            raise ValidationError("forecast: no CGM reading assimilated yet")
        horizons = tuple(int(h) for h in horizons_min)
        if not horizons or min(horizons) < 1 or max(horizons) > 24 * 60:
            raise ValidationError(f"forecast horizons {horizons} must be 1-1440 minutes")
        bg = self._paths(max(horizons))
        h = np.arange(bg.shape[0], dtype=np.float64)[:, None]
        rho = np.exp(-h / self.tau_min)
        noise_sd = self.sensor_sd * np.sqrt(1.0 - rho**2)
        cgm = bg + rho * self.sensor_error + noise_sd * self.rng.standard_normal(bg.shape)
        q = _weighted_quantiles(cgm, self.weights, (0.5, 0.025, 0.975))
        low = self.cgm_paths(bg[: _ALERT_HORIZON_MIN + 1]).min(axis=0) < _HYPO_MG_DL  # as the alert reckons it
        return Forecast(
            at=self.start + timedelta(minutes=self.t_min), horizons_min=horizons,
            median_mg_dl=tuple(float(q[0, k]) for k in horizons), lo95_mg_dl=tuple(float(q[1, k]) for k in horizons),
            hi95_mg_dl=tuple(float(q[2, k]) for k in horizons), path_median_mg_dl=q[0], path_lo95_mg_dl=q[1],
            path_hi95_mg_dl=q[2], hypo_probability_30min=float(np.sum(self.weights[low])),
        )  # fmt: skip

    def sentinels(self) -> IntArray:
        """Indices of the particles at the weighted quantiles :data:`ALERT_SENTINEL_QUANTILES` of the present model
        glucose (distinct, ascending)."""
        bg = self.x[:, 12] / self.params[:, _VG]
        order = np.argsort(bg, kind="stable")
        cw = np.cumsum(self.weights[order])
        pos = np.minimum(np.searchsorted(cw, np.asarray(ALERT_SENTINEL_QUANTILES) * cw[-1]), order.size - 1)
        return np.unique(order[pos])

    def cgm_paths(self, bg: FloatArray, members: IntArray | None = None) -> FloatArray:
        """The CGM each particle predicts (its model glucose plus its carried sensor error rho^h e) at each minute *h*
        of the model glucose paths *bg* ``(minutes + 1, N)`` (row 0: now, where it is the reading itself; *members*:
        the particles of *bg*'s columns, None: all): what the alert compares with 70 and 54 mg/dL."""
        e = self.sensor_error if members is None else self.sensor_error[members]
        rho = np.exp(-np.arange(bg.shape[0], dtype=np.float64) / self.tau_min)
        return bg + rho[:, None] * e

    def needs_full_horizon(self, members: IntArray, sentinel_bg: FloatArray) -> bool:
        """Whether the sentinels' (*members*) model BG paths *sentinel_bg* ``(minutes, S)`` come near enough to 70 mg/dL
        that every particle must be run over the alert horizon."""
        if not self.alert_screen:
            return True
        now = self.x[members, 12] / self.params[members, _VG]
        low = self.cgm_paths(np.concatenate([now[None, :], sentinel_bg], axis=0), members)
        return float(np.min(low)) < _HYPO_MG_DL + ALERT_SCREEN_MARGIN_MG_DL

    def _run_members(self, idx: IntArray, minutes: int) -> FloatArray:
        """Model BG ``(minutes, len(idx))`` of the particles *idx* from now on the known inputs (state unchanged)."""
        meals, insulin = self._inputs(self.t_min, self.t_min + minutes)
        return run_inputs(self.x[idx], self.params[idx], self.meal_state[idx], meals, insulin)

    def _check_alert(self) -> list[Event]:
        if self.alert_screen:
            members = self.sentinels()
            if not self.needs_full_horizon(members, self._run_members(members, _ALERT_HORIZON_MIN)):
                return self._alert_from_probabilities(0.0, 0.0)
        return self._alert_from_paths(self._paths(_ALERT_HORIZON_MIN))

    def _alert_from_paths(self, bg: FloatArray) -> list[Event]:
        """The alert events for the particles' model BG paths *bg* ``(minutes + 1, N)`` over the alert horizon (the
        batched filter of :mod:`medtwin.glucose.stream` computes the paths of many people in one call)."""
        low = self.cgm_paths(bg).min(axis=0)
        p70 = float(np.sum(self.weights[low < _HYPO_MG_DL]))
        p54 = float(np.sum(self.weights[low < _SEVERE_HYPO_MG_DL]))
        return self._alert_from_probabilities(p70, p54)

    def _alert_from_probabilities(self, p70: float, p54: float) -> list[Event]:
        """The alert events for the weights of the particles below 70 (*p70*) and 54 mg/dL (*p54*) within the horizon
        (0 and 0 when the screen found no sentinel near a low)."""
        level = "high" if p54 >= _ALERT_PROBABILITY else "medium" if p70 >= _ALERT_PROBABILITY else None
        at = self.start + timedelta(minutes=self.t_min)
        if level is None:
            if self.alert_level is None:
                return []
            self._quiet_updates += 1
            if self._quiet_updates < 3:
                return []
            self.alert_level = None
            return [Event(kind="alert", code="glucose-low-predicted", time=at, status="resolved", severity="low",
                          message="predicted low glucose no longer expected", source="twin:glucose")]  # fmt: skip
        self._quiet_updates = 0
        if self.alert_level is not None and (self.alert_level == level or level == "medium"):
            return []
        self.alert_level = level
        threshold = _SEVERE_HYPO_MG_DL if level == "high" else _HYPO_MG_DL
        p = p54 if level == "high" else p70
        return [Event(kind="alert", code="glucose-low-predicted", time=at, severity=level, source="twin:glucose",
                      message=f"glucose below {threshold:.0f} mg/dL predicted within {_ALERT_HORIZON_MIN} min "
                      f"(probability {p:.0%})", data={"probability": p, "threshold_mg_dl": threshold,
                                                      "horizon_min": _ALERT_HORIZON_MIN})]  # fmt: skip

    # -- persistence ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-ready filter state (particles, inputs, alert); the posterior is saved separately."""
        return {
            "start": self.start.isoformat(), "t_min": self.t_min, "started": self.started,
            "last_reading_min": self._last_reading_min, "last_cgm_mg_dl": self.last_cgm_mg_dl,
            "params": self.params.tolist(),
            "x": self.x.tolist(), "meal_state": self.meal_state.tolist(), "weights": self.weights.tolist(),
            "sensor_error": self.sensor_error.tolist(), "bolus": self.bolus, "carbs": self.carbs, "basal": self.basal,
            "alert_level": self.alert_level, "quiet_updates": self._quiet_updates,
            "rng": self.rng.bit_generator.state,
        }  # fmt: skip

    @classmethod
    def restore(cls, posterior: Posterior, state: dict[str, Any]) -> GlucoseForecaster:
        """A forecaster from :meth:`state` (with the posterior it was made from)."""
        n = len(state["weights"])
        f = cls(posterior, datetime.fromisoformat(state["start"]), particles=n)
        f.t_min = float(state["t_min"])
        f.started = bool(state["started"])
        last = state.get("last_reading_min")
        f._last_reading_min = None if last is None else float(last)
        f.last_cgm_mg_dl = float(state.get("last_cgm_mg_dl", "nan"))
        f.params = np.asarray(state["params"], dtype=np.float64)
        f.x = np.asarray(state["x"], dtype=np.float64)
        f.meal_state = np.asarray(state["meal_state"], dtype=np.float64)
        f.weights = np.asarray(state["weights"], dtype=np.float64)
        f.sensor_error = np.asarray(state["sensor_error"], dtype=np.float64)
        f.bolus = [(float(t), float(v)) for t, v in state["bolus"]]
        f.carbs = [(float(t), float(v)) for t, v in state["carbs"]]
        f.basal = [(float(t), float(v)) for t, v in state["basal"]]
        f.alert_level = state.get("alert_level")
        f._quiet_updates = int(state.get("quiet_updates", 0))
        f.rng.bit_generator.state = state["rng"]
        return f
