"""TokenEndpoint: the POSTs to X's token and revoke endpoints, and what their answers mean.

Nothing here logs or repeats a token or a secret: messages carry the endpoint's error code
and description (with any secret scrubbed out), never the form that was sent.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterable, Mapping, Optional
from urllib.parse import quote

import requests

from ._constants import DEFAULT_DEADLINE, DEFAULT_TIMEOUT
from ._transport import require_secure_transport
from .errors import ReauthorizationRequired, RefreshError
from .token import Token, normalize_token

__all__ = ["TokenEndpoint", "DEFAULT_TIMEOUT", "DEFAULT_DEADLINE"]

log = logging.getLogger(__name__)

#: Answers that mean "X did not take the request": retried, since resending spends nothing.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# How X (and others) say a refresh token is spent, revoked or unknown.
_SPENT_DESCRIPTIONS = ("value passed for the token was invalid",)


class TokenEndpoint:
    """A client of one OAuth 2.0 token endpoint, for one client id.

    A confidential client (``client_secret`` set) authenticates with HTTP Basic over the
    percent-encoded id and secret (RFC 6749 §2.3.1); a public client sends ``client_id``
    in the form. ``session`` is the :class:`requests.Session` every POST goes through, so
    callers can hand in their own retries, proxies or rate limiting.

    Only failures that prove X did not act on the request (no connection made, 429, 502,
    503, 504) are retried, ``retries`` times with exponential backoff, all within
    ``deadline`` seconds: a refresh token is single-use, and resending one that X already
    spent would lose the account.

    >>> endpoint = TokenEndpoint("https://api.x.com/2/oauth2/token", "my-client-id")
    >>> new_pair = endpoint.refresh(old_pair["refresh_token"])  # doctest: +SKIP
    """

    def __init__(
        self,
        token_url: str,
        client_id: Optional[str],
        client_secret: Optional[str] = None,
        *,
        session: Optional[requests.Session] = None,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        retries: int = 2,
        backoff: float = 0.25,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self.timeout = timeout
        self.deadline = deadline
        self.retries = retries
        self.backoff = backoff

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
        """Revoke ``token`` at ``revoke_url``; raises :class:`RefreshError` when refused."""
        form = {"token": token, "token_type_hint": token_type_hint}
        response = self._post(revoke_url, form, secrets=(token,))
        if response.status_code != 200:
            raise self._error_for(response, "revoke", secrets=(token,))

    # -- plumbing ------------------------------------------------------------------------

    def _token_request(
        self, form: Dict[str, str], *, secrets: Iterable[str], spent_means_reauthorize: bool
    ) -> Token:
        grant = form["grant_type"]
        response = self._post(self.token_url, form, secrets=secrets)
        if response.status_code == 200:
            try:
                answer = response.json()
            except ValueError:
                answer = None
            if not isinstance(answer, dict) or not answer.get("access_token"):
                raise RefreshError(
                    f"token endpoint {self.token_url} answered 200 without a token "
                    f"({_content_type(response)}); is the token URL right?",
                    response=response,
                )
            log.debug("token endpoint granted %s", grant)
            return normalize_token(answer)
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

    def _post(
        self, url: str, form: Mapping[str, str], *, secrets: Iterable[str]
    ) -> requests.Response:
        require_secure_transport(url)
        data = dict(form)
        auth: Optional[requests.auth.HTTPBasicAuth] = None
        if self._client_secret:
            auth = requests.auth.HTTPBasicAuth(
                quote(self.client_id or "", safe=""), quote(self._client_secret, safe="")
            )
        elif self.client_id:
            data["client_id"] = self.client_id
        attempt = 0
        give_up_at = time.monotonic() + self.deadline
        while True:
            timeout = max(0.1, min(self.timeout, give_up_at - time.monotonic()))
            try:
                response = self.session.post(
                    url,
                    data=data,
                    auth=auth,
                    headers={"Accept": "application/json"},
                    timeout=timeout,
                    allow_redirects=False,
                )
            except requests.ConnectionError as exc:
                if _never_sent(exc) and self._may_retry(attempt, give_up_at):
                    attempt += 1
                    self._sleep(attempt, f"cannot connect to {url}")
                    continue
                raise RefreshError(
                    f"cannot reach {url}: {_describe(exc, self._secrets(secrets))} — check the "
                    "URL and the network; the stored token is kept"
                ) from None
            except requests.Timeout:
                raise RefreshError(
                    f"{url} did not answer within {timeout:.1f} s; the stored token is kept"
                ) from None
            except requests.RequestException as exc:
                raise RefreshError(
                    f"request to {url} failed: {_describe(exc, self._secrets(secrets))}"
                ) from None
            if response.status_code in _RETRY_STATUSES and self._may_retry(attempt, give_up_at):
                attempt += 1
                self._sleep(attempt, f"{url} answered {response.status_code}")
                response.close()
                continue
            return response

    def _may_retry(self, attempt: int, give_up_at: float) -> bool:
        """Another try is allowed, and its backoff leaves time for an answer."""
        delay = self.backoff * (2 ** attempt)
        return attempt < self.retries and time.monotonic() + delay + 0.5 < give_up_at

    def _sleep(self, attempt: int, why: str) -> None:
        delay = self.backoff * (2 ** (attempt - 1))
        log.warning("%s; retrying in %.2f s (attempt %d of %d)", why, delay, attempt, self.retries)
        time.sleep(delay)

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
            parts.append("— this client may be confidential: pass client_secret")
        elif response.status_code >= 500 or response.status_code == 429:
            parts.append("— a failure at the endpoint; the stored token is kept, try again later")
        return RefreshError(" ".join(parts), error=error, response=response)


def _means_spent(error: Optional[str], response: requests.Response) -> bool:
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
