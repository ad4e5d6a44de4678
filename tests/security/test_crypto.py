"""Keys: the keyring file (0600, refused when it is not the database's), sealed values, keyed ids, rotation,
the one-time protection of rows an older release stored in clear."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select, update

from medtwin.crypto import (
    DataKeys,
    KeyringError,
    PseudonymKey,
    default_key_path,
    generate_keyring,
    keyring_from_env,
    load_keyring,
    open_keyring,
)
from medtwin.interop.hl7v2 import map_message, parse_message
from medtwin.records import Identifier, Patient, PatientIdentity
from medtwin.security.audit import AuditTrail
from medtwin.security.rotation import rotate_master_key
from medtwin.store import Store, StoreConfigError, schema
from medtwin.store.legacy import legacy_patient_id

PID = "MSH|^~\\&|APP|FAC|||20240101120000||ADT^A01|C1|P|2.5\rPID|1||MRN-000123^^^HOSP^MR||Doe^Janet||19500102|F"


def _patient(pid: str = "pt-1", mrn: str = "MRN-1") -> Patient:
    return Patient(
        patient_id=pid,
        gender="female",
        birth_date=date(1950, 1, 2),
        identity=PatientIdentity(identifiers=(Identifier(system="HOSP", value=mrn, type_code="MR"),), family="Doe",
                                 given=("Janet",), telecom=("555-0100",), address="1 Main St, Springfield 01101"),
    )  # fmt: skip


def test_a_new_database_gets_a_key_file_beside_it_mode_0600_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="medtwin.crypto"):
        Store(f"sqlite:///{tmp_path / 'a.db'}").close()
    key_file = tmp_path / "a.db.keys"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "secret store" in caplog.text
    ring = load_keyring(key_file)
    assert len(ring.current[1]) == 32
    assert len(ring.secret) == 32


def test_a_server_database_key_goes_to_a_private_config_folder_created_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDTWIN_MASTER_KEY", raising=False)
    monkeypatch.delenv("MEDTWIN_KEY_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "fresh-home"))  # a fresh account: no ~/.config at all
    url = "postgresql+psycopg://medtwin@127.0.0.1:5432/test"
    path = default_key_path(url)
    assert path is not None
    assert not path.parent.exists()
    ring = open_keyring(url)
    assert ring.path == path
    assert ring.generated
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring(path).secret == ring.secret


def test_another_key_file_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    Store(url).close()
    with pytest.raises(StoreConfigError, match="does not belong to this database"):
        Store(url, keyring=generate_keyring())


def test_a_read_only_command_does_not_make_a_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    Store(url).close()
    (tmp_path / "a.db.keys").unlink()
    with pytest.raises(StoreConfigError, match="no key file"):
        Store(url, create=False)


def test_keyring_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("MEDTWIN_MASTER_KEY", key)
    store = Store(f"sqlite:///{tmp_path / 'env.db'}")
    store.write([_patient()])
    assert not (tmp_path / "env.db.keys").exists()
    assert store.keyring.secret == keyring_from_env(key).secret
    store.close()
    assert Store(f"sqlite:///{tmp_path / 'env.db'}").patient("pt-1").identity.family == "Doe"  # type: ignore[union-attr]
    with pytest.raises(KeyringError, match="32 bytes"):
        keyring_from_env(base64.b64encode(b"short").decode())


def test_sealed_values_open_only_under_their_key() -> None:
    ring = generate_keyring()
    store: dict[str, tuple[str, bytes]] = {}
    keys = DataKeys(ring, lambda refs: {r: store[r] for r in refs if r in store})
    aead = keys.keys_for(["pt-a"], create=store.update)["pt-a"]
    sealed = DataKeys.seal_text_with(aead, "pt-a", "Janet Doe")
    assert "Janet" not in sealed
    assert keys.open_text(sealed) == "Janet Doe"
    blob = DataKeys.seal_with(aead, "pt-a", b"PID|1||MRN")
    assert keys.open(blob) == b"PID|1||MRN"
    assert DataKeys.seal_with(aead, "pt-a", b"x") != DataKeys.seal_with(aead, "pt-a", b"x")  # fresh nonce
    moved = blob.replace(b"pt-a", b"pt-b", 1)
    store["pt-b"] = store["pt-a"]
    with pytest.raises(KeyringError):  # the key ref is associated data: a value moved to another patient fails
        keys.open(moved)
    keys.forget()
    del store["pt-a"]
    assert keys.open(blob) is None  # key destroyed: unreadable


def test_patient_ids_are_keyed(tmp_path: Path) -> None:
    """The issue's attack: candidate MRNs hashed without the key do not find the stored ids."""
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    mapped = map_message(parse_message(PID), patient_id_for=store.keyring.pseudonym)
    patient = next(r for r in mapped.records if isinstance(r, Patient))
    assert patient.patient_id == store.keyring.pseudonym("HOSP", "MRN-000123")
    assert patient.patient_id != legacy_patient_id("HOSP", "MRN-000123")
    other = PseudonymKey(os.urandom(32))
    assert other("HOSP", "MRN-000123") != patient.patient_id
    candidates = {legacy_patient_id("HOSP", f"MRN-{n:06d}") for n in range(1000)}
    assert patient.patient_id not in candidates
    store.close()


