"""Send a session's calls to X's real hosts to an emulator instead (for offline tests)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import requests
from requests.adapters import HTTPAdapter

__all__ = ["route_to_emulator", "X_HOSTS"]

#: The hosts X's clients call: tweepy still uses api.twitter.com.
X_HOSTS = ("api.x.com", "api.twitter.com", "upload.x.com", "upload.twitter.com")


def route_to_emulator(session: requests.Session, emulator: Any,
                      hosts: Iterable[str] = X_HOSTS) -> None:
    """Mount adapters on ``session`` that send ``https://<host>/...`` to ``emulator.url``.

    Works with any :class:`requests.Session`; on a refreshing
    :class:`~refresher.RefreshingSession` the adapters keep its refresh-and-replay rule.
    This is how a tweepy bot, whose base URL is fixed, is tested offline::

        client = tweepy.Client(bearer_token="unused")
        client.session = session
        route_to_emulator(session, x_emulator)
        client.get_me(user_auth=False)
    """
    from refresher.adapter import RefreshingAdapter

    current = session.get_adapter("https://")
    base: type = RefreshingAdapter if isinstance(current, RefreshingAdapter) else HTTPAdapter
    target = emulator.url.rstrip("/")

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
