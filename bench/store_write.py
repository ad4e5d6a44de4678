"""Store write throughput on SQLite, side by side in one run: the SQLite fast path of ``Store.write_batch``
against the generic bulk path (SQLAlchemy bind processors: what PostgreSQL runs) and against the per-message
path of older releases.

All sides write the same batches of ORU^R01-like messages (1 patient + 7 vital-sign observations + the raw HL7
payload each, mapped by medtwin.interop.hl7v2 before timing, so only the store is measured) into a fresh SQLite
file in WAL mode with ``synchronous=FULL`` (one durable commit per batch, as the MLLP listener does).

* ``legacy``: the per-message code reproduced below, on the schema and pragmas it ran with (revision 0002, SQLite's
  default WAL checkpoint of 1,000 pages);
* ``generic``: ``write_batch`` with the SQLite fast path switched off (multi-row ``INSERT ... RETURNING`` with
  bind processors), on the current schema and pragmas;
* ``fast-0004``: ``write_batch`` as shipped, on the observation indexes of revision 0004 (patient+LOINC+time and
  patient+time, before revision 0005);
* ``fast``: ``write_batch`` as shipped (multi-row inserts of value tuples, checkpoint every 10,000 pages) on the
  current schema (revision 0005's observation indexes), with encryption at rest (payloads and identities sealed
  under per-patient AES-256-GCM keys, keyed digests: what medtwin always does since issue 15);
* ``fast-clear``: the same with encryption at rest switched off (``Store(encryption=False)``): what encryption costs.

The older schemas (``legacy``, ``fast-0004``) have no key tables, so they run in clear.

``--growth N`` instead writes N messages in groups of 16 into one file per schema (0004 and current) and prints the
CPU per message for every 20,000: whether the write cost grows with the database.

    .venv/bin/python bench/store_write.py            # 200 batches (12,800 messages) per side, 3 rounds
    .venv/bin/python bench/store_write.py --quick    # 40 batches per side, 1 round
    .venv/bin/python bench/store_write.py --batch 512
    .venv/bin/python bench/store_write.py --growth 200000
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import create_engine, event

from medtwin.interop import hl7v2
from medtwin.records import Patient, Record
from medtwin.store import RawMessage, Store, batch, schema
from medtwin.store.migrate import alembic_config
from medtwin.store.rows import TABLES

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "hl7v2" / "authored_ORU_R01_vitals_loinc_v251.hl7"
BATCH = 64
PATIENTS = 200

Item = tuple[Sequence[Record], RawMessage | None]


def messages(n: int, offset: int) -> list[Item]:
    """*n* mapped ORU messages with distinct control ids and times, cycling over PATIENTS patients."""
    template = FIXTURE.read_text().replace("\n", "\r").strip("\r")
    t0 = datetime(2025, 3, 1, 10, 29, tzinfo=UTC)
    out: list[Item] = []
    for k in range(offset, offset + n):
        stamp = (t0 + timedelta(seconds=15 * k)).strftime("%Y%m%d%H%M%S")
        text = (
            template.replace("VS-000123", f"VS-{k:08d}")
            .replace("MRN-4711", f"MRN-{k % PATIENTS:05d}")
            .replace("20250301102900", stamp)
        )
        message = hl7v2.parse_message(text)
        mapped = hl7v2.map_message(message)
        raw = RawMessage(
            source_system=message.source_system,
            source_id=message.control_id,
            payload=text,
            content_type="x-application/hl7-v2+er7",
            received=datetime.now(UTC),
        )
        out.append((mapped.records, raw))
    return out


def legacy_write_batch(store: Store, items: Sequence[Item]) -> list[tuple[int, int, bool]]:
    """The write path before the bulk rewrite: per message, raw insert RETURNING, then per type insert RETURNING."""
    results: list[tuple[int, int, bool]] = []
    with store._transaction() as conn:
        for records, raw in items:
            if raw is not None:
                row = {
                    "source_system": raw.source_system,
                    "source_id": raw.source_id,
                    "content_type": raw.content_type,
                    "received": raw.received,
                    "status": raw.status,
                    "reason": raw.reason,
                    "record_count": len(records),
                    "payload": raw.payload_bytes,
                }
                stmt = store._insert(schema.raw_inbound).returning(schema.raw_inbound.c.raw_id)
                if conn.execute(stmt, row).scalar_one_or_none() is None:
                    results.append((0, 0, True))
                    continue
            groups: dict[type[Any], list[Any]] = {}
            for r in records:
                groups.setdefault(type(r), []).append(r)
            inserted = 0
            for kind, table, pk, row_of in TABLES:
                batch = groups.get(kind)
                if not batch:
                    continue
                stmt_r = store._insert(table).returning(table.c[pk])
                new_ids = set(conn.execute(stmt_r, [row_of(r) for r in batch]).scalars().all())
                inserted += len(new_ids)
                if kind is Patient:
                    from medtwin.store import codec

                    ident = [
                        {"patient_id": p.patient_id, "body": codec.encode_identity(p.identity)}
                        for p in batch
                        if p.identity is not None and p.patient_id in new_ids
                    ]
                    if ident:
                        conn.execute(store._insert(schema.patient_identity), ident)
            results.append((inserted, len(records) - inserted, False))
    return results


def _previous_release_store(db: Path) -> Store:
    """A store on revision 0002 with SQLite's default checkpoint interval (the legacy path's setting)."""
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
    engine.dispose()
    store = Store(f"sqlite:///{db}", migrate=False, encryption=False)  # revision 0002: no key tables
    event.listen(store.engine, "connect", lambda dbapi, _rec: dbapi.execute("PRAGMA wal_autocheckpoint=1000"))
    return store


def _store_at(db: Path, revision: str) -> Store:
    """A store whose schema is at *revision* (the current write path on an older schema)."""
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    engine.dispose()
    return Store(f"sqlite:///{db}", migrate=False, encryption=False)  # before revision 0010: no key tables


def _open(kind: str, db: Path) -> Store:
    if kind == "legacy":
        return _previous_release_store(db)
    if kind == "fast-0004":
        return _store_at(db, "0004")
    return Store(f"sqlite:///{db}", encryption=kind != "fast-clear")


def run(kind: str, batches: list[list[Item]], db: Path) -> tuple[float, float]:
    """(messages per second of wall time, CPU microseconds per message) writing *batches* with the *kind* path."""
    store = _open(kind, db)
    fast_driver = batch._sqlite_driver
    if kind == "generic":
        batch._sqlite_driver = lambda conn: None  # type: ignore[assignment,return-value]
    try:
        start, cpu0 = time.perf_counter(), time.process_time()
        for b in batches:
            if kind == "legacy":
                legacy_write_batch(store, b)
            else:
                store.write_batch(b)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        counts = store.counts()
    finally:
        batch._sqlite_driver = fast_driver
        store.close()
    n = sum(len(b) for b in batches)
    assert counts["raw_inbound"] == n, counts
    assert counts["observations"] == 7 * n, counts
    return n / elapsed, 1e6 * cpu / n


KINDS = ("legacy", "generic", "fast-0004", "fast", "fast-clear")
LABELS = {
    "legacy": "legacy per-message path",
    "generic": "bulk, generic binds",
    "fast-0004": "fast path, 0004 indexes",
    "fast": "fast path, encrypted",
    "fast-clear": "fast path, in clear",
}


def growth(total: int, size: int = 16, step: int = 20_000) -> None:
    """Write *total* messages in groups of *size* into one file per schema; CPU per message for every *step*."""
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("fast-0004", "fast"):
            db = Path(tmp) / f"growth-{kind}.db"
            store = _open(kind, db)
            try:
                print(f"{LABELS[kind]}, groups of {size}:")
                for start in range(0, total, step):
                    items = messages(step, start)
                    cpu0 = time.process_time()
                    for i in range(0, step, size):
                        store.write_batch(items[i : i + size])
                    cpu = time.process_time() - cpu0
                    print(
                        f"  messages {start + step:>8,}: {1e6 * cpu / step:6.0f} us CPU/msg, "
                        f"file {db.stat().st_size / 1e6:6.0f} MB",
                        flush=True,
                    )
            finally:
                store.close()
                db.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 batches per side, 1 round")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"messages per batch (default {BATCH})")
    parser.add_argument("--growth", type=int, default=0, help="messages for the growth run instead (e.g. 200000)")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated sides to run (default all: {','.join(KINDS)})"
    )
    args = parser.parse_args()
    kinds = tuple(k for k in KINDS if k in args.kinds.split(","))
    if args.growth:
        growth(args.growth)
        return
    n_batches, rounds = (40, 1) if args.quick else (200, 3)
    size = args.batch
    n_batches = max(1, n_batches * BATCH // size)
    print(f"mapping {n_batches * size} messages ...", file=sys.stderr)
    items = messages(n_batches * size, 0)
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for kind in kinds if r % 2 == 0 else tuple(reversed(kinds)):
                rate, cpu = run(kind, batches, Path(tmp) / f"{kind}-{r}.db")
                rates[kind].append(rate)
                cpus[kind].append(cpu)
    med = {k: (statistics.median(rates[k]), statistics.median(cpus[k])) for k in kinds}
    print(f"store_write: {n_batches} batches x {size} ORU messages (1 patient + 7 obs + raw), SQLite WAL sync=FULL")
    print(f"python {platform.python_version()}, {platform.machine()}, rounds={rounds} (median)")
    for k in kinds:
        rate, cpu = med[k]
        each = [round(x) for x in rates[k]]
        print(f"  {LABELS[k]:<24}: {rate:8,.0f} msg/s wall  {cpu:7.1f} us CPU/msg  (rounds: {each})")
    for k in [k for k in ("legacy", "generic", "fast-0004", "fast-clear") if k in med and "fast" in med]:
        print(
            f"  ratio fast/{k:<13}: {med['fast'][0] / med[k][0]:.2f}x msg/s, "
            f"{med[k][1] / med['fast'][1]:.2f}x less CPU per message"
        )
    if "fast" in med and "fast-clear" in med:
        print(f"  encryption at rest: {med['fast'][1] - med['fast-clear'][1]:+.1f} us CPU per message "
              f"({med['fast'][1] / med['fast-clear'][1]:.3f}x the CPU of the same writes in clear)")  # fmt: skip


if __name__ == "__main__":
    main()
