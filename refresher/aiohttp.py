"""RefreshingMiddleware: an aiohttp client middleware that keeps the bearer token alive.

.. code-block:: python

    middleware = RefreshingMiddleware("my-client-id", store="tokens.json", account="alice")
    async with aiohttp.ClientSession(middlewares=[middleware]) as session:
        async with session.get("https://api.x.com/2/users/me") as response:
            me = await response.json()

tweepy's ``AsyncClient`` takes such a session (``client.session = session``): its calls
then carry refresher's token, whatever ``bearer_token`` it was given. The rule — the
bearer on (refreshed first when expiring), send, and on a 401/403 that the coordinator says
a refresh may cure, refresh once and replay once — is :func:`refresher.flow.request_rule`;
the middleware only drives it, never blocking the event loop
(:class:`~refresher.frontend.AsyncTokens`).
Needs aiohttp 3.12 or later (client middlewares): the ``[aiohttp]`` extra.
"""

from __future__ import annotations

import contextvars

from .errors import MissingExtra

try:
    import aiohttp
    from yarl import URL
except ImportError as exc:  # an optional dependency: say how to get it
    raise MissingExtra("refresher.aiohttp needs aiohttp", extra="aiohttp",
                       name="aiohttp") from exc
if not hasattr(aiohttp, "ClientMiddlewareType"):
    raise MissingExtra(f"refresher.aiohttp needs aiohttp 3.12 or later (client middlewares), "
                       f"not {aiohttp.__version__}", extra="aiohttp", name="aiohttp")

from ._retry_after import asked_wait
from .flow import Answer, Describe, Facts, Send, Steps, TokenNeeded, Wait, request_rule, settled
from .frontend import RefreshingFrontEnd
from .wire import bearer_token, problem_type

__all__ = ["RefreshingMiddleware"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})

# aiohttp runs a session's middlewares again for every hop of a redirect, each hop a new
# request. A hop to another origin must not get the token (aiohttp drops the caller's
# Authorization there), nor any hop after it: the origin the next hop goes to is noted
# here, in the task's context, which the hop's middleware call shares.
_NEXT_HOP: contextvars.ContextVar[URL | None] = contextvars.ContextVar(
    "refresher_aiohttp_next_hop", default=None)


