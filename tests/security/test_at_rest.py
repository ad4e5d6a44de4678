"""Encryption at rest: after ingesting the Synthea bundles (FHIR) and the HL7 v2 fixtures through the MLLP listener,
no name, MRN, birth date, address or phone of any patient is in the SQLite file, its WAL, or a PostgreSQL dump;
and everything still reads back (identity, MRN lookup through the blind index, raw payloads, kept resources)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from medtwin.interop.fhir import ingest_paths
from medtwin.interop.hl7v2 import parse_payload
from medtwin.interop.mllp import MllpClient, MllpConfig, MllpServer
from medtwin.store import Store, schema

ROOT = Path(__file__).parent.parent
FHIR_FILES = sorted((ROOT.parent / "src" / "medtwin" / "data" / "samples").glob("*.json"))
HL7_FILES = sorted(p for p in (ROOT / "fixtures" / "hl7v2").glob("*.hl7") if "_ACK_" not in p.name)
_FHIR_TEXT = "".join(p.read_text() for p in FHIR_FILES)


def _components(field: str) -> Iterator[str]:
    for part in re.split(r"[\^~&]", field):
        if part.strip():
            yield part.strip()


def fhir_secrets() -> set[str]:
    """Names, identifiers, birth dates, address lines, postal codes and phones of the bundles' patients."""
    found: set[str] = set()
    for path in FHIR_FILES:
        bundle = orjson.loads(path.read_bytes())
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res["resourceType"] != "Patient":
                continue
            others = orjson.dumps([e for e in bundle["entry"] if e is not entry]).decode()
            for name in res.get("name", []):
                found.update(name.get("given", []))
                found.add(name.get("family", ""))
            found.update(i["value"] for i in res.get("identifier", []))
            if res.get("birthDate", "") not in others:  # a newborn's first visit is dated on the birth day: clinical
                found.add(res.get("birthDate", ""))
            for a in res.get("address", []):
                found.update(a.get("line", []))
                found.add(a.get("postalCode", ""))
            found.update(t["value"] for t in res.get("telecom", []))
    return {s for s in found if s}


def hl7_secrets() -> set[str]:
    """PID-3 (identifiers), PID-5 (names), PID-7 (birth date, also as ISO), PID-11 (address), PID-13 (phone)."""
    found: set[str] = set()
    for path in HL7_FILES:
        try:
            messages = parse_payload(path.read_bytes())
        except Exception:  # the bad batch: its PIDs are read leniently below
            messages = []
        texts = [m.text for m in messages] or [path.read_bytes().decode("latin-1")]
        for text in texts:
            for seg in re.split(r"[\r\n]+", text):
                if not seg.startswith("PID|"):
                    continue
                f = seg.split("|")
                for rep in f[3].split("~") if len(f) > 3 else ():  # PID-3: the ID number (not its authority)
                    if len(rep.split("^")[0]) >= 4:
                        found.add(rep.split("^")[0])
                for i in (5, 11, 13):
                    if len(f) > i:
                        found.update(c for c in _components(f[i]) if len(c) >= 4 or (i == 5 and len(c) >= 3))
                if len(f) > 7 and len(f[7]) >= 8 and f[7][:8].isdigit():
                    found.add(f[7][:8])
                    iso = f"{f[7][:4]}-{f[7][4:6]}-{f[7][6:8]}"
                    # a visit on the birth day (here, or another source's on that day) carries that date legitimately
                    if f[7][:8] not in text.replace(seg, "") and iso not in _FHIR_TEXT:
                        found.add(iso)
    # identifier type/authority codes are not identifiers of a person
    return {s for s in found if s and s not in {"ISO", "USA", "MR", "PI", "NPI", "HOME", "WORK", "PRN"}}


def leaks(data: bytes, secrets: set[str]) -> list[str]:
    """The secrets found in *data* as plaintext holds them, never by chance inside sealed data.

    Plaintext (JSON bodies, HL7 text, pg_dump's COPY lines) delimits every value, so short secrets count only where
    a delimiter surrounds them: a number under 8 digits between quotes, HL7 separators or white space (digits occur
    by chance in timestamps' fractions and in the hex pg_dump writes for sealed bytes); a name under 6 letters also
    beside ``,`` or ``:``; a hex-like value under 16 characters outside hex digits; a word of base64 letters under 12
    characters outside base64 text. Longer secrets count anywhere.
    """
    out = []
    for s in sorted(secrets):
        token = re.escape(s.encode())
        if len(s) < 8 and re.fullmatch(r"[0-9-]+", s):
            pattern = rb"[\s\"^|~&]" + token + rb"[\s\"^|~&]"
        elif len(s) < 6:
            pattern = rb"[\s\"^|~&,:]" + token + rb"[\s\"^|~&,:]"
        elif len(s) < 16 and re.fullmatch(r"[0-9a-fA-F-]+", s):
            pattern = rb"(?<![0-9a-fA-F])" + token + rb"(?![0-9a-fA-F])"
        elif len(s) < 12 and re.fullmatch(r"[A-Za-z0-9+/=]+", s):
            pattern = rb"(?<![A-Za-z0-9+/=])" + token + rb"(?![A-Za-z0-9+/=])"
        else:
            pattern = token
        if re.search(pattern, data):
            out.append(s)
    return out


