"""Alerts a clinician can act on: RCP 2017 response levels, one alert per condition, identity where allowed.

* Severity is the NEWS2 clinical response level (RCP 2017, chart 2 / table 2): 0-4 low, a single red parameter
  low-medium, 5-6 medium, 7+ high; a rise from 0 to 2 is still low (it was labelled MEDIUM).
* A repeated or escalating condition updates its open alert instead of raising another (the demo raised 8 alerts
  for one patient in a minute, and "SpO2 fell from 97 % to 94 %" three times); the store keeps the latest version.
* `medtwin alerts list` shows name, MRN and ward/bed from the store (``--pseudonymous``: the id only), and says
  how many alerts of other statuses it does not show.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin import codes
from medtwin.cli import app
from medtwin.cli.alerts import AlertPrinter, patient_label
from medtwin.monitoring import AlertRules, TrendHistory, evaluate_rules, news2_score, qsofa_score
from medtwin.monitoring.virtual import VitalsSample, virtual_ward
from medtwin.records import (
    Encounter,
    EncounterLocation,
    Event,
    Identifier,
    Observation,
    Patient,
    PatientIdentity,
    Quantity,
)
from medtwin.store import Store
from medtwin.twin import TwinRuntime

T0 = datetime(2026, 1, 1, 6, tzinfo=UTC)
runner = CliRunner()


def signals_for(history: list[int], **current: float | str | bool) -> dict[str, str]:
    """code -> severity of the signals for the current vitals, after a NEWS2 history (one point per hour)."""
    n2 = TrendHistory(timedelta(hours=12))
    for hour, total in enumerate(history):
        n2.add(T0 + timedelta(hours=hour), float(total))
    at = T0 + timedelta(hours=len(history))
    result = news2_score(**current)  # type: ignore[arg-type]
    n2.add(at, float(result.total))
    spo2 = TrendHistory(timedelta(hours=2))
    qsofa = qsofa_score(
        respiration_rate_per_min=current.get("respiration_rate_per_min"),  # type: ignore[arg-type]
        systolic_bp_mm_hg=current.get("systolic_bp_mm_hg"),  # type: ignore[arg-type]
        acvpu=current.get("consciousness"),  # type: ignore[arg-type]
    )
    signals = evaluate_rules(at=at, news2=result, news2_history=n2, spo2_history=spo2, qsofa=qsofa)
    return {s.code: s.severity for s in signals}


NORMAL = {
    "respiration_rate_per_min": 15,
    "spo2_percent": 97,
    "on_oxygen": False,
    "systolic_bp_mm_hg": 120,
    "pulse_per_min": 70,
    "consciousness": "A",
    "temperature_c": 37.0,
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # NEWS2 2 (RR 21-24 scores 2) after 0: a rise, but a low clinical response (RCP: 0-4 low)
        ({"respiration_rate_per_min": 22}, {"news2-rising": "low"}),
        # a single red score (RR 25) with a total of 3: low-medium, an urgent ward-based response
        (
            {"respiration_rate_per_min": 26},
            {"news2-response": "low-medium", "news2-red-parameter": "low-medium", "news2-rising": "low-medium"},
        ),
        # total 5 (RR 22: 2, pulse 115: 2, temp 38.5: 1): medium
        (
            {"respiration_rate_per_min": 22, "pulse_per_min": 115, "temperature_c": 38.5},
            {"news2-response": "medium", "news2-rising": "medium"},
        ),
        # total 8 with a red score: high; the red-parameter alert keeps its own level
        (
            {"respiration_rate_per_min": 26, "pulse_per_min": 135, "systolic_bp_mm_hg": 95},
            {
                "news2-response": "high",
                "news2-red-parameter": "low-medium",
                "news2-rising": "high",
                "qsofa-positive": "high",
            },
        ),
    ],
)
def test_severity_is_the_rcp_clinical_response_level(change: dict[str, float], expected: dict[str, str]) -> None:
    assert signals_for([0, 0, 0], **(NORMAL | change)) == expected


def test_spo2_falling_takes_the_news2_level() -> None:
    result = news2_score(**(NORMAL | {"spo2_percent": 94}))  # scale 1: 94-95 scores 1, total 1: low
    spo2 = TrendHistory(timedelta(hours=2))
    spo2.add(T0, 97.0)
    spo2.add(T0 + timedelta(minutes=30), 94.0)
    n2 = TrendHistory(timedelta(hours=6))
    n2.add(T0 + timedelta(minutes=30), float(result.total))
    at = T0 + timedelta(minutes=30)
    (signal,) = evaluate_rules(at=at, news2=result, news2_history=n2, spo2_history=spo2)
    assert (signal.code, signal.severity) == ("spo2-falling", "low")  # was "medium" whatever the score


def ward_observations(patient_key: str, s: VitalsSample) -> list[Observation]:
    """One monitor reading as Observations (what the HL7 mapping stores for it)."""
    out = [
        Observation(patient_id=patient_key, code=code, effective=s.time, value=Quantity(value=value, unit=unit))
        for code, value, unit in (
            (codes.HEART_RATE, s.heart_rate_per_min, "/min"),
            (codes.RESPIRATORY_RATE, s.respiration_rate_per_min, "/min"),
            (codes.OXYGEN_SATURATION_PULSE_OX, s.spo2_percent, "%"),
            (codes.SYSTOLIC_BP, s.systolic_bp_mm_hg, "mm[Hg]"),
            (codes.BODY_TEMPERATURE, s.temperature_c, "Cel"),
            (codes.INHALED_OXYGEN_FLOW, s.oxygen_flow_l_min, "L/min"),
        )
        if value is not None
    ]
    if s.acvpu is not None:
        loc = codes.LEVEL_OF_CONSCIOUSNESS
        out.append(Observation(patient_id=patient_key, code=loc, effective=s.time, value=codes.ACVPU[s.acvpu]))
    return out


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_a_demo_ward_raises_each_condition_at_most_twice_in_12_hours(seed: int) -> None:
    """The demo's shape: 4 virtual patients read every 6 simulated minutes for 12 hours (`make demo`: 1 minute at
    720x). Before: up to 13 alerts of one rule for one patient, the same "SpO2 fell" message as separate alerts."""
    runtime = TwinRuntime(None)
    ward = virtual_ward(4, start=T0, seed=seed)
    alerts: dict[tuple[str, str], set[str]] = {}
    spo2_messages: Counter[tuple[str, str]] = Counter()
    for step in range(120):
        for patient in ward:
            sample = patient.sample(T0 + timedelta(minutes=6 * step))
            for event in runtime.process(ward_observations(patient.key, sample)):
                if event.kind != "alert":
                    continue
                alerts.setdefault((patient.key, event.code), set()).add(event.event_id)
                if event.code == "spo2-falling" and event.data["revision"] == 1:
                    spo2_messages[(patient.key, event.message.split(" since")[0])] += 1
    per_condition = {key: len(ids) for key, ids in alerts.items()}
    assert per_condition
    assert max(per_condition.values()) <= 2, per_condition
    assert all(n == 1 for n in spo2_messages.values()), spo2_messages


def test_store_keeps_the_latest_version_of_an_escalated_alert(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        runtime = TwinRuntime(store)

        def vitals(minutes: int, **change: float) -> list[Observation]:
            values = {"rr": 15.0, "pulse": 70.0, "sbp": 120.0} | change
            t = T0 + timedelta(minutes=minutes)
            return [
                Observation(patient_id="p1", code=c, effective=t, value=Quantity(value=values[k], unit=u))
                for k, c, u in (
                    ("rr", codes.RESPIRATORY_RATE, "/min"),
                    ("pulse", codes.HEART_RATE, "/min"),
                    ("sbp", codes.SYSTOLIC_BP, "mm[Hg]"),
                )
            ]

        runtime.process(vitals(0, rr=26))  # NEWS2 3 with a red score: low-medium
        (raised,) = store.events(kind="alert", status="active", patient_id="p1")[:1]
        response = next(e for e in store.events(kind="alert") if e.code == "news2-response")
        assert response.severity == "low-medium"
        store.update_event_status(response.event_id, "acknowledged", by="nurse")
        runtime.process(vitals(10, rr=26, pulse=135, sbp=95))  # 3 + 3 + 2 = 8: high
        stored = [e for e in store.events(kind="alert") if e.code == "news2-response"]
        assert len(stored) == 1  # updated, not a second alert
        (latest,) = stored
        assert latest.event_id == response.event_id
        assert (latest.severity, latest.status) == ("high", "active")  # an acknowledged alert that escalates is active
        assert latest.data["revision"] == 2
        assert latest.data["escalated_from"] == "low-medium"
        assert latest.time == T0  # raised then
        assert raised.patient_id == "p1"
        counts = store.event_counts(kind="alert")
        assert sum(counts.values()) == len(store.events(kind="alert"))
    finally:
        store.close()


def test_upsert_events_replaces_known_ids_and_inserts_new_ones(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'u.db'}") as store:
        first = Event(kind="alert", code="x", time=T0, message="one", patient_id="p1", severity="low")
        store.add_events([first])
        store.update_event_status(first.event_id, "resolved")
        again = Event(
            kind="alert", code="x", time=T0, message="two", patient_id="p1", severity="medium", event_id=first.event_id
        )
        other = Event(kind="alert", code="y", time=T0, message="new", patient_id="p1", severity="low")
        store.upsert_events([again, other])
        stored = {e.event_id: e for e in store.events(kind="alert")}
        assert len(stored) == 2
        assert (stored[first.event_id].message, stored[first.event_id].status) == ("two", "active")
        assert store.event_counts(kind="alert") == {"active": 2}
        assert store.events(kind="alert", status="active", patient_id="p1")  # the status column follows


def test_an_escalation_clears_who_acknowledged_the_alert_and_when(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    path = tmp_path / "ack.db"
    with Store(f"sqlite:///{path}") as store:
        alert = Event(kind="alert", code="x", time=T0, message="one", patient_id="p1", severity="low")
        store.add_events([alert])
        store.update_event_status(alert.event_id, "acknowledged", by="nurse-1")
        resolved = Event(kind="alert", code="z", time=T0, message="z", patient_id="p1", severity="low")
        store.add_events([resolved])
        resolved = store.update_event_status(resolved.event_id, "resolved", by="nurse-2")
        escalated = dataclasses.replace(alert, severity="high", status="active")
        still = dataclasses.replace(resolved, message="z, again")
        store.upsert_events([escalated, still])
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        rows = {
            r[0]: (r[1], r[2], r[3] is not None)
            for r in conn.execute(text("SELECT event_id, status, status_by, status_time FROM events"))
        }
    engine.dispose()
    assert rows[alert.event_id] == ("active", None, False)  # the acknowledgement no longer holds
    assert rows[resolved.event_id] == ("resolved", "nurse-2", True)  # a non-active version keeps who and when


def identified_store(tmp_path: Path) -> tuple[str, list[Event]]:
    db = f"sqlite:///{tmp_path / 'id.db'}"
    identity = PatientIdentity(
        identifiers=(Identifier(system="urn:hospital", value="MRN-777", type_code="MR"),),
        family="Lovelace",
        given=("Ada",),
    )
    stay = EncounterLocation(unit="WARD-3", start=T0, bed="12")
    alerts = [
        Event(kind="alert", code=f"rule-{i}", time=T0, message=f"alert {i}", patient_id="pt-1", severity="medium")
        for i in range(5)
    ]
    with Store(db) as store:
        store.write([Patient(patient_id="pt-1", identity=identity)])
        store.write([Encounter(encounter_id="e1", patient_id="pt-1", status="in-progress", class_code="IMP",
                               start=T0, locations=(stay,))])  # fmt: skip
        store.add_events(alerts)
        store.update_event_statuses([a.event_id for a in alerts[:3]], "resolved")
    return db, alerts


def test_alerts_list_shows_name_mrn_and_ward_and_what_it_hides(tmp_path: Path) -> None:
    db, _ = identified_store(tmp_path)
    result = runner.invoke(app, ["alerts", "list", "--db", db])
    assert result.exit_code == 0, result.output
    assert "Ada Lovelace, MRN MRN-777" in result.stdout
    assert "WARD-3 bed 12" in result.stdout
    assert "2 active alert(s)" in result.stdout
    assert "not shown: 3 resolved (show them with --status all" in result.stdout
    hidden = runner.invoke(app, ["alerts", "list", "--db", db, "--pseudonymous"])
    assert "Lovelace" not in hidden.stdout
    assert "MRN-777" not in hidden.stdout
    assert "pt-1" in hidden.stdout
    data = json.loads(runner.invoke(app, ["alerts", "list", "--db", db, "--json", "--status", "all"]).stdout)
    assert len(data) == 5
    assert {(d["patient"], d["location"]) for d in data} == {("Ada Lovelace, MRN MRN-777", "WARD-3 bed 12")}
    pseudo = json.loads(runner.invoke(app, ["alerts", "list", "--db", db, "--json", "--pseudonymous"]).stdout)
    assert all("patient" not in d for d in pseudo)
    bad = runner.invoke(app, ["alerts", "list", "--db", db, "--status", "open"])
    assert bad.exit_code == 2


def test_the_live_printer_names_the_patient_and_travels_to_the_worker_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, alerts = identified_store(tmp_path)
    printer = pickle.loads(pickle.dumps(AlertPrinter(db)))  # sent to the twin runtime's process by value
    printer(alerts[4])
    assert "Ada Lovelace, MRN MRN-777 (WARD-3 bed 12)" in capsys.readouterr().out
    AlertPrinter(db, pseudonymous=True)(alerts[4])
    out = capsys.readouterr().out
    assert "pt-1" in out
    assert "Lovelace" not in out
    with Store(db) as store:
        assert patient_label(store, "nobody") == ("nobody", "")


def test_rules_still_configurable() -> None:
    quiet = AlertRules(min_level="medium")
    n2 = TrendHistory(timedelta(hours=6))
    result = news2_score(**(NORMAL | {"respiration_rate_per_min": 26}))
    n2.add(T0, float(result.total))
    codes_fired = {s.code for s in evaluate_rules(at=T0, news2=result, news2_history=n2, spo2_history=n2, rules=quiet)}
    assert codes_fired == {"news2-red-parameter"}  # total 3 is below the medium threshold of news2-response
