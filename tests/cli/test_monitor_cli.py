"""The monitor-area commands: news2, alerts list/ack/resolve, demo, monitors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.cli.alerts import short_id
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
    assert "NEWS2 3 - low-medium clinical response - PARTIAL: 6 of 7 missing: a lower bound" in result.output
    assert result.output.count("MISSING") == 6
    # qSOFA and MEWS say they are lower bounds too, and what they miss
    assert "qSOFA >= 1/3 (missing: altered_mentation, systolic_bp)" in result.output
    assert "MEWS >= 2 (missing: systolic_bp, heart_rate, temperature, avpu)" in result.output
    bad = runner.invoke(app, ["news2", "--acvpu", "Z"])
    assert bad.exit_code == 2
    assert "ACVPU" in bad.output


def test_news2_without_vitals_scores_nothing_and_says_what_to_give() -> None:
    result = runner.invoke(app, ["news2"])
    assert result.exit_code == 2
    assert "no vital signs given: nothing to score" in result.stderr
    assert "--rr, --spo2, --oxygen/--air, --sbp, --pulse, --acvpu, --temp" in result.stderr
    assert "qSOFA 0/3" not in result.output
    complete = runner.invoke(app, ["news2", "--rr", "14", "--spo2", "97", "--air", "--sbp", "120", "--pulse", "70",
                                   "--acvpu", "A", "--temp", "37"])  # fmt: skip
    assert "PARTIAL" not in complete.output
    assert "qSOFA 0/3; MEWS 0" in complete.output


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


def _demo_counts(output: str) -> tuple[int, int]:
    """(ingested resources inserted, twin events) of one demo run, from its output."""
    import re

    inserted = re.search(r"4 files\s*│\s*ok\s*│\s*\d+\s*│\s*(\d+)", output)
    events = re.search(r"events (\d+);", output)
    assert inserted is not None, output
    assert events is not None, output
    return int(inserted.group(1)), int(events.group(1))


def test_demo_tells_the_whole_story_on_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the demo writes ./.medtwin-demo/run-<time>/
    args = ["demo-terminal", "--minutes", "0.05", "--patients", "4", "--interval", "0.2", "--time-scale", "3600"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    for result in (first, second):
        assert "summary" in result.output
        assert "negative 0" in result.output
        assert "Sample patients" in result.output  # the ingest demo ran first
        assert "active alert(s)" in result.output  # and the alert list closes the story
    runs = sorted((tmp_path / ".medtwin-demo").glob("run-*"))
    assert len(runs) == 2  # a fresh folder per run: nothing is a duplicate, no twin resumes
    (ingested1, events1), (ingested2, events2) = _demo_counts(first.output), _demo_counts(second.output)
    assert ingested1 == ingested2 > 0  # the second run ingests the samples again (before: 0, all duplicates)
    assert events1 > 0
    assert events2 > 0
    assert events2 >= events1 // 3  # before: a second run was nearly silent (5 events instead of 241)
    store = Store(f"sqlite:///{runs[-1] / 'medtwin.db'}")
    try:
        counts = store.counts()
        assert counts["raw_inbound"] > 0
        assert counts["observations"] > 0
        assert len(store.patients()) >= 4 + 1  # virtual patients next to the ingested ones
        assert store.events(kind="derived")
    finally:
        store.close()


def test_demo_keeps_the_five_most_recent_runs(tmp_path: Path) -> None:
    import os

    from medtwin.cli.demo import new_run_folder

    made = [new_run_folder(tmp_path, now=datetime(2026, 1, 1, 8, 0, i, tzinfo=UTC), keep=100) for i in range(7)]
    for i, folder in enumerate(made):  # mtime order = run order
        os.utime(folder, (1_000_000 + i, 1_000_000 + i))
    newest = new_run_folder(tmp_path, now=datetime(2026, 1, 1, 8, 0, 59, tzinfo=UTC))
    left = sorted(p.name for p in tmp_path.glob("run-*"))
    assert len(left) == 5
    assert newest.name in left
    assert made[0].name not in left


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
        (["--twin-workers", "2", "--runtime", "thread"], "--twin-workers above 1 needs --runtime process"),
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
