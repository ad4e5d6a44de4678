"""The component contract, the registry (built-ins and entry points) and the routing of records to components."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

import pytest

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.records import Coding, Event, MedicationAdministration, Observation, Patient, Quantity, Record
from medtwin.twin import PatientTwin, TwinRuntime
from medtwin.twin.component import ENTRY_POINT_GROUP, ComponentRegistry, ComponentSpec, Consumes

T0 = datetime(2026, 3, 1, 8, tzinfo=UTC)
STEPS = Coding(system=codes.LOINC, code="55423-8", display="Number of steps")


class StepCounter:
    """A tiny third-party component: counts steps, alerts once over 10,000 a day."""

    name = "steps"

    def __init__(self, patient_id: str, settings: Mapping[str, Any]) -> None:
        self.patient_id = patient_id
        self.total = 0.0
        self.seen: list[str] = []

    def observe(self, records: Sequence[Record]) -> list[Record]:
        out: list[Record] = []
        for r in records:
            assert isinstance(r, Observation)
            assert isinstance(r.value, Quantity)
            before = self.total
            self.total += r.value.value
            self.seen.append(r.observation_id)
            if before < 10_000 <= self.total:
                out.append(
                    Event(
                        kind="alert",
                        code="steps-goal",
                        time=r.effective,
                        message="10,000 steps",
                        patient_id=self.patient_id,
                        event_id=f"{self.patient_id}-steps-goal",
                    )
                )
        return out

    def forecast(self, horizon: timedelta) -> Any:
        return None

    def what_if(self, scenario: Mapping[str, Any]) -> Any:
        return None

    def recommend(self, goal: Mapping[str, Any] | None = None) -> Any:
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"total": self.total, "seen": self.seen}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.total = float(state["total"])
        self.seen = list(state["seen"])


STEPS_SPEC = ComponentSpec(
    name="steps",
    consumes=(Consumes.observations([STEPS], "step count"),),
    factory=lambda pid, settings: StepCounter(pid, settings),  # type: ignore[arg-type,return-value]
)


def steps(pid: str, n: float, minutes: int) -> Observation:
    return Observation(
        patient_id=pid,
        code=STEPS,
        effective=T0 + timedelta(minutes=minutes),
        value=Quantity(value=n, unit="1"),
        observation_id=f"{pid}-steps-{minutes}",
    )


def heart_rate(pid: str, value: float, minutes: int) -> Observation:
    return Observation(
        patient_id=pid,
        code=codes.HEART_RATE,
        effective=T0 + timedelta(minutes=minutes),
        value=Quantity(value=value, unit="/min"),
        observation_id=f"{pid}-hr-{minutes}",
    )


def test_builtins_declare_what_they_consume() -> None:
    registry = ComponentRegistry.default(entry_points=False)
    assert registry.names() == ["vitals", "glucose", "drug"]
    cgm = Observation(
        patient_id="p", code=codes.GLUCOSE_INTERSTITIAL, effective=T0, value=Quantity(value=100, unit="mg/dL")
    )
    level = Observation(
        patient_id="p", code=codes.VANCOMYCIN_TROUGH, effective=T0, value=Quantity(value=10, unit="mg/L")
    )
    vanco = MedicationAdministration(
        administration_id="a",
        patient_id="p",
        start=T0,
        medication=Coding(system=codes.SNOMED, code="372735009", display="Vancomycin"),
        dose=Quantity(value=1, unit="g"),
    )
    paracetamol = MedicationAdministration(
        administration_id="b",
        patient_id="p",
        start=T0,
        medication=Coding(system=codes.SNOMED, code="387517004", display="Paracetamol"),
        dose=Quantity(value=1, unit="g"),
    )
    assert [s.name for s in registry.wanting(cgm)] == ["vitals", "glucose"]
    assert [s.name for s in registry.wanting(level)] == ["vitals", "drug"]
    assert [s.name for s in registry.wanting(vanco)] == ["drug"]
    assert registry.wanting(paracetamol) == []
    assert registry.get("drug").starts(vanco)
    assert not registry.get("drug").starts(level)
    with pytest.raises(ValidationError, match="no twin component 'nope'"):
        registry.get("nope")
    with pytest.raises(ValidationError, match="registered twice"):
        registry.register(registry.get("drug"))


class _EntryPoint:
    def __init__(self, name: str, value: object) -> None:
        self.name, self.value, self._value = name, f"tests:{name}", value

    def load(self) -> object:
        return self._value


def test_entry_points_add_components_and_bad_ones_are_left_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fake(group: str) -> list[_EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return [
            _EntryPoint("steps", lambda: STEPS_SPEC),
            _EntryPoint("broken", 42),
            _EntryPoint(
                "vitals", ComponentSpec(name="vitals", consumes=(Consumes("Observation"),), factory=STEPS_SPEC.factory)
            ),
        ]

    monkeypatch.setattr(metadata, "entry_points", fake)
    registry = ComponentRegistry.default()
    assert registry.names() == ["vitals", "glucose", "drug", "steps"]
    assert "'broken'" in caplog.text
    assert "int, not a ComponentSpec" in caplog.text
    assert "registered twice" in caplog.text


def test_entry_point_from_an_installed_distribution(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real dist-info on sys.path: importlib.metadata finds the entry point and the registry loads it."""
    pkg = tmp_path / "steps_twin.py"
    pkg.write_text("from tests.twin.test_components import STEPS_SPEC\nSPEC = STEPS_SPEC\n")
    info = tmp_path / "steps_twin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: steps-twin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nsteps = steps_twin:SPEC\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ComponentRegistry.default().names()[-1] == "steps"


