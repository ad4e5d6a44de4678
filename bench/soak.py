"""Soak test: the medtwin MLLP listener (durable SQLite + twin runtime) at a fixed rate for N minutes.

Checks that no acknowledged message is lost (every sent control id is in the store, each once) and reports the RSS
of the listener and its twin runtime process at the start and the end (memory should stay flat), plus throughput
and ACK latency per minute.
Compares against python-hl7's stock server (parse + ACK, no storage) for the first minute, as the peer.

    .venv/bin/python bench/soak.py                 # 10 minutes at 1,000 msg/s (the issue's reliability run)
    .venv/bin/python bench/soak.py --quick         # 30 s
    .venv/bin/python bench/soak.py --minutes 2 --rate 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil

import stream


def rss_mb(pid: int) -> float:
    """RSS of the listener process plus its children (the twin runtime's worker process)."""
    return sum(rss_parts(pid))


def rss_parts(pid: int) -> list[float]:
    """RSS in MB of the listener process, then of each of its children (the twin runtime's worker process)."""
    proc = psutil.Process(pid)
    parts = [float(proc.memory_info().rss) / 2**20]
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            parts.append(float(child.memory_info().rss) / 2**20)
    return parts


_STAMP = re.compile(rb"\|(\d{14})\.0000\+0000")
_CONTROL_ID = re.compile(rb"\|ORU\^R01\^ORU_R01\|([^|]+)\|")


def shifted(base: list[bytes], base_prefix: str, prefix: str, offset_s: int) -> list[bytes]:
    """*base* with new control ids (*prefix* replaces *base_prefix*, same length) and every time *offset_s* later.

    Generating a minute of virtual-monitor messages costs ~0.4 ms each (the physiology simulation), i.e. ~25 s per
    minute at 1,000 msg/s: done between chunks that left the listener idle for a third of the run. Replaying one
    generated minute with fresh control ids and shifted times costs a few microseconds per message.
    """
    assert len(prefix) == len(base_prefix)
    old, new = f"{base_prefix}-".encode(), f"{prefix}-".encode()
    cache: dict[bytes, bytes] = {}

    def shift(match: re.Match[bytes]) -> bytes:
        stamp = match.group(1)
        out = cache.get(stamp)
        if out is None:
            when = datetime.strptime(stamp.decode(), "%Y%m%d%H%M%S").replace(tzinfo=UTC) + timedelta(seconds=offset_s)
            out = cache[stamp] = f"|{when:%Y%m%d%H%M%S}.0000+0000".encode()
        return out

    return [_STAMP.sub(shift, m.replace(old, new)) for m in base]


async def soak(port: int, pid: int, rate: float, seconds: float, prefix: str) -> dict[str, object]:
    """Open-loop load in one-minute chunks (or shorter), sampling the server's RSS between chunks.

    One minute of messages is generated before the clock starts; each chunk replays it with new control ids and
    times shifted by the simulated span of a chunk (the twins see time keep running).
    """
    chunk_s = min(60.0, seconds)
    per_chunk = int(rate * chunk_s)
    base_prefix = f"{prefix}-000"
    base = stream.make_messages(per_chunk, base_prefix)
    span_s = 60 * (per_chunk // 50 + 1)  # make_messages: 50 patients, one sample per patient per simulated minute
    samples: list[dict[str, float]] = [{"t_s": 0.0, "rss_mb": rss_mb(pid)}]
    results = []
    sent_ids: list[str] = []
    sent_total = acked_total = 0
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds - 0.5:
        n = int(rate * min(chunk_s, seconds - (time.perf_counter() - t0)))
        if n <= 0:
            break
        msgs = shifted(base[:n], base_prefix, f"{prefix}-{i:03d}", i * span_s)  # simulated time keeps running
        sent_ids.extend(_CONTROL_ID.search(m).group(1).decode() for m in msgs)  # type: ignore[union-attr]
        r = await stream.open_loop(port, msgs, rate, connections=8)
        s = r.summary()
        results.append(s)
        sent_total += r.sent
        acked_total += r.acked
        parts = rss_parts(pid)
        samples.append({"t_s": time.perf_counter() - t0, "rss_mb": sum(parts), "parts_mb": parts})
        print(f"  chunk {i + 1}: {s['throughput_per_s']:.0f} msg/s, ACK p50 {s['p50_ms']:.1f} ms, "
              f"p99 {s['p99_ms']:.1f} ms, acked {r.acked}/{r.sent}, server RSS {samples[-1]['rss_mb']:.0f} MB "
              f"({' + '.join(f'{x:.0f}' for x in parts)})",
              flush=True)  # fmt: skip
        i += 1
    return {"chunks": results, "rss": samples, "sent": sent_total, "acked": acked_total, "sent_ids": sent_ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--quick", action="store_true", help="30 seconds")
    args = parser.parse_args()
    seconds = 30.0 if args.quick else args.minutes * 60
    print(f"soak {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {seconds:.0f} s at {args.rate:g} msg/s, "
          f"{os.cpu_count()} CPUs (shared machine: numbers are noisy)")  # fmt: skip
    from medtwin.store import Store, load_cursor

    tmp = Path(tempfile.mkdtemp(prefix="medtwin-soak-"))
    db = f"sqlite:///{tmp / 'soak.db'}"
    Store(db).close()
    prefix = f"SK{int(time.time())}"
    with stream.server_process("medtwin", db) as info:
        run = stream._run(soak(info["port"], info["pid"], args.rate, seconds, prefix))
    twin = info.get("stats", {})
    with stream.server_process("baseline") as info:
        peer = stream._run(stream.open_loop(info["port"], stream.make_messages(int(args.rate * min(60, seconds)), "B"),
                                            args.rate, connections=8))  # fmt: skip
    store = Store(db)
    try:
        accepted = store.raw_log(status="accepted", limit=10_000_000)
        ids = [e.source_id for e in accepted]
        counts = store.counts()
        cursor = load_cursor(store, "twin-runtime")
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)  # gigabytes: do not leave them behind
    sent_ids = run.pop("sent_ids")
    assert isinstance(sent_ids, list)
    stored = set(ids)
    twice = len(ids) - len(stored)
    missing = [c for c in sent_ids if c not in stored]
    acked, sent = int(str(run["acked"])), int(str(run["sent"]))
    # every message was acknowledged: a lost message is a sent (hence acknowledged) control id the store lacks;
    # otherwise the unacknowledged ones may legitimately be missing, and only the count can be compared
    lost = len(missing) if acked == sent else max(0, acked - (len(sent_ids) - len(missing)))
    rss = run["rss"]
    assert isinstance(rss, list)
    print(f"sent {sent}, acknowledged {acked}, stored {len(stored)} distinct messages ({twice} stored twice), "
          f"sent but not stored {len(missing)}, lost {lost}; observations {counts['observations']}")  # fmt: skip
    first = rss[min(1, len(rss) - 1)]["rss_mb"]
    print(f"server RSS (listener + twin runtime process) start {rss[0]['rss_mb']:.0f} MB, "
          f"after the first chunk {first:.0f} MB, end {rss[-1]['rss_mb']:.0f} MB")  # fmt: skip
    behind = max(e.raw_id for e in accepted) - (cursor or 0) if accepted else 0
    nan = float("nan")
    print(f"twin runtime: read {twin.get('runtime_messages')} messages, {twin.get('alerts')} alerts, receipt -> alert "
          f"p50 {twin.get('alert_p50_ms') or nan:.0f} ms, p99 {twin.get('alert_p99_ms') or nan:.0f} ms; "
          f"cursor {'at the end of the log' if behind == 0 else f'{behind} raw ids behind'}")  # fmt: skip
    ps = peer.summary()
    print(f"peer python-hl7 (no storage), first minute: {ps['throughput_per_s']:.0f} msg/s, "
          f"p99 {ps['p99_ms']:.1f} ms")  # fmt: skip
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({"medtwin": run, "peer": ps, "lost": lost}, indent=2, default=str))
    if lost > 0 or twice:
        raise SystemExit("FAILED: messages lost or stored twice")


if __name__ == "__main__":
    main()
