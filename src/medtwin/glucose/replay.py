"""Replay recorded days on a person's twin under other therapies, with the posterior's uncertainty band and the
consensus CGM metrics side by side.

Every posterior draw is simulated over the recorded days (meals as recorded) under each therapy
(:mod:`medtwin.glucose.therapy`): open-loop changes through the recorded-input kernel, controllers in closed loop
with the draws as a cohort (noise-free Dexcom-rate sensor, Insulet pump, as the simulator). The band is pointwise:
the 2.5-97.5 % quantiles of draw + model error, the error Gaussian with the SD of the fit's residuals
(``Posterior.residual_sd_mg_dl``). Sensor noise and model error cannot be told apart in the data, and fitting 10
parameters to strongly autocorrelated CGM noise absorbs part of it (the residual SD comes out below the sensor's own
noise), so "residual minus sensor noise" would leave nothing for the parameters the twin holds fixed and the
model's simplifications: the band for true glucose is conservative by at most the sensor's noise. Metrics are
computed per draw (without the model error) and reported as median and 95 % interval (Battelino 2019 consensus
ranges, see :mod:`medtwin.glucose.metrics`).

``zero_pct``: the share of draws whose glucose reaches 0 mg/dL under the therapy. The 2008 model has no
counter-regulation and, as simglucose, stops a glucose state once it is below zero, so such a draw stays at 0 for the
rest of the days: the twin predicts severe hypoglycaemia there, and nothing about the hours after it (the metrics of
those draws count the rest of the days as below range).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medtwin.errors import ValidationError
from medtwin.glucose._kernels import PARAM_ORDER
from medtwin.glucose.controllers import BasalBolusController, BasalOnlyController, Controller
from medtwin.glucose.devices import CGMSensor, InsulinPump, pump_spec, sensor_spec
from medtwin.glucose.identify import Posterior
from medtwin.glucose.metrics import summary_metrics_batch
from medtwin.glucose.patients import Cohort
from medtwin.glucose.simulation import simulate_closed_loop
from medtwin.glucose.therapy import Therapy, apply_therapy, with_meals
from medtwin.glucose.therapy_data import TherapyData
from medtwin.sim.model import FloatArray

__all__ = ["METRICS", "ReplayResult", "posterior_draws", "replay"]

METRICS = ("mean_mg_dl", "cv_pct", "gmi_pct", "tbr_level2_pct", "tbr_level1_pct", "tir_pct", "tar_level1_pct",
           "tar_level2_pct", "lbgi", "hbgi")  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayResult:
    """BG quantiles per minute (index = minutes from the data start) and metrics (median, lo95, hi95) of one
    therapy; ``draws`` holds the per-draw BG ``(minutes + 1, n)``."""

    therapy: Therapy
    median_mg_dl: FloatArray
    lo95_mg_dl: FloatArray
    hi95_mg_dl: FloatArray
    draws: FloatArray
    metrics: dict[str, tuple[float, float, float]]
    insulin_u: tuple[float, float, float]
    """Total insulin delivered over the days (median, lo95, hi95)."""
    zero_pct: float = 0.0
    """Share of draws (%) whose glucose reaches 0 mg/dL (see the module docstring)."""

    def to_dict(self, *, every_min: int = 5) -> dict[str, Any]:
        """JSON-ready form with the band every *every_min* minutes."""
        idx = np.arange(0, self.median_mg_dl.size, every_min)
        return {
            "therapy": self.therapy.to_dict(), "t_min": idx.tolist(),
            "median_mg_dl": self.median_mg_dl[idx].round(2).tolist(),
            "lo95_mg_dl": self.lo95_mg_dl[idx].round(2).tolist(), "hi95_mg_dl": self.hi95_mg_dl[idx].round(2).tolist(),
            "metrics": {k: {"median": v[0], "lo95": v[1], "hi95": v[2]} for k, v in self.metrics.items()},
            "insulin_u": {"median": self.insulin_u[0], "lo95": self.insulin_u[1], "hi95": self.insulin_u[2]},
            "zero_pct": self.zero_pct,
        }  # fmt: skip


def posterior_draws(posterior: Posterior, n: int, rng: np.random.Generator) -> FloatArray:
    """*n* rows of the posterior draws (all of them when *n* is larger), chosen at random."""
    k = posterior.draws.shape[0]
    return posterior.draws if n >= k else posterior.draws[rng.choice(k, size=n, replace=False)]


def _cohort(posterior: Posterior, theta: FloatArray, therapy: Therapy) -> Cohort:
    model = posterior.model()
    p, _ = model.parameters(theta[:, :-1])
    x0 = model.initial_state(p, np.exp(theta[:, -1]))
    n = theta.shape[0]
    return Cohort(
        names=tuple(f"draw#{i}" for i in range(n)), params={k: p[:, j].copy() for j, k in enumerate(PARAM_ORDER)},
        x0=x0, cr_g_per_u=np.full(n, therapy.cr_g_per_u or 1.0),
        cf_mg_dl_per_u=np.full(n, therapy.cf_mg_dl_per_u or 1.0),
    )  # fmt: skip


def _closed_loop(
    posterior: Posterior, theta: FloatArray, data: TherapyData, therapy: Therapy
) -> tuple[FloatArray, FloatArray]:
    cohort = _cohort(posterior, theta, therapy)
    minutes = int(np.ceil(data.duration_min))
    meals, _ = data.minute_inputs(minutes)
    controller: Controller
    if therapy.controller == "basal-bolus":
        controller = BasalBolusController(
            basal_u_min=cohort.basal_u_per_min, cr_g_per_u=cohort.cr_g_per_u, cf_mg_dl_per_u=cohort.cf_mg_dl_per_u,
            target_mg_dl=therapy.target_mg_dl,
        )  # fmt: skip
    else:
        controller = BasalOnlyController(cohort.basal_u_per_min)
    result = simulate_closed_loop(
        cohort, minutes=minutes, meals=np.ascontiguousarray(np.tile(meals[:, None], (1, cohort.size))),
        controller=controller, sensor=CGMSensor(sensor_spec("Dexcom"), [0] * cohort.size, noise=False),
        pump=InsulinPump(pump_spec("Insulet")),
    )  # fmt: skip
    return result.bg_mg_dl, result.insulin_u_min.sum(axis=0)


def _summarise(therapy: Therapy, bg: FloatArray, insulin: FloatArray, error_sd: float,
               rng: np.random.Generator) -> ReplayResult:  # fmt: skip
    noisy = bg + rng.normal(0.0, error_sd, bg.shape) if error_sd > 0 else bg
    lo, hi = np.percentile(noisy, [2.5, 97.5], axis=1)
    per_draw = summary_metrics_batch(bg[1:])
    metrics = {}
    for k in METRICS:
        q = np.percentile(per_draw[k], [50.0, 2.5, 97.5])
        metrics[k] = (float(q[0]), float(q[1]), float(q[2]))
    iq = np.percentile(insulin, [50.0, 2.5, 97.5])
    return ReplayResult(
        therapy=therapy, median_mg_dl=np.median(bg, axis=1), lo95_mg_dl=lo, hi95_mg_dl=hi, draws=bg,
        metrics=metrics, insulin_u=(float(iq[0]), float(iq[1]), float(iq[2])),
        zero_pct=float(100.0 * np.mean(np.any(bg[1:] <= 0.0, axis=0))),
    )  # fmt: skip


def replay(
    posterior: Posterior,
    data: TherapyData,
    therapies: Sequence[Therapy],
    *,
    draws: int = 200,
    seed: int = 1,
) -> list[ReplayResult]:
    """Replay the recorded *data* under each of *therapies* (see the module docstring)."""
    if not therapies:
        raise ValidationError("replay: give at least one therapy (Therapy() is the recorded one)")
    rng = np.random.default_rng(seed)
    theta = posterior_draws(posterior, draws, rng)
    model = posterior.model()
    out = []
    for therapy in therapies:
        if therapy.closed_loop:
            bg, insulin = _closed_loop(posterior, theta, with_meals(data, therapy), therapy)
        else:
            changed = apply_therapy(data, therapy)
            bg = model.simulate(theta[:, :-1], changed, initial_glucose_mg_dl=np.exp(theta[:, -1]))
            _, per_minute = changed.minute_inputs(bg.shape[0] - 1)
            insulin = np.full(theta.shape[0], per_minute.sum())
        out.append(_summarise(therapy, bg, insulin, posterior.residual_sd_mg_dl, rng))
    return out
