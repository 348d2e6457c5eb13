"""The ``refresher`` command line: log in, look, refresh, log out, and try it all offline.

``refresher login`` runs the PKCE login in the browser and saves the token (and, beside
it, the client id and endpoints: never the secret) in the token store; ``status``,
``refresh`` (one account, or ``--all``) and ``logout`` then need none of them repeated.
``emulator`` serves the local X emulator and prints the settings that point refresher at
it; ``demo`` runs the whole story against one. Every setting can also come from a
``REFRESHER_*`` environment variable.

Exit status: 0 done, 1 failed (X refused, store corrupt, port in use...), 2 bad usage
or configuration (unknown account, missing client id, a name or URL refresher cannot use:
a :class:`~refresher.ConfigurationError` or another ``ValueError``), 130 interrupted, 143
terminated (SIGTERM: after a refresh in flight has saved its pair). One line on stderr
says what to do, whatever went wrong; ``--debug`` adds the traceback and refresher's debug
log.

The package has one module per job: :mod:`~refresher.cli.parser` (the options),
:mod:`~refresher.cli.login` (``login``), :mod:`~refresher.cli.accounts` (``status``,
``refresh``, ``logout``), :mod:`~refresher.cli.offline` (``emulator``, ``demo``),
:mod:`~refresher.cli.secrets` (the client secret), :mod:`~refresher.cli.common` (what the
commands share); :func:`main` here runs one and turns what went wrong into one line.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence

from oauthlib.oauth2 import OAuth2Error

from ..errors import ConfigurationError, RefresherError
from ..shutdown import EXIT_STATUS, Terminated, sigterm_handled
from .common import Failure, UsageError
from .parser import build_parser

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``refresher`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns the exit status instead of exiting, so it can be called from Python:

    >>> main(["status", "--json"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (status 2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    debug = bool(getattr(args, "debug", False))
    _configure_logging(debug)
    try:
        # SIGTERM (docker stop, systemd, timeout) ends the command at a safe point: after a
        # refresh in flight has saved its pair (see refresher.shutdown).
        with sigterm_handled():
            status: int = args.run(args)
        return status
    except KeyboardInterrupt:
        print("\nrefresher: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("refresher: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_STATUS
    except UsageError as exc:
        return _report(exc, debug, 2)
    except (ConfigurationError, ValueError) as exc:  # a name, setting or token refused
        return _report(exc, debug, 2)
    except (RefresherError, Failure, OAuth2Error, OSError) as exc:
        return _report(exc, debug, 1)
    except Exception as exc:  # a bug: still one line, and the traceback with --debug
        return _report(exc, debug, 1, unexpected=True)


def _report(exc: BaseException, debug: bool, status: int, *, unexpected: bool = False) -> int:
    if debug:
        traceback.print_exc()
    if unexpected:
        # Not one of refresher's own messages, which are written never to hold a token:
        # only the exception's type is shown.
        message = (f"unexpected {type(exc).__name__}; run the command again with --debug "
                   "for the traceback, and report it")
    elif isinstance(exc, OSError) and not isinstance(exc, RefresherError):
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
    elif isinstance(exc, OAuth2Error):
        message = exc.description or str(exc)
    else:
        message = str(exc) or type(exc).__name__
    # One line, whatever the message holds.
    message = " ".join(message.split())
    print(f"refresher: error: {message}", file=sys.stderr)
    return status


_handler: logging.Handler | None = None


def _configure_logging(debug: bool) -> None:
    global _handler
    logger = logging.getLogger("refresher")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter(
        "refresher: %(levelname)s: %(name)s: %(message)s" if debug
        else "refresher: %(levelname)s: %(message)s"))
    logger.addHandler(_handler)
    # The command prints its own warnings; the library's (retries...) would make more than
    # the one line an error deserves. A setting overruled by the account's record is one.
    logger.setLevel(logging.DEBUG if debug else logging.ERROR)
    logging.getLogger("refresher.settings").setLevel(logging.NOTSET if debug
                                                     else logging.WARNING)

