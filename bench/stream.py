"""Streaming benchmark: medtwin's MLLP listener (durable SQLite commit before ACK + twin runtime) against
python-hl7's stock asyncio MLLP server doing parse + ACK without storage, in the same run.

Measures, on loopback: sustained throughput and p50/p99 latency from send to ACK at a fixed rate (open loop,
latency from the *scheduled* send time, so a stalled server cannot hide queueing) and at the maximum rate
(closed loop, pipelined); medtwin's receipt-to-alert latency; and the parser alone (ours vs ``hl7.parse``).
Each server runs in its own process; the load generator runs in this one.

    .venv/bin/python bench/stream.py            # 1,000 msg/s for 20 s, max rate for 15 s
    .venv/bin/python bench/stream.py --quick    # 4 s each
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START, END = b"\x0b", b"\x1c\x0d"


LOOP = os.environ.get("MEDTWIN_BENCH_LOOP", "uvloop")  # the event loop of every server and of the load generator


def _run(main: Any) -> Any:
    """Run *main* on the chosen event loop (uvloop by default, for both servers and the client: same loop, fair)."""
    if LOOP == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


# -- servers (run in a child process) -----------------------------------------------------------------------
async def _serve_medtwin(
    db_url: str, *, memory: bool = False, thread_runtime: bool = False, twins: bool = True, listeners: int = 1
) -> None:
    """medtwin's listener. Default: the twin runtime in its own process following the store's raw log (as
    ``medtwin listen`` runs it); *thread_runtime*: the runtime as a thread of the listener, fed in memory;
    *memory*: an in-memory sink with a thread runtime and no persistence (no disk at all); *twins* False: no twin
    runtime at all (the storage path alone); *listeners*: listener processes on the port (``--processes``)."""
    from medtwin.interop.mllp import MemorySink, MllpConfig, MllpServer
    from medtwin.interop.mllp_pool import ListenerPool
    from medtwin.service import prepare_service_heap
    from medtwin.twin import RuntimeProcess, TwinRuntime
    from medtwin.twin.worker import listener_store

    in_process = memory or thread_runtime
    lock = None
    store: Any = MemorySink()
    if not memory:  # as `medtwin listen` opens it
        store, lock = listener_store(db_url, shared_lock=(twins and not in_process) or listeners > 1)
    runtime = TwinRuntime(None if memory else store) if in_process else None
    worker = None if in_process or not twins else RuntimeProcess(db_url, write_lock=lock)
    if runtime is not None:
        runtime.start()
    if worker is not None:
        worker.start()
    config = MllpConfig(port=0, max_connections=256, reuse_port=listeners > 1)
    server = MllpServer(
        store,
        config,
        on_stored=None if runtime is None else (lambda b: runtime.offer(b.records, b.received_monotonic)),
    )
    prepare_service_heap()  # as `medtwin listen` does
    port = await server.start()
    pool = None
    if listeners > 1:
        assert lock is not None
        pool = ListenerPool(db_url, config, extra=listeners - 1, write_lock=lock)
        pool.start(port)
    print(f"PORT {port}", flush=True)
    await _until_stdin_closes()
    writer = server._writer
    children = pool.stop() if pool is not None else []
    await server.close()
    if runtime is not None:
        runtime.close()
        lat = sorted(runtime.alert_latencies_s)
        twin = {"alerts": runtime.alerts_raised, "alert_p50_ms": _pct(lat, 50) * 1e3,
                "alert_p99_ms": _pct(lat, 99) * 1e3, "runtime_busy_s": runtime.busy_s}  # fmt: skip
    elif worker is None:
        twin = {}
    else:
        w = worker.stop()
        twin = {"alerts": w.get("alerts"), "alert_p50_ms": w.get("alert_p50_ms"),
                "alert_p99_ms": w.get("alert_p99_ms"), "runtime_busy_s": w.get("busy_s"),
                "runtime_messages": w.get("messages"), "runtime_error": w.get("error")}  # fmt: skip
    rss_mb = _rss_mb()  # before the count below, which reads the whole raw log
    out = {
        "accepted": server.stats.accepted + sum(int(c.get("accepted", 0)) for c in children),
        "accepted_by_process": [server.stats.accepted, *(int(c.get("accepted", 0)) for c in children)],
        "duplicates": server.stats.duplicates,
        "rejected": server.stats.rejected,
        "errors": server.stats.errors,
        **twin,
        "stored_accepted": len(store.entries("accepted"))
        if memory
        else len(store.raw_log(status="accepted", limit=10_000_000)),
        "group_commits": getattr(writer, "commits", None),
        "commit_p50_ms": _pct(sorted(writer.commit_seconds), 50) * 1e3 if writer is not None else None,
        "commit_p99_ms": _pct(sorted(writer.commit_seconds), 99) * 1e3 if writer is not None else None,
        "writer_busy_s": getattr(writer, "busy_s", None),
        "writer_cpu_s": getattr(writer, "cpu_s", None),
        "listener_cpu_s": sum(os.times()[:2]),
        "checkpoints": len(ck.seconds) if (ck := getattr(store, "checkpointer", None)) else None,
        "checkpoint_p50_ms": _pct(sorted(ck.seconds), 50) * 1e3 if ck else None,
        "checkpoint_max_ms": max(ck.seconds, default=0) * 1e3 if ck else None,
        "wal_restarts": ck.restarts if ck else None,
        "restart_locked_p99_ms": _pct(sorted(ck.locked_seconds), 99) * 1e3 if ck else None,
        "wal_max_pages": max(ck.frames, default=0) if ck else None,
        "rss_mb": rss_mb,
    }
    if not memory:
        store.close()
    print("STATS " + json.dumps(out), flush=True)


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


async def _serve_baseline() -> None:
    import hl7
    from hl7.mllp import start_hl7_server

    async def handle(reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()  # hl7.parse of the block
                writer.writemessage(message.create_ack())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await start_hl7_server(handle, "127.0.0.1", 0, limit=1 << 20)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await _until_stdin_closes()
    server.close()
    await server.wait_closed()
    _ = hl7  # the parser python-hl7's server uses
    print("STATS {}", flush=True)


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


# -- load generation ----------------------------------------------------------------------------------------
def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def make_messages(n: int, prefix: str, patients: int = 50, *, first: int = 0) -> list[bytes]:
    """*n* ORU^R01 messages from virtual bedside monitors (8 OBX each), unique control ids.

    Message *i* carries simulated time ``60 s * ((first + i) // patients)``: pass *first* to continue a stream.
    """
    from medtwin.interop.virtual_feed import sample_to_oru
    from medtwin.monitoring.virtual import virtual_ward

    start = datetime(2026, 1, 1, tzinfo=UTC)
    ward = virtual_ward(patients, start=start, seed=1)
    out = []
    for i in range(first, first + n):
        p = ward[i % patients]
        sample = p.sample(start + timedelta(seconds=60 * (i // patients)))
        out.append(START + sample_to_oru(p, sample, f"{prefix}-{i:08d}").encode() + END)
    return out


@dataclass
class LoadResult:
    sent: int = 0
    acked: int = 0
    negative: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_s)
        return {
            "sent": self.sent,
            "acked": self.acked,
            "negative": self.negative,
            "throughput_per_s": self.acked / self.elapsed_s if self.elapsed_s else 0.0,
            "p50_ms": _pct(lat, 50) * 1e3,
            "p99_ms": _pct(lat, 99) * 1e3,
            "max_ms": (lat[-1] if lat else float("nan")) * 1e3,
        }


async def _reader(reader: asyncio.StreamReader, sent_at: deque[float], result: LoadResult, done: asyncio.Event,
                  expected: list[int], on_ack: Any = None) -> None:  # fmt: skip
    buf = b""
    while expected[0] > 0:
        data = await reader.read(1 << 16)
        if not data:
            break
        buf += data
        now = time.perf_counter()  # one clock read per chunk: these ACKs arrived together
        pos = 0
        while (end := buf.find(END, pos)) >= 0:
            ack = buf[pos : end + 2]
            pos = end + 2
            result.latencies_s.append(now - sent_at.popleft())
            ok = b"MSA|AA|" in ack or b"MSA|CA|" in ack
            result.acked += ok
            result.negative += not ok
            expected[0] -= 1
            if on_ack is not None:
                on_ack()
        buf = buf[pos:]  # one copy per chunk, not one per ACK
    done.set()


async def open_loop(port: int, messages: list[bytes], rate: float, connections: int) -> LoadResult:
    """Send *messages* at *rate* per second spread over *connections*; latency from the scheduled send time."""
    result = LoadResult()
    conns = [await asyncio.open_connection("127.0.0.1", port, limit=1 << 20) for _ in range(connections)]
    queues = [deque[float]() for _ in conns]
    expected = [[0] for _ in conns]
    per_conn = [messages[k::connections] for k in range(connections)]
    for k, chunk in enumerate(per_conn):
        expected[k][0] = len(chunk)
    dones = [asyncio.Event() for _ in conns]
    readers = [
        asyncio.create_task(_reader(r, queues[k], result, dones[k], expected[k])) for k, (r, _) in enumerate(conns)
    ]
    t0 = time.perf_counter()
    interval = 1.0 / rate
    # send everything that is due, then sleep to the next due time (at least 1 ms): at 1,000 msg/s that is a few
    # hundred wake-ups a second instead of one per message, so the load generator takes less of the shared CPUs;
    # latency is still measured from each message's scheduled time
    i, n = 0, len(messages)
    while i < n:
        due = min(n, int((time.perf_counter() - t0) / interval) + 1)
        while i < due:
            k = i % connections
            queues[k].append(t0 + i * interval)
            conns[k][1].write(messages[i])
            i += 1
        result.sent = i
        if i < n:
            await asyncio.sleep(max(0.001, t0 + i * interval - time.perf_counter()))
    await asyncio.wait([asyncio.create_task(d.wait()) for d in dones], timeout=120)
    result.elapsed_s = time.perf_counter() - t0
    for task in readers:
        task.cancel()
    for _, w in conns:
        w.close()
    return result


async def closed_loop(port: int, messages: list[bytes], duration_s: float, connections: int, window: int) -> LoadResult:
    """Keep *window* messages in flight per connection for *duration_s*; latency from the actual send time."""
    result = LoadResult()
    it = iter(messages)
    deadline = time.perf_counter() + duration_s

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        sent_at: deque[float] = deque()
        in_flight = 0
        buf = b""
        stop = False
        try:
            while True:
                while not stop and in_flight < window:
                    msg = next(it, None)
                    if msg is None or time.perf_counter() > deadline:
                        stop = True
                        break
                    sent_at.append(time.perf_counter())
                    writer.write(msg)
                    in_flight += 1
                    result.sent += 1
                if in_flight == 0:
                    return
                data = await reader.read(1 << 16)
                if not data:
                    return
                buf += data
                now = time.perf_counter()
                pos = 0
                while (end := buf.find(END, pos)) >= 0:
                    ack = buf[pos : end + 2]
                    pos = end + 2
                    result.latencies_s.append(now - sent_at.popleft())
                    ok = b"MSA|AA|" in ack or b"MSA|CA|" in ack
                    result.acked += ok
                    result.negative += not ok
                    in_flight -= 1
                buf = buf[pos:]
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    result.elapsed_s = time.perf_counter() - t0
    return result


@contextlib.contextmanager
def server_process(kind: str, db_url: str = "", listeners: int = 1) -> Any:
    """The server of *kind* in a process of its own; a kind ending ``-clear`` is that medtwin kind with encryption at
    rest switched off (``MEDTWIN_UNSAFE_NO_ENCRYPTION=1``, inherited by its listener and twin worker processes)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kind.endswith("-clear"):
        env["MEDTWIN_UNSAFE_NO_ENCRYPTION"] = "1"
        kind = kind.removesuffix("-clear")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--db", db_url, "--listeners", str(listeners)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    info: dict[str, Any] = {"port": int(line.split()[1]), "pid": proc.pid}
    try:
        yield info
    finally:
        try:
            out, _ = proc.communicate(timeout=120)  # closes stdin: the server stops and prints its stats
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
        for row in out.splitlines():
            if row.startswith("STATS "):
                info["stats"] = json.loads(row[6:])


def parser_bench(n: int) -> dict[str, float]:
    import hl7

    from medtwin.interop import hl7v2

    messages = [m[1:-2] for m in make_messages(200, "P", patients=20)]
    texts = [m.decode() for m in messages]
    t = time.perf_counter()
    for i in range(n):
        for message in hl7v2.parse_payload(messages[i % 200]):
            hl7v2.map_message(message)
    ours_map = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i in range(n):
        hl7v2.parse_payload(messages[i % 200])
    ours = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for i in range(n):
        hl7.parse(texts[i % 200])
    theirs = (time.perf_counter() - t) / n
    return {"medtwin_parse_us": ours * 1e6, "medtwin_parse_map_us": ours_map * 1e6, "hl7_parse_us": theirs * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (4 s per phase)")
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed rate, messages/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the fixed-rate phase")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="duration of the max-rate phase")
    parser.add_argument("--connections", type=int, default=8, help="connections for the fixed-rate phase")
    parser.add_argument(
        "--serve",
        choices=["medtwin", "medtwin-ingest", "medtwin-thread", "medtwin-memory", "baseline"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--listeners", type=int, default=1, help="medtwin listener processes on the port (medtwin listen --processes)"
    )
    parser.add_argument(
        "--with-ingest-only",
        action="store_true",
        help="also run medtwin without the twin runtime (the storage path alone: MLLP + durable commit + ACK)",
    )
    parser.add_argument("--with-memory", action="store_true", help="also run medtwin on an in-memory sink (no disk)")
    parser.add_argument(
        "--with-thread", action="store_true", help="also run medtwin with the twin runtime as a thread of the listener"
    )
    parser.add_argument("--db", default="", help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default=LOOP, help="event loop for all processes")
    parser.add_argument("--max-connections", type=int, default=16, help="connections for the max-rate phase")
    parser.add_argument(
        "--encryption",
        choices=["on", "off", "both"],
        default="on",
        help="medtwin with encryption at rest (on: always in production), in clear (off), or both side by side",
    )
    parser.add_argument("--window", type=int, default=8, help="messages in flight per connection at max rate")
    args = parser.parse_args()
    os.environ["MEDTWIN_BENCH_LOOP"] = args.loop  # the server processes inherit it
    globals()["LOOP"] = args.loop
    if args.serve in ("medtwin", "medtwin-ingest", "medtwin-thread", "medtwin-memory"):
        _run(
            _serve_medtwin(
                args.db,
                memory=args.serve == "medtwin-memory",
                thread_runtime=args.serve == "medtwin-thread",
                twins=args.serve != "medtwin-ingest",
                listeners=args.listeners if args.serve in ("medtwin", "medtwin-ingest") else 1,
            )
        )
        return
    if args.serve == "baseline":
        _run(_serve_baseline())
        return
    if args.quick:
        args.seconds = args.max_seconds = 4.0

    print(f"stream benchmark {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs (shared machine: numbers are noisy), event loop {args.loop} (all processes), "
          f"max rate: {args.max_connections} connections x {args.window} in flight; "
          f"medtwin listener processes: {args.listeners}")  # fmt: skip
    p = parser_bench(2000 if args.quick else 10000)
    ours, ours_map, theirs = p["medtwin_parse_us"], p["medtwin_parse_map_us"], p["hl7_parse_us"]
    print(f"parser: medtwin parse {ours:.0f} us, parse+map to records {ours_map:.0f} us; hl7.parse {theirs:.0f} us "
          f"-> parse {theirs / ours:.1f}x faster, parse+map {theirs / ours_map:.1f}x faster")  # fmt: skip
    n_fixed = int(args.rate * args.seconds)
    results: dict[str, Any] = {"parser": p}
    tmp = Path(tempfile.mkdtemp(prefix="medtwin-bench-"))
    kinds = ["medtwin", "baseline"] + (["medtwin-ingest"] if args.with_ingest_only else [])
    if args.encryption != "on":  # the same medtwin runs with encryption at rest switched off
        kinds += [f"{k}-clear" for k in ("medtwin", "medtwin-ingest") if k in kinds]
        if args.encryption == "off":
            kinds = [k for k in kinds if k not in ("medtwin", "medtwin-ingest")]
    kinds += ["medtwin-thread"] if args.with_thread else []
    kinds += ["medtwin-memory"] if args.with_memory else []
    for kind in kinds:
        db = f"sqlite:///{tmp / f'{kind}.db'}"
        if kind.removesuffix("-clear") in ("medtwin", "medtwin-ingest", "medtwin-thread"):
            from medtwin.store import Store

            Store(db).close()  # migrate before the clock starts
        prefix = f"{kind[:2]}{int(time.time())}"
        fixed_msgs = make_messages(n_fixed, prefix + "F")
        max_msgs = make_messages(int(8_000 * args.max_seconds), prefix + "M")  # more than any run can send
        with server_process(kind, db, args.listeners) as info:
            fixed = _run(open_loop(info["port"], fixed_msgs, args.rate, args.connections))
            peak = _run(
                closed_loop(
                    info["port"], max_msgs, args.max_seconds, connections=args.max_connections, window=args.window
                )
            )
        results[kind] = {"fixed": fixed.summary(), "max": peak.summary(), "server": info.get("stats", {})}
        with contextlib.suppress(OSError):  # gigabytes per run: do not leave them behind
            os.remove(db.removeprefix("sqlite:///"))
    shutil.rmtree(tmp, ignore_errors=True)
    for kind in [k for k in results if isinstance(k, str) and k.endswith("-clear")]:
        if args.encryption == "off":
            results[kind.removesuffix("-clear")] = results[kind]
    print()
    print(f"{'':34}{'medtwin (SQLite, FULL sync)':>30}{'python-hl7 (no storage)':>26}")
    for phase, label in (("fixed", f"at {args.rate:g} msg/s"), ("max", "max rate")):
        m, b = results["medtwin"][phase], results["baseline"][phase]
        print(f"{label + ' throughput msg/s':34}{m['throughput_per_s']:>30.0f}{b['throughput_per_s']:>26.0f}")
        print(f"{label + ' ACK p50 ms':34}{m['p50_ms']:>30.1f}{b['p50_ms']:>26.1f}")
        print(f"{label + ' ACK p99 ms':34}{m['p99_ms']:>30.1f}{b['p99_ms']:>26.1f}")
        print(f"{label + ' acked/sent':34}{m['acked']:>24}/{m['sent']:<5}{b['acked']:>20}/{b['sent']:<5}")
    s = results["medtwin"]["server"]
    nan = float("nan")
    print(f"medtwin receipt->alert event: p50 {s.get('alert_p50_ms', float('nan')):.1f} ms, "
          f"p99 {s.get('alert_p99_ms', float('nan')):.1f} ms over {s.get('alerts', 0)} alerts; "
          f"stored {s.get('stored_accepted')} messages (by process {s.get('accepted_by_process')}), "
          f"{s.get('group_commits')} group commits "
          f"(commit p50 {s.get('commit_p50_ms') or nan:.1f} ms, "
          f"p99 {s.get('commit_p99_ms') or nan:.1f} ms)")  # fmt: skip
    print(f"medtwin server threads busy (both phases): group-commit writer {s.get('writer_busy_s', 0):.1f} s, "
          f"twin runtime {s.get('runtime_busy_s', 0):.1f} s ({s.get('runtime_messages', '-')} messages read by "
          f"its process); listener RSS at exit {s.get('rss_mb', 0):.0f} MB")  # fmt: skip
    print(f"medtwin listener CPU (both phases, process start included): {s.get('listener_cpu_s') or nan:.1f} s, of "
          f"which the group-commit writer thread {s.get('writer_cpu_s') or nan:.1f} s; WAL checkpoints off the commit "
          f"path: {s.get('checkpoints')} (p50 {s.get('checkpoint_p50_ms') or nan:.1f} ms, "
          f"max {s.get('checkpoint_max_ms') or nan:.1f} ms; the log restarted {s.get('wal_restarts')} times, "
          f"holding the write lock p99 {s.get('restart_locked_p99_ms') or nan:.1f} ms, "
          f"at most {s.get('wal_max_pages')} pages)")  # fmt: skip
    if "medtwin-thread" in results:
        mt = results["medtwin-thread"]
        st = mt["server"]
        print(f"medtwin with the twin runtime as a thread of the listener (previous design): at {args.rate:g} msg/s "
              f"{mt['fixed']['throughput_per_s']:.0f} msg/s p50 {mt['fixed']['p50_ms']:.1f} ms "
              f"p99 {mt['fixed']['p99_ms']:.1f} ms; max {mt['max']['throughput_per_s']:.0f} msg/s "
              f"p99 {mt['max']['p99_ms']:.1f} ms; receipt->alert p50 {st.get('alert_p50_ms', float('nan')):.1f} ms "
              f"p99 {st.get('alert_p99_ms', float('nan')):.1f} ms")  # fmt: skip
    if "medtwin-ingest" in results:
        mi = results["medtwin-ingest"]
        si = mi["server"]
        print(f"medtwin storage path alone (no twin runtime; SQLite, FULL sync): at {args.rate:g} msg/s "
              f"{mi['fixed']['throughput_per_s']:.0f} msg/s p99 {mi['fixed']['p99_ms']:.1f} ms; "
              f"max {mi['max']['throughput_per_s']:.0f} msg/s p50 {mi['max']['p50_ms']:.1f} ms "
              f"p99 {mi['max']['p99_ms']:.1f} ms; {mi['max']['acked']}/{mi['max']['sent']} acked; "
              f"accepted by process {si.get('accepted_by_process')}")  # fmt: skip
    if "medtwin-memory" in results:
        mm = results["medtwin-memory"]
        print(f"medtwin without storage (in-memory sink, no twin persistence): at {args.rate:g} msg/s "
              f"{mm['fixed']['throughput_per_s']:.0f} msg/s p99 {mm['fixed']['p99_ms']:.1f} ms; "
              f"max {mm['max']['throughput_per_s']:.0f} msg/s p99 {mm['max']['p99_ms']:.1f} ms")  # fmt: skip
    if args.encryption == "both":
        for base in ("medtwin", "medtwin-ingest"):
            if base in results and f"{base}-clear" in results:
                on, off = results[base], results[f"{base}-clear"]
                print(f"{base} encryption on vs off: at {args.rate:g} msg/s p99 {on['fixed']['p99_ms']:.1f} vs "
                      f"{off['fixed']['p99_ms']:.1f} ms, throughput {on['fixed']['throughput_per_s']:.0f} vs "
                      f"{off['fixed']['throughput_per_s']:.0f} msg/s; max rate {on['max']['throughput_per_s']:.0f} vs "
                      f"{off['max']['throughput_per_s']:.0f} msg/s (p99 {on['max']['p99_ms']:.1f} vs "
                      f"{off['max']['p99_ms']:.1f} ms)")  # fmt: skip
    elif args.encryption == "off":
        print("medtwin ran with encryption at rest OFF (MEDTWIN_UNSAFE_NO_ENCRYPTION=1)")
    ratio = results["medtwin"]["max"]["throughput_per_s"] / max(1e-9, results["baseline"]["max"]["throughput_per_s"])
    print(f"ratio medtwin/baseline max throughput: {ratio:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
