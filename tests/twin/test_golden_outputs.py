"""The twin's outputs pinned to a golden fixture recorded before the runtime was optimised.

Two deterministic feeds: a virtual ward (``virtual_ward(50, seed=1)``, 5 simulated hours, with MDC codes, degF
temperatures, FiO2, late arrivals, entered-in-error results, gaps longer than the freshness window and a restart
from snapshots half way), run through :class:`TwinRuntime` with a recording store; and 30 seeded random scenarios run
through :class:`PatientTwin` under four configurations (with a snapshot/restore in the middle). Everything the twin
produces is compared: events (all fields but the random ids, which are replaced by labels in order of appearance),
NEWS2 Observations, alert resolutions, snapshots, the NEWS2 results, forecasts and active alerts.

Regenerate only when a clinical change is intended and reviewed:
``.venv/bin/python tests/twin/test_golden_outputs.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from medtwin import codes
from medtwin.monitoring import AlertRules
from medtwin.monitoring.virtual import virtual_ward
from medtwin.records import Coding, Event, Observation, Quantity, Record
from medtwin.twin import PatientTwin, TwinRuntime, VitalsComponent

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "twin" / "golden_outputs.json"
T0 = datetime(2026, 1, 1, 6, 0, tzinfo=UTC)
MDC = {"hr": "147842", "rr": "151562", "spo2": "150456", "sbp": "150301", "temp": "150344"}


# -- normalising outputs --------------------------------------------------------------------------------------
class Labels:
    """Replaces random ids (events, NEWS2 observations) by labels in order of first appearance."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def add(self, identifier: str, prefix: str) -> str:
        return self.ids.setdefault(identifier, f"{prefix}{len(self.ids)}")

    def plain(self, value: Any) -> Any:
        """*value* as JSON-ready data with known ids replaced by their labels."""
        if isinstance(value, str):
            return self.ids.get(value, value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, timedelta):
            return value.total_seconds()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: self.plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): self.plain(v) for k, v in value.items()}
        if isinstance(value, Sequence):
            return [self.plain(v) for v in value]
        raise TypeError(f"cannot normalise {type(value).__name__}")

    def records(self, records: Sequence[Record]) -> list[Any]:
        """*records* as [type name, plain record]; their ids are labelled first (a derived event names its
        NEWS2 Observation, which comes after it)."""
        for record in records:
            if isinstance(record, Event):
                self.add(record.event_id, "E")
            elif isinstance(record, Observation):
                self.add(record.observation_id, "N")
        return [[type(record).__name__, self.plain(record)] for record in records]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _summary(records: list[Any]) -> str:
    """A readable one-line summary of plain records (the digest pins every field)."""
    out = []
    for kind, r in records:
        if kind == "Event":
            out.append(f"{r['event_id']}={r['kind']}:{r['code']}:{r['severity']}@{r['time'][11:16]}")
        else:
            out.append(f"{r['observation_id']}=NEWS2:{r['value']['value']:g}:{r['status']}")
    return " ".join(out)


def _pinned(records: list[Any]) -> list[str]:
    """[digest of everything, summary] of plain records."""
    return [_digest(records), _summary(records)]


