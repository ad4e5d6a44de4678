"""Master key rotation (``medtwin keys rotate``): re-wrap every data key under a new master key.

The data itself is not touched: each patient's data key stays the same; only its wrapping (a 60-byte row in
``patient_keys``) is replaced. Order, so that a crash at any point loses nothing: (1) the key file is rewritten
with the new master key first and the old ones after it (both open every data key); (2) every wrapped key is
re-wrapped under the new master key in ONE transaction; (3) the key file is rewritten without the old master keys
(unless *keep_old*). A crash after (1) or (2) leaves a key file that still opens everything; run rotate again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, select, update

from medtwin.crypto import Keyring, KeyringError, new_master_key, save_keyring, unwrap_key, wrap_key
from medtwin.security.audit import AuditEvent, AuditTrail
from medtwin.store import Store, schema

__all__ = ["RotationReport", "rotate_master_key"]


@dataclass(frozen=True, slots=True)
class RotationReport:
    """The new master key's id, the ids retired, and how many data keys were re-wrapped."""

    new_key_id: str
    retired: tuple[str, ...]
    rewrapped: int


def rotate_master_key(
    store: Store, *, actor: str = "cli", keep_old: bool = False, trail: AuditTrail | None = None
) -> RotationReport:
    """Rotate the master key of *store* (whose keyring must come from a key file: see the module doc).

    Raises
    ------
    KeyringError
        The keyring did not come from a file (``$MEDTWIN_MASTER_KEY``: rotate in the secret store instead, with the
        keyring JSON holding the new key first), or a data key does not open with the current keyring.
    """
    old = store.keyring
    if old.path is None:
        raise KeyringError(
            "keys rotate needs a key file ($MEDTWIN_KEY_FILE or the file beside the database); a keyring given in "
            "$MEDTWIN_MASTER_KEY is rotated in the secret store that holds it"
        )
    kid, key = new_master_key()
    both = Keyring(master_keys=((kid, key), *old.master_keys), secret=old.secret, path=old.path)
    save_keyring(both, old.path)
    t = schema.patient_keys
    with store.audit_transaction() as conn:
        rows = conn.execute(select(t.c.key_ref, t.c.master_key_id, t.c.wrapped)).all()
        params = [
            {"b_ref": ref, "master_key_id": kid,
             "wrapped": wrap_key(key, ref, unwrap_key(both.master(mk), ref, bytes(wrapped)))}
            for ref, mk, wrapped in rows
        ]  # fmt: skip
        if params:
            conn.execute(
                update(t)
                .where(t.c.key_ref == bindparam("b_ref"))
                .values(master_key_id=bindparam("master_key_id"), wrapped=bindparam("wrapped")),
                params,
            )
        audit = trail if trail is not None else AuditTrail(store)
        audit.append_in(
            conn,
            [AuditEvent(time=datetime.now(UTC), actor=actor, role="admin", action="key-rotate", resource="Keyring",
                        detail=f"master key {kid} now current; {len(params)} data keys re-wrapped")],
        )  # fmt: skip
    audit.sync_head()
    if trail is None:
        audit.close()
    final = both if keep_old else Keyring(master_keys=((kid, key),), secret=old.secret, path=old.path)
    save_keyring(final, old.path)
    retired = () if keep_old else tuple(k for k, _ in old.master_keys)
    store.keyring = final
    store.keys.keyring = final
    return RotationReport(kid, retired, len(params))
