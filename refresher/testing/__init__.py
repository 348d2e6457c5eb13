"""Test helpers: an emulator of X's OAuth 2.0 endpoints and pytest fixtures around it.

Importing this package is cheap (standard library only) and never imports pytest; the
fixtures live in :mod:`refresher.testing.pytest_plugin`.
"""

from __future__ import annotations

from refresher.testing.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_CONFIDENTIAL_CLIENT_ID,
    EmulatorStats,
    XEmulator,
)

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_CONFIDENTIAL_CLIENT_ID",
    "EmulatorStats",
    "XEmulator",
]
