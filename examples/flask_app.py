"""A Flask web app whose users log in with X, and whose tokens refresher keeps alive.

Needs: Flask (``pip install flask``) and, for its default token store (SQLite) or a
PostgreSQL one, refresher's ``[sql]`` extra: ``pip install -e '.[sql]' flask`` in a
checkout of refresher (from a built wheel: ``pip install
'refresher-0.1.0-py3-none-any.whl[sql]' flask``).

- ``/login`` makes a fresh PKCE link: the ``state`` goes into the user's signed session
  cookie (it binds the login to this browser), the ``code_verifier`` stays on the server,
  in the app's database (``LoginFlow(pending=store)``; it is the PKCE secret: never send
  it to the browser), so that any worker can take the callback.
- ``/callback`` is where X sends the user back: the state is checked against the cookie,
  the login under way taken from the database (once: a replayed or expired callback is
  refused before any code is sent), the code exchanged, ``/2/users/me`` says who logged
  in, and the token pair is saved in the token store under the user's X id, with the
  client id and URLs it belongs to (as ``refresher login`` records them, so a background
  job's ``refresher.open_session(user_id, store=...)`` finds them). The store then holds
  the live pair for good: any request (or background job) that opens a session on that
  account gets a token that works.
- ``/`` calls X as the logged-in user; ``/logout`` forgets the user in this browser.

The users' tokens live in the app's database through ``refresher.SQLTokenStore`` (SQLite
here; ``DATABASE_URL``, else ``REFRESHER_STORE``, to change it): one row per user, and a
lease per user for refreshes, so every worker process (gunicorn -w 4) and background job
shares them, and two users' refreshes never wait for each other. The logins under way live
there too, under a name no account can take: one worker may serve ``/login`` and another
the ``/callback``.

Settings: the arguments of :func:`create_app`, else ``X_CLIENT_ID``, ``X_CLIENT_SECRET``,
``X_REDIRECT_URI``, ``DATABASE_URL``, else refresher's own variables
(``REFRESHER_CLIENT_ID``, ``REFRESHER_CLIENT_SECRET``, ``REFRESHER_REDIRECT_URI``,
``REFRESHER_AUTHORIZE_URL``, ``REFRESHER_TOKEN_URL``, ``REFRESHER_API_URL``,
``REFRESHER_REVOKE_URL``, ``REFRESHER_STORE``, ``REFRESHER_KEY``), else X's own URLs, the
callback http://127.0.0.1:5000/callback and ``sqlite:///web-tokens.db``.

Against X (register http://127.0.0.1:5000/callback as the app's callback URL)::

    export X_CLIENT_ID=... X_CLIENT_SECRET=... FLASK_SECRET_KEY=...
    export DATABASE_URL=sqlite:///web-tokens.db     # or postgresql://user:pw@host/app
    flask --app examples/flask_app.py run --port 5000

Against the emulator, through the ``export REFRESHER_...`` lines it prints (its callback
registered for this app's port)::

    refresher emulator --redirect-uri http://127.0.0.1:5000/callback
    # in another shell: the export lines it printed, then
    flask --app examples/flask_app.py run --port 5000

Or all in one, the emulator started here (open http://127.0.0.1:5000 in a browser)::

    python examples/flask_app.py --emulator
"""

from __future__ import annotations

import hmac
import html
import os
import secrets
import sys
import tempfile

import flask
import requests

import refresher


