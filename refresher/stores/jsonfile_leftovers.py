"""Leftovers of JSON-store writers that died: found, what they hold that is newer adopted, removed.

A :class:`~refresher.stores.jsonfile.JSONTokenStore` writes a temporary file beside the
store and renames it over the store. A writer killed between the two (``kill -9``, power
loss) leaves its temporary file behind, and it may hold the only copy of a pair X had
already granted. Writers only write under the store's file lock, so whoever next takes that
lock knows every such file is a leftover; :func:`recover_leftovers` is what it does with them.
An account's lock looks with :func:`find_leftovers` (no lock) and takes the file lock only
when there is something to see.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import TokenStoreError
from .sealed import is_sealed

__all__ = ["TEMP_SUFFIX", "temp_prefix", "find_leftovers", "recover_leftovers"]

# The store's own logger: these warnings are about the store, and keep the logger name they
# have always had, so a logging setup for refresher.stores.jsonfile still covers them.
log = logging.getLogger("refresher.stores.jsonfile")

# Temporary files are named ``.{name}.{8 random characters}.tmp`` (tempfile.mkstemp).
TEMP_SUFFIX = ".tmp"
# Leftovers larger than this are not read (only removed): a store is a few KiB per account.
_MAX_LEFTOVER_BYTES = 64 * 1024 * 1024


def temp_prefix(real_path: Path) -> str:
    """The start of the names of the temporary files written for the store at ``real_path``."""
    return f".{real_path.name}."


def find_leftovers(real_path: Path) -> list[Path]:
    """The temporary files of the store at ``real_path``: one listdir.

    Under the file lock, every one is a leftover; without it, one may be a live writer's.
    """
    folder = real_path.parent
    try:
        names = os.listdir(folder)
    except OSError as exc:
        log.debug("cannot list %s for leftover temporary files: %s", folder, exc.strerror)
        return []
    # mkstemp's random part has no dot, which keeps a store named "tokens.json.bak"
    # (temp files ".tokens.json.bak.*.tmp") from matching "tokens.json"'s pattern.
    pattern = re.compile(
        re.escape(temp_prefix(real_path)) + r"[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX) + r"\Z")
    return [folder / name for name in sorted(names) if pattern.match(name)]


def recover_leftovers(
    real_path: Path,
    where: str,
    *,
    document_format: str,
    read: Callable[[], dict[str, Any]],
    write: Callable[[dict[str, Any]], None],
) -> None:
    """Adopt what leftover temporary files hold that is newer, then remove them all.

    ``where`` names the store in messages; ``read`` and ``write`` are the store's own (the
    whole document); a leftover counts only if it is a whole document of ``document_format``.
    Called under the file lock, on its outermost acquisition: no live writer has a
    temporary file then, so each one found was left by a writer that died before its rename. When
    the store is unreadable, the leftovers are kept for a person to look at.
    """
    leftovers = find_leftovers(real_path)
    if not leftovers:
        return
    try:
        document = read()
    except TokenStoreError:
        log.warning(
            "token store %s is unreadable, so %d temporary file(s) left by writers that "
            "died (%s) were kept for a person to look at; one may hold the latest tokens",
            where, len(leftovers), ", ".join(str(path) for path in leftovers))
        return
    stored = document["accounts"]
    adopted: dict[str, Path] = {}
    for leftover in leftovers:
        for account, entry in _leftover_accounts(leftover, document_format).items():
            if _is_newer_entry(entry, stored.get(account)):
                stored[account] = entry
                adopted[account] = leftover
    if adopted:
        try:
            write(document)
        except TokenStoreError as exc:
            # The caller must not go on with the older pair the store holds.
            raise TokenStoreError(
                f"{exc}. It was adopting the newer token of account(s) "
                f"{', '.join(repr(name) for name in sorted(adopted))} from temporary "
                f"file(s) left by a writer that died ({', '.join(map(str, leftovers))}); "
                "they were kept, and nothing was refreshed."
            ) from None
        for account, leftover in sorted(adopted.items()):
            log.warning(
                "token store %s: adopted the newer token of account %r from %s, left by a "
                "writer that died before it could finish saving it",
                where, account, leftover)
    for leftover in leftovers:
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("token store %s: cannot remove leftover temporary file %s: %s",
                        where, leftover, exc.strerror)


def _leftover_accounts(leftover: Path, document_format: str) -> dict[str, Any]:
    """The accounts of a leftover temporary file; ``{}`` unless it is a whole store document."""
    try:
        fd = os.open(leftover, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return {}
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_LEFTOVER_BYTES:
            return {}
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            document = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):  # unreadable, truncated (a write cut short), not UTF-8
        return {}
    finally:
        if fd >= 0:
            os.close(fd)
    if not isinstance(document, dict) or document.get("format") != document_format:
        return {}
    accounts = document.get("accounts")
    return dict(accounts) if isinstance(accounts, dict) else {}


def _is_newer_entry(entry: Any, stored: Any) -> bool:
    """Whether a leftover's account entry should replace the stored one (``None``: absent).

    It must hold a token with a refresh token (or a sealed one, whose refresh token cannot
    be seen without the key), and be newer by ``updated_at`` than a stored
    entry that has a token.
    """
    if not isinstance(entry, dict):
        return False
    token = entry.get("token")
    if not isinstance(token, dict) or not (isinstance(token.get("refresh_token"), str)
                                           or is_sealed(token)):
        return False
    if not isinstance(stored, dict) or not isinstance(stored.get("token"), dict):
        return True  # the store lacks the account, or has only its metadata
    updated_at, stored_at = _timestamp(entry), _timestamp(stored)
    if updated_at is None:
        return False
    return stored_at is None or updated_at > stored_at


def _timestamp(entry: dict[str, Any]) -> float | None:
    """An entry's ``updated_at``, or ``None`` when it has no number there."""
    value = entry.get("updated_at")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
