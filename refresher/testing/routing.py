"""Send a session's calls to X's real hosts to an emulator instead (for offline tests):
an :class:`~refresher.testing.XEmulator` in this process, or one served elsewhere, by URL."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

__all__ = ["route_to_emulator", "X_HOSTS"]

#: The hosts X's clients call: tweepy still uses api.twitter.com.
X_HOSTS = ("api.x.com", "api.twitter.com", "upload.x.com", "upload.twitter.com")


def route_to_emulator(session: requests.Session, emulator: Any,
                      hosts: Iterable[str] = X_HOSTS) -> None:
    """Mount adapters on ``session`` that send ``https://<host>/...`` to the emulator.

    ``emulator`` is an :class:`~refresher.testing.XEmulator` (anything with a ``url``) or
    its URL, such as ``"http://127.0.0.1:8000"`` for ``refresher emulator`` in another
    process. Works with any :class:`requests.Session`; on a refreshing
    :class:`~refresher.RefreshingSession` the adapters keep its refresh-and-replay rule.
    This is how a tweepy bot, whose base URL is fixed, is tested offline::

        client = tweepy.Client(bearer_token="unused")
        client.session = session
        route_to_emulator(session, x_emulator)  # or "http://127.0.0.1:8000"
        client.get_me(user_auth=False)
    """
    from refresher.adapter import RefreshingAdapter

    current = session.get_adapter("https://")
    base: type = RefreshingAdapter if isinstance(current, RefreshingAdapter) else HTTPAdapter
    url = emulator if isinstance(emulator, str) else getattr(emulator, "url", None)
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"route_to_emulator needs an XEmulator or its URL, such as "
                         f"'http://127.0.0.1:8000'; got {emulator!r}")
    target = str(url).rstrip("/")

    class _Rerouted(base):  # type: ignore[misc, valid-type]
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            for host in hosts:
                prefix = f"https://{host}"
                if request.url and request.url.startswith(prefix):
                    request.url = target + request.url[len(prefix):]
            response: requests.Response = super().send(request, **kwargs)
            return response

    if isinstance(current, RefreshingAdapter):
        adapter = _Rerouted(current.coordinator, current.refresh_status_codes)
    else:
        adapter = _Rerouted()
    for host in hosts:
        session.mount(f"https://{host}/", adapter)
