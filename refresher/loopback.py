"""The loopback half of a login: a small HTTP server on this machine that X redirects to.

:meth:`refresher.LoginFlow.run_local_server` calls :func:`wait_for_login`, which listens
with a :class:`CallbackServer`, sends the user to X (:func:`send_user`) and waits on a
:class:`PendingLogin`: the first callback to arrive, from the browser or pasted by hand
(:func:`read_pasted`), is exchanged for the token, and the browser is shown a short page
saying how it went.

A callback's query carries the code and the state: nothing here logs or prints it.
"""

from __future__ import annotations

import html
import http.server
import logging
import socket
import threading
import time
import webbrowser
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ._transport import is_loopback_host
from .errors import ConfigurationError, LoginError
from .token import Token

__all__ = [
    "DEFAULT_REDIRECT_URI",
    "CallbackServer",
    "OpenBrowser",
    "PendingLogin",
    "callback_params",
    "read_pasted",
    "send_user",
    "wait_for_login",
    "what_to_check",
]

log = logging.getLogger(__name__)

#: Where :meth:`~refresher.LoginFlow.run_local_server` receives the browser; register it
#: with your X app.
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8765/callback"

#: How to send the user to X: ``True`` opens the system browser (and prints the URL),
#: ``False`` only prints it, a callable is given it.
OpenBrowser = bool | Callable[[str], Any]

# How long a browser connection that sends nothing may hold a callback-server thread.
_CONNECTION_TIMEOUT = 10.0


def callback_params(callback_url: str) -> dict[str, str]:
    """The query parameters of the URL the browser came back to (or of its query string).

    >>> callback_params("http://127.0.0.1:8765/callback?state=s&code=c#ignored")
    {'state': 's', 'code': 'c'}
    """
    text = callback_url.strip().split("#", 1)[0]
    query = text.split("?", 1)[1] if "?" in text else text
    return {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}


class PendingLogin:
    """One login waiting for its callback, from the browser or pasted: the first one wins.

    ``exchange(callback_url, seconds_left)`` trades the callback's code for the token, or
    raises :class:`~refresher.LoginError`; it gets only the time left until ``deadline``
    (a ``time.monotonic()`` value).

    >>> pending = PendingLogin(lambda url, left: {"access_token": "a"}, time.monotonic() + 60)
    >>> pending.complete("?state=s&code=c")
    (True, 'Logged in. You can close this window and go back to the terminal.')
    >>> pending.result()
    {'access_token': 'a'}
    """

    def __init__(self, exchange: Callable[[str, float], Token], deadline: float) -> None:
        self._exchange = exchange
        self._deadline = deadline
        self._lock = threading.Lock()
        #: Set once a callback was exchanged (or refused): :meth:`result` is ready.
        self.done = threading.Event()
        self._exchanging = False
        self._abandoned = False
        self._token: Token | None = None
        self._error: LoginError | None = None

    def abandon(self) -> bool:
        """The login gave up waiting; whether a code exchange was under way.

        A callback (or an exchange) that finishes later is told the login timed out.
        """
        self._abandoned = True
        return self._exchanging

    def complete(self, callback_url: str) -> tuple[bool, str]:
        """Exchange the callback's code (once); whether it worked, and a line for the user."""
        with self._lock:
            if not self.done.is_set() and not self._abandoned:
                self._exchanging = True
                try:
                    self._token = self._exchange(callback_url, self._deadline - time.monotonic())
                except LoginError as exc:
                    self._error = exc
                finally:
                    self.done.set()
            if self._abandoned:
                return False, ("Login failed: it timed out before it could finish. Start it "
                               "again in the terminal.")
            if self._error is not None:
                return False, f"Login failed: {self._error}"
            return True, "Logged in. You can close this window and go back to the terminal."

    def result(self) -> Token:
        """The token, once :attr:`done`; raises the :class:`~refresher.LoginError` it met."""
        if self._error is not None:
            raise LoginError(str(self._error)) from None
        assert self._token is not None
        return self._token


