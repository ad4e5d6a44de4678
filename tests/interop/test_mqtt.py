"""MQTT device readings: payload formats, acknowledgement only after the commit, dead letters, and a kill -9 of the
listener mid-stream against the Mosquitto broker on 127.0.0.1:1883 (skipped with a notice when unreachable)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.twin.test_glucose_component import T0 as START
from tests.twin.test_glucose_component import overdose

from medtwin import codes
from medtwin.interop.device_obs import (
    DEVICE_CONTENT_TYPE,
    DevicePayloadError,
    parse_reading,
    reading_observation,
    stored_device_records,
)
from medtwin.interop.devices import bound_patient, list_devices, register_device
from medtwin.interop.mqtt import MqttListener, _Inbound
from medtwin.records import Observation, Patient
from medtwin.store import Store, accepted_after

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
BROKER = ("127.0.0.1", 1883)


def compact(device: str, minutes: int, value: float, **extra: Any) -> bytes:
    doc = {
        "device": device,
        "code": "99504-3",
        "value": value,
        "unit": "mg/dL",
        "time": (T0 + timedelta(minutes=minutes)).isoformat(),
        **extra,
    }
    return json.dumps(doc).encode()


def test_compact_and_fhir_payloads() -> None:
    r = parse_reading(compact("cgm-1", 0, 6.0, unit="mmol/L"), "devices/cgm-1/obs")
    assert r.device_id == "cgm-1"
    assert r.code.code == "99504-3"
    assert r.unit == "mg/dL"
    assert r.value == pytest.approx(6.0 * 18.0156, rel=1e-4)
    assert r.key == f"99504-3@{T0.isoformat()}"
    fhir = {
        "resourceType": "Observation",
        "id": "r-77",
        "status": "final",
        "code": {"coding": [{"system": codes.LOINC, "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "beats/minute", "code": "/min"},
        "effectiveDateTime": "2026-05-01T12:00:00+02:00",
        "device": {"reference": "Device/oxi-2"},
    }
    r2 = parse_reading(json.dumps(fhir).encode(), "site/devices/oxi-2/obs")
    assert (r2.device_id, r2.value, r2.unit, r2.key) == ("oxi-2", 72.0, "/min", "r-77")
    assert r2.time == datetime(2026, 5, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "topic"),
    [
        (compact("cgm-1", 0, 6.0, unit="mmol/L"), "devices/cgm-1/obs"),  # converted to mg/dL
        (compact("cgm-1", 5, 112), "devices/cgm-1/obs"),  # an int value
        (compact("oxi-2", 0, 97.5, code="59408-5", unit="%"), "devices/oxi-2/obs"),  # a vital sign
    ],
)
def test_reading_observation_equals_the_validated_construction(payload: bytes, topic: str) -> None:
    """The listener's prevalidated Observation (Quantity and Provenance without __post_init__) is the one the
    validating constructors build: equal, same field types, and the same stored row and body."""
    from medtwin.records import Provenance, Quantity
    from medtwin.store import rows, schema

    r = parse_reading(payload, topic)
    fast = reading_observation(r, "pt-1")
    slow = Observation(
        observation_id=fast.observation_id,
        patient_id="pt-1",
        code=r.code,
        effective=r.time,
        value=Quantity(value=r.value, unit=r.unit),
        status="final",
        category=fast.category,
        device=f"Device/{r.device_id}",
        provenance=Provenance(source_system=f"device:{r.device_id}", source_id=r.key),
    )
    assert fast == slow
    assert type(fast.value) is Quantity
    assert type(fast.value.value) is float
    assert type(fast.provenance) is Provenance
    assert fast.value == slow.value
    assert fast.provenance == slow.provenance
    values = rows.VALUES_OF[Observation]
    assert values(fast, schema.sqlite_utc_text) == values(slow, schema.sqlite_utc_text)


@pytest.mark.parametrize(
    ("payload", "topic", "reason"),
    [
        (b"not json", "devices/a/obs", "not JSON"),
        (b"[1, 2]", "devices/a/obs", "expected a JSON object"),
        (compact("a", 0, 100)[:-1] + b', "extra": 1}', "devices/a/obs", "unknown fields ['extra']"),
        (
            json.dumps({"code": "99504-3", "value": "high", "unit": "mg/dL", "time": T0.isoformat()}).encode(),
            "devices/a/obs",
            "expected a finite number",
        ),
        (
            json.dumps({"code": "99504-3", "value": 100, "unit": "mg/dL", "time": "2026-05-01T12:00:00"}).encode(),
            "devices/a/obs",
            "no time zone",
        ),
        (compact("b", 0, 100), "devices/a/obs", "differs from the topic's"),
        (compact("a", 0, 100, unit="kg"), "devices/a/obs", "unit:"),
        (json.dumps({"resourceType": "Patient"}).encode(), "devices/a/obs", "only Observation"),
    ],
)
def test_bad_payloads_say_why(payload: bytes, topic: str, reason: str) -> None:
    with pytest.raises(DevicePayloadError, match=None) as err:
        parse_reading(payload, topic)
    assert reason in str(err.value)


class FakeConnection:
    """Records the PUBACKs the listener writes (each 4 bytes: 0x40, 0x02 and the packet id)."""

    def __init__(self) -> None:
        self.acks: list[int] = []

    def send(self, data: bytes) -> None:
        assert len(data) % 4 == 0
        for k in range(0, len(data), 4):
            assert data[k : k + 2] == b"\x40\x02"
            self.acks.append(int.from_bytes(data[k + 2 : k + 4], "big"))


def make_store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'mqtt.db'}")
    store.write([Patient(patient_id="pt-1", gender="female")])
    register_device(store, "cgm-1", "pt-1")
    return store


def test_acknowledged_after_the_commit_stored_once_and_dead_letters(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    listener = MqttListener(store, "mqtt://127.0.0.1:1")
    connection = FakeConnection()
    listener._conn = connection
    listener._generation = 1
    acked: list[int] = connection.acks
    msgs = [
        _Inbound(i + 1, 1, "devices/cgm-1/obs", compact("cgm-1", 5 * i, 100 + i), time.monotonic(), 1) for i in range(3)
    ]
    msgs.append(_Inbound(4, 1, "devices/cgm-9/obs", compact("cgm-9", 0, 100), time.monotonic(), 1))  # unbound
    msgs.append(_Inbound(5, 1, "devices/cgm-1/obs", b"{", time.monotonic(), 1))
    msgs.append(_Inbound(6, 1, "devices/cgm-1/obs", compact("cgm-1", 0, 100), time.monotonic(), 0))  # old connection

    def failing(items: Any) -> Any:
        raise RuntimeError("disk full")

    original = store.write_batch
    store.write_batch = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        listener.store_group(msgs)
    assert acked == []  # nothing acknowledged when the commit failed: the broker sends them again
    store.write_batch = original  # type: ignore[method-assign]
    listener.stats.rejected = 0
    listener.store_group(msgs)
    assert acked == [1, 2, 3, 4, 5]  # message 6 arrived on a connection that is gone: not acknowledged
    assert listener.stats.stored == 3
    assert listener.stats.rejected == 2
    assert listener.stats.stale_acks == 1
    assert listener.stats.duplicates == 1  # message 6 is message 1 again
    listener.store_group(msgs[:3])  # a redelivery after a crash: duplicates, acknowledged, stored once
    assert listener.stats.duplicates == 4
    assert acked[5:] == [1, 2, 3]
    assert len(store.observations("pt-1")) == 3
    dead = store.raw_log(status="rejected")
    assert any("not registered and bound" in (e.reason or "") for e in dead)
    assert any("not JSON" in (e.reason or "") for e in dead)
    stored = accepted_after(store, 0, content_type=DEVICE_CONTENT_TYPE)
    assert [o.observation_id for m in stored for o in stored_device_records(m.payload)] == [
        o.observation_id for o in store.observations("pt-1")
    ]
    changed = [_Inbound(7, 1, "devices/cgm-1/obs", compact("cgm-1", 0, 250), time.monotonic(), 1)]
    listener.store_group(changed)  # the same reading key with another value: kept as a conflict, not used
    assert len(store.observations("pt-1")) == 3
    assert any((e.relation or "") == "conflict-of" for e in store.raw_log(status="rejected"))
    assert bound_patient(store, "cgm-1") == "pt-1"
    assert [d.device_id for d in list_devices(store)] == ["cgm-1"]


def test_a_group_of_several_devices_keeps_each_devices_arrival_order(tmp_path: Path) -> None:
    """Readings of several devices interleaved in one group: each device's arrival order holds, so of a key sent
    twice in one group (another value the second time) the first is stored and the second kept as a conflict."""
    store = make_store(tmp_path)
    store.write([Patient(patient_id="pt-2", gender="male")])
    register_device(store, "cgm-0", "pt-2")
    listener = MqttListener(store, "mqtt://127.0.0.1:1")
    connection = FakeConnection()
    listener._conn = connection
    listener._generation = 1
    now = time.monotonic()
    msgs = [
        _Inbound(1, 1, "devices/cgm-1/obs", compact("cgm-1", 0, 100), now, 1),
        _Inbound(2, 1, "devices/cgm-0/obs", compact("cgm-0", 0, 140), now, 1),
        _Inbound(3, 1, "devices/cgm-1/obs", compact("cgm-1", 0, 250), now, 1),  # the first key, another value
        _Inbound(4, 1, "devices/cgm-1/obs", compact("cgm-1", 5, 101), now, 1),
        _Inbound(5, 1, "devices/cgm-0/obs", compact("cgm-0", 5, 141), now, 1),
    ]
    listener.store_group(msgs)
    assert sorted(connection.acks) == [1, 2, 3, 4, 5]
    assert (listener.stats.stored, listener.stats.rejected, listener.stats.duplicates) == (4, 1, 0)
    assert [o.value.value for o in store.observations("pt-1")] == [100.0, 101.0]  # type: ignore[union-attr]
    assert [o.value.value for o in store.observations("pt-2")] == [140.0, 141.0]  # type: ignore[union-attr]
    stored = accepted_after(store, 0, content_type=DEVICE_CONTENT_TYPE)
    for device in ("cgm-0", "cgm-1"):  # raw ids increase in each device's arrival order
        times = [
            o.effective for m in stored for o in stored_device_records(m.payload) if o.device == f"Device/{device}"
        ]
        assert times == sorted(times)
        assert len(times) == 2
    conflict = [e for e in store.raw_log(status="rejected") if (e.relation or "") == "conflict-of"]
    assert len(conflict) == 1
    assert conflict[0].payload is not None
    assert [o.value.value for o in stored_device_records(conflict[0].payload)] == [250.0]  # type: ignore[union-attr]


def _broker_up() -> bool:
    try:
        with socket.create_connection(BROKER, timeout=1):
            return True
    except OSError:
        return False


LISTENER = """
import sys, time
from medtwin.store import Store
from medtwin.interop.mqtt import MqttListener
store = Store(sys.argv[1])
listener = MqttListener(store, "mqtt://127.0.0.1:1883", sys.argv[2], client_id=sys.argv[3])
listener.start()
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def _start_listener(url: str, topic: str, client_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, url, topic, client_id], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_kill_9_mid_stream_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    if not _broker_up():
        pytest.skip(f"NOTICE: no MQTT broker at {BROKER[0]}:{BROKER[1]}; the kill -9 test did not run")
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    url = f"sqlite:///{tmp_path / 'kill.db'}"
    store = Store(url)
    store.write([Patient(patient_id="pt-1", gender="female")])
    register_device(store, "cgm-1", "pt-1")
    run = uuid.uuid4().hex[:10]
    topic, client_id = f"medtwin-test-{run}/devices/+/obs", f"medtwin-test-{run}"
    n = 400
    listener = _start_listener(url, topic, client_id)
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-pub")
    publisher.connect(*BROKER)
    publisher.loop_start()
    try:
        infos: list[Any] = []

        def publish_all() -> None:  # a steady stream, so that the kill lands in the middle of it
            for i in range(n):
                infos.append(publisher.publish(f"medtwin-test-{run}/devices/cgm-1/obs",
                                               compact("cgm-1", 5 * i, 80 + i % 200), qos=1))  # fmt: skip
                if i % 20 == 19:
                    time.sleep(0.02)

        sender = threading.Thread(target=publish_all)
        sender.start()
        deadline = time.monotonic() + 30
        while len(store.observations("pt-1")) < n // 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        _kill(listener)  # kill -9 mid-stream: some stored and acknowledged, some not
        at_kill = len(store.observations("pt-1"))
        assert 0 < at_kill < n, f"the kill came at {at_kill} of {n}: not mid-stream"
        sender.join(60)
        for info in infos:
            info.wait_for_publish(30)
        listener = _start_listener(url, topic, client_id)  # the persistent session: the broker sends the rest
        deadline = time.monotonic() + 60
        while len(store.observations("pt-1")) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # anything sent twice would be stored by now
    finally:
        _kill(listener)
        publisher.loop_stop()
        publisher.disconnect()
        cleanup = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        cleanup.connect(*BROKER)  # end the session on the shared broker
        cleanup.disconnect()
    observations = store.observations("pt-1")
    assert len(observations) == n
    assert len({o.observation_id for o in observations}) == n
    assert len(accepted_after(store, 0, content_type=DEVICE_CONTENT_TYPE, limit=10 * n)) == n


