"""PNG plots of the personal twin: the fit over the data, replays under other therapies, a forecast.

matplotlib's object API only (no pyplot state), as :mod:`medtwin.glucose.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medtwin.glucose.data_quality import DataQuality
from medtwin.glucose.forecast import Forecast
from medtwin.glucose.replay import ReplayResult
from medtwin.glucose.therapy_data import TherapyData
from medtwin.sim.model import FloatArray

__all__ = ["plot_fit", "plot_forecast", "plot_replay"]

_COLOURS = ("tab:blue", "tab:red", "tab:purple", "tab:brown", "tab:olive")


def _inputs_panel(ax: Any, data: TherapyData) -> None:
    ax.vlines(data.carbs_t_min / 60.0, 0.0, data.carbs_g, color="tab:orange", lw=2)
    twin = ax.twinx()
    twin.vlines(data.bolus_t_min / 60.0, 0.0, data.bolus_u, color="tab:purple", lw=2)
    ax.set_ylabel("CHO (g), orange")
    twin.set_ylabel("bolus (U), purple")
    ax.set_xlabel("time from the first reading (h)")


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def plot_fit(path: str | Path, data: TherapyData, recorded: ReplayResult, quality: DataQuality | None = None) -> Path:
    """CGM readings (left out of the fit in grey), the twin's median and 95 % band on the recorded therapy."""
    fig = Figure(figsize=(10, 6))
    ax, ax_in = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    t = np.arange(recorded.median_mg_dl.size) / 60.0
    ax.axhspan(70, 180, color="tab:green", alpha=0.1, lw=0)
    ax.fill_between(t, recorded.lo95_mg_dl, recorded.hi95_mg_dl, color="tab:blue", alpha=0.25, label="twin 95 %")
    ax.plot(t, recorded.median_mg_dl, color="tab:blue", lw=1.2, label="twin median")
    used = np.ones(data.cgm_t_min.size, dtype=bool) if quality is None else quality.fit_mask > 0
    ax.plot(data.cgm_t_min[used] / 60.0, data.cgm_mg_dl[used], ".", ms=3, color="black", label="CGM")
    if not np.all(used):
        ax.plot(data.cgm_t_min[~used] / 60.0, data.cgm_mg_dl[~used], "x", ms=4, color="grey", label="not fitted")
    ax.set_ylabel("glucose (mg/dL)")
    ax.set_title(f"twin fit: {data.source}")
    ax.legend(loc="upper right", fontsize=8)
    _inputs_panel(ax_in, data)
    return _save(fig, path)


def plot_replay(path: str | Path, data: TherapyData, results: Sequence[ReplayResult]) -> Path:
    """Median and 95 % band of each therapy over the recorded days, with each one's time in range."""
    fig = Figure(figsize=(10, 6))
    ax, ax_in = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.axhspan(70, 180, color="tab:green", alpha=0.1, lw=0)
    for k, r in enumerate(results):
        t = np.arange(r.median_mg_dl.size) / 60.0
        c = _COLOURS[k % len(_COLOURS)]
        tir = r.metrics["tir_pct"]
        ax.fill_between(t, r.lo95_mg_dl, r.hi95_mg_dl, color=c, alpha=0.15, lw=0)
        label = f"{r.therapy.name}: TIR {tir[0]:.0f} % [{tir[1]:.0f}-{tir[2]:.0f}]"
        ax.plot(t, r.median_mg_dl, color=c, lw=1.2, label=label)
    ax.set_ylabel("glucose (mg/dL)")
    ax.set_title("replay under other therapies (median, 95 % band)")
    ax.legend(loc="upper right", fontsize=8)
    _inputs_panel(ax_in, data)
    return _save(fig, path)


def plot_forecast(path: str | Path, recent_t_min: FloatArray, recent_cgm: FloatArray, forecast: Forecast,
                  now_min: float) -> Path:  # fmt: skip
    """The last readings and the forecast path with its 95 % interval (minutes relative to now)."""
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.axhspan(70, 180, color="tab:green", alpha=0.1, lw=0)
    ax.plot(np.asarray(recent_t_min) - now_min, recent_cgm, ".", color="black", ms=4, label="CGM")
    h = np.arange(forecast.path_median_mg_dl.size)
    ax.fill_between(h, forecast.path_lo95_mg_dl, forecast.path_hi95_mg_dl, color="tab:blue", alpha=0.25, label="95 %")
    ax.plot(h, forecast.path_median_mg_dl, color="tab:blue", label="forecast")
    ax.axhline(70, color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel("minutes from the last reading")
    ax.set_ylabel("glucose (mg/dL)")
    p = forecast.hypo_probability_30min
    ax.set_title(f"forecast at {forecast.at:%Y-%m-%d %H:%M} UTC; P(<70 mg/dL within 30 min) {p:.0%}")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)
