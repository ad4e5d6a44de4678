"""API load benchmark: patient read + observation search with authentication, authorization and audit on, and the
same endpoints with security off, in the same run.

The server (``medtwin.server`` on uvicorn, uvloop + httptools, one process) runs in a child process over a SQLite
store seeded with patients and observations; the load generator runs in this one, on loopback: a small HTTP/1.1
keep-alive client on asyncio streams (uvloop), about 0.1 ms of CPU a request (``--client httpx``: httpx's
AsyncClient, about 2.4 ms a request on the 2-core VM: more than the server, so on a small machine it, not the
server, set the pace). Two phases per mode:

* fixed rate (open loop): ``--rate`` requests/s for ``--seconds``; latency is measured from each request's
  *scheduled* send time, so a stalled server cannot hide its queue (coordinated omission);
* maximum throughput (closed loop): ``--concurrency`` requests in flight for ``--max-seconds``.

Secure mode: every request carries a bearer token (ES256 JWT; 20 clinicians, one token each), is authorised
against role, scopes, care team and consent, and is audited durably in the hash chain (group commit) before it is
answered. Requests alternate ``GET /fhir/Patient/{id}`` and ``GET /fhir/Observation?patient={id}&_count=20``.
CPU time of the server process is measured (psutil) as well as wall time.

    .venv/bin/python bench/api_load.py                  # 500 req/s for 60 s, max for 15 s, each mode
    .venv/bin/python bench/api_load.py --quick          # 5 s each
    .venv/bin/python bench/api_load.py --client httpx   # the load generator of the first runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

from medtwin.interop.mllp import run as run_loop

PATIENTS = 200
OBSERVATIONS = 100  # per patient
CLINICIANS = 20


def _seed(db: str, tmp: Path) -> list[str]:
    from medtwin import codes
    from medtwin.records import Identifier, Observation, Patient, PatientIdentity, Quantity
    from medtwin.security.accounts import Accounts
    from medtwin.store import Store

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    ids = [f"pt-bench-{i:04d}" for i in range(PATIENTS)]
    with Store(db) as store:
        records: list[Any] = []
        for i, pid in enumerate(ids):
            records.append(
                Patient(
                    patient_id=pid,
                    gender="female",
                    identity=PatientIdentity(
                        identifiers=(Identifier(system="urn:mrn", value=f"B{i:05d}", type_code="MR"),),
                        family=f"Bench{i}",
                        given=("Pat",),
                    ),
                )
            )
            records.extend(
                Observation(
                    patient_id=pid,
                    code=codes.HEART_RATE,
                    effective=t0 + timedelta(minutes=5 * k),
                    value=Quantity(value=60 + k % 40, unit="/min"),
                )
                for k in range(OBSERVATIONS)
            )
        store.write(records)
        accounts = Accounts(store.engine)
        for pid in ids:
            accounts.assign("bench-team", pid)
    return ids


def _serve(db: str, tmp: str, secure: bool, port_queue: Any) -> None:
    import uvicorn

    from medtwin.server import Platform, ServerSettings, create_app
    from medtwin.service import prepare_service_heap

    settings = ServerSettings(
        security=secure,
        rate_per_s=10_000.0,  # on, but far above the load: the limiter's cost is measured, not its refusals
        rate_burst=10_000,
        jwt_key_path=os.path.join(tmp, "jwt.pem"),
        audit_key_path=os.path.join(tmp, f"audit-{int(secure)}.key"),
    )
    platform_ = Platform.open(settings, db)
    app = create_app(platform_, close_platform=True)
    prepare_service_heap()  # as `medtwin serve` does (medtwin.service)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="error",
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        timeout_keep_alive=120,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        port_queue.put(server.servers[0].sockets[0].getsockname()[1])
        await task

    run_loop(main())  # uvloop, as `medtwin serve` runs (the Config's loop= only applies to uvicorn.run)


def _tokens(db: str, tmp: Path) -> list[str]:
    from medtwin.security.scopes import parse_scopes
    from medtwin.security.tokens import SigningKey, TokenService, TokenSettings
    from medtwin.store import Store

    with Store(db, migrate=False) as store:
        service = TokenService(
            store.engine, SigningKey.load_or_create(tmp / "jwt.pem"), TokenSettings(access_ttl_s=3600)
        )
        return [
            service.issue(TokenService.grant(f"dr-{i}", "clinician", parse_scopes("user/*.rs"), teams=("bench-team",)))[
                "access_token"
            ]
            for i in range(CLINICIANS)
        ]


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class _ClientError(Exception):
    """A request that got no complete HTTP answer."""


class _Connection:
    """One keep-alive HTTP/1.1 connection: one request at a time, answers read by their Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise _ClientError("chunked answers are not expected from these endpoints")
        if length is None:
            raise _ClientError("an answer without Content-Length")
        await self.reader.readexactly(length)
        return status


