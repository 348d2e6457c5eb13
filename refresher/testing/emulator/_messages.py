"""The request and response values that pass between the HTTP server and the endpoints, and
the shapes of X's answers: JSON, problem+json, OAuth errors, redirects and error pages."""

from __future__ import annotations

import email.message
import email.utils
import json
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
PROBLEM = "application/problem+json"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Request:
    """One HTTP request as an endpoint sees it, its body already read whole."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    @property
    def content_type(self) -> str:
        """The media type alone, lower-cased: ``application/json; charset=x`` gives
        ``application/json``."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def params(self) -> dict[str, str]:
        """The query string's parameters (the first value of each)."""
        return _first_values(self.query)

    def form(self) -> dict[str, str]:
        """The form-encoded body's parameters (the first value of each)."""
        return _first_values(self.body.decode("utf-8", "replace"))

    def multipart(self) -> dict[str, bytes] | None:
        """A ``multipart/form-data`` body's fields by name (the first of each), their bytes
        exactly as sent; ``None`` when the body is not well-formed multipart."""
        if self.content_type != "multipart/form-data":
            return None
        return _multipart_fields(self.headers.get("content-type", ""), self.body)


@dataclass
class Response:
    """What an endpoint answers; the server adds ``Content-Length`` and frames it."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float = 0.0  # seconds between body bytes (a slow, hostile server)


def _first_values(query: str) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}


def _multipart_fields(content_type: str, body: bytes) -> dict[str, bytes] | None:
    # RFC 7578 / RFC 2046: parts sit between CRLF "--" boundary lines; a part's bytes are
    # never searched for anything else, so binary content comes back exactly as sent.
    boundary = _header_param("content-type", content_type, "boundary")
    if not boundary:
        return None
    parts = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    if len(parts) < 3 or not parts[-1].startswith(b"--"):
        return None  # no part, or no closing delimiter
    fields: dict[str, bytes] = {}
    for part in parts[1:-1]:
        head, blank, content = part.partition(b"\r\n\r\n")
        if not blank:
            return None
        name = None
        for line in head.split(b"\r\n")[1:]:  # the first is what follows the boundary
            header, _, value = line.decode("latin-1").partition(":")
            if header.strip().lower() == "content-disposition":
                name = _header_param("content-disposition", value.strip(), "name")
        if name is None:
            return None
        fields.setdefault(name, content)
    return fields


def _header_param(header: str, value: str, param: str) -> str | None:
    message = email.message.Message()
    message[header] = value
    found = message.get_param(param, header=header)
    return email.utils.collapse_rfc2231_value(found) if found else None


def json_answer(status: int, payload: Any, content_type: str = JSON) -> Response:
    """``payload`` as compact JSON."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, content_type)


def problem(status: int, title: str, detail: str) -> Response:
    """An RFC 7807 problem, as X's API answers its errors."""
    payload = {"title": title, "type": "about:blank", "status": status, "detail": detail}
    return json_answer(status, payload, PROBLEM)


def unauthorized() -> Response:
    """X's 401 to a missing, unknown, expired or revoked access token."""
    return problem(401, "Unauthorized", "Unauthorized")


def forbidden(detail: str = "Forbidden") -> Response:
    """X's plain 403 (a token without the scopes, a duplicate tweet...)."""
    return problem(403, "Forbidden", detail)


def invalid_parameter(name: str, value: str, message: str) -> Response:
    """X's 400 problem for a bad or missing API parameter."""
    return json_answer(400, {
        "errors": [{"parameters": {name: [value]}, "message": message}],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": "https://api.twitter.com/2/problems/invalid-request",
    }, PROBLEM)


def missing_scopes(missing: Iterable[str], held: Iterable[str]) -> Response:
    """X's 403 to a token without the scopes an endpoint needs, saying which.

    X's own detail is a bare "Forbidden"; the emulator keeps X's shape (``title``,
    ``type``, ``status``) and that word, and adds what is missing, so that a test or a
    newcomer sees the fix: ``Forbidden: this endpoint needs the scope tweet.write; the token
    has tweet.read users.read offline.access``.
    """
    needed = sorted(missing)
    noun = "scope" if len(needed) == 1 else "scopes"
    has = " ".join(held) or "no scopes"
    return forbidden(f"Forbidden: this endpoint needs the {noun} {' '.join(needed)}; "
                     f"the token has {has}")


def oauth_error(status: int, error: str, description: str) -> Response:
    """An OAuth 2.0 error answer (RFC 6749, section 5.2)."""
    response = json_answer(status, {"error": error, "error_description": description})
    response.headers["Cache-Control"] = "no-store"
    return response


def invalid_request(description: str) -> Response:
    """The ``invalid_request`` OAuth error X gives to most bad token requests."""
    return oauth_error(400, "invalid_request", description)


def missing(parameter: str) -> Response:
    """X's answer to a token request without ``parameter``."""
    return invalid_request(f"Missing required parameter [{parameter}].")


def page(status: int, message: str) -> Response:
    """What X's authorize page shows when it refuses to redirect back."""
    return Response(status, f"{status} {message}\n".encode(), TEXT)


def redirect(location: str) -> Response:
    """A 302 to ``location``."""
    response = Response(302, b"", TEXT)
    response.headers["Location"] = location
    return response


def with_query(uri: str, **params: str) -> str:
    """``uri`` with ``params`` added to its query string."""
    parts = urllib.parse.urlsplit(uri)
    query = "&".join(filter(None, [parts.query, urllib.parse.urlencode(params)]))
    return urllib.parse.urlunsplit(parts._replace(query=query))
