"""RefreshingAdapter: the requests driver of the per-request rule.

The rule — bearer on, send, may a refresh cure this answer, refresh, replay, brake — is
:func:`refresher.flow.request_rule`, written once for every front end. This module only
translates: a prepared request's header and body, a response's status and problem type,
to the rule's plain values, and sends what the rule asks for. The coordinator knows tokens;
this module knows requests.

**The request mark (a contract with** :class:`~refresher.RefreshingSession` **).** The
adapter puts the bearer on a request only when the prepared request carries the attribute
``_refresher_sends_bearer`` set to true; :class:`BearerFromAdapter`, the ``auth`` the
session passes for every request that does not withhold the token, sets it. Any other
request (one the caller built, a redirect hop: requests prepares a new request for each,
unmarked) is sent with the headers it has; a 401/403 to it is still cured when it carried
the session's own token.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.utils import rewind_body

from ._retry_after import asked_wait
from .coordinator import RefreshCoordinator
from .flow import Answer, Describe, Facts, Send, Steps, TokenNeeded, Wait, request_rule, settled
from .token import Token
from .wire import bearer_token, problem_type

__all__ = ["RefreshingAdapter", "BearerFromAdapter"]

log = logging.getLogger(__name__)

_MARK = "_refresher_sends_bearer"


class BearerFromAdapter(requests.auth.AuthBase):
    """A requests ``auth`` that marks a request as one the adapter puts the bearer on.

    :class:`~refresher.RefreshingSession` passes it for every request that does not
    withhold the token. The mark lives on the prepared request only: a redirect (a new
    prepared request) is not marked, so a token never follows a redirect to another host.
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        setattr(request, _MARK, True)
        return request


class RefreshingAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` that keeps the bearer token alive.

    The rule (:func:`refresher.flow.request_rule`, which :meth:`send` drives):

    1. a request the session marked gets ``Authorization: Bearer <token>``, the token
       refreshed first when it is expiring;
    2. the answer is returned as it is unless the coordinator says a refresh may cure it: a
       status in ``refresh_status_codes``, to a token this session sent (not someone else's,
       not none: a redirect to another host carries none), not a 403 about the request
       rather than the token, not a 401 on the brake;
    3. otherwise refresh (coordinated: a sibling's newer token is adopted instead), rewind
       the body and replay the request once with the new token. A body that cannot be
       replayed (a generator) is not resent: the 401/403 is returned and the next call uses
       the new token. A replay answered 401 with the new token puts that endpoint and token
       on the brake.

    With the policy's ``wait_on_rate_limit``, a 429 that says when X's window resets within
    ``max_rate_limit_wait`` seconds is waited out (on the coordinator's clock) and sent
    once more; a body that cannot be replayed is not.

    The replay's answer is returned as it comes, whatever its status: never a loop.
    ``refresh_status_codes`` narrows the coordinator's policy for this adapter; extra
    keyword arguments go to :class:`HTTPAdapter` (``max_retries``, pool sizes).

    A child forked after the adapter was used starts with empty connection pools: it never
    sends on a keep-alive connection of its parent's (two processes on one socket read
    each other's answers).
    """

    def __init__(
        self,
        coordinator: RefreshCoordinator,
        refresh_status_codes: Collection[int] | None = None,
        **adapter_kwargs: Any,
    ) -> None:
        super().__init__(**adapter_kwargs)
        self.coordinator = coordinator
        self.refresh_status_codes = frozenset(
            coordinator.policy.refresh_status_codes if refresh_status_codes is None
            else refresh_status_codes
        )
        self._pid = os.getpid()  # a forked child gets pools of its own before its first send

    def _after_fork_in_child(self) -> None:
        # As HTTPAdapter.__setstate__ does: new pool managers, the parent's dropped without
        # a call on them (their locks may have been held by a parent thread at the fork).
        settings = vars(self)  # requests keeps the pool sizes here (its type stubs omit them)
        self.proxy_manager = {}
        self.init_poolmanager(settings["_pool_connections"], settings["_pool_maxsize"],
                              block=settings["_pool_block"])

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        """Drive :func:`refresher.flow.request_rule` for ``request`` (see the class
        docstring); the last answer."""
        if getattr(self, "_pid", None) != os.getpid():  # forked (or unpickled) since last use
            self._after_fork_in_child()
            self._pid = os.getpid()
        coordinator = self.coordinator
        put_bearer = getattr(request, _MARK, False)
        # Steps 1 and 2 of the rule, as it would ask them: the token, the send. The rule
        # itself is built only for an answer it does not settle at once (flow.settled).
        token = coordinator.token_for_request() if put_bearer else None
        if token is not None:
            _put_bearer(request, token)
        response = super().send(request, **kwargs)
        carried = _bearer(request)
        if settled(response.status_code, carried, self.refresh_status_codes,
                   coordinator.policy.longest_rate_limit_wait):
            return response
        return self._by_the_rule(request, kwargs, response, Answer(response.status_code, carried),
                                 put_bearer=put_bearer)

    def _by_the_rule(self, request: requests.PreparedRequest, kwargs: dict[str, Any],
                     response: requests.Response, answered: Answer, *,
                     put_bearer: bool) -> requests.Response:
        """Drive :func:`~refresher.flow.request_rule` on from the first ``response``."""
        coordinator = self.coordinator
        steps = Steps(request_rule(coordinator, self.refresh_status_codes,
                                   put_bearer=put_bearer,
                                   max_rate_limit_wait=coordinator.policy.longest_rate_limit_wait,
                                   answered=answered))
        for step in steps:
            if isinstance(step, TokenNeeded):
                steps.answer(coordinator.token_for_request())
            elif isinstance(step, Send):
                if step.replay:
                    response.content  # noqa: B018 — read it: the connection goes back to the pool
                    response.close()
                    request = request.copy()
                if step.token is not None:
                    _put_bearer(request, step.token)
                response = super().send(request, **kwargs)
                steps.answer(Answer(response.status_code, _bearer(request)))
            elif isinstance(step, Describe):
                steps.answer(Facts(f"{request.method} {_path(request)}",
                                   _problem_type(response), _rewind(request),
                                   _retry_after(response, coordinator)))
            elif isinstance(step, Wait):
                response.content  # noqa: B018 — read it: the connection goes back to the pool
                response.close()
                coordinator.clock.sleep(step.seconds)
            else:
                steps.answer(coordinator.refresh(replacing=step.replacing))
        return response


def _put_bearer(request: requests.PreparedRequest, token: Token) -> None:
    request.headers["Authorization"] = f"Bearer {token['access_token']}"


def _bearer(request: requests.PreparedRequest) -> str | None:
    return bearer_token(request.headers.get("Authorization"))


def _problem_type(response: requests.Response) -> str | None:
    """The problem+json ``type`` of a 403 (what X says the refusal is about), if any."""
    if response.status_code != 403:
        return None
    try:
        return problem_type(response.json())
    except ValueError:
        return None


def _retry_after(response: requests.Response, coordinator: RefreshCoordinator) -> float | None:
    """For a 429: the seconds until X's rate-limit window resets, if it says."""
    if response.status_code != 429:
        return None
    return asked_wait(response.headers, coordinator.clock.time())


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
