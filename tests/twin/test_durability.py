"""kill -9 of the twin worker mid-log: the restarted worker gives the same alerts and proposals as a run that was
never interrupted, none lost and none stored twice (vitals over HL7, a vancomycin course, CGM wearers)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.twin.test_drug_component import course

import medtwin
from medtwin.interop import hl7v2
from medtwin.interop.device_obs import DEVICE_CONTENT_TYPE, envelope, parse_reading, reading_observation
from medtwin.interop.mllp import CONTENT_TYPE
from medtwin.interop.virtual_feed import sample_to_oru
from medtwin.monitoring.virtual import virtual_ward
from medtwin.store import RawMessage, Store, last_raw_id, load_cursor, save_cursor
from medtwin.twin import LogFollower, TwinRuntime, follow
from medtwin.twin.worker import DEFAULT_CONSUMER, shard_consumer, shard_of

START = datetime(2026, 11, 1, 6, tzinfo=UTC)


def cgm_payload(device: str, k: int) -> bytes:
    value = max(50.0, 170.0 - 2.5 * k) if device.endswith("1") else 140.0 + (k % 3)
    at = START + timedelta(minutes=5 * k)
    return f'{{"code": "99504-3", "value": {value}, "unit": "mg/dL", "time": "{at.isoformat()}"}}'.encode()


def build_log(path: Path) -> int:
    """A store whose raw log holds the whole feed (as the listeners stored it); returns the last raw id."""
    store = Store(f"sqlite:///{path}")
    ward = virtual_ward(3, start=START, seed=5)
    hl7 = [sample_to_oru(p, p.sample(START + timedelta(minutes=5 * i)), f"V-{i}-{j}").encode()
           for i in range(60) for j, p in enumerate(ward)]  # fmt: skip
    drug = course()
    feed: list[tuple[bytes, str, str]] = []
    for i, payload in enumerate(hl7):
        feed.append((payload, CONTENT_TYPE, ""))
        if i % 30 == 0 and drug:
            feed.append((drug.pop(0), CONTENT_TYPE, ""))
        if i % 2 == 0:
            for device in ("cgm-1", "cgm-2"):
                feed.append((cgm_payload(device, i // 2), DEVICE_CONTENT_TYPE, device))
    feed += [(p, CONTENT_TYPE, "") for p in drug]
    for payload, content_type, device in feed:
        if content_type == CONTENT_TYPE:
            (message,) = hl7v2.parse_payload(payload)
            records = list(hl7v2.map_message(message, patient_id_for=store.keyring.pseudonym).records)
            raw = RawMessage(
                source_system=message.source_system,
                source_id=message.control_id,
                payload=payload,
                content_type=CONTENT_TYPE,
                received=datetime.now(UTC),
            )
        else:
            topic = f"devices/{device}/obs"
            reading = parse_reading(payload, topic)
            records = [reading_observation(reading, f"pt-{device}")]
            raw = RawMessage(
                source_system=f"device:{device}",
                source_id=reading.key,
                payload=envelope(reading, f"pt-{device}", topic, payload),
                content_type=DEVICE_CONTENT_TYPE,
                received=datetime.now(UTC),
            )
        store.write(records, raw)
    save_cursor(store, DEFAULT_CONSUMER, 0)
    last = last_raw_id(store)
    store.close()
    return last


def outcome(path: Path) -> tuple[list[tuple[str, str, str | None, str]], list[tuple[str, float | None]]]:
    store = Store(f"sqlite:///{path}")
    events = sorted((e.event_id, e.code, e.severity, e.status) for e in store.events()
                    if e.kind in ("alert", "recommendation"))  # fmt: skip
    proposals = sorted(
        (r.request_id, r.dose.value if r.dose else None)
        for pid in store.patient_ids()
        for r in store.medication_requests(pid)
        if r.intent == "proposal"
    )
    store.close()
    return events, proposals


# The twins finish this log in well under a second, faster than a loaded test process wakes from its 20 ms polls
# of the cursor (the kill came at the log's end 1 run in 3 on a loaded machine): each group of 10 entries waits
# 0.1 s after it is read and before it is processed, so the whole log takes ~4 s and the kill lands mid-log,
# between a group's read and its commit or in its processing; checkpoints every 0.05 s. The worker holds the
# consumer's lease (of the set named by its holder token) for 1 s at a time: a restart takes it over once it expires.
WORKER = """
import sys, time
from medtwin.store import Store
from medtwin.twin import LogFollower, TwinRuntime, follow
store = Store(sys.argv[1])
shard, shards, holder = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runtime = TwinRuntime(store, snapshot_every=None)
process_many = runtime.process_many
def throttled(items):
    time.sleep(0.1)
    return process_many(items)
runtime.process_many = throttled
follow(LogFollower(store, batch=10, shard=shard, shards=shards, holder=holder, lease_s=1.0), runtime,
       should_stop=lambda: False, group_window_s=0.01, cursor_every_s=0.05)
