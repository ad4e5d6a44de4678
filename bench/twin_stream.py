"""Living-twin benchmark: CGM wearers' readings through MQTT into the patient twins with forecasting on.

Two measurements, in one run:

1. In process, the glucose component's work alone: R readings of P patients assimilated with the 30-minute
   predicted-low forecast on each, batched across patients (:func:`medtwin.twin.glucose_component.flush_glucose`,
   what the runtime does) against the same readings one patient at a time (the baseline: the forecaster's own
   ``update``); readings/s of each and the ratio. The outputs are identical (tests/twin/test_glucose_component.py).
2. End to end: P simulated wearers (UVA/Padova, medtwin.glucose, closed loop) publish D days of 5-minute CGM as
   compact JSON over MQTT (QoS 1) from a publisher process, as fast as the broker takes them or paced at ``--rate``
   readings/s. The publisher stands in for the devices: the readings are simulated, serialized and encoded as MQTT
   PUBLISH packets before the clock starts; what is timed (and its CPU counted) is sending them at QoS 1 with at
   most 1,000 unacknowledged, each delivered once its PUBACK is back (:mod:`medtwin.interop.mqtt_wire`). Until
   2026-12-07 the publisher ran paho-mqtt and ``json.dumps`` per message inside the timing (0.145 ms of CPU per
   reading, more than the broker's). ``medtwin listen --mqtt`` 's listener (PUBACK after the durable commit) stores
   them and the twin runtime workers (``--workers`` processes following the store, each owning a shard of the
   patients; default ``medtwin listen`` 's) forecast on each. Readings/s from the first publish to the
   last reading processed; receipt-to-processed latency p50/p99 from the worker (the time from the listener's
   commit, when its PUBACK goes, to the twins having processed the reading, forecast included, and committed their
   outputs: in an unpaced run mostly the backlog, so the latency figure comes from a paced run); CPU seconds of
   every process (from /proc while they run) and per reading, the development measure on a shared machine.

A private Mosquitto (``mosquitto`` on PATH) is started on a free port with no in-flight limit, so the broker's
default window of 20 unacknowledged messages per client does not cap the group commit; without one it uses
127.0.0.1:1883 and says so.

    .venv/bin/python bench/twin_stream.py --patients 1000 --days 7     # the issue's week (2,038,000 readings)
    .venv/bin/python bench/twin_stream.py --patients 1000 --days 1 --rate 1500   # latency at a sustained rate
    .venv/bin/python bench/twin_stream.py --quick                      # 100 patients, 1 day
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _own_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a running process from /proc (None when it is gone or not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CpuSampler:
    """The last CPU seconds seen of each process in *pids*, sampled every 0.2 s until :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.seen: dict[str, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.2):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            cpu = _proc_cpu(pid)
            if cpu is not None:
                self.seen[name] = cpu

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.seen.items()}


# -- 1. the glucose component alone ------------------------------------------------------------------------------
def in_process(patients: int, readings: int, particles: int) -> dict[str, Any]:
    """Batched vs one patient at a time over the same readings."""
    import numpy as np

    from medtwin.glucose.forecast import GlucoseForecaster
    from medtwin.glucose.stream import population_posterior, update_many

    posterior = population_posterior(body_weight_kg=70, basal_u_h=1.0, draws=256)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rng = np.random.default_rng(0)
    values = (
        130
        + 40 * np.sin(np.arange(readings)[:, None] / 20 + rng.uniform(0, 6, patients))
        + rng.normal(0, 5, (readings, patients))
    )
    out: dict[str, Any] = {"patients": patients, "readings_each": readings, "particles": particles}
    for mode in ("one_at_a_time", "batched"):
        fs = [GlucoseForecaster(posterior, start, particles=particles, seed=i) for i in range(patients)]
        for f in fs:  # warm the kernels outside the timing
            f.update(start, float(values[0, 0]))
        t0, c0 = time.perf_counter(), time.process_time()
        for k in range(1, readings):
            at = start + timedelta(minutes=5 * k)
            if mode == "batched":
                update_many([(f, at, float(values[k, i])) for i, f in enumerate(fs)])
            else:
                for i, f in enumerate(fs):
                    f.update(at, float(values[k, i]))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = patients * (readings - 1)
        out[mode] = {"readings": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "readings_per_s": round(n / wall)}
    out["ratio_batched_vs_one_at_a_time"] = round(
        out["batched"]["readings_per_s"] / out["one_at_a_time"]["readings_per_s"], 2
    )
    return out


