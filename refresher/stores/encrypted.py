"""EncryptedTokenStore: any token store, with every token encrypted before it is written.

The cipher is AES-256-GCM (``cryptography``'s ``AESGCM``: the extra ``[crypto]``), a fresh
96-bit random nonce per save, and the account's name as associated data. Why not Fernet:
GCM binds each ciphertext to its account (a token copied under another account's name does
not decrypt there, so whoever can write the store cannot hand one user's X account to
another's session), carries no timestamp in the clear, and takes a 256-bit key. Nonces are
random, so one key is good for far more saves than an app makes (2**32 is the usual bound:
a save per account every two hours is 100,000 accounts for 400 years); rotate anyway.

The wrapper changes what is written, not how: the wrapped store's locks, leases, versions
and compare-and-set are used as they are, so a save under the lock is fenced exactly as
without it. See :mod:`refresher.stores.sealed` for what is written.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from ..errors import EncryptionKeyError, MissingStoreExtra, StaleTokenError
from ..keys import KEY_VARIABLE, KeySpec, key_id, parse_keys
from ..token import Token
from .base import TokenStore, Versioned
from .sealed import FORMAT, MARK, READABLE, is_sealed

__all__ = ["EncryptedTokenStore", "require_cryptography"]

_NONCE_BYTES = 12


def require_cryptography() -> tuple[Any, type[Exception]]:
    """``AESGCM`` and ``InvalidTag``; without cryptography, an error naming the extra."""
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise MissingStoreExtra("EncryptedTokenStore needs the cryptography package",
                                extra="crypto", name="cryptography") from None
    return AESGCM, InvalidTag


class EncryptedTokenStore(TokenStore):
    """``store`` (any :class:`~refresher.TokenStore`), holding no token in the clear.

    ``key`` is a key from :func:`~refresher.new_key` (or ``keyring:NAME``), or several
    (a list, or text separated by commas): the first encrypts, every one decrypts. So a
    rotation is: put the new key first, keep the old ones after it until every account has
    been saved once more (``refresher key rotate`` saves them all at once), then drop them.

    What is written for an account is a sealed token (:mod:`refresher.stores.sealed`):
    the whole token dict encrypted, with only ``expires_at`` beside it in the clear. Account
    names and metadata (client id, endpoints, the login's user name, the fingerprints of
    refused refresh tokens) stay readable: they hold no secret.

    A token the keys cannot open (encrypted under another key, or altered, or copied from
    another account) is an :class:`~refresher.EncryptionKeyError` naming the account and
    key ids, never a key, and nothing is written. A token stored in the clear (a store from
    before the key) is read as it is, and encrypted at its next save.

    Locks, leases, versions and fencing are the wrapped store's own, called as they are.

    >>> store = EncryptedTokenStore(JSONTokenStore("tokens.json"), new_key())  # doctest: +SKIP
    """

    def __init__(self, store: TokenStore, key: KeySpec) -> None:
        aesgcm, self._invalid_tag = require_cryptography()
        keys = parse_keys(key)
        #: The store that keeps the sealed tokens, its locks and its versions.
        self.inner = store
        # (key id, cipher), the first one encrypting.
        self._ciphers: list[tuple[str, Any]] = [(key_id(k), aesgcm(k)) for k in keys]
        # Whether metadata is kept is the wrapped store's answer (a class-level flag there).
        vars(self)["keeps_metadata"] = store.keeps_metadata

    def __repr__(self) -> str:
        return f"EncryptedTokenStore({self.inner!r})"

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys (:func:`~refresher.keys.key_id`), the encrypting one first."""
        return [kid for kid, _ in self._ciphers]

    @property
    def path(self) -> Any:
        """The wrapped store's ``path`` (a JSON store's file), else ``None``."""
        return getattr(self.inner, "path", None)

    @property
    def lock_ttl(self) -> Any:
        """The wrapped store's ``lock_ttl`` (when its locks lapse by themselves), else ``None``."""
        return getattr(self.inner, "lock_ttl", None)

    # -- sealing ---------------------------------------------------------------------------

    def _seal(self, account: str, token: Token) -> dict[str, Any]:
        kid, cipher = self._ciphers[0]
        nonce = os.urandom(_NONCE_BYTES)
        plain = json.dumps(dict(token), sort_keys=True, separators=(",", ":")).encode("utf-8")
        data = nonce + cipher.encrypt(nonce, plain, _associated(account, kid))
        sealed: dict[str, Any] = {
            MARK: FORMAT, "key_id": kid,
            "ciphertext": base64.urlsafe_b64encode(data).decode("ascii"),
        }
        sealed.update((name, token[name]) for name in READABLE if name in token)
        return sealed

    def _open(self, account: str, stored: Token | None) -> Token | None:
        """The token ``stored`` seals (a fresh dict), or ``stored`` itself when it is in the
        clear (read as it is; encrypted at its next save)."""
        if stored is None or not is_sealed(stored):
            return stored
        cipher, kid = self._cipher_for(account, stored)
        try:
            data = base64.urlsafe_b64decode(str(stored.get("ciphertext", "")))
            plain = cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:],
                                   _associated(account, kid))
        except (self._invalid_tag, binascii.Error, ValueError):
            raise EncryptionKeyError(
                f"account {account!r} in {self._where}: its token does not decrypt with key "
                f"{kid}: the key is wrong, or the stored token was altered or copied from "
                "another account; nothing was read or changed"
            ) from None
        token: Token = json.loads(plain)
        return token

    def _cipher_for(self, account: str, stored: Token) -> tuple[Any, str]:
        if stored.get(MARK) != FORMAT:
            raise EncryptionKeyError(
                f"account {account!r} in {self._where} is encrypted in a format this version "
                "of refresher does not read; upgrade refresher")
        kid = str(stored.get("key_id"))
        for candidate, cipher in self._ciphers:
            if candidate == kid:
                return cipher, kid
        raise EncryptionKeyError(
            f"account {account!r} in {self._where} is encrypted with key {kid}, which is not "
            f"among the keys given ({', '.join(self.key_ids)}): a key is wrong or missing. "
            f"Give it in {KEY_VARIABLE} (during a rotation: the new key, a comma, then the "
            "old ones); nothing was read or changed"
        )

    @property
    def _where(self) -> str:
        path = self.path
        return str(path) if path is not None else repr(self.inner)

    def _check_replaceable(self, account: str) -> None:
        """Before a write that replaces whatever is stored: refuse one over a token sealed
        under a key not given (a wrong key writes nothing)."""
        stored = self.inner.load_versioned(account).token
        if is_sealed(stored):
            self._cipher_for(account, stored or {})

    # -- the TokenStore methods --------------------------------------------------------------

    def load(self, account: str) -> Token | None:
        return self._open(account, self.inner.load(account))

    def save(self, account: str, token: Token) -> None:
        """Encrypt ``token`` and save it as the wrapped store's ``save`` does."""
        self.inner.save(account, self._seal(account, token))

    def _load_versioned(self, account: str) -> Versioned:
        stored = self.inner.load_versioned(account)
        return Versioned(self._open(account, stored.token), stored.version)

    def _save_versioned(self, account: str, token: Token, expected_version: str | None) -> str:
        """The wrapped store's compare-and-set, on the sealed token.

        Each seal is new ciphertext, so the wrapped store cannot see that a retried save
        holds the very token stored: when it refuses, the stored one is decrypted and
        compared here (under the lock, as the save is)."""
        if expected_version is None:
            self._check_replaceable(account)
        sealed = self._seal(account, token)
        try:
            return self.inner.save_versioned(account, sealed, expected_version)
        except StaleTokenError:
            current = self.inner.load_versioned(account)
            try:
                same = self._open(account, current.token) == dict(token)
            except EncryptionKeyError:
                same = False
            if not same or current.version is None:
                raise
            if not is_sealed(current.token):  # the same token, still in the clear
                return self.inner.save_versioned(account, sealed, current.version)
            return current.version

    def reencrypt(self, account: str, timeout: float | None = None) -> bool:
        """Save ``account``'s token again, under the first key, unless it already is
        (under the account's lock, fenced by version); whether it was saved.

        What ``refresher key rotate`` does for every account; a token in the clear is
        encrypted."""
        with self.inner.lock(account, timeout):
            stored = self.inner.load_versioned(account)
            if stored.token is None or (stored.token.get(MARK) == FORMAT
                                        and stored.token.get("key_id") == self.key_ids[0]):
                return False
            token = self._open(account, stored.token)
            assert token is not None
            self.inner.save_versioned(account, self._seal(account, token), stored.version)
            return True

    def delete(self, account: str) -> None:
        self.inner.delete(account)

    def accounts(self) -> list[str]:
        return self.inner.accounts()

    def lock(self, account: str, timeout: float | None = None) -> Any:
        return self.inner.lock(account, timeout)

    def verify_lock(self, account: str) -> None:
        self.inner.verify_lock(account)

    def load_metadata(self, account: str) -> dict[str, Any]:
        return self.inner.load_metadata(account)

    def save_metadata(self, account: str, metadata: dict[str, Any]) -> None:
        self.inner.save_metadata(account, metadata)

    def close(self) -> None:
        """Close the wrapped store."""
        self.inner.close()


def _associated(account: str, kid: str) -> bytes:
    """What each ciphertext is bound to: the format, the key's id and the account's name."""
    return f"{FORMAT}\x00{kid}\x00{account}".encode()