class CallbackServer(http.server.ThreadingHTTPServer):
    """Receives the browser at ``callback_path`` on ``address`` and completes a login.

    Binding happens here (an :class:`OSError` for a port in use); :meth:`start` serves a
    :class:`PendingLogin` in a daemon thread, :meth:`close` stops and frees the port. Other
    paths get a 404, a visit without the callback's parameters a page saying so.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], callback_path: str) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.callback_path = callback_path
        self.pending: PendingLogin | None = None
        self._thread: threading.Thread | None = None
        super().__init__(address, _CallbackHandler)

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose, for port 0)."""
        return int(self.server_address[1])

    def start(self, pending: PendingLogin) -> None:
        """Serve callbacks for ``pending`` in a daemon thread."""
        self.pending = pending
        self._thread = threading.Thread(target=self.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"refresher-login:{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving (if :meth:`start` was called) and close the listening socket."""
        if self._thread is not None:
            self.shutdown()  # returns once serve_forever has run and stopped
            self._thread = None
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("login callback: connection from %s ended abruptly", client_address)


class _CallbackHandler(http.server.BaseHTTPRequestHandler):
    server: CallbackServer
    timeout = _CONNECTION_TIMEOUT
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = urlsplit(self.path).path
        pending = self.server.pending
        if path != self.server.callback_path or pending is None:
            self._page(404, "Not found", "This address only receives the X login callback.")
            return
        if not ({"code", "error", "state"} & callback_params(self.path).keys()):
            self._page(400, "Waiting for X", "This address receives the X login callback; "
                                             "start from the authorize page.")
            return
        ok, message = pending.complete(self.path)  # the exchange reads only the query
        self._page(200 if ok else 400, "Logged in" if ok else "Login failed", message)

    def _page(self, status: int, title: str, message: str) -> None:
        body = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>refresher: {html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    # The query carries the code and state: log the path only.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("login callback: %s %s -> %s", self.command,
                  urlsplit(getattr(self, "path", "")).path, code)

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("login callback: malformed request from %s", self.address_string())

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("login callback: %s", format % args)


def send_user(url: str, open_browser: OpenBrowser, out: TextIO, redirect_uri: str, *,
              pasting: bool) -> None:
    """Send the user to X's authorize page ``url``, and tell them on ``out`` what comes next.

    ``open_browser`` as in :data:`OpenBrowser` (a callable is given the URL and nothing is
    printed). ``pasting``: the redirected URL may also be pasted (see :func:`read_pasted`).
    """
    if callable(open_browser):
        open_browser(url)
        return
    if open_browser:
        print(f"Opening X's authorize page in your browser:\n\n    {url}\n", file=out)
        # In a thread: webbrowser.open waits for a $BROWSER command (a text browser, a
        # script) to end, and the login's timeout must bound that wait too.
        threading.Thread(target=_open_browser, args=(url, out), name="refresher-login-browser",
                         daemon=True).start()
    else:
        print(f"Open this address in a browser and approve the app:\n\n    {url}\n", file=out)
    if pasting:
        print(f"Then, if this machine cannot be reached at {redirect_uri}, paste here the "
              "address the browser was sent to (it starts with that URL and has ?state= "
              "and code= in it):", file=out)
    else:
        print(f"Waiting for the browser to come back to {redirect_uri} ...", file=out)
    out.flush()


def _open_browser(url: str, out: TextIO) -> None:
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        print("No browser could be opened: open the address above yourself.", file=out)
        out.flush()


def read_pasted(stream: TextIO, pending: PendingLogin, out: TextIO) -> None:
    """Feed URLs pasted on ``stream`` to ``pending`` until one completes it (or EOF).

    Lines that are not a callback (no ``code`` or ``error``) are answered on ``out`` with a
    request to paste again. Meant for a daemon thread: it blocks on ``stream``.
    """
    try:
        for line in iter(stream.readline, ""):
            if pending.done.is_set():
                return
            text = line.strip()
            if not text:
                continue
            params = callback_params(text)
            if not ({"code", "error"} & params.keys()):
                print("That is not the address the browser was sent to (look for ?state= and "
                      "code= in it); paste it again:", file=out)
                out.flush()
                continue
            pending.complete(text)
            return
    except (OSError, ValueError):  # the stream was closed under us
        return


def wait_for_login(
    redirect_uri: str,
    port: int | None,
    begin: Callable[[str], tuple[str, Callable[[str, float], Token]]],
    *,
    open_browser: OpenBrowser,
    timeout: float,
    out: TextIO,
    paste_from: TextIO | None,
    token_url: str,
    client_id: str,
    remind_after: float | None = None,
) -> Token:
    """Serve the callback of ``redirect_uri`` on loopback, send the user to X, wait, exchange.

    ``port`` overrides the redirect URI's (0: a free one). ``begin(redirect_uri)`` is given
    the URI with the port listened on, and returns the authorize URL and the function that
    exchanges a callback's code (``exchange(callback_url, seconds_left)``). When nobody has
    come back after ``remind_after`` seconds, ``out`` is told once what to check (see
    :func:`what_to_check`), as the timeout's error is. The rest as
    :meth:`refresher.LoginFlow.run_local_server` says; ``token_url`` is for its messages.
    """
    deadline = time.monotonic() + timeout
    parts = urlsplit(redirect_uri)
    host = parts.hostname or ""
    if parts.scheme != "http" or not is_loopback_host(host):
        raise ConfigurationError(
            "run_local_server needs a loopback http redirect URI such as "
            f"{DEFAULT_REDIRECT_URI} (registered with your X app); got {redirect_uri!r}"
        )
    bind = "127.0.0.1" if host == "localhost" else host
    wanted = parts.port if port is None else port
    if wanted is None:
        wanted = 80
    try:
        server = CallbackServer((bind, wanted), parts.path or "/")
    except OSError as exc:
        raise LoginError(
            f"cannot listen for the login callback on {bind}:{wanted}: {exc.strerror}; "
            "is another login running? Free that port or choose another one (the "
            "callback URL registered with your X app must name the same port)"
        ) from None
    try:
        netloc = f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"
        listening = urlunsplit(parts._replace(netloc=netloc))
        url, exchange = begin(listening)
        pending = PendingLogin(exchange, deadline)
        server.start(pending)
        if paste_from is not None:
            threading.Thread(target=read_pasted, args=(paste_from, pending, out),
                             name="refresher-login-paste", daemon=True).start()
        send_user(url, open_browser, out, listening, pasting=paste_from is not None)
        checks = what_to_check(client_id, listening)
        if remind_after is not None and remind_after < deadline - time.monotonic() \
                and not pending.done.wait(max(0.0, remind_after)):
            print(f"\nStill waiting for the browser to come back to {listening}. If the "
                  f"authorize page showed an error, or nothing happened, check {checks}.",
                  file=out)
            out.flush()
        if not pending.done.wait(max(0.0, deadline - time.monotonic())):
            if pending.abandon():
                raise LoginError(
                    f"the browser came back, but the code exchange at {token_url} did not "
                    f"finish within the login's {timeout:g} s timeout; start the login "
                    "again, and allow it more time if X is slow"
                )
            raise LoginError(
                f"no login within {timeout:g} s: nobody came back to {listening}. Check "
                f"{checks}; then run the login again and approve it in the browser"
            )
    finally:
        server.close()
    return pending.result()


def what_to_check(client_id: str, redirect_uri: str) -> str:
    """Why X may never send the browser back, in the words of a message: its authorize page
    shows an error instead, for an unknown client id or a callback URL not registered
    exactly, and the login can only wait.

    >>> what_to_check("my-client", "http://127.0.0.1:8765/callback")[:33]
    'the client id (my-client: the app'
    """
    return (f"the client id ({client_id}: the app's OAuth 2.0 Client ID, on its Keys and "
            "tokens page); the callback URL registered with the app, which must be exactly "
            f"{redirect_uri} (the same host, port and path: localhost is not 127.0.0.1); "
            "and what the authorize page in the browser says: X shows its errors there and "
            "never comes back")
