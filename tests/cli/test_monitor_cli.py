"""The monitor-area commands: news2, alerts list/ack/resolve, demo, monitors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.cli.monitor import short_id
from medtwin.records import Event
from medtwin.store import Store

runner = CliRunner()


def test_news2_json_reproduces_a_reference_case() -> None:
    # NEWS2_CASES.csv row 4: RR 21, SpO2 97 on air, SBP 100, pulse 95, A, 38.5 -> 6, medium
    args = ["news2", "--rr", "21", "--spo2", "97", "--air", "--sbp", "100", "--pulse", "95", "--acvpu", "A"]
    result = runner.invoke(app, [*args, "--temp", "38.5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["news2"]["total"] == 6
    assert data["news2"]["level"] == "medium"
    assert data["news2"]["complete"] is True
    assert data["qsofa"]["total"] == 1
    assert data["mews"]["total"] == 5


def test_news2_table_partial_and_bad_input() -> None:
    result = runner.invoke(app, ["news2", "--rr", "26"])
    assert result.exit_code == 0
    assert "NEWS2 3" in result.output
    assert "partial" in result.output
    assert "missing" in result.output
    bad = runner.invoke(app, ["news2", "--acvpu", "Z"])
    assert bad.exit_code == 2
    assert "ACVPU" in bad.output


def test_alerts_list_ack_resolve(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'alerts.db'}"
    store = Store(db)
    event = Event(
        kind="alert",
        code="news2-response",
        time=datetime(2026, 1, 1, 8, tzinfo=UTC),
        message="NEWS2 7: high clinical response",
        patient_id="p1",
        severity="high",
    )
    store.add_events([event])
    store.close()
    listed = runner.invoke(app, ["alerts", "list", "--db", db, "--json"])
    assert listed.exit_code == 0, listed.output
    (item,) = json.loads(listed.output)
    assert item["event_id"] == event.event_id
    assert item["status"] == "active"
    acked = runner.invoke(app, ["alerts", "ack", event.event_id[:10], "--db", db, "--by", "nurse"])
    assert acked.exit_code == 0, acked.output
    assert "acknowledged" in acked.output
    assert json.loads(runner.invoke(app, ["alerts", "list", "--db", db, "--json"]).output) == []
    resolved = runner.invoke(app, ["alerts", "resolve", event.event_id, "--db", db])
    assert resolved.exit_code == 0
    everything = json.loads(runner.invoke(app, ["alerts", "list", "--db", db, "--status", "all", "--json"]).output)
    assert [e["status"] for e in everything] == ["resolved"]
    missing = runner.invoke(app, ["alerts", "ack", "nope", "--db", db])
    assert missing.exit_code == 2


def test_demo_runs_listener_and_monitors_and_exits_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the ingest part of the demo writes ./.medtwin-demo
    result = runner.invoke(app, ["demo", "--minutes", "0.05", "--patients", "4", "--interval", "0.2"])
    assert result.exit_code == 0, result.output
    assert "summary" in result.output
    assert "negative 0" in result.output
    assert "Sample patients" in result.output  # the ingest demo ran first
    store = Store(f"sqlite:///{tmp_path / '.medtwin-demo' / 'medtwin.db'}")
    try:
        counts = store.counts()
        assert counts["raw_inbound"] > 0
        assert counts["observations"] > 0
        assert len(store.patients()) >= 4 + 1  # virtual patients next to the ingested ones
        assert store.events(kind="derived")
    finally:
        store.close()


def test_monitors_fail_cleanly_without_a_listener() -> None:
    result = runner.invoke(
        app, ["monitors", "--port", "9", "--minutes", "0.01", "--patients", "1", "--resend-grace", "0"]
    )
    assert result.exit_code == 1
    assert "acknowledged 0" in result.output


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (["--processes", "2", "--runtime", "thread"], "needs --runtime process"),
        (["--processes", "2", "--db", "sqlite://"], "in-memory database cannot be shared"),
        (["--runtime", "fiber"], "not one of process, thread"),
    ],
)
def test_listen_refuses_an_option_combination_with_the_reason(options: list[str], why: str) -> None:
    result = runner.invoke(app, ["listen", "--port", "0", "--quiet", *options])
    assert result.exit_code == 2
    assert why in result.output


def test_alerts_raised_together_are_told_apart_by_the_short_id_the_list_shows(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'alerts.db'}"
    at = datetime(2026, 1, 1, 8, tzinfo=UTC)
    events = [
        Event(kind="alert", code=f"rule-{i}", time=at, message=f"alert {i}", patient_id="p1", severity="high")
        for i in range(20)
    ]
    assert len({e.event_id[:8] for e in events}) < len(events)  # time-ordered ids: made together, same start
    store = Store(db)
    store.add_events(events)
    store.close()
    listed = runner.invoke(app, ["alerts", "list", "--db", db]).output
    for event in events:
        assert short_id(event.event_id) in listed
    target = events[7]
    acked = runner.invoke(app, ["alerts", "ack", short_id(target.event_id), "--db", db])
    assert acked.exit_code == 0, acked.output
    assert f"{target.event_id} rule-7 -> acknowledged" in acked.output
    ambiguous = runner.invoke(app, ["alerts", "ack", target.event_id[:8], "--db", db])
    assert ambiguous.exit_code == 2
    assert "alerts match" in ambiguous.output
