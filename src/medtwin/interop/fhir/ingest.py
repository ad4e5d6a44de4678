"""Load FHIR R4 files into a :class:`~medtwin.store.Store`: bundles, single resources and bulk NDJSON.

Each JSON file is one unit of work: its bytes go to the raw inbound log and its records are written in the same
transaction; a bundle with any invalid entry writes nothing of itself (it is logged as rejected, with every
problem found) and the next file goes on. NDJSON files are streamed in chunks of lines (memory stays flat for
any file size); an invalid line is rejected on its own. A file, or chunk, already accepted (same SHA-256) is
skipped as a duplicate, and records are idempotent on (source system, ``Type/id``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from medtwin.crypto import Keyring
from medtwin.interop.fhir.errors import FhirInputError
from medtwin.interop.fhir.payload import ParsedPayload, input_errors, parse_payload
from medtwin.records import Record
from medtwin.store import FhirResource, PatientLinks, RawMessage, Store

__all__ = [
    "DocumentResult",
    "FhirLimits",
    "FileReport",
    "IngestReport",
    "ParsedPayload",
    "fhir_files",
    "ingest_document",
    "ingest_file",
    "ingest_paths",
    "parse_payload",
]

FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"
_NDJSON_SUFFIXES = (".ndjson", ".jsonl")
_SAMPLE = 4096  # bytes of a refused over-limit file kept in the raw log (not the whole file)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FhirLimits:
    """Size limits of FHIR input (each refused with a clear error, the rest of the run goes on).

    *max_file_bytes*: a JSON file (Bundle or resource) is read whole, so it is bounded; NDJSON files are streamed
    line by line, and each line is bounded by *max_line_bytes*. *max_string_chars*: any JSON string in a resource
    (a 200 MB string field took 1.78 GB of memory and 630 MB of database before these limits).
    """

    max_file_bytes: int = 64 << 20
    max_line_bytes: int = 16 << 20
    max_string_chars: int = 8 << 20


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


def _messages(exc: FhirInputError) -> list[str]:
    return [str(e) for e in input_errors(exc)]


def _parse_ndjson_line(
    line: bytes,
    *,
    file: str,
    line_number: int,
    source_system: str,
    limits: FhirLimits,
    patient_id_for: Callable[[str], str] | None = None,
) -> ParsedPayload:
    """One NDJSON line: a resource, or a whole Bundle (some exporters write one a line), all or nothing."""
    if len(line) > limits.max_line_bytes:
        raise FhirInputError(f"a line of {len(line)} bytes, over the limit of {limits.max_line_bytes}", file=file,
                             line=line_number)  # fmt: skip
    obj = _loads(line, file=file, line=line_number)
    # a Bundle on a line keeps its rules: urn:uuid references resolve within it, one invalid entry rejects it all
    return parse_payload(
        obj, file=file, source_system=source_system, max_string=limits.max_string_chars, patient_id_for=patient_id_for
    )


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


def _keyed_file_digest(path: Path, keyring: Keyring) -> str:
    """The keyed digest of a file's bytes (HMAC-SHA-256, as the store keys payload digests): a plain SHA-256 in the
    raw log's key would let whoever reads the database confirm a guessed file."""
    h = hmac.new(keyring.subkey("content-digest"), digestmod=hashlib.sha256)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(slots=True)
class _Pending:
    """One JSON file, parsed, waiting for the group commit."""

    report: FileReport
    items: list[Record | FhirResource | PatientLinks]
    raw: RawMessage


def _file_raw(data: bytes, source_system: str, keyring: Keyring) -> RawMessage:
    """The raw-log entry of a JSON file's bytes, keyed by their keyed digest (``hmac:...``; ``sha256:...`` before
    issue 15)."""
    return RawMessage(
        source_system=source_system,
        source_id=f"hmac:{keyring.digest(data)}",
        payload=data,
        content_type=FHIR_JSON,
        received=_now(),
    )