class RecordingStore:
    """A RuntimeStore that records what the runtime writes (with or without the batched status update)."""

    def __init__(self, labels: Labels, *, batched: bool) -> None:
        self.labels = labels
        self.writes: list[Any] = []
        self.records: list[Any] = []
        self.resolutions: list[Any] = []
        self.snapshots: list[str] = []
        self.blobs: dict[str, bytes] = {}
        self.batched = batched

    def write(self, records: Sequence[Record]) -> None:
        plain = self.labels.records(records)
        self.records.extend(plain)
        self.writes.append(_pinned(plain))

    def add_events(self, events: Sequence[Event]) -> None:
        raise AssertionError("the runtime writes through write() when the store has it")

    def upsert_events(self, events: Sequence[Event]) -> None:
        """Escalations: new versions of alerts already written (recorded as a write of their own)."""
        plain = self.labels.records(events)
        self.records.extend(plain)
        self.writes.append(["upsert", *_pinned(plain)])

    def update_event_status(self, event_id: str, status: str, by: str | None = None) -> Event:
        if self.batched:
            raise AssertionError("the batched update should have been used")
        self.resolutions.append([self.labels.plain(event_id), status, by])
        return Event(kind="alert", code="x", time=T0, message="")

    def __getattr__(self, name: str) -> Any:
        if name == "update_event_statuses" and self.__dict__.get("batched"):
            return self._update_event_statuses
        raise AttributeError(name)

    def _update_event_statuses(self, event_ids: Sequence[str], status: str, by: str | None = None) -> list[Event]:
        self.resolutions.extend([self.labels.plain(i), status, by] for i in event_ids)
        return [Event(kind="alert", code="x", time=T0, message="") for _ in event_ids]

    def save_snapshot(self, twin_id: str, blob: bytes, at: datetime) -> None:
        self.blobs[twin_id] = blob
        self.snapshots.append(_digest([twin_id, self.labels.plain(json.loads(blob))]))

    def latest_snapshot(self, twin_id: str) -> tuple[datetime, bytes] | None:
        blob = self.blobs.get(twin_id)
        return None if blob is None else (T0, blob)


# -- the virtual ward feed ------------------------------------------------------------------------------------
def _q(patient: str, code: Coding, value: float, unit: str, at: datetime, oid: str, **kw: Any) -> Observation:
    return Observation(
        patient_id=patient, code=code, effective=at, value=Quantity(value=value, unit=unit), observation_id=oid, **kw
    )


def ward_messages() -> list[list[Observation]]:
    """One list of observations per monitor reading, in arrival order (some readings arrive late)."""
    ward = virtual_ward(50, start=T0, seed=1)
    messages: list[tuple[float, list[Observation]]] = []
    for step in range(30):
        for i, p in enumerate(ward):
            at = T0 + timedelta(minutes=10 * step + i % 10)
            s = p.sample(at)
            oid = f"{p.key}/{step}"
            pid = p.key
            obs: list[Observation] = []
            mdc = i % 5 == 3

            def coded(name: str, loinc: Coding) -> Coding:
                return Coding(system=codes.MDC, code=MDC[name]) if mdc else loinc  # noqa: B023

            if s.heart_rate_per_min is not None:
                obs.append(_q(pid, coded("hr", codes.HEART_RATE), s.heart_rate_per_min, "/min", at, f"{oid}/hr"))
            # a 90-minute gap in respiration rate for some patients: the value goes stale, NEWS2 becomes partial
            if s.respiration_rate_per_min is not None and not (i % 8 == 1 and 8 <= step < 17):
                obs.append(
                    _q(pid, coded("rr", codes.RESPIRATORY_RATE), s.respiration_rate_per_min, "/min", at, f"{oid}/rr")
                )
            if s.spo2_percent is not None:
                code = coded("spo2", codes.OXYGEN_SATURATION_PULSE_OX if i % 3 else codes.OXYGEN_SATURATION)
                obs.append(_q(pid, code, s.spo2_percent, "%", at, f"{oid}/spo2"))
            if s.systolic_bp_mm_hg is not None:
                obs.append(_q(pid, coded("sbp", codes.SYSTOLIC_BP), s.systolic_bp_mm_hg, "mm[Hg]", at, f"{oid}/sbp"))
            if s.diastolic_bp_mm_hg is not None:
                obs.append(_q(pid, codes.DIASTOLIC_BP, s.diastolic_bp_mm_hg, "mm[Hg]", at, f"{oid}/dbp"))
            if s.temperature_c is not None:
                if i % 7 == 2:
                    temp_f = round(s.temperature_c * 9 / 5 + 32, 1)
                    obs.append(_q(pid, coded("temp", codes.BODY_TEMPERATURE), temp_f, "[degF]", at, f"{oid}/temp"))
                else:
                    temp = coded("temp", codes.BODY_TEMPERATURE)
                    obs.append(_q(pid, temp, s.temperature_c, "Cel", at, f"{oid}/temp"))
            if i % 6 == 4:
                fio2 = 28.0 if (s.oxygen_flow_l_min or 0) > 0 else 21.0
                obs.append(_q(pid, codes.INHALED_OXYGEN_CONCENTRATION, fio2, "%", at, f"{oid}/fio2"))
            elif s.oxygen_flow_l_min is not None:
                obs.append(_q(pid, codes.INHALED_OXYGEN_FLOW, s.oxygen_flow_l_min, "L/min", at, f"{oid}/o2"))
            if s.acvpu is not None:
                value: Coding | str = codes.ACVPU[s.acvpu] if i % 4 else {"A": "alert", "C": "confused"}[s.acvpu]
                obs.append(
                    Observation(
                        patient_id=pid,
                        code=codes.LEVEL_OF_CONSCIOUSNESS,
                        effective=at,
                        value=value,
                        observation_id=f"{oid}/acvpu",
                    )
                )
            if (step * 50 + i) % 37 == 0:  # a wild value, entered in error: ignored
                obs.append(_q(pid, codes.HEART_RATE, 250.0, "/min", at, f"{oid}/err", status="entered-in-error"))
            arrival = 10.0 * step + i % 10
            if (step * 50 + i) % 23 == 5:
                arrival += 25.0  # a late arrival: older than readings that came before it
            messages.append((arrival, obs))
    messages.sort(key=lambda m: m[0])
    return [m for _, m in messages]


