"""XEmulator: the public face of the emulator. It holds the settings, serves HTTP, and sends
each request down the route table to its side (OAuth, API, test controls, stats)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from refresher.clock import SYSTEM_CLOCK, Clock
from refresher.testing.emulator._api import FORBIDDEN_PREFIX, ApiEndpoints
from refresher.testing.emulator._controls import EmulatorControls
from refresher.testing.emulator._media import MediaEndpoints
from refresher.testing.emulator._messages import Request, Response, json_answer, problem
from refresher.testing.emulator._oauth import OAuthEndpoints
from refresher.testing.emulator._server import Server
from refresher.testing.emulator._stats import EmulatorStats

logger = logging.getLogger("refresher.testing")


class XEmulator(EmulatorControls, OAuthEndpoints, ApiEndpoints, MediaEndpoints):
    """A local stand-in for X's OAuth 2.0 and API v2 endpoints, served over loopback HTTP.

    Point a client's token, authorize, revoke and API URLs at the emulator's
    ``token_url``, ``authorize_url``, ``revoke_url`` and ``api_url``; read
    :attr:`stats` to see what it did::

        with XEmulator(access_ttl=1) as x:
            token = x.issue_token()
            r = requests.get(x.api_url + "/2/users/me",
                             headers={"Authorization": "Bearer " + token["access_token"]})
            assert r.json()["data"]["username"] == "emulated_user"
            assert x.stats.api_requests == 1

    ``clients`` maps client ids to secrets (``None`` for a public client). ``redirect_uris``
    of ``None`` accepts any loopback ``http`` redirect URI; a list demands an exact match, as
    X does. ``token_delay`` holds each token answer back that many seconds before X acts on
    the request; ``answer_delay`` holds it back after (the refresh token is spent, the new
    pair issued, and the answer slow to arrive); ``token_trickle`` sends its headers at
    once and then its body one byte every that many seconds (a server that never quite
    answers). ``enforce_rate_limits`` makes every API
    route answer X's 429 past ``rate_limit`` calls per ``rate_window`` seconds, per user
    and app and route, as X counts (default X's documented limit of ``/2/users/me``, 75
    per 15 minutes; the ``x-rate-limit-*`` headers are sent either way; off by default, so
    that demos are not limited). ``access_ttl``, ``token_delay``, ``answer_delay``,
    ``token_trickle``, ``auto_approve``, ``invalidate_access_on_refresh``,
    ``enforce_rate_limits``, ``rate_limit`` and ``rate_window`` may be changed while the
    emulator runs. ``/2/emulator/unauthorized`` answers 401 to every
    token, as X has been seen to do to valid ones. ``POST /2/media/upload`` takes X's
    chunked upload (INIT, APPEND, FINALIZE; see ``_media``), and :meth:`media_appends`
    shows the chunks it got.

    ``clock`` (a :class:`refresher.clock.Clock`, the system clock by default) is what the
    emulator reads the time from: token and code expiry, issue times, rate-limit windows.
    Share a :class:`~refresher.testing.clock.FakeClock` with a session and move time on
    instead of sleeping::

        clock = FakeClock()
        x = XEmulator(clock=clock).start()
        token = x.issue_token()
        clock.advance(x.access_ttl)  # X now answers 401 to token["access_token"]

    ``token_delay``, ``answer_delay`` and ``token_trickle`` stay real waits: they are there
    for the client's socket timeouts, which no clock of ours moves.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_ttl: float = 7200.0,
        code_ttl: float = 30.0,
        clients: dict[str, str | None] | None = None,
        users: list[dict[str, str]] | None = None,
        auto_approve: bool = True,
        invalidate_access_on_refresh: bool = False,
        token_delay: float = 0.0,
        answer_delay: float = 0.0,
        redirect_uris: list[str] | None = None,
        token_trickle: float = 0.0,
        clock: Clock | None = None,
        enforce_rate_limits: bool = False,
        rate_limit: int = 75,
        rate_window: float = 15 * 60.0,
    ) -> None:
        super().__init__(clients=clients, users=users,
                         clock=SYSTEM_CLOCK if clock is None else clock)
        self.access_ttl = access_ttl
        self.code_ttl = code_ttl
        self.auto_approve = auto_approve
        self.invalidate_access_on_refresh = invalidate_access_on_refresh
        self.token_delay = token_delay
        self.answer_delay = answer_delay
        self.token_trickle = token_trickle
        self.enforce_rate_limits = enforce_rate_limits
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self._redirect_uris = list(redirect_uris) if redirect_uris is not None else None
        self._host = host
        self._port = port
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> XEmulator:
        """Serve in a daemon thread; return ``self``.

        Starting again after :meth:`stop` serves on the same port, so a test can take X
        down and bring it back without clients noticing a new URL.
        """
        if self._server is not None:
            return self
        server = Server((self._host, self._port), self._handle)
        self._port = server.server_address[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"http://{host}:{self._port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            # stop() waits up to one poll: short, since test suites stop emulators by hundreds.
            kwargs={"poll_interval": 0.02},
            name=f"XEmulator:{self._port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("X emulator serving on %s", self._url)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and open connections. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        # Kept-alive connections would otherwise go on being served by their threads.
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        logger.debug("X emulator on %s stopped", self._url)

    def __enter__(self) -> XEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- URLs --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running emulator."""
        if self._url is None:
            raise RuntimeError("the XEmulator has not been started")
        return self._url

    @property
    def api_url(self) -> str:
        """The base of API requests, as ``https://api.x.com`` is for X."""
        return self.url

    @property
    def token_url(self) -> str:
        """``POST`` here to exchange a code or refresh a token."""
        return self.url + "/2/oauth2/token"

    @property
    def authorize_url(self) -> str:
        """Where a browser is sent to log in (approved at once by default)."""
        return self.url + "/i/oauth2/authorize"

    @property
    def revoke_url(self) -> str:
        """``POST`` here to revoke a token."""
        return self.url + "/2/oauth2/revoke"

    # -- clock and stats ---------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The clock the emulator reads the time from (see the class docstring)."""
        return self._clock

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counts since the start or the last :meth:`reset_stats`."""
        return self._counts.snapshot()

    def reset_stats(self) -> None:
        """Set every count back to zero."""
        self._counts.reset()

    # -- request handling --------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        """Answer one request: find its route, count API answers."""
        is_api = request.path.startswith("/2/") and not request.path.startswith("/2/oauth2/")
        if is_api:
            self._counts.add("api_requests")
        route = _ROUTES.get(request.path)
        if route is None and request.path.startswith(FORBIDDEN_PREFIX):
            route = _ROUTES[FORBIDDEN_PREFIX]
        if route is None:
            response = problem(404, "Not Found", f"No such endpoint: {request.path}")
        elif route.methods is not None and request.method not in route.methods:
            response = problem(405, "Method Not Allowed", "Method Not Allowed")
            response.headers["Allow"] = ", ".join(sorted(route.methods))
        else:
            response = route.handler(self, request)
        if is_api and response.status == 401:
            self._counts.add("unauthorized")
        elif is_api and response.status == 403:
            self._counts.add("forbidden")
        elif is_api and response.status == 429:
            self._counts.add("rate_limited")
        return response

    def _token(self, request: Request) -> Response:
        # X's answer, as the test controls bend it (delayed, failed, trickled).
        return self._bent(request, self._token_answer)

    def _stats_route(self, request: Request) -> Response:
        return json_answer(200, self.stats.as_dict())

    def _reset_route(self, request: Request) -> Response:
        self.reset_stats()
        return json_answer(200, self.stats.as_dict())


@dataclass(frozen=True)
class _Route:
    handler: Callable[[XEmulator, Request], Response]
    methods: frozenset[str] | None  # None: any method


_GET = frozenset({"GET"})
_POST = frozenset({"POST"})
_ROUTES: dict[str, _Route] = {
    "/i/oauth2/authorize": _Route(XEmulator._authorize, _GET),
    "/2/oauth2/token": _Route(XEmulator._token, _POST),
    "/2/oauth2/revoke": _Route(XEmulator._revoke, _POST),
    "/2/users/me": _Route(XEmulator._users_me, _GET),
    "/2/tweets": _Route(XEmulator._create_tweet, _POST),
    "/2/media/upload": _Route(XEmulator._media_upload, _POST),
    "/2/emulator/echo": _Route(XEmulator._echo, None),
    FORBIDDEN_PREFIX: _Route(XEmulator._forbidden_kind, _GET),
    "/2/emulator/redirect": _Route(XEmulator._redirect_to, _GET),
    "/2/emulator/unauthorized": _Route(XEmulator._always_unauthorized, None),
    "/emulator/stats": _Route(XEmulator._stats_route, _GET),
    "/emulator/reset": _Route(XEmulator._reset_route, _POST),
}
