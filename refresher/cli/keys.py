"""``refresher key new`` and ``refresher key rotate``: the key of an encrypted store.

``key new`` prints a new key as the ``export REFRESHER_KEY=...`` line to run (the key itself
is the point there; with ``--keyring NAME`` it goes into the OS keyring instead, and the
line names it). ``key rotate`` saves every account of the store again under the first key
of ``REFRESHER_KEY`` (tokens in the clear are encrypted), and the logins under way, each
under its lock, so that the old keys can then be dropped. Neither ever prints a token.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from ..errors import RefresherError
from ..keys import KEY_VARIABLE, KEYRING_PREFIX, keys_from_environment, new_key, save_in_keyring
from ..pending_logins import PENDING_LOGINS
from ..settings import describe_store
from ..shutdown import check_not_stopping
from ..stores.encrypted import EncryptedTokenStore
from .common import LOCK_TIMEOUT, Failure, UsageError, store_for

__all__ = ["run_key_new", "run_key_rotate"]

# How often ``key rotate`` says how far it got, in seconds (a store of many accounts).
_PROGRESS_EVERY = 2.0


def run_key_new(args: argparse.Namespace) -> int:
    """``refresher key new [--keyring NAME]``: the export line of a new key."""
    key = new_key()
    if args.keyring:
        save_in_keyring(args.keyring, key)
        value = KEYRING_PREFIX + args.keyring
        print(f"refresher: the new key is kept in the OS keyring as {args.keyring!r} "
              "(service 'refresher')", file=sys.stderr)
    else:
        value = key
        print("refresher: keep this key where your secrets are kept: without it the "
              "encrypted tokens cannot be read (every account would have to log in again)",
              file=sys.stderr)
    print(f"export {KEY_VARIABLE}={shlex.quote(value)}")
    return 0


def run_key_rotate(args: argparse.Namespace) -> int:
    """``refresher key rotate``: every account saved again under the first key."""
    keys = keys_from_environment()
    if keys is None:
        raise UsageError(
            f"refresher key rotate encrypts under the first key of {KEY_VARIABLE}: set it to "
            f"the new key, then the old ones (export {KEY_VARIABLE}=NEW,OLD); make a new "
            "key with: refresher key new")
    store = store_for(args)
    assert isinstance(store, EncryptedTokenStore)  # REFRESHER_KEY is set: open_store wraps
    where = describe_store(store)
    names = store.accounts()
    current = store.key_ids[0]
    done, unchanged, failed = 0, 0, []
    last = time.monotonic()
    # The logins under way (LoginFlow(pending=store)) sit in a token slot too: left under an
    # old key, they would fail every login once that key is dropped.
    if store.reencrypt(PENDING_LOGINS, timeout=LOCK_TIMEOUT):
        print("Re-encrypted the logins under way (LoginFlow(pending=...)).")
    for index, name in enumerate(names, 1):
        check_not_stopping()  # SIGTERM: stop between accounts, each one saved or not
        try:
            if store.reencrypt(name, timeout=LOCK_TIMEOUT):
                done += 1
            else:
                unchanged += 1
        except RefresherError as exc:
            failed.append(name)
            message = " ".join(str(exc).split())
            print(f"Account {name!r} was not re-encrypted: {message}", flush=True)
        if time.monotonic() - last >= _PROGRESS_EVERY and index < len(names):
            last = time.monotonic()
            print(f"refresher: {index} of {len(names)} accounts done", file=sys.stderr,
                  flush=True)
    print(f"Re-encrypted {done} account{'s' if done != 1 else ''} of {where} under key "
          f"{current} ({unchanged} already were).")
    store.close()
    if failed:
        raise Failure(f"{len(failed)} of {len(names)} accounts not re-encrypted "
                      f"({', '.join(failed)}): see the lines above; the old keys are still "
                      "needed for them")
    if len(keys) > 1:
        print(f"Every account is under key {current} now: the old keys can be dropped "
              f"({KEY_VARIABLE} needs only the first).")
    return 0
