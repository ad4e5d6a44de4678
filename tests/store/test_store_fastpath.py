"""The write path's SQLite fast path, the observation code index (revision 0003) and batched event updates.

The fast path binds values itself instead of through SQLAlchemy (medtwin.store.rows, medtwin.store.batch), so
these tests pin it to the reference: the same stored rows, byte for byte, as a Core insert; the same outcomes
for duplicates; and the same rows from every code query as the predicate used before revision 0003.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.dialects import sqlite

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.records import Coding, Encounter, Event, Observation, Patient, Provenance, Quantity, Record
from medtwin.store import EventNotFoundError, RawMessage, Store, schema
from medtwin.store.migrate import alembic_config
from medtwin.store.rows import TABLES, loinc_code
from medtwin.store.shards import entry_patient, patient_hash

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hl7v2"
LOCAL = "urn:local:lab"
MDC_MAPPED = sorted(codes.MDC_TO_LOINC)[:3]


def _sqlalchemy_time(value: datetime) -> Any:
    dialect = sqlite.dialect()
    processor = schema.observations.c.effective.type.dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None
    return processor(value)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_sqlite_time_text_is_what_the_bind_processor_writes(naive: datetime, offset_min: int) -> None:
    value = naive.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    for same_instant in (value, value.astimezone(UTC)):
        schema._UTC_TEXT.clear()  # formatted, not remembered
        assert schema.sqlite_utc_text(same_instant) == _sqlalchemy_time(value)
    assert schema.sqlite_utc_text(value) == _sqlalchemy_time(value)  # remembered


def test_sqlite_time_text_refuses_naive_times_and_passes_none() -> None:
    schema.sqlite_utc_text(datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="naive datetime"):
        schema.sqlite_utc_text(datetime(2024, 1, 1))  # not taken for the equal-looking aware one
    assert schema.sqlite_utc_text(None) is None


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=10), st.lists(st.sampled_from([codes.HEART_RATE, codes.BMI]), max_size=2))
def test_a_loinc_coded_row_is_found_by_its_own_code(code: str, alt: list[Coding]) -> None:
    """The invariant revision 0003 rests on: for a LOINC primary code, ``loinc_code`` is that code."""
    obs = Observation(patient_id="p", code=Coding(system=codes.LOINC, code=code), effective=T0, alt_codes=tuple(alt))
    assert loinc_code(obs) == code


# -- the fast path stores what a Core insert stores -----------------------------------------------------------
ORU_FIXTURES = (
    "authored_ORU_R01_vitals_loinc_v251.hl7",
    "authored_ORU_R01_vitals_pcd01_mdc_v26.hl7",
    "msfhirconv_LAB-ORU-1.hl7",
)


def _mapped_fixtures() -> list[tuple[Sequence[Record], RawMessage | None]]:
    from medtwin.interop import hl7v2

    items: list[tuple[Sequence[Record], RawMessage | None]] = []
    for name in ORU_FIXTURES:
        text_ = (FIXTURES / name).read_text().replace("\n", "\r").strip("\r")
        message = hl7v2.parse_message(text_)
        mapped = hl7v2.map_message(message)
        raw = RawMessage(
            source_system=message.source_system,
            source_id=f"{name}/{message.control_id}",
            payload=text_,
            content_type="x-application/hl7-v2+er7",
            received=T0 + timedelta(microseconds=len(items)),
        )
        # patients and encounters take the versioned path (SQLAlchemy Core in both cases); the rest is fast-path
        items.append(([r for r in mapped.records if not isinstance(r, Patient | Encounter)], raw))
    return items


observations = st.builds(
    Observation,
    patient_id=st.sampled_from(["p1", "p2"]),
    code=st.builds(
        Coding, system=st.sampled_from([codes.LOINC, codes.MDC, LOCAL]), code=st.text(min_size=1, max_size=6)
    ),
    effective=st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone(timedelta(hours=3)))
    ),
    value=st.none() | st.builds(Quantity, value=st.floats(-1e6, 1e6), unit=st.just("/min")) | st.just("text"),
    status=st.sampled_from(["final", "amended", "entered-in-error"]),
    encounter_id=st.none() | st.just("e1"),
    provenance=st.none() | st.builds(Provenance, source_system=st.just("s"), source_id=st.text(min_size=1, max_size=8)),
)
events = st.builds(
    Event,
    kind=st.just("alert"),
    code=st.just("news2"),
    time=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    message=st.text(max_size=10),
    patient_id=st.none() | st.just("p1"),
    severity=st.none() | st.just("high"),
)


def _dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row of every table, with each value's SQLite storage class (text vs blob vs real)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for table in [t for _, t, _, _ in TABLES] + [schema.raw_inbound]:
            cols = ", ".join(f'"{c.name}", typeof("{c.name}")' for c in table.c)
            out[table.name] = [tuple(r) for r in conn.execute(text(f'SELECT {cols} FROM "{table.name}" ORDER BY 1'))]
    return out


def _core_write(store: Store, items: Sequence[tuple[Sequence[Record], RawMessage | None]]) -> None:
    """The reference: every row through a SQLAlchemy Core ``INSERT ... ON CONFLICT DO NOTHING`` (bind processors)."""
    with store.engine.begin() as conn:
        for records, raw in items:
            if raw is not None:
                conn.execute(
                    sqlite.insert(schema.raw_inbound).on_conflict_do_nothing(),
                    {
                        "source_system": raw.source_system,
                        "source_id": raw.source_id,
                        "content_type": raw.content_type,
                        "received": raw.received,
                        "status": raw.status,
                        "reason": raw.reason,
                        "record_count": len(records),
                        "payload": raw.payload_bytes,
                        "digest": hashlib.sha256(raw.payload_bytes).hexdigest(),
                        "patient_hash": None if (pid := entry_patient(records)) is None else patient_hash(pid),
                    },
                )
            for kind, table, _, row_of in TABLES:
                rows = [row_of(r) for r in records if type(r) is kind]
                if rows:
                    conn.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)


def test_fast_path_rows_equal_core_rows_for_the_hl7_fixtures(tmp_path: Path) -> None:
    items = _mapped_fixtures()
    assert sum(isinstance(r, Observation) for records, _ in items for r in records) >= 8
    # in clear: sealed values differ by their random nonces; the encoding of rows is what is compared here
    # (sealing is tested in tests/security/test_at_rest.py)
    with (
        Store(f"sqlite:///{tmp_path / 'fast.db'}", encryption=False) as fast,
        Store(f"sqlite:///{tmp_path / 'core.db'}", encryption=False) as core,
    ):
        fast.write_batch(items)
        _core_write(core, items)
        assert _dump(fast) == _dump(core)


@settings(max_examples=25, deadline=None)
@given(obs=st.lists(observations, min_size=1, max_size=8, unique_by=lambda o: (o.observation_id, o.provenance)))
def test_fast_path_rows_equal_core_rows(tmp_path_factory: pytest.TempPathFactory, obs: list[Observation]) -> None:
    keys = [o.provenance for o in obs if o.provenance is not None]
    if len(keys) != len(set(keys)):
        return  # provenance duplicates are the subject of the next test
    evs = [Event(kind="alert", code="x", time=o.effective, message="m", patient_id=o.patient_id) for o in obs[:2]]
    items: list[tuple[Sequence[Record], RawMessage | None]] = [(obs, None), (evs, None)]
    d = tmp_path_factory.mktemp("rows")
    with Store(f"sqlite:///{d / 'fast.db'}") as fast, Store(f"sqlite:///{d / 'core.db'}") as core:
        fast.write_batch(items)
        _core_write(core, items)
        assert _dump(fast) == _dump(core)


def _hr(i: int, source_id: str | None = None, observation_id: str | None = None) -> Observation:
    return Observation(
        patient_id="p1",
        code=codes.HEART_RATE,
        effective=T0 + timedelta(minutes=i),
        value=Quantity(value=60.0 + i, unit="/min"),
        observation_id=observation_id or f"hr-{i}",
        provenance=Provenance(source_system="mon", source_id=source_id or f"hr-{i}"),
    )


def _raw(source_id: str) -> RawMessage:
    return RawMessage(source_system="mon", source_id=source_id, payload="MSH|", content_type="x", received=T0)


def test_duplicates_by_id_and_by_provenance_within_and_across_batches(store: Store) -> None:
    store.write([_hr(5)], _raw("M0"))
    first = _hr(1)
    same_id = _hr(2, observation_id="hr-1")  # the id of `first`, another provenance
    same_source = _hr(3, source_id="hr-1")  # the provenance of `first`, another id
    out = store.write_batch(
        [
            ([first, same_id], _raw("M1")),
            ([same_source, _hr(5), _hr(6)], _raw("M2")),
            ([_hr(7)], _raw("M1")),  # a resend within the batch
            ([_hr(8)], _raw("M0")),  # a resend of an earlier batch
        ]
    )
    assert [(r.inserted, r.duplicates, r.raw_duplicate) for r in out] == [
        (1, 1, False),
        (1, 2, False),
        (0, 0, True),
        (0, 0, True),
    ]
    assert out[0].raw_id is not None
    assert out[1].raw_id == out[0].raw_id + 1
    assert [o.observation_id for o in store.observations("p1")] == ["hr-1", "hr-5", "hr-6"]
    log = store.raw_log(limit=10)
    assert [(e.source_id, e.status) for e in reversed(log)] == [
        ("M0", "accepted"),
        ("M1", "accepted"),
        ("M2", "accepted"),
        ("M1", "duplicate"),
        ("M0", "duplicate"),
    ]
    assert log[0].reason == f"resend of accepted raw_id {log[-1].raw_id}"
    assert log[1].reason == f"resend of accepted raw_id {out[0].raw_id}"


def test_rejected_and_unmapped_raws_get_their_own_ids_in_a_batch(store: Store) -> None:
    bad = dataclasses.replace(_raw("B1"), status="rejected", reason="no MSH")
    out = store.write_batch([([], bad), ([_hr(1)], _raw("A1")), ([], dataclasses.replace(bad, source_id="B2"))])
    ids = [r.raw_id or 0 for r in out]
    assert 0 not in ids
    assert ids == sorted(ids)
    assert {e.raw_id: e.status for e in store.raw_log()} == dict(
        zip(ids, ["rejected", "accepted", "rejected"], strict=True)
    )


def test_a_write_after_another_connection_wrote_reports_its_own_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with Store(url) as a, Store(url) as b:
        a.write([_hr(1)], _raw("A"))
        got = b.write([_hr(2), _hr(1)], _raw("B"))
        assert (got.inserted, got.duplicates) == (1, 1)
        assert got.raw_id == a.raw_seen("mon", "B").raw_id  # type: ignore[union-attr]


# -- code queries: same rows as the predicate of revision 0002 ------------------------------------------------
def _codings() -> list[Coding]:
    mapped = [Coding(system=codes.MDC, code=c) for c in MDC_MAPPED]
    return [
        *mapped,
        Coding(system=codes.MDC, code="999999"),  # MDC without a LOINC mapping
        *(codes.MDC_TO_LOINC[c] for c in MDC_MAPPED),
        Coding(system=codes.LOINC, code="0000-0"),
        Coding(system=LOCAL, code="K"),
        Coding(system=LOCAL, code=codes.MDC_TO_LOINC[MDC_MAPPED[0]].code),  # a local code spelled like a LOINC one
    ]


def _old_match(o: Observation, coding: Coding) -> bool:
    exact = o.code.system == coding.system and o.code.code == coding.code
    target = codes.normalise_to_loinc(coding)
    return exact or (target.system == codes.LOINC and loinc_code(o) == target.code)


def test_code_queries_return_the_rows_of_the_previous_predicate(store: Store) -> None:
    cs = _codings()
    loincs = [c for c in cs if c.system == codes.LOINC]
    stored = [
        Observation(
            patient_id=f"p{i % 2}",
            code=code,
            effective=T0 + timedelta(minutes=i // 3),
            value=Quantity(value=float(i), unit="/min"),
            status="entered-in-error" if i % 7 == 3 else "final",
            alt_codes=(loincs[i % len(loincs)],) if i % 4 == 0 and code.system != codes.LOINC else (),
            observation_id=f"o{i:03d}",
        )
        for i, code in enumerate(cs * 6)
    ]
    store.write(stored)
    for pid in ("p0", "p1"):
        mine = [o for o in stored if o.patient_id == pid]
        for coding in cs:
            expected = sorted((o for o in mine if _old_match(o, coding)), key=lambda o: (o.effective, o.observation_id))
            assert store.observations(pid, coding) == expected, coding
            since = T0 + timedelta(minutes=4)
            assert store.observations(pid, coding, since=since) == [o for o in expected if o.effective >= since]
            values = [o for o in expected if o.status != "entered-in-error"]
            latest = store.latest_observations(pid, [coding])
            assert latest == ({coding.code: values[-1]} if values else {}), coding


def test_sqlite_asks_each_kind_of_code_through_its_index(tmp_path: Path) -> None:
    """Dense vital signs through (patient, time, LOINC); a sparse LOINC code (creatinine) through the partial
    per-code index, also for the "latest value" query; a non-LOINC code through the non-LOINC index."""
    creatinine = Coding(system=codes.LOINC, code="2160-0")
    with Store(f"sqlite:///{tmp_path / 'q.db'}") as store, store.engine.connect() as conn:
        t = schema.observations
        for coding, index in (
            (codes.HEART_RATE, "ix_observations_patient_time_loinc"),
            (creatinine, "ix_observations_patient_loinc_time_sparse"),
            (Coding(system=LOCAL, code="K"), "ix_observations_patient_code_time_not_loinc"),
        ):
            for stmt in (
                select(t.c.body).where(t.c.patient_id == "p1", Store._code_match(coding)),
                select(t.c.body)
                .where(t.c.patient_id == "p1", Store._code_match(coding), t.c.effective >= T0)
                .order_by(t.c.effective.desc(), t.c.observation_id.desc())
                .limit(1),
            ):
                sql = str(stmt.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}))
                plan = " ".join(r[-1] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
                assert f"USING INDEX {index} " in plan, plan


def test_dense_code_list_is_the_one_revision_0005_froze() -> None:
    """The query side (schema.DENSE_LOINC) and the partial index on disk (revision 0005) must name the same codes,
    or a query for a code between the two lists would miss rows or the index."""
    from importlib import import_module

    rev = import_module("medtwin.store.migrations.versions.0005_observation_time_index")
    assert frozenset(rev.DENSE_LOINC) == schema.DENSE_LOINC
    assert list(rev.DENSE_LOINC) == sorted(rev.DENSE_LOINC)  # the order the query states them in
    assert {c.code for c in codes.VITAL_SIGNS} <= schema.DENSE_LOINC


# -- revision 0003 ---------------------------------------------------------------------------------------------
def _observation_indexes(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {i["name"] for i in inspect(engine).get_indexes("observations") if i["name"]}
    finally:
        engine.dispose()


def test_revision_0003_replaces_the_code_index_and_keeps_the_rows(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
    rows = [TABLES[3][3](o) for o in (_hr(1), _hr(2))]
    local = Observation(patient_id="p1", code=Coding(system=LOCAL, code="K"), effective=T0, observation_id="k1")
    with engine.begin() as conn:
        conn.execute(schema.observations.insert(), [*rows, TABLES[3][3](local)])
    engine.dispose()
    assert "ix_observations_patient_code_time" in _observation_indexes(store_url)
    with Store(store_url) as store:
        indexes = _observation_indexes(store_url)
        assert "ix_observations_patient_code_time" not in indexes
        assert {"ix_observations_patient_code_time_not_loinc", "ix_observations_patient_time_loinc"} <= indexes
        assert [o.observation_id for o in store.observations("p1", codes.HEART_RATE)] == ["hr-1", "hr-2"]
        assert [o.observation_id for o in store.observations("p1", local.code)] == ["k1"]
    engine = create_engine(store_url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    engine.dispose()
    indexes = _observation_indexes(store_url)
    assert "ix_observations_patient_code_time" in indexes
    assert "ix_observations_patient_code_time_not_loinc" not in indexes


def test_revision_0005_replaces_the_patient_indexes_and_keeps_the_rows(store_url: str) -> None:
    engine = create_engine(store_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0004")
    creatinine = Observation(
        patient_id="p1", code=Coding(system=codes.LOINC, code="2160-0"), effective=T0, observation_id="cr1"
    )
    with engine.begin() as conn:
        conn.execute(schema.observations.insert(), [TABLES[3][3](o) for o in (_hr(1), _hr(2), creatinine)])
    engine.dispose()
    before = _observation_indexes(store_url)
    assert {"ix_observations_patient_loinc_time", "ix_observations_patient_time"} <= before
    with Store(store_url) as store:
        indexes = _observation_indexes(store_url)
        assert not {"ix_observations_patient_loinc_time", "ix_observations_patient_time"} & indexes
        assert {"ix_observations_patient_time_loinc", "ix_observations_patient_loinc_time_sparse"} <= indexes
        assert [o.observation_id for o in store.observations("p1", codes.HEART_RATE)] == ["hr-1", "hr-2"]
        assert [o.observation_id for o in store.observations("p1", creatinine.code)] == ["cr1"]
        assert [o.observation_id for o in store.observations("p1")] == ["cr1", "hr-1", "hr-2"]
        assert store.latest_observations("p1", [creatinine.code])["2160-0"].observation_id == "cr1"
    engine = create_engine(store_url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    engine.dispose()
    assert _observation_indexes(store_url) == before


# -- update_event_statuses -------------------------------------------------------------------------------------
def _alerts(store: Store) -> list[Event]:
    alerts = [
        Event(kind="alert", code="news2", time=T0 + timedelta(minutes=i), message=f"a{i}", event_id=f"a{i}")
        for i in range(4)
    ]
    store.add_events(alerts)
    return alerts


def _status(store: Store) -> dict[str, tuple[str, str | None, bool]]:
    t = schema.events
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.event_id, t.c.status, t.c.status_by, t.c.status_time))
        return {r[0]: (r[1], r[2], r[3] is not None) for r in rows}


def test_update_event_statuses_updates_all_in_the_order_given(store: Store) -> None:
    alerts = _alerts(store)
    got = store.update_event_statuses(["a2", "a0", "a2"], "resolved", by="medtwin.twin")
    assert [e.event_id for e in got] == ["a2", "a0", "a2"]
    assert got[0] == dataclasses.replace(alerts[2], status="resolved")
    assert got[1] == dataclasses.replace(alerts[0], status="resolved")
    assert [e.event_id for e in store.events(status="resolved")] == ["a0", "a2"]
    assert store.events(status="resolved") == [got[1], got[0]]
    assert _status(store) == {
        "a0": ("resolved", "medtwin.twin", True),
        "a1": ("active", None, False),
        "a2": ("resolved", "medtwin.twin", True),
        "a3": ("active", None, False),
    }
    assert store.update_event_statuses([], "acknowledged") == []


def test_update_event_statuses_changes_nothing_when_an_id_is_unknown(store: Store) -> None:
    _alerts(store)
    before = _status(store)
    with pytest.raises(EventNotFoundError, match=r"update_event_statuses: no event with id 'nope', 'gone'") as err:
        store.update_event_statuses(["a1", "nope", "a3", "gone"], "acknowledged", by="nurse")
    assert isinstance(err.value, KeyError)
    assert _status(store) == before
    many = [f"x{i}" for i in range(12)]
    with pytest.raises(EventNotFoundError, match=r"'x8', 'x9' and 2 more"):
        store.update_event_statuses(many, "resolved")


def test_update_event_statuses_validates_like_update_event_status(store: Store) -> None:
    _alerts(store)
    before = _status(store)
    with pytest.raises(ValidationError, match="update_event_statuses: 'closed' is not one of"):
        store.update_event_statuses(["a0"], "closed")
    with pytest.raises(ValidationError, match="expected a sequence of event ids"):
        store.update_event_statuses("a0", "resolved")
    assert _status(store) == before


def test_update_event_statuses_reads_ids_past_one_query(store: Store) -> None:
    ids = [f"e{i:04d}" for i in range(950)]
    store.add_events([Event(kind="alert", code="x", time=T0, message="m", event_id=i) for i in ids])
    got = store.update_event_statuses(ids, "acknowledged", by="n")
    assert [e.event_id for e in got] == ids
    assert {e.status for e in got} == {"acknowledged"}
    assert len(store.events(status="acknowledged")) == 950
