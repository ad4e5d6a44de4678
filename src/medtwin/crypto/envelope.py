"""Envelope encryption: per-patient AES-256-GCM data keys, wrapped by a master key, cached unwrapped.

A sealed value names the key it was sealed under (its *key ref*: a pseudonymous patient id, or ``system:...`` for
data tied to no patient), so it can be opened without context:

* bytes: ``b"MTE1"`` + 2-byte length + key ref + 12-byte nonce + ciphertext and 16-byte tag;
* text: ``mte1.`` + base64url(key ref) + ``.`` + base64(nonce + ciphertext and tag).

The key ref is also the associated data, so a sealed value moved under another patient's row does not open. Every
value gets a fresh random 96-bit nonce. Data keys are random (``os.urandom``): destroying a patient's wrapped key
makes every copy of their sealed data unreadable, backups included (crypto-shredding).
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medtwin.crypto.keys import Keyring, KeyringError

__all__ = [
    "SYSTEM_KEY",
    "DataKeys",
    "is_sealed",
    "is_sealed_text",
    "sealed_key_ref",
    "unwrap_key",
    "wrap_key",
]

SYSTEM_KEY = "system:raw"
"""The key ref of payloads tied to no patient (dead letters before a patient is known, multi-patient bundles)."""

_MAGIC = b"MTE1"
_TEXT = "mte1."
_WRAP_AAD = b"medtwin data key|"


def is_sealed(value: bytes) -> bool:
    """Whether *value* is a sealed byte string."""
    return value[:4] == _MAGIC


def is_sealed_text(value: str) -> bool:
    """Whether *value* is sealed text."""
    return value.startswith(_TEXT)


def sealed_key_ref(value: bytes | str) -> str:
    """The key ref a sealed value names."""
    if isinstance(value, str):
        return base64.urlsafe_b64decode(value[len(_TEXT) :].split(".", 1)[0]).decode()
    n = int.from_bytes(value[4:6], "big")
    return value[6 : 6 + n].decode()


def wrap_key(master: bytes, key_ref: str, data_key: bytes) -> bytes:
    """*data_key* sealed under *master* (AES-256-GCM; nonce + ciphertext), bound to *key_ref*."""
    nonce = os.urandom(12)
    return nonce + AESGCM(master).encrypt(nonce, data_key, _WRAP_AAD + key_ref.encode())


def unwrap_key(master: bytes, key_ref: str, wrapped: bytes) -> bytes:
    """The data key in *wrapped*; :class:`KeyringError` when *master* is not the key it was wrapped with."""
    try:
        return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], _WRAP_AAD + key_ref.encode())
    except InvalidTag:
        raise KeyringError(f"the data key of {key_ref!r} does not open with this master key") from None


class DataKeys:
    """The unwrapped data keys of one store, cached (at most *cache_size*, least recently used dropped).

    *load* reads wrapped keys: ``load(refs) -> {ref: (master_key_id, wrapped)}``; *create* stores new ones:
    ``create({ref: (master_key_id, wrapped)})`` returns the refs that another writer had created first (their
    keys are then read again). Keys created in a transaction that is rolled back must be forgotten:
    :meth:`forget` (the store calls it on rollback for the keys of :meth:`pending`).
    """

    def __init__(
        self,
        keyring: Keyring,
        load: Callable[[list[str]], dict[str, tuple[str, bytes]]],
        *,
        cache_size: int = 200_000,
    ) -> None:
        self.keyring = keyring
        self._load = load
        self._cache: OrderedDict[str, AESGCM] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()
        self._local = threading.local()

    # -- the cache -------------------------------------------------------------------------------------------
    def _put(self, ref: str, key: bytes) -> AESGCM:
        aead = AESGCM(key)
        with self._lock:
            self._cache[ref] = aead
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return aead

    def forget(self, refs: Iterable[str] | None = None) -> None:
        """Drop cached keys (*refs*, or all): they are read from the database again when needed."""
        with self._lock:
            if refs is None:
                self._cache.clear()
            else:
                for ref in refs:
                    self._cache.pop(ref, None)

    def cached(self, ref: str) -> AESGCM | None:
        with self._lock:
            return self._cache.get(ref)

    def pending(self) -> set[str]:
        """Refs of keys this thread created in its open transaction (cleared by :meth:`committed`)."""
        p: set[str] | None = getattr(self._local, "pending", None)
        if p is None:
            p = set()
            self._local.pending = p
        return p

    def committed(self) -> None:
        self.pending().clear()

    def rolled_back(self) -> None:
        pending = self.pending()
        self.forget(pending)
        pending.clear()

    # -- getting keys ----------------------------------------------------------------------------------------
    def keys_for(
        self, refs: Iterable[str], create: Callable[[dict[str, tuple[str, bytes]]], None] | None = None
    ) -> dict[str, AESGCM]:
        """The data keys of *refs*: cached, else unwrapped from the database, else (with *create*) new ones,
        stored through *create* inside the caller's write transaction. A ref with no key and no *create* is
        missing from the result (erased)."""
        out: dict[str, AESGCM] = {}
        missing: list[str] = []
        with self._lock:
            for ref in dict.fromkeys(refs):
                aead = self._cache.get(ref)
                if aead is None:
                    missing.append(ref)
                else:
                    self._cache.move_to_end(ref)
                    out[ref] = aead
        if not missing:
            return out
        stored = self._load(missing)
        for ref, (kid, wrapped) in stored.items():
            out[ref] = self._put(ref, unwrap_key(self.keyring.master(kid), ref, wrapped))
        fresh = [r for r in missing if r not in stored]
        if fresh and create is not None:
            kid, master = self.keyring.current
            new: dict[str, tuple[str, bytes]] = {}
            plain: dict[str, bytes] = {}
            for ref in fresh:
                plain[ref] = AESGCM.generate_key(bit_length=256)
                new[ref] = (kid, wrap_key(master, ref, plain[ref]))
            create(new)
            # read back: a concurrent writer (another process on PostgreSQL) may have stored its key first
            for ref, (kid2, wrapped) in self._load(fresh).items():
                key = plain[ref] if wrapped == new[ref][1] else unwrap_key(self.keyring.master(kid2), ref, wrapped)
                out[ref] = self._put(ref, key)
                self.pending().add(ref)
        return out

    # -- sealing ---------------------------------------------------------------------------------------------
    @staticmethod
    def seal_with(aead: AESGCM, ref: str, data: bytes) -> bytes:
        nonce = os.urandom(12)
        r = ref.encode()
        return _MAGIC + len(r).to_bytes(2, "big") + r + nonce + aead.encrypt(nonce, data, r)

    @staticmethod
    def seal_text_with(aead: AESGCM, ref: str, text: str) -> str:
        nonce = os.urandom(12)
        r = ref.encode()
        body = base64.b64encode(nonce + aead.encrypt(nonce, text.encode(), r)).decode()
        return f"{_TEXT}{base64.urlsafe_b64encode(r).decode()}.{body}"

    def open(self, value: bytes) -> bytes | None:
        """The plaintext of a sealed byte string (a plain one is returned as it is); None when its key was
        destroyed (the patient was erased)."""
        if not is_sealed(value):
            return value
        n = int.from_bytes(value[4:6], "big")
        ref = value[6 : 6 + n].decode()
        aead = self.keys_for([ref]).get(ref)
        if aead is None:
            return None
        body = value[6 + n :]
        try:
            return aead.decrypt(body[:12], body[12:], ref.encode())
        except InvalidTag:
            raise KeyringError(f"a value sealed under {ref!r} does not open (damaged or moved)") from None

    def open_texts(self, values: list[str]) -> list[str | None]:
        """:meth:`open_text` of many values, their keys fetched together first (one query per 500 uncached keys
        instead of one per value: a cohort read of thousands of patients)."""
        refs = {sealed_key_ref(v) for v in values if v.startswith(_TEXT)}
        if refs:
            self.keys_for(refs)
        return [self.open_text(v) for v in values]

    def open_text(self, value: str) -> str | None:
        """The plaintext of sealed text (plain text is returned as it is); None when its key was destroyed."""
        if not value.startswith(_TEXT):
            return value
        head, _, body = value[len(_TEXT) :].partition(".")
        try:
            ref = base64.urlsafe_b64decode(head).decode()
            raw = base64.b64decode(body)
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise KeyringError("a sealed text value is damaged (bad base64)") from None
        aead = self.keys_for([ref]).get(ref)
        if aead is None:
            return None
        try:
            return aead.decrypt(raw[:12], raw[12:], ref.encode()).decode()
        except InvalidTag:
            raise KeyringError(f"a value sealed under {ref!r} does not open (damaged or moved)") from None