def _refused_file(
    path: Path, report: FileReport, source_system: str, reason: str, data: bytes, keyring: Keyring
) -> _Pending:
    """A file logged as rejected with *reason* (its first 4 KiB when it was refused for its size)."""
    report.errors.append(reason)
    report.status = "rejected"
    return _Pending(report, [], _with(_file_raw(data, source_system, keyring), status="rejected", reason=reason))


def _prepare_json(store: Store, path: Path, report: FileReport, source_system: str, limits: FhirLimits) -> _Pending:
    size = path.stat().st_size
    report.size_bytes = size
    if size > limits.max_file_bytes:
        with path.open("rb") as fh:
            sample = fh.read(_SAMPLE)
        reason = (
            f"{path}: {size} bytes, over the limit of {limits.max_file_bytes} for one JSON file (medtwin ingest "
            f"--max-file-mb; bulk data belongs in NDJSON, which is streamed); its first {len(sample)} bytes are kept"
        )
        return _refused_file(path, report, source_system, reason, sample, store.keyring)
    data = path.read_bytes()
    raw = _file_raw(data, source_system, store.keyring)
    seen = store.raw_seen(raw.source_system, raw.source_id, statuses=("accepted", "unmapped"))
    if seen is not None:
        report.status = "duplicate"
        reason = f"{path.name}: same content already logged as {seen.status} (raw_id {seen.raw_id})"
        return _Pending(report, [], _with(raw, payload=b"", status="duplicate", reason=reason))
    try:
        parsed = parse_payload(
            _loads(data, file=str(path)),
            file=str(path),
            source_system=source_system,
            max_string=limits.max_string_chars,
            patient_id_for=store.keyring.pseudonym.fhir,
        )
    except FhirInputError as exc:
        report.errors.extend(_messages(exc))
        report.status = "rejected"
        return _Pending(report, [], _with(raw, status="rejected", reason="\n".join(report.errors)))
    report.resources = parsed.resources
    report.unmapped = parsed.unmapped
    report.warnings = parsed.warnings
    note = _unmapped_note(parsed.unmapped)
    if not parsed.records and not parsed.kept and parsed.unmapped:
        report.status = "unmapped"
        return _Pending(report, [], _with(raw, status="unmapped", reason=note))
    return _Pending(report, parsed.items, _with(raw, reason=note))


def _commit(store: Store, pending: list[_Pending], on_file: Callable[[FileReport], None] | None) -> None:
    if not pending:
        return
    results = store.write_batch([(p.items, p.raw) for p in pending])
    for p, result in zip(pending, results, strict=True):
        p.report.inserted, p.report.duplicates = result.inserted + result.updated, result.duplicates
        if result.raw_duplicate:
            p.report.status = "duplicate"
        if on_file is not None:
            on_file(p.report)
    pending.clear()


def _with(raw: RawMessage, **changes: Any) -> RawMessage:
    return dataclasses.replace(raw, **changes)


def _unmapped_note(unmapped: Counter[str]) -> str | None:
    if not unmapped:
        return None
    return "not mapped to records (kept whole as FHIR resources): " + ", ".join(
        f"{k}={v}" for k, v in sorted(unmapped.items())
    )