# -- 2. end to end through MQTT ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broker(tmp: Path) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        return None, 1883, "shared broker 127.0.0.1:1883 (no mosquitto executable: default in-flight window of 20)"
    port = _free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 0\nmax_queued_messages 0\n")  # fmt: skip
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port, f"private mosquitto on 127.0.0.1:{port} (no in-flight or queue limit)"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the private mosquitto did not start")


PUBLISHER = """
import json, sys, time
from medtwin.cli.devices import simulated_readings
from medtwin.interop.mqtt_wire import DISCONNECT_PACKET, MqttSocket, PublishWindow, encode_connect, encode_publish
port, patients, days, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
_, readings = simulated_readings(patients, days, seed=1)
packets = []  # encoded before the clock starts: the devices' own work is not the platform's
for k, (_, i, p) in enumerate(readings):
    mid = k % 65535 + 1
    packets.append((mid, encode_publish(f"devices/sim-cgm-{i:04d}/obs", json.dumps(p).encode(), mid)))
conn, connack = MqttSocket.open("127.0.0.1", port, encode_connect("bench-publisher", clean_start=True,
                                                                  keep_alive_s=0), 10)
window = PublishWindow(conn, min(1000, connack.receive_maximum))  # QoS 1: at most 1,000 unacknowledged
print(json.dumps({"ready": len(packets)}), flush=True)
sys.stdin.readline()
t0 = time.time()
step = 50 if rate > 0 else 1000
for k in range(0, len(packets), step):
    if rate > 0:  # paced: message k leaves at k / rate s
        ahead = t0 + k / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
    window.publish(packets[k : k + step])
window.wait_all(600)
print(json.dumps({"first_publish": t0, "published": window.acked, "seconds": time.time() - t0}), flush=True)
conn.send(DISCONNECT_PACKET)
conn.close()
"""


def end_to_end(
    patients: int, days: int, particles: int, tmp: Path, rate: float = 0.0, workers: int = 1
) -> dict[str, Any]:
    """The MQTT run (module docstring); the private broker is stopped whatever happens."""
    broker, port, broker_note = _broker(tmp)
    try:
        return _end_to_end(patients, days, particles, tmp, port, broker_note, None if broker is None else broker.pid,
                           rate, workers)  # fmt: skip
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)