def run_ward(*, batched: bool) -> dict[str, Any]:
    """The ward feed through two runtimes (the second restored from the first's snapshots), in groups of 64."""
    labels = Labels()
    store = RecordingStore(labels, batched=batched)
    published: list[Any] = []
    returned: list[Any] = []
    messages = ward_messages()
    half = len(messages) // 2
    for part in (messages[:half], messages[half:]):
        runtime = TwinRuntime(store, snapshot_every=timedelta(0))
        runtime.subscribe(lambda e: published.append(labels.plain(e)))
        for i in range(0, len(part), 64):
            events = runtime.process_many([(m, None) for m in part[i : i + 64]])
            returned.extend(labels.plain(e) for e in events)
        runtime.close()
    finals = {k: labels.plain(json.loads(v)) for k, v in sorted(store.blobs.items())}
    assert returned == published
    return {
        "records": store.records,
        "writes": store.writes,
        "resolutions": store.resolutions,
        "snapshot_digests": store.snapshots,
        "final_snapshots": finals,
    }


# -- random scenarios -----------------------------------------------------------------------------------------
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "scale2": {"spo2_scale": 2},
    "fresh30": {"freshness": timedelta(minutes=30)},
    "rules": {
        "rules": AlertRules(
            min_level="medium",
            rise_points=3,
            rise_window=timedelta(hours=2),
            spo2_drop_percent=2.0,
            spo2_window=timedelta(minutes=30),
            qsofa=False,
        )
    },
}


class _Step:
    """The observations of one scenario step at time *t* (some of them late)."""

    def __init__(self, rng: random.Random, pid: str, t: datetime, n: int) -> None:
        self.rng, self.pid, self.t, self.n = rng, pid, t, n
        self.obs: list[Observation] = []

    def at(self) -> datetime:
        late = self.rng.random() < 0.1
        return self.t - timedelta(minutes=self.rng.choice([3, 20, 90])) if late else self.t

    def next_id(self) -> str:
        return f"{self.pid}/{self.n}/{len(self.obs)}"

    def q(self, code: Coding, value: float, unit: str, name: str) -> None:
        rng = self.rng
        if rng.random() < 0.1:
            code = Coding(system=codes.MDC, code=MDC[name]) if name in MDC else code
        status = "entered-in-error" if rng.random() < 0.03 else "cancelled" if rng.random() < 0.02 else "final"
        self.obs.append(_q(self.pid, code, value, unit, self.at(), self.next_id(), status=status))


