"""CGM sensor and insulin pump models of simglucose 0.2.11, vectorized over a batch of patients.

Sensor (Breton M, Kovatchev B. Analysis, modeling, and simulation of the accuracy of continuous glucose
sensors. J Diabetes Sci Technol 2008;2(5):853-62, doi:10.1177/193229680800200517, as implemented by
simglucose): every 15 minutes an AR(1) Gaussian e_k = PACF (e_{k-1} + N(0,1)) (e_0 = N(0,1)) is mapped through
the Johnson SU transform eps = xi + lambda sinh((e - gamma)/delta); the 15-minute values are cubic-spline
(not-a-knot) interpolated in blocks of 10 intervals (each block starts at the last value of the previous one)
onto the sensor's sample times; readings are BG + eps clipped to [min, max]. Seeded per member with numpy's
legacy ``RandomState(seed)`` so a member seeded like simglucose draws the same noise.

Pump: rates (U/min) are rounded to the pump increment in pmol units (x6000), then clipped to [min, max].
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy.interpolate import make_interp_spline

from medtwin.errors import ValidationError
from medtwin.glucose.uva_padova import PMOL_PER_UNIT_INSULIN
from medtwin.sim.model import FloatArray

__all__ = ["CGMSensor", "InsulinPump", "PumpSpec", "SensorSpec", "pump_spec", "sensor_spec"]

_U_TO_PMOL = PMOL_PER_UNIT_INSULIN
_BLOCK = 10
_NOISE_STEP_MIN = 15.0


def _rows(name: str) -> dict[str, dict[str, str]]:
    text = resources.files("medtwin.glucose").joinpath("data").joinpath(name).read_text(encoding="utf-8")
    return {r["Name"]: dict(r) for r in csv.DictReader(text.splitlines())}


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorSpec:
    """CGM sensor parameters (Johnson SU noise, PACF, sample time in minutes, clipping range in mg/dL)."""

    name: str
    pacf: float
    gamma: float
    lam: float
    delta: float
    xi: float
    sample_time_min: float
    min_mg_dl: float
    max_mg_dl: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PumpSpec:
    """Insulin pump limits and increments (U/min)."""

    name: str
    min_bolus: float
    max_bolus: float
    inc_bolus: float
    min_basal: float
    max_basal: float
    inc_basal: float


def sensor_spec(name: str) -> SensorSpec:
    """Sensor parameters by name: ``Dexcom`` (3 min), ``GuardianRT`` (5 min), ``Navigator`` (1 min)."""
    rows = _rows("sensor_params.csv")
    if name not in rows:
        raise ValidationError(f"unknown CGM sensor {name!r} (known: {sorted(rows)})")
    r = rows[name]
    return SensorSpec(
        name=name,
        pacf=float(r["PACF"]),
        gamma=float(r["gamma"]),
        lam=float(r["lambda"]),
        delta=float(r["delta"]),
        xi=float(r["xi"]),
        sample_time_min=float(r["sample_time"]),
        min_mg_dl=float(r["min"]),
        max_mg_dl=float(r["max"]),
    )


def pump_spec(name: str) -> PumpSpec:
    """Pump parameters by name: ``Insulet`` or ``Cozmo``."""
    rows = _rows("pump_params.csv")
    if name not in rows:
        raise ValidationError(f"unknown insulin pump {name!r} (known: {sorted(rows)})")
    r = rows[name]
    return PumpSpec(
        name=name,
        **{k: float(r[k]) for k in ("min_bolus", "max_bolus", "inc_bolus", "min_basal", "max_basal", "inc_basal")},
    )


class InsulinPump:
    """Rounds and limits requested basal and bolus rates (U/min) for a whole batch at once."""

    def __init__(self, spec: PumpSpec) -> None:
        self.spec = spec

    @staticmethod
    def _quantize(rate: FloatArray, inc: float, lo: float, hi: float) -> FloatArray:
        q = np.round(rate * _U_TO_PMOL / inc) * inc / _U_TO_PMOL
        return np.asarray(np.maximum(np.minimum(q, hi), lo), dtype=np.float64)

    def basal(self, rate_u_min: FloatArray) -> FloatArray:
        """Delivered basal rate (U/min)."""
        s = self.spec
        return self._quantize(rate_u_min, s.inc_basal, s.min_basal, s.max_basal)

    def bolus(self, rate_u_min: FloatArray) -> FloatArray:
        """Delivered bolus rate (U/min)."""
        s = self.spec
        return self._quantize(rate_u_min, s.inc_bolus, s.min_bolus, s.max_bolus)


def _block_weights(sample_time_min: float) -> FloatArray:
    """Linear map from the 11 fifteen-minute values of a block to its interpolated samples (after the first)."""
    t15 = np.arange(_BLOCK + 1) * _NOISE_STEP_MIN
    n = int(np.floor(_BLOCK * _NOISE_STEP_MIN / sample_time_min)) + 1
    t = np.arange(n) * sample_time_min
    spline = make_interp_spline(t15, np.eye(_BLOCK + 1), k=3)
    return np.asarray(spline(t)[1:], dtype=np.float64)


class CGMSensor:
    """A batch of CGM sensors; ``measure(bg)`` returns one reading per member and advances its noise stream.

    *seeds* gives one ``RandomState`` seed per member; ``noise=False`` gives the noise-free sensor (readings are
    the clipped glucose). Readings are taken every ``spec.sample_time_min`` by the caller.
    """

    def __init__(self, spec: SensorSpec, seeds: Sequence[int], *, noise: bool = True) -> None:
        self.spec = spec
        self.noise = noise
        self.seeds = tuple(int(s) for s in seeds)
        if any(not 0 <= s < 2**32 for s in self.seeds):
            raise ValidationError("CGMSensor: seeds must be integers in [0, 2**32)")
        self._weights = _block_weights(spec.sample_time_min)
        self.reset()

    @property
    def batch(self) -> int:
        """Number of sensors."""
        return len(self.seeds)

    def reset(self) -> None:
        """Restart every noise stream from its seed."""
        self._noise = np.zeros((0, self.batch))
        self._blocks = 0
        self._pos = 0

    def _ensure(self, n_values: int) -> None:
        """Make at least *n_values* noise values per member available (regenerated from the seeds, doubling)."""
        per_block = self._weights.shape[0]
        if self._noise.shape[0] >= n_values:
            return
        blocks = max(-(-n_values // per_block), 2 * self._blocks, 8)
        n_draws = blocks * _BLOCK + 1
        # one RandomState re-seeded per distinct seed: creating a RandomState per member costs ~0.3 ms each
        rs = np.random.RandomState(0)
        unique, inverse = np.unique(np.asarray(self.seeds, dtype=np.int64), return_inverse=True)
        draws = np.empty((n_draws, unique.size))
        for j, seed in enumerate(unique):
            rs.seed(int(seed))
            draws[:, j] = rs.randn(n_draws)
        s = self.spec
        e = np.empty_like(draws)
        e[0] = draws[0]
        for k in range(1, n_draws):
            e[k] = s.pacf * (e[k - 1] + draws[k])
        eps15 = s.xi + s.lam * np.sinh((e - s.gamma) / s.delta)
        index = np.arange(blocks)[:, None] * _BLOCK + np.arange(_BLOCK + 1)[None, :]
        values = np.einsum("kj,cju->cku", self._weights, eps15[index])
        self._noise = np.ascontiguousarray(values.reshape(blocks * per_block, unique.size)[:, inverse])
        self._blocks = blocks

    def next_noise(self) -> FloatArray:
        """The next noise value of every member (mg/dL)."""
        self._ensure(self._pos + 1)
        value = np.asarray(self._noise[self._pos], dtype=np.float64)
        self._pos += 1
        return value

    def take_noise(self, n_values: int) -> FloatArray:
        """The next *n_values* noise values of every member, ``(n_values, batch)``."""
        self._ensure(self._pos + n_values)
        out = np.asarray(self._noise[self._pos : self._pos + n_values], dtype=np.float64)
        self._pos += n_values
        return out

    def measure(self, bg_mg_dl: FloatArray) -> FloatArray:
        """One reading per member for true glucose *bg_mg_dl*."""
        eps = self.next_noise() if self.noise else 0.0
        return np.asarray(np.clip(bg_mg_dl + eps, self.spec.min_mg_dl, self.spec.max_mg_dl), dtype=np.float64)
