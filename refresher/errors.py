"""The exceptions refresher raises, as a short hierarchy callers can catch by meaning.

Every message is written for the person who has to act on it, and none of them ever
contains an access token, a refresh token or a client secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oauthlib.oauth2 import InsecureTransportError

if TYPE_CHECKING:
    import requests

__all__ = [
    "RefresherError",
    "EndpointError",
    "RefreshError",
    "ReauthorizationRequired",
    "TokenStoreError",
    "LockTimeout",
    "StaleTokenError",
    "LoginError",
    "ConfigurationError",
    "InvalidTokenError",
    "InsecureTransport",
    "LockLost",
    "RevokeError",
    "EncryptionKeyError",
    "MissingExtra",
    "MissingStoreExtra",
    "MissingKeyringExtra",
]


class RefresherError(Exception):
    """Base class of every error refresher raises."""


class EndpointError(RefresherError):
    """An OAuth endpoint of X (token, revoke) refused or failed a request.

    ``error`` is the OAuth error code the endpoint sent (``"invalid_request"``,
    ``"unauthorized_client"``...) or ``None`` when it sent none (a 5xx, a timeout, a
    non-JSON answer). ``response`` is the :class:`requests.Response`, when there was one.

    ``request_sent`` says whether the request reached the network: ``False`` when refresher
    knows nothing was written to the socket (the name did not resolve, the connection was
    refused or timed out, the caller gave up first), so a refresh token in it is still good;
    ``True`` when it was written (X may have acted on it); ``None`` when refresher cannot
    tell (a session of the caller's, with its own retries, failed after it was handed over).

    ``retry_after`` is how many seconds the endpoint asked to wait before trying again (a
    429 or 503 with ``Retry-After`` or ``x-rate-limit-reset``), counted from when the
    error was raised; ``None`` when it asked nothing. Such an answer says X did not act:
    a refresh token in the request is still good.
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        response: requests.Response | None = None,
        request_sent: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.response = response
        self.request_sent = True if response is not None else request_sent
        self.retry_after = retry_after


class RefreshError(EndpointError):
    """The token endpoint refused or failed a refresh (or a code exchange).

    The stored token is untouched: the next call tries again.
    """


class ReauthorizationRequired(RefreshError):
    """The refresh token is spent, revoked or missing: a person must log in again.

    Raised only after the store was re-read once, so a sibling process that already holds
    the new pair is not mistaken for a lost account.
    """


class TokenStoreError(RefresherError):
    """A token store is unreadable, corrupt, unwritable or unreachable.

    The message names the file or server (never a password); a corrupt file is left as it
    is, for a person to look at.
    """


class LockLost(TokenStoreError):
    """The store's lock for an account lapsed while it was held (longer than its lifetime).

    Raised *before* the refresh token is spent: a holder that lost its lock never sends the
    refresh token, since the next holder may be sending the same one.
    """


class LockTimeout(TokenStoreError):
    """The store's lock for an account was not had within ``lock_timeout`` seconds."""


class StaleTokenError(TokenStoreError):
    """A save lost a race: the store already holds a newer token, which is kept.

    Raised by stores that version their tokens (the Redis store) when a writer whose lock
    lapsed tries to overwrite a token another holder saved in the meantime.
    """


class RevokeError(EndpointError):
    """X refused or failed to revoke a token; whatever the store holds is unchanged."""


class LoginError(RefresherError):
    """The OAuth 2.0 login (authorize, callback, code exchange) failed or was refused."""


class ConfigurationError(RefresherError, ValueError):
    """An argument, setting or name refresher cannot use; the message says what to do.

    Also a :class:`ValueError`, so code that caught ``ValueError`` keeps working.
    """


class EncryptionKeyError(ConfigurationError):
    """An encrypted store's token cannot be read: the key given is wrong, or none was given
    for it (see :class:`~refresher.EncryptedTokenStore`). Nothing was read or written; the
    message names the account and the key ids involved, never a key.
    """


class InvalidTokenError(ConfigurationError):
    """A token handed to refresher (a ``token=`` seed, a login) it cannot use.

    Refused before anything is saved: ``access_token`` must be a string, ``expires_in`` a
    number of seconds and ``expires_at`` a number of epoch seconds, when present.
    """


class InsecureTransport(RefresherError, InsecureTransportError):
    """A token would go over plain http to a host that is not this machine.

    Also oauthlib's :class:`~oauthlib.oauth2.InsecureTransportError`, which
    requests-oauthlib raises for the same reason.
    """

    def __init__(self, message: str) -> None:
        InsecureTransportError.__init__(self, description=message)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


def install_advice(extra: str) -> str:
    """How to install refresher with its extra ``extra``, from where a user is: a checkout
    or a wheel they built (refresher is not on the package index). Quoted, for every shell.

    >>> print(install_advice("sql"))  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    pip install -e '.[sql]' in a checkout of refresher,
    or pip install 'refresher-...-py3-none-any.whl[sql]' with a wheel you built
    """
    from . import __version__  # the package is whole by the time an extra is missed

    return (f"pip install -e '.[{extra}]' in a checkout of refresher, or "
            f"pip install 'refresher-{__version__}-py3-none-any.whl[{extra}]' with a wheel "
            "you built")


class MissingExtra(RefresherError, ImportError):
    """What was used needs a library that one of refresher's extras installs, and it is
    not installed.

    ``extra`` is the extra's name (``"sql"``, ``"redis"``, ``"crypto"``, ``"keyring"``,
    ``"httpx"``, ``"aiohttp"``; ``None`` for a library no extra installs, such as a
    database driver of your choosing), ``name`` the library that could not be imported
    (as for any :class:`ImportError`). The message names the public class or module that
    needs it and says how to install the extra: ``pip install -e '.[sql]'`` in a checkout,
    or the wheel you built with ``[sql]`` after its name, quoted.
    Raised by ``import refresher.httpx`` and ``import refresher.aiohttp`` as they are
    imported; the stores raise :class:`MissingStoreExtra`, keys from the OS keyring
    :class:`MissingKeyringExtra`.
    """

    def __init__(self, needs: str, *, extra: str | None, name: str | None = None) -> None:
        super().__init__(f"{needs}: {install_advice(extra)}" if extra else needs)
        self.extra = extra
        self.name = name


class MissingStoreExtra(MissingExtra, TokenStoreError):
    """A store (:class:`~refresher.SQLTokenStore`, :class:`~refresher.RedisTokenStore`,
    :class:`~refresher.EncryptedTokenStore`) needs a library its extra installs: a
    :class:`MissingExtra` and a :class:`TokenStoreError`, raised when the store is made."""


class MissingKeyringExtra(MissingExtra, ConfigurationError):
    """A key was asked of the OS keyring (``keyring:NAME``) and the keyring library (the
    ``[keyring]`` extra) is not installed: a :class:`MissingExtra` and a
    :class:`ConfigurationError`."""
