"""The platform demo's data: sample patients, a glucose twin, a vancomycin course, ward admissions, demo users.

Used by ``medtwin demo`` (:mod:`medtwin.cli.platform_demo`), the browser tests and ``bench/dashboard.py``.

* Sample patients: the four Synthea bundles shipped in ``medtwin/data/samples`` (Apache-2.0, synthetic).
* Glucose: two days of one UVA/Padova virtual adult (``adult#001``, simglucose's parameters) under a basal-bolus
  controller with randomized meals and CGM noise (:func:`medtwin.glucose.insilico.simulate_therapy_a`), recorded
  as CGM observations ending now, and a personal glucose twin identified from them (a short sampler run: a
  demonstration twin, not a converged fit), stored as the snapshot ``glucose:<patient id>``.
* Vancomycin: the course of dosing case A (tests/fixtures/pk/case_a.json: 2 g then 1 g, levels 12.0 and 9.5 mg/L)
  ending now, with body weight and serum creatinine.
* Monitored patients: virtual bedside-monitor patients admitted over HL7 v2 ADT^A01 (:func:`adt_a01`) to wards
  ``WARD-A`` and ``WARD-B``; their vital signs then stream in as ORU^R01 (:mod:`medtwin.interop.virtual_feed`).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from medtwin import codes
from medtwin.interop.hl7v2.messages import escape, format_hl7_datetime
from medtwin.monitoring.virtual import VirtualPatient
from medtwin.records import (
    Coding,
    Encounter,
    EncounterLocation,
    MedicationAdministration,
    Observation,
    Provenance,
    Quantity,
)
from medtwin.store import Store

__all__ = [
    "DEMO_USERS",
    "SOURCE",
    "DemoUser",
    "add_glucose_twin",
    "add_stale_vitals",
    "add_vancomycin_course",
    "admit",
    "adt_a01",
    "create_users",
    "find_patient",
    "load_samples",
    "ward_beds",
]

SOURCE = "medtwin-demo"
"""The provenance source system of the demo's own records."""


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A demo account: its password is made per run unless given."""

    username: str
    password: str
    role: str
    wards: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()


#: (username, role, wards, care teams) of the demo accounts.
DEMO_USERS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("admin", "admin", (), ()),
    ("dr.lee", "clinician", ("WARD-A",), ("team-a",)),
    ("nurse.kim", "nurse", ("WARD-A",), ()),
    ("nurse.ali", "nurse", ("WARD-B",), ()),
    ("pharm.diaz", "pharmacist", (), ()),
    ("res.olsen", "researcher", (), ()),
)


def create_users(accounts: Any, *, password: str | None = None) -> list[DemoUser]:
    """Create the demo accounts (random passwords unless *password*); an existing name is skipped."""
    made = []
    for username, role, wards, teams in DEMO_USERS:
        pw = password or f"{role[:4]}-{secrets.token_urlsafe(6)}"
        if accounts.user(username) is not None:
            continue
        accounts.add_user(username, pw, role, wards=wards, teams=teams)
        made.append(DemoUser(username, pw, role, wards, teams))
    return made


def load_samples(store: Store) -> dict[str, str]:
    """Ingest the shipped Synthea bundles; returns display name -> patient id."""
    from medtwin.cli.records import sample_bundles
    from medtwin.interop.fhir.ingest import ingest_paths

    ingest_paths(store, sample_bundles(), source_system="synthea-sample")
    return {p.identity.display_name if p.identity else p.patient_id: p.patient_id for p in store.patients()}


def find_patient(names: dict[str, str], needle: str) -> str:
    """The id of the patient whose display name contains *needle* (KeyError when none)."""
    for name, pid in names.items():
        if needle.lower() in name.lower():
            return pid
    raise KeyError(needle)


def _obs(pid: str, coding: Coding, when: datetime, value: float, unit: str, key: str, category: str) -> Observation:
    return Observation(patient_id=pid, code=coding, effective=when, value=Quantity(value=value, unit=unit),
                       category=category, provenance=Provenance(source_system=SOURCE, source_id=key))  # fmt: skip


def admit(store: Store, patient_id: str, unit: str, bed: str, *, at: datetime) -> Encounter:
    """Store an open inpatient encounter of *patient_id* in *unit*, *bed* since *at*."""
    enc = Encounter(encounter_id=f"demo-{patient_id}", patient_id=patient_id, status="in-progress", class_code="IMP",
                    start=at, locations=(EncounterLocation(unit=unit, start=at, bed=bed),),
                    provenance=Provenance(source_system=SOURCE, source_id=f"encounter/{patient_id}"))  # fmt: skip
    store.write([enc])
    return enc


def add_stale_vitals(store: Store, patient_id: str, *, at: datetime) -> None:
    """One set of vital signs taken at *at* (the board shows them stale once they are over an hour old)."""
    values = ((codes.HEART_RATE, 88, "/min"), (codes.RESPIRATORY_RATE, 18, "/min"),
              (codes.OXYGEN_SATURATION_PULSE_OX, 96, "%"), (codes.SYSTOLIC_BP, 118, "mm[Hg]"),
              (codes.BODY_TEMPERATURE, 37.2, "Cel"))  # fmt: skip
    store.write([_obs(patient_id, c, at, v, u, f"vitals/{patient_id}/{c.code}", "vital-signs") for c, v, u in values])


def add_vancomycin_course(store: Store, patient_id: str, *, now: datetime, weight_kg: float = 70.0,
                          scr_mg_dl: float = 1.0) -> None:  # fmt: skip
    """Dosing case A's course (2 g over 2 h at 0 h, 1 g over 2 h at 24.2 h; levels 12.0 mg/L at 13 h and 9.5 mg/L
    at 48 h) ending 2 hours before *now*, with body weight and serum creatinine."""
    origin = (now - timedelta(hours=50)).replace(second=0, microsecond=0)
    vanco = Coding(system="http://snomed.info/sct", code="372735009", display="Vancomycin")
    iv = Coding(system="http://snomed.info/sct", code="47625008", display="Intravenous route")
    records: list[Any] = []
    for i, (t_h, mg) in enumerate(((0.0, 2000.0), (24.2, 1000.0))):
        start = origin + timedelta(hours=t_h)
        records.append(MedicationAdministration(
            administration_id=f"demo-vanco-{patient_id}-{i}", patient_id=patient_id, medication=vanco, start=start,
            end=start + timedelta(hours=2), dose=Quantity(value=mg, unit="mg"), route=iv,
            provenance=Provenance(source_system=SOURCE, source_id=f"vanco/{patient_id}/{i}")))  # fmt: skip
    for i, (t_h, level) in enumerate(((13.0, 12.0), (48.0, 9.5))):
        records.append(_obs(patient_id, codes.VANCOMYCIN_SERUM, origin + timedelta(hours=t_h), level, "mg/L",
                            f"vanco-level/{patient_id}/{i}", "laboratory"))  # fmt: skip
    records.append(_obs(patient_id, codes.BODY_WEIGHT, origin, weight_kg, "kg", f"weight/{patient_id}", "vital-signs"))
    records.append(_obs(patient_id, codes.CREATININE_SERUM, origin, scr_mg_dl, "mg/dL", f"scr/{patient_id}",
                        "laboratory"))  # fmt: skip
    store.write(records)


def add_glucose_twin(store: Store, patient_id: str, *, now: datetime, days: int = 2, seed: int = 3,
                     fit_steps: int = 60) -> None:  # fmt: skip
    """CGM observations of *days* simulated days ending at *now*, and a personal glucose twin fitted to them."""
    from medtwin.glucose import FitSettings, PersonalGlucoseTwin
    from medtwin.glucose.insilico import simulate_therapy_a
    from medtwin.server.web.data import GLUCOSE_TWIN_PREFIX

    simulated = simulate_therapy_a(["adult#001"], days=days, seed=seed)
    start = (now - timedelta(days=days)).replace(second=0, microsecond=0)
    data = dataclasses.replace(simulated.data[0], start=start)
    records: list[Any] = [
        _obs(patient_id, codes.GLUCOSE_INTERSTITIAL, start + timedelta(minutes=float(t)), round(float(g), 1), "mg/dL",
             f"cgm/{patient_id}/{int(t)}", "laboratory")
        for t, g in zip(data.cgm_t_min, data.cgm_mg_dl, strict=True)
    ]  # fmt: skip
    store.write(records)
    settings = FitSettings(walkers=24, burn_in=30, check_every=10, max_steps=max(fit_steps, 50),
                           require_convergence=False, starts=1, keep_draws=100)  # fmt: skip
    twin = PersonalGlucoseTwin.fit(data, settings=settings)
    store.save_snapshot(GLUCOSE_TWIN_PREFIX + patient_id, twin.snapshot(), now)


def ward_beds(n: int) -> list[tuple[str, str]]:
    """(unit, bed) of *n* monitored patients: the first 60 % on WARD-A, the others on WARD-B."""
    split = max(1, round(n * 0.6))
    return [("WARD-A", f"A-{i + 1:02d}") if i < split else ("WARD-B", f"B-{i - split + 1:02d}") for i in range(n)]


def adt_a01(patient: VirtualPatient, unit: str, bed: str, *, at: datetime, control_id: str,
            birth: date = date(1960, 1, 1)) -> str:  # fmt: skip
    """An HL7 v2.5.1 ADT^A01 admitting the virtual *patient* (same MRN and assigning authority as its monitor's
    ORU^R01 messages) to *unit*, *bed* at *at*."""
    when = format_hl7_datetime(at)
    sex = "F" if sum(map(ord, patient.key)) % 2 else "M"
    return "\r".join([
        f"MSH|^~\\&|DEMO_ADT|MEDTWIN_SIM|MEDTWIN|MEDTWIN|{when}||ADT^A01^ADT_A01|{escape(control_id)}|P|2.5.1",
        f"EVN|A01|{when}",
        f"PID|1||{escape(patient.key)}^^^MEDTWIN_SIM^MR||Virtual^{escape(patient.profile.capitalize())}||"
        f"{birth:%Y%m%d}|{sex}",
        f"PV1|1|I|{escape(unit)}^^{escape(bed)}",
    ])  # fmt: skip


def now_utc() -> datetime:
    """The current time (UTC, whole seconds)."""
    return datetime.now(UTC).replace(microsecond=0)


def sample_assignments(names: dict[str, str]) -> dict[str, str]:
    """Which sample patient gets what: ``glucose``, ``vancomycin`` (and both are admitted to WARD-A)."""
    return {"glucose": find_patient(names, "Liz"), "vancomycin": find_patient(names, "Alberto")}


def seed_records(store: Store, *, now: datetime, glucose: bool = True, accounts: Any = None,
                 team_members: Sequence[str] = ("Alberto", "Liz", "Luigi")) -> dict[str, str]:  # fmt: skip
    """Load the samples and give them their demo data; returns role -> patient id (``glucose``, ``vancomycin``)."""
    names = load_samples(store)
    chosen = sample_assignments(names)
    add_vancomycin_course(store, chosen["vancomycin"], now=now)
    admit(store, chosen["vancomycin"], "WARD-A", "A-20", at=now - timedelta(days=2))
    admit(store, chosen["glucose"], "WARD-A", "A-21", at=now - timedelta(days=2))
    add_stale_vitals(store, chosen["vancomycin"], at=now - timedelta(hours=3))
    if glucose:
        add_glucose_twin(store, chosen["glucose"], now=now)
    if accounts is not None:
        for needle in team_members:
            accounts.assign("team-a", find_patient(names, needle))
    return chosen
