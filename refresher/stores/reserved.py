"""Names refresher keeps for itself in a token store, beside the accounts.

A name that starts with ``refresher:`` is refresher's own: the logins under way of a
:class:`~refresher.LoginFlow` made with ``pending=`` live under one, in the very store that
holds the accounts they lead to (so every worker sharing the store sees them). Such a name
is never an account:

- the built-in stores leave it out of ``accounts()``, and refresher leaves it out wherever
  it lists a store's accounts (for a store of your own that lists every name it holds);
- every front end, the command line and ``$REFRESHER_ACCOUNT`` refuse it as an account
  name, with a :class:`~refresher.ConfigurationError`.

>>> is_reserved("refresher:pending-logins"), is_reserved("alice")
(True, False)
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ConfigurationError

__all__ = ["RESERVED_PREFIX", "is_reserved", "accounts_only", "check_account_name"]

#: Where the names refresher keeps for itself start.
RESERVED_PREFIX = "refresher:"


def is_reserved(name: str) -> bool:
    """Whether ``name`` is one of refresher's own entries, not an account."""
    return name.startswith(RESERVED_PREFIX)


def accounts_only(names: Iterable[str]) -> list[str]:
    """``names`` without refresher's own entries, in their order.

    >>> accounts_only(["alice", "refresher:pending-logins", "bob"])
    ['alice', 'bob']
    """
    return [name for name in names if not is_reserved(name)]


def check_account_name(name: str) -> str:
    """``name``, if it may name an account; :class:`~refresher.ConfigurationError` if it
    is one of refresher's own.

    >>> check_account_name("alice")
    'alice'
    """
    if is_reserved(name):
        raise ConfigurationError(
            f"account name {name!r} starts with {RESERVED_PREFIX!r}, which refresher keeps "
            "for its own entries in a store (the logins under way of LoginFlow(pending=...)): "
            "choose another account name"
        )
    return name
