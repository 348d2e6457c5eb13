"""The sealed token: what an encrypted store keeps in place of an account's token.

:class:`~refresher.EncryptedTokenStore` hands the store it wraps, instead of the token dict,
a dict of its own::

    {"encrypted": "refresher/aes-256-gcm/1", "key_id": "1a2b3c4d",
     "ciphertext": "<base64: nonce, then the token's JSON encrypted>",
     "expires_at": 1767225600.0}

Only ``expires_at`` (when the token has one) is copied out in the clear, for a person or a
query looking at the store; what is read back is the ciphertext alone. The whole token dict
(access and refresh tokens, id token, scope, token type, any other field) is in it.

This module needs no cryptography: a store opened *without* a key recognizes a sealed token
with :func:`is_sealed`, and :func:`refuse_sealed` makes that a clear
:class:`~refresher.EncryptionKeyError` instead of a token with no refresh token in it (which
would send a person to log in again, and a login would then write the new pair in the
clear over the encrypted one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import EncryptionKeyError
from ..keys import KEY_VARIABLE

__all__ = ["FORMAT", "MARK", "READABLE", "is_sealed", "refuse_sealed"]

#: The key of a sealed token that says it is one, and its value: the format written.
MARK = "encrypted"
FORMAT = "refresher/aes-256-gcm/1"
#: The token's fields copied beside the ciphertext, in the clear (never read back).
READABLE = ("expires_at",)


def is_sealed(token: Mapping[str, Any] | None) -> bool:
    """Whether ``token``, as a store returned it, is a sealed one (of any format version).

    >>> is_sealed({"encrypted": "refresher/aes-256-gcm/1", "ciphertext": "..."})
    True
    >>> is_sealed({"access_token": "a", "refresh_token": "r"})
    False
    """
    if not isinstance(token, Mapping):
        return False
    mark = token.get(MARK)
    return isinstance(mark, str) and mark.startswith("refresher/")


def refuse_sealed(token: Mapping[str, Any] | None, account: str, where: str) -> None:
    """Raise :class:`~refresher.EncryptionKeyError` (key missing) when ``token``, read
    from the store ``where`` without a key, is sealed; nothing is read or changed."""
    if is_sealed(token):
        raise EncryptionKeyError(
            f"account {account!r} in {where} is encrypted, and no key was given: set "
            f"{KEY_VARIABLE} to the key it was encrypted with (open_store and the refresher "
            "command read it), or pass key= to open_store, or wrap a store object in "
            "EncryptedTokenStore(store, key); nothing was read or changed"
        )
