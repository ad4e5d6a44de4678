"""Virtual bedside monitors: realistic vital-sign streams for virtual patients (pure numbers, no I/O).

Profiles (trajectories in simulated hours since the start; Gaussian measurement noise; occasional artefacts and
missing values):

* ``stable``: normal adult vitals throughout.
* ``sepsis``: over ~6 h heart rate +45 /min, respiratory rate +10 /min, systolic BP -40 mmHg, temperature +2.2 degC,
  SpO2 -3 %, new confusion in the last fifth (a sepsis-like deterioration).
* ``hypoxic``: over ~3 h SpO2 -10 %, respiratory rate +12 /min, heart rate +30 /min; oxygen 2 L/min is started
  when SpO2 falls below 92 %, which recovers it by ~3 %.
* ``postop``: first hours after surgery: mild tachycardia and hypothermia settling, oxygen 2 L/min for 2 h.

Artefacts mimic real monitors: a pulse-oximeter probe coming off (SpO2 reads 60-80 % with a wrong pulse) and
motion spikes in heart rate. These trajectories are illustrative, not fitted to patient data; they exist to exercise
the pipeline, the scores and the alert rules.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from medtwin.errors import ValidationError
from medtwin.records import utc

__all__ = ["PROFILES", "VirtualPatient", "VitalsSample", "virtual_ward"]

PROFILES = ("stable", "sepsis", "hypoxic", "postop")


@dataclass(frozen=True, slots=True)
class VitalsSample:
    """One reading of a bedside monitor; None marks a value the monitor did not report."""

    time: datetime
    heart_rate_per_min: float | None
    respiration_rate_per_min: float | None
    spo2_percent: float | None
    systolic_bp_mm_hg: float | None
    diastolic_bp_mm_hg: float | None
    temperature_c: float | None
    acvpu: str | None
    oxygen_flow_l_min: float | None


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


class VirtualPatient:
    """A virtual patient with a vital-sign *profile*; :meth:`sample` reads its monitor at a time.

    Parameters
    ----------
    key
        The patient's MRN-like key (the identifier its messages carry).
    profile
        One of :data:`PROFILES`.
    start
        The (aware) time the trajectory starts at.
    seed
        Seed of the noise generator (streams are reproducible).
    missing_probability, artefact_probability
        Per-reading chance of a parameter being missing, and of an artefact.
    """

    def __init__(
        self,
        key: str,
        profile: str,
        *,
        start: datetime,
        seed: int = 0,
        missing_probability: float = 0.02,
        artefact_probability: float = 0.01,
    ) -> None:
        if profile not in PROFILES:
            raise ValidationError(f"virtual patient {key}: profile {profile!r} is not one of {', '.join(PROFILES)}")
        for name, p in (("missing_probability", missing_probability), ("artefact_probability", artefact_probability)):
            if not 0.0 <= p <= 1.0:
                raise ValidationError(f"virtual patient {key}: {name} must be in [0, 1], got {p}")
        self.key = key
        self.profile = profile
        self.start = utc(start, field_name="VirtualPatient.start")
        self.missing_probability = missing_probability
        self.artefact_probability = artefact_probability
        self._rng = random.Random(seed)

    def true_vitals(self, hours: float) -> dict[str, float | str | None]:
        """The noise-free trajectory *hours* after the start."""
        h = max(0.0, hours)
        v: dict[str, float | str | None] = {
            "hr": 76.0,
            "rr": 15.0,
            "spo2": 97.0,
            "sbp": 124.0,
            "dbp": 78.0,
            "temp": 36.8,
            "acvpu": "A",
            "o2": 0.0,
        }
        if self.profile == "sepsis":
            p = _clip(h / 6.0, 0.0, 1.0)
            v.update(hr=80 + 45 * p, rr=16 + 10 * p, sbp=124 - 40 * p, dbp=78 - 28 * p, temp=37.0 + 2.2 * p)
            v.update(spo2=97 - 3 * p, acvpu="C" if p > 0.8 else "A")
        elif self.profile == "hypoxic":
            p = _clip(h / 3.0, 0.0, 1.0)
            spo2 = 96 - 10 * p
            on_o2 = spo2 < 92
            v.update(spo2=spo2 + (3.0 if on_o2 else 0.0), rr=16 + 12 * p, hr=80 + 30 * p, o2=2.0 if on_o2 else 0.0)
        elif self.profile == "postop":
            settle = math.exp(-h / 1.5)
            v.update(hr=80 + 15 * settle, temp=37.0 - 1.0 * settle, rr=15 + 3 * settle, sbp=112.0, dbp=70.0)
            v.update(o2=2.0 if h < 2.0 else 0.0, spo2=96.0)
        return v

    def sample(self, when: datetime) -> VitalsSample:
        """The monitor reading at *when* (noise, artefacts and missing values included)."""
        when = utc(when, field_name="VirtualPatient.sample(when)")
        v = self.true_vitals((when - self.start) / timedelta(hours=1))
        g = self._rng.gauss
        hr = float(v["hr"] or 0) + g(0, 2.0)
        rr = float(v["rr"] or 0) + g(0, 0.8)
        spo2 = _clip(float(v["spo2"] or 0) + g(0, 0.6), 50.0, 100.0)
        sbp = float(v["sbp"] or 0) + g(0, 4.0)
        dbp = float(v["dbp"] or 0) + g(0, 3.0)
        temp = float(v["temp"] or 0) + g(0, 0.08)
        if self._rng.random() < self.artefact_probability:
            if self._rng.random() < 0.5:
                spo2, hr = self._rng.uniform(60, 80), self._rng.uniform(30, 160)  # probe off
            else:
                hr = self._rng.uniform(150, 190)  # motion artefact
        values: dict[str, float | None] = {
            "hr": round(hr),
            "rr": round(rr),
            "spo2": round(spo2),
            "sbp": round(sbp),
            "dbp": round(dbp),
            "temp": round(temp, 1),
        }
        for name in values:
            if self._rng.random() < self.missing_probability:
                values[name] = None
        o2 = float(v["o2"] or 0.0)
        return VitalsSample(
            time=when,
            heart_rate_per_min=values["hr"],
            respiration_rate_per_min=values["rr"],
            spo2_percent=values["spo2"],
            systolic_bp_mm_hg=values["sbp"],
            diastolic_bp_mm_hg=values["dbp"],
            temperature_c=values["temp"],
            acvpu=str(v["acvpu"]) if self._rng.random() >= self.missing_probability else None,
            oxygen_flow_l_min=o2,
        )


def virtual_ward(
    n: int, *, start: datetime, seed: int = 0, profiles: tuple[str, ...] = PROFILES, key_prefix: str = "VM"
) -> list[VirtualPatient]:
    """*n* virtual patients cycling through *profiles* (keys ``VM-0001``... with *key_prefix* ``VM``), each with
    its own seed."""
    if n < 1:
        raise ValidationError(f"virtual_ward: n must be >= 1, got {n}")
    return [
        VirtualPatient(f"{key_prefix}-{i + 1:04d}", profiles[i % len(profiles)], start=start, seed=seed * 100_003 + i)
        for i in range(n)
    ]
