"""RefreshingAdapter: on a 401/403 to a request that carried our token, refresh once, replay once.

The session puts the token on requests; this adapter only decides what to do when the
answer says the token was refused. Everything it needs to know about tokens it asks the
session's :class:`~refresher.coordinator.RefreshCoordinator`.
"""

from __future__ import annotations

import logging
from typing import Any, Collection, Optional

import requests
from requests.adapters import HTTPAdapter
from requests.utils import rewind_body

from .coordinator import RefreshCoordinator

__all__ = ["RefreshingAdapter"]

log = logging.getLogger(__name__)

_BEARER = "bearer "


class RefreshingAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` that cures expired tokens.

    The rule, in full:

    - the answer's status is not in ``refresh_status_codes``: return it;
    - the request did not carry a token this session sent (no bearer, another host after a
      redirect, a token of someone else's): return it;
    - the coordinator says a refresh cannot help (a 403 about the app, not the token):
      return it;
    - the endpoint answered 401 to this very token right after a refresh (the 401 brake):
      return it, since that 401 is not about the token;
    - otherwise refresh (coordinated: a sibling's newer token is adopted instead), and
      replay the request once with the new token, unless its body cannot be replayed (a
      generator), in which case the 401/403 is returned and the next call uses the new token.
      A replay answered 401 puts the endpoint and the new token on the brake.

    The replay's answer is returned as it comes, whatever its status: never a loop.
    Extra keyword arguments go to :class:`HTTPAdapter` (``max_retries``, pool sizes).
    """

    def __init__(
        self,
        coordinator: RefreshCoordinator,
        refresh_status_codes: Collection[int] = (401, 403),
        **adapter_kwargs: Any,
    ) -> None:
        super().__init__(**adapter_kwargs)
        self.coordinator = coordinator
        self.refresh_status_codes = frozenset(refresh_status_codes)

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        response = super().send(request, **kwargs)
        if response.status_code not in self.refresh_status_codes:
            return response
        sent = _bearer(request)
        if sent is None or not self.coordinator.sent_by_us(sent):
            return response
        endpoint = f"{request.method} {_path(request)}"
        if not self.coordinator.should_refresh_after(response, sent, endpoint):
            return response

        replayable = _rewind(request)
        log.info("%s %s answered %d; refreshing the token", request.method,
                 _path(request), response.status_code)
        fresh = self.coordinator.refresh(stale=sent)
        if not replayable:
            log.warning("%s %s has a body that cannot be replayed (a generator?); returning "
                        "the %d, the next request uses the new token", request.method,
                        _path(request), response.status_code)
            return response

        response.content  # noqa: B018 — read it, so the connection goes back to the pool
        response.close()
        replay = request.copy()
        replay.headers["Authorization"] = f"Bearer {fresh['access_token']}"
        answer = super().send(replay, **kwargs)
        if answer.status_code == 401:
            # Refused again with a token just refreshed: this 401 is not about the token.
            self.coordinator.refused_after_refresh(fresh["access_token"], endpoint)
        return answer


def _bearer(request: requests.PreparedRequest) -> Optional[str]:
    value = request.headers.get("Authorization")
    if not value or not value.lower().startswith(_BEARER):
        return None
    return value[len(_BEARER):]


def _rewind(request: requests.PreparedRequest) -> bool:
    """Put a file body back at its start; False when the body cannot be sent again."""
    body = request.body
    if body is None or isinstance(body, (bytes, str)):
        return True
    if isinstance(getattr(request, "_body_position", None), int):
        try:
            rewind_body(request)
        except requests.exceptions.UnrewindableBodyError:
            return False
        return True
    return False


def _path(request: requests.PreparedRequest) -> str:
    """Scheme, host and path: enough to name the call, without the query string."""
    url = request.url or ""
    return url.split("?", 1)[0]