def _end_to_end(
    patients: int,
    days: int,
    particles: int,
    tmp: Path,
    port: int,
    broker_note: str,
    broker_pid: int | None,
    rate: float,
    workers: int,
) -> dict[str, Any]:
    from medtwin.interop.devices import register_device
    from medtwin.interop.mqtt import MqttListener
    from medtwin.records import Patient
    from medtwin.store import Store, last_raw_id, load_cursor
    from medtwin.twin import RuntimeProcess
    from medtwin.twin.worker import listener_store

    db = f"sqlite:///{tmp / 'twins.db'}"
    setup = Store(db)
    setup.write([Patient(patient_id=f"pt-sim-cgm-{i:04d}", gender="unknown") for i in range(patients)])
    for i in range(patients):
        register_device(setup, f"sim-cgm-{i:04d}", f"pt-sim-cgm-{i:04d}")
    setup.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(port), str(patients), str(days), str(rate)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert publisher.stdout is not None
    assert publisher.stdin is not None
    expected = json.loads(publisher.stdout.readline())["ready"]
    store, lock = listener_store(db)
    worker = RuntimeProcess(db, write_lock=lock, workers=workers,
                            settings={"glucose_particles": particles, "glucose_reidentify": False})  # fmt: skip
    worker.start()
    listener = MqttListener(store, f"mqtt://127.0.0.1:{port}", "devices/+/obs", client_id="bench-listener")
    listener.start()
    cpu0 = _cpu()
    own0 = _own_cpu()
    pids = {"publisher": publisher.pid}
    pids |= {"worker" if workers == 1 else f"worker {k + 1}": pid for k, pid in enumerate(worker.pids)}
    if broker_pid is not None:
        pids["broker"] = broker_pid
    before = {name: _proc_cpu(pid) or 0.0 for name, pid in pids.items()}
    sampler = _CpuSampler(pids)
    publisher.stdin.write("go\n")
    publisher.stdin.flush()
    published = json.loads(publisher.stdout.readline())
    deadline = time.monotonic() + 3600
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        s = listener.stats
        if s.stored + s.duplicates + s.rejected >= expected:
            break
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            print(f"  stored {s.stored} duplicates {s.duplicates} rejected {s.rejected} of {expected}",
                  file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(0.1)
    stored_at = time.time()
    stats = listener.stop()
    listener_cpu = _own_cpu() - own0
    report = worker.stop(timeout_s=3600)  # it processes what is stored, checkpoints every twin, and reports
    done_at = time.time()
    last = last_raw_id(store)
    processed_to = min(load_cursor(store, name) or 0 for name in worker.consumers)
    store.close()
    publisher.wait(60)
    cpu = _cpu() - cpu0
    per_process = {name: round(v - before[name], 1) for name, v in sampler.stop().items()}
    per_process["listener (bench process)"] = round(listener_cpu, 1)
    first = float(published["first_publish"])
    return {
        "patients": patients, "days": days, "particles": particles, "workers": workers, "readings": expected,
        "broker": broker_note,
        "publish_rate": "as fast as the broker takes them" if rate <= 0 else f"paced at {rate:g} readings/s",
        "stored": stats.stored, "duplicates": stats.duplicates, "rejected": stats.rejected, "commits": stats.commits,
        "publish_s": round(published["seconds"], 2), "stored_s": round(stored_at - first, 2),
        "end_to_end_s": round(done_at - first, 2), "readings_per_s": round(expected / (done_at - first)),
        "note": "end = the worker stopped after processing everything and checkpointing every twin",
        "stored_per_s": round(expected / (stored_at - first)),
        "processed_p50_ms": report.get("processed_p50_ms"), "processed_p99_ms": report.get("processed_p99_ms"),
        "worker_busy_s": round(float(report.get("busy_s", 0.0)), 2), "alerts": report.get("alerts"),
        "worker_busy_s_per_shard": [round(float(r.get("busy_s", 0.0)), 2) for r in report.get("shards", [report])],
        "cpu_s_all_processes": round(cpu, 1), "cpu_ms_per_reading": round(1e3 * cpu / expected, 3),
        "cpu_s_per_process": per_process, "worker_read_to_end": processed_to == last,
        "worker_messages": report.get("messages"),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="publish paced at this many readings/s (0: as fast as the broker takes them)")  # fmt: skip
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="twin worker processes, each owning a shard of the patients (default: medtwin listen's)",
    )
    parser.add_argument("--quick", action="store_true", help="100 patients, 1 day")
    parser.add_argument("--skip-mqtt", action="store_true", help="only the in-process comparison")
    parser.add_argument("--skip-in-process", action="store_true", help="only the end-to-end run through MQTT")
    args = parser.parse_args()
    if args.quick:
        args.patients, args.days = 100, 1
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }  # fmt: skip
    if not args.skip_in_process:
        result["in_process"] = in_process(min(args.patients, 1000), 24, args.particles)
        print(json.dumps(result["in_process"]), flush=True)
    if not args.skip_mqtt:
        with tempfile.TemporaryDirectory() as tmp:
            from medtwin.twin.worker import DEFAULT_WORKERS

            workers = DEFAULT_WORKERS if args.workers is None else args.workers
            result["end_to_end"] = end_to_end(args.patients, args.days, args.particles, Path(tmp), args.rate, workers)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