def _ndjson_chunks(path: Path, chunk_lines: int, max_line: int) -> Iterator[list[tuple[int, bytes]]]:
    """Chunks of (line number, line); a line over *max_line* bytes is read no further than that (the caller
    refuses it: its length says so) and the rest of it is skipped, so memory stays bounded."""
    chunk: list[tuple[int, bytes]] = []
    with path.open("rb") as fh:
        number = 0
        while True:
            line = fh.readline(max_line + 1)
            if not line:
                break
            number += 1
            if len(line) > max_line and not line.endswith(b"\n"):
                while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
            if not line.strip():
                continue
            chunk.append((number, line))
            if len(chunk) >= chunk_lines:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _ingest_ndjson(
    store: Store, path: Path, report: FileReport, source_system: str, chunk_lines: int, limits: FhirLimits
) -> None:
    report.size_bytes = path.stat().st_size
    digest = _keyed_file_digest(path, store.keyring)
    statuses: set[str] = set()
    for chunk in _ndjson_chunks(path, chunk_lines, limits.max_line_bytes):
        first, last = chunk[0][0], chunk[-1][0]
        raw = RawMessage(
            source_system=source_system,
            source_id=f"hmac:{digest}#lines={first}-{last}",
            payload=b"",
            content_type=FHIR_NDJSON,
            received=_now(),
        )
        # A chunk already accepted is not written again, but its lines are still validated, so that a bad line
        # is reported (and the file is "partial") on every run, as a rejected JSON file is.
        seen = store.raw_seen(raw.source_system, raw.source_id) is not None
        items: list[Record | FhirResource | PatientLinks] = []
        good: list[bytes] = []
        unmapped: Counter[str] = Counter()
        warnings: list[str] = []
        resources = 0
        for number, line in chunk:
            try:
                parsed = _parse_ndjson_line(
                    line,
                    file=str(path),
                    line_number=number,
                    source_system=source_system,
                    limits=limits,
                    patient_id_for=store.keyring.pseudonym.fhir,
                )
            except FhirInputError as exc:
                errors = [e.located(file=str(path), line=number) for e in input_errors(exc)]
                report.errors.extend(str(e) for e in errors)
                bad = _with(raw, source_id=f"hmac:{digest}#line={number}", payload=line[:_SAMPLE])
                store.reject(bad, "\n".join(str(e) for e in errors))
                resources += 1
                continue
            good.append(line)
            resources += parsed.resources
            warnings.extend(parsed.warnings)
            unmapped.update(parsed.unmapped)
            items.extend(parsed.items)
        if seen:
            store.log_raw(raw, "duplicate", f"{path.name} lines {first}-{last}: already accepted")
            statuses.add("duplicate")
            continue
        report.resources += resources
        report.warnings.extend(warnings)
        report.unmapped.update(unmapped)
        payload = b"".join(good)
        chunk_raw = _with(raw, payload=payload, reason=_unmapped_note(unmapped))
        result = store.write(items, chunk_raw)
        report.inserted += result.inserted + result.updated
        report.duplicates += result.duplicates
        statuses.add("duplicate" if result.raw_duplicate else "ok")
    if report.errors:
        report.status = "partial"
    elif statuses == {"duplicate"}:
        report.status = "duplicate"


def ingest_file(
    store: Store,
    path: str | Path,
    *,
    source_system: str = "fhir",
    chunk_lines: int = 2000,
    limits: FhirLimits = FhirLimits(),
) -> FileReport:
    """Ingest one FHIR file (bundle, resource or NDJSON) into *store*; problems go in the report, not raised."""
    report = ingest_paths(store, [path], source_system=source_system, chunk_lines=chunk_lines, limits=limits)
    return report.files[0]


