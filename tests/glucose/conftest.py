"""Shared fixtures of the glucose tests (reference trajectories from simglucose 0.2.11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="session")
def adult001_1min() -> pd.DataFrame:
    """simglucose's 1-minute log of adult#001 (inputs per step and all 13 states at the end of each step)."""
    return pd.read_csv(FIXTURES / "uvapadova" / "adult001_1min.csv")


@pytest.fixture(scope="session")
def batch_reference() -> dict[str, pd.DataFrame]:
    """simglucose's 3-minute logs of the 30 patients on the benchmark day."""
    folder = FIXTURES / "uvapadova" / "batch_30_patients"
    return {p.stem: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))}


@pytest.fixture(scope="session")
def hall_subject1() -> pd.DataFrame:
    """Real Dexcom G4 CGM readings (Hall et al. 2018, subject 1)."""
    return pd.read_csv(FIXTURES / "cgm" / "hall2018_subject1.csv", parse_dates=["time"])


@pytest.fixture(scope="session")
def twin_days() -> Any:
    """Three in-silico days of adult#001 under the basal-bolus controller (Dexcom noise, randomized meals)."""
    from medtwin.glucose.insilico import simulate_therapy_a

    return simulate_therapy_a(["adult#001"], days=3, seed=1)


@pytest.fixture(scope="session")
def twin_posterior(twin_days: Any) -> Any:
    """adult#001 identified on the first two days from the other 29 patients' prior (shared by the twin tests)."""
    from medtwin.glucose.identify import fit
    from medtwin.glucose.twin_model import population_prior

    return fit(twin_days.data[0].window(0.0, 2880.0), population_prior("all", exclude=["adult#001"]))
