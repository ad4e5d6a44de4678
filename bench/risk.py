"""Benchmark: every risk equation over a 1,000,000-person cohort read from Parquet, and input assembly from a store.

Claim (issue 19): all equations (Pooled Cohort Equations; PREVENT base/ACR/HbA1c/SDI/full x 10/30 years x total
CVD/ASCVD/heart failure = 30 models; QRISK3; FINDRISC; CHA2DS2-VASc; HAS-BLED) for 1,000,000 people from Parquet in
<= 10 s on 2 cores (the file read by ``medtwin.risk.read_cohort``: numbers as float64 arrays, text as codes),
side by side with a straightforward per-person Python implementation of the same equations
(``medtwin.risk.reference``, held equal to the vectorised code in tests). The per-person baseline is timed on a
sample of people and scaled to the cohort (running it on a million people would take many minutes); the script
says so in its output. Every time is printed as wall time and CPU time of the process (``time.process_time``), so a
run on a shared machine can be judged.

Second part: assembling the inputs from a store of 10,000 Synthea-like patients (about 60 records each: vital
signs and labs over three years, conditions, medications), by the cohort reader (four queries per batch of 500
patients) and, for the ratio, patient by patient with the one-patient reader on a sample.

Run: ``.venv/bin/python bench/risk.py`` (``--quick`` for 100,000 people and 1,000 patients).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from medtwin import codes
from medtwin.records import Coding, Condition, MedicationRequest, Observation, Patient, Quantity
from medtwin.risk import cha2ds2_vasc, findrisc, has_bled, pooled_cohort, qrisk3, read_cohort
from medtwin.risk.prevent import prevent_cohort
from medtwin.risk.reference import cha2ds2_vasc_one, findrisc_one, has_bled_one, pce_one, prevent_one, qrisk3_one
from medtwin.risk.simulate import synthetic_cohort
from medtwin.store import Store
from medtwin.twin.risk_inputs import assemble, assemble_cohort

VARIANTS = ("base", "acr", "hba1c", "sdi", "full")
OUTCOMES = ("cvd", "ascvd", "hf")


def all_equations(c: Mapping[str, object]) -> int:
    """Every equation over the cohort (the 30 PREVENT models in one matrix product); returns how many ran."""
    pooled_cohort(c)
    qrisk3(c)
    findrisc(c)
    cha2ds2_vasc(c, require_af=False)
    has_bled(c)
    return 5 + len(prevent_cohort(c))


def all_equations_one(p: dict[str, object]) -> None:
    pce_one(p)  # type: ignore[arg-type]
    qrisk3_one(p)  # type: ignore[arg-type]
    findrisc_one(p)  # type: ignore[arg-type]
    cha2ds2_vasc_one(p)  # type: ignore[arg-type]
    has_bled_one(p)  # type: ignore[arg-type]
    for v in VARIANTS:
        for y in (10, 30):
            for o in OUTCOMES:
                prevent_one(p, v, y, o)  # type: ignore[arg-type]


class Timed:
    """Wall time (``perf_counter``) and CPU time of this process (``process_time``, all threads) of a block."""

    def __enter__(self) -> Timed:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    def __str__(self) -> str:
        return f"{self.wall:.2f} s (CPU {self.cpu:.2f} s)"


def bench_equations(n: int, sample: int, workdir: Path) -> None:
    cohort = synthetic_cohort(n, seed=1)
    path = workdir / "cohort.parquet"
    pd.DataFrame(cohort).to_parquet(path)
    with Timed() as read:
        c = read_cohort(path)  # numbers as float64 arrays, text as codes
    with Timed() as equations:
        models = all_equations(c)
    people = [{k: v[i] for k, v in cohort.items()} for i in range(sample)]
    with Timed() as one:
        for p in people:
            all_equations_one(p)
    t_one, cpu_one = one.wall / sample, one.cpu / sample
    wall, cpu = read.wall + equations.wall, read.cpu + equations.cpu
    print(f"== equations: {n:,} people, {models} models (PREVENT 30 + PCE, QRISK3, FINDRISC, CHA2DS2-VASc, HAS-BLED)")
    print(
        f"medtwin.risk (vectorised): read Parquet {read} + equations {equations} = {wall:.2f} s wall, "
        f"{cpu:.2f} s CPU ({n / wall:,.0f} people/s)"
    )
    print(
        f"per-person Python baseline: {1e6 * t_one:.0f} us/person wall ({1e6 * cpu_one:.0f} us CPU) measured on "
        f"{sample:,} people; scaled to {n:,}: {t_one * n:.0f} s (not run in full)"
    )
    print(
        f"ratio (baseline / medtwin, equations only): {t_one * n / equations.wall:.0f}x wall, "
        f"{cpu_one * n / equations.cpu:.0f}x CPU; goal <= 10 s total: {'met' if wall <= 10 else 'NOT met'} "
        f"(wall; CPU {cpu:.2f} s)"
    )


def synthetic_store(store: Store, patients: int, seed: int = 2) -> int:
    """*patients* Synthea-like patients (~60 records each); returns the number of records written."""
    rng = np.random.default_rng(seed)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    snomed = codes.SNOMED
    written = 0
    batch: list[tuple[list[object], None]] = []
    labs = [
        ("2093-3", "Total cholesterol", 200, 30, "mg/dL"),
        ("2085-9", "HDL cholesterol", 50, 12, "mg/dL"),
        ("18262-6", "LDL cholesterol", 120, 25, "mg/dL"),
        ("33914-3", "eGFR", 85, 15, "mL/min/{1.73_m2}"),
        ("4548-4", "HbA1c", 5.8, 0.8, "%"),
        ("39156-5", "BMI", 28, 4, "kg/m2"),
        ("29463-7", "Weight", 80, 12, "kg"),
        ("8302-2", "Height", 170, 9, "cm"),
        ("8867-4", "Heart rate", 72, 10, "/min"),
        ("9279-1", "Respiratory rate", 15, 2, "/min"),
        ("8462-4", "Diastolic BP", 80, 9, "mm[Hg]"),
    ]
    for k in range(patients):
        pid = f"bench-{k:06d}"
        recs: list[object] = [
            Patient(
                patient_id=pid,
                gender="male" if k % 2 else "female",
                birth_date=date(1950 + int(rng.integers(0, 40)), 1 + k % 12, 1 + k % 28),
            )
        ]
        for visit in range(4):  # yearly visits over three years
            when = now - timedelta(days=365 * visit + int(rng.integers(0, 60)))
            recs.append(
                Observation(
                    patient_id=pid,
                    code=codes.loinc("8480-6", "Systolic BP"),
                    effective=when,
                    value=Quantity(value=float(rng.normal(132, 16)), unit="mm[Hg]"),
                )
            )
            recs.append(
                Observation(
                    patient_id=pid,
                    code=codes.loinc("72166-2", "Tobacco smoking status"),
                    effective=when,
                    value=Coding(system=snomed, code=("266919005", "8517006", "449868002")[k % 3]),
                )
            )
            for code, label, mean, sd, unit in labs:
                recs.append(
                    Observation(
                        patient_id=pid,
                        code=codes.loinc(code, label),
                        effective=when,
                        value=Quantity(value=float(abs(rng.normal(mean, sd))), unit=unit),
                    )
                )
        if k % 8 == 0:
            recs.append(
                Condition(
                    condition_id=f"{pid}-dm",
                    patient_id=pid,
                    onset=now - timedelta(days=2000),
                    code=Coding(system=snomed, code="44054006", display="Diabetes mellitus type 2"),
                )
            )
        if k % 3 == 0:
            recs.append(
                Condition(
                    condition_id=f"{pid}-htn",
                    patient_id=pid,
                    onset=now - timedelta(days=3000),
                    code=Coding(system=snomed, code="59621000", display="Essential hypertension"),
                )
            )
            recs.append(
                MedicationRequest(
                    request_id=f"{pid}-acei",
                    patient_id=pid,
                    authored=now - timedelta(days=900),
                    medication=Coding(
                        system="http://www.nlm.nih.gov/research/umls/rxnorm",
                        code="314076",
                        display="lisinopril 10 MG Oral Tablet",
                    ),
                )
            )
        written += len(recs)
        batch.append((recs, None))
        if len(batch) == 200:
            store.write_batch(batch)  # type: ignore[arg-type]
            batch = []
    if batch:
        store.write_batch(batch)  # type: ignore[arg-type]
    return written


def bench_assembly(patients: int, sample: int, workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'risk-bench.db'}"
    with Store(url) as store:
        with Timed() as write:
            records = synthetic_store(store, patients)
        ids = store.patient_ids()
        as_of = datetime(2026, 1, 2, tzinfo=UTC)
        rows = []
        with Timed() as cohort:
            for start in range(0, len(ids), 500):
                rows += assemble_cohort(store, ids[start : start + 500], as_of)
        with Timed() as one:
            for pid in ids[:sample]:
                assemble(store, pid, as_of)
    t_one = one.wall / sample
    print(f"== input assembly: {patients:,} patients, {records:,} records (written in {write})")
    print(
        f"cohort reader (4 queries per 500 patients): {cohort} = {len(rows) / cohort.wall:,.0f} patients/s, "
        f"{records / cohort.wall:,.0f} records/s"
    )
    print(
        f"one patient at a time (Store.patient/observations/conditions/medication_requests): "
        f"{1e3 * t_one:.1f} ms/patient ({1e3 * one.cpu / sample:.1f} ms CPU) on {sample:,} patients; "
        f"scaled: {t_one * patients:.1f} s; ratio {t_one * patients / cohort.wall:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 people and 1,000 patients")
    args = parser.parse_args()
    n, patients = (100_000, 1_000) if args.quick else (1_000_000, 10_000)
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"numpy {np.__version__}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bench_equations(n, 2_000, Path(tmp))
        bench_assembly(patients, 200, Path(tmp))


if __name__ == "__main__":
    main()
