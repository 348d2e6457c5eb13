"""pytest fixtures serving an X emulator on loopback (registered as the ``refresher`` plugin).

``x_emulator`` is a started :class:`~refresher.testing.XEmulator` with default settings;
``x_emulator_factory(**kwargs)`` starts one with any constructor arguments::

    def test_expired_token_is_refreshed(x_emulator_factory):
        x = x_emulator_factory(access_ttl=1)
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from refresher.testing.emulator import XEmulator


@pytest.fixture
def x_emulator() -> Iterator[XEmulator]:
    """A started emulator on 127.0.0.1 and a free port, stopped after the test."""
    from refresher.testing.emulator import XEmulator

    with XEmulator(host="127.0.0.1", port=0) as emulator:
        yield emulator


@pytest.fixture
def x_emulator_factory() -> Iterator[Callable[..., XEmulator]]:
    """A callable taking XEmulator's keyword arguments and returning a started emulator.

    Every emulator it made is stopped after the test.
    """
    from refresher.testing.emulator import XEmulator

    started: list[XEmulator] = []

    def make(**kwargs: Any) -> XEmulator:
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        emulator = XEmulator(**kwargs).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()
