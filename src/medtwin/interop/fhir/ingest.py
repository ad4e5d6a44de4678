"""Load FHIR R4 files into a :class:`~medtwin.store.Store`: bundles, single resources and bulk NDJSON.

Each JSON file is one unit of work: its bytes go to the raw inbound log and its records are written in the same
transaction; a bundle with any invalid entry writes nothing of itself (it is logged as rejected, with every
problem found) and the next file goes on. NDJSON files are streamed in chunks of lines (memory stays flat for
any file size); an invalid line is rejected on its own. A file, or chunk, already accepted (same SHA-256) is
skipped as a duplicate, and records are idempotent on (source system, ``Type/id``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from medtwin.interop.fhir.errors import FhirInputError
from medtwin.interop.fhir.reader import Unmapped, map_resource
from medtwin.records import Record
from medtwin.store import RawMessage, Store

__all__ = [
    "FileReport",
    "IngestReport",
    "ParsedPayload",
    "fhir_files",
    "ingest_file",
    "ingest_paths",
    "parse_payload",
]

FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"
_NDJSON_SUFFIXES = (".ndjson", ".jsonl")
_MAX_ERRORS = 20


@dataclass(slots=True)
class ParsedPayload:
    """The records of one bundle or resource, the unmapped resources by type, and non-fatal warnings."""

    records: list[Record] = field(default_factory=list)
    unmapped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    resources: int = 0


@dataclass(slots=True)
class FileReport:
    """What ingesting one file did."""

    path: str
    kind: str
    status: str = "ok"
    size_bytes: int = 0
    resources: int = 0
    inserted: int = 0
    duplicates: int = 0
    unmapped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing in the file was rejected."""
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "path": self.path,
            "kind": self.kind,
            "status": self.status,
            "size_bytes": self.size_bytes,
            "resources": self.resources,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "unmapped": dict(sorted(self.unmapped.items())),
            "errors": self.errors,
            "warnings": self.warnings,
        }


