"""TokenEndpoint: the POSTs to X's token and revoke endpoints, and what their answers mean.

Nothing here logs or repeats a token or a secret: messages carry the endpoint's error code
and description (with any secret scrubbed out), never the form that was sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import requests

from ._constants import DEFAULT_DEADLINE, DEFAULT_TIMEOUT
from ._transport import require_secure_transport
from .clock import SYSTEM_CLOCK, Clock
from .errors import ReauthorizationRequired, RefreshError, RevokeError
from .policy import DEFAULT_POLICY, RefreshPolicy
from .token import Token, parse_grant

__all__ = ["TokenEndpoint", "DEFAULT_TIMEOUT", "DEFAULT_DEADLINE"]

log = logging.getLogger(__name__)

#: Answers retried within the deadline. 429 and 503 say X did not take the request. A 502 or
#: 504 comes from a gateway and proves less: X may have rotated the pair behind it. Then that
#: pair is lost whether or not we retry, and the retry is refused as a spent token; when X did
#: not act, the retry saves the account.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# The shortest per-read timeout an attempt gets, and the time a retry must leave for its answer.
_MIN_TIMEOUT = 0.1
_RETRY_HEADROOM = 0.5
# An answer larger than this is not a token: reading stops (a misconfigured URL, a hostile server).
_MAX_ANSWER_BYTES = 1 << 20
# How X (and others) say a refresh token is spent, revoked or unknown.
_SPENT_DESCRIPTIONS = ("value passed for the token was invalid",)


class TokenEndpoint:
    """A client of one OAuth 2.0 token endpoint, for one client id.

    A confidential client (``client_secret`` set) authenticates with HTTP Basic over the
    percent-encoded id and secret (RFC 6749 §2.3.1); a public client sends ``client_id``
    in the form. ``session`` is the :class:`requests.Session` every POST goes through, so
    callers can hand in their own retries, proxies or rate limiting.

    Only a connection that was never made, and the answers 429, 502, 503 and 504, are
    retried, ``retries`` times with exponential backoff. A timeout or a connection broken
    after the request went out is never retried: a refresh token is single-use, and X may
    have spent it. The whole grant (connect, send, the full answer, retries and backoff) ends
    within ``deadline`` seconds of wall-clock time, whatever the server does.

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
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self.timeout = policy.token_timeout if timeout is None else timeout
        self.deadline = policy.token_deadline if deadline is None else deadline
        self.retries = policy.token_retries if retries is None else retries
        self.backoff = policy.token_backoff if backoff is None else backoff
        self.clock = clock if clock is not None else SYSTEM_CLOCK

    def __repr__(self) -> str:
        kind = "confidential" if self._client_secret else "public"
        return f"TokenEndpoint({self.token_url!r}, client_id={self.client_id!r}, {kind})"

    @property
    def confidential(self) -> bool:
        """True when the client authenticates with a secret."""
        return bool(self._client_secret)

    def close(self) -> None:
        """Close the HTTP session, if this endpoint created it."""
        if self._owns_session:
            self.session.close()

    # -- grants --------------------------------------------------------------------------

    def refresh(self, refresh_token: str) -> Token:
        """Spend ``refresh_token`` for a new pair.

        Raises :class:`ReauthorizationRequired` when the endpoint says the refresh token
        is spent, revoked or unknown, and :class:`RefreshError` for every other failure.
        """
        answer = self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            secrets=(refresh_token,),
            spent_means_reauthorize=True,
        )
        if not answer.get("refresh_token"):
            # An endpoint that does not rotate keeps the old one valid (RFC 6749 §6).
            answer["refresh_token"] = refresh_token
        return answer

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
            spent_means_reauthorize=False,
        )

    def revoke(self, revoke_url: str, token: str, token_type_hint: str = "refresh_token") -> None:
        """Revoke ``token`` at ``revoke_url``; raises :class:`~refresher.RevokeError` when X
        refuses or cannot be reached."""
        form = {"token": token, "token_type_hint": token_type_hint}
        try:
            response = self._post(revoke_url, form, secrets=(token,))
        except RefreshError as exc:
            message = str(exc).replace("; the stored token is kept", "").replace(
                " — check the URL and the network", " — check the revoke URL and the network")
            raise RevokeError(message, error=exc.error, response=exc.response) from None
        if response.status_code != 200:
            refused = self._error_for(response, "revoke", secrets=(token,))
            raise RevokeError(str(refused).replace(
                "; the stored token is kept, try again later", "; try again later"),
                error=refused.error, response=response)

    # -- plumbing ------------------------------------------------------------------------

    def _token_request(
        self, form: dict[str, str], *, secrets: Iterable[str], spent_means_reauthorize: bool
    ) -> Token:
        grant = form["grant_type"]
        # Lifetimes count from when the request left: X starts its clock before the answer
        # reaches us, so counting from receipt would think the token lives longer than it does.
        sent_at = self.clock.time()
        response = self._post(self.token_url, form, secrets=secrets)
        if response.status_code == 200:
            return self._granted(response, grant, sent_at)
        what = {"refresh_token": "refresh", "authorization_code": "code exchange"}[grant]
        error = self._error_for(response, what, secrets=secrets)
        if spent_means_reauthorize and _means_spent(error.error, response):
            raise ReauthorizationRequired(
                f"{error} — the refresh token is spent or revoked; log in again "
                "(for example with `refresher login`)",
                error=error.error,
                response=response,
            )
        raise error

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
                f"({_content_type(response)}); is the token URL right?",
                response=response,
            )
        token, problems = parse_grant(answer, now=sent_at)
        for problem in problems:
            log.warning("token endpoint %s granted %s with a flaw: %s; kept what could be "
                        "read (an unreadable expiry counts as expiring)",
                        self.token_url, grant, problem)
        log.debug("token endpoint granted %s", grant)
        return token

    def _post(
        self, url: str, form: Mapping[str, str], *, secrets: Iterable[str]
    ) -> requests.Response:
        """POST ``form``; the answer with its body read, all within ``deadline`` seconds.

        Each attempt runs in a worker thread and is waited for only until the deadline, so
        a server that trickles its headers or body cannot hold the caller (and the locks it
        holds) longer than that. The worker stops reading a trickled body at the deadline.
        """
        require_secure_transport(url)
        data = dict(form)
        auth: requests.auth.HTTPBasicAuth | None = None
        if self._client_secret:
            auth = requests.auth.HTTPBasicAuth(
                quote(self.client_id or "", safe=""), quote(self._client_secret, safe="")
            )
        elif self.client_id:
            data["client_id"] = self.client_id
        attempt = 0
        give_up_at = self.clock.monotonic() + self.deadline
        secret_list = self._secrets(secrets)
        while True:
            timeout = max(_MIN_TIMEOUT, min(self.timeout, give_up_at - self.clock.monotonic()))
            try:
                response = _Attempt(self.session, url, data, auth, timeout,
                                    give_up_at - self.clock.monotonic()).run()
            except _DeadlinePassed:
                raise RefreshError(
                    f"{url} gave no complete answer within the {self.deadline:g} s deadline "
                    f"(attempt {attempt + 1}); the stored token is kept. If X received the "
                    "request it may have rotated the pair; the next refresh will tell"
                ) from None
            except _BodyCutOff as exc:
                raise RefreshError(
                    f"the answer from {url} broke off before its end ({exc}); X may already "
                    "have acted on the request. The stored token is kept; the next refresh "
                    "will tell whether it is still valid"
                ) from None
            except requests.ConnectionError as exc:
                if _never_sent(exc) and self._may_retry(attempt, give_up_at):
                    attempt += 1
                    self._sleep(attempt, f"cannot connect to {url}", give_up_at)
                    continue
                if _never_sent(exc):
                    raise RefreshError(
                        f"cannot reach {url}: {_describe(exc, secret_list)} — check the URL "
                        "and the network; the stored token is kept"
                    ) from None
                raise RefreshError(
                    f"the connection to {url} failed after the request was sent: "
                    f"{_describe(exc, secret_list)}; X may already have acted on it. The "
                    "stored token is kept; the next refresh will tell whether it is still valid"
                ) from None
            except requests.Timeout:
                raise RefreshError(
                    f"{url} did not answer within {timeout:.1f} s; the stored token is kept"
                ) from None
            except requests.RequestException as exc:
                raise RefreshError(
                    f"request to {url} failed: {_describe(exc, secret_list)}"
                ) from None
            if response.status_code in _RETRY_STATUSES and self._may_retry(attempt, give_up_at):
                attempt += 1
                self._sleep(attempt, f"{url} answered {response.status_code}", give_up_at)
                continue
            return response

    def _may_retry(self, attempt: int, give_up_at: float) -> bool:
        """Another try is allowed, and its backoff leaves time for an answer."""
        delay = self.backoff * (2 ** attempt)
        return (attempt < self.retries
                and self.clock.monotonic() + delay + _RETRY_HEADROOM < give_up_at)

    def _sleep(self, attempt: int, why: str, give_up_at: float) -> None:
        delay = self.backoff * (2 ** (attempt - 1))
        delay = max(0.0, min(delay, give_up_at - self.clock.monotonic() - _RETRY_HEADROOM))
        log.warning("%s; retrying in %.2f s (attempt %d of %d)", why, delay, attempt, self.retries)
        self.clock.sleep(delay)

    def _secrets(self, extra: Iterable[str]) -> tuple[str, ...]:
        return tuple(s for s in (*extra, self._client_secret) if s)

    def _error_for(
        self, response: requests.Response, what: str, *, secrets: Iterable[str]
    ) -> RefreshError:
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        if not isinstance(error, str):
            error = None
        parts = [f"{what} at {response.url or self.token_url} failed: HTTP {response.status_code}"]
        if error:
            parts.append(error)
        if isinstance(description, str) and description:
            parts.append(f"({_scrub(description, self._secrets(secrets))})")
        elif body is None:
            parts.append(f"({_content_type(response)} body)")
        if response.status_code == 401 and self._client_secret:
            parts.append("— check the client id and client secret")
        elif response.status_code == 401:
            parts.append("— X does not know this client id, or it is a confidential "
                         "client's: check the client id, or pass client_secret")
        elif response.status_code >= 500 or response.status_code == 429:
            parts.append("— a failure at the endpoint; the stored token is kept, try again later")
        return RefreshError(" ".join(parts), error=error, response=response)


