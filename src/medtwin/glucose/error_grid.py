"""Parkes (consensus) error grid for type 1 diabetes: clinical risk zones of glucose estimates or forecasts.

Sources: Parkes JL, Slatin SL, Pardo S, Ginsberg BH. A new consensus error grid to evaluate the clinical
significance of inaccuracies in the measurement of blood glucose. Diabetes Care 2000;23(8):1143-8,
doi:10.2337/diacare.23.8.1143; the zone vertices as published by Pfuetzner A, Klonoff DC, Pardo S, Parkes JL.
Technical aspects of the Parkes error grid. J Diabetes Sci Technol 2013;7(5):1275-81,
doi:10.1177/193229681300700517 (type 1 grid; the last vertex of each line extended to a reference of 5,000 mg/dL,
as the R package ``ega`` does). x is the reference glucose, y the estimate, both mg/dL.

Zone A: no effect on clinical action; B: altered action, little or no effect on outcome; C: altered action, likely
to affect outcome; D: significant medical risk; E: dangerous consequences.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from medtwin.errors import ValidationError
from medtwin.sim.model import FloatArray

__all__ = ["ZONES", "parkes_zone_fractions", "parkes_zones"]

ZONES = ("A", "B", "C", "D", "E")

# upper edges of zones A-D (a point above belongs to an outer zone)
_UPPER = {
    "A": ((0, 50), (30, 50), (140, 170), (280, 380), (5000, 5729.3)),
    "B": ((0, 60), (30, 60), (50, 80), (70, 110), (5000, 11526.84)),
    "C": ((0, 100), (25, 100), (50, 125), (80, 215), (5000, 36841.67)),
    "D": ((0, 150), (35, 155), (5000, 130900)),
}
# lower edges of zones A-C: a vertical segment at the first x, then the polyline
_LOWER = {
    "A": ((50, 30), (170, 145), (385, 300), (5000, 4495.45)),
    "B": ((120, 30), (260, 130), (5000, 2091.38)),
    "C": ((250, 40), (5000, 1781.67)),
}


def _line(points: tuple[tuple[float, float], ...], x: FloatArray) -> FloatArray:
    xs, ys = zip(*points, strict=True)
    return np.asarray(np.interp(x, xs, ys), dtype=np.float64)


def parkes_zones(reference_mg_dl: ArrayLike, estimate_mg_dl: ArrayLike) -> FloatArray:
    """Zone index per pair (0 = A ... 4 = E), type 1 grid."""
    x = np.asarray(reference_mg_dl, dtype=np.float64)
    y = np.asarray(estimate_mg_dl, dtype=np.float64)
    if x.shape != y.shape or np.any(~np.isfinite(x)) or np.any(~np.isfinite(y)) or np.any((x < 0) | (y < 0)):
        raise ValidationError("Parkes error grid: reference and estimate must be equal-shaped, finite and >= 0 mg/dL")
    zone = np.zeros(x.shape)
    for k, name in enumerate(("A", "B", "C", "D")):
        outside = y > _line(_UPPER[name], x)
        if name in _LOWER:
            first = _LOWER[name][0][0]
            outside |= (x >= first) & (y < _line(_LOWER[name], x))
        zone = np.where(outside & (zone == k), k + 1, zone)
    return zone


def parkes_zone_fractions(reference_mg_dl: ArrayLike, estimate_mg_dl: ArrayLike) -> dict[str, float]:
    """Percentage of pairs in each zone A-E."""
    z = parkes_zones(reference_mg_dl, estimate_mg_dl)
    n = max(z.size, 1)
    return {name: float(100.0 * np.count_nonzero(z == k) / n) for k, name in enumerate(ZONES)}
