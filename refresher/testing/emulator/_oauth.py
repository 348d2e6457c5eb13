"""The OAuth 2.0 side of the emulator: the authorize page, the token endpoint (code exchange
with PKCE, refresh with rotation, client authentication) and revocation, as X runs them.

PKCE codes live ``code_ttl`` seconds of the emulator's clock and serve once; refresh tokens
rotate and die when spent; confidential clients authenticate with Basic, public ones name
themselves in the body.

PKCE is as lenient as X and no more: ``code_challenge_method`` is ``S256`` or ``plain`` in
either case (twitter-api-v2 sends ``s256``). An ``S256`` challenge is 43 to 128 characters
of RFC 7636's alphabet (a base64url SHA-256 is 43); a ``plain`` one is 1 to 128: X's own
documented example is ``code_challenge=challenge``, 9 characters, so X does not enforce
RFC 7636's 43-character minimum (its 128-character maximum is kept). The verifier is only
ever compared with the challenge, never checked for a shape of its own: one that does not
match gets X's own answer, "Value passed for the code verifier did not match the code
challenge." (xdevplatform/twitter-api-typescript-sdk#26), and leaves the code unspent (X does
not document whether it spends it). A bad, expired, reused or another client's code, or
another redirect URI, gets "Value passed for the authorization code was invalid.".

Revocation takes ``token_type_hint`` or not (X's own examples leave it out): the token is
looked up as a refresh token and as an access token either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from refresher.testing.emulator._messages import (
    FORM,
    Request,
    Response,
    invalid_request,
    json_answer,
    missing,
    oauth_error,
    page,
    redirect,
    with_query,
)
from refresher.testing.emulator._state import (
    KNOWN_SCOPES,
    CodeRecord,
    EmulatorState,
    RefreshRecord,
)

logger = logging.getLogger("refresher.testing")

_CODE_INVALID = "Value passed for the authorization code was invalid."
_VERIFIER_MISMATCH = "Value passed for the code verifier did not match the code challenge."
_TOKEN_INVALID = "Value passed for the token was invalid."
_MISSING_AUTH = "Missing valid authorization header"
_MAX_STATE = 500
# RFC 7636, section 4.1: the verifier's alphabet. A plain challenge is the verifier itself.
_PLAIN_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{1,128}")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_METHODS = {"s256": "S256", "plain": "plain"}
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class OAuthEndpoints(EmulatorState):
    """``/i/oauth2/authorize``, ``/2/oauth2/token`` and ``/2/oauth2/revoke``."""

    # Settings, set by XEmulator and read at each request.
    code_ttl: float
    auto_approve: bool
    invalidate_access_on_refresh: bool
    _redirect_uris: list[str] | None

    # -- authorize ---------------------------------------------------------------------

    def _authorize(self, request: Request) -> Response:
        params = request.params()
        client_id = params.get("client_id", "")
        if client_id not in self._clients:
            return page(400, "Something went wrong: unknown or missing client_id.")
        redirect_uri = params.get("redirect_uri", "")
        if not self._redirect_uri_allowed(redirect_uri):
            return page(400, "Something went wrong: redirect_uri is not registered for this app.")
        if params.get("response_type") != "code":
            return page(400, "Something went wrong: response_type must be 'code'.")
        scopes = tuple(params.get("scope", "").split())
        if not scopes or not set(scopes) <= KNOWN_SCOPES:
            return page(400, "Something went wrong: missing or unknown scope.")
        state = params.get("state", "")
        if not state or len(state) > _MAX_STATE:
            return page(400, "Something went wrong: state is missing or too long.")
        challenge = params.get("code_challenge", "")
        method = _METHODS.get(params.get("code_challenge_method", "").lower())
        shape = _S256_CHALLENGE if method == "S256" else _PLAIN_CHALLENGE
        if method is None or not shape.fullmatch(challenge):
            return page(400, "Something went wrong: invalid code_challenge or its method.")

        if not self.auto_approve:
            return redirect(with_query(redirect_uri, error="access_denied", state=state))
        code = self._new_token("ac")
        with self._lock:
            now = self._clock.time()
            for stale in [c for c, r in self._codes.items() if r.expires_at <= now]:
                del self._codes[stale]
            self._issued_codes.add(code)
            self._codes[code] = CodeRecord(
                client_id, redirect_uri, scopes, challenge, method, self._login_user,
                now + self.code_ttl,
            )
        return redirect(with_query(redirect_uri, state=state, code=code))

    def _redirect_uri_allowed(self, uri: str) -> bool:
        if self._redirect_uris is not None:
            return uri in self._redirect_uris
        try:
            parts = urllib.parse.urlsplit(uri)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            return False
        return parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS and not parts.fragment

    # -- token -------------------------------------------------------------------------

    def _token_answer(self, request: Request) -> Response:
        """What X answers a token request (the test controls may answer first)."""
        checked = self._client_form(request)
        if isinstance(checked, Response):
            return checked
        form, client_id = checked
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._exchange_code(form, client_id)
        if grant_type == "refresh_token":
            return self._refresh_token(form, client_id)
        if not grant_type:
            return missing("grant_type")
        return oauth_error(400, "unsupported_grant_type", "Grant type is not supported.")

    def _client_form(self, request: Request) -> tuple[Mapping[str, str], str] | Response:
        """A token or revoke request's form and the client it speaks for, or the refusal."""
        if request.content_type != FORM:
            return invalid_request(f"Content-Type must be {FORM}.")
        form = request.form()
        client_id = self._authenticate_client(request, form)
        if isinstance(client_id, Response):
            return client_id
        return form, client_id

    def _authenticate_client(self, request: Request, form: Mapping[str, str]) -> str | Response:
        """The client a token or revoke request speaks for, or the answer refusing it."""
        refused = oauth_error(401, "unauthorized_client", _MISSING_AUTH)
        header = request.headers.get("authorization")
        if header:
            credentials = _basic_credentials(header)
            if credentials is None:
                return refused
            client_id, secret = credentials
            expected = self._clients.get(client_id)
            # A public client has no secret to prove: X wants its client_id in the body.
            if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
                return refused
            if form.get("client_id", client_id) != client_id:
                return refused
            return client_id
        body_client_id = form.get("client_id")
        if not body_client_id:
            return missing("client_id")
        if body_client_id not in self._clients or self._clients[body_client_id] is not None:
            return refused
        return body_client_id

    def _exchange_code(self, form: Mapping[str, str], client_id: str) -> Response:
        for parameter in ("code", "redirect_uri", "code_verifier"):
            if not form.get(parameter):
                return missing(parameter)
        verifier = form["code_verifier"]
        with self._lock:
            record = self._codes.get(form["code"])
            if (
                record is None
                or record.used
                or self._clock.time() >= record.expires_at
                or record.client_id != client_id
                or record.redirect_uri != form["redirect_uri"]
            ):
                logger.debug("token endpoint: code rejected (client %s)", client_id)
                return invalid_request(_CODE_INVALID)
            if not _verifier_matches(record, verifier):
                logger.debug("token endpoint: code verifier does not match (client %s)",
                             client_id)
                return invalid_request(_VERIFIER_MISMATCH)
            record.used = True
            self._counts.add("exchanges")
            payload = self._mint(client_id, record.user_id, record.scopes)
        logger.debug("token endpoint: code exchanged (client %s)", client_id)
        return _token_response(payload)

    def _refresh_token(self, form: Mapping[str, str], client_id: str) -> Response:
        token = form.get("refresh_token")
        if not token:
            return missing("refresh_token")
        with self._lock:
            record = self._refresh.get(token)
            if record is None or record.spent or record.revoked or record.client_id != client_id:
                self._counts.add("invalid_refresh_tokens")
                if record is not None and record.spent:
                    self._counts.add("reused_refresh_tokens")
                    logger.debug("token endpoint: spent refresh token reused (client %s)",
                                 client_id)
                else:
                    logger.debug("token endpoint: refresh token rejected (client %s)", client_id)
                return invalid_request(_TOKEN_INVALID)
            record.spent = True
            previous_access = self._access.get(record.access_token)
            if self.invalidate_access_on_refresh and previous_access is not None:
                previous_access.revoked = True
            self._counts.add("refreshes")
            payload = self._mint(record.client_id, record.user_id, record.scopes)
        logger.debug("token endpoint: refresh token rotated (client %s)", client_id)
        return _token_response(payload)

    # -- revoke ------------------------------------------------------------------------

    def _revoke(self, request: Request) -> Response:
        checked = self._client_form(request)
        if isinstance(checked, Response):
            return checked
        form, client_id = checked
        if not form.get("token"):
            return missing("token")
        # Optional, as in X's own examples; with or without it, both kinds are looked up.
        hint = form.get("token_type_hint")
        if hint and hint not in ("access_token", "refresh_token"):
            return invalid_request("Value passed for the token_type_hint was invalid.")
        token = form["token"]
        # As RFC 7009 says, a token that is unknown or another client's is not an error.
        with self._lock:
            refresh: RefreshRecord | None = self._refresh.get(token)
            if refresh is not None and refresh.client_id == client_id:
                refresh.revoked = True
                token = refresh.access_token  # to be safe, its access token dies with it
            access = self._access.get(token)
            if access is not None and access.client_id == client_id:
                access.revoked = True
            self._counts.add("revocations")
        return json_answer(200, {"revoked": True})


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    return urllib.parse.unquote(client_id), urllib.parse.unquote(secret)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _verifier_matches(code: CodeRecord, verifier: str) -> bool:
    try:
        expected = _s256(verifier) if code.method == "S256" else verifier
        return hmac.compare_digest(expected.encode("ascii"), code.challenge.encode("ascii"))
    except UnicodeEncodeError:  # a verifier outside ASCII cannot be the challenge's
        return False


def _token_response(payload: Mapping[str, Any]) -> Response:
    response = json_answer(200, payload)
    response.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
    return response
