"""PNG fan charts of occupancy forecasts (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from medtwin.hospital.forecast import OccupancyForecast
from medtwin.hospital.whatif import Comparison

__all__ = ["plot_fan_chart", "plot_scenario_fans"]


def plot_fan_chart(forecast: OccupancyForecast, path: str | Path, *, title: str = "") -> Path:
    """Write a fan chart (P10-P90 band, P50 line, beds) per unit of *forecast* to *path* (PNG)."""
    n = len(forecast.unit_names)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), sharex=True, squeeze=False)
    hours = range(1, forecast.p50.shape[1] + 1)
    for u, name in enumerate(forecast.unit_names):
        ax = axes[u][0]
        ax.fill_between(hours, forecast.p10[u], forecast.p90[u], alpha=0.3, label="P10-P90")
        ax.plot(hours, forecast.p50[u], lw=1.8, label="P50")
        ax.axhline(forecast.beds[u], color="crimson", ls="--", lw=1, label="beds (ED: spaces)")
        ax.set_ylabel(f"{name}\noccupied")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="upper right", fontsize=8, ncol=3)
    axes[-1][0].set_xlabel(f"hours after {forecast.start:%Y-%m-%d %H:%M} UTC")
    fig.suptitle(title or f"Occupancy forecast ({forecast.n_reps} replications)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_scenario_fans(comparison: Comparison, path: str | Path) -> Path:
    """Write per-unit occupancy fans (P10-P90, P50) of every scenario of *comparison* to *path*."""
    bands = comparison.occupancy_bands
    n = len(comparison.unit_names)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.4 * n), sharex=True, squeeze=False)
    hours = range(1, bands.shape[3] + 1)
    for u, name in enumerate(comparison.unit_names):
        ax = axes[u][0]
        for s, scen in enumerate(comparison.scenario_names):
            (line,) = ax.plot(hours, bands[s, 1, u], lw=1.2, label=scen)
            ax.fill_between(hours, bands[s, 0, u], bands[s, 2, u], alpha=0.2, color=line.get_color())
        ax.set_ylabel(f"{name}\noccupied")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="upper right", fontsize=8, ncol=min(4, len(comparison.scenario_names)))
    axes[-1][0].set_xlabel("hours after warm-up")
    fig.suptitle(f"Occupancy by scenario (P10-P90, P50; {comparison.values.shape[1]} replications)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
