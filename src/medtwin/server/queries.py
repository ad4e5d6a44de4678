"""Reads the API needs beyond :class:`~medtwin.store.Store`'s methods: a record by id, an observation search page.

They read the store's tables through its engine (the same rows :class:`~medtwin.store.Store` reads; patient
identity is only ever read through the store, which owns its protection). FHIR search dates follow R4's prefixes
(``ge``, ``gt``, ``le``, ``lt``, ``eq``) over the value's implicit range: ``2024-03`` is all of March.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, func, or_, select

from medtwin.codes import LOINC
from medtwin.errors import ValidationError
from medtwin.records import Condition, Encounter, Event, MedicationAdministration, MedicationRequest, Observation
from medtwin.store import Store, codec, schema

__all__ = ["DateBound", "ObservationQuery", "parse_date_param", "record_by_id", "search_observations"]

_TABLES: dict[str, tuple[Table, str, type[Any]]] = {
    "Observation": (schema.observations, "observation_id", Observation),
    "Encounter": (schema.encounters, "encounter_id", Encounter),
    "Condition": (schema.conditions, "condition_id", Condition),
    "MedicationRequest": (schema.medication_requests, "request_id", MedicationRequest),
    "MedicationAdministration": (schema.medication_administrations, "administration_id", MedicationAdministration),
    "Event": (schema.events, "event_id", Event),
}


def record_by_id(store: Store, kind: str, record_id: str) -> Any:
    """The record of *kind* (``Observation``, ``Encounter``, ..., ``Event``) with id *record_id*, or None."""
    table, column, cls = _TABLES[kind]
    with store.engine.connect() as conn:
        body = conn.execute(select(table.c.body).where(table.c[column] == record_id)).scalar()
    return None if body is None else codec.decode(cls, body)


_DATE = re.compile(
    r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(\d{4})(?:-(\d{2})(?:-(\d{2})(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


@dataclass(frozen=True, slots=True)
class DateBound:
    """One ``date`` search value: *prefix* and the implicit range [*start*, *end*) of its value."""

    prefix: str
    start: datetime
    end: datetime


def parse_date_param(text: str) -> DateBound:
    """A FHIR date search value (``ge2024-03-01``, ``lt2024``, ``2024-03-01T08:00:00Z``).

    Raises
    ------
    ValidationError
        Not a date, or a prefix medtwin does not support (``ne``, ``sa``, ``eb``, ``ap``).
    """
    m = _DATE.match(text)
    if m is None:
        raise ValidationError(
            f"date={text!r}: expected [prefix]YYYY[-MM[-DD[Thh:mm:ss+zz:zz]]], prefix one of eq, gt, lt, ge, le"
        )
    prefix = m.group(1) or "eq"
    if prefix not in ("eq", "gt", "lt", "ge", "le"):
        raise ValidationError(f"date={text!r}: the prefix {prefix!r} is not supported (use eq, gt, lt, ge, le)")
    year, month, day, clock = m.group(2), m.group(3), m.group(4), m.group(5)
    try:
        if clock is not None:
            if not (clock.endswith("Z") or "+" in clock or clock.count("-") > 0):
                raise ValidationError(f"date={text!r}: a time needs a time zone (Z or +hh:mm)")
            start = datetime.fromisoformat(f"{year}-{month}-{day}{clock.replace('Z', '+00:00')}").astimezone(UTC)
            end = start + timedelta(seconds=1)
        elif day is not None:
            start = datetime(int(year), int(month), int(day), tzinfo=UTC)
            end = start + timedelta(days=1)
        elif month is not None:
            start = datetime(int(year), int(month), 1, tzinfo=UTC)
            end = datetime(int(year) + (int(month) == 12), int(month) % 12 + 1, 1, tzinfo=UTC)
        else:
            start = datetime(int(year), 1, 1, tzinfo=UTC)
            end = datetime(int(year) + 1, 1, 1, tzinfo=UTC)
    except ValueError as exc:
        raise ValidationError(f"date={text!r}: not a valid date ({exc})") from None
    return DateBound(prefix, start, end)


def date_condition(column: Any, bound: DateBound) -> ColumnElement[bool]:
    """The SQL condition of one date search value on *column*."""
    if bound.prefix == "ge":
        return column >= bound.start  # type: ignore[no-any-return]
    if bound.prefix == "gt":
        return column >= bound.end  # type: ignore[no-any-return]
    if bound.prefix == "le":
        return column < bound.end  # type: ignore[no-any-return]
    if bound.prefix == "lt":
        return column < bound.start  # type: ignore[no-any-return]
    return and_(column >= bound.start, column < bound.end)


def in_date_range(value: datetime | None, bounds: list[DateBound]) -> bool:
    """True when *value* satisfies every date search value (None never does, unless there are none)."""
    if not bounds:
        return True
    if value is None:
        return False
    for b in bounds:
        ok = {
            "ge": value >= b.start,
            "gt": value >= b.end,
            "le": value < b.end,
            "lt": value < b.start,
            "eq": b.start <= value < b.end,
        }[b.prefix]
        if not ok:
            return False
    return True


@dataclass(frozen=True, slots=True)
class ObservationQuery:
    """An Observation search: *patient_id*, codes (``(system or None, code)``, any of them), date bounds, order,
    page."""

    patient_id: str
    codes: tuple[tuple[str | None, str], ...] = ()
    dates: tuple[DateBound, ...] = ()
    newest_first: bool = False
    count: int = 50
    offset: int = 0


def _code_condition(system: str | None, code: str) -> ColumnElement[bool]:
    t = schema.observations
    if system is None:
        return or_(t.c.code == code, t.c.loinc_code == code)
    exact = and_(t.c.code_system == system, t.c.code == code)
    return or_(exact, t.c.loinc_code == code) if system == LOINC else exact


def search_observations(store: Store, query: ObservationQuery) -> tuple[int, list[Observation]]:
    """(total matches, the page of observations) for *query*, in time order (newest first when asked)."""
    t = schema.observations
    where: list[ColumnElement[bool]] = [t.c.patient_id == query.patient_id]
    if query.codes:
        where.append(or_(*(_code_condition(s, c) for s, c in query.codes)))
    where.extend(date_condition(t.c.effective, b) for b in query.dates)
    order = (
        (t.c.effective.desc(), t.c.observation_id.desc()) if query.newest_first else (t.c.effective, t.c.observation_id)
    )
    page = select(t.c.body).where(*where).order_by(*order).limit(query.count).offset(query.offset)
    with store.engine.connect() as conn:
        bodies = list(conn.execute(page).scalars())
        if query.offset == 0 and len(bodies) < query.count:
            total = len(bodies)
        else:
            total = int(conn.execute(select(func.count()).select_from(t).where(*where)).scalar_one())
    return total, [codec.decode(Observation, b) for b in bodies]