class _RawClient:
    """GET requests over at most *max_connections* keep-alive connections to *host*:*port* (a request waits for a
    free connection; that wait is part of its latency)."""

    def __init__(self, base: str, max_connections: int) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.idle: list[_Connection] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def get(self, path: str, headers: dict[str, str]) -> int:
        async with self.slots:
            conn = self.idle.pop() if self.idle else _Connection(*await asyncio.open_connection(self.host, self.port))
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            request = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}\r\n".encode()
            try:
                status = await conn.get(request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, _ClientError):
                conn.writer.close()
                raise _ClientError(f"GET {path}: no complete answer") from None
            except BaseException:  # cancelled mid-answer: the connection's state is unknown
                conn.writer.close()
                raise
            self.idle.append(conn)
            return status

    async def aclose(self) -> None:
        for conn in self.idle:
            conn.writer.close()
        self.idle.clear()


class _HttpxClient:
    """The same interface over httpx's AsyncClient."""

    def __init__(self, base: str, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # no pool timeout: a request waits for a connection, and that wait counts in its latency
        self.client = httpx.AsyncClient(base_url=base, limits=limits, timeout=httpx.Timeout(60, pool=None))

    async def get(self, path: str, headers: dict[str, str]) -> int:
        try:
            return (await self.client.get(path, headers=headers)).status_code
        except httpx.HTTPError as exc:
            raise _ClientError(f"GET {path}: {exc}") from None

    async def aclose(self) -> None:
        await self.client.aclose()


def _client(kind: str, base: str, max_connections: int) -> _RawClient | _HttpxClient:
    return _HttpxClient(base, max_connections) if kind == "httpx" else _RawClient(base, max_connections)


def _request(i: int, ids: list[str], tokens: list[str]) -> tuple[str, dict[str, str]]:
    pid = ids[i % len(ids)]
    headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"} if tokens else {}
    if i % 2:
        return f"/fhir/Observation?patient={pid}&_count=20&date=ge2026-11-01", headers
    return f"/fhir/Patient/{pid}", headers


async def _fixed_rate(
    client_kind: str,
    base: str,
    ids: list[str],
    tokens: list[str],
    rate: float,
    seconds: float,
    grace_s: float = 10.0,
) -> dict[str, Any]:
    """Send at *rate* for *seconds* (open loop), then wait at most *grace_s* for the answers still due; requests
    unanswered by then are counted (``unfinished``) with the time they had waited as their latency (a lower bound),
    so an overloaded server cannot make the run last longer than asked or hide its queue."""
    latencies: list[float] = []
    errors = 0
    due_times: dict[int, float] = {}
    client = _client(client_kind, base, 256)
    try:
        start = time.perf_counter()
        total = int(rate * seconds)
        tasks = []

        # at most 256 requests in flight; the rest wait here (their wait counts in their latency, from their due
        # time): httpx's pool handles thousands of queued requests in time that grows with the queue
        in_flight = asyncio.Semaphore(256)

        async def one(i: int, due: float) -> None:
            nonlocal errors
            path, headers = _request(i, ids, tokens)
            try:
                async with in_flight:
                    status = await client.get(path, headers)
            except _ClientError:
                errors += 1
                due_times.pop(i, None)
                return
            if status != 200:
                errors += 1
            latencies.append(time.perf_counter() - due)
            due_times.pop(i, None)

        end = start + seconds
        for i in range(total):
            due = start + i / rate
            if due >= end or time.perf_counter() >= end:  # a slow client stops on time too: it sent fewer
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            due_times[i] = due
            tasks.append(asyncio.create_task(one(i, due)))
        total = len(tasks)
        sent_wall = time.perf_counter() - start
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        stopped = time.perf_counter()
        for task in pending:
            task.cancel()
        unfinished = list(due_times.values())
        latencies.extend(stopped - due for due in unfinished)
    finally:
        await client.aclose()
    answered = total - len(unfinished) - errors
    return {
        "sent": total,
        "answered": answered,
        "errors": errors,
        "unfinished": len(unfinished),
        "offered_per_s": total / sent_wall,
        "answered_per_s": answered / (stopped - start),
        "p50_ms": _pct(latencies, 50) * 1e3,
        "p99_ms": _pct(latencies, 99) * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


async def _max_rate(
    client_kind: str, base: str, ids: list[str], tokens: list[str], concurrency: int, seconds: float
) -> dict[str, Any]:
    done = 0
    errors = 0
    client = _client(client_kind, base, concurrency)
    try:
        stop = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop:
                path, headers = _request(next(counter), ids, tokens)
                try:
                    status = await client.get(path, headers)
                except _ClientError:
                    errors += 1
                    continue
                done += 1
                errors += status != 200
            return None

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    finally:
        await client.aclose()
    return {"requests": done, "errors": errors, "per_s": done / wall}


def _run_mode(db: str, tmp: Path, ids: list[str], secure: bool, args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(db, str(tmp), secure, ports), daemon=True)
    proc.start()
    try:
        port = ports.get(timeout=120)
        base = f"http://127.0.0.1:{port}"
        tokens = _tokens(db, tmp) if secure else []
        server = psutil.Process(proc.pid)
        _say(f"{'secure' if secure else 'insecure'} server on port {port}; warm-up")
        run_loop(_fixed_rate(args.client, base, ids, tokens, 50, 1.0))  # warm-up: caches, connections
        _say(f"fixed rate {args.rate:.0f}/s for {args.seconds:.0f} s")
        cpu0, client0 = server.cpu_times(), time.process_time()
        fixed = run_loop(_fixed_rate(args.client, base, ids, tokens, args.rate, args.seconds))
        cpu1, client1 = server.cpu_times(), time.process_time()
        fixed["server_cpu_s"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        fixed["server_cpu_ms_per_request"] = fixed["server_cpu_s"] * 1e3 / max(1, fixed["answered"])
        fixed["client_cpu_s"] = client1 - client0
        fixed["client_cpu_ms_per_request"] = fixed["client_cpu_s"] * 1e3 / max(1, fixed["sent"])
        _say(f"answered {fixed['answered']} of {fixed['sent']}; maximum rate for {args.max_seconds:.0f} s")
        cpu0, client0 = server.cpu_times(), time.process_time()
        top = run_loop(_max_rate(args.client, base, ids, tokens, args.concurrency, args.max_seconds))
        cpu1, client1 = server.cpu_times(), time.process_time()
        top["server_cpu_ms_per_request"] = (
            ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) * 1e3 / max(1, top["requests"])
        )
        top["client_cpu_ms_per_request"] = (client1 - client0) * 1e3 / max(1, top["requests"])
        return {"fixed_rate": fixed, "max_rate": top}
    finally:
        proc.terminate()
        proc.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="5 s per phase")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="load generator: our HTTP/1.1 client or httpx"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds = args.max_seconds = 5.0
    random.seed(1)
    with tempfile.TemporaryDirectory(prefix="medtwin-api-bench-") as name:
        tmp = Path(name)
        db = f"sqlite:///{tmp / 'bench.db'}"
        _say(f"seeding {PATIENTS} patients x {OBSERVATIONS} observations")
        ids = _seed(db, tmp)
        results = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {psutil.cpu_count()} CPUs, Python {sys.version.split()[0]}",
            "load": psutil.getloadavg(),
            "client": args.client,
            "secure": _run_mode(db, tmp, ids, True, args),
            "insecure": _run_mode(db, tmp, ids, False, args),
        }
    sec, ins = results["secure"], results["insecure"]
    results["throughput_ratio_secure_over_insecure"] = sec["max_rate"]["per_s"] / ins["max_rate"]["per_s"]
    results["security_cost_pct"] = 100 * (1 - results["throughput_ratio_secure_over_insecure"])
    # on a shared machine wall-clock throughput moves with the neighbours' load; the server's CPU time per request
    # does much less: the throughput one core could give is its inverse
    results["cpu_ratio_insecure_over_secure"] = (
        ins["max_rate"]["server_cpu_ms_per_request"] / sec["max_rate"]["server_cpu_ms_per_request"]
    )
    results["load_after"] = psutil.getloadavg()
    print(json.dumps(results, indent=2))
    f, g = sec["fixed_rate"], ins["fixed_rate"]
    print(
        f"\ninsecure @ {args.rate:.0f}/s offered, {g['answered_per_s']:.0f}/s answered ({g['unfinished']} unfinished): "
        f"p50 {g['p50_ms']:.1f} ms, p99 {g['p99_ms']:.1f} ms, {g['errors']} errors"
    )
    print(
        f"secure @ {args.rate:.0f}/s offered, {f['answered_per_s']:.0f}/s answered ({f['unfinished']} unfinished): "
        f"p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms (goal < 50), "
        f"{f['errors']} errors; max {sec['max_rate']['per_s']:.0f}/s vs {ins['max_rate']['per_s']:.0f}/s insecure: "
        f"ratio {results['throughput_ratio_secure_over_insecure']:.2f} "
        f"(security costs {results['security_cost_pct']:.0f} %, goal < 25 %); server CPU per request "
        f"{sec['max_rate']['server_cpu_ms_per_request']:.2f} vs {ins['max_rate']['server_cpu_ms_per_request']:.2f} ms: "
        f"CPU-bound throughput ratio {results['cpu_ratio_insecure_over_secure']:.2f}"
    )


if __name__ == "__main__":
    main()