def test_identity_is_sealed_and_mrn_found_by_blind_index(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'b.db'}")
    store.write([_patient()])
    with store.engine.connect() as conn:
        body, birth = conn.execute(select(schema.patients.c.body, schema.patients.c.birth_date)).one()
        ident = conn.execute(select(schema.patient_identity.c.body)).scalar_one()
    assert body.startswith("mte1.")
    assert ident.startswith("mte1.")
    assert birth is None
    assert "1950" not in body
    assert "Doe" not in ident
    assert store.patient("pt-1") == _patient()
    assert store.find_patients("MRN-1") == ["pt-1"]
    assert store.find_patients("MRN-1", system="HOSP") == ["pt-1"]
    assert store.find_patients("MRN-1", system="OTHER") == []
    store.close()


def test_rotation_rewraps_without_reencrypting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(url)
    store.write([_patient("pt-1"), _patient("pt-2", "MRN-2")])
    with store.engine.connect() as conn:
        before = dict(conn.execute(select(schema.patient_identity.c.patient_id, schema.patient_identity.c.body)).all())
        old_wrapped = dict(conn.execute(select(schema.patient_keys.c.key_ref, schema.patient_keys.c.wrapped)).all())
    old_id = store.keyring.current[0]
    report = rotate_master_key(store)
    assert report.rewrapped == 2
    assert report.retired == (old_id,)
    with store.engine.connect() as conn:
        after = dict(conn.execute(select(schema.patient_identity.c.patient_id, schema.patient_identity.c.body)).all())
        rows = conn.execute(select(schema.patient_keys.c.key_ref, schema.patient_keys.c.master_key_id,
                                   schema.patient_keys.c.wrapped)).all()  # fmt: skip
    assert after == before  # the data was not re-encrypted
    assert all(kid == report.new_key_id and old_wrapped[ref] != w for ref, kid, w in rows)
    assert AuditTrail(store).records(action="key-rotate")
    store.close()
    ring = load_keyring(tmp_path / "r.db.keys")
    assert [k for k, _ in ring.master_keys] == [report.new_key_id]
    again = Store(url)
    assert again.patient("pt-2").identity.family == "Doe"  # type: ignore[union-attr]
    again.close()


def test_rows_of_an_older_release_are_sealed_and_rekeyed(tmp_path: Path) -> None:
    """A store written before encryption at rest: plain identity, unkeyed HL7 id, a FHIR id that is the MRN."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    old_hl7 = legacy_patient_id("HOSP", "MRN-1")
    from datetime import UTC, datetime

    from medtwin.codes import HEART_RATE
    from medtwin.records import Observation, Provenance, Quantity

    obs = Observation(
        patient_id=old_hl7,
        code=HEART_RATE,
        effective=datetime(2024, 1, 1, tzinfo=UTC),
        value=Quantity(value=80, unit="/min"),
        provenance=Provenance(source_system="s", source_id="o1"),
    )
    store.write([_patient(old_hl7), _patient("ee9f8dd8-72d2-4769-8020-89e504b1504b", "ee9f8dd8"), obs])
    # make it look like an older release wrote it: everything in clear, the protection not yet done
    from medtwin.store import codec

    with store.engine.begin() as conn:
        for pid, p in ((old_hl7, _patient(old_hl7)), ("ee9f8dd8-72d2-4769-8020-89e504b1504b", None)):
            p = p or _patient("ee9f8dd8-72d2-4769-8020-89e504b1504b", "ee9f8dd8")
            conn.execute(update(schema.patients).where(schema.patients.c.patient_id == pid)
                         .values(body=codec.encode(p), birth_date="1950-01-02"))  # fmt: skip
            conn.execute(update(schema.patient_identity).where(schema.patient_identity.c.patient_id == pid)
                         .values(body=codec.encode_identity(p.identity)))  # type: ignore[arg-type]  # fmt: skip
        conn.execute(schema.identity_index.delete())
        conn.execute(
            update(schema.raw_inbound).values(payload=b"PID|1||MRN-1", digest=hashlib.sha256(b"x").hexdigest())
        )
        conn.execute(schema.key_settings.delete().where(schema.key_settings.c.name == "protected_at_rest"))
    store.close()
    store = Store(url)
    new_hl7 = store.keyring.pseudonym("HOSP", "MRN-1")
    new_fhir = store.keyring.pseudonym.fhir("ee9f8dd8-72d2-4769-8020-89e504b1504b")
    assert sorted(store.patient_ids()) == sorted([new_hl7, new_fhir])
    assert store.patient(new_hl7).identity.family == "Doe"  # type: ignore[union-attr]
    assert [o.patient_id for o in store.observations(new_hl7)] == [new_hl7]
    assert store.find_patients("MRN-1") == [new_hl7]
    with store.engine.connect() as conn:
        assert all(b.startswith("mte1.") for b in conn.execute(select(schema.patients.c.body)).scalars())
    store.close()
