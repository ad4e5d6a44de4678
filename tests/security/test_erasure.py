"""Erasure: records, twin state, raw payloads and the data key go; the audit chain keeps the pseudonymous id and
still verifies; other patients are untouched."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from medtwin.codes import HEART_RATE
from medtwin.interop.hl7v2 import map_message, parse_message
from medtwin.records import Observation, Patient, Provenance, Quantity
from medtwin.security.audit import AuditTrail
from medtwin.security.erasure import PatientNotFoundError, erase_patient
from medtwin.store import RawMessage, Store, schema

ADT = ("MSH|^~\\&|APP|FAC|||20240101120000||ADT^A01|{cid}|P|2.5\r"
       "PID|1||{mrn}^^^HOSP^MR||{family}^Ann||19700101|F|||9 Elm St^^Town^MA^02139\r"
       "PV1|1|I|ICU^1^A||||||||||||||||V{cid}")  # fmt: skip


def _load(store: Store, cid: str, mrn: str, family: str) -> str:
    text = ADT.format(cid=cid, mrn=mrn, family=family)
    mapped = map_message(parse_message(text), patient_id_for=store.keyring.pseudonym)
    pid = next(r.patient_id for r in mapped.records if isinstance(r, Patient))
    obs = Observation(
        patient_id=pid,
        code=HEART_RATE,
        effective=datetime(2024, 1, 1, tzinfo=UTC),
        value=Quantity(value=90, unit="/min"),
        provenance=Provenance(source_system="m", source_id=cid),
    )
    raw = RawMessage(source_system="APP@FAC", source_id=cid, payload=text, content_type="x-application/hl7-v2+er7",
                     received=datetime.now(UTC))  # fmt: skip
    store.write([*mapped.records, obs], raw)
    store.save_snapshot(f"patient:{pid}", b"state", datetime.now(UTC))
    return pid


def _rows(store: Store, pid: str) -> dict[str, int]:
    out = {}
    with store.engine.connect() as conn:
        for t in (schema.patients, schema.patient_identity, schema.observations, schema.encounters,
                  schema.identity_index, schema.patient_keys):  # fmt: skip
            col = t.c.key_ref if t is schema.patient_keys else t.c.patient_id
            out[t.name] = conn.execute(select(func.count()).select_from(t).where(col == pid)).scalar_one()
        r = schema.raw_inbound
        out["raw_inbound"] = conn.execute(select(func.count()).select_from(r).where(r.c.key_ref == pid)).scalar_one()
        s = schema.twin_snapshots
        out["twin_snapshots"] = conn.execute(
            select(func.count()).select_from(s).where(s.c.twin_id == f"patient:{pid}")
        ).scalar_one()
    return out


def test_erase_removes_everything_and_destroys_the_key(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    trail = AuditTrail(store, tmp_path / "audit.key")
    gone = _load(store, "C1", "MRN-111", "Erased")
    kept = _load(store, "C2", "MRN-222", "Kept")
    with store.engine.connect() as conn:  # a sealed payload of the erased patient, as a backup would hold it
        sealed = conn.execute(
            select(schema.raw_inbound.c.payload).where(schema.raw_inbound.c.key_ref == gone)
        ).scalar_one()
    assert all(v >= 1 for v in _rows(store, gone).values())
    report = erase_patient(store, gone, actor="admin-1", reason="GDPR Art. 17 request", trail=trail)
    assert report.key_destroyed
    assert report.removed["observations"] == 1
    assert report.removed["raw_inbound"] == 1
    assert all(v == 0 for v in _rows(store, gone).values()), _rows(store, gone)
    assert store.patient(gone) is None
    assert store.find_patients("MRN-111") == []
    assert store.keys.open(bytes(sealed)) is None  # crypto-shredded: a backup's copy no longer opens
    # the other patient is untouched
    assert store.patient(kept).identity.family == "Kept"  # type: ignore[union-attr]
    assert all(v >= 1 for v in _rows(store, kept).values())
    # the audit chain names the pseudonymous id only, and still verifies
    [rec] = trail.records(action="erase")
    assert rec.event.patient_id == gone
    assert rec.event.resource == f"Patient/{gone}"
    assert "Erased" not in str(rec)
    assert "MRN-111" not in str(rec)
    assert trail.verify().ok
    with pytest.raises(PatientNotFoundError):
        erase_patient(store, gone, actor="admin-1", trail=trail)
    trail.close()
    store.close()


def test_erase_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from medtwin.cli import app

    db = tmp_path / "cli.db"
    store = Store(f"sqlite:///{db}")
    pid = _load(store, "C9", "MRN-999", "Cli")
    store.close()
    result = CliRunner().invoke(app, ["patient", "erase", pid, "--db", f"sqlite:///{db}", "--yes", "--json"])
    assert result.exit_code == 0, result.output
    assert '"key_destroyed": true' in result.output
    result = CliRunner().invoke(app, ["audit", "verify", "--db", f"sqlite:///{db}"])
    assert result.exit_code == 0, result.output
    store = Store(f"sqlite:///{db}")
    assert store.patient(pid) is None
    store.close()