def scenario_steps(seed: int) -> list[list[Observation]]:
    """40 steps of random vitals for patient ``s{seed}`` across every band, with late, stale and ignored values."""
    rng = random.Random(seed)
    pid = f"s{seed}"
    t = T0
    steps: list[list[Observation]] = []
    for n in range(40):
        t += timedelta(minutes=rng.choice([0, 1, 2, 5, 5, 10, 15, 30, 70]))
        step = _Step(rng, pid, t, n)
        q, obs = step.q, step.obs
        if rng.random() < 0.8:
            q(codes.RESPIRATORY_RATE, rng.choice([rng.randint(5, 35), rng.uniform(5, 35)]), "/min", "rr")
        if rng.random() < 0.8:
            spo2_code = rng.choice([codes.OXYGEN_SATURATION_PULSE_OX, codes.OXYGEN_SATURATION])
            q(spo2_code, rng.choice([rng.randint(80, 100), round(rng.uniform(60, 100), 1), 95.5]), "%", "spo2")
        if rng.random() < 0.7:
            if rng.random() < 0.5:
                q(codes.INHALED_OXYGEN_FLOW, rng.choice([0.0, 0.0, 2.0, 4.0]), "L/min", "o2")
            else:
                q(codes.INHALED_OXYGEN_CONCENTRATION, rng.choice([21.0, 24.0, 40.0]), "%", "fio2")
        if rng.random() < 0.8:
            q(codes.SYSTOLIC_BP, rng.randint(70, 230), "mm[Hg]", "sbp")
        if rng.random() < 0.8:
            hr_code = rng.choice([codes.HEART_RATE, codes.PULSE_RATE_OXIMETRY])
            q(hr_code, rng.randint(30, 150), "/min", "hr")
        if rng.random() < 0.7:
            if rng.random() < 0.2:
                q(codes.BODY_TEMPERATURE, round(rng.uniform(94.0, 104.0), 1), "[degF]", "temp")
            else:
                q(codes.BODY_TEMPERATURE, round(rng.uniform(34.0, 40.5), 1), "Cel", "temp")
        if rng.random() < 0.7:
            letter = rng.choice("AAAAACVPU")
            choices: list[Coding | str] = [codes.ACVPU[letter], letter.lower(), " " + letter, "?"]
            value = rng.choice(choices)
            loc = codes.LEVEL_OF_CONSCIOUSNESS
            obs.append(
                Observation(patient_id=pid, code=loc, effective=step.at(), value=value, observation_id=step.next_id())
            )
        if rng.random() < 0.1:
            q(codes.CREATININE_SERUM, 1.0, "mg/dL", "creat")  # not a vital sign
        if rng.random() < 0.05:
            obs.append(
                Observation(patient_id=pid, code=codes.HEART_RATE, effective=t, value="n/a", observation_id=f"x{n}")
            )
        if rng.random() < 0.05:
            obs.append(_q("someone-else", codes.RESPIRATORY_RATE, 40, "/min", t, f"other/{n}"))
        rng.shuffle(obs)
        steps.append(obs)
    return steps


