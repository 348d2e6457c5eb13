"""The ``refresher`` command line's parser: its commands, options and their checks.

Each command's ``run`` default is the function that carries it out (in
:mod:`~refresher.cli.login`, :mod:`~refresher.cli.accounts`, :mod:`~refresher.cli.offline`).
"""

from __future__ import annotations

import argparse
import math

from .. import __version__
from .._constants import DEFAULT_SCOPES
from ..errors import ConfigurationError
from ..loopback import DEFAULT_REDIRECT_URI
from ..stores.reserved import check_account_name
from .accounts import run_logout, run_refresh, run_status
from .keys import run_key_new, run_key_rotate
from .login import run_login
from .offline import run_demo, run_emulator
from .secrets import PROMPT

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``refresher [--debug] COMMAND ...``; ``args.run(args)`` runs the command.

    >>> build_parser().parse_args(["status", "--json"]).json
    True
    """
    parser = argparse.ArgumentParser(
        prog="refresher",
        description="Keep OAuth 2.0 user tokens for the X API v2 alive: log in, look at, "
                    "refresh and revoke stored tokens, or run the offline demo.",
        epilog="Settings also come from REFRESHER_CLIENT_ID, REFRESHER_CLIENT_SECRET, "
               "REFRESHER_STORE, REFRESHER_ACCOUNT, REFRESHER_TOKEN_URL, REFRESHER_API_URL, "
               "REFRESHER_AUTHORIZE_URL, REFRESHER_REVOKE_URL, REFRESHER_REDIRECT_URI, and "
               "the key of an encrypted store from REFRESHER_KEY. Try: refresher demo",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and refresher's debug log (never a token)")
    parser.add_argument("--version", action="version", version=f"refresher {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.required = True

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and refresher's debug log")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", metavar="PATH",
                       help="token store: a JSON file, a redis:// or a sqlite:/// or "
                            "postgresql:// URL (default: $REFRESHER_STORE, else "
                            "~/.config/refresher/tokens.json)")
    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("--account", metavar="NAME", type=_account_name,
                         help="account in the store ($REFRESHER_ACCOUNT; default: the only "
                              "one, or for login the X username)")
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--client-id", metavar="ID",
                        help="your X app's OAuth 2.0 Client ID ($REFRESHER_CLIENT_ID)")
    client.add_argument("--client-secret", metavar="SECRET", nargs="?", const=PROMPT,
                        help="for a confidential client: '-' reads it from stdin, no value "
                             "prompts for it ($REFRESHER_CLIENT_SECRET); never echoed")

    def url(parser_: argparse.ArgumentParser, name: str, what: str) -> None:
        env = "REFRESHER_" + name.upper().replace("-", "_")
        parser_.add_argument(f"--{name}", metavar="URL", help=f"{what} (${env})")

    login = commands.add_parser(
        "login", parents=[common, client, store, account],
        help="log in to X in the browser and save the token",
        description="Log in with OAuth 2.0 (PKCE) in the browser, ask X who logged in, and "
                    "save the token under --account (default: the X username). Logging in "
                    "again over an account replaces its token, and does not revoke the old "
                    "one: X's revoke may end every login of the same user in the same app, "
                    "the one just saved included (see --revoke-previous). --timeout bounds "
                    "the whole login: the browser, the code exchange and the /2/users/me "
                    "question.")
    login.add_argument("--scope", action="append", metavar="SCOPE",
                       help=f"a scope to ask for, repeatable (default: {' '.join(DEFAULT_SCOPES)})")
    login.add_argument("--port", type=int, metavar="PORT",
                       help="port of the local callback server (default: the redirect URI's, "
                            "8765). 0: any free port — only the emulator accepts it (refresher "
                            "emulator --any-loopback-redirect); X needs the registered "
                            "callback exactly")
    login.add_argument("--redirect-uri", metavar="URL",
                       help="the callback URL registered with your X app, exactly as "
                            "registered: X refuses another port, path, or localhost for "
                            f"127.0.0.1 (default {DEFAULT_REDIRECT_URI}; "
                            "$REFRESHER_REDIRECT_URI)")
    login.add_argument("--no-browser", action="store_true",
                       help="do not open a browser: print the URL, and accept the redirected "
                            "URL pasted on stdin (for SSH sessions and containers)")
    login.add_argument("--timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                       help="give up when the whole login (browser, code exchange, "
                            "/2/users/me) has taken this long (default 300)")
    login.add_argument("--revoke-previous", action="store_true",
                       help="after saving the new token, revoke the account's previous one, "
                            "but only when it belongs to another X user or another client id. "
                            "One of the same user and client is never revoked: X may end "
                            "every login of that user in that app on a revoke, the new one "
                            "included")
    for name, what in (("authorize-url", "X's authorize page"), ("token-url", "token endpoint"),
                       ("api-url", "API base URL"), ("revoke-url", "revoke endpoint")):
        url(login, name, what)
    login.set_defaults(run=run_login)

    status = commands.add_parser(
        "status", parents=[common, store],
        help="list the stored accounts (never a token)",
        description="A table of the store's accounts: user, scopes, expiry, last refresh and "
                    "a short fingerprint of the access token. Never the token itself.")
    status.add_argument("--account", metavar="NAME", type=_account_name,
                        help="show only this account (default: every account of the store, "
                             "whatever $REFRESHER_ACCOUNT says)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(run=run_status)

    refresh = commands.add_parser(
        "refresh", parents=[common, client, store, account],
        help="refresh an account's token now (or every account's: --all)",
        description="Refresh now, coordinated with every process sharing the store. With "
                    "--all, every account of the store that is not waiting for a login, one "
                    "line each; exit status 1 when any needs a login or failed. Run weekly "
                    "from cron, it keeps a working pair in accounts no program touches. "
                    "With --within (and --every), a sidecar: it refreshes each token shortly "
                    "before it expires, and the processes serving requests adopt the new "
                    "pair from the store instead of refreshing themselves.")
    refresh.add_argument("--all", action="store_true",
                         help="refresh every account of the store (not with --account)")
    refresh.add_argument("--within", type=_seconds, metavar="SECONDS",
                         help="refresh only tokens that expire within SECONDS (the others: "
                              "'fresh, not refreshed'); give more than the sessions' leeway "
                              "(60 s by default) plus --every, e.g. --within 600 for X")
    refresh.add_argument("--every", type=_interval, metavar="SECONDS",
                         help="with --within: do it again every SECONDS until Ctrl-C or "
                              "SIGTERM, printing only accounts refreshed or failing (a sidecar "
                              "or a service instead of cron), e.g. --every 60")
    refresh.add_argument("--json", action="store_true", help="print JSON instead of lines")
    refresh.add_argument("--retry-refused", action="store_true",
                         help="send once, on purpose, a refresh token X refused to this client "
                              "id and token URL (when that refusal came from a misconfigured "
                              "process); a grant clears the refusal")
    url(refresh, "token-url", "token endpoint")
    url(refresh, "api-url", "API base URL")
    refresh.set_defaults(run=run_refresh)

    logout = commands.add_parser(
        "logout", parents=[common, client, store, account],
        help="revoke an account's token at X and remove it from the store",
        description="Revoke the account's refresh and access tokens at X, then remove the "
                    "account from the store. If X cannot be reached the account is kept.")
    logout.add_argument("--forget-only", action="store_true",
                        help="remove the account from the store without revoking at X")
    url(logout, "token-url", "token endpoint")
    url(logout, "revoke-url", "revoke endpoint")
    logout.set_defaults(run=run_logout)

    key = commands.add_parser(
        "key", parents=[common],
        help="make a key for an encrypted store, or re-encrypt a store under a new one",
        description="Tokens are encrypted at rest when REFRESHER_KEY holds a key (several, "
                    "comma-separated, during a rotation: the first encrypts, every one "
                    "decrypts; keyring:NAME reads one from the OS keyring).")
    key_commands = key.add_subparsers(title="commands", metavar="COMMAND")
    key_commands.required = True
    key_new = key_commands.add_parser(
        "new", parents=[common], help="print the export line of a new key",
        description="Make a new random key and print the line that sets it: "
                    "export REFRESHER_KEY=...")
    key_new.add_argument("--keyring", metavar="NAME",
                         help="keep the key in the OS keyring under NAME instead, and print "
                              "export REFRESHER_KEY=keyring:NAME (needs refresher's "
                              "[keyring] extra)")
    key_new.set_defaults(run=run_key_new)
    key_rotate = key_commands.add_parser(
        "rotate", parents=[common, store],
        help="re-encrypt every account under the first key of REFRESHER_KEY",
        description="Save every account of the store again, under its lock, encrypted under "
                    "the first key of REFRESHER_KEY (the others only decrypt): give the new "
                    "key first, then the old ones (REFRESHER_KEY=NEW,OLD). Accounts in the "
                    "clear are encrypted too. Afterwards the old keys can be dropped. Exit "
                    "status 1 when an account could not be re-encrypted.")
    key_rotate.set_defaults(run=run_key_rotate)

    emulator = commands.add_parser(
        "emulator", parents=[common],
        help="serve the local X emulator until Ctrl-C",
        description="Serve an emulator of X's OAuth 2.0 and API v2 endpoints on 127.0.0.1, "
                    "and print the settings that point refresher (or your script) at it: "
                    "the export lines, a token store of its own in the temporary folder, "
                    "and the login. Its authorize page approves at once; without a browser, "
                    "finish a login with: curl -sSL 'THE-URL-THE-LOGIN-PRINTS'.")
    emulator.add_argument("--port", type=int, default=8000,
                          help="port on 127.0.0.1 (default 8000; 0: any free port)")
    emulator.add_argument("--access-ttl", type=_positive_float, default=7200.0,
                          metavar="SECONDS", help="access token lifetime (default 7200, X's)")
    callbacks = emulator.add_mutually_exclusive_group()
    callbacks.add_argument("--redirect-uri", action="append", metavar="URL",
                           dest="redirect_uris",
                           help="a callback URL to register, repeatable; the login's default "
                                f"{DEFAULT_REDIRECT_URI} is always registered. As at X, the "
                                "authorize page refuses any other, exactly: another port, "
                                "localhost for 127.0.0.1. The first one given is the one "
                                "printed for the login")
    callbacks.add_argument("--any-loopback-redirect", action="store_true",
                           help="accept any http callback URL on this machine, as X does not")
    emulator.add_argument("--rate-limits", nargs="?", const=(75, 900.0), type=_rate_limits,
                          metavar="CALLS/SECONDS",
                          help="answer X's 429 past CALLS calls per SECONDS seconds, per user "
                               "and app and endpoint, as X does (alone: 75/900, X's limit of "
                               "/2/users/me); the x-rate-limit-* headers come with every API "
                               "answer either way")
    emulator.set_defaults(run=run_emulator)

    demo = commands.add_parser(
        "demo", parents=[common],
        help="the whole story offline: log in, then many processes share one token",
        description="Start the X emulator, log in through the real login code (the emulator "
                    "approves), then run PROCESSES worker processes of THREADS threads each "
                    "calling the API through one shared JSON token store while access tokens "
                    "expire every few seconds. Exit 0 only when no request failed and no "
                    "refresh token was spent twice; Ctrl-C prints the counts so far and "
                    "exits 130. With --store it writes an account named 'demo' in that "
                    "store.")
    demo.add_argument("--processes", type=_positive_int, default=4, help="default 4")
    demo.add_argument("--threads", type=_positive_int, default=3, help="per process; default 3")
    demo.add_argument("--seconds", type=_positive_float, default=10.0,
                      help="how long the workers run; default 10")
    demo.add_argument("--access-ttl", type=_positive_float, default=2.0, metavar="SECONDS",
                      help="access token lifetime; default 2")
    demo.add_argument("--store", metavar="PATH",
                      help="token store to use: the demo writes an account named 'demo' "
                           "there, and refuses a store that already holds one (--force); a "
                           "JSON file's folder must exist (default: a JSON file in a "
                           "temporary folder, removed afterwards)")
    demo.add_argument("--force", action="store_true",
                      help="replace the 'demo' account of --store if it holds one")
    demo.add_argument("--json", action="store_true",
                      help="print one JSON object: requests, failed, refreshes, windows, "
                           "reused_refresh_tokens, processes, threads, seconds, access_ttl")
    demo.set_defaults(run=run_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _account_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "must not be empty: name an account, or leave --account out to use "
            "$REFRESHER_ACCOUNT or the store's only account"
        )
    try:
        return check_account_name(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate_limits(value: str) -> tuple[int, float]:
    from ..testing.serve import parse_rate_limits  # the emulator's: imported when used

    return parse_rate_limits(value)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more: {text!r}")
    return value


def _interval(text: str) -> float:
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value

