"""refresher: keep OAuth 2.0 user-context tokens for the X API v2 alive.

>>> import refresher
>>> store = refresher.JSONTokenStore("tokens.json")  # doctest: +SKIP
>>> session = refresher.RefreshingSession("client-id", store=store)  # doctest: +SKIP
>>> session.get("https://api.x.com/2/users/me")  # doctest: +SKIP

The public names, all importable from here (``__all__``):

- sessions: :class:`RefreshingSession`, :func:`open_session`, :class:`RefreshingAdapter`,
  :class:`RefreshCoordinator`, :class:`RefreshingFrontEnd`, :class:`FrontEndOptions`
  (the httpx and aiohttp front ends are ``refresher.httpx.RefreshingAuth`` and
  ``refresher.aiohttp.RefreshingMiddleware``);
- logging in: :class:`LoginFlow`, :class:`AuthorizationLink`;
- stores: :func:`open_store`, :class:`TokenStore`, :class:`Versioned`,
  :class:`MemoryTokenStore`, :class:`JSONTokenStore`, :class:`SQLTokenStore`,
  :class:`RedisTokenStore`, :class:`EncryptedTokenStore`, :func:`new_key`;
- the rule and its values: :class:`RefreshPolicy`, :class:`TokenState`, :class:`Token`,
  :class:`Clock`, :class:`Refusal`; :func:`graceful_shutdown`, :class:`Terminated`;
- X's endpoints: ``X_API_URL``, ``X_AUTHORIZE_URL``, ``X_TOKEN_URL``, ``X_REVOKE_URL``,
  ``DEFAULT_SCOPES``;
- errors, all under :class:`RefresherError` (see :mod:`refresher.errors`).

``LoginFlow``, ``AuthorizationLink``, ``SQLTokenStore``, ``RedisTokenStore``,
``EncryptedTokenStore`` and ``new_key`` are loaded on first use (their optional libraries
are imported only when a store is made), and listed by ``dir(refresher)`` all the same.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._constants import DEFAULT_SCOPES, X_API_URL, X_AUTHORIZE_URL, X_REVOKE_URL, X_TOKEN_URL
from .adapter import RefreshingAdapter
from .clock import Clock
from .coordinator import RefreshCoordinator
from .errors import (
    ConfigurationError,
    EncryptionKeyError,
    EndpointError,
    InsecureTransport,
    InvalidTokenError,
    LockLost,
    LockTimeout,
    LoginError,
    MissingExtra,
    MissingKeyringExtra,
    MissingStoreExtra,
    ReauthorizationRequired,
    RefresherError,
    RefreshError,
    RevokeError,
    StaleTokenError,
    TokenStoreError,
)
from .frontend import FrontEndOptions, RefreshingFrontEnd
from .policy import RefreshPolicy, TokenState
from .refusal import Refusal
from .session import RefreshingSession, open_session
from .shutdown import Terminated, graceful_shutdown
from .stores import JSONTokenStore, MemoryTokenStore, TokenStore, Versioned, open_store
from .token import Token

if TYPE_CHECKING:
    from .keys import new_key
    from .login import AuthorizationLink, LoginFlow
    from .stores.encrypted import EncryptedTokenStore
    from .stores.redis import RedisTokenStore
    from .stores.sql import SQLTokenStore

__version__ = "0.1.0"

__all__ = [
    "X_API_URL",
    "X_AUTHORIZE_URL",
    "X_REVOKE_URL",
    "X_TOKEN_URL",
    "DEFAULT_SCOPES",
    "RefreshingSession",
    "RefreshingAdapter",
    "RefreshingFrontEnd",
    "FrontEndOptions",
    "RefreshCoordinator",
    "RefreshPolicy",
    "TokenState",
    "Token",
    "Clock",
    "TokenStore",
    "Versioned",
    "Refusal",
    "MemoryTokenStore",
    "JSONTokenStore",
    "RedisTokenStore",
    "SQLTokenStore",
    "EncryptedTokenStore",
    "new_key",
    "open_store",
    "RefresherError",
    "EndpointError",
    "RefreshError",
    "ReauthorizationRequired",
    "TokenStoreError",
    "LockTimeout",
    "StaleTokenError",
    "LoginError",
    "RevokeError",
    "LockLost",
    "ConfigurationError",
    "EncryptionKeyError",
    "InvalidTokenError",
    "InsecureTransport",
    "MissingExtra",
    "MissingStoreExtra",
    "MissingKeyringExtra",
    "graceful_shutdown",
    "Terminated",
    "LoginFlow",
    "open_session",
    "AuthorizationLink",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __dir__() -> list[str]:
    # Every public name, the ones loaded on first use too (completion in a notebook, help()).
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    # RedisTokenStore is imported on first use (PEP 562): redis is an optional dependency.
    if name == "RedisTokenStore":
        from .stores.redis import RedisTokenStore

        return RedisTokenStore
    # So is SQLTokenStore: SQLAlchemy is an optional dependency too.
    if name == "SQLTokenStore":
        from .stores.sql import SQLTokenStore

        return SQLTokenStore
    # EncryptedTokenStore too (cryptography is imported when one is made), and new_key
    # beside it.
    if name == "EncryptedTokenStore":
        from .stores.encrypted import EncryptedTokenStore

        return EncryptedTokenStore
    if name == "new_key":
        from .keys import new_key

        return new_key
    # The login flow (a callback server, the browser) is imported on first use too.
    if name in ("LoginFlow", "AuthorizationLink"):
        from . import login

        return getattr(login, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
