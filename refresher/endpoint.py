"""TokenEndpoint: the POSTs to X's token and revoke endpoints, and what their answers mean.

Nothing here logs or repeats a token or a secret: messages carry the endpoint's error code
and description (with any secret scrubbed out), never the form that was sent.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import requests

from ._attempts import Attempt, AttemptAbandoned, LazyLateAnswers, token_request_pool
from ._backoff import GrantRetries, asked_to_wait
from ._constants import DEFAULT_DEADLINE, DEFAULT_TIMEOUT
from ._endpoint_words import (
    EXCHANGE,
    REFRESH,
    REVOKE,
    Wording,
    content_type,
    failure,
    means_spent,
    refusal,
    scrub,
    too_soon,
)
from ._sendgate import SendGate
from ._token_post import (
    MIN_TIMEOUT,
    SHARED_SESSIONS,
    BodyCutOff,
    TokenPost,
    fresh_pools,
    was_sent,
    why_unreached,
)
from ._transport import require_secure_transport
from .clock import SYSTEM_CLOCK, Clock
from .errors import ReauthorizationRequired, RefreshError, RevokeError
from .policy import DEFAULT_POLICY, RefreshPolicy
from .shutdown import answer_arrived, check_not_stopping
from .token import Token, fingerprint, parse_grant

__all__ = ["TokenEndpoint", "DEFAULT_TIMEOUT", "DEFAULT_DEADLINE"]

log = logging.getLogger(__name__)

#: Answers retried within the deadline. 429 and 503 say X did not take the request. A 502 or
#: 504 comes from a gateway and proves less: X may have rotated the pair behind it. Then that
#: pair is lost whether or not we retry, and the retry is refused as a spent token; when X did
#: not act, the retry saves the account.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_WORDING = {"refresh_token": REFRESH, "authorization_code": EXCHANGE}

#: ``on_late_grant(pair)``: a pair X granted after the caller stopped waiting for it.
LateGrant = Callable[[Token], Any]


class TokenEndpoint:
    """A client of one OAuth 2.0 token endpoint, for one client id.

    A confidential client (``client_secret`` set) authenticates with HTTP Basic over the
    percent-encoded id and secret (RFC 6749 §2.3.1); a public client sends ``client_id``
    in the form. ``session`` is the :class:`requests.Session` every POST goes through, so
    callers can hand in their own retries, proxies or rate limiting; without one, the
    endpoint uses a session of its own (one per process).

    Only a connection that was never made, and the answers 429, 502, 503 and 504, are
    retried, ``retries`` times with exponential backoff; a 429 or 503 that says when to
    try again (``Retry-After``, seconds or an HTTP date, or ``x-rate-limit-reset``) no
    sooner than that. When that wait would cross the deadline, the grant fails at once with
    a :class:`RefreshError` whose ``retry_after`` says how long: nothing was spent. A
    timeout or a connection broken after the request went out is never retried: a refresh
    token is single-use, and X may have spent it. The whole grant (waiting for a thread,
    resolving the name, connecting, sending, the full answer, retries and backoff) ends
    within ``deadline`` seconds of wall-clock time, whatever the server does.

    Requests run on a bounded pool of threads per process (the policy's
    ``token_request_threads``). A request whose caller gave up is never written: the
    endpoint's own session checks right before the first byte. Errors say whether anything
    was sent (:attr:`~refresher.EndpointError.request_sent`).

    >>> endpoint = TokenEndpoint("https://api.x.com/2/oauth2/token", "my-client-id")
    >>> new_pair = endpoint.refresh(old_pair["refresh_token"])  # doctest: +SKIP
    """

    def __init__(
        self,
        token_url: str,
        client_id: str | None,
        client_secret: str | None = None,
        *,
        session: requests.Session | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        policy: RefreshPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        policy = policy if policy is not None else DEFAULT_POLICY
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self._callers_session = session
        self._session_pid = os.getpid()
        self.timeout = policy.token_timeout if timeout is None else timeout
        self.deadline = policy.token_deadline if deadline is None else deadline
        self.retries = policy.token_retries if retries is None else retries
        self.backoff = policy.token_backoff if backoff is None else backoff
        self.request_threads = policy.token_request_threads
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._late = LazyLateAnswers()  # made when an answer first comes late

    def __repr__(self) -> str:
        kind = "confidential" if self._client_secret else "public"
        return f"TokenEndpoint({self.token_url!r}, client_id={self.client_id!r}, {kind})"

    @property
    def confidential(self) -> bool:
        """True when the client authenticates with a secret."""
        return bool(self._client_secret)

    @property
    def session(self) -> requests.Session:
        """The session POSTs go through: the caller's, or this process's own gated one.

        A caller's session used again in a forked child first gets new, empty connection
        pools in its :class:`~requests.adapters.HTTPAdapter` s (same settings), so the child
        never talks on a socket it shares with the parent.
        """
        session = self._callers_session
        if session is None:  # gated, one per token URL and process: a fork makes its own
            return SHARED_SESSIONS.get(self.token_url)
        if self._session_pid != os.getpid():
            fresh_pools(session)
            self._session_pid = os.getpid()
        return session

    @session.setter
    def session(self, session: requests.Session) -> None:
        self._callers_session, self._session_pid = session, os.getpid()

    def close(self) -> None:
        """Nothing to close: a caller's session is the caller's, and the process's token
        sessions are shared by every endpoint of their URL (:data:`SHARED_SESSIONS`,
        ``SHARED_SESSIONS.close()`` drops their idle connections)."""

    # -- grants --------------------------------------------------------------------------

    def refresh(self, refresh_token: str, *, on_late_grant: LateGrant | None = None) -> Token:
        """Spend ``refresh_token`` for a new pair.

        Raises :class:`ReauthorizationRequired` when the endpoint says the refresh token
        is spent, revoked or unknown, and :class:`RefreshError` for every other failure.

        If the deadline passes after the request went out, X may still answer: a 200 that
        comes later is parsed as usual and handed to ``on_late_grant(pair)``, in a worker
        thread (what it raises is logged); without it, the lost pair is logged at ERROR.
        :meth:`wait_for_late_answers` waits for such answers.
        """
        check_not_stopping()  # SIGTERM came: no refresh token is spent any more
        return self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            secrets=(refresh_token,), on_late_grant=on_late_grant,
        )

    def exchange(self, code: str, *, redirect_uri: str, code_verifier: str) -> Token:
        """Trade an authorization code (PKCE) for the first token pair."""
        return self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            },
            secrets=(code, code_verifier),
        )

    def revoke(self, revoke_url: str, token: str, token_type_hint: str = "refresh_token") -> None:
        """Revoke ``token`` at ``revoke_url``; raises :class:`~refresher.RevokeError` when X
        refuses or cannot be reached."""
        form = {"token": token, "token_type_hint": token_type_hint}
        try:
            response = self._post(revoke_url, form, secrets=(token,), wording=REVOKE)
        except RefreshError as exc:
            raise RevokeError(str(exc), error=exc.error, response=exc.response,
                              request_sent=exc.request_sent,
                              retry_after=exc.retry_after) from None
        if response.status_code != 200:
            refused = refusal(response, REVOKE, revoke_url, secrets=self._secrets(
                (token,)), confidential=self.confidential, retry_after=self._asked(response))
            raise RevokeError(str(refused), error=refused.error, response=response,
                              retry_after=refused.retry_after)

    def wait_for_late_answers(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no request whose caller gave up after it was
        sent may still be answered (its ``on_late_grant`` has run); True if none may.

        Call it before spending a refresh token, so a token whose answer may still come is
        not sent again. In a forked child it waits out what the parent had in flight.
        """
        return self._late.wait(timeout)

    # -- plumbing ------------------------------------------------------------------------

    def _token_request(self, form: dict[str, str], *, secrets: Iterable[str],
                       on_late_grant: LateGrant | None = None) -> Token:
        grant = form["grant_type"]
        wording = _WORDING[grant]
        # Lifetimes count from when the request left: X starts its clock before the answer
        # reaches us, so counting from receipt would think the token lives longer than it does.
        sent_at = self.clock.time()

        def late(response: requests.Response) -> None:
            self._late_answer(response, form, sent_at, on_late_grant)

        response = self._post(self.token_url, form, secrets=secrets, wording=wording, late=late)
        answer_arrived()  # a SIGTERM now waits for this answer's pair to be saved
        if response.status_code == 200:
            return self._pair(response, form, sent_at)
        error = refusal(response, wording, self.token_url, secrets=self._secrets(secrets),
                        confidential=self.confidential, retry_after=self._asked(response))
        if grant == "refresh_token" and means_spent(error.error, response):
            raise ReauthorizationRequired(
                f"{error} — the refresh token is spent or revoked; log in again "
                "(for example with `refresher login`)",
                error=error.error,
                response=response,
            )
        raise error

    def _pair(self, response: requests.Response, form: Mapping[str, str],
              sent_at: float) -> Token:
        token = self._granted(response, form["grant_type"], sent_at)
        if form["grant_type"] == "refresh_token" and not token.get("refresh_token"):
            # An endpoint that does not rotate keeps the old one valid (RFC 6749 §6).
            token["refresh_token"] = form["refresh_token"]
        return token

    def _late_answer(self, response: requests.Response, form: Mapping[str, str],
                     sent_at: float, on_late_grant: LateGrant | None) -> None:
        """The answer to a request whose caller had given up after it was sent (a worker
        thread): a grant is handed to ``on_late_grant``, never thrown away unsaid."""
        grant = form["grant_type"]
        if response.status_code != 200:
            log.warning("token endpoint %s answered HTTP %d to a %s request after its caller "
                        "had given up", self.token_url, response.status_code, grant)
            return
        try:
            pair = self._pair(response, form, sent_at)
        except RefreshError as exc:
            log.error("a late answer to a %s request is unusable: %s", grant, exc)
            return
        access = fingerprint(pair.get("access_token"))
        if on_late_grant is None:
            log.error("token endpoint %s granted a %s after its caller had given up, and "
                      "nobody takes late grants: the new pair (access token %s) is lost",
                      self.token_url, grant, access)
            return
        try:
            on_late_grant(pair)
        except Exception:
            log.exception("on_late_grant raised on the pair granted late (access token %s)",
                          access)

    def _granted(self, response: requests.Response, grant: str, sent_at: float) -> Token:
        """The pair in a 200 answer. Never raises once the answer holds a refresh token.

        X has rotated the pair by now: what cannot be read is repaired (an unreadable expiry
        counts as expiring) and logged, so the caller can save the new refresh token before
        it judges the rest (a missing access token is the caller's to refuse, after saving).
        """
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not (
            answer.get("access_token") or answer.get("refresh_token")
        ):
            raise RefreshError(
                f"token endpoint {self.token_url} answered 200 without a token "
                f"({content_type(response)}); is the token URL right?",
                response=response,
            )
        token, problems = parse_grant(answer, now=sent_at)
        for problem in problems:
            log.warning("token endpoint %s granted %s with a flaw: %s; kept what could be "
                        "read (an unreadable expiry counts as expiring)",
                        self.token_url, grant, problem)
        log.debug("token endpoint granted %s", grant)
        return token

    def _post(self, url: str, form: Mapping[str, str], *, secrets: Iterable[str],
              wording: Wording,
              late: Callable[[requests.Response], None] | None = None) -> requests.Response:
        """POST ``form``; the answer with its body read, all within ``deadline`` seconds.

        Each attempt is a job on the process's pool of token request threads, waited for
        only until the deadline, so a slow resolver, connect or server cannot hold the
        caller (and the locks it holds) longer than that. Nothing is sent once the caller
        gave up; a request sent before keeps its worker, which hands a late answer to
        ``late`` and reads at most ``timeout`` seconds past the deadline.
        """
        require_secure_transport(url)
        data, auth = self._form_and_auth(form)
        session, pool = self.session, token_request_pool(self.request_threads)
        earlier_status = None
        give_up_at = self.clock.monotonic() + self.deadline
        retries = GrantRetries(self.retries, self.backoff, self.clock, give_up_at)
        secret_list = self._secrets(secrets)
        while True:
            # Real time: this waits on threads and sockets, whatever clock the caller reads.
            ends = time.monotonic() + max(0.0, give_up_at - self.clock.monotonic())
            timeout = max(MIN_TIMEOUT, self.timeout)
            post = TokenPost(session, url, data, auth, timeout=timeout, ends=ends,
                             read_until=ends + timeout)
            gate = SendGate()
            try:
                response = Attempt(post.work, gate, give_up_at=ends,
                                   late_until=ends + timeout,
                                   late=self._late_handler(url, late),
                                   late_answers=self._late).run(pool)
            except (AttemptAbandoned, BodyCutOff, requests.RequestException, OSError) as exc:
                sent = was_sent(gate, exc, session, url)
                if (sent is False and isinstance(exc, (requests.ConnectionError, OSError))
                        and retries.may_retry()):
                    retries.wait(f"cannot connect to {url}")
                    continue
                raise self._failure(exc, url, sent, retries.attempt, timeout, wording,
                                    secret_list, earlier_status) from None
            if response.status_code not in _RETRY_STATUSES:
                return response
            asked = self._asked(response)
            if asked is not None and not retries.fits(asked[0]):
                raise too_soon(response, wording, url, wait=asked[0], until=asked[1],
                               deadline=self.deadline)  # X did not act: nothing spent
            at_least = 0.0 if asked is None else asked[0]
            if not retries.may_retry(at_least):
                return response
            earlier_status = response.status_code
            retries.wait(f"{url} answered {response.status_code}", at_least)

    def _failure(self, exc: BaseException, url: str, sent: bool | None, attempt: int,
                 timeout: float, wording: Wording, secrets: Iterable[str],
                 earlier_status: int | None) -> RefreshError:
        unreached = why_unreached(exc)
        if isinstance(exc, AttemptAbandoned) and sent is False:
            stage = ("resolving its name or connecting took too long" if exc.started else
                     f"all {self.request_threads} token request threads were busy")
            head = (f"{url} was not reached within the {self.deadline:g} s deadline "
                    f"(attempt {attempt + 1}: {stage})")
        elif isinstance(exc, AttemptAbandoned):
            head = (f"{url} gave no complete answer within the {self.deadline:g} s deadline "
                    f"(attempt {attempt + 1})")
        elif isinstance(exc, BodyCutOff):
            head = f"the answer from {url} broke off before its end ({exc})"
        elif unreached is not None and sent is False:
            head = f"cannot reach {url}: {unreached}"
        elif isinstance(exc, requests.Timeout) and unreached is None:
            head = f"{url} did not answer within {timeout:.1f} s"
        elif isinstance(exc, (requests.ConnectionError, OSError)):
            head = f"the connection to {url} failed: {unreached or _describe(exc, secrets)}"
        else:
            head = f"request to {url} failed: {_describe(exc, secrets)}"
        return failure(head, sent, wording, earlier_status=earlier_status,
                             unreachable=unreached is not None or sent is False)

    def _late_handler(self, url: str, late: Callable[[requests.Response], None] | None
                      ) -> Callable[[requests.Response | None, BaseException | None], None]:
        def handle(response: requests.Response | None, error: BaseException | None) -> None:
            if response is not None and late is not None:
                late(response)
            elif error is not None:
                log.warning("the request to %s whose caller had given up got no answer: %s",
                            url, type(error).__name__)
        return handle

    def _form_and_auth(self, form: Mapping[str, str]
                       ) -> tuple[dict[str, str], requests.auth.HTTPBasicAuth | None]:
        data = dict(form)
        if self._client_secret:
            return data, requests.auth.HTTPBasicAuth(
                quote(self.client_id or "", safe=""), quote(self._client_secret, safe=""))
        if self.client_id:
            data["client_id"] = self.client_id
        return data, None

    def _asked(self, response: requests.Response) -> tuple[float, str] | None:
        """The seconds a 429 or 503 asks to wait, and until when in words; else ``None``."""
        return asked_to_wait(response.status_code, response.headers, self.clock)

    def _secrets(self, extra: Iterable[str]) -> tuple[str, ...]:
        return tuple(s for s in (*extra, self._client_secret) if s)


def _describe(exc: BaseException, secrets: Iterable[str]) -> str:
    return scrub(f"{type(exc).__name__}: {exc}", secrets)