def create_app(
    *,
    client_id: str | None = None,
    client_secret: str | None = None,
    redirect_uri: str | None = None,
    store: refresher.TokenStore | None = None,
    authorize_url: str | None = None,
    token_url: str | None = None,
    api_url: str | None = None,
    secret_key: str | None = None,
) -> flask.Flask:
    """The app. Arguments left out come from X_CLIENT_ID, X_CLIENT_SECRET, X_REDIRECT_URI,
    DATABASE_URL (the token store's database) and FLASK_SECRET_KEY, else from refresher's
    ``REFRESHER_*`` variables, else X's defaults (``flask --app examples/flask_app.py run``
    calls this with none)."""
    app = flask.Flask(__name__)
    # Signs the session cookie. Set FLASK_SECRET_KEY in production: a random key logs
    # everyone out when the app restarts.
    app.secret_key = secret_key or os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32)
    if store is None:
        # One row per user in the app's database (the table is created if missing);
        # encrypted when REFRESHER_KEY is set.
        store = refresher.open_store(os.environ.get("DATABASE_URL")
                                     or os.environ.get("REFRESHER_STORE")
                                     or "sqlite:///web-tokens.db")
    # What is not given here, LoginFlow reads from REFRESHER_* (else X's own URLs).
    flow = refresher.LoginFlow(
        client_id or os.environ.get("X_CLIENT_ID"),
        client_secret or os.environ.get("X_CLIENT_SECRET"),
        redirect_uri=(redirect_uri or os.environ.get("X_REDIRECT_URI")
                      or os.environ.get("REFRESHER_REDIRECT_URI")
                      or "http://127.0.0.1:5000/callback"),
        authorize_url=authorize_url,
        token_url=token_url,
        api_url=api_url,
        pending=store,  # the logins under way, in the same database: every worker sees them
    )
    app.extensions["refresher"] = {"flow": flow, "store": store}

    def page(body: str, status: int = 200) -> tuple[str, int]:
        return f"<!doctype html><title>X login demo</title>{body}", status

    @app.get("/login")
    def login() -> flask.Response:
        link = flow.authorization_url()                # its verifier stays in the database
        flask.session["login_state"] = link.state      # the state rides in the cookie
        return flask.redirect(link.url)

    @app.get("/callback")
    def callback() -> object:
        state = flask.request.args.get("state", "")
        expected = flask.session.pop("login_state", "")
        if not expected or not hmac.compare_digest(state, expected):
            return page("That login has expired or was started in another browser. "
                        '<a href="/login">Log in again</a>.', 400)
        try:
            # Checks the state again, takes the login under way from the database (once;
            # LoginError if unknown, used or expired), turns error=access_denied into
            # LoginError, exchanges the code with the verifier.
            token = flow.exchange(flask.request.url, state=expected)
            with flow.session(token) as probe:         # in memory, just to ask who it is
                user = probe.me()
        except (refresher.LoginError, requests.RequestException) as exc:
            return page(f"Login failed: {html.escape(str(exc))}. "
                        '<a href="/login">Try again</a>.', 400)
        # Saved under the user's X id, with the client id and URLs beside it (as
        # `refresher login` records them: open_session(user_id, store=...) needs nothing
        # more); a login over an older token of theirs replaces it.
        flow.session(token, store=store, account=user["id"]).close()
        flask.session["user_id"] = user["id"]
        return flask.redirect("/")

    @app.get("/")
    def home() -> object:
        user_id = flask.session.get("user_id")
        if not user_id:
            return page('<a href="/login">Log in with X</a>')
        # A session on the stored pair: refreshed before it expires, or after a 401.
        with flow.session(store=store, account=user_id) as x:
            try:
                me = x.me()
            except refresher.ReauthorizationRequired:  # revoked at X, or never logged in
                flask.session.pop("user_id", None)
                return flask.redirect("/login")
        return page(f"Hello @{html.escape(me['username'])}! "
                    '<a href="/logout">Log out</a>')

    @app.get("/logout")
    def logout() -> flask.Response:
        flask.session.clear()  # the stored token stays, for the app's background jobs
        return flask.redirect("/")

    return app


def _serve_with_emulator(port: int = 5000) -> None:
    from refresher.testing import DEFAULT_CLIENT_ID, XEmulator

    folder = tempfile.mkdtemp(prefix="refresher-flask-")
    store = refresher.SQLTokenStore(f"sqlite:///{folder}/web-tokens.db")
    with XEmulator(access_ttl=30) as x:
        app = create_app(client_id=DEFAULT_CLIENT_ID,
                         redirect_uri=f"http://127.0.0.1:{port}/callback",
                         store=store, authorize_url=x.authorize_url,
                         token_url=x.token_url, api_url=x.api_url)
        print(f"X emulator on {x.url}; open http://127.0.0.1:{port}/ (tokens live 30 s, "
              f"kept in {folder}/web-tokens.db)")
        app.run(host="127.0.0.1", port=port)
    store.close()


if __name__ == "__main__":
    if "--emulator" in sys.argv[1:]:
        _serve_with_emulator()
    else:
        create_app().run(host="127.0.0.1", port=5000)
