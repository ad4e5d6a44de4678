"""The keyring: master keys (which wrap the per-patient data keys) and the secret behind every keyed id.

A keyring holds

* **master keys** (AES-256, 32 bytes each), the first one current: each patient's data key is stored in the
  database wrapped (AES-256-GCM) by a master key; ``medtwin keys rotate`` adds a new current master key and
  re-wraps every data key under it, without touching the data the data keys encrypt;
* one **secret** (32 bytes) from which every keyed function is derived by HMAC-SHA-256 with a label: pseudonymous
  patient ids, the blind index of identifiers, the keyed digests of payloads, de-identification date shifts. It is
  never rotated (rotating it would change every patient id); it never enters the database.

Where it comes from, in this order: ``$MEDTWIN_MASTER_KEY`` (the keyring JSON itself, for secret stores that
inject environment variables; or a bare base64 32-byte key, from which a one-key keyring is derived, see
:func:`keyring_from_env`), ``$MEDTWIN_KEY_FILE`` (a path), else the default file beside the database
(``<database>.keys``; ``~/.config/medtwin/keys-<hash of the URL>.json`` for a server database), created mode 0600
when missing with a warning to move it to a secret store. An in-memory database gets a keyring for the process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from medtwin.errors import MedtwinError

__all__ = [
    "KEY_FILE_ENV",
    "MASTER_KEY_ENV",
    "Keyring",
    "KeyringError",
    "PseudonymKey",
    "default_key_path",
    "generate_keyring",
    "keyring_from_env",
    "load_keyring",
    "new_master_key",
    "open_keyring",
    "parse_keyring",
    "save_keyring",
]

MASTER_KEY_ENV = "MEDTWIN_MASTER_KEY"
KEY_FILE_ENV = "MEDTWIN_KEY_FILE"
_FORMAT = "medtwin-keyring/1"
_HEX16 = re.compile(r"[0-9a-f]{16}")
_log = logging.getLogger("medtwin.crypto")


class KeyringError(MedtwinError):
    """A keyring that cannot be read, is malformed, or does not belong to the database."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyringError(f"{what}: expected base64 text, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{what}: not valid base64") from None
    if len(raw) != 32:
        raise KeyringError(f"{what}: expected 32 bytes (256 bits), got {len(raw)}")
    return raw


