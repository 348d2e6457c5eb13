"""Keys for encrypted token stores: made, read from ``REFRESHER_KEY`` or the OS keyring.

A key is 32 random bytes (AES-256), written as URL-safe base64 (44 characters, as
:func:`new_key` makes them). ``REFRESHER_KEY`` holds one, or several separated by commas
for a rotation (the first encrypts, every one decrypts); an item ``keyring:NAME`` is read
from the OS keyring (service ``refresher``, user ``NAME``; the extra ``[keyring]``), and may
itself hold several. Where no keyring backend exists (a headless Linux) that is a
:class:`~refresher.ConfigurationError`: never a store opened without its key.

A key is named in messages by its :func:`key_id` only (a digest: it reveals nothing of the
key), never by itself. Neither ``cryptography`` nor ``keyring`` is imported here before
one is needed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Sequence
from typing import Any, TypeAlias

from .errors import ConfigurationError, MissingKeyringExtra, TokenStoreError

__all__ = [
    "KEY_VARIABLE",
    "KEYRING_PREFIX",
    "KEYRING_SERVICE",
    "KeySpec",
    "key_id",
    "keys_from_environment",
    "new_key",
    "parse_keys",
    "save_in_keyring",
]

#: The environment variable of the key (or keys, comma-separated) of encrypted stores.
KEY_VARIABLE = "REFRESHER_KEY"
#: An item of ``REFRESHER_KEY`` that starts with this names a key in the OS keyring.
KEYRING_PREFIX = "keyring:"
#: The keyring service refresher's keys are kept under (the item's user is their name).
KEYRING_SERVICE = "refresher"

#: What may be given as a key: one (text, or 32 raw bytes), text with several separated by
#: commas, or a list of them; the first encrypts, every one decrypts.
KeySpec: TypeAlias = "str | bytes | Sequence[str | bytes]"

_KEY_BYTES = 32


def new_key() -> str:
    """A new random key for :class:`~refresher.EncryptedTokenStore`: 32 bytes from the
    operating system's generator, as URL-safe base64 (what ``REFRESHER_KEY`` holds).

    >>> len(new_key())
    44
    """
    return base64.urlsafe_b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")


def key_id(key: bytes) -> str:
    """A key's name for messages and the sealed token: 8 hex digits of a SHA-256 of it.

    It tells keys apart and reveals nothing of one.

    >>> key_id(bytes(32))
    'e09e0598'
    """
    return hashlib.sha256(b"refresher key id\x00" + key).hexdigest()[:8]


def parse_keys(given: KeySpec, *, source: str = "the key") -> list[bytes]:
    """The keys ``given`` holds, in order (the first encrypts): each a :func:`new_key`
    text, 32 raw bytes, or ``keyring:NAME``; text may hold several, comma-separated.

    Raises :class:`~refresher.ConfigurationError` naming ``source`` and the item's position
    (never the item) for one that is not a key, and for none at all.
    """
    items: list[str | bytes] = [given] if isinstance(given, (str, bytes)) else list(given)
    keys: list[bytes] = []
    position = 0
    for item in items:
        if isinstance(item, bytes):
            position += 1
            keys.append(_raw(item, source, position))
            continue
        for part in (piece.strip() for piece in item.split(",")):
            if not part:
                continue
            position += 1
            if part.startswith(KEYRING_PREFIX):
                keys += _from_keyring(part[len(KEYRING_PREFIX):].strip(), source)
            else:
                keys.append(_decoded(part, source, position))
    if not keys:
        raise ConfigurationError(
            f"{source} holds no key; make one with: refresher key new")
    return keys


def keys_from_environment() -> list[bytes] | None:
    """The keys of ``REFRESHER_KEY`` (see :func:`parse_keys`); ``None`` when it is unset or
    blank (as ``REFRESHER_KEY= command`` clears it for one command)."""
    text = os.environ.get(KEY_VARIABLE) or ""
    if not text.strip():
        return None
    return parse_keys(text, source=KEY_VARIABLE)


def _raw(key: bytes, source: str, position: int) -> bytes:
    if len(key) != _KEY_BYTES:
        raise ConfigurationError(
            f"{source}: key {position} is {len(key)} bytes, not {_KEY_BYTES}; make one "
            "with: refresher key new")
    return bytes(key)


def _decoded(text: str, source: str, position: int) -> bytes:
    """A key from its base64 text (URL-safe or standard, padded or not)."""
    padded = text + "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise ConfigurationError(
            f"{source}: item {position} is not a key (a key is 32 random bytes in base64, "
            "44 characters: make one with refresher key new; several are separated by "
            "commas, and keyring:NAME reads one from the OS keyring)")
    return key


def _keyring() -> Any:
    try:
        import keyring
    except ImportError:
        raise MissingKeyringExtra(
            "keys from the OS keyring (keyring:NAME) need the keyring package",
            extra="keyring", name="keyring") from None
    return keyring


def _from_keyring(name: str, source: str) -> list[bytes]:
    """The key (or keys) kept in the OS keyring under ``name``."""
    if not name:
        raise ConfigurationError(f"{source}: keyring: needs a name (keyring:NAME)")
    keyring = _keyring()
    try:
        text = keyring.get_password(KEYRING_SERVICE, name)
    except keyring.errors.NoKeyringError:
        raise ConfigurationError(_no_backend(source, name)) from None
    except keyring.errors.KeyringError as exc:
        raise TokenStoreError(
            f"{source}: the OS keyring failed to read key {name!r}: {type(exc).__name__}"
        ) from None
    if not text:
        raise ConfigurationError(
            f"{source}: the OS keyring holds no key named {name!r} (service "
            f"{KEYRING_SERVICE!r}); put one there with: refresher key new --keyring {name}")
    return parse_keys(text, source=f"{source} (keyring:{name})")


def save_in_keyring(name: str, key: str) -> None:
    """Keep ``key`` in the OS keyring under ``name`` (service ``refresher``), replacing
    what was there; :class:`~refresher.ConfigurationError` where no backend exists."""
    keyring = _keyring()
    try:
        keyring.set_password(KEYRING_SERVICE, name, key)
    except keyring.errors.NoKeyringError:
        raise ConfigurationError(_no_backend("refresher key new --keyring", name)) from None
    except keyring.errors.KeyringError as exc:
        raise TokenStoreError(
            f"the OS keyring failed to keep key {name!r}: {type(exc).__name__}") from None


def _no_backend(source: str, name: str) -> str:
    return (f"{source}: keyring:{name} names a key in the OS keyring, but this machine has "
            "no keyring backend (a headless Linux has no Secret Service or KWallet); "
            "nothing was opened. Give the key itself in REFRESHER_KEY (from your secret "
            "manager), or set up a keyring backend")