def _means_spent(error: str | None, response: requests.Response) -> bool:
    if error == "invalid_grant":
        return True
    if error != "invalid_request":
        return False
    try:
        description = str(response.json().get("error_description", "")).lower()
    except (ValueError, AttributeError):
        return False
    return any(text in description for text in _SPENT_DESCRIPTIONS)


def _never_sent(exc: requests.ConnectionError) -> bool:
    """True when the connection failed before the request could reach the server."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    text = repr(exc)
    return "NewConnectionError" in text or "Connection refused" in text


def _content_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "no content type").split(";")[0]


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text[:300]


def _describe(exc: BaseException, secrets: Iterable[str]) -> str:
    return _scrub(f"{type(exc).__name__}: {exc}", secrets)


class _DeadlinePassed(Exception):
    """The attempt had no complete answer at the grant's deadline."""


class _BodyCutOff(Exception):
    """The answer's headers came, and its body stopped or broke before its end."""


class _Attempt:
    """One POST, run in a daemon thread and waited for at most ``budget`` seconds.

    The thread streams the body in chunks and stops at the deadline, so a server that
    trickles its body is dropped then. One that trickles its *headers* keeps the thread
    (never the caller) until the per-read ``timeout`` ends it: requests reads headers in
    one call that nothing outside can interrupt.
    """

    def __init__(self, session: requests.Session, url: str, data: dict[str, str],
                 auth: requests.auth.HTTPBasicAuth | None, timeout: float,
                 budget: float) -> None:
        self._session, self._url, self._data, self._auth = session, url, data, auth
        # Real time: this waits on a thread and a socket, whatever clock the caller reads.
        self._timeout, self._give_up_at = timeout, time.monotonic() + max(0.0, budget)
        self._done = threading.Event()
        self._abandoned = threading.Event()
        self._response: requests.Response | None = None
        self._error: BaseException | None = None

    def run(self) -> requests.Response:
        worker = threading.Thread(target=self._work, name="refresher-token-request",
                                  daemon=True)
        worker.start()
        if not self._done.wait(max(0.0, self._give_up_at - time.monotonic())):
            self._abandoned.set()
            raise _DeadlinePassed()
        if self._error is not None:
            raise self._error
        assert self._response is not None
        return self._response

    def _work(self) -> None:
        try:
            response = self._session.post(
                self._url, data=self._data, auth=self._auth,
                headers={"Accept": "application/json"}, timeout=self._timeout,
                allow_redirects=False, stream=True,
            )
            try:
                self._read_body(response)
            finally:
                response.close()
            self._response = response
        except BaseException as exc:  # handed to the waiting thread
            self._error = exc
        finally:
            self._done.set()

    def _read_body(self, response: requests.Response) -> None:
        body = bytearray()
        try:
            for chunk in response.iter_content(chunk_size=8192):
                body += chunk
                if self._abandoned.is_set() or time.monotonic() > self._give_up_at:
                    raise _BodyCutOff("the deadline passed while the body was arriving")
                if len(body) > _MAX_ANSWER_BYTES:
                    raise _BodyCutOff(f"more than {_MAX_ANSWER_BYTES} bytes: not a token answer")
        except requests.RequestException as exc:
            raise _BodyCutOff(type(exc).__name__) from None
        response._content = bytes(body)
        setattr(response, "_content_consumed", True)  # noqa: B010 — not in requests' stubs
