"""The API v2 side of the emulator: ``/2/users/me`` and ``/2/tweets`` as X answers them, and
diagnostic routes under ``/2/emulator/`` that X does not have but clients need tested:
an echo, X's kinds of 403, a redirect, and a 401 to every token.

Every route here wants a live bearer token first (see :func:`with_bearer`), but the
always-401 one. A token without the scopes a route needs gets X's 403 problem, its
``detail`` naming the missing scopes (see :func:`missing_scopes`).

Every call with a live token counts against its route's window, per user and app, as X
counts: ``rate_limit`` calls per ``rate_window`` seconds on the emulator's clock (X's
documented figure for ``/2/users/me``, 75 per 15 minutes, by default), and its answer
carries the ``x-rate-limit-limit``, ``-remaining`` and ``-reset`` headers. Past the limit
it answers X's 429 problem only with ``enforce_rate_limits`` on (off by default, so that
demos and load tests are not limited).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from typing import TypeVar

from refresher.testing.emulator._messages import (
    PROBLEM,
    Request,
    Response,
    forbidden,
    json_answer,
    missing_scopes,
    problem,
    redirect,
    unauthorized,
)
from refresher.testing.emulator._state import AccessRecord, EmulatorState

logger = logging.getLogger("refresher.testing")

#: ``/2/emulator/forbidden/<kind>`` answers the 403 of that kind.
FORBIDDEN_PREFIX = "/2/emulator/forbidden/"

_DUPLICATE_TWEET = "You are not allowed to create a Tweet with duplicate content."
_USERS_ME_SCOPES = frozenset({"tweet.read", "users.read"})
# X's reference lists all three for POST /2/tweets, not only tweet.write.
_CREATE_TWEET_SCOPES = frozenset({"tweet.read", "tweet.write", "users.read"})
_ECHO_TEXT_LIMIT = 64 * 1024

_Side = TypeVar("_Side", bound=EmulatorState)


def with_bearer(
    handler: Callable[[_Side, Request, AccessRecord], Response],
) -> Callable[[_Side, Request], Response]:
    """Answer 401 unless the request carries a live access token; else count the call
    against its rate-limit window and call ``handler`` (or answer X's 429 past the limit,
    when limits are enforced), the ``x-rate-limit-*`` headers on the answer either way."""

    @functools.wraps(handler)
    def guarded(endpoints: _Side, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        access = endpoints._live_access(token.strip()) if scheme.lower() == "bearer" else None
        if access is None:
            return unauthorized()
        limited, headers = endpoints._count_call(access, f"{request.method} {request.path}")
        if limited:
            logger.debug("%s: rate limit reached for user %s", request.path, access.user_id)
            response = problem(429, "Too Many Requests", "Too Many Requests")
        else:
            response = handler(endpoints, request, access)
        response.headers.update(headers)
        return response

    return guarded


def scope_refusal(access: AccessRecord, needed: frozenset[str]) -> Response | None:
    """The 403 naming the scopes of ``needed`` that ``access`` lacks, or ``None``."""
    missing = needed - set(access.scopes)
    return missing_scopes(missing, access.scopes) if missing else None


class ApiEndpoints(EmulatorState):
    """``/2/users/me``, ``/2/tweets`` and the ``/2/emulator/`` diagnostic routes."""

    @with_bearer
    def _users_me(self, request: Request, access: AccessRecord) -> Response:
        refused = scope_refusal(access, _USERS_ME_SCOPES)
        if refused is not None:
            return refused
        with self._lock:
            user = dict(self._users[access.user_id])
        return json_answer(200, {"data": user})

    @with_bearer
    def _create_tweet(self, request: Request, access: AccessRecord) -> Response:
        refused = scope_refusal(access, _CREATE_TWEET_SCOPES)
        if refused is not None:
            return refused
        try:
            text = json.loads(request.body).get("text")
        except (ValueError, AttributeError):
            text = None
        if not isinstance(text, str) or not text:
            return json_answer(400, {
                "errors": [{"message": "Tweet text must be a non-empty string."}],
                "title": "Invalid Request",
                "detail": "One or more parameters to your request was invalid.",
                "type": "https://api.twitter.com/2/problems/invalid-request",
            }, PROBLEM)
        with self._lock:
            posted = self._tweets.setdefault(access.user_id, set())
            if text in posted:
                return forbidden(_DUPLICATE_TWEET)
            posted.add(text)
            self._next_tweet_id += 1
            tweet_id = str(self._next_tweet_id)
        return json_answer(201, {"data": {"id": tweet_id, "text": text}})

    # -- diagnostic routes -------------------------------------------------------------

    @with_bearer
    def _echo(self, request: Request, access: AccessRecord) -> Response:
        text: str | None = None
        if len(request.body) < _ECHO_TEXT_LIMIT:
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        return json_answer(200, {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "content_type": request.headers.get("content-type"),
            "body_length": len(request.body),
            "body_sha256": hashlib.sha256(request.body).hexdigest(),
            "body": text,
        })

    @with_bearer
    def _forbidden_kind(self, request: Request, access: AccessRecord) -> Response:
        kind = request.path[len(FORBIDDEN_PREFIX):]
        if kind == "plain":
            return forbidden()
        if kind == "duplicate":
            return forbidden(_DUPLICATE_TWEET)
        if kind == "client-forbidden":
            return json_answer(403, _client_forbidden(access.client_id), PROBLEM)
        if kind == "unsupported-authentication":
            return json_answer(403, _UNSUPPORTED_AUTHENTICATION, PROBLEM)
        return problem(404, "Not Found", f"No such forbidden kind: {kind}")

    def _always_unauthorized(self, request: Request) -> Response:
        """401 to every token, valid or not: X's intermittent 401s on valid credentials."""
        return unauthorized()

    @with_bearer
    def _redirect_to(self, request: Request, access: AccessRecord) -> Response:
        target = request.params().get("to")
        if not target:
            return problem(400, "Invalid Request", "Missing required parameter [to].")
        return redirect(target)


_UNSUPPORTED_AUTHENTICATION = {
    "title": "Unsupported Authentication",
    "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden for this endpoint. "
    " Supported authentication types are [OAuth 1.0a User Context, OAuth 2.0 User Context].",
    "type": "https://api.twitter.com/2/problems/unsupported-authentication",
    "status": 403,
}


def _client_forbidden(client_id: str) -> dict[str, str]:
    return {
        "client_id": client_id,
        "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use"
        " keys and tokens from a Twitter developer App that is attached to a Project. You can"
        " create a project via the developer portal.",
        "registration_url": "https://developer.twitter.com/en/docs/projects/overview",
        "title": "Client Forbidden",
        "required_enrollment": "Appropriate Level of API Access",
        "reason": "client-not-enrolled",
        "type": "https://api.twitter.com/2/problems/client-forbidden",
    }
