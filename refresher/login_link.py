"""The link to X's authorize page: a ``state``, a PKCE (S256) code verifier, the URL.

:meth:`LoginFlow.authorization_url <refresher.LoginFlow.authorization_url>` makes one per
login with :func:`new_link`; the state and the verifier come back to
:meth:`~refresher.LoginFlow.exchange` with the callback (from the caller, or from the
flow's store of logins under way: :mod:`refresher.pending_logins`).

The state is fresh and random unless the caller chooses one (a "return to" page, say); a
chosen one must still be unguessable, since it is what tells a real callback from a forged
one, so one shorter than :data:`MIN_STATE_LENGTH` characters is refused.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

from .errors import ConfigurationError
from .loopback import DEFAULT_REDIRECT_URI

__all__ = ["AuthorizationLink", "MIN_STATE_LENGTH", "MAX_STATE_LENGTH", "new_link",
           "checked_state", "checked_scopes"]

#: The shortest ``state`` a caller may choose: 16 characters (``secrets.token_urlsafe(12)``
#: makes 16 from 96 random bits).
MIN_STATE_LENGTH = 16
#: The longest ``state`` X takes.
MAX_STATE_LENGTH = 500


@dataclass(frozen=True)
class AuthorizationLink:
    """Where to send the user, and what :meth:`LoginFlow.exchange` needs when they return.

    ``state`` and ``code_verifier`` are fresh for every link (``state`` unless the caller
    chose it). Keep them on the server side (the verifier is the PKCE secret: it never goes
    to the browser; ``LoginFlow(pending=store)`` keeps them for you); ``repr`` leaves the
    verifier out. ``scopes`` are the ones the link asks for.

    >>> from refresher import LoginFlow
    >>> link = LoginFlow("my-client-id").authorization_url()
    >>> link.url.split("?")[1].startswith("response_type=code&client_id=my-client-id")
    True
    """

    url: str
    state: str
    code_verifier: str = field(repr=False)
    redirect_uri: str = DEFAULT_REDIRECT_URI
    scopes: tuple[str, ...] = ()


def new_link(authorize_url: str, client_id: str, redirect_uri: str,
             scopes: tuple[str, ...], state: str | None = None) -> AuthorizationLink:
    """A link to ``authorize_url`` with a fresh verifier, and ``state`` (checked by
    :func:`checked_state`) or a fresh one.

    >>> link = new_link("https://x.com/i/oauth2/authorize", "id", "http://127.0.0.1/cb",
    ...                 ("users.read",), state="return-to-/settings-Kq3v9")
    >>> "state=return-to-%2Fsettings-Kq3v9" in link.url, link.scopes
    (True, ('users.read',))
    """
    state = secrets.token_urlsafe(32) if state is None else checked_state(state)
    verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-] (RFC 7636: 43-128)
    query = urlencode({
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scopes),
        "state": state,
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
    })
    parts = urlsplit(authorize_url)
    url = urlunsplit(parts._replace(query="&".join(filter(None, [parts.query, query]))))
    return AuthorizationLink(url, state, verifier, redirect_uri, scopes)


def checked_state(state: str) -> str:
    """A caller's ``state``, if it can guard a login; :class:`~refresher.ConfigurationError`
    for one too short to be unguessable, or too long for X."""
    if not isinstance(state, str) or not MIN_STATE_LENGTH <= len(state) <= MAX_STATE_LENGTH:
        length = len(state) if isinstance(state, str) else type(state).__name__
        raise ConfigurationError(
            f"state must be a string of {MIN_STATE_LENGTH} to {MAX_STATE_LENGTH} characters "
            f"(got {length}): it is what tells your callback from a forged one, so it must "
            "be unguessable (say secrets.token_urlsafe(16) plus what you need to carry), and "
            "X takes no longer one"
        )
    return state


def checked_scopes(scopes: str | Iterable[str]) -> tuple[str, ...]:
    """``scopes`` (a space-separated string, or names) as a tuple;
    :class:`~refresher.ConfigurationError` when there are none."""
    names = tuple(scopes.split() if isinstance(scopes, str) else scopes)
    if not names:
        raise ConfigurationError(
            "scopes must not be empty: ask for at least tweet.read users.read "
            "offline.access (offline.access yields a refresh token)"
        )
    return names


def s256(verifier: str) -> str:
    """The PKCE S256 code challenge of ``verifier``."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
