"""The drug component on a vancomycin course that arrives over HL7 v2: orders, administrations, labs, two levels.

The course is the one of tests/fixtures/pk/case_a.json (2 g over 2 h, 1 g over 2 h at 24.2 h, levels 12.0 mg/L at
13 h and 9.5 mg/L at 48 h), with the covariates coming from the record (weight, creatinine, birth date, sex).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medtwin.cli import app
from medtwin.interop import hl7v2
from medtwin.interop.mllp import CONTENT_TYPE
from medtwin.records import Event, MedicationAdministration, MedicationRequest
from medtwin.store import RawMessage, Store
from medtwin.twin import LogFollower, TwinRuntime, follow

ORIGIN = datetime(2026, 11, 1, 8, tzinfo=UTC)
PID = "PID|1||MRN-4711^^^HOSP^MR||DOE^JOHN||19660101|M"


def ts(hours: float) -> str:
    return (ORIGIN + timedelta(hours=hours)).strftime("%Y%m%d%H%M%S+0000")


def msh(kind: str, control: str, hours: float) -> str:
    return f"MSH|^~\\&|HIS|HOSP|MEDTWIN|HOSP|{ts(hours)}||{kind}|{control}|P|2.5.1"


def oru(control: str, hours: float, results: list[tuple[str, str, float, str]]) -> bytes:
    lines = [msh("ORU^R01", control, hours), PID, f"OBR|1|||LAB|||{ts(hours)}"]
    for i, (code, name, value, unit) in enumerate(results, 1):
        lines.append(f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}|||||F|||{ts(hours)}")
    return "\r".join(lines).encode()


def ras(control: str, hours: float, grams: float, duration_h: float) -> bytes:
    lines = [
        msh("RAS^O17", control, hours),
        PID,
        "ORC|RE|ORD-1",
        f"RXA|0|1|{ts(hours)}|{ts(hours + duration_h)}|372735009^Vancomycin^SCT|{grams}|g",
        "RXR|IV",
    ]
    return "\r".join(lines).encode()


def rde(control: str, hours: float) -> bytes:
    rxe = ["RXE", "", "372735009^Vancomycin^SCT", "1000", "", "mg", *[""] * 17, "500", "mg/h"]
    lines = [
        msh("RDE^O11", control, hours),
        PID,
        f"ORC|NW|ORD-1|||||||{ts(hours)}",
        "|".join(rxe),
        f"TQ1|1||Q24H||||{ts(hours)}",
    ]
    return "\r".join(lines).encode()


def course(second_level: float = 9.5) -> list[bytes]:
    return [
        oru("LAB-1", -1, [("29463-7", "Body weight", 70, "kg"), ("2160-0", "Creatinine", 1.2, "mg/dL")]),
        rde("RDE-1", -0.5),
        ras("RAS-1", 0, 2, 2),
        oru("LAB-2", 13, [("20578-1", "Vancomycin", 12.0, "mg/L")]),
        ras("RAS-2", 24.2, 1, 2),
        oru("LAB-3", 48, [("20578-1", "Vancomycin", second_level, "mg/L")]),
    ]


def store_messages(store: Store, payloads: list[bytes]) -> str:
    patient_id = ""
    for payload in payloads:  # one message at a time, as they arrive
        (message,) = hl7v2.parse_payload(payload)
        mapped = hl7v2.map_message(message, patient_id_for=store.keyring.pseudonym)  # the store's keyed ids
        assert mapped.supported, mapped.notes
        assert not mapped.refused, mapped.notes
        patient_id = mapped.patient_id or patient_id
        raw = RawMessage(
            source_system=message.source_system,
            source_id=message.control_id,
            payload=payload,
            content_type=CONTENT_TYPE,
            received=datetime.now(UTC),
        )
        store.write(mapped.records, raw)
    return patient_id


def test_pharmacy_messages_map_to_orders_and_administrations() -> None:
    (adm_msg,) = hl7v2.parse_payload(ras("RAS-1", 0, 2, 2))
    (adm,) = [r for r in hl7v2.map_message(adm_msg).records if isinstance(r, MedicationAdministration)]
    assert (adm.dose.value, adm.dose.unit, adm.infusion_duration_h) == (2.0, "g", 2.0)  # type: ignore[union-attr]
    assert adm.medication.code == "372735009"
    assert adm.request_id == "ORD-1"
    assert adm.status == "completed"
    assert adm.route is not None
    assert adm.route.code == "47625008"
    again = [r for r in hl7v2.map_message(adm_msg).records if isinstance(r, MedicationAdministration)]
    assert again[0].administration_id == adm.administration_id  # a resend maps to the same id
    (order_msg,) = hl7v2.parse_payload(rde("RDE-1", -0.5))
    (order,) = [r for r in hl7v2.map_message(order_msg).records if isinstance(r, MedicationRequest)]
    assert (order.request_id, order.intent, order.interval_h, order.infusion_duration_h) == (
        "ORD-1",
        "order",
        24.0,
        2.0,
    )


@pytest.fixture
def course_store(tmp_path: Path) -> tuple[Store, str, str]:
    url = f"sqlite:///{tmp_path / 'course.db'}"
    store = Store(url)
    follower = LogFollower(store)
    patient_id = store_messages(store, course())
    runtime = TwinRuntime(store)
    follow(follower, runtime, should_stop=lambda: True, group_window_s=0.0)
    runtime.close()
    return store, url, patient_id


def test_course_over_hl7_gives_the_proposal_of_dose_patient(course_store: tuple[Store, str, str]) -> None:
    store, url, patient_id = course_store
    proposals = [r for r in store.medication_requests(patient_id) if r.intent == "proposal"]
    assert len(proposals) == 2  # one per level (no loading dose: doses were given)
    events = store.events(patient_id=patient_id)
    reviews = [e for e in events if e.code == "drug-proposal"]
    assert len(reviews) == 2
    assert all(e.kind == "recommendation" and e.status == "active" for e in reviews)
    assert reviews[-1].data["report"]["model"]["id"] == "goti2018_vancomycin"
    assert len(reviews[-1].data["report"]["levels"]) == 2
    latest = max(proposals, key=lambda r: r.authored or ORIGIN)
    result = CliRunner().invoke(app, ["dose", "--patient", patient_id, "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert latest.dose is not None
    assert report["recommended"]["amount_mg"] == latest.dose.value
    assert report["recommended"]["interval_h"] == latest.interval_h
    assert report["recommended"]["duration_h"] == latest.infusion_duration_h
    assert any("Cockcroft-Gault" in n for n in report["notes"])
    assert any("from the record: scr 1.2 mg/dL" in n for n in report["notes"])
    # the same case built by hand: case_a's doses and levels, CrCL by Cockcroft-Gault from the record's values
    assert report["covariates"]["CRCL"] == pytest.approx((140 - 60) * 70 / (72 * 1.2), rel=1e-9)


def test_reprocessing_stores_nothing_twice(course_store: tuple[Store, str, str]) -> None:
    store, _, patient_id = course_store
    before = (len(store.events(patient_id=patient_id)), len(store.medication_requests(patient_id)))
    runtime = TwinRuntime(store)
    for payload in course():
        runtime.process(hl7v2.map_message(hl7v2.parse_payload(payload)[0]).records)
    assert (len(store.events(patient_id=patient_id)), len(store.medication_requests(patient_id))) == before


def test_mistimed_level_and_off_target_regimen_raise_alerts(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'odd.db'}")
    runtime = TwinRuntime(store)
    out: list[Event] = []
    for payload in course(second_level=45.0):  # far above anything 22 h after a 1 g infusion can give
        out += runtime.process(hl7v2.map_message(hl7v2.parse_payload(payload)[0]).records)
    codes_ = [e.code for e in out if e.kind == "alert"]
    assert codes_.count("drug-level-implausible") == 1
    implausible = next(e for e in out if e.code == "drug-level-implausible")
    assert implausible.data["observed_mg_l"] == 45.0
    assert implausible.data["predicted_hi_mg_l"] < 45.0
    assert "drug-exposure-off-target" in codes_


def test_dose_patient_errors_are_one_line(course_store: tuple[Store, str, str]) -> None:
    _, url, _ = course_store
    result = CliRunner().invoke(app, ["dose", "--patient", "pt-nobody", "--db", url])
    assert result.exit_code == 2
    assert "no single patient" in result.output
    assert "Traceback" not in result.output
    both = CliRunner().invoke(app, ["dose", "report", "case.json", "--patient", "x", "--db", url])
    assert both.exit_code == 2
    assert "one of them" in both.output


def test_twin_commands_answer_from_the_record(course_store: tuple[Store, str, str]) -> None:
    _, url, patient_id = course_store
    runner = CliRunner()
    show = runner.invoke(app, ["twin", "show", patient_id[:10], "--db", url, "--json"])
    assert show.exit_code == 0, show.output
    shown = json.loads(show.output)
    assert shown["components"]["drug"]["vancomycin"]["levels"] == 2
    assert len(shown["proposals"]) == 2
    assert {a["code"] for a in shown["active_alerts"]} >= {"drug-exposure-off-target"}
    rec = runner.invoke(app, ["twin", "recommend", patient_id, "--db", url, "--json"])
    assert rec.exit_code == 0, rec.output
    last = json.loads(rec.output)["drug"]["vancomycin"]["recommended"]
    dose = json.loads(runner.invoke(app, ["dose", "--patient", patient_id, "--db", url, "--json"]).output)
    assert (last["amount_mg"], last["interval_h"]) == (
        dose["recommended"]["amount_mg"],
        dose["recommended"]["interval_h"],
    )
    whatif = runner.invoke(app, ["twin", "whatif", patient_id, "--db", url, "--drug", "vancomycin",
                                 "--target", "trough_ss=15-20", "--json"])  # fmt: skip
    assert whatif.exit_code == 0, whatif.output
    assert json.loads(whatif.output)["drug"]["target"]["metric"] == "trough_ss"
    forecast = runner.invoke(app, ["twin", "forecast", patient_id, "--db", url, "--json"])
    assert forecast.exit_code == 0, forecast.output
    assert json.loads(forecast.output)["drug"]["vancomycin"]["current_regimen"]["amount_mg"] == 1000.0
    nothing = runner.invoke(app, ["twin", "whatif", patient_id, "--db", url])
    assert nothing.exit_code == 2
    assert "nothing to simulate" in nothing.output
    assert "Traceback" not in nothing.output
    unknown = runner.invoke(app, ["twin", "show", "pt-nobody", "--db", url])
    assert unknown.exit_code == 1
    assert "no patient" in unknown.output