@dataclass(slots=True)
class IngestReport:
    """What ingesting a set of files did."""

    files: list[FileReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every file went in without a rejection."""
        return all(f.ok for f in self.files)

    def total(self, name: str) -> int:
        """Sum of the integer field *name* over the files."""
        return sum(int(getattr(f, name)) for f in self.files)

    @property
    def unmapped(self) -> Counter[str]:
        """Unmapped resources by type, over all files."""
        out: Counter[str] = Counter()
        for f in self.files:
            out.update(f.unmapped)
        return out

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "ok": self.ok,
            "files": [f.as_dict() for f in self.files],
            "totals": {
                "files": len(self.files),
                "rejected_files": sum(1 for f in self.files if not f.ok),
                "resources": self.total("resources"),
                "inserted": self.total("inserted"),
                "duplicates": self.total("duplicates"),
                "unmapped": dict(sorted(self.unmapped.items())),
            },
        }


def _now() -> datetime:
    return datetime.now(UTC)


_BOM = b"\xef\xbb\xbf"


def _loads(data: bytes, *, file: str, line: int | None = None) -> Any:
    try:
        # RFC 8259 8.1: a parser may ignore a leading UTF-8 byte order mark (Windows tools write one)
        return orjson.loads(data[3:] if data.startswith(_BOM) else data)
    except orjson.JSONDecodeError as exc:
        raise FhirInputError(f"invalid JSON ({exc})", file=file, line=line) from None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return f"a JSON {kinds.get(type(value), type(value).__name__)}"


def parse_payload(obj: Any, *, file: str = "<input>", source_system: str = "fhir") -> ParsedPayload:
    """Map a parsed FHIR JSON document (a Bundle or a single resource) to records, all or nothing.

    Raises
    ------
    FhirInputError
        Listing every invalid entry (up to 20), each with file, entry index, resource and field.
    """
    out = ParsedPayload()
    if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
        entries = obj.get("entry", [])
        if not isinstance(entries, list):
            # `"entry": {}` or null is not an empty bundle: FHIR JSON has no nulls, and an object is a malformed
            # producer, which must be told rather than silently given an empty success
            raise FhirInputError(
                f"must be a list of entries, got {_json_kind(entries)}", file=file, field="Bundle.entry"
            )
        refs: dict[str, tuple[str, str]] = {}
        medications: dict[str, Any] = {}
        fallback: list[str | None] = []
        for entry in entries:
            res = entry.get("resource") if isinstance(entry, dict) else None
            full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
            rid: str | None = None
            if isinstance(res, dict):
                rid = res.get("id") or (full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1] if full_url else None)
                rtype = res.get("resourceType")
                if isinstance(rtype, str) and rid:
                    keys = [f"{rtype}/{rid}", *([full_url] if full_url else [])]
                    for key in keys:
                        refs[key] = (rtype, rid)
                        if rtype == "Medication":
                            medications[key] = res
            fallback.append(rid)
        errors: list[FhirInputError] = []
        first_seen: dict[str, tuple[int, Any]] = {}
        for i, entry in enumerate(entries):
            res = entry.get("resource") if isinstance(entry, dict) else None
            if res is None:
                out.unmapped["(entry without resource)"] += 1
                continue
            key = f"{res.get('resourceType')}/{fallback[i]}" if isinstance(res, dict) and fallback[i] else ""
            if key and key in first_seen and first_seen[key][1] != res:
                # records are unique on Type/id: the first copy is stored, so say that this one is not
                where = f"{file}: entry {i} ({key})"
                out.warnings.append(
                    f"{where}: same {key} as entry {first_seen[key][0]} with different content; "
                    f"entry {first_seen[key][0]} is kept"
                )
            first_seen.setdefault(key, (i, res))
            out.resources += 1
            try:
                item = map_resource(
                    res,
                    source_system=source_system,
                    refs=refs,
                    medications=medications,
                    warnings=out.warnings,
                    fallback_id=fallback[i],
                )
            except FhirInputError as exc:
                errors.append(exc.located(file=file, entry=i))
                if len(errors) >= _MAX_ERRORS:
                    break
                continue
            if isinstance(item, Unmapped):
                out.unmapped[item.label] += 1
            else:
                out.records.append(item)
        if errors:
            raise errors[0] if len(errors) == 1 else _ManyInputError(errors)
        return out
    out.resources = 1
    try:
        item = map_resource(obj, source_system=source_system, warnings=out.warnings)
    except FhirInputError as exc:
        raise exc.located(file=file) from None
    if isinstance(item, Unmapped):
        out.unmapped[item.label] += 1
    else:
        out.records.append(item)
    return out


class _ManyInputError(FhirInputError):
    """Several invalid entries of one bundle."""

    def __init__(self, errors: Sequence[FhirInputError]) -> None:
        self.errors = list(errors)
        first = errors[0]
        super().__init__(
            f"{first.problem} (and {len(errors) - 1} more problem(s))",
            file=first.file,
            entry=first.entry,
            resource=first.resource,
            field=first.field,
        )


def _errors(exc: FhirInputError) -> list[FhirInputError]:
    return list(exc.errors) if isinstance(exc, _ManyInputError) else [exc]


def _messages(exc: FhirInputError) -> list[str]:
    return [str(e) for e in _errors(exc)]


def _parse_ndjson_line(line: bytes, *, file: str, line_number: int, source_system: str) -> ParsedPayload:
    """One NDJSON line: a resource, or a whole Bundle (some exporters write one a line), all or nothing."""
    obj = _loads(line, file=file, line=line_number)
    if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
        # the bundle's own rules apply to the line: urn:uuid references resolve within it, and any invalid
        # entry rejects every entry of it
        return parse_payload(obj, file=file, source_system=source_system)
    out = ParsedPayload(resources=1)
    item = map_resource(obj, source_system=source_system, warnings=out.warnings)
    if isinstance(item, Unmapped):
        out.unmapped[item.label] += 1
    else:
        out.records.append(item)
    return out


def fhir_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to ingest: the given files, and ``*.json`` / ``*.ndjson`` / ``*.jsonl`` under given folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in (".json", *_NDJSON_SUFFIXES))
            )
        elif p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return found


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(slots=True)
class _Pending:
    """One JSON file, parsed, waiting for the group commit."""

    report: FileReport
    records: list[Record]
    raw: RawMessage


def _prepare_json(store: Store, path: Path, report: FileReport, source_system: str) -> _Pending:
    data = path.read_bytes()
    report.size_bytes = len(data)
    raw = RawMessage(
        source_system=source_system,
        source_id=f"sha256:{hashlib.sha256(data).hexdigest()}",
        payload=data,
        content_type=FHIR_JSON,
        received=_now(),
    )
    seen = store.raw_seen(raw.source_system, raw.source_id, statuses=("accepted", "unmapped"))
    if seen is not None:
        report.status = "duplicate"
        reason = f"{path.name}: same content already logged as {seen.status} (raw_id {seen.raw_id})"
        return _Pending(report, [], _with(raw, payload=b"", status="duplicate", reason=reason))
    try:
        parsed = parse_payload(_loads(data, file=str(path)), file=str(path), source_system=source_system)
    except FhirInputError as exc:
        report.errors.extend(_messages(exc))
        report.status = "rejected"
        return _Pending(report, [], _with(raw, status="rejected", reason="\n".join(report.errors)))
    report.resources = parsed.resources
    report.unmapped = parsed.unmapped
    report.warnings = parsed.warnings
    note = _unmapped_note(parsed.unmapped)
    if not parsed.records and parsed.unmapped:
        report.status = "unmapped"
        return _Pending(report, [], _with(raw, status="unmapped", reason=note))
    return _Pending(report, parsed.records, _with(raw, reason=note))


def _commit(store: Store, pending: list[_Pending], on_file: Callable[[FileReport], None] | None) -> None:
    if not pending:
        return
    results = store.write_batch([(p.records, p.raw) for p in pending])
    for p, result in zip(pending, results, strict=True):
        p.report.inserted, p.report.duplicates = result.inserted, result.duplicates
        if result.raw_duplicate:
            p.report.status = "duplicate"
        if on_file is not None:
            on_file(p.report)
    pending.clear()


def _with(raw: RawMessage, **changes: Any) -> RawMessage:
    return RawMessage(**{**_fields(raw), **changes})


def _fields(raw: RawMessage) -> dict[str, Any]:
    return {
        "source_system": raw.source_system,
        "source_id": raw.source_id,
        "payload": raw.payload,
        "content_type": raw.content_type,
        "received": raw.received,
        "status": raw.status,
        "reason": raw.reason,
    }


def _unmapped_note(unmapped: Counter[str]) -> str | None:
    if not unmapped:
        return None
    return "unmapped (kept here, not turned into records): " + ", ".join(
        f"{k}={v}" for k, v in sorted(unmapped.items())
    )


def _ndjson_chunks(path: Path, chunk_lines: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            chunk.append((number, line))
            if len(chunk) >= chunk_lines:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _ingest_ndjson(store: Store, path: Path, report: FileReport, source_system: str, chunk_lines: int) -> None:
    report.size_bytes = path.stat().st_size
    digest = _sha256_file(path)
    statuses: set[str] = set()
    for chunk in _ndjson_chunks(path, chunk_lines):
        first, last = chunk[0][0], chunk[-1][0]
        raw = RawMessage(
            source_system=source_system,
            source_id=f"sha256:{digest}#lines={first}-{last}",
            payload=b"",
            content_type=FHIR_NDJSON,
            received=_now(),
        )
        # A chunk already accepted is not written again, but its lines are still validated, so that a bad line
        # is reported (and the file is "partial") on every run, as a rejected JSON file is.
        seen = store.raw_seen(raw.source_system, raw.source_id) is not None
        records: list[Record] = []
        good: list[bytes] = []
        unmapped: Counter[str] = Counter()
        warnings: list[str] = []
        resources = 0
        for number, line in chunk:
            try:
                parsed = _parse_ndjson_line(line, file=str(path), line_number=number, source_system=source_system)
            except FhirInputError as exc:
                errors = [e.located(file=str(path), line=number) for e in _errors(exc)]
                report.errors.extend(str(e) for e in errors)
                bad = _with(raw, source_id=f"sha256:{digest}#line={number}", payload=line)
                store.reject(bad, "\n".join(str(e) for e in errors))
                resources += 1
                continue
            good.append(line)
            resources += parsed.resources
            warnings.extend(parsed.warnings)
            unmapped.update(parsed.unmapped)
            records.extend(parsed.records)
        if seen:
            store.log_raw(raw, "duplicate", f"{path.name} lines {first}-{last}: already accepted")
            statuses.add("duplicate")
            continue
        report.resources += resources
        report.warnings.extend(warnings)
        report.unmapped.update(unmapped)
        payload = b"".join(good)
        chunk_raw = _with(raw, payload=payload, reason=_unmapped_note(unmapped))
        result = store.write(records, chunk_raw)
        report.inserted += result.inserted
        report.duplicates += result.duplicates
        statuses.add("duplicate" if result.raw_duplicate else "ok")
    if report.errors:
        report.status = "partial"
    elif statuses == {"duplicate"}:
        report.status = "duplicate"


def ingest_file(store: Store, path: str | Path, *, source_system: str = "fhir", chunk_lines: int = 2000) -> FileReport:
    """Ingest one FHIR file (bundle, resource or NDJSON) into *store*; problems go in the report, not raised."""
    report = ingest_paths(store, [path], source_system=source_system, chunk_lines=chunk_lines)
    return report.files[0]


def ingest_paths(
    store: Store,
    paths: Iterable[str | Path],
    *,
    source_system: str = "fhir",
    on_file: Callable[[FileReport], None] | None = None,
    chunk_lines: int = 2000,
    group_bytes: int = 16 << 20,
) -> IngestReport:
    """Ingest every FHIR file under *paths* (files or folders); *on_file* is called as each file is committed.

    JSON files are validated one by one and committed in groups of up to *group_bytes* (group commit: one disk
    sync per group instead of one per file); a file that fails validation is logged as rejected and does not
    affect the others. NDJSON files are streamed in chunks of *chunk_lines* lines, one transaction per chunk.
    """
    report = IngestReport()
    pending: list[_Pending] = []
    pending_bytes = 0
    for path in fhir_files(paths):
        ndjson = path.suffix.lower() in _NDJSON_SUFFIXES
        file_report = FileReport(path=str(path), kind="ndjson" if ndjson else "json")
        report.files.append(file_report)
        try:
            if ndjson:
                _commit(store, pending, on_file)
                pending_bytes = 0
                _ingest_ndjson(store, path, file_report, source_system, chunk_lines)
                if on_file is not None:
                    on_file(file_report)
                continue
            pending.append(_prepare_json(store, path, file_report, source_system))
            pending_bytes += file_report.size_bytes
        except OSError as exc:
            file_report.errors.append(f"{path}: cannot read ({exc.strerror or exc})")
            file_report.status = "rejected"
            if on_file is not None:
                on_file(file_report)
            continue
        if pending_bytes >= group_bytes:
            _commit(store, pending, on_file)
            pending_bytes = 0
    _commit(store, pending, on_file)
    return report
