"""Reading the raw inbound log as a stream (accepted rows after a position) and consumers' saved cursors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from medtwin.errors import ValidationError
from medtwin.store import RawMessage, Store, accepted_after, last_raw_id, load_cursor, save_cursor

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def raw(source_id: str, *, status: str = "accepted", content_type: str = "x-application/hl7-v2+er7") -> RawMessage:
    return RawMessage(
        source_system="MON@WARD",
        source_id=source_id,
        payload=f"MSH|{source_id}".encode(),
        content_type=content_type,
        received=T0,
        status=status,
        reason=None if status == "accepted" else "why",
    )


def test_accepted_after_reads_only_accepted_rows_in_log_order(store: Store) -> None:
    assert last_raw_id(store) == 0
    assert accepted_after(store, 0) == []
    store.write([], raw("A"))
    store.reject(raw("BAD#1", status="rejected"), "HL7 100: no MSH")
    store.write([], raw("A"))  # a resend: logged as a duplicate row, not accepted again
    store.write([], raw("F", content_type="application/fhir+json"))
    store.write([], raw("B"))
    everything = accepted_after(store, 0)
    assert [m.payload for m in everything] == [b"MSH|A", b"MSH|F", b"MSH|B"]
    assert [m.raw_id for m in everything] == sorted(m.raw_id for m in everything)
    assert all(m.received == T0 for m in everything)
    hl7 = accepted_after(store, 0, content_type="x-application/hl7-v2+er7")
    assert [m.payload for m in hl7] == [b"MSH|A", b"MSH|B"]
    assert [m.payload for m in accepted_after(store, hl7[0].raw_id, content_type=hl7[0].content_type)] == [b"MSH|B"]
    assert [m.payload for m in accepted_after(store, 0, limit=1)] == [b"MSH|A"]
    assert last_raw_id(store) >= everything[-1].raw_id
    with pytest.raises(ValidationError, match="limit"):
        accepted_after(store, 0, limit=0)


def test_cursor_is_saved_per_consumer_and_never_moves_back(store: Store) -> None:
    assert load_cursor(store, "twin-runtime") is None
    save_cursor(store, "twin-runtime", 5)
    save_cursor(store, "other", 2)
    assert load_cursor(store, "twin-runtime") == 5
    save_cursor(store, "twin-runtime", 9)
    save_cursor(store, "twin-runtime", 7)  # a late save of an older position does not move it back
    assert load_cursor(store, "twin-runtime") == 9
    assert load_cursor(store, "other") == 2
    with pytest.raises(ValidationError, match="non-empty"):
        save_cursor(store, "", 1)


def test_cursor_survives_reopening(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    with Store(url) as s:
        save_cursor(s, "twin-runtime", 42)
    with Store(url) as s:
        assert load_cursor(s, "twin-runtime") == 42


def test_sqlite_page_cache_is_set_per_store(tmp_path: object) -> None:
    from sqlalchemy import text

    with Store(f"sqlite:///{tmp_path}/c.db", cache_mib=8) as small, small.engine.connect() as conn:
        assert conn.execute(text("PRAGMA cache_size")).scalar() == -8 * 1024
    with Store(f"sqlite:///{tmp_path}/c.db") as default, default.engine.connect() as conn:
        assert conn.execute(text("PRAGMA cache_size")).scalar() == -64 * 1024
    with pytest.raises(ValidationError, match="cache_mib"):
        Store(f"sqlite:///{tmp_path}/c.db", cache_mib=0)