"""


def copies(base: Path, *paths: Path) -> None:
    for copy in paths:  # each copy with the keyring it was written with (encryption at rest)
        shutil.copy(base, copy)
        shutil.copy(f"{base}.keys", f"{copy}.keys")


def uninterrupted(path: Path) -> None:
    store = Store(f"sqlite:///{path}")
    runtime = TwinRuntime(store, snapshot_every=None)
    follow(LogFollower(store), runtime, should_stop=lambda: True, group_window_s=0.0)
    runtime.close()
    store.close()


def start_worker(url: str, shard: int = 0, shards: int = 1, holder: str = "killed-worker") -> subprocess.Popen[bytes]:
    # the medtwin this test imported (a worktree's src, not the environment's editable install)
    path = os.pathsep.join([str(Path(medtwin.__file__).resolve().parents[1]), os.getcwd()])
    return subprocess.Popen([sys.executable, "-c", WORKER, url, str(shard), str(shards), holder],
                            env={**os.environ, "PYTHONPATH": path})  # fmt: skip


def kill_9_past(store: Store, child: subprocess.Popen[bytes], cursor: str, position: int) -> int:
    """SIGKILL *child* once its cursor *cursor* is past *position*; returns the cursor it left."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if (load_cursor(store, cursor) or 0) > position:
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return load_cursor(store, cursor) or 0


def test_kill_9_of_the_worker_changes_nothing(tmp_path: Path) -> None:
    base = tmp_path / "log.db"
    last = build_log(base)
    straight, crashed = tmp_path / "straight.db", tmp_path / "crashed.db"
    copies(base, straight, crashed)
    uninterrupted(straight)

    url = f"sqlite:///{crashed}"
    child = start_worker(url)
    store = Store(url)
    at_kill = kill_9_past(store, child, DEFAULT_CONSUMER, last // 3)
    assert 0 < at_kill < last, f"the kill came at raw id {at_kill} of {last}: not mid-log"
    runtime = TwinRuntime(store, snapshot_every=None)  # a restarted worker: twins from the checkpoint's snapshots
    # another process: it takes the killed worker's lease over once it has expired (1 s after its last renewal)
    follow(LogFollower(store, wait_s=10.0), runtime, should_stop=lambda: True, group_window_s=0.0)
    runtime.close()
    store.close()

    want, got = outcome(straight), outcome(crashed)
    assert got == want
    codes_ = {code for _, code, _, _ in want[0]}
    assert {"drug-proposal", "glucose-low-predicted"} <= codes_
    assert len(want[1]) == 2


def test_kill_9_of_one_sharded_worker_changes_nothing(tmp_path: Path) -> None:
    """Two workers, each owning a shard of the patients: one is killed mid-log while the other runs on; restarted, it
    gives the alerts and proposals of one uninterrupted unsharded worker, none lost, none stored twice."""
    base = tmp_path / "log.db"
    last = build_log(base)
    straight, crashed = tmp_path / "straight.db", tmp_path / "crashed.db"
    copies(base, straight, crashed)
    uninterrupted(straight)

    url = f"sqlite:///{crashed}"
    store = Store(url)
    holder = "the-sharded-set"  # the two workers are one set (as a RuntimeProcess's): one lease, one holder
    for k in range(2):  # the sharded layout continues from the unsharded worker's cursor (0 here)
        assert LogFollower(store, shard=k, shards=2, holder=holder).position == 0
    names = [shard_consumer(DEFAULT_CONSUMER, k, 2) for k in range(2)]
    victim, survivor = start_worker(url, 0, 2, holder), start_worker(url, 1, 2, holder)
    try:
        at_kill = kill_9_past(store, victim, names[0], last // 3)
        assert 0 < at_kill < last, f"the kill came at raw id {at_kill} of {last}: not mid-log"
        runtime = TwinRuntime(store, snapshot_every=None)  # shard 1 restarted from its checkpoint
        follow(LogFollower(store, shard=0, shards=2, holder=holder), runtime, should_stop=lambda: True,
               group_window_s=0.0)  # fmt: skip
        runtime.close()
        # the other one ran on meanwhile: it reaches the end of the log (its cursor moves past shard 1's entries,
        # which it does not read) and is killed there
        assert kill_9_past(store, survivor, names[1], last - 1) == last
    finally:
        if survivor.poll() is None:
            survivor.kill()
            survivor.wait()
    runtime = TwinRuntime(store, snapshot_every=None)  # whatever shard 2 had not checkpointed when it was stopped
    follow(LogFollower(store, shard=1, shards=2, holder=holder), runtime, should_stop=lambda: True, group_window_s=0.0)
    runtime.close()
    assert [load_cursor(store, name) for name in names] == [last, last]
    # a real split: the two CGM wearers (fixed ids; the HL7 patients' ids are keyed per store) are in different shards
    assert {shard_of("pt-cgm-1", 2), shard_of("pt-cgm-2", 2)} == {0, 1}
    for pid in ("pt-cgm-1", "pt-cgm-2"):
        assert store.latest_snapshot(f"patient:{pid}") is not None  # each wearer's twin ran and was checkpointed
    store.close()

    want, got = outcome(straight), outcome(crashed)
    assert got == want
    assert {"drug-proposal", "glucose-low-predicted"} <= {code for _, code, _, _ in want[0]}
    assert len(want[1]) == 2