def test_twin_composes_only_the_components_its_records_call_for() -> None:
    registry = ComponentRegistry([*ComponentRegistry.default(entry_points=False).specs(), STEPS_SPEC])
    twin = PatientTwin("p1", registry=registry)
    twin.observe([heart_rate("p1", 80, 0)])
    assert twin.components == {}
    out = twin.observe([steps("p1", 6000, 10), steps("someone-else", 9000, 10)])
    assert list(twin.components) == ["steps"]
    assert out == []
    out = twin.observe([steps("p1", 5000, 20)])
    assert [e.code for e in out if isinstance(e, Event)] == ["steps-goal"]
    restored = PatientTwin.restore(twin.snapshot(), registry=registry)
    component = restored.component("steps")
    assert isinstance(component, StepCounter)
    assert component.total == 11000
    assert component.seen == ["p1-steps-10", "p1-steps-20"]
    with pytest.raises(ValidationError, match="has no glucose component"):
        restored.component("glucose")


def test_records_before_a_component_starts_are_kept_for_it() -> None:
    twin = PatientTwin("p1", registry=ComponentRegistry.default(entry_points=False))
    weight = Observation(
        patient_id="p1", code=codes.BODY_WEIGHT, effective=T0, value=Quantity(value=82, unit="kg"), observation_id="w1"
    )
    twin.observe([weight])
    assert twin.components == {}
    state = json.loads(twin.snapshot())
    assert [kind for kind, _ in state["pending"]["drug"]] == ["Observation"]
    restored = PatientTwin.restore(twin.snapshot(), registry=ComponentRegistry.default(entry_points=False))
    restored.patient = Patient(patient_id="p1", gender="male")
    dose = MedicationAdministration(
        administration_id="d1",
        patient_id="p1",
        start=T0 + timedelta(hours=1),
        end=T0 + timedelta(hours=2),
        medication=Coding(system=codes.SNOMED, code="372735009", display="Vancomycin"),
        dose=Quantity(value=1000, unit="mg"),
    )
    restored.observe([dose])
    drug = restored.component("drug")
    assert drug.covariates["weight_kg"].keys() == {"w1"}  # type: ignore[union-attr]
    assert drug.sex == "male"  # type: ignore[union-attr]


def test_vitals_only_snapshot_is_unchanged_by_the_registry() -> None:
    """A twin that only sees vital signs snapshots exactly as before components existed (golden outputs)."""
    plain = PatientTwin("p1")
    composed = PatientTwin("p1", registry=ComponentRegistry.default(entry_points=False))
    for twin in (plain, composed):
        twin.observe([heart_rate("p1", 130, 0), Patient(patient_id="p1", gender="female")])  # type: ignore[list-item]
    assert plain.snapshot() == composed.snapshot()


def test_runtime_routes_every_record_kind() -> None:
    registry = ComponentRegistry([*ComponentRegistry.default(entry_points=False).specs(), STEPS_SPEC])
    runtime = TwinRuntime(None, registry=registry)
    events = runtime.process([steps("p2", 12_000, 5), heart_rate("p2", 90, 5), Patient(patient_id="p2")])
    assert [e.code for e in events if e.kind == "alert"] == ["steps-goal"]
    assert set(runtime.twins["p2"].components) == {"steps"}
