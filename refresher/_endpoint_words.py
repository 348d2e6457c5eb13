"""What the token endpoint's refusals and failures mean, in words for the person who acts.

A message says what failed, whether the request was sent (so whether X may have acted on
it), and what that means for what the request was for: a refresh (the stored token is
kept), a login's code exchange (there is no stored token; a code serves once) or a revoke.
No message repeats a token, a code or a secret: descriptions are scrubbed of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import requests

from .errors import RefreshError

__all__ = ["Wording", "REFRESH", "EXCHANGE", "REVOKE", "refusal", "failure", "too_soon",
           "means_spent", "content_type", "scrub"]

# How X (and others) say a refresh token is spent, revoked or unknown.
_SPENT_DESCRIPTIONS = ("value passed for the token was invalid",)


class Wording(NamedTuple):
    """How failures read, by what the request was for."""

    what: str     # "refresh", "code exchange", "revoke"
    unsent: str   # what still holds when nothing was sent
    sent: str     # what to expect when X may have acted on it
    check: str    # what to check when the endpoint cannot be reached
    later: str    # after a 429 or 5xx answer


REFRESH = Wording(
    "refresh", "the refresh token is still good and the stored token is kept",
    "The stored token is kept; the next refresh will tell whether it is still valid",
    "check the URL and the network", "the stored token is kept, try again later")
EXCHANGE = Wording(
    "code exchange", "the code was not used",
    "A code serves once: start the login again",
    "check the token URL and the network, then start the login again",
    "start the login again later")
REVOKE = Wording(
    "revoke", "nothing was revoked",
    "X may have revoked the token; revoking again tells", "check the revoke URL and the network",
    "try again later")


def failure(head: str, sent: bool | None, wording: Wording, *, unreachable: bool = False,
            earlier_status: int | None = None) -> RefreshError:
    """The error for a request that got no usable answer; ``head`` says what happened."""
    if sent is False and earlier_status is not None:
        message = f"{head}; an earlier try was answered HTTP {earlier_status}. {wording.sent}"
    elif sent is False:
        check = f"; {wording.check}" if unreachable else ""
        message = f"{head} — nothing was sent; {wording.unsent}{check}"
    elif sent:
        message = f"{head}; the request was sent, and X may already have acted on it. " \
                  f"{wording.sent}"
    else:
        message = (f"{head}; refresher cannot tell whether the request reached X (the "
                   f"session it went through may have retried it). {wording.sent}")
    request_sent = True if earlier_status is not None else sent
    return RefreshError(message, request_sent=request_sent)


def too_soon(response: requests.Response, wording: Wording, url: str, *, wait: float,
             until: str, deadline: float) -> RefreshError:
    """The error for a 429 or 503 that asks to wait ``wait`` seconds (until ``until``),
    past the grant's ``deadline``: raised at once, nothing spent."""
    return RefreshError(
        f"{wording.what} at {url}: HTTP {response.status_code}, and the endpoint asks to wait "
        f"{wait:.0f} s, past this request's {deadline:g} s deadline — X did not act on it: "
        f"{wording.unsent}. Try again after {until}",
        response=response, retry_after=wait)


def refusal(response: requests.Response, wording: Wording, url: str, *,
            secrets: Iterable[str], confidential: bool,
            retry_after: tuple[float, str] | None = None) -> RefreshError:
    """The error for a non-200 answer: its code, its description (scrubbed), what to do.
    ``retry_after``: the seconds the answer asked to wait, and until when, in words."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    description = body.get("error_description") if isinstance(body, dict) else None
    if not isinstance(error, str):
        error = None
    parts = [f"{wording.what} at {response.url or url} failed: HTTP {response.status_code}"]
    if error:
        parts.append(error)
    if isinstance(description, str) and description:
        parts.append(f"({scrub(description, secrets)})")
    elif body is None:
        parts.append(f"({content_type(response)} body)")
    if response.status_code == 401 and confidential:
        parts.append("— check the client id and client secret")
    elif response.status_code == 401:
        parts.append("— X does not know this client id, or it is a confidential "
                     "client's: check the client id, or pass client_secret")
    elif retry_after is not None:
        parts.append(f"— the endpoint asks to wait {retry_after[0]:.0f} s; {wording.unsent}: "
                     f"try again after {retry_after[1]}")
    elif response.status_code >= 500 or response.status_code == 429:
        parts.append(f"— a failure at the endpoint; {wording.later}")
    return RefreshError(" ".join(parts), error=error, response=response,
                        retry_after=None if retry_after is None else retry_after[0])


def means_spent(error: str | None, response: requests.Response) -> bool:
    """Whether a refusal says the refresh token is spent, revoked or unknown."""
    if error == "invalid_grant":
        return True
    if error != "invalid_request":
        return False
    try:
        description = str(response.json().get("error_description", "")).lower()
    except (ValueError, AttributeError):
        return False
    return any(text in description for text in _SPENT_DESCRIPTIONS)


def content_type(response: requests.Response) -> str:
    """The answer's media type, without parameters."""
    return response.headers.get("Content-Type", "no content type").split(";")[0]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced, cut to 300 characters."""
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text[:300]