def test_cgm_stream_over_mqtt_raises_the_predicted_low_before_the_low(tmp_path: Path) -> None:
    """Readings published over MQTT, stored by the listener, the twin runtime fed after each commit: the glucose
    twin forecasts on each reading and warns of the low before a reading below 70 mg/dL arrives."""
    if not _broker_up():
        pytest.skip(f"NOTICE: no MQTT broker at {BROKER[0]}:{BROKER[1]}; the MQTT CGM stream test did not run")
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from medtwin.twin import TwinRuntime

    store = make_store(tmp_path)
    runtime = TwinRuntime(store, settings={"glucose_particles": 64, "glucose_reidentify": False}, group_window_s=0.0)
    runtime.start()
    run = uuid.uuid4().hex[:10]
    listener = MqttListener(store, "mqtt://127.0.0.1:1883", f"medtwin-test-{run}/devices/+/obs",
                            client_id=f"medtwin-test-{run}",
                            on_stored=lambda rs: runtime.submit([r.observation for r in rs]))  # fmt: skip
    listener.start()
    records, bg = overdose(pid="pt-1")  # adult#001 after a 12 U correction bolus (tests/twin/test_glucose_component)
    runtime.process([r for r in records if not (isinstance(r, Observation) and r.code.code == "99504-3")])
    values = [r.value.value for r in records if isinstance(r, Observation) and r.code.code == "99504-3"]  # type: ignore[union-attr]
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"medtwin-test-{run}-pub")
    publisher.connect(*BROKER)
    publisher.loop_start()
    try:
        for k, v in enumerate(values):
            payload = json.dumps(
                {"code": "99504-3", "value": v, "unit": "mg/dL", "time": (START + timedelta(minutes=5 * k)).isoformat()}
            )
            publisher.publish(f"medtwin-test-{run}/devices/cgm-1/obs", payload, qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 60
        while len(store.observations("pt-1")) < len(values) and time.monotonic() < deadline:
            time.sleep(0.05)
        runtime.drain(60)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        listener.stop()
        runtime.close()
        cleanup = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"medtwin-test-{run}", clean_session=True)
        cleanup.connect(*BROKER)
        cleanup.disconnect()
    lows = [e for e in store.events(patient_id="pt-1") if e.code == "glucose-low-predicted"]
    first_below = START + timedelta(minutes=next(m for m, v in enumerate(bg) if v < 70))
    assert lows
    assert lows[0].time < first_below
    glucose = runtime.twins["pt-1"].components["glucose"]
    assert glucose.forecast(timedelta(minutes=60)) is not None  # type: ignore[attr-defined]