class PseudonymKey:
    """A keyed pseudonymous patient id: ``pt-`` + 16 hex digits of HMAC-SHA-256(secret, system|value).

    Callable as ``(system, value) -> id`` (the HL7 mapper's ``patient_id_for``). Without the secret an id cannot
    be computed from an MRN, so trying candidate MRNs against the ids of a stolen database finds nothing (the
    unkeyed SHA-256 of releases before issue 15 gave 8 of 11 ids away in 0.9 s). Hashable by identity, so mappers
    can cache per key.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, system: str | None, value: str) -> str:
        digest = hmac.new(self._key, f"{system or ''}|{value}".encode(), hashlib.sha256).hexdigest()
        return f"pt-{digest[:16]}"

    def fhir(self, resource_id: str) -> str:
        """The patient id for the FHIR Patient *resource_id* (a logical id is often the MRN itself: Synthea's is).

        An id that already is a medtwin pseudonym (``pt-`` + 16 hex digits: a medtwin export read back) is kept, so
        an export re-imports as the same patient."""
        if len(resource_id) == 19 and resource_id.startswith("pt-") and _HEX16.fullmatch(resource_id[3:]):
            return resource_id
        return self("fhir-id", resource_id)


@dataclass(frozen=True, slots=True, eq=False)
class Keyring:
    """Master keys (first = current) and the secret of the keyed functions; *path* is where it was read from."""

    master_keys: tuple[tuple[str, bytes], ...]
    secret: bytes
    path: Path | None = None
    generated: bool = False
    _subkeys: dict[str, bytes] = field(default_factory=dict, repr=False)
    _pseudonym: list[PseudonymKey] = field(default_factory=list, repr=False)

    @property
    def current(self) -> tuple[str, bytes]:
        """(id, key) of the master key new data keys are wrapped under."""
        return self.master_keys[0]

    def master(self, key_id: str) -> bytes:
        """The master key *key_id*; :class:`KeyringError` when this keyring does not hold it."""
        for kid, key in self.master_keys:
            if kid == key_id:
                return key
        held = ", ".join(k for k, _ in self.master_keys)
        raise KeyringError(f"master key {key_id!r} is not in the keyring (it holds {held}): was it rotated away?")

    def subkey(self, label: str) -> bytes:
        """The key of one keyed function: HMAC-SHA-256(secret, ``medtwin/`` + label)."""
        key = self._subkeys.get(label)
        if key is None:
            key = hmac.digest(self.secret, f"medtwin/{label}".encode(), "sha256")
            self._subkeys[label] = key
        return key

    @property
    def pseudonym(self) -> PseudonymKey:
        """The keyed patient-id function (one object per keyring, so mappers' caches can key on it)."""
        if not self._pseudonym:
            self._pseudonym.append(PseudonymKey(self.subkey("patient-id")))
        return self._pseudonym[0]

    def blind_index(self, system: str | None, value: str) -> str:
        """The blind index of the identifier (*system*, *value*) (None system: the value under any system)."""
        return hmac.new(self.subkey("blind-index"), f"{system or '*'}|{value}".encode(), hashlib.sha256).hexdigest()

    def digest(self, data: bytes) -> str:
        """A keyed content digest (HMAC-SHA-256, hex): equal payloads give equal digests, but a stolen digest
        cannot confirm a guessed payload without the secret."""
        return hmac.digest(self.subkey("content-digest"), data, "sha256").hex()

    def check_value(self) -> str:
        """A value kept in the database to recognise this keyring (a wrong key file is refused): reveals nothing."""
        return hmac.new(self.subkey("check"), b"medtwin keyring check", hashlib.sha256).hexdigest()[:32]

    def date_shift_days(self, patient_id: str, most: int = 365) -> int:
        """The de-identification date shift of *patient_id*: a secret, per-patient, consistent offset in
        [-*most*, -1] days (never 0, so no date is published unshifted)."""
        h = hmac.digest(self.subkey("date-shift"), patient_id.encode(), "sha256")
        return -(1 + int.from_bytes(h[:8], "big") % most)

    def to_json(self) -> bytes:
        """The keyring file's content."""
        return orjson.dumps(
            {
                "format": _FORMAT,
                "master_keys": [{"id": kid, "key": _b64(key)} for kid, key in self.master_keys],
                "secret": _b64(self.secret),
                "note": "medtwin keyring: keep it in a secret store, apart from the database and its backups",
            },
            option=orjson.OPT_INDENT_2,
        )


def _master_id(key: bytes) -> str:
    return "mk-" + hashlib.sha256(b"medtwin master key id|" + key).hexdigest()[:12]


def new_master_key() -> tuple[str, bytes]:
    """A fresh random master key and its id (the id is derived from the key, so it names it exactly)."""
    key = secrets.token_bytes(32)
    return _master_id(key), key


def generate_keyring(path: Path | None = None) -> Keyring:
    """A new random keyring (not saved)."""
    return Keyring(master_keys=(new_master_key(),), secret=secrets.token_bytes(32), path=path, generated=True)


def parse_keyring(data: bytes | str, *, where: str, path: Path | None = None) -> Keyring:
    """The keyring in *data* (its JSON); :class:`KeyringError` naming *where* when it is not one."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise KeyringError(f"{where}: not a medtwin keyring (JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise KeyringError(f'{where}: not a medtwin keyring (no "format": "{_FORMAT}")')
    masters = doc.get("master_keys")
    if not isinstance(masters, list) or not masters:
        raise KeyringError(f"{where}: master_keys must be a non-empty list")
    keys: list[tuple[str, bytes]] = []
    for i, m in enumerate(masters):
        if not isinstance(m, dict):
            raise KeyringError(f"{where}: master_keys[{i}] must be an object with id and key")
        key = _unb64(m.get("key"), f"{where}: master_keys[{i}].key")
        keys.append((str(m.get("id") or _master_id(key)), key))
    return Keyring(master_keys=tuple(keys), secret=_unb64(doc.get("secret"), f"{where}: secret"), path=path)


def keyring_from_env(value: str) -> Keyring:
    """The keyring given in ``$MEDTWIN_MASTER_KEY``: the keyring JSON, or a bare base64 32-byte master key.

    A bare key K gives a one-key keyring whose secret is HMAC(K, "medtwin secret"): the ids it yields are tied to
    K, so such a key cannot be rotated (rotate needs the JSON form, whose secret stays when master keys change).
    """
    text = value.strip()
    if text.startswith("{"):
        return parse_keyring(text, where=f"${MASTER_KEY_ENV}")
    key = _unb64(text, f"${MASTER_KEY_ENV}")
    secret = hmac.digest(key, b"medtwin secret", "sha256")
    return Keyring(master_keys=((_master_id(key), key),), secret=secret)


def save_keyring(keyring: Keyring, path: Path) -> None:
    """Write *keyring* to *path* (mode 0600, atomically: a temporary file fsync'd then renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, keyring.to_json())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_keyring(path: Path) -> Keyring:
    """The keyring in the file *path*; :class:`KeyringError` when it cannot be read or is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyringError(f"cannot read key file {str(path)!r}: {exc.strerror or exc}") from None
    return parse_keyring(data, where=f"key file {str(path)!r}", path=path)


def default_key_path(url: str) -> Path | None:
    """The default key file of the database at *url*: ``<file>.keys`` beside a SQLite file, a file under
    ``~/.config/medtwin`` for a server database, None for an in-memory database."""
    if url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url:
        return None
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        if path.startswith("file:"):  # a URI filename (sqlite:///file:/path/db?mode=ro&uri=true)
            path = urllib.parse.unquote(path.removeprefix("file:"))
        if path and path != ":memory:":
            return Path(path + ".keys")
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path.home() / ".config" / "medtwin" / f"keys-{digest}.json"


_MEMORY_KEYRINGS: dict[str, Keyring] = {}


def open_keyring(url: str, *, create: bool = True, path: Path | None = None) -> Keyring:
    """The keyring of the database at *url* (see the module doc for the order); a missing default file is
    created (mode 0600) when *create*, with a warning on the ``medtwin.crypto`` logger."""
    env = os.environ.get(MASTER_KEY_ENV)
    if path is None and env:
        return keyring_from_env(env)
    if path is None and os.environ.get(KEY_FILE_ENV):
        path = Path(os.environ[KEY_FILE_ENV])
    if path is None:
        path = default_key_path(url)
        if path is None:  # in memory: one keyring per process for that URL
            return _MEMORY_KEYRINGS.setdefault(url, generate_keyring())
    if path.exists():
        return load_keyring(path)
    if not create:
        raise KeyringError(
            f"no key file at {str(path)!r}: the database's data keys are wrapped by the master key in it "
            f"(set ${KEY_FILE_ENV} or ${MASTER_KEY_ENV})"
        )
    keyring = generate_keyring(path)
    try:  # ~/.config/medtwin may not exist yet on a fresh account: create it private
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it in between: use theirs
        return load_keyring(path)
    except OSError as exc:
        raise KeyringError(f"cannot create key file {str(path)!r}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(keyring.to_json())
        f.flush()
        os.fsync(f.fileno())
    _log.warning(
        "medtwin generated a new master key in %s (mode 0600). Move it to a secret store and point "
        "$%s at it (or put its content in $%s): whoever holds the database and this file can read "
        "every patient's identity.",
        path,
        KEY_FILE_ENV,
        MASTER_KEY_ENV,
    )
    return Keyring(master_keys=keyring.master_keys, secret=keyring.secret, path=path, generated=True)
