"""Update semantics for patients and encounters: how stored versions combine into the current record.

ADT feeds send the same patient and encounter again and again (A01 admit, A02 transfer, A03 discharge, A08
update, and every ORU repeats the PID). Each message carries what the sender knew at its event time, so the
store keeps every version that told it something new (table ``record_versions``) and the current row is the
fold of those versions:

* **Patient** (arrival order): a field that the newer version leaves empty keeps its stored value (HL7 v2: an
  empty field means "not sent", not "delete"); a non-empty field replaces it. Identifiers are a union (stored
  order first, new ones appended). So an ORU with a sparse PID does not erase an ADT's name.
* **Encounter** (ordered by :func:`encounter_as_of`, the latest time the version mentions, then arrival): the
  start is the earliest start of any version; status, class, end and provenance come from the newest version;
  type, reason and discharge disposition from the newest version that states them; the locations are the
  union of all versions' stays, ordered by start, consecutive stays in
  the same unit and bed merged into one, each stay closed at the next one's start and the last one at the
  encounter's end. Because the order is by content time, not arrival, an A03 that arrives before the A02 it
  follows gives the same encounter as the in-order stream.

Everything here is pure (records in, record out); :mod:`medtwin.store.store` does the SQL.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from medtwin.records import Encounter, EncounterLocation, Identifier, Patient, PatientIdentity

__all__ = ["encounter_as_of", "merge_encounter", "merge_identity", "merge_patient", "same_content"]


# every field but the provenance, read as one tuple (the streaming path compares each message's patient)
_CONTENT = {
    kind: operator.attrgetter(*(f.name for f in dataclasses.fields(kind) if f.name != "provenance"))
    for kind in (Patient, Encounter)
}


def same_content(a: Patient | Encounter, b: Patient | Encounter) -> bool:
    """Whether *a* and *b* are equal apart from their provenance (where they came from)."""
    if type(a) is not type(b):
        return False
    content = _CONTENT[type(a)]
    return bool(content(a) == content(b))


def merge_identity(stored: PatientIdentity | None, new: PatientIdentity | None) -> PatientIdentity | None:
    """*stored* updated by the non-empty fields of *new* (identifiers: union, stored ones first)."""
    if new is None:
        return stored
    if stored is None:
        return new
    known = set(stored.identifiers)
    identifiers: tuple[Identifier, ...] = stored.identifiers + tuple(i for i in new.identifiers if i not in known)
    return PatientIdentity(
        identifiers=identifiers,
        family=new.family if new.family else stored.family,
        given=new.given if new.given else stored.given,
        telecom=new.telecom if new.telecom else stored.telecom,
        address=new.address if new.address else stored.address,
    )


def merge_patient(stored: Patient, new: Patient) -> Patient:
    """*stored* updated by *new* (the newer version): non-empty fields of *new* win, empty ones keep *stored*'s."""
    return Patient(
        patient_id=stored.patient_id,
        gender=new.gender if new.gender is not None else stored.gender,
        birth_date=new.birth_date if new.birth_date is not None else stored.birth_date,
        deceased=new.deceased if new.deceased is not None else stored.deceased,
        identity=merge_identity(stored.identity, new.identity),
        provenance=new.provenance if new.provenance is not None else stored.provenance,
    )


def encounter_as_of(encounter: Encounter) -> datetime:
    """The time a version of *encounter* speaks for: the latest of its start, end and stay boundaries."""
    times = [encounter.start]
    if encounter.end is not None:
        times.append(encounter.end)
    for loc in encounter.locations:
        times.append(loc.start)
        if loc.end is not None:
            times.append(loc.end)
    return max(times)


def _stays(versions: Sequence[Encounter], end: datetime | None) -> tuple[EncounterLocation, ...]:
    seen: dict[tuple[str, str | None, datetime], EncounterLocation] = {}
    for version in versions:
        for loc in version.locations:
            key = (loc.unit, loc.bed, loc.start)
            if key not in seen or (seen[key].end is None and loc.end is not None):
                seen[key] = loc
    ordered = sorted(seen.values(), key=lambda loc: (loc.start, loc.unit, loc.bed or ""))
    merged: list[EncounterLocation] = []
    for loc in ordered:
        if merged and (merged[-1].unit, merged[-1].bed) == (loc.unit, loc.bed):
            last = merged[-1]
            ends = [e for e in (last.end, loc.end) if e is not None]
            merged[-1] = dataclasses.replace(last, end=max(ends) if ends else None)
            continue
        merged.append(loc)
    closed: list[EncounterLocation] = []
    for i, loc in enumerate(merged):
        stay_end: datetime | None
        if i + 1 < len(merged):
            nxt = merged[i + 1].start
            stay_end = nxt if loc.end is None or loc.end > nxt else loc.end
        else:
            stay_end = loc.end if loc.end is not None else end
            if stay_end is not None and end is not None and stay_end > end:
                stay_end = end
            if stay_end is not None and stay_end < loc.start:
                stay_end = loc.start
        closed.append(dataclasses.replace(loc, end=stay_end))
    return tuple(closed)


def merge_encounter(versions: Sequence[Encounter]) -> Encounter:
    """The current encounter from its *versions* in arrival order (see the module docstring for the rules).

    Raises
    ------
    ValueError
        *versions* is empty.
    """
    if not versions:
        raise ValueError("merge_encounter: no versions to merge")
    ordered = sorted(enumerate(versions), key=lambda iv: (encounter_as_of(iv[1]), iv[0]))
    newest = ordered[-1][1]
    start = min(v.start for v in versions)
    end = newest.end
    if end is not None and end < start:
        end = start
    return Encounter(
        encounter_id=newest.encounter_id,
        patient_id=newest.patient_id,
        status=newest.status,
        class_code=newest.class_code,
        start=start,
        end=end,
        locations=_stays([v for _, v in ordered], end),
        type=_latest_known(ordered, "type"),
        reason=_latest_known(ordered, "reason"),
        disposition=_latest_known(ordered, "disposition"),
        provenance=newest.provenance,
    )


def _latest_known(ordered: Sequence[tuple[int, Encounter]], name: str) -> Any:
    """The newest version's value of *name*, or the latest earlier one when the newest left it empty."""
    return next((value for _, v in reversed(ordered) if (value := getattr(v, name)) is not None), None)