def ingest_paths(
    store: Store,
    paths: Iterable[str | Path],
    *,
    source_system: str = "fhir",
    on_file: Callable[[FileReport], None] | None = None,
    chunk_lines: int = 2000,
    group_bytes: int = 16 << 20,
    limits: FhirLimits = FhirLimits(),
) -> IngestReport:
    """Ingest every FHIR file under *paths* (files or folders); *on_file* is called as each file is committed.

    JSON files are validated one by one and committed in groups of up to *group_bytes* (group commit: one disk
    sync per group instead of one per file); a file that fails validation (or is over *limits*) is logged as
    rejected and does not affect the others. NDJSON files are streamed in chunks of *chunk_lines* lines, one
    transaction per chunk. Whatever goes wrong with one file (even a bug) is reported for that file: the files
    before it are committed and the ones after it are read.
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
                _ingest_ndjson(store, path, file_report, source_system, chunk_lines, limits)
                if on_file is not None:
                    on_file(file_report)
                continue
            pending.append(_prepare_json(store, path, file_report, source_system, limits))
            pending_bytes += file_report.size_bytes
        except OSError as exc:
            file_report.errors.append(f"{path}: cannot read ({exc.strerror or exc})")
            file_report.status = "rejected"
            if on_file is not None:
                on_file(file_report)
            continue
        except Exception as exc:  # a bug must not cost the other files: this one is refused and logged
            log.exception("ingesting %s failed", path)
            reason = f"{path}: cannot be ingested ({type(exc).__name__}: {exc}); nothing of it was stored"
            if ndjson:
                file_report.errors.append(reason)
                file_report.status = "rejected"
                if on_file is not None:
                    on_file(file_report)
                continue
            pending.append(
                _refused_file(path, file_report, source_system, reason, path.read_bytes()[:_SAMPLE], store.keyring)
            )
        if pending_bytes >= group_bytes:
            _commit(store, pending, on_file)
            pending_bytes = 0
    _commit(store, pending, on_file)
    return report


@dataclass(slots=True)
class DocumentResult:
    """What ingesting one document received over the network did: the *report* (as for a file), each problem
    (*problems*: located errors with their element paths; empty when it was stored) and the parsed records."""

    report: FileReport
    problems: list[FhirInputError] = field(default_factory=list)
    parsed: ParsedPayload | None = None
    raw_id: int | None = None


def ingest_document(
    store: Store,
    data: bytes,
    *,
    name: str = "<request>",
    source_system: str = "fhir-api",
    limits: FhirLimits = FhirLimits(),
    check: Callable[[ParsedPayload], None] | None = None,
) -> DocumentResult:
    """Ingest one FHIR JSON document (a Bundle or a resource) given as bytes, as :func:`ingest_paths` ingests a
    file: the same validation, the same raw inbound log (a refused document is logged as rejected with its
    reasons), the same idempotency (the same bytes again are a duplicate).

    *check* is called with the parsed document before anything is written (the API server's authorization); an
    exception it raises propagates and nothing is stored.
    """
    report = FileReport(path=name, kind="json", size_bytes=len(data))
    if len(data) > limits.max_file_bytes:
        reason = f"{name}: {len(data)} bytes, over the limit of {limits.max_file_bytes} for one JSON document"
        problem = FhirInputError(f"{len(data)} bytes, over the limit of {limits.max_file_bytes}", file=name)
        pending = _refused_file(Path(name), report, source_system, reason, data[:_SAMPLE], store.keyring)
        raw_id = store.reject(pending.raw, reason)
        return DocumentResult(report, [problem], None, raw_id)
    raw = _file_raw(data, source_system, store.keyring)
    try:
        parsed = parse_payload(
            _loads(data, file=name),
            file=name,
            source_system=source_system,
            max_string=limits.max_string_chars,
            patient_id_for=store.keyring.pseudonym.fhir,
        )  # fmt: skip
    except FhirInputError as exc:
        problems = input_errors(exc)
        report.errors.extend(str(e) for e in problems)
        report.status = "rejected"
        raw_id = store.reject(raw, "\n".join(report.errors))
        return DocumentResult(report, problems, None, raw_id)
    if check is not None:
        check(parsed)
    report.resources = parsed.resources
    report.unmapped = parsed.unmapped
    report.warnings = parsed.warnings
    note = _unmapped_note(parsed.unmapped)
    if not parsed.records and not parsed.kept and parsed.unmapped:
        report.status = "unmapped"
        return DocumentResult(report, [], parsed, store.log_raw(raw, "unmapped", note))
    result = store.write(parsed.items, _with(raw, reason=note))
    report.inserted, report.duplicates = result.inserted + result.updated, result.duplicates
    if result.raw_duplicate:
        report.status = "duplicate"
    return DocumentResult(report, [], parsed, result.raw_id or result.related_raw_id)
