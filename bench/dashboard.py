"""Ward board under load: 200 monitored patients streaming 1 HL7 v2 ORU^R01 per second each, one nurse's board open
in Chromium. Measures in the browser the delay from each message's ACK to the board's DOM update showing that
reading, and the page's main-thread busy time.

The platform runs as ``medtwin demo`` runs it (API + web app on uvicorn, MLLP listener, twin worker process; SQLite)
in this process's background thread; 200 patients are admitted to WARD-A over ADT^A01; then 10 MLLP gateway
connections (the listener's per-peer limit) carry a reading of every patient every second whose heart rate
alternates between 85 and 95 /min (NEWS2 0 and 1), so every message changes the patient's NEWS2 and must reach the
board (ACK -> twin worker -> NEWS2 event -> SSE -> the board's batched row refresh -> DOM). The page logs each row
update with the reading's time (``window.mtBoard.log``); a reading's delay is the DOM time minus its ACK time (same
machine clock). A reading overtaken by the patient's next one before the board showed it is counted as superseded,
not as a delay.

Main-thread busy time: Chrome's ``Performance.getMetrics`` ``TaskDuration`` (all main-thread task time) over the
measurement window, divided by the window's wall time. Baseline: the same page with the platform idle (no stream).

    .venv/bin/python bench/dashboard.py                 # 200 patients, 60 s measured after 15 s warm-up
    .venv/bin/python bench/dashboard.py --quick         # 50 patients, 15 s
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from medtwin import codes
from medtwin.cli.monitor import run_loop
from medtwin.cli.platform_demo import free_port, run_platform_demo
from medtwin.interop.hl7v2 import OruResult, build_oru_r01
from medtwin.interop.mllp import MllpClient
from medtwin.monitoring.virtual import VirtualPatient
from medtwin.server.web.seed import adt_a01
from medtwin.store import Store

PASSWORD = "bench-pass-123"


def start_platform(folder: Path) -> tuple[dict[str, Any], Any]:
    info: dict[str, Any] = {}
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = asyncio.Event()

        def on_ready(i: dict[str, Any]) -> None:
            info.update(i)
            ready.set()

        await run_platform_demo(data_dir=folder, host="127.0.0.1", port=free_port(), mllp_port=0, minutes=None,
                                monitors=False, patients=1, time_scale=1.0, interval_s=1.0,
                                console=Console(file=io.StringIO()), glucose=False, stop=state["stop"],
                                on_ready=on_ready, password=PASSWORD)  # fmt: skip

    thread = threading.Thread(target=lambda: run_loop(main()), daemon=True)
    thread.start()
    if not ready.wait(180):
        raise SystemExit("the platform did not start")

    def stop() -> None:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(60)

    return info, stop


def oru(mrn: str, n: int, when: datetime) -> str:
    hr = 85.0 if n % 2 == 0 else 95.0  # NEWS2 pulse 0 / 1: every reading changes the score
    results = [OruResult(codes.HEART_RATE, hr, "/min"), OruResult(codes.RESPIRATORY_RATE, 16.0, "/min"),
               OruResult(codes.OXYGEN_SATURATION_PULSE_OX, 97.0, "%"), OruResult(codes.SYSTOLIC_BP, 125.0, "mm[Hg]"),
               OruResult(codes.BODY_TEMPERATURE, 36.9, "Cel"), OruResult(codes.INHALED_OXYGEN_FLOW, 0.0, "L/min"),
               OruResult(codes.LEVEL_OF_CONSCIOUSNESS, codes.ACVPU["A"])]  # fmt: skip
    return build_oru_r01(control_id=f"B{mrn}-{n}", mrn=mrn, results=results, observed=when, family="Bench",
                         given=mrn)  # fmt: skip


async def stream(port: int, mrns: list[str], seconds: float, acks: dict[tuple[str, str], float],
                 connections: int = 10) -> int:  # fmt: skip
    """*connections* gateway connections (the listener limits connections per peer), each carrying its share of the
    patients; every patient gets one reading per second; returns the messages acknowledged."""
    stop_at = time.monotonic() + seconds
    sent = 0

    async def gateway(g: int) -> None:
        nonlocal sent
        mine = mrns[g::connections]
        async with await MllpClient.connect("127.0.0.1", port) as client:
            await asyncio.sleep(g / connections)  # spread the gateways over the second
            n = 0
            next_at = time.monotonic()
            while time.monotonic() < stop_at:
                for i, mrn in enumerate(mine):
                    when = datetime.now(UTC).replace(microsecond=0)
                    ack = await client.send(oru(mrn, n, when))
                    if "MSA|AA" in ack:
                        acks[(mrn, when.isoformat())] = time.time() * 1000.0
                        sent += 1
                    # spread this gateway's patients over the second
                    await asyncio.sleep(max(0.0, next_at + (i + 1) / len(mine) - time.monotonic()))
                n += 1
                next_at += 1.0

    await asyncio.gather(*(gateway(g) for g in range(connections)))
    return sent


async def admit(port: int, mrns: list[str]) -> None:
    now = datetime.now(UTC)
    async with await MllpClient.connect("127.0.0.1", port) as client:
        for i, mrn in enumerate(mrns):
            patient = VirtualPatient(mrn, "stable", start=now)
            ack = await client.send(adt_a01(patient, "WARD-A", f"A-{i + 1:03d}", at=now, control_id=f"ADT-{mrn}"))
            assert "MSA|AA" in ack, ack


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--quick", action="store_true", help="50 patients, 15 s measured, 5 s warm-up")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print where the page's main thread spends its time")
    args = ap.parse_args()
    if args.quick:
        args.patients, args.seconds, args.warmup = 50, 15.0, 5.0
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="medtwin-bench-dashboard-"))
    info, stop_platform = start_platform(folder)
    mllp = int(info["mllp_port"])
    mrns = [f"BD-{i + 1:04d}" for i in range(args.patients)]
    asyncio.run(admit(mllp, mrns))
    store = Store(info["url"])
    pid_of: dict[str, str] = {}
    for p in store.patients():
        for ident in p.identity.identifiers if p.identity else ():
            if ident.value in mrns:
                pid_of[ident.value] = p.patient_id
    store.close()
    proc = psutil.Process()
    acks: dict[tuple[str, str], float] = {}
    result: dict[str, Any] = {}
    with sync_playwright() as pw:
        exe = os.environ.get("MEDTWIN_CHROMIUM", "/usr/bin/chromium")
        flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        browser = pw.chromium.launch(executable_path=exe, args=flags)
        page = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(info["origin"] + "/app/login")
        page.click("#signin")
        page.fill("input[name=username]", "nurse.kim")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/app/ward")
        page.wait_for_function(f"() => document.querySelectorAll('#board tbody tr').length >= {args.patients}")
        page.wait_for_selector("#live.on")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def task_s() -> float:
            return next(
                m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] == "TaskDuration"
            )

        t0, b0 = time.monotonic(), task_s()
        page.wait_for_timeout(5000)
        idle_busy = (task_s() - b0) / (time.monotonic() - t0)
        total = args.warmup + args.seconds
        holder: dict[str, int] = {}
        sender = threading.Thread(target=lambda: holder.update(sent=asyncio.run(stream(mllp, mrns, total, acks))))
        cpu0, wall0 = proc.cpu_times(), time.monotonic()
        sender.start()
        page.wait_for_timeout(args.warmup * 1000)
        page.evaluate("window.mtBoard.log = []")
        measure_from = time.time() * 1000.0
        t1, b1 = time.monotonic(), task_s()
        if args.profile:  # where the main thread's time goes (V8 sampling profiler, self time by function)
            cdp.send("Profiler.enable")
            cdp.send("Profiler.start")
        page.wait_for_timeout(args.seconds * 1000)
        busy = (task_s() - b1) / (time.monotonic() - t1)
        if args.profile:
            prof = cdp.send("Profiler.stop")["profile"]
            hits: dict[str, int] = {}
            for node in prof["nodes"]:
                f = node["callFrame"]
                name = f"{f['functionName'] or '(anonymous)'} {f['url'].rsplit('/', 1)[-1]}:{f['lineNumber']}"
                hits[name] = hits.get(name, 0) + node.get("hitCount", 0)
            total_hits = sum(hits.values()) or 1
            for name, n in sorted(hits.items(), key=lambda kv: -kv[1])[:25]:
                print(f"{100 * n / total_hits:6.1f} %  {name}")
        sender.join(args.seconds + 60)
        page.wait_for_timeout(3000)  # the last readings reach the board
        log = page.evaluate("window.mtBoard.log")
        result["browser_errors"] = errors[:5]
        cpu1, wall1 = proc.cpu_times(), time.monotonic()
        browser.close()
    stop_platform()
    by_pid = {v: k for k, v in pid_of.items()}
    shown: dict[tuple[str, str], float] = {}
    for pid, reading, t in log:
        mrn = by_pid.get(pid)
        if mrn is None or reading is None:
            continue
        key = (mrn, datetime.fromisoformat(reading).astimezone(UTC).replace(microsecond=0).isoformat())
        shown.setdefault(key, t)
    measured = {k: a for k, a in acks.items() if a >= measure_from}
    delays = [(shown[k] - a) / 1000.0 for k, a in measured.items() if k in shown and shown[k] >= a]
    late_cutoff = max(measured.values(), default=0.0) - 5000.0  # readings in the last 5 s may not have been shown
    missing = [k for k, a in measured.items() if k not in shown and a < late_cutoff]
    children_cpu = sum(c.cpu_times().user + c.cpu_times().system for c in proc.children(recursive=True)
                       if c.is_running()) if proc.children() else 0.0  # fmt: skip
    result = {
        **result,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.python_version()}, shared (noisy)",
        "patients": args.patients,
        "rate_msg_s": args.patients,
        "measured_s": args.seconds,
        "acknowledged_in_window": len(measured),
        "shown_on_board": len(delays),
        "superseded_or_missing": len(missing),
        "delay_p50_s": round(statistics.median(delays), 3) if delays else None,
        "delay_p99_s": round(percentile(delays, 0.99), 3) if delays else None,
        "delay_max_s": round(max(delays), 3) if delays else None,
        "main_thread_busy_pct": round(100 * busy, 1),
        "main_thread_busy_idle_baseline_pct": round(100 * idle_busy, 1),
        "this_process_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 1),
        "wall_s": round(wall1 - wall0, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "goals": {"delay_p99_s": 2.0, "main_thread_busy_pct": 20.0},
    }
    _ = children_cpu
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>36}: {v}")
        ok = result["delay_p99_s"] is not None and result["delay_p99_s"] < 2.0 and busy < 0.20
        print(f"{'goals (p99 < 2 s, busy < 20 %)':>36}: {'met' if ok else 'NOT met'}")
    sys.exit(0)


if __name__ == "__main__":
    main()
