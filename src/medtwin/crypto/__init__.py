"""Keys and encryption for data at rest (floor 2; the store imports it): the keyring (master keys + the secret
of every keyed function), per-patient AES-256-GCM data keys wrapped by the master key, keyed pseudonymous ids,
the blind index of identifiers, keyed content digests. See docs/security-data.md."""

from medtwin.crypto.envelope import (
    SYSTEM_KEY,
    DataKeys,
    is_sealed,
    is_sealed_text,
    sealed_key_ref,
    unwrap_key,
    wrap_key,
)
from medtwin.crypto.keys import (
    KEY_FILE_ENV,
    MASTER_KEY_ENV,
    Keyring,
    KeyringError,
    PseudonymKey,
    default_key_path,
    generate_keyring,
    keyring_from_env,
    load_keyring,
    new_master_key,
    open_keyring,
    parse_keyring,
    save_keyring,
)

__all__ = [
    "KEY_FILE_ENV",
    "MASTER_KEY_ENV",
    "SYSTEM_KEY",
    "DataKeys",
    "Keyring",
    "KeyringError",
    "PseudonymKey",
    "default_key_path",
    "generate_keyring",
    "is_sealed",
    "is_sealed_text",
    "keyring_from_env",
    "load_keyring",
    "new_master_key",
    "open_keyring",
    "parse_keyring",
    "save_keyring",
    "sealed_key_ref",
    "unwrap_key",
    "wrap_key",
]