class RefreshingMiddleware(RefreshingFrontEnd):
    """An aiohttp client middleware: ``aiohttp.ClientSession(middlewares=[it])``.

    Takes :class:`~refresher.RefreshingSession`'s arguments (``client_id``, ``store``,
    ``account``, ``token``, ``token_url``, ``policy``, the hooks, ``refresh_session``,
    ``clock``...). Each request:

    1. gets ``Authorization: Bearer <token>`` (replacing any the caller set, such as
       tweepy's), the token refreshed first when it is expiring; plain http is refused
       except to this machine (:class:`~refresher.InsecureTransport`). A redirect hop to
       another origin, and every hop after it, goes without the token;
    2. is answered as it is, unless the coordinator says a refresh may cure the answer: a
       401/403 to a request that carried this token, not a 403 about the request, not a
       401 on the brake;
    3. else refresh once (coordinated: a sibling's newer token is adopted) and replay once.
       A body aiohttp cannot send again (an async generator) is not resent: the 401/403 is
       returned and the next request uses the new token. A replay answered 401 with the
       new token puts that endpoint and token on the brake.

    With ``wait_on_rate_limit``, a 429 that says when X's window resets within
    ``max_rate_limit_wait`` seconds is waited out (awaited: the event loop runs on) and sent
    once more; a body that cannot be replayed is not.
    """

    async def __call__(self, request: aiohttp.ClientRequest,
                       handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if _NEXT_HOP.get() is not None and _redirected_away(request):  # one lookup, mostly
            request.headers.pop("Authorization", None)
            return _noted(request, await handler(request), away=True)
        self._origin_check(request.url)
        # Steps 1 and 2 of the rule, as it would ask them: the token, the send. The rule
        # itself is built only for an answer it does not settle at once (flow.settled).
        token = self.coordinator.ready_token()  # AsyncTokens' hot path, with no coroutine
        if token is None:
            token = await self.tokens.token_for_request()
        carried = token["access_token"]
        request.headers["Authorization"] = f"Bearer {carried}"
        response = _noted(request, await handler(request), away=False)
        policy = self.policy
        if settled(response.status, carried, policy.refresh_status_codes,
                   policy.longest_rate_limit_wait):
            return response
        return await self._by_the_rule(request, handler, response,
                                       Answer(response.status, carried))

    async def _by_the_rule(self, request: aiohttp.ClientRequest,
                           handler: aiohttp.ClientHandlerType,
                           response: aiohttp.ClientResponse,
                           answered: Answer) -> aiohttp.ClientResponse:
        """Drive :func:`~refresher.flow.request_rule` on from the first ``response``."""
        clock = self.coordinator.clock
        steps = Steps(request_rule(self.coordinator, self.policy.refresh_status_codes,
                                   max_rate_limit_wait=self.policy.longest_rate_limit_wait,
                                   answered=answered))
        for step in steps:
            if isinstance(step, TokenNeeded):
                steps.answer(await self.tokens.token_for_request())
            elif isinstance(step, Send):
                if step.replay:
                    response.release()
                if step.token is not None:  # the hop carries what it is given: this token
                    carried: str | None = step.token["access_token"]
                    request.headers["Authorization"] = f"Bearer {carried}"
                else:
                    carried = bearer_token(request.headers.get("Authorization"))
                response = _noted(request, await handler(request), away=False)
                steps.answer(Answer(response.status, carried))
            elif isinstance(step, Describe):
                retry_after = (asked_wait(response.headers, clock.time())
                               if response.status == 429 else None)
                steps.answer(Facts(_endpoint(request), await _problem_type(response),
                                   _replayable(request), retry_after))
            elif isinstance(step, Wait):
                response.release()  # the connection goes back to the pool for the wait
                await clock.asleep(step.seconds)
            else:
                steps.answer(await self.tokens.refresh(replacing=step.replacing))
        return response


def _redirected_away(request: aiohttp.ClientRequest) -> bool:
    """Whether ``request`` is the hop of a redirect that left the token's origin."""
    hop = _NEXT_HOP.get()
    if hop is None:
        return False
    _NEXT_HOP.set(None)
    return hop == request.url.origin()


def _noted(request: aiohttp.ClientRequest, response: aiohttp.ClientResponse, *,
           away: bool) -> aiohttp.ClientResponse:
    """Note where a redirect's next hop goes when it must not get the token: to another
    origin than ``request``'s, or anywhere from a hop that is already ``away``."""
    location = response.headers.get("Location") if response.status in _REDIRECTS else None
    if location:
        try:
            target = request.url.join(URL(location)).origin()
        except ValueError:
            return response  # aiohttp refuses to follow it
        if away or target != request.url.origin():
            _NEXT_HOP.set(target)
    return response


def _endpoint(request: aiohttp.ClientRequest) -> str:
    """Method, scheme, host and path: enough to name the call, without the query string."""
    return f"{request.method} {request.url.with_query(None).with_fragment(None)}"


async def _problem_type(response: aiohttp.ClientResponse) -> str | None:
    """The problem+json ``type`` of a 403 (what X says the refusal is about), if any. The
    body stays readable for the caller."""
    if response.status != 403:
        return None
    try:
        return problem_type(await response.json(content_type=None))
    except (ValueError, aiohttp.ClientError):
        return None


def _replayable(request: aiohttp.ClientRequest) -> bool:
    """Whether the body can be sent again: none, bytes, a form, JSON, a seekable file
    (aiohttp seeks it back to where it started); not an async generator."""
    body = request.body
    return isinstance(body, bytes) or not body.consumed
