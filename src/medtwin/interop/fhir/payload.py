"""One FHIR document (a Bundle or a single resource, parsed JSON) to what the store keeps: records, and every other
valid resource whole.

Every resource is first checked against R4's structure (:mod:`medtwin.interop.fhir.r4_structure`); a bundle with
any structurally invalid entry is refused whole (FHIR's transaction semantics), listing each problem with its
element path. A valid resource of a type medtwin maps (Patient, Observation, ...) becomes a record; any other valid
resource, and a valid one that lacks what medtwin needs (a not-done Observation without a time, a unit medtwin
cannot convert...), is kept as FHIR JSON by type and id in its patient's compartment (:class:`~medtwin.store.
FhirResource`), with a warning saying why it was not mapped. Nothing valid is dropped.

Normalisation of kept resources (documented in docs/fhir.md): a reference that resolves inside the bundle
(``urn:uuid:...``, an absolute URL of an entry) is rewritten to the ``Type/id`` of its target, so that the resource
still means the same outside the bundle it came in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from medtwin.interop.fhir.errors import FhirInputError
from medtwin.interop.fhir.r4_structure import is_resource_type, validate_bundle_shell, validate_resource
from medtwin.interop.fhir.reader import KNOWN_R4_TYPES, MAPPED_TYPES, Unmapped, map_resource
from medtwin.records import Provenance, Record
from medtwin.store import FhirResource, PatientLinks

__all__ = ["COMPARTMENT_ELEMENTS", "ParsedPayload", "input_errors", "parse_payload"]

_MAX_ERRORS = 20
# Reference elements that put a resource in a patient's compartment (R4 CompartmentDefinition "patient": the
# subject / patient / beneficiary search parameters; Provenance by its target), in the order they are tried.
COMPARTMENT_ELEMENTS = ("subject", "patient", "beneficiary")


@dataclass(slots=True)
class ParsedPayload:
    """The records of one bundle or resource, the resources kept whole (by type in ``unmapped``: not mapped to
    records), the links from patients to resources outside their compartment, and non-fatal warnings."""

    records: list[Record] = field(default_factory=list)
    kept: list[FhirResource] = field(default_factory=list)
    links: list[PatientLinks] = field(default_factory=list)
    unmapped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    resources: int = 0

    @property
    def items(self) -> list[Record | FhirResource | PatientLinks]:
        """Everything to store, in one write."""
        return [*self.records, *self.kept, *self.links]


class _ManyInputError(FhirInputError):
    """Several problems of one document."""

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


def input_errors(exc: FhirInputError) -> list[FhirInputError]:
    """Every problem an error stands for (one, or each of a :class:`_ManyInputError`)."""
    return list(exc.errors) if isinstance(exc, _ManyInputError) else [exc]


def _raise(errors: list[FhirInputError]) -> None:
    if errors:
        raise errors[0] if len(errors) == 1 else _ManyInputError(errors)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return f"a JSON {kinds.get(type(value), type(value).__name__)}"


@dataclass(slots=True)
class _Entry:
    index: int | None
    resource: dict[str, Any]
    rtype: str
    rid: str | None
    references: list[dict[str, Any]]


def _resolve(reference: Any, refs: Mapping[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(type, id) a Reference's ``reference`` names: through the bundle's fullUrl map, or as ``[base/]Type/id``."""
    if not isinstance(reference, str) or not reference or reference.startswith("#"):
        return None
    found = refs.get(reference)
    if found is not None:
        return found
    if reference.startswith("urn:"):
        return None
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not is_resource_type(parts[-2]):
        return None
    return parts[-2], parts[-1]


def _compartment(entry: _Entry, refs: Mapping[str, tuple[str, str]]) -> str | None:
    """The patient whose compartment holds the resource (None: none)."""
    res = entry.resource
    if entry.rtype == "Patient":
        return entry.rid
    names = ("target",) if entry.rtype == "Provenance" else COMPARTMENT_ELEMENTS
    for name in names:
        value = res.get(name)
        for ref in value if isinstance(value, list) else (value,):
            if isinstance(ref, dict):
                target = _resolve(ref.get("reference"), refs)
                if target is not None and target[0] == "Patient":
                    return target[1]
    return None


