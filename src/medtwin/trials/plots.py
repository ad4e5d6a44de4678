"""PNG figures of a virtual trial: the CONSORT-style flow, a forest plot of effects, power curves.

Figures are built with matplotlib's object API (no pyplot state, no global backend switch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from medtwin.trials.cohort import FlowStep
from medtwin.trials.power import PowerStudy
from medtwin.trials.trial import Comparison

__all__ = ["plot_consort", "plot_forest", "plot_power"]

_METHOD_LABELS = {"difference": "difference in means", "ancova": "ANCOVA (baseline)", "procova": "PROCOVA (twin)"}
_METHOD_COLOURS = {"difference": "tab:gray", "ancova": "tab:blue", "procova": "tab:orange"}


def _save(fig: Figure, path: str | Path, title: str) -> Path:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out


def plot_forest(path: str | Path, comparisons: Sequence[Comparison], *, title: str = "") -> Path:
    """One panel per endpoint (own scale): each method's estimate and confidence interval, a line at no effect."""
    endpoints = list(dict.fromkeys(c.endpoint for c in comparisons))
    rows_per = [sum(len(c.estimates) for c in comparisons if c.endpoint == e) for e in endpoints]
    fig = Figure(figsize=(8, 1.0 + 0.45 * sum(rows_per) + 0.5 * len(endpoints)))
    axes = fig.subplots(len(endpoints), 1, squeeze=False, gridspec_kw={"height_ratios": rows_per})[:, 0]
    for ax, endpoint in zip(axes, endpoints, strict=True):
        labels: list[str] = []
        y = 0
        for c in (c for c in comparisons if c.endpoint == endpoint):
            for e in c.estimates:
                colour = _METHOD_COLOURS.get(e.method, "k")
                ax.plot([e.ci_low, e.ci_high], [y, y], color=colour, lw=2)
                ax.plot([e.estimate], [y], "o", color=colour)
                labels.append(f"{c.arm} vs {c.control}: {_METHOD_LABELS.get(e.method, e.method)}")
                y -= 1
        ax.axvline(0.0, color="k", lw=0.8, ls="--")
        ax.set_yticks(np.arange(0, y, -1), labels, fontsize=8)
        ax.set_ylim(y + 0.5, 0.5)
        ax.set_title(endpoint, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("effect (treated - control), with confidence interval")
    return _save(fig, path, title)


def plot_power(path: str | Path, studies: Sequence[PowerStudy], *, target: float = 0.8, title: str = "") -> Path:
    """Power against trial size per method: simulated (points, +/- 2 Monte Carlo SE) and by formula (lines)."""
    fig = Figure(figsize=(7, 4.2 * len(studies)))
    axes = fig.subplots(len(studies), 1, squeeze=False)[:, 0]
    for ax, s in zip(axes, studies, strict=True):
        for c in s.curves:
            colour = _METHOD_COLOURS.get(c.method, "k")
            sizes = np.asarray(c.sizes)
            ax.plot(
                sizes, c.analytic, color=colour, lw=1.5, label=f"{_METHOD_LABELS.get(c.method, c.method)} (formula)"
            )
            ax.errorbar(
                sizes,
                c.simulated,
                yerr=2 * np.asarray(c.simulated_se),
                fmt="o",
                color=colour,
                ms=4,
                capsize=2,
                label=f"{_METHOD_LABELS.get(c.method, c.method)} (simulated)",
            )
        ax.axhline(target, color="k", lw=0.8, ls=":")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("patients in the trial (both arms)")
        ax.set_ylabel("power")
        ax.set_title(f"{s.endpoint}: {s.arm} vs {s.control} (pool effect {s.effect:.3g})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path, title)


def plot_consort(path: str | Path, flow: Sequence[FlowStep], *, title: str = "") -> Path:
    """The flow of the virtual cohort: a box per stage, exclusions to the side, one column per arm at the end."""
    main = [f for f in flow if not f.stage.startswith("allocated to ") and f.stage != "analysed"]
    allocated = [f for f in flow if f.stage.startswith("allocated to ")]
    analysed = next((f for f in flow if f.stage == "analysed"), None)
    rows = len(main) + (2 if allocated else 1)
    fig = Figure(figsize=(8, max(3.0, 0.85 * rows + 0.8)))
    ax = fig.subplots()
    ax.set_xlim(0, 10)
    ax.set_ylim(-1.2 * rows + 0.6, 0.6)
    ax.axis("off")
    box = {"boxstyle": "round,pad=0.4", "fc": "white", "ec": "0.3"}
    side = {"boxstyle": "round,pad=0.3", "fc": "0.95", "ec": "0.6"}
    arrow = {"arrowstyle": "->", "color": "0.4"}
    y = 0.0
    for k, step in enumerate(main):
        label = step.stage.split(":")[0] + " criterion" if step.removed and ":" in step.stage else step.stage
        ax.text(3.5, y, f"{label}\nn = {step.remaining}", ha="center", va="center", fontsize=8, bbox=box)
        if step.removed or step.reason:
            text = f"{step.reason}\n(n = {step.removed})" if step.removed else step.reason
            ax.text(7.6, y, text, ha="center", va="center", fontsize=7, bbox=side)
        if k:
            ax.annotate("", (3.5, y + 0.35), (3.5, y + 0.85), arrowprops=arrow)
        y -= 1.2
    if allocated:
        xs = np.linspace(1.5, 8.5, len(allocated)) if len(allocated) > 1 else np.array([3.5])
        for x, a in zip(xs, allocated, strict=True):
            ax.text(x, y, f"{a.stage}\nn = {a.remaining}", ha="center", va="center", fontsize=8, bbox=box)
            ax.annotate("", (x, y + 0.35), (3.5, y + 0.85), arrowprops=arrow)
            ax.text(x, y - 1.2, f"analysed\nn = {a.remaining}", ha="center", va="center", fontsize=8, bbox=box)
            ax.annotate("", (x, y - 0.85), (x, y - 0.35), arrowprops=arrow)
    elif analysed is not None:
        ax.text(
            3.5, y, f"every arm, analysed\nn = {analysed.remaining}", ha="center", va="center", fontsize=8, bbox=box
        )
        ax.annotate("", (3.5, y + 0.35), (3.5, y + 0.85), arrowprops=arrow)
    return _save(fig, path, title)
