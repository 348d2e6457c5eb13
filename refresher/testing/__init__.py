"""Test helpers: an emulator of X's OAuth 2.0 endpoints and pytest fixtures around it.

Importing this package never imports pytest; the fixtures live in
:mod:`refresher.testing.pytest_plugin`. :func:`route_to_emulator` points a session that
calls X's real hosts (tweepy does) at an emulator. :class:`FakeClock`, shared by a session and
an emulator (``clock=``), lets a test move time on instead of sleeping.
"""

from __future__ import annotations

from refresher.testing.clock import FakeClock
from refresher.testing.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_CONFIDENTIAL_CLIENT_ID,
    EmulatorStats,
    XEmulator,
)
from refresher.testing.routing import X_HOSTS, route_to_emulator

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_CONFIDENTIAL_CLIENT_ID",
    "EmulatorStats",
    "FakeClock",
    "XEmulator",
    "X_HOSTS",
    "route_to_emulator",
]
