"""The bundled example: a mid-size general hospital (434 inpatient beds) that works out of the box.

Illustrative, not any real hospital. Its ED arrival curve has the shape reported for English type 1
EDs (trough around 04:00-05:00, about a third of the daily mean; a plateau from late morning to
evening; Mondays busiest): NHS England, "A&E Attendances and Emergency Admissions" statistical
notes and Hospital Episode Statistics A&E hourly attendance tables (2019-20). Lengths of stay and
admission fractions are set to typical values for UK/US acute trusts (medical LoS about 5 days,
surgical 4, ICU 3.5; about 28 % of ED attendances admitted). The five triage categories (immediate,
very urgent, urgent, standard, non-urgent: 1/12/42/40/5 %) are an illustrative Manchester Triage
System case mix. The clock is UTC and is taken to equal
the hospital's local time.
"""

from __future__ import annotations

import numpy as np

from medtwin.hospital.config import (
    ArrivalProfile,
    Costs,
    EDConfig,
    ElectiveSlot,
    HospitalConfig,
    Staffing,
    UnitConfig,
)
from medtwin.hospital.distributions import Duration

__all__ = ["EXAMPLE_ARRIVALS_PER_DAY", "example_arrival_profile", "example_hospital"]

EXAMPLE_ARRIVALS_PER_DAY = 204.0

_HOUR_OF_DAY = (
    0.62, 0.50, 0.42, 0.37, 0.33, 0.33, 0.38, 0.55, 0.85, 1.15, 1.35, 1.42,
    1.40, 1.36, 1.32, 1.30, 1.30, 1.30, 1.32, 1.28, 1.18, 1.05, 0.90, 0.75,
)  # fmt: skip
_DAY_OF_WEEK = (1.12, 1.02, 0.99, 0.98, 0.98, 0.94, 0.97)


def example_arrival_profile(arrivals_per_day: float = EXAMPLE_ARRIVALS_PER_DAY) -> ArrivalProfile:
    """Hour-of-week ED arrival rates with *arrivals_per_day* on an average day."""
    hod = np.asarray(_HOUR_OF_DAY) / np.mean(_HOUR_OF_DAY)
    dow = np.asarray(_DAY_OF_WEEK) / np.mean(_DAY_OF_WEEK)
    rates = (dow[:, None] * hod[None, :]).ravel() * arrivals_per_day / 24.0
    return ArrivalProfile(rates_per_h=tuple(float(r) for r in rates))


def example_hospital() -> HospitalConfig:
    """The example hospital: ED (38 spaces), Medicine (260), Surgery (150), ICU (24)."""
    return HospitalConfig(
        name="Example General Hospital",
        ed=EDConfig(
            spaces=38,
            treatment=Duration.lognormal(3.0, 0.8),
            admit={"Medicine": 0.20, "Surgery": 0.06, "ICU": 0.02},
            patience=Duration.lognormal(5.0, 1.0),
            ambulance_fraction=0.3,
            divert_threshold=30,
            triage_mix=(0.01, 0.12, 0.42, 0.40, 0.05),
        ),
        units=(
            UnitConfig(
                name="Medicine",
                beds=260,
                los=Duration.lognormal(120.0, 1.0),
                transfers={"ICU": 0.03},
                staffing=Staffing(nurses_per_shift=(45, 45, 40), patients_per_nurse=6.0),
            ),
            UnitConfig(
                name="Surgery",
                beds=150,
                los=Duration.lognormal(96.0, 1.0),
                transfers={"ICU": 0.04},
                staffing=Staffing(nurses_per_shift=(30, 28, 24), patients_per_nurse=6.0),
            ),
            UnitConfig(
                name="ICU",
                beds=24,
                los=Duration.lognormal(84.0, 1.0),
                transfers={"Medicine": 0.5, "Surgery": 0.3},
                staffing=Staffing(nurses_per_shift=(14, 14, 12), patients_per_nurse=2.0),
            ),
        ),
        arrivals=example_arrival_profile(),
        electives=tuple(ElectiveSlot(unit="Surgery", weekday=d, hour=7.0, count=18) for d in range(5)),
        elective_grace_h=4.0,
        costs=Costs(bed_day=550.0, staff_hour=48.0),
    )
