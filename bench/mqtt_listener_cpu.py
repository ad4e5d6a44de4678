"""The MQTT listener alone: CPU per reading of ``MqttListener`` (and of bench/twin_stream.py's publisher and broker)
with no twin workers, so the listener's own cost is not mixed with theirs.

P simulated wearers x D days of 5-minute CGM (bench/twin_stream.py's publisher, private Mosquitto) into an
``MqttListener`` on a SQLite store opened as ``medtwin listen`` opens it; prints CPU seconds and ms per reading of the
listener's process (and of its writer and network threads), the publisher and the broker. For a before/after pair,
run it on both checkouts one after the other in the same minutes: ``ROOT=/path/to/other/checkout`` takes that
checkout's ``src`` and ``bench/twin_stream.py`` (run with ``PYTHONPATH=$ROOT/src``).

    PYTHONPATH=src .venv/bin/python bench/mqtt_listener_cpu.py --patients 200 --days 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("ROOT", Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(ROOT / "bench"))

import twin_stream as ts  # noqa: E402
from medtwin.interop import mqtt  # noqa: E402
from medtwin.interop.devices import register_device  # noqa: E402
from medtwin.records import Patient  # noqa: E402
from medtwin.store import Store  # noqa: E402
from medtwin.twin.worker import listener_store  # noqa: E402

THREAD_CPU: dict[str, float] = {}


def _timed(name: str, run: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        start = time.thread_time()
        try:
            return run(*args)
        finally:
            THREAD_CPU[name] = time.thread_time() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--days", type=int, default=1)
    args = parser.parse_args()
    listener_cls: Any = mqtt.MqttListener
    listener_cls._write_loop = _timed("writer", listener_cls._write_loop)
    if hasattr(listener_cls, "_network_loop"):  # this checkout's client; paho's thread is not timed apart
        listener_cls._network_loop = _timed("network", listener_cls._network_loop)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        broker, port, note = ts._broker(tmp)
        try:
            db = f"sqlite:///{tmp / 'listener.db'}"
            setup = Store(db)
            setup.write([Patient(patient_id=f"pt-sim-cgm-{i:04d}", gender="unknown") for i in range(args.patients)])
            for i in range(args.patients):
                register_device(setup, f"sim-cgm-{i:04d}", f"pt-sim-cgm-{i:04d}")
            setup.close()
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            publisher = subprocess.Popen(
                [sys.executable, "-c", ts.PUBLISHER, str(port), str(args.patients), str(args.days), "0"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            assert publisher.stdin is not None
            assert publisher.stdout is not None
            expected = json.loads(publisher.stdout.readline())["ready"]
            store, _ = listener_store(db)
            listener = mqtt.MqttListener(store, f"mqtt://127.0.0.1:{port}", "devices/+/obs", client_id="bench")
            listener.start()
            own0 = resource.getrusage(resource.RUSAGE_SELF)
            pub0 = ts._proc_cpu(publisher.pid) or 0.0
            broker0 = ts._proc_cpu(broker.pid) or 0.0 if broker is not None else 0.0
            publisher.stdin.write("go\n")
            publisher.stdin.flush()
            json.loads(publisher.stdout.readline())
            pub1 = ts._proc_cpu(publisher.pid) or pub0
            while listener.stats.stored + listener.stats.duplicates + listener.stats.rejected < expected:
                time.sleep(0.05)
            stats = listener.stop()
            own1 = resource.getrusage(resource.RUSAGE_SELF)
            broker1 = ts._proc_cpu(broker.pid) or broker0 if broker is not None else 0.0
            publisher.wait(60)
            store.close()
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(10)
    listener_cpu = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    print(json.dumps({
        "checkout": str(ROOT), "broker": note, "readings": expected, "stored": stats.stored,
        "duplicates": stats.duplicates, "rejected": stats.rejected, "commits": stats.commits,
        "listener_cpu_s": round(listener_cpu, 2), "listener_ms_per_reading": round(1e3 * listener_cpu / expected, 4),
        "listener_threads_cpu_s": {k: round(v, 2) for k, v in THREAD_CPU.items()},
        "publisher_cpu_s": round(pub1 - pub0, 2), "publisher_ms_per_reading": round(1e3 * (pub1 - pub0) / expected, 4),
        "broker_cpu_s": round(broker1 - broker0, 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