def run_scenario(seed: int, config: str) -> list[Any]:
    """Per step, the digest of (and a few words on): events, NEWS2 Observation, NEWS2 result, resolved and active
    alerts, forecast and the twin's snapshot."""
    labels = Labels()
    pid = f"s{seed}"
    twin = PatientTwin(pid, vitals=VitalsComponent(pid, **CONFIGS[config]))
    out: list[Any] = []
    for n, obs in enumerate(scenario_steps(seed)):
        if n == 20:
            twin = PatientTwin.restore(twin.snapshot(), vitals=VitalsComponent(pid, **CONFIGS[config]))
        events = twin.observe(obs)
        vitals = twin.vitals
        written: list[Record] = list(events)
        if any(e.code == "news2" for e in events):
            assert vitals.last_news2_observation is not None
            written.append(vitals.last_news2_observation)
        plain = labels.records(written)
        entry: dict[str, Any] = {"written": plain}
        entry["news2"] = labels.plain(vitals.last_news2)
        entry["cleared"] = labels.plain(vitals.cleared)
        vitals.cleared = []
        entry["active"] = labels.plain(vitals.tracker.active)
        entry["forecast"] = labels.plain(twin.forecast(timedelta(hours=1)))
        entry["state"] = labels.plain(json.loads(twin.snapshot()))
        news2 = "-" if vitals.last_news2 is None else f"{vitals.last_news2.total}/{vitals.last_news2.level}"
        out.append(f"{_digest(entry)} news2={news2} records={len(plain)}")
    return out


SEEDS = range(30)


def compute() -> dict[str, Any]:
    ward = run_ward(batched=False)
    del ward["records"]
    return {
        "ward": ward,
        "scenarios": {f"{seed}/{config}": run_scenario(seed, config) for seed in SEEDS for config in CONFIGS},
    }


def _dump(value: dict[str, Any]) -> str:
    """JSON with one line per written batch / scenario step (readable diffs, modest size)."""
    parts = []
    for key, section in value.items():
        inner = []
        for name, items in section.items():
            lines = ",\n".join(json.dumps(x, separators=(",", ":"), sort_keys=True) for x in items)
            inner.append(f"{json.dumps(name)}: [\n{lines}\n]" if isinstance(items, list) else
                         f"{json.dumps(name)}: {json.dumps(items, separators=(',', ':'), sort_keys=True)}")  # fmt: skip
        parts.append(f"{json.dumps(key)}: {{\n" + ",\n".join(inner) + "\n}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return dict(json.loads(FIXTURE.read_text(encoding="utf-8")))


def _roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("batched", [False, True], ids=["one-status-update-per-alert", "update_event_statuses"])
def test_ward_feed_matches_the_golden_outputs(golden: dict[str, Any], batched: bool) -> None:
    got = _roundtrip(run_ward(batched=batched))
    if not batched:
        _check_coverage(got["records"], got["resolutions"])
    want = golden["ward"]
    assert len(got["writes"]) == len(want["writes"])
    for i, (g, w) in enumerate(zip(got["writes"], want["writes"], strict=True)):
        assert g == w, f"write {i} differs"
    assert got["resolutions"] == want["resolutions"]
    assert got["final_snapshots"] == want["final_snapshots"]
    assert got["snapshot_digests"] == want["snapshot_digests"]


def _check_coverage(records: list[Any], resolutions: list[Any]) -> None:
    """The ward feed exercises every rule, escalations, stale values and resolutions."""
    alerts = {r[1]["code"] for r in records if r[0] == "Event" and r[1]["kind"] == "alert"}
    assert alerts == {"news2-response", "news2-red-parameter", "news2-rising", "spo2-falling", "qsofa-positive"}
    assert any(r[1]["data"].get("escalated_from") for r in records if r[0] == "Event")
    assert any(r[1]["data"].get("recurred") for r in records if r[0] == "Event")
    assert any(r[1]["data"].get("stale") for r in records if r[0] == "Event")
    assert len(resolutions) > 20


@pytest.mark.parametrize("config", list(CONFIGS))
def test_random_scenarios_match_the_golden_outputs(golden: dict[str, Any], config: str) -> None:
    for seed in SEEDS:
        key = f"{seed}/{config}"
        got = _roundtrip(run_scenario(seed, config))
        want = golden["scenarios"][key]
        for n, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g == w, f"scenario {key}, step {n} differs"


if __name__ == "__main__":
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(_dump(compute()), encoding="utf-8")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size // 1024} KiB)")