def parse_payload(
    obj: Any,
    *,
    file: str = "<input>",
    source_system: str = "fhir",
    max_string: int | None = None,
    patient_id_for: Callable[[str], str] | None = None,
) -> ParsedPayload:
    """Map a parsed FHIR JSON document (a Bundle or a single resource), all or nothing for its structure.

    *max_string*: a JSON string longer than this many characters is an error (a size limit; None: none).
    *patient_id_for*: FHIR Patient id -> medtwin patient id (the store's keyed pseudonym,
    ``store.keyring.pseudonym.fhir``): records, compartments and the Patient references of kept resources use it.

    Raises
    ------
    FhirInputError
        Listing every structural problem found (up to 20), each with file, entry index, resource and element path.
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
        _raise(
            [
                FhirInputError(e.problem, file=file, field=e.path)
                for e in validate_bundle_shell(obj, max_string=max_string)
            ]
        )
        return _parse_bundle(obj, entries, out, file, source_system, max_string, patient_id_for)
    rtype = obj.get("resourceType") if isinstance(obj, dict) else None
    if isinstance(rtype, str) and rtype not in KNOWN_R4_TYPES:
        raise FhirInputError(f"unknown resourceType {rtype!r}", file=file, resource=f"{rtype}/{obj.get('id')}",
                             field="resourceType")  # fmt: skip
    problems, references = validate_resource(obj, max_string=max_string)
    rid = obj.get("id") if isinstance(obj, dict) else None
    where = f"{rtype}/{rid}" if rid else str(rtype)
    _raise([FhirInputError(p.problem, file=file, resource=where, field=p.path) for p in problems])
    out.resources = 1
    entry = _Entry(None, obj, str(rtype), rid, references)
    links: dict[str, dict[tuple[str, str], None]] = {}
    _keep_or_map(entry, {}, {}, out, file, source_system, {}, links, patient_id_for)
    out.links = [PatientLinks(patient_id=p, references=tuple(targets)) for p, targets in links.items()]
    return out


def _parse_bundle(
    bundle: dict[str, Any],
    entries: list[Any],
    out: ParsedPayload,
    file: str,
    source_system: str,
    max_string: int | None,
    patient_id_for: Callable[[str], str] | None = None,
) -> ParsedPayload:
    refs: dict[str, tuple[str, str]] = {}
    medications: dict[str, Any] = {}
    errors: list[FhirInputError] = []
    parsed: list[_Entry] = []
    for i, entry in enumerate(entries):
        res = entry.get("resource")
        if res is None:
            out.unmapped["(entry without resource)"] += 1
            continue
        full_url = entry.get("fullUrl")
        rtype = res.get("resourceType")
        rid = res.get("id") or (full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1] if full_url else None)
        where = f"{rtype}/{rid}" if rid else str(rtype)
        problems, references = validate_resource(res, max_string=max_string)
        if problems:
            errors.extend(FhirInputError(p.problem, file=file, entry=i, resource=where, field=p.path) for p in problems)
            if len(errors) >= _MAX_ERRORS:
                break
            continue
        if rid:
            for key in (f"{rtype}/{rid}", *([full_url] if full_url else [])):
                refs[key] = (rtype, rid)
                if rtype == "Medication":
                    medications[key] = res
        parsed.append(_Entry(i, res, rtype, rid, references))
    _raise(errors[:_MAX_ERRORS])
    first_seen: dict[str, tuple[int | None, Any]] = {}
    compartments = {(e.rtype, e.rid): _compartment(e, refs) for e in parsed}
    links: dict[str, dict[tuple[str, str], None]] = {}
    for entry in parsed:
        key = f"{entry.rtype}/{entry.rid}" if entry.rid else ""
        if key and key in first_seen and first_seen[key][1] != entry.resource:
            # records are unique on Type/id: the first copy is stored, so say that this one is not
            out.warnings.append(
                f"{file}: entry {entry.index} ({key}): same {key} as entry {first_seen[key][0]} with different "
                f"content; entry {first_seen[key][0]} is kept"
            )
        first_seen.setdefault(key, (entry.index, entry.resource))
        out.resources += 1
        _keep_or_map(entry, refs, medications, out, file, source_system, compartments, links, patient_id_for)
    out.links = [PatientLinks(patient_id=p, references=tuple(targets)) for p, targets in links.items()]
    return out


def _keep_or_map(
    entry: _Entry,
    refs: Mapping[str, tuple[str, str]],
    medications: Mapping[str, Any],
    out: ParsedPayload,
    file: str,
    source_system: str,
    compartments: Mapping[tuple[str, str | None], str | None],
    links: dict[str, dict[tuple[str, str], None]],
    patient_id_for: Callable[[str], str] | None = None,
) -> None:
    """Map one valid resource to a record, or keep it whole; note the patient's links to resources outside it."""
    patient = compartments.get((entry.rtype, entry.rid)) if compartments else _compartment(entry, refs)
    if patient is not None and patient_id_for is not None:
        patient = patient_id_for(patient)
    if patient is not None:
        outside = _outside(entry, refs, compartments)
        if outside:
            links.setdefault(patient, {}).update(dict.fromkeys(outside))
    where = f"{file}: " + (f"entry {entry.index} " if entry.index is not None else "") + f"({entry.rtype}/{entry.rid})"
    why = ""
    if entry.rtype in MAPPED_TYPES:
        try:
            item = map_resource(
                entry.resource,
                source_system=source_system,
                refs=refs,
                medications=medications,
                warnings=out.warnings,
                fallback_id=entry.rid,
                patient_id_for=patient_id_for,
            )
        except FhirInputError as exc:  # valid R4, but not what medtwin needs: keep it, say why
            item, why = Unmapped(entry.rtype), exc.problem if exc.field is None else f"{exc.field}: {exc.problem}"
        if not isinstance(item, Unmapped):
            out.records.append(item)
            return
        label = item.label
    else:
        label = entry.rtype
    if not entry.rid:
        raise FhirInputError("missing id (and no fullUrl to take it from)", file=file, entry=entry.index,
                             resource=entry.rtype, field=f"{entry.rtype}.id")  # fmt: skip
    for reference in entry.references:  # normalisation: references inside the bundle become Type/id
        target = refs.get(reference.get("reference", ""))
        if target is None and patient_id_for is not None:
            target = _resolve(reference.get("reference"), refs)
        if target is not None:
            tid = patient_id_for(target[1]) if patient_id_for is not None and target[0] == "Patient" else target[1]
            reference["reference"] = f"{target[0]}/{tid}"
            if target[0] == "Patient" and patient_id_for is not None:
                reference.pop("display", None)  # Synthea writes the patient's name there
    out.unmapped[label] += 1
    if why:
        out.warnings.append(f"{where}: kept as FHIR JSON, not mapped to a record: {why}")
    rid = entry.rid
    if entry.rtype == "Patient" and patient_id_for is not None:  # a Patient that could not be mapped
        rid = patient_id_for(rid)
        entry.resource["id"] = rid
    out.kept.append(
        FhirResource(
            resource_type=entry.rtype,
            resource_id=rid,
            body=orjson.dumps(entry.resource).decode(),
            patient_id=patient,
            provenance=Provenance(source_system=source_system, source_id=f"{entry.rtype}/{rid}"),
        )
    )


def _outside(
    entry: _Entry, refs: Mapping[str, tuple[str, str]], compartments: Mapping[tuple[str, str | None], str | None]
) -> tuple[tuple[str, str], ...]:
    """The (type, id) the resource refers to that are outside any patient's compartment as far as this document
    tells: resources of the bundle that are in none, and resources of other types than Patient not in it."""
    found: dict[tuple[str, str], None] = {}
    for reference in entry.references:
        ref = reference.get("reference")
        target = refs.get(ref) if type(ref) is str else None
        if target is None:
            target = _resolve(ref, refs)
        if target is None or target[0] == "Patient":
            continue
        if target in compartments and compartments[target] is not None:
            continue
        found[target] = None
    return tuple(found)
