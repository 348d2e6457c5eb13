"""RefreshingAuth: an ``httpx.Auth`` that keeps the bearer token alive, sync and async.

.. code-block:: python

    auth = RefreshingAuth("my-client-id", store="tokens.json", account="alice")
    async with httpx.AsyncClient(auth=auth) as client:     # or httpx.Client(auth=auth)
        me = (await client.get("https://api.x.com/2/users/me")).json()

The rule — the bearer on (refreshed first when expiring), send, and on a 401/403 that the
coordinator says a refresh may cure, refresh once and replay once — is
:func:`refresher.flow.request_rule`; both flows here only drive it, translating httpx's
requests and responses to its values. The async flow never blocks the event loop: a token
ready to send is read on the loop, anything else goes to a worker thread
(:class:`~refresher.frontend.AsyncTokens`). Needs the ``[httpx]`` extra.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

from .errors import MissingExtra

try:
    import httpx
except ImportError as exc:  # an optional dependency: say how to get it
    raise MissingExtra("refresher.httpx needs httpx", extra="httpx", name="httpx") from exc

from ._retry_after import asked_wait
from .clock import Clock
from .flow import Answer, Describe, Facts, Send, Steps, TokenNeeded, Wait, request_rule, settled
from .frontend import RefreshingFrontEnd
from .token import Token
from .wire import bearer_token, problem_type

__all__ = ["RefreshingAuth"]


class RefreshingAuth(RefreshingFrontEnd, httpx.Auth):
    """An :class:`httpx.Auth` for :class:`httpx.Client` and :class:`httpx.AsyncClient`.

    Takes :class:`~refresher.RefreshingSession`'s arguments (``client_id``, ``store``,
    ``account``, ``token``, ``token_url``, ``policy``, the hooks, ``refresh_session``,
    ``clock``...). Each request:

    1. gets ``Authorization: Bearer <token>``, the token refreshed first when it is
       expiring; plain http is refused except to this machine
       (:class:`~refresher.InsecureTransport`);
    2. is answered as it is, unless the coordinator says a refresh may cure the answer: a
       401/403 to the request that carried this token (httpx drops the header on a
       redirect to another origin, so that host's 401 refreshes nothing), not a 403 about
       the request, not a 401 on the brake;
    3. else refresh once (coordinated: a sibling's newer token is adopted) and replay once.
       A body that cannot be sent again (a generator, a file passed as ``content=``) is not
       resent: the 401/403 is returned and the next request uses the new token. A replay
       answered 401 with the new token puts that endpoint and token on the brake.

    With ``wait_on_rate_limit``, a 429 that says when X's window resets within
    ``max_rate_limit_wait`` seconds is waited out and sent once more (the async flow awaits
    the wait: the event loop runs on); a body that cannot be replayed is not.
    """

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request,
                                                                   httpx.Response, None]:
        coordinator = self.coordinator
        self._origin_check(request.url)
        response = yield _with_bearer(request, coordinator.token_for_request())
        answered = self._unsettled(response)
        if answered is None:
            return  # the common case: no rule built (see _unsettled)
        steps = self._rule(answered)
        for step in steps:
            if isinstance(step, TokenNeeded):
                steps.answer(coordinator.token_for_request())
            elif isinstance(step, Send):
                response = yield _with_bearer(request, step.token)
                steps.answer(_answer(response))
            elif isinstance(step, Describe):
                assert response is not None
                if step.status == 403:
                    response.read()  # its problem type says whether it is about the token
                steps.answer(_facts(request, response, coordinator.clock))
            elif isinstance(step, Wait):
                assert response is not None
                response.read()  # the connection goes back to the pool for the wait
                coordinator.clock.sleep(step.seconds)
            else:
                steps.answer(coordinator.refresh(replacing=step.replacing))

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request,
                                                                                httpx.Response]:
        self._origin_check(request.url)
        token = self.coordinator.ready_token()  # AsyncTokens' hot path, with no coroutine
        if token is None:
            token = await self.tokens.token_for_request()
        response = yield _with_bearer(request, token)
        answered = self._unsettled(response)
        if answered is None:
            return  # the common case: no rule built (see _unsettled)
        clock = self.coordinator.clock
        steps = self._rule(answered)
        for step in steps:
            if isinstance(step, TokenNeeded):
                steps.answer(await self.tokens.token_for_request())
            elif isinstance(step, Send):
                response = yield _with_bearer(request, step.token)
                steps.answer(_answer(response))
            elif isinstance(step, Describe):
                assert response is not None
                if step.status == 403:
                    await response.aread()  # its problem type says whether it is about the token
                steps.answer(_facts(request, response, clock))
            elif isinstance(step, Wait):
                assert response is not None
                await response.aread()  # the connection goes back to the pool for the wait
                await clock.asleep(step.seconds)
            else:
                steps.answer(await self.tokens.refresh(replacing=step.replacing))

    def _unsettled(self, response: httpx.Response) -> Answer | None:
        """The first answer as the rule takes it (the flows do its steps 1 and 2, the token
        and the send, themselves): ``None`` when the rule settles it at once
        (:func:`~refresher.flow.settled`: the common 2xx, for which no rule is built), else
        what the rule goes on from."""
        carried, policy = _bearer(response.request), self.policy
        if settled(response.status_code, carried, policy.refresh_status_codes,
                   policy.longest_rate_limit_wait):
            return None
        return Answer(response.status_code, carried)

    def _rule(self, answered: Answer) -> Steps:
        """The rule, on from the first answer."""
        return Steps(request_rule(self.coordinator, self.policy.refresh_status_codes,
                                  max_rate_limit_wait=self.policy.longest_rate_limit_wait,
                                  answered=answered))


def _with_bearer(request: httpx.Request, token: Token | None) -> httpx.Request:
    if token is not None:
        request.headers["Authorization"] = f"Bearer {token['access_token']}"
    return request


def _answer(response: httpx.Response) -> Answer:
    """``response.request`` is the last hop of any redirects: a hop to another origin
    carried no token (httpx strips it), so its 401 is judged as carrying none."""
    return Answer(response.status_code, _bearer(response.request))


def _facts(request: httpx.Request, response: httpx.Response, clock: Clock) -> Facts:
    retry_after = (asked_wait(response.headers, clock.time()) if response.status_code == 429
                   else None)
    return Facts(_endpoint(response.request), _problem_type(response), _replayable(request),
                 retry_after)


def _bearer(request: httpx.Request) -> str | None:
    value: str | None = request.headers.get("Authorization")
    return bearer_token(value)


def _endpoint(request: httpx.Request) -> str:
    """Method, scheme, host and path: enough to name the call, without the query string."""
    return f"{request.method} {request.url.copy_with(query=None, fragment=None)}"


def _problem_type(response: httpx.Response) -> str | None:
    """The problem+json ``type`` of a 403 (what X says the refusal is about), if any."""
    if response.status_code != 403:
        return None
    try:
        return problem_type(response.json())
    except ValueError:
        return None


def _replayable(request: httpx.Request) -> bool:
    """Whether the body can be sent again whole: bytes (``content=`` bytes, ``json=``,
    ``data=`` a form: httpx keeps them as a ByteStream, as it does a body already read), or
    multipart whose files httpx can seek back to their start. Not a generator, nor a file
    passed as ``content=``: those are read once."""
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return True
    fields = getattr(stream, "fields", None)  # httpx's multipart stream
    if isinstance(fields, list):
        return all(_rewindable(getattr(field, "file", b"")) for field in fields)
    return False


def _rewindable(file: object) -> bool:
    if isinstance(file, (bytes, str)):
        return True
    seekable = getattr(file, "seekable", None)
    try:
        return bool(seekable()) if callable(seekable) else False
    except (OSError, ValueError):
        return False
