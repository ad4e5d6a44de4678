"""PNG plots of glucose runs: a trace with meals and insulin, and the ambulatory glucose profile (AGP).

Figures are built with matplotlib's object API (no pyplot state, no global backend switch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from medtwin.errors import ValidationError

__all__ = ["plot_agp", "plot_trace"]


def plot_trace(
    path: str | Path,
    t_min: ArrayLike,
    bg_mg_dl: ArrayLike,
    *,
    cgm_mg_dl: ArrayLike | None = None,
    cho_g: ArrayLike | None = None,
    insulin_u_min: ArrayLike | None = None,
    title: str = "",
) -> Path:
    """Write a 3-panel PNG: glucose (with the 70-180 mg/dL band), carbohydrate and insulin against hours."""
    hours = np.asarray(t_min, dtype=np.float64) / 60.0
    fig = Figure(figsize=(9, 6))
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1, 1]})
    ax = axes[0]
    ax.axhspan(70, 180, color="tab:green", alpha=0.12, lw=0)
    ax.plot(hours, np.asarray(bg_mg_dl), label="BG (mg/dL)")
    if cgm_mg_dl is not None:
        ax.plot(hours, np.asarray(cgm_mg_dl), label="CGM (mg/dL)", alpha=0.7)
    ax.set_ylabel("glucose (mg/dL)")
    ax.legend(loc="upper right")
    ax.set_title(title)
    if cho_g is not None:
        c = np.asarray(cho_g, dtype=np.float64)
        eaten = np.flatnonzero(c > 0)
        axes[1].vlines(hours[eaten], 0.0, c[eaten], color="tab:orange", lw=2)
        axes[1].set_ylim(0.0, max(1.0, float(c.max()) * 1.15))
    axes[1].set_ylabel("CHO (g)")
    if insulin_u_min is not None:
        ins = np.asarray(insulin_u_min, dtype=np.float64)
        axes[2].step(hours[: ins.size], ins, where="post", color="tab:purple")
    axes[2].set_ylabel("insulin (U/min)")
    axes[2].set_xlabel("time (h)")
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def plot_agp(
    path: str | Path, t_min: ArrayLike, glucose_mg_dl: ArrayLike, *, bin_min: float = 15.0, title: str = ""
) -> Path:
    """Write an AGP PNG: median, 25-75 % and 5-95 % bands of glucose by time of day.

    *glucose_mg_dl* is ``(n_times,)`` or ``(n_times, n_traces)`` (a cohort or a multi-day run) at *t_min*
    (minutes from a midnight).
    """
    t = np.asarray(t_min, dtype=np.float64)
    g = np.asarray(glucose_mg_dl, dtype=np.float64)
    if g.ndim == 1:
        g = g[:, None]
    if g.shape[0] != t.size:
        raise ValidationError(f"AGP: {t.size} times but glucose has {g.shape[0]} rows")
    tod = np.mod(t, 1440.0)
    bins = np.floor(tod / bin_min).astype(int)
    n_bins = int(np.ceil(1440.0 / bin_min))
    centers, pcts = [], []
    for k in range(n_bins):
        vals = g[bins == k].ravel()
        vals = vals[np.isfinite(vals)]
        if vals.size:
            centers.append((k + 0.5) * bin_min / 60.0)
            pcts.append(np.percentile(vals, [5, 25, 50, 75, 95]))
    if not pcts:
        raise ValidationError("AGP: no finite glucose values")
    p = np.array(pcts)
    h = np.array(centers)
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    ax.axhspan(70, 180, color="tab:green", alpha=0.12, lw=0)
    ax.fill_between(h, p[:, 0], p[:, 4], color="tab:blue", alpha=0.15, label="5-95 %")
    ax.fill_between(h, p[:, 1], p[:, 3], color="tab:blue", alpha=0.35, label="25-75 %")
    ax.plot(h, p[:, 2], color="tab:blue", label="median")
    ax.set_xlim(0, 24)
    ax.set_xlabel("time of day (h)")
    ax.set_ylabel("glucose (mg/dL)")
    ax.set_title(title or "ambulatory glucose profile")
    ax.legend(loc="upper right")
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out