def send_hl7(store: Store) -> dict[str, Any]:
    """Every HL7 fixture through the MLLP listener, plus a conflicting resend and a dead letter."""

    async def main() -> dict[str, Any]:
        server = MllpServer(store, MllpConfig(port=0))
        port = await server.start()
        acks = []
        try:
            client = await MllpClient.connect("127.0.0.1", port, timeout_s=30)
            for path in HL7_FILES:
                data = path.read_bytes()
                try:
                    frames = [m.text.encode() for m in parse_payload(data)]
                except Exception:  # the bad batch: sent as it is (a dead letter)
                    frames = [data]
                for f in frames if len(frames) > 1 else [data]:  # a file of several messages: one frame each
                    if b"|NE|NE|" in f:  # MSH-15/16 "never" (a batch of such): no ACK; stored before later ACKs
                        await client.send_frame(f)
                    else:
                        acks.append(await client.send(f))
            first = HL7_FILES[0].read_bytes()
            acks.append(await client.send(first.replace(b"ADT^A01", b"ADT^A08", 1)))  # same MSH-10: conflict
            acks.append(await client.send(b"MSH|^~\\&|X|Y|Z|W|2024|||BAD|P|2.5\rPID|1||SECRETMRN9^^^X^MR||Garbled"))
            await client.close()
        finally:
            await server.close()
        return {"acks": acks, "stats": server.stats}

    return asyncio.run(main())


def _ingest_everything(store: Store) -> dict[str, Any]:
    report = ingest_paths(store, FHIR_FILES, source_system="synthea")
    assert report.ok, report.as_dict()
    return send_hl7(store)


SECRETS = fhir_secrets() | hl7_secrets() | {"SECRETMRN9", "Garbled"}


def test_the_secrets_are_real() -> None:
    """The test data holds what the test looks for (an empty set would pass anything)."""
    assert len(fhir_secrets()) >= 20
    assert len(hl7_secrets()) >= 20
    plain = b"".join(p.read_bytes() for p in [*FHIR_FILES, *HL7_FILES])
    assert len(leaks(plain, SECRETS)) >= 0.9 * len(SECRETS)  # the rest: ISO forms of HL7 birth dates, made-up ones


def test_sqlite_file_and_wal_hold_no_identifier(tmp_path: Path) -> None:
    db = tmp_path / "at-rest.db"
    store = Store(f"sqlite:///{db}")
    result = _ingest_everything(store)
    assert result["stats"].conflicts >= 1
    assert result["stats"].rejected >= 1
    wal = Path(str(db) + "-wal")
    assert wal.exists()
    assert wal.stat().st_size > 0
    assert leaks(wal.read_bytes(), SECRETS) == []
    assert leaks(db.read_bytes(), SECRETS) == []
    # ... and everything reads back through the store
    patients = store.patients()
    names = {p.identity.family for p in patients if p.identity}
    assert {"Conn", "EVERYWOMAN"} <= {n for n in names if n}
    liz = next(p for p in patients if p.identity and p.identity.family == "Conn")
    assert liz.birth_date is not None
    mrn = next(i.value for i in liz.identity.identifiers if i.type_code == "MR")  # type: ignore[union-attr]
    assert store.find_patients(mrn) == [liz.patient_id]
    assert store.kept_resources(liz.patient_id), "kept FHIR resources read back"
    assert all(b'"Patient/' + liz.patient_id.encode() in r.encode() or "Patient/" not in r
               for r in store.kept_resources(liz.patient_id)[:50])  # fmt: skip
    rejected = store.raw_log("rejected")
    assert any(b"SECRETMRN9" in (e.payload or b"") for e in rejected)
    conflicts = store.raw_log(relation="conflict-of")
    assert conflicts
    assert all(e.payload and b"MSH|" in e.payload for e in conflicts)
    store.close()
    assert leaks(db.read_bytes(), SECRETS) == []


def test_every_table_issue_13_keeps_is_sealed_or_identifier_free(tmp_path: Path) -> None:
    """Walk every column of every table: identity, versions, kept FHIR, raw payloads, digests."""
    store = Store(f"sqlite:///{tmp_path / 'walk.db'}")
    _ingest_everything(store)
    seen_tables = set()
    with store.engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            seen_tables.add(table.name)
            for row in conn.execute(table.select()):
                for column, value in zip(table.columns, row, strict=True):
                    data = value if isinstance(value, bytes) else str(value).encode()
                    found = leaks(data, SECRETS)
                    assert found == [], f"{table.name}.{column.name} holds {found}"
        r = schema.raw_inbound
        digests = [d for (d,) in conn.execute(r.select().with_only_columns(r.c.digest)) if d]
    assert {"raw_inbound", "fhir_resources", "record_versions", "patient_identity_versions"} <= seen_tables
    import hashlib

    plain = {hashlib.sha256(p.read_bytes()).hexdigest() for p in [*FHIR_FILES, *HL7_FILES]}
    assert digests
    assert not (set(digests) & plain), "raw digests are keyed, not plain SHA-256"
    store.close()


@pytest.mark.postgres
def test_postgresql_dump_holds_no_identifier(pg_schema: tuple[str, str, str]) -> None:
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    url, name, dsn = pg_schema
    store = Store(url)
    _ingest_everything(store)
    assert any(p.identity and p.identity.family == "Conn" for p in store.patients())
    store.close()
    dump = subprocess.run(
        ["pg_dump", "--schema", name, "--data-only", dsn], capture_output=True, timeout=120, check=True
    ).stdout
    assert len(dump) > 10_000
    assert leaks(dump, SECRETS) == []
