"""API server fixtures: a seeded store, a platform over it, tokens minted for any role/scope, and clients."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medtwin import codes
from medtwin.records import (
    Coding,
    Condition,
    Encounter,
    EncounterLocation,
    Event,
    Identifier,
    MedicationRequest,
    Observation,
    Patient,
    PatientIdentity,
    Quantity,
)
from medtwin.security.scopes import parse_scopes
from medtwin.security.tokens import TokenService
from medtwin.server import Platform, ServerSettings, create_app
from medtwin.store import Store

PG_URL = os.environ.get("MEDTWIN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
FAST_HASH = {"argon2_time_cost": 1, "argon2_memory_kib": 1024}


def _pg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _pg_reason() -> str | None:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a dev dependency
        return "psycopg is not installed"
    try:
        with psycopg.connect(_pg_dsn(PG_URL), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {str(exc).strip()[:120]})"


PG_UNAVAILABLE = _pg_reason()


@pytest.fixture(autouse=True)
def _key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's master key file for this test (beside a SQLite file it is found anyway; a PostgreSQL store and
    the processes a test starts find it through the environment)."""
    monkeypatch.setenv("MEDTWIN_KEY_FILE", str(tmp_path / "medtwin-keys.json"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file URL, or a fresh PostgreSQL schema (skipped with the reason when none is reachable)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'api.db'}"
        return
    if PG_UNAVAILABLE is not None:
        pytest.skip(PG_UNAVAILABLE)
    import psycopg

    schema = f"medtwin_api_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_dsn(PG_URL), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(_pg_dsn(PG_URL), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@dataclass(frozen=True)
class Seeded:
    """One seeded patient: ids of its records and the identity strings that must never leak."""

    patient_id: str
    name: str
    mrn: str
    birth: str
    observation_id: str
    alert_id: str

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings of this patient that a denied answer must not contain."""
        family = self.name.split()[-1]
        return (family, self.mrn, self.birth, self.observation_id, self.alert_id)


def seed_patient(store: Store, key: str, *, ward: str | None, index: int) -> Seeded:
    """Store a patient with identity, an open encounter (on *ward*), a heart rate, a condition, an order, an alert."""
    pid = f"pt-{hashlib.sha256(key.encode()).hexdigest()[:16]}"  # the form of medtwin's keyed pseudonyms
    name = f"Ada{index} Zyx{key.replace('-', '')}"
    mrn = f"MRN-{9000 + index}"
    birth = date(1950 + index, 3, 1 + index)
    patient = Patient(
        patient_id=pid,
        gender="female",
        birth_date=birth,
        identity=PatientIdentity(
            identifiers=(Identifier(system="urn:mrn", value=mrn, type_code="MR"),),
            family=name.split()[1],
            given=(name.split()[0],),
        ),
    )
    locations = (EncounterLocation(unit=ward, start=T0, bed="1"),) if ward else ()
    encounter = Encounter(
        encounter_id=f"enc-{key}", patient_id=pid, status="in-progress", class_code="IMP", start=T0, locations=locations
    )
    obs = Observation(
        patient_id=pid,
        code=codes.HEART_RATE,
        effective=T0 + timedelta(minutes=index),
        value=Quantity(value=80 + index, unit="/min"),
        observation_id=f"obs-{key}",
    )
    condition = Condition(
        condition_id=f"cond-{key}",
        patient_id=pid,
        code=Coding(system=codes.SNOMED, code="38341003", display="Hypertension"),
    )
    order = MedicationRequest(
        request_id=f"mr-{key}",
        patient_id=pid,
        medication=Coding(system="http://www.nlm.nih.gov/research/umls/rxnorm", code="11124"),
        authored=T0,
    )
    alert = Event(
        kind="alert",
        code="news2-high",
        time=T0,
        message="NEWS2 7 (high)",
        patient_id=pid,
        severity="high",
        event_id=f"alert-{key}",
    )
    store.write([patient, encounter, obs, condition, order, alert])
    return Seeded(pid, name, mrn, birth.isoformat(), obs.observation_id, alert.event_id)


def consent(pid: str, scope: str, roles: tuple[str, ...] = ()) -> dict[str, Any]:
    """A FHIR Consent: *scope* ``patient-privacy`` (deny to *roles*) or ``research`` (opt-out)."""
    provision: dict[str, Any] = {"type": "deny"}
    if roles:
        provision["actor"] = [
            {"role": {"coding": [{"system": "urn:medtwin:role", "code": r}]}, "reference": {"reference": "Group/x"}}
            for r in roles
        ]
    return {
        "resourceType": "Consent",
        "id": f"consent-{pid}-{scope}",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": scope}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": provision,
    }


def store_consent(store: Store, resource: dict[str, Any]) -> None:
    """Store a Consent through the FHIR ingest path (as POST /fhir/Consent does)."""
    import orjson

    from medtwin.interop.fhir import ingest_document

    result = ingest_document(store, orjson.dumps(resource))
    assert not result.problems, result.problems


@dataclass
class Api:
    """A platform, its ASGI app, a test client, and a token factory."""

    platform: Platform
    app: Any
    client: TestClient
    store: Store

    def token(
        self,
        role: str,
        scope: str = "user/*.cruds",
        *,
        subject: str | None = None,
        teams: tuple[str, ...] = (),
        wards: tuple[str, ...] = (),
        patient: str | None = None,
    ) -> str:
        grant = TokenService.grant(
            subject or f"u-{role}",
            role,
            parse_scopes(scope),
            teams=teams,
            wards=wards,
            patient=patient,
            username=subject or f"u-{role}",
        )
        return str(self.platform.tokens.issue(grant)["access_token"])

    def headers(self, token: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", **extra}

    def close(self) -> None:
        self.client.close()
        broker = self.platform.extra.get("broker")
        if broker is not None:
            broker.close()
        self.platform.close()
        self.store.close()


def make_api(url: str, tmp_path: Path, **settings: Any) -> Api:
    store = Store(url)
    values: dict[str, Any] = {
        "rate_per_s": None,
        "audit_key_path": str(tmp_path / "audit.key"),
        "jwt_key_path": str(tmp_path / "jwt.pem"),
        **FAST_HASH,
        **settings,
    }
    platform = Platform.open(ServerSettings(**values), store)
    app = create_app(platform)
    return Api(platform, app, TestClient(app), store)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """A secured API over an empty SQLite store."""
    made = make_api(f"sqlite:///{tmp_path / 'api.db'}", tmp_path)
    try:
        yield made
    finally:
        made.close()


class LiveServer:
    """The app served by uvicorn on a loopback port in a thread (for SSE, HTTPS and the load bench)."""

    def __init__(self, app: Any, **config: Any) -> None:
        import uvicorn

        cfg = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **config)
        self.server = uvicorn.Server(cfg)
        self.server.capture_signals = _no_signals  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _no_signals() -> Any:
    import contextlib

    return contextlib.nullcontext()


@pytest.fixture
def live() -> Iterator[Callable[..., LiveServer]]:
    """Start apps on loopback ports; every one is stopped after the test."""
    started: list[LiveServer] = []

    def start(app: Any, **config: Any) -> LiveServer:
        server = LiveServer(app, **config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