def test_devices_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medtwin.cli import app

    url = f"sqlite:///{tmp_path / 'dev.db'}"
    store = Store(url)
    store.write([Patient(patient_id="pt-7", gender="male")])
    store.close()
    runner = CliRunner()
    ok = runner.invoke(
        app, ["devices", "register", "oxi-7", "--patient", "pt-7", "--kind", "pulse-oximeter", "--db", url]
    )
    assert ok.exit_code == 0, ok.output
    listed = json.loads(runner.invoke(app, ["devices", "list", "--db", url, "--json"]).output)
    assert listed == [{"device": "oxi-7", "kind": "pulse-oximeter", "patient_id": "pt-7", "status": "active"}]
    bad = runner.invoke(app, ["devices", "register", "a/b", "--patient", "pt-7", "--db", url])
    assert bad.exit_code == 2
    assert "topic level" in bad.output
    unbound = runner.invoke(app, ["devices", "register", "oxi-8", "--patient", "pt-none", "--db", url])
    assert unbound.exit_code == 2
    assert "not stored" in unbound.output
    if not _broker_up():
        pytest.skip(f"NOTICE: no MQTT broker at {BROKER[0]}:{BROKER[1]}; `devices simulate` was not run")
    prefix = f"medtwin-test-{uuid.uuid4().hex[:10]}/"
    sim = runner.invoke(app, ["devices", "simulate", "--mqtt", "mqtt://127.0.0.1:1883", "--cgm", "2", "--speed", "0",
                              "--prefix", prefix, "--register", "--db", url, "--json"])  # fmt: skip
    assert sim.exit_code == 0, sim.output
    summary = json.loads(sim.output)
    assert summary["published"] >= 2 * 288  # a day of 5-minute CGM each, and their meals
    store = Store(url)
    assert bound_patient(store, "sim-cgm-0001") == "pt-sim-cgm-0001"
    store.close()
