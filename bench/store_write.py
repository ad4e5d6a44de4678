"""Store write throughput: ``Store.write_batch`` (bulk, one insert per table per batch) against the previous
per-message write path (raw insert + one insert per record type per message, each with RETURNING), in one run.

Both write the same batches of 64 ORU^R01-like messages (1 patient + 7 vital-sign observations + the raw HL7
payload each, mapped by medtwin.interop.hl7v2 before timing, so only the store is measured) into a fresh SQLite
file in WAL mode with ``synchronous=FULL`` (one durable commit per batch, as the MLLP listener does). The
baseline is the old code reproduced below, run on the same Store connection settings.

    .venv/bin/python bench/store_write.py            # 200 batches (12,800 messages) per side, 3 rounds
    .venv/bin/python bench/store_write.py --quick    # 40 batches per side, 1 round
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

from medtwin.interop import hl7v2
from medtwin.records import Patient, Record
from medtwin.store import RawMessage, Store, schema
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


def run(kind: str, batches: list[list[Item]], db: Path) -> tuple[float, float]:
    """(messages per second of wall time, CPU microseconds per message) writing *batches* with the *kind* path."""
    with Store(f"sqlite:///{db}") as store:
        start, cpu0 = time.perf_counter(), time.process_time()
        for b in batches:
            if kind == "bulk":
                store.write_batch(b)
            else:
                legacy_write_batch(store, b)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        counts = store.counts()
    n = sum(len(b) for b in batches)
    assert counts["raw_inbound"] == n, counts
    assert counts["observations"] == 7 * n, counts
    return n / elapsed, 1e6 * cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 batches per side, 1 round")
    args = parser.parse_args()
    n_batches, rounds = (40, 1) if args.quick else (200, 3)
    print(f"mapping {n_batches * BATCH} messages ...", file=sys.stderr)
    items = messages(n_batches * BATCH, 0)
    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    rates: dict[str, list[float]] = {"legacy": [], "bulk": []}
    cpus: dict[str, list[float]] = {"legacy": [], "bulk": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for kind in ("legacy", "bulk") if r % 2 == 0 else ("bulk", "legacy"):
                rate, cpu = run(kind, batches, Path(tmp) / f"{kind}-{r}.db")
                rates[kind].append(rate)
                cpus[kind].append(cpu)
    med = {k: (statistics.median(rates[k]), statistics.median(cpus[k])) for k in rates}
    print(f"store_write: {n_batches} batches x {BATCH} ORU messages (1 patient + 7 obs + raw), SQLite WAL sync=FULL")
    print(f"python {platform.python_version()}, {platform.machine()}, rounds={rounds} (median)")
    for k, label in (("legacy", "legacy per-message path"), ("bulk", "bulk write_batch")):
        rate, cpu = med[k]
        print(
            f"  {label:<24}: {rate:8,.0f} msg/s wall  {cpu:7.1f} us CPU/msg  (rounds: {[round(x) for x in rates[k]]})"
        )
    print(
        f"  ratio bulk/legacy       : {med['bulk'][0] / med['legacy'][0]:.2f}x msg/s, "
        f"{med['legacy'][1] / med['bulk'][1]:.2f}x less CPU per message"
    )


if __name__ == "__main__":
    main()
