"""Twin worker CPU per reading: the log-following worker alone, on a store filled as the MQTT listener fills it.

The end-to-end benchmark (bench/twin_stream.py) measures every process of the living twin at once; on a shared
machine its per-process CPU still moves with the neighbours' load. This one measures only the worker's side, in
one process and reproducibly: P simulated CGM wearers' D days (:func:`medtwin.cli.devices.simulated_readings`, the
publisher's readings, seed 1) are stored as ``medtwin listen --mqtt`` stores them (device envelopes, 500 per
transaction, encryption at rest on), then each of the *workers* shards (:class:`medtwin.twin.LogFollower`) follows
the whole log in turn with the runtime's settings (128 particles, no re-identification, as bench/twin_stream.py),
as a backlog (500 messages a poll), saving its cursor and its twins every 60 s. Printed per shard: CPU seconds
(``time.process_time``) and CPU ms per reading of the whole log, a digest of the stored alerts and one of every
twin's final snapshot, so a change of the worker can be checked for identical outputs (same digests) as well as
timed.

    PYTHONPATH=src .venv/bin/python bench/twin_worker.py --patients 200 --days 2
    PYTHONPATH=src .venv/bin/python bench/twin_worker.py --patients 200 --days 2 --profile 0   # cProfile shard 1
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import platform
import pstats
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def fill(db: str, patients: int, days: int) -> int:
    """The store as the MQTT listener leaves it; returns the number of readings stored."""
    from medtwin.cli.devices import simulated_readings
    from medtwin.interop.device_obs import DEVICE_CONTENT_TYPE, envelope, parse_reading, reading_observation
    from medtwin.records import Patient
    from medtwin.store import RawMessage, Store, save_cursor
    from medtwin.twin.worker import DEFAULT_CONSUMER

    _, readings = simulated_readings(patients, days, seed=1)
    store = Store(db)
    store.write([Patient(patient_id=f"pt-sim-cgm-{i:04d}", gender="unknown") for i in range(patients)])
    now = datetime.now(UTC)
    items: list[tuple[list[Any], RawMessage | None]] = []
    for _, i, doc in readings:
        topic = f"devices/sim-cgm-{i:04d}/obs"
        payload = json.dumps(doc).encode()
        reading = parse_reading(payload, topic)
        patient = f"pt-sim-cgm-{i:04d}"
        raw = RawMessage(source_system=f"device:{reading.device_id}", source_id=reading.key,
                         payload=envelope(reading, patient, topic, payload), content_type=DEVICE_CONTENT_TYPE,
                         received=now)  # fmt: skip
        items.append(([reading_observation(reading, patient)], raw))
        if len(items) == 500:
            store.write_batch(items)
            items = []
    if items:
        store.write_batch(items)
    save_cursor(store, DEFAULT_CONSUMER, 0)  # the shards start at the beginning of the log
    store.close()
    return len(readings)


def run_shard(db: str, shard: int, shards: int, particles: int, profile: bool) -> dict[str, Any]:
    """Follow the whole log as shard *shard* of *shards*; its CPU seconds."""
    from medtwin.store import Store
    from medtwin.twin import LogFollower, TwinRuntime, follow

    store = Store(db, cache_mib=8, synchronous="NORMAL")  # the worker's settings (medtwin.twin.worker_process._child)
    runtime = TwinRuntime(store, snapshot_every=None,
                          settings={"glucose_particles": particles, "glucose_reidentify": False})  # fmt: skip
    follower = LogFollower(store, shard=shard, shards=shards)
    profiler = cProfile.Profile(time.process_time) if profile else None  # CPU, not wall: a shared machine
    c0, t0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    stats = follow(follower, runtime, should_stop=lambda: True, group_window_s=0.0)
    runtime.close()
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    store.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
    return {"shard": shard + 1, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "messages_read": stats.messages,
            "alerts": stats.alerts}  # fmt: skip


def alerts_digest(db: str, dump: str | None = None) -> tuple[int, str]:
    """The number of stored alerts and a digest of them (id, code, severity, status, time, data); *dump*: a file
    to write them to (to compare two runs alert by alert)."""
    from medtwin.store import Store

    store = Store(db)
    rows = sorted(
        (e.event_id, e.code, e.severity or "", e.status, e.time.isoformat(),
         json.dumps(dict(e.data), sort_keys=True, default=str))
        for e in store.events() if e.kind == "alert"
    )  # fmt: skip
    store.close()
    if dump:
        Path(dump).write_text(json.dumps(rows, indent=1))
    return len(rows), hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def snapshots_digest(db: str) -> tuple[int, str]:
    """The number of twins and a digest of each one's last snapshot (its whole state after the run: particles,
    generators, alert state), so a change meant to keep the outputs can be checked beyond the alerts."""
    from sqlalchemy import func, select

    from medtwin.store import Store, schema

    t = schema.twin_snapshots
    store = Store(db)
    last = select(func.max(t.c.snapshot_id)).group_by(t.c.twin_id)
    with store._reading() as conn:
        rows = conn.execute(select(t.c.twin_id, t.c.blob).where(t.c.snapshot_id.in_(last)).order_by(t.c.twin_id)).all()
    store.close()
    digest = hashlib.sha256()
    for twin_id, blob in rows:
        digest.update(twin_id.encode() + b"\0" + bytes(blob) + b"\0")
    return len(rows), digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile", type=int, default=None, help="cProfile this shard (0-based)")
    parser.add_argument("--dump", default=None, help="write the stored alerts to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'twins.db'}"
        readings = fill(db, args.patients, args.days)
        shards = [run_shard(db, k, args.workers, args.particles, args.profile == k) for k in range(args.workers)]
        count, digest = alerts_digest(db, args.dump)
        twins, twins_digest = snapshots_digest(db)
    cpu = sum(s["cpu_s"] for s in shards)
    print(json.dumps({
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
        "patients": args.patients, "days": args.days, "particles": args.particles, "workers": args.workers,
        "readings": readings, "shards": shards, "worker_cpu_s": round(cpu, 2),
        "worker_cpu_ms_per_reading": round(1e3 * cpu / readings, 3), "alerts_stored": count,
        "alerts_digest": digest, "twins": twins, "twins_digest": twins_digest,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
