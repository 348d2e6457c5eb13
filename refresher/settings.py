"""Settings for scripts, cron jobs and the command line.

A setting comes from an explicit value, else what ``refresher login`` recorded in the store
beside the account's token (client id, endpoints: never the secret), else its
``REFRESHER_*`` environment variable (:data:`ENVIRONMENT`), else X's default: the client and
server an account was logged in with outrank a variable left over from another shell (an
emulator's token URL, another app's client id), which could only be refused there. The store
itself is found at :func:`default_store_location`, and the account chosen by
:func:`choose_account`.

:func:`saved_account_arguments` puts them together for a front end:
:func:`~refresher.open_session` (beside :class:`~refresher.RefreshingSession`) and the async
front ends' ``open()`` build from it, with nothing repeated.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from ._constants import X_API_URL, X_AUTHORIZE_URL, X_REVOKE_URL, X_TOKEN_URL
from .errors import ConfigurationError, ReauthorizationRequired
from .keys import KEY_VARIABLE
from .loopback import DEFAULT_REDIRECT_URI
from .stores import TokenStore, open_store
from .stores.reserved import accounts_only, check_account_name

log = logging.getLogger(__name__)

__all__ = [
    "ENVIRONMENT",
    "choose_account",
    "default_store_location",
    "describe_store",
    "resolve_setting",
    "saved_account_arguments",
    "wanted_account",
]

#: The environment variable of each setting the command line and
#: :func:`~refresher.open_session` read.
ENVIRONMENT: Mapping[str, str] = MappingProxyType({
    "store": "REFRESHER_STORE",
    "account": "REFRESHER_ACCOUNT",
    "client_id": "REFRESHER_CLIENT_ID",
    "client_secret": "REFRESHER_CLIENT_SECRET",
    "token_url": "REFRESHER_TOKEN_URL",
    "api_url": "REFRESHER_API_URL",
    "authorize_url": "REFRESHER_AUTHORIZE_URL",
    "revoke_url": "REFRESHER_REVOKE_URL",
    "redirect_uri": "REFRESHER_REDIRECT_URI",
    "key": KEY_VARIABLE,  # read by open_store: see refresher.keys
})

_DEFAULTS: Mapping[str, str] = MappingProxyType({
    "token_url": X_TOKEN_URL,
    "api_url": X_API_URL,
    "authorize_url": X_AUTHORIZE_URL,
    "revoke_url": X_REVOKE_URL,
    "redirect_uri": DEFAULT_REDIRECT_URI,
})


def default_store_location() -> str:
    """``$REFRESHER_STORE``, else ``tokens.json`` in the user's config folder.

    The config folder is ``$XDG_CONFIG_HOME/refresher``, else ``~/.config/refresher``
    (``%APPDATA%\\refresher`` on Windows). The JSON store creates it mode 0700.

    >>> default_store_location()  # doctest: +SKIP
    '/home/me/.config/refresher/tokens.json'
    """
    configured = os.environ.get(ENVIRONMENT["store"])
    if configured:
        return configured
    base = os.environ.get("XDG_CONFIG_HOME") or (
        os.environ.get("APPDATA") if os.name == "nt" else None
    ) or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "refresher", "tokens.json")


def resolve_setting(name: str, explicit: str | None, metadata: Mapping[str, Any], *,
                    new_login: bool = False) -> str | None:
    """One setting (a key of :data:`ENVIRONMENT`): ``explicit``, else the account's record
    (``metadata``: what ``refresher login`` saved beside its token), else its
    ``REFRESHER_*`` variable, else X's default (``None`` if none).

    The record outranks the variable: an account's refresh token is spent with the client id
    and at the token URL it was issued to (anywhere else it can only be refused), and its
    API and revoke URLs belong to the same server. A variable that disagrees with the record
    is logged as a WARNING naming both values (never a secret; once per process), and an
    explicit value outranks both. ``new_login``: a login that is about to replace the
    record, which chooses its client and server anew, so the variable outranks the old
    record (the disagreement is logged all the same). The client secret is never taken from
    the record.

    >>> resolve_setting("token_url", "http://127.0.0.1:8000/2/oauth2/token", {})
    'http://127.0.0.1:8000/2/oauth2/token'
    >>> resolve_setting("client_id", None, {"client_id": "the-logged-in-app"})
    'the-logged-in-app'
    """
    if explicit:
        return explicit
    variable = ENVIRONMENT[name]
    from_env = os.environ.get(variable) or None
    recorded = metadata.get(name) if name != "client_secret" else None
    if not (isinstance(recorded, str) and recorded):
        return from_env or _DEFAULTS.get(name)
    if from_env is not None and from_env != recorded and _first_time(
            (variable, from_env, recorded)):
        label = _LABELS.get(name, name)
        if new_login:
            log.warning("%s=%s replaces the %s the account was logged in with (%s)",
                        variable, from_env, label, recorded)
        else:
            log.warning("%s=%s is not the %s the account was logged in with (%s): using the "
                        "account's; give it as an argument or option to use another",
                        variable, from_env, label, recorded)
    return from_env if new_login and from_env else recorded


_LABELS = {"client_id": "client id", "token_url": "token URL", "api_url": "API URL",
           "authorize_url": "authorize URL", "revoke_url": "revoke URL",
           "redirect_uri": "redirect URI"}
_warned: set[tuple[str, str, str]] = set()


def _first_time(disagreement: tuple[str, str, str]) -> bool:
    """Whether this disagreement is new in this process (each is logged once, not at every
    open_session of a long-running program). Remembers a bounded number."""
    if disagreement in _warned:
        return False
    if len(_warned) < 256:
        _warned.add(disagreement)
    return True


def wanted_account(explicit: str | None = None) -> str | None:
    """The account asked for: ``explicit``, else ``$REFRESHER_ACCOUNT``, else ``None``.

    An empty (or blank) ``REFRESHER_ACCOUNT`` counts as unset, as shells make
    ``VAR= command`` the usual way to clear a variable for one command; an empty
    ``explicit`` means "not chosen" too. A name refresher keeps for itself (``refresher:``,
    see :mod:`refresher.stores.reserved`) is a :class:`~refresher.ConfigurationError`.

    >>> wanted_account("alice")
    'alice'
    """
    from_env = os.environ.get(ENVIRONMENT["account"]) or ""
    wanted = explicit or (from_env if from_env.strip() else None)
    return None if wanted is None else check_account_name(wanted)


def choose_account(store: TokenStore, wanted: str | None = None) -> str:
    """The account to use: :func:`wanted_account`, else the store's only one.

    Raises :class:`~refresher.ConfigurationError` (a :class:`ValueError`) for an unknown
    account or a store with several (choose one), and
    :class:`~refresher.ReauthorizationRequired` for an empty store (log in first).

    >>> from refresher import MemoryTokenStore
    >>> store = MemoryTokenStore()
    >>> with store.lock("alice"):
    ...     store.save("alice", {"access_token": "a", "refresh_token": "r"})
    >>> choose_account(store, "alice")
    'alice'
    """
    name = wanted_account(wanted)
    accounts = accounts_only(store.accounts())  # a store of your own may list its logins
    where = describe_store(store)
    if name:
        if name not in accounts:
            if accounts:
                choice = (f"the accounts there are {', '.join(accounts)}: pick one of them "
                          "(--account NAME, or REFRESHER_ACCOUNT), or log")
            else:
                choice = "it holds no account yet: log"
            raise ConfigurationError(
                f"no account {name!r} in {where}; {choice} {name!r} in with: "
                f"refresher login --account {name}"
            )
        return name
    if not accounts:
        raise ReauthorizationRequired(
            f"no accounts in {where}; log in first: "
            "refresher login --client-id YOUR_CLIENT_ID"
        )
    if len(accounts) > 1:
        raise ConfigurationError(
            f"{where} holds several accounts ({', '.join(accounts)}); "
            "choose one (--account NAME, or REFRESHER_ACCOUNT)"
        )
    return accounts[0]


def describe_store(store: TokenStore) -> str:
    """A store's name for a message: the file of a JSON store, else its (password-free) repr.

    >>> from refresher import MemoryTokenStore
    >>> describe_store(MemoryTokenStore())
    'MemoryTokenStore(accounts=[])'
    """
    path = getattr(store, "path", None)
    return str(path) if path is not None else repr(store)


def saved_account_arguments(
    account: str | None = None,
    *,
    store: TokenStore | str | os.PathLike[str] | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The constructor arguments for an account ``refresher login`` saved, found as
    :func:`~refresher.open_session` describes (for a session, or an async front end's
    ``open()``):
    ``client_id``, ``client_secret``, ``store`` (opened), ``account``, ``token_url``,
    ``api_url``, and ``kwargs`` as given."""
    if store is None or isinstance(store, (str, os.PathLike)):
        store = open_store(store if store is not None else default_store_location())
    name = choose_account(store, account)
    metadata = store.load_metadata(name)
    client = resolve_setting("client_id", client_id, metadata)
    if not client:
        raise ConfigurationError(
            f"no client id for account {name!r}: pass client_id, set REFRESHER_CLIENT_ID, "
            "or log the account in with `refresher login`"
        )
    secret = resolve_setting("client_secret", client_secret, metadata)
    if metadata.get("confidential") and not secret:
        raise ConfigurationError(
            f"account {name!r} belongs to the confidential client {client!r}: pass "
            "client_secret or set REFRESHER_CLIENT_SECRET"
        )
    kwargs.setdefault("token_url", resolve_setting("token_url", None, metadata))
    if "api_url" not in kwargs and "api_base_url" not in kwargs:
        kwargs["api_url"] = resolve_setting("api_url", None, metadata)
    return dict(kwargs, client_id=client, client_secret=secret, store=store, account=name)


class LoginSettings(Protocol):
    """What :func:`record_login` reads of a login (a :class:`~refresher.LoginFlow`)."""

    client_id: str
    authorize_url: str
    token_url: str
    api_url: str
    revoke_url: str
    redirect_uri: str
    scopes: tuple[str, ...]

    @property
    def confidential(self) -> bool: ...


def record_login(store: TokenStore | None, account: str, login: LoginSettings,
                 token: Mapping[str, Any], lock_timeout: float | None = None) -> None:
    """Save, beside a new login's pair, what it was logged in with (the client id, whether
    it is confidential, the URLs, the scopes X granted; never a secret) and when, under the
    account's lock. It replaces the account's earlier record, refusals included: they were
    about the pair this login replaced. :func:`saved_account_arguments` reads it back.
    A store that keeps no metadata records nothing."""
    if store is None or not store.keeps_metadata:
        return
    record = {name: getattr(login, name) for name in (
        "client_id", "confidential", "authorize_url", "token_url", "api_url", "revoke_url",
        "redirect_uri")}
    record["scopes"] = str(token.get("scope") or " ".join(login.scopes)).split()
    with store.lock(account, timeout=lock_timeout):
        store.save_metadata(account, {**record, "logged_in_at": time.time()})
